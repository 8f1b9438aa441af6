/**
 * Webhooks: named, tenant-scoped entry points that turn an HTTPS POST into an event of type
 * `webhook.<name>`. Each webhook has a random 256-bit HMAC secret, shown once at creation and
 * kept by the hub (it must verify signatures) only as a keyring ciphertext: AES-256-GCM under the
 * hub master key with `trellis-webhook/v1 \0 tenant \0 name` bound as additional data, so a
 * ciphertext copied to another webhook or tenant does not open.
 *
 * Signature (header `X-Trellis-Signature`): `t=<unix seconds>,v1=<hex HMAC-SHA256>`, the HMAC
 * keyed with the secret string exactly as shown (`twh1_…`, UTF-8) over `"<t>.<raw body>"`. A
 * signature is accepted when |now - t| <= 300 s and it was not seen before in that window (a
 * replay is refused). Every refusal takes the same steps (lookup, decrypt, HMAC, constant-time
 * compare) whatever its reason, and callers answer all of them the same way, so an unknown name
 * is indistinguishable from a wrong signature.
 *
 * Counters (received, last received) live in memory only: nothing on the per-call path writes
 * the state document. Opened secrets are kept in memory too (the hub needs them for every call;
 * no AES on the hot path), which also carries them across a master key rotation: when the
 * keyring's current version changes (checked every few seconds and at start), secrets under an
 * older version are re-encrypted with the current one from memory, even if the rotation has
 * already dropped the old key file.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { TrellisError } from '../../common/errors.js';
import type { Doc, Store } from '../store/index.js';
import { Keyring } from '../secrets/keyring.js';

export const WEBHOOK_NAME_RE = /^[a-z0-9][a-z0-9_-]{0,62}$/;
export const TENANT_RE = /^[a-z0-9][a-z0-9_-]{0,62}$/;
export const DESCRIPTION_MAX = 512;
/** Signatures older or newer than this are stale. */
export const SIGNATURE_WINDOW_MS = 300_000;
/** Remembered signatures per webhook (for replay refusal); beyond it new calls are refused. */
export const MAX_REMEMBERED_SIGNATURES = 100_000;
export const SECRET_PREFIX = 'twh1_';
const SIG_RE = /^t=(\d{1,12}),v1=([0-9a-f]{64})$/;

export interface WebhookDoc extends Doc {
  tenant: string;
  name: string;
  description: string;
  /** Keyring ciphertext of the HMAC secret; never the secret in clear. */
  secret: string;
  createdMs: number;
  createdBy: string;
}

export interface WebhookInfo {
  name: string;
  tenant: string;
  description: string;
  /** The event type a call makes: `webhook.<name>`. */
  trigger: string;
  createdMs: number;
  createdBy: string;
  received: number;
  lastReceivedMs: number;
  /** Refused calls since the hub started, by reason (WebhookRefusal). */
  refused: Record<string, number>;
  lastRefusedMs: number;
}

/**
 * Why a call to an existing webhook was refused, as `webhooks list` counts it: a signature
 * refusal (SignatureRefusal), or `api-key` (bad key), `denied` (key without webhooks:post or the
 * tenant), `method`, `content-type`, `too-large`, `not-json`, `tenant-mismatch`.
 */
export type WebhookRefusal = SignatureRefusal | 'api-key' | 'denied' | 'method' | 'content-type' | 'too-large' | 'not-json' | 'tenant-mismatch';

/** Why a signature was refused (for the audit record only: the caller sees one answer). */
export type SignatureRefusal = 'malformed' | 'unknown-webhook' | 'secret-unreadable' | 'stale' | 'bad-signature' | 'replayed' | 'replay-window-full';
export type SignatureCheck = { ok: true } | { ok: false; reason: SignatureRefusal };

