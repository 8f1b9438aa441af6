import type { Doc } from '../store/index.js';
import { TrellisError } from '../../common/errors.js';

export interface UserDoc extends Doc {
  username: string;
  /** Empty for users of an external backend (LDAP, module): their password is never stored. */
  passwordHash: string;
  roles: string[];
  tenants: string[];
  active: boolean;
  createdAt: number;
  /** Which backend the user comes from: local, ldap or module. */
  source?: string;
  /** No longer written: lock-outs are per source address and kept in memory (hub/auth/lockout.ts). */
  failures?: number[];
  /** No longer written (see failures). */
  lockedUntil?: number;
  lastLogin?: number;
}

/** User names are lowercase: directories compare names case-insensitively, so `Alice` and `alice` must be one account (and one lock-out counter). */
const USERNAME_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;

export function isValidUsername(name: unknown): name is string {
  return typeof name === 'string' && USERNAME_RE.test(name);
}

/** Throws INVALID_ARGUMENT unless `name` is a valid user name. */
export function checkUsername(name: string): string {
  if (!isValidUsername(name)) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `bad user name "${String(name).slice(0, 80)}": use 1-64 lowercase letters, digits, dot, dash or underscore`);
  }
  return name;
}
