/**
 * Authentication: logins through the configured backends with lock-out, login tokens
 * (sessions) and API keys. A login token is 32 random bytes shown once; the store keys the
 * session by its SHA-256. An API key is `tak1_<id>_<secret>`; the store keeps a per-key salt and
 * an HMAC of the secret. Either resolves, on every call, to the owner's current principal: a
 * deactivated or deleted user, a revoked session or a disabled key stops working at once, and
 * `revoked` events let live streams be cut. Lock-outs count per (name, source address) and login
 * limits per address (lockout.ts, limiter.ts), both in memory; password KDFs run on the hub's own
 * threads (kdf.ts).
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Doc, Store } from '../store/index.js';
import { TrellisError } from '../../common/errors.js';
import { formatDuration } from '../../common/duration.js';
import { hashPassword, checkPasswordPolicy, dummyPasswordHash, verifyPassword, inlineKdf, type Kdf } from './passwords.js';
import { LockoutTable, type LockoutOptions } from './lockout.js';
import { LoginLimiter, DEFAULT_LOGIN_LIMITS, type LoginLimits } from './limiter.js';
import { sourceKey } from './source.js';
import { checkUsername, isValidUsername, type UserDoc } from './users.js';
import { LocalBackend, type AuthBackend } from './backends.js';
import type { Iam } from '../iam/index.js';
import type { Principal } from '../authz/index.js';

export type { UserDoc } from './users.js';
export { checkUsername } from './users.js';
export type { LockoutOptions } from './lockout.js';
export type { LoginLimits } from './limiter.js';
export { DEFAULT_LOGIN_LIMITS } from './limiter.js';
export { sourceKey } from './source.js';
export type { Principal } from '../authz/index.js';

export interface SessionDoc extends Doc { username: string; createdAt: number; expiresAt: number; source?: string }
export interface ApiKeyDoc extends Doc { owner: string; name: string; salt: string; hash: string; enabled: boolean; createdAt: number; lastUsed?: number }

export interface AuthOptions {
  sessionTtlMs: number;
  /** Lock-out per (name, source address). @default DEFAULT_LOCKOUT */
  lockout?: LockoutOptions;
  /** Password checks in progress and failed logins per source address. @default DEFAULT_LOGIN_LIMITS */
  limits?: LoginLimits;
  backends?: AuthBackend[];
  /** The KDF passwords are hashed and checked with (the hub's worker pool). @default scrypt on libuv's threadpool */
  kdf?: Kdf;
}

/** What was revoked: every call of a user, of one session, or of one API key. */
export type Revocation = { username: string } | { sessionId: string } | { apiKeyId: string };

const TOKEN_PREFIX = 'tls1_';
const APIKEY_RE = /^tak1_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/;
export const DEFAULT_LOCKOUT: LockoutOptions = { maxFailures: 5, windowMs: 15 * 60_000, durationMs: 15 * 60_000 };

export function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/** The short, non-secret handle under which a session is listed and revoked. */
export function sessionHandle(sessionId: string): string {
  return sessionId.slice(0, 16);
}

export class Auth extends EventEmitter {
  private readonly backends: AuthBackend[];
  /** Failed logins per (name, source address): names that are not users lock out just like real ones. */
  private readonly lockouts: LockoutTable;
  private readonly limiter: LoginLimiter;
  private readonly kdf: Kdf;
  private readonly lastUsedWritten = new Map<string, number>();

  constructor(private readonly store: Store, private readonly iam: Iam, private readonly opts: AuthOptions) {
    super();
    this.kdf = opts.kdf ?? inlineKdf;
    this.lockouts = new LockoutTable(opts.lockout ?? DEFAULT_LOCKOUT);
    this.limiter = new LoginLimiter(opts.limits ?? DEFAULT_LOGIN_LIMITS);
    this.backends = opts.backends ?? [new LocalBackend(store, this.kdf)];
  }

  // ------------------------------------------------------------ users