export const webhookId = (tenant: string, name: string) => `${tenant}/${name}`;
export const webhookAad = (tenant: string, name: string) => `trellis-webhook/v1\u0000${tenant}\u0000${name}`;
/** The path a sender posts to (the default tenant also answers on `/webhooks/<name>`). */
export const webhookPath = (tenant: string, name: string) => (tenant === 'default' ? `/webhooks/${name}` : `/webhooks/${tenant}/${name}`);

export function checkWebhookName(name: unknown): string {
  if (typeof name !== 'string' || !WEBHOOK_NAME_RE.test(name)) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `webhook name "${String(name).slice(0, 64)}": use 1-63 characters of a-z 0-9 _ -, starting with a letter or digit`);
  }
  return name;
}

/** The HMAC a sender computes; exported for tests and for documentation by example. */
export function signWebhook(secret: string, body: Buffer | string, tSeconds: number): string {
  const mac = createHmac('sha256', Buffer.from(secret, 'utf8')).update(`${tSeconds}.`).update(body).digest('hex');
  return `t=${tSeconds},v1=${mac}`;
}

export interface WebhooksOptions {
  /** @default Date.now */
  now?: () => number;
  /** @default 300000 (5 minutes) */
  windowMs?: number;
  /** @default 100000 */
  maxRemembered?: number;
  /** How often the keyring version is compared with the secrets'. @default 5000 */
  keyCheckMs?: number;
  /** A secret that does not open, or a re-encryption that failed (never with the secret). */
  onError?: (err: Error) => void;
}

export class Webhooks {
  private readonly counters = new Map<string, { received: number; lastReceivedMs: number; refused: Map<WebhookRefusal, number>; lastRefusedMs: number }>();
  /** Per webhook: signature → the time after which it is stale anyway (ms). */
  private readonly seen = new Map<string, Map<string, number>>();
  /** Opened secrets by webhook id, with the ciphertext they came from. */
  private readonly opened = new Map<string, { ciphertext: string; secret: string }>();
  private readonly dummySecret = SECRET_PREFIX + randomBytes(32).toString('hex');
  private readonly windowMs: number;
  private readonly maxRemembered: number;
  private keyTimer?: NodeJS.Timeout;
  private keyVersion = 0;
  private rekeying?: Promise<void>;

  constructor(private readonly store: Store, private readonly keyring: Keyring, private readonly opts: WebhooksOptions = {}) {
    this.windowMs = opts.windowMs ?? SIGNATURE_WINDOW_MS;
    this.maxRemembered = opts.maxRemembered ?? MAX_REMEMBERED_SIGNATURES;
  }

  private now(): number { return this.opts.now?.() ?? Date.now(); }

  /** Opens every secret, re-encrypts those under an older key version, and watches the keyring. */
  async start(): Promise<void> {
    for (const d of await this.store.list<WebhookDoc>('webhooks')) this.secretOf(d);
    await this.rekey();
    this.keyTimer = setInterval(() => {
      if (this.keyring.current !== this.keyVersion) void this.rekey();
    }, this.opts.keyCheckMs ?? 5_000);
    this.keyTimer.unref();
  }

  async close(): Promise<void> {
    clearInterval(this.keyTimer);
    await this.rekeying;
  }

  /** Key versions the stored webhook secrets are encrypted with (a rotation keeps them). */
  async versionsInUse(): Promise<Set<number>> {
    const out = new Set<number>();
    for (const d of await this.store.list<WebhookDoc>('webhooks')) {
      const v = Keyring.versionOf(d.secret);
      if (v !== undefined) out.add(v);
    }
    return out;
  }

