/** Join tokens: random, N-use, with a TTL, bound to a tenant and default labels, stored as a hash. */
import type { Doc, Store } from '../store/index.js';
import { TrellisError } from '../../common/errors.js';
import { digestsEqual, formatJoinToken, hashSecret, newJoinToken, parseJoinToken } from '../../common/jointoken.js';
import { formatDuration } from '../../common/duration.js';
import { checkLabelKey, checkLabels, checkName } from '../validate.js';

export interface JoinTokenDoc extends Doc {
  secretHash: string;
  tenant: string;
  uses: number;
  used: number;
  createdAt: number;
  expiresAt: number;
  labels: Record<string, string>;
  /** Label keys an enrolling host may set itself; any other key it asks for is refused. */
  allowLabels?: string[];
  revoked: boolean;
  createdBy: string;
  description: string;
  /** Visible only to its creator and administrators. */
  private?: boolean;
}

export const MAX_TOKEN_USES = 100_000;
export const MAX_TOKEN_TTL_MS = 365 * 86_400_000;

export class JoinTokens {
  constructor(private readonly store: Store, private readonly opts: { caFingerprint: string; defaultTtlMs: number; maxTtlMs?: number }) {}

  async create(o: {
    tenant?: string; uses?: number; ttlMs?: number; labels?: Record<string, string>; allowLabels?: string[]; createdBy: string; description?: string; private?: boolean;
  }): Promise<{ token: string; doc: JoinTokenDoc }> {
    const tenant = o.tenant || 'default';
    checkName(tenant, 'tenant');
    const uses = o.uses || 1;
    if (!Number.isInteger(uses) || uses < 1 || uses > MAX_TOKEN_USES) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `--uses must be 1..${MAX_TOKEN_USES}`);
    const ttlMs = Number(o.ttlMs) || this.opts.defaultTtlMs;
    const maxMs = Math.min(this.opts.maxTtlMs ?? MAX_TOKEN_TTL_MS, MAX_TOKEN_TTL_MS);
    if (!Number.isFinite(ttlMs) || ttlMs < 1000) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', '--ttl must be at least 1s');
    if (ttlMs > maxMs) {
      throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `--ttl ${formatDuration(ttlMs)} is over this hub's longest join-token lifetime, ${formatDuration(maxMs)} ` +
        `(hub config joinTokenMaxTtl${o.ttlMs ? '' : '; the default joinTokenTtl is longer than it: fix the hub config'})`);
    }
    const labels = checkLabels(o.labels ?? {});
    const allowLabels = [...new Set((o.allowLabels ?? []).map(checkLabelKey))].sort();
    if (allowLabels.length > 64) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'at most 64 --allow-label keys');
    if ((o.description ?? '').length > 256) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'description: at most 256 characters');
    const t = newJoinToken(this.opts.caFingerprint);
    const now = Date.now();
    const doc: JoinTokenDoc = {
      id: t.id, secretHash: hashSecret(t.secret), tenant, uses, used: 0, createdAt: now, expiresAt: now + ttlMs,
      labels, allowLabels, revoked: false, createdBy: o.createdBy, description: o.description ?? '', private: !!o.private,
    };
    await this.store.insert('joinTokens', doc);
    return { token: formatJoinToken(t), doc };
  }

  /** Tokens visible to a viewer: of the tenant (undefined: all), private ones only to their creator or an admin. */
  async list(includeInactive: boolean, view: TokenView = {}): Promise<JoinTokenDoc[]> {
    const now = Date.now();
    return this.store.list<JoinTokenDoc>('joinTokens', (d) => (includeInactive || isActive(d, now)) && visible(d, view));
  }

  async revoke(id: string, view: TokenView = {}): Promise<void> {
    const doc = await this.store.get<JoinTokenDoc>('joinTokens', id);
    if (!doc || !visible(doc, view)) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no join token ${id}`);
    await this.store.update<JoinTokenDoc>('joinTokens', id, (d) => (d ? { ...d, revoked: true } : undefined));
  }

  /** Checks a token without using it: a bad one fails before any other work is done. */
  async check(tokenText: string): Promise<JoinTokenDoc> {
    const t = parseJoinToken(tokenText);
    const doc = await this.store.get<JoinTokenDoc>('joinTokens', t.id);
    validate(doc, t.secret, Date.now());
    return doc!;
  }

  /** Uses one use of the token, atomically: N concurrent callers of a one-use token, one wins. */
  async consume(tokenText: string): Promise<JoinTokenDoc> {
    const t = parseJoinToken(tokenText);
    const now = Date.now();
    const r = await this.store.update<JoinTokenDoc>('joinTokens', t.id, (doc) => {
      validate(doc, t.secret, now);
      return { ...doc!, used: doc!.used + 1 };
    });
    return r!;
  }
}

/**
 * The labels an agent enrolled with this token gets: the token's, plus those the host asked
 * for under keys the token allows (`--allow-label`). The token's own labels always win; any
 * other key is refused, naming the key and the keys the token allows.
 */
export function enrollmentLabels(doc: JoinTokenDoc, asked: Record<string, string>): Record<string, string> {
  const allowed = doc.allowLabels ?? [];
  const requested = checkLabels(asked);
  for (const k of Object.keys(requested)) {
    if (!allowed.includes(k)) {
      throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT',
        `join token ${doc.id} does not let this host set the label "${k}" (it allows ${allowed.length ? allowed.join(', ') : 'no host-set labels'}); ` +
        'labels come from the token (`tokens create --label`, `--allow-label KEY`) or an admin (`trellis agents label`)');
    }
  }
  return checkLabels({ ...requested, ...doc.labels });
}

export interface TokenView { tenant?: string; viewer?: string; admin?: boolean }

function visible(d: JoinTokenDoc, v: TokenView): boolean {
  if (v.tenant !== undefined && d.tenant !== v.tenant) return false;
  return !d.private || v.admin === true || d.createdBy === v.viewer;
}

function isActive(d: JoinTokenDoc, now: number): boolean {
  return !d.revoked && d.used < d.uses && d.expiresAt > now;
}

function validate(doc: JoinTokenDoc | undefined, secret: string, now: number): void {
  // Unknown id and wrong secret give the same answer.
  if (!doc || !digestsEqual(doc.secretHash, hashSecret(secret))) {
    throw new TrellisError('TRELLIS_E_TOKEN_INVALID', 'join token not recognised by this hub: check you copied all of it, or create a new one with `trellis tokens create`');
  }
  if (doc.revoked) throw new TrellisError('TRELLIS_E_TOKEN_INVALID', `join token ${doc.id} was revoked; create a new one with \`trellis tokens create\``);
  if (doc.expiresAt <= now) {
    throw new TrellisError('TRELLIS_E_TOKEN_EXPIRED', `join token ${doc.id} expired ${formatDuration(now - doc.expiresAt)} ago; create a new one with \`trellis tokens create\``);
  }
  if (doc.used >= doc.uses) {
    throw new TrellisError('TRELLIS_E_TOKEN_USED_UP', `join token ${doc.id} has been used ${doc.used} of ${doc.uses} times; create a new one with \`trellis tokens create\``);
  }
}