  async createUser(o: { username: string; password?: string; roles: string[]; tenants?: string[]; source?: string }): Promise<UserDoc> {
    checkUsername(o.username);
    const source = o.source ?? 'local';
    let passwordHash = '';
    if (source === 'local') {
      const policy = checkPasswordPolicy(o.password ?? '');
      if (policy) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', policy);
      passwordHash = await hashPassword(o.password!, this.kdf);
    }
    for (const r of o.roles) await this.iam.role(r);
    for (const t of o.tenants ?? ['default']) await this.iam.tenant(t);
    const doc: UserDoc = {
      id: o.username, username: o.username, passwordHash, roles: [...new Set(o.roles)], tenants: [...new Set(o.tenants ?? ['default'])],
      active: true, createdAt: Date.now(), source,
    };
    await this.store.insert('users', doc);
    this.iam.invalidate();
    return doc;
  }

  async user(username: string): Promise<UserDoc> {
    const u = isValidUsername(username) ? await this.store.get<UserDoc>('users', username) : undefined;
    if (!u) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no user ${String(username).slice(0, 64)}: see \`trellis users list\``);
    return u;
  }

  async users(): Promise<UserDoc[]> { return this.store.list<UserDoc>('users'); }

  async setPassword(username: string, newPassword: string, currentPassword?: string): Promise<void> {
    const u = await this.user(username);
    if ((u.source ?? 'local') !== 'local') throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${username} is a ${u.source} user: change the password in the directory`);
    if (currentPassword !== undefined && !(await verifyPassword(currentPassword, u.passwordHash, this.kdf))) {
      throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', 'the current password is wrong');
    }
    const policy = checkPasswordPolicy(newPassword);
    if (policy) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', policy);
    const passwordHash = await hashPassword(newPassword, this.kdf);
    await this.store.update<UserDoc>('users', username, (d) => (d ? { ...d, passwordHash } : undefined));
  }

  /**
   * Deactivation cuts everything of the user at once: keys and live streams stop working, and
   * login sessions are ended for good (activating the user again does not bring them back).
   */
  async setActive(username: string, active: boolean): Promise<UserDoc> {
    await this.user(username);
    const u = await this.store.update<UserDoc>('users', username, (d) => (d ? { ...d, active } : undefined));
    this.iam.invalidate();
    if (!active) {
      this.emit('revoked', { username } satisfies Revocation);
      await this.endSessions(username);
    }
    return u!;
  }

  async deleteUser(username: string): Promise<void> {
    await this.user(username);
    await this.store.delete('users', username);
    for (const s of await this.store.list<SessionDoc>('sessions', (s) => s.username === username)) await this.store.delete('sessions', s.id);
    for (const k of await this.store.list<ApiKeyDoc>('apiKeys', (k) => k.owner === username)) await this.store.delete('apiKeys', k.id);
    await this.iam.forgetUser(username); // a later user of the same name starts with no groups
    this.iam.invalidate();
    this.emit('revoked', { username } satisfies Revocation);
  }

  /** Clears the user's failed logins and lock-outs from every source address. */
  async unlock(username: string): Promise<UserDoc> {
    const u = await this.user(username);
    this.lockouts.unlock(username);
    return u;
  }

  /** Failed logins inside the window (all sources) and the latest lock-out end, for `users show`. */
  lockoutSummary(username: string, now = Date.now()): { failures: number; lockedUntil: number; lockedSources: number } {
    return this.lockouts.summary(username, now);
  }

  // ------------------------------------------------------------ login

  /**
   * Checks a password through the backends. `meta.source` is the caller's address ("ip:port"):
   * limits and lock-outs count by it (hub/auth/source.ts).
   *  1. The limiter refuses at once, before any KDF work, when too many password checks are in
   *     progress (in all or from this address) or this address failed too often lately.
   *  2. A name locked at this address is refused at once; the message says so (a lock-out is not
   *     a secret: names that are not users lock the same way, so it tells nothing about them).
   *  3. An unknown user and a wrong password cost the same KDF time and get the same answer.
   */
  async login(username: string, password: string, meta: { source?: string } = {}): Promise<{ token: string; expiresAt: number; user: UserDoc }> {
    const bad = new TrellisError('TRELLIS_E_UNAUTHENTICATED', 'wrong user name or password');
    const source = sourceKey(meta.source);
    const now = Date.now();
    let release: () => void;
    try {
      release = this.limiter.admit(source, now);
    } catch (e) {
      // Refused before any KDF work; answered late, so a client waiting for answers cannot spin on refusals.
      await new Promise((r) => setTimeout(r, this.limiter.limits.refusalDelayMs));
      throw e;
    }
    try {
      if (typeof username === 'string') username = username.toLowerCase(); // one account per name, whatever the case typed
      if (typeof username !== 'string' || typeof password !== 'string' || password.length > 1024 || !isValidUsername(username)) {
        await verifyPassword(String(password).slice(0, 1024), await dummyPasswordHash(), this.kdf);
        this.limiter.failed(source, now);
        throw bad;
      }
      const lockedUntil = this.lockouts.lockedUntil(username, source, now);
      if (lockedUntil > now) {
        this.limiter.failed(source, now); // a failed login all the same: the address's budget bounds every attempt
        throw new TrellisError('TRELLIS_E_UNAUTHENTICATED',
          `too many failed logins: this account is locked for ${formatDuration(lockedUntil - now)} from your address; `
          + `log in from another address, or an administrator can run \`trellis users unlock ${username}\``);
      }
      const user = await this.checkPassword(username, password);
      if (!user) {
        this.lockouts.fail(username, source, now);
        this.limiter.failed(source, now);
        throw bad;
      }
      this.lockouts.succeed(username, source);
      await this.store.update<UserDoc>('users', user.id, (d) => (d ? { ...d, lastLogin: now } : undefined));
      const token = TOKEN_PREFIX + randomBytes(32).toString('base64url');
      const session: SessionDoc = { id: hashToken(token), username: user.username, createdAt: now, expiresAt: now + this.opts.sessionTtlMs, source: meta.source?.slice(0, 100) };
      await this.store.insert('sessions', session);
      return { token, expiresAt: session.expiresAt, user };
    } finally {
      release();
    }
  }

  /** The backends' verdict: the active user the password opens, or undefined. */
  private async checkPassword(username: string, password: string): Promise<UserDoc | undefined> {
    let result: { username: string; groups?: string[]; backend: string } | undefined;
    for (const b of this.backends) {
      const r = await b.authenticate(username, password);
      if (r.kind === 'ok') { result = { username: r.username, groups: r.groups, backend: b.name }; break; }
      if (r.kind === 'bad-password') break; // the backend that knows the user decides
      if (r.kind === 'unavailable') this.emit('backend-error', { backend: b.name, message: r.message });
    }
    if (!result) return undefined;
    let user = await this.store.get<UserDoc>('users', result.username);
    if (!user && result.backend !== 'local') {
      // First login of a directory user: a record with no password, no roles of its own.
      user = await this.createUser({ username: result.username, roles: [], tenants: [], source: result.backend });
    }
    // A backend speaks only for its own users: a directory "admin" is not the local admin.
    if (user && (user.source ?? 'local') !== result.backend) {
      this.emit('backend-error', { backend: result.backend, message: `accepted ${user.username}, who is a ${user.source ?? 'local'} user: login refused` });
      return undefined;
    }
    if (!user || !user.active) return undefined;
    if (result.groups) await this.iam.syncDirectoryGroups(user.username, result.groups);
    return user;
  }

  // ------------------------------------------------------------ credentials on calls

  /**
   * Resolves a bearer credential (login token or API key) to a principal, or throws UNAUTHENTICATED.
   * `peek`: no side effects (an expired session is not removed, a key's last use not written), for
   * a check ahead of the call's own authentication (hub/grpc/preauth.ts).
   */
  async authenticate(bearer: string | undefined, opts: { peek?: boolean } = {}): Promise<Principal> {
    if (!bearer) throw new TrellisError('TRELLIS_E_UNAUTHENTICATED', 'no credentials: log in with `trellis login`');
    if (bearer.length > 200) throw new TrellisError('TRELLIS_E_UNAUTHENTICATED', 'unrecognised credential');
    if (bearer.startsWith('tak1_')) return this.authenticateApiKey(bearer, opts.peek === true);
    if (!bearer.startsWith(TOKEN_PREFIX)) throw new TrellisError('TRELLIS_E_UNAUTHENTICATED', 'unrecognised credential: log in again with `trellis login`');
    const session = await this.store.get<SessionDoc>('sessions', hashToken(bearer));
    if (!session) throw new TrellisError('TRELLIS_E_UNAUTHENTICATED', 'login token unknown or revoked: log in again with `trellis login`');
    if (session.expiresAt <= Date.now()) {
      if (!opts.peek) await this.store.delete('sessions', session.id);
      throw new TrellisError('TRELLIS_E_UNAUTHENTICATED', 'login token expired: log in again with `trellis login`');
    }
    const p = await this.iam.resolve(session.username);
    if (!p) throw new TrellisError('TRELLIS_E_UNAUTHENTICATED', 'this account is deactivated or deleted');
    return { kind: 'user', ...p, sessionId: session.id, sessionExpiresAt: session.expiresAt };
  }

  private async authenticateApiKey(key: string, peek: boolean): Promise<Principal> {
    const m = APIKEY_RE.exec(key);
    const bad = new TrellisError('TRELLIS_E_UNAUTHENTICATED', 'API key unknown, disabled or deleted');
    if (!m) throw bad;
    const doc = await this.store.get<ApiKeyDoc>('apiKeys', m[1]!);
    const expected = Buffer.from(doc?.hash ?? '0'.repeat(64), 'hex');
    const got = createHmac('sha256', Buffer.from(doc?.salt ?? '00', 'hex')).update(m[2]!).digest();
    if (!doc || !timingSafeEqual(got, expected) || !doc.enabled) throw bad;
    const p = await this.iam.resolve(doc.owner);
    if (!p) throw new TrellisError('TRELLIS_E_UNAUTHENTICATED', 'the owner of this API key is deactivated or deleted');
    if (!peek) this.touchApiKey(doc.id);
    return { kind: 'apikey', ...p, apiKeyId: doc.id };
  }

  /**
   * The principal behind the same credentials as `p`, as of now (live streams re-check with it):
   * the same session or API key read again, the owner's current roles, tenants and grants.
   * UNAUTHENTICATED when the session ended or expired, the key was disabled or deleted, or the
   * user was deactivated or deleted.
   */
  async current(p: Principal): Promise<Principal> {
    if (p.apiKeyId) {
      const doc = await this.store.get<ApiKeyDoc>('apiKeys', p.apiKeyId);
      if (!doc || !doc.enabled || doc.owner !== p.username) throw new TrellisError('TRELLIS_E_UNAUTHENTICATED', 'API key unknown, disabled or deleted');
      const r = await this.iam.resolve(doc.owner);
      if (!r) throw new TrellisError('TRELLIS_E_UNAUTHENTICATED', 'the owner of this API key is deactivated or deleted');
      return { kind: 'apikey', ...r, apiKeyId: doc.id };
    }
    const session = p.sessionId ? await this.store.get<SessionDoc>('sessions', p.sessionId) : undefined;
    if (!session || session.username !== p.username) throw new TrellisError('TRELLIS_E_UNAUTHENTICATED', 'login token unknown or revoked: log in again with `trellis login`');
    if (session.expiresAt <= Date.now()) throw new TrellisError('TRELLIS_E_UNAUTHENTICATED', 'login token expired: log in again with `trellis login`');
    const r = await this.iam.resolve(session.username);
    if (!r) throw new TrellisError('TRELLIS_E_UNAUTHENTICATED', 'this account is deactivated or deleted');
    return { kind: 'user', ...r, sessionId: session.id, sessionExpiresAt: session.expiresAt };
  }

  /** Last-used times are written at most once a minute per key, never on every call. */
  private touchApiKey(id: string): void {
    const now = Date.now();
    if (now - (this.lastUsedWritten.get(id) ?? 0) < 60_000) return;
    this.lastUsedWritten.set(id, now);
    void this.store.update<ApiKeyDoc>('apiKeys', id, (d) => (d ? { ...d, lastUsed: now } : undefined)).catch(() => undefined);
  }

  // ------------------------------------------------------------ sessions

  /**
   * Another hub (shared store) changed a user, login session or API key document: credentials
   * that no longer hold (user deactivated or deleted, session ended, key disabled or deleted) are
   * revoked here as a local change revokes them, so live streams on this hub end at once.
   */
  changedElsewhere(col: 'users' | 'sessions' | 'apiKeys', id: string): void {
    if (col === 'users') {
      const u = this.store.peek<UserDoc>('users', id);
      if (!u || !u.active) this.emit('revoked', { username: id } satisfies Revocation);
    } else if (col === 'sessions') {
      if (!this.store.peek<SessionDoc>('sessions', id)) this.emit('revoked', { sessionId: id } satisfies Revocation);
    } else {
      const k = this.store.peek<ApiKeyDoc>('apiKeys', id);
      if (!k || !k.enabled) this.emit('revoked', { apiKeyId: id } satisfies Revocation);
    }
  }

  async logout(sessionId: string): Promise<void> {
    await this.store.delete('sessions', sessionId);
    this.emit('revoked', { sessionId } satisfies Revocation);
  }

  /** Ends every login session of a user but `except` (e.g. the caller's own); returns how many. */
  async endSessions(username: string, except?: string): Promise<number> {
    const ended = await this.store.list<SessionDoc>('sessions', (s) => s.username === username && s.id !== except);
    for (const s of ended) await this.logout(s.id);
    return ended.length;
  }

  async sessions(username?: string): Promise<SessionDoc[]> {
    const now = Date.now();
    return this.store.list<SessionDoc>('sessions', (s) => s.expiresAt > now && (username === undefined || s.username === username));
  }

  /** Revokes a session by its handle; `owner` limits it to that user's sessions. */
  async revokeSession(handle: string, owner?: string): Promise<void> {
    const match = (await this.store.list<SessionDoc>('sessions', (s) => sessionHandle(s.id) === handle && (owner === undefined || s.username === owner)))[0];
    if (!match || handle.length !== 16) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no session ${String(handle).slice(0, 20)}: see \`trellis sessions list\``);
    await this.logout(match.id);
  }

  /** Drops expired sessions so they do not pile up (Cloudify's expired tokens did). */
  async sweepSessions(now = Date.now()): Promise<number> {
    const expired = await this.store.list<SessionDoc>('sessions', (s) => s.expiresAt <= now);
    for (const s of expired) await this.store.delete('sessions', s.id);
    return expired.length;
  }

  // ------------------------------------------------------------ API keys

  async createApiKey(owner: string, name: string): Promise<{ key: string; doc: ApiKeyDoc }> {
    if (name.length > 128) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'an API key name has at most 128 characters');
    const id = randomBytes(8).toString('hex');
    const secret = randomBytes(32).toString('base64url');
    const salt = randomBytes(16);
    const doc: ApiKeyDoc = { id, owner, name, salt: salt.toString('hex'), hash: createHmac('sha256', salt).update(secret).digest('hex'), enabled: true, createdAt: Date.now() };
    await this.store.insert('apiKeys', doc);
    return { key: `tak1_${id}_${secret}`, doc };
  }

  async apiKeys(owner?: string): Promise<ApiKeyDoc[]> {
    return this.store.list<ApiKeyDoc>('apiKeys', (k) => owner === undefined || k.owner === owner);
  }

  async apiKey(id: string, owner?: string): Promise<ApiKeyDoc> {
    const k = await this.store.get<ApiKeyDoc>('apiKeys', id);
    if (!k || (owner !== undefined && k.owner !== owner)) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no API key ${String(id).slice(0, 20)}: see \`trellis apikeys list\``);
    return k;
  }

  async setApiKeyEnabled(id: string, enabled: boolean, owner?: string): Promise<ApiKeyDoc> {
    await this.apiKey(id, owner);
    const k = await this.store.update<ApiKeyDoc>('apiKeys', id, (d) => (d ? { ...d, enabled } : undefined));
    if (!enabled) this.emit('revoked', { apiKeyId: id } satisfies Revocation);
    return k!;
  }

  async deleteApiKey(id: string, owner?: string): Promise<void> {
    await this.apiKey(id, owner);
    await this.store.delete('apiKeys', id);
    this.emit('revoked', { apiKeyId: id } satisfies Revocation);
  }

  async close(): Promise<void> {
    for (const b of this.backends) await b.close?.();
  }
}