  /** Re-encrypts secrets under an older key version with the current one (single-flight). */
  rekey(): Promise<void> {
    this.rekeying ??= (async () => {
      const target = this.keyring.current;
      try {
        const stale = await this.store.list<WebhookDoc>('webhooks', (d) => (Keyring.versionOf(d.secret) ?? target) < target);
        for (const d of stale) {
          const secret = this.secretOf(d);
          if (secret === undefined) continue; // reported by secretOf; nothing to carry over
          const ciphertext = this.keyring.encrypt(secret, webhookAad(d.tenant, d.name));
          const saved = await this.store.update<WebhookDoc>('webhooks', d.id, (cur) => (cur && cur.secret === d.secret ? { ...cur, secret: ciphertext } : cur));
          if (saved?.secret === ciphertext) this.opened.set(d.id, { ciphertext, secret });
        }
        this.keyVersion = target;
      } catch (e) {
        this.opts.onError?.(new TrellisError('TRELLIS_E_INTERNAL', `re-encrypting webhook secrets failed (retried in a few seconds): ${(e as Error).message}`, { cause: e }));
      }
    })().finally(() => { this.rekeying = undefined; });
    return this.rekeying;
  }

  /** The secret of a stored webhook: from memory, else opened (and kept); undefined if it does not open. */
  private secretOf(d: WebhookDoc): string | undefined {
    const known = this.opened.get(d.id);
    if (known && known.ciphertext === d.secret) return known.secret;
    try {
      const secret = this.keyring.decrypt(d.secret, webhookAad(d.tenant, d.name));
      this.opened.set(d.id, { ciphertext: d.secret, secret });
      return secret;
    } catch (e) {
      this.opts.onError?.(new TrellisError('TRELLIS_E_SECRET_INVALID', `the secret of webhook ${d.name} in tenant ${d.tenant} does not open (${(e as Error).message}); delete and create the webhook again`));
      return undefined;
    }
  }

