/**
 * Admin identities: local users, login tokens (sessions). A login token is 32 random bytes
 * shown once; the store keys the session by the token's SHA-256, so a stolen state file
 * yields no usable token.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { Store, Doc } from '../store/index.js';
import { TrellisError } from '../../common/errors.js';
import { dummyPasswordHash, hashPassword, verifyPassword, checkPasswordPolicy } from './passwords.js';

export interface UserDoc extends Doc {
  username: string;
  passwordHash: string;
  roles: string[];
  tenants: string[];
  active: boolean;
  createdAt: number;
}

export interface SessionDoc extends Doc {
  username: string;
  createdAt: number;
  expiresAt: number;
}

export interface Principal {
  kind: 'user';
  username: string;
  roles: readonly string[];
  tenants: readonly string[];
  sessionId?: string;
  sessionExpiresAt?: number;
}

const USERNAME_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/i;
const TOKEN_PREFIX = 'tls1_';

export function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/** Throws INVALID_ARGUMENT unless `name` is a valid user name. */
export function checkUsername(name: string): string {
  if (!USERNAME_RE.test(name)) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `bad user name "${name.slice(0, 80)}": use 1-64 letters, digits, dot, dash or underscore`);
  }
  return name;
}

export class Auth {
  constructor(private readonly store: Store, private readonly opts: { sessionTtlMs: number }) {}

  async createUser(opts: { username: string; password: string; roles: string[]; tenants?: string[] }): Promise<UserDoc> {
    checkUsername(opts.username);
    const policy = checkPasswordPolicy(opts.password);
    if (policy) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', policy);
    const doc: UserDoc = {
      id: opts.username, username: opts.username, passwordHash: await hashPassword(opts.password),
      roles: opts.roles, tenants: opts.tenants ?? ['default'], active: true, createdAt: Date.now(),
    };
    await this.store.insert('users', doc);
    return doc;
  }

  /** Checks a password; unknown users cost the same KDF time as a wrong password. */
  async login(username: string, password: string): Promise<{ token: string; expiresAt: number; user: UserDoc }> {
    const bad = new TrellisError('TRELLIS_E_UNAUTHENTICATED', 'wrong user name or password');
    if (typeof username !== 'string' || typeof password !== 'string' || username.length > 64 || password.length > 1024) throw bad;
    const user = USERNAME_RE.test(username) ? await this.store.get<UserDoc>('users', username) : undefined;
    const ok = await verifyPassword(password, user?.passwordHash ?? (await dummyPasswordHash()));
    if (!user || !ok || !user.active) throw bad;
    const token = TOKEN_PREFIX + randomBytes(32).toString('base64url');
    const now = Date.now();
    const session: SessionDoc = { id: hashToken(token), username: user.username, createdAt: now, expiresAt: now + this.opts.sessionTtlMs };
    await this.store.insert('sessions', session);
    return { token, expiresAt: session.expiresAt, user };
  }

  /** Resolves a bearer credential to a principal, or throws UNAUTHENTICATED. */
  async authenticate(bearer: string | undefined): Promise<Principal> {
    if (!bearer) throw new TrellisError('TRELLIS_E_UNAUTHENTICATED', 'no credentials: log in with `trellis login`');
    if (!bearer.startsWith(TOKEN_PREFIX) || bearer.length > 200) {
      throw new TrellisError('TRELLIS_E_UNAUTHENTICATED', 'unrecognised credential: log in again with `trellis login`');
    }
    const session = await this.store.get<SessionDoc>('sessions', hashToken(bearer));
    if (!session) throw new TrellisError('TRELLIS_E_UNAUTHENTICATED', 'login token unknown or revoked: log in again with `trellis login`');
    if (session.expiresAt <= Date.now()) {
      await this.store.delete('sessions', session.id);
      throw new TrellisError('TRELLIS_E_UNAUTHENTICATED', 'login token expired: log in again with `trellis login`');
    }
    const user = await this.store.get<UserDoc>('users', session.username);
    if (!user || !user.active) throw new TrellisError('TRELLIS_E_UNAUTHENTICATED', 'this account is deactivated or deleted');
    return { kind: 'user', username: user.username, roles: user.roles, tenants: user.tenants, sessionId: session.id, sessionExpiresAt: session.expiresAt };
  }

  async logout(sessionId: string): Promise<void> {
    await this.store.delete('sessions', sessionId);
  }

  /** Drops expired sessions so they do not pile up (Cloudify's expired tokens did). */
  async sweepSessions(now = Date.now()): Promise<number> {
    const expired = await this.store.list<SessionDoc>('sessions', (s) => s.expiresAt <= now);
    for (const s of expired) await this.store.delete('sessions', s.id);
    return expired.length;
  }
}