  async create(o: { tenant: string; name: string; description?: string; createdBy: string }): Promise<{ info: WebhookInfo; secret: string }> {
    const name = checkWebhookName(o.name);
    const description = o.description ?? '';
    if (typeof description !== 'string' || description.length > DESCRIPTION_MAX) {
      throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `description: at most ${DESCRIPTION_MAX} characters`);
    }
    const secret = SECRET_PREFIX + randomBytes(32).toString('hex');
    const doc: WebhookDoc = {
      id: webhookId(o.tenant, name), tenant: o.tenant, name, description, secret: this.keyring.encrypt(secret, webhookAad(o.tenant, name)),
      createdMs: this.now(), createdBy: o.createdBy,
    };
    try {
      await this.store.insert('webhooks', doc);
    } catch (e) {
      if ((e as TrellisError).code === 'TRELLIS_E_ALREADY_EXISTS') {
        throw new TrellisError('TRELLIS_E_ALREADY_EXISTS', `webhook ${name} already exists in tenant ${o.tenant}: delete it first to get a new secret`, { cause: e });
      }
      throw e;
    }
    const id = doc.id;
    this.counters.delete(id);
    this.seen.delete(id);
    this.opened.set(id, { ciphertext: doc.secret, secret });
    return { info: this.info(doc), secret };
  }

  /** The webhooks of a tenant, or of every tenant when `tenant` is undefined. */
  async list(tenant: string | undefined): Promise<WebhookInfo[]> {
    const docs = await this.store.list<WebhookDoc>('webhooks', (d) => tenant === undefined || d.tenant === tenant);
    return docs.map((d) => this.info(d)).sort((a, b) => (a.tenant + '/' + a.name < b.tenant + '/' + b.name ? -1 : 1));
  }

  async delete(tenant: string, name: string): Promise<void> {
    checkWebhookName(name);
    const id = webhookId(tenant, name);
    if (!(await this.store.delete('webhooks', id))) {
      throw new TrellisError('TRELLIS_E_NOT_FOUND', `no webhook ${name} in tenant ${tenant}: see \`trellis webhooks list\``);
    }
    this.counters.delete(id);
    this.seen.delete(id);
    this.opened.delete(id);
  }

  /** True when the webhook exists (for the API-key path, after the caller is authorized). */
  async exists(tenant: string, name: string): Promise<boolean> {
    return WEBHOOK_NAME_RE.test(name) && TENANT_RE.test(tenant) && (await this.store.get<WebhookDoc>('webhooks', webhookId(tenant, name))) !== undefined;
  }

  /**
   * Checks `X-Trellis-Signature` for a body. The same work is done for every outcome; a good
   * signature is remembered at once (synchronously after the compare), so two concurrent
   * deliveries of the same signature cannot both pass.
   */
  async verify(tenant: string, name: string, header: string | undefined, body: Buffer): Promise<SignatureCheck> {
    const m = typeof header === 'string' && header.length <= 200 ? SIG_RE.exec(header.trim()) : null;
    const nameOk = WEBHOOK_NAME_RE.test(name) && TENANT_RE.test(tenant);
    const doc = nameOk ? await this.store.get<WebhookDoc>('webhooks', webhookId(tenant, name)) : undefined;
    const secret = doc ? this.secretOf(doc) : undefined;
    // Unknown names pay for the same HMAC and compare as known ones.
    const t = m ? Number(m[1]) : 0;
    const given = Buffer.from(m ? m[2]! : '0'.repeat(64), 'hex');
    const expected = Buffer.from(signWebhook(secret ?? this.dummySecret, body, t).slice(-64), 'hex');
    const match = timingSafeEqual(given, expected);
    const now = this.now();
    const fresh = Math.abs(now - t * 1000) <= this.windowMs;
    if (!m) return { ok: false, reason: 'malformed' };
    if (!doc) return { ok: false, reason: 'unknown-webhook' };
    if (secret === undefined) return { ok: false, reason: 'secret-unreadable' };
    if (!fresh) return { ok: false, reason: 'stale' };
    if (!match) return { ok: false, reason: 'bad-signature' };
    return this.remember(doc.id, m[2]!, t * 1000 + this.windowMs, now);
  }

  private remember(id: string, sig: string, staleAfter: number, now: number): SignatureCheck {
    let seen = this.seen.get(id);
    if (!seen) this.seen.set(id, (seen = new Map()));
    if (seen.has(sig)) return { ok: false, reason: 'replayed' };
    // Stale signatures would be refused anyway: forget them now and then, and always when full.
    if (seen.size >= this.maxRemembered || (seen.size & 1023) === 1023) {
      for (const [s, until] of seen) if (until < now) seen.delete(s);
      // Forgetting a signature still in its window would let it be replayed: refuse instead.
      if (seen.size >= this.maxRemembered) return { ok: false, reason: 'replay-window-full' };
    }
    seen.set(sig, staleAfter);
    return { ok: true };
  }

  private counter(id: string) {
    let c = this.counters.get(id);
    if (!c) this.counters.set(id, (c = { received: 0, lastReceivedMs: 0, refused: new Map(), lastRefusedMs: 0 }));
    return c;
  }

  /** Counts an accepted call (in memory). */
  received(tenant: string, name: string): void {
    const c = this.counter(webhookId(tenant, name));
    c.received++;
    c.lastReceivedMs = this.now();
  }

  /**
   * Counts a refused call (in memory) when the webhook exists: calls to unknown names are not
   * counted anywhere (they would grow the map without bound; the audit log has them).
   */
  async refused(tenant: string, name: string, reason: WebhookRefusal): Promise<void> {
    if (!(await this.exists(tenant, name))) return;
    const c = this.counter(webhookId(tenant, name));
    c.refused.set(reason, (c.refused.get(reason) ?? 0) + 1);
    c.lastRefusedMs = this.now();
  }

  private info(d: WebhookDoc): WebhookInfo {
    const c = this.counters.get(d.id);
    return {
      name: d.name, tenant: d.tenant, description: d.description, trigger: `webhook.${d.name}`, createdMs: d.createdMs, createdBy: d.createdBy,
      received: c?.received ?? 0, lastReceivedMs: c?.lastReceivedMs ?? 0,
      refused: Object.fromEntries([...(c?.refused ?? [])].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))), lastRefusedMs: c?.lastRefusedMs ?? 0,
    };
  }
}
