/**
 * Password hashing with scrypt (memory-hard, in node:crypto, no native addon).
 * Stored form: scrypt$<N>$<r>$<p>$<salt b64>$<hash b64>. Cost ≈ 32 MiB and ~50-100 ms here.
 * The hub runs the KDF on its own threads (KdfPool, hub/auth/kdf.ts); without one given, it runs
 * on libuv's threadpool (init, tools, benchmarks).
 */
import { randomBytes, scrypt as scryptCb, timingSafeEqual } from 'node:crypto';
import type { Kdf } from './kdf.js';

export type { Kdf } from './kdf.js';

/** scrypt on libuv's threadpool: for one-off use outside a running hub. */
export const inlineKdf: Kdf = (password, salt, keylen, opts) =>
  new Promise((resolve, reject) => scryptCb(password, salt, keylen, opts, (err, key) => (err ? reject(err) : resolve(key))));

export const DEFAULT_COST = { N: 1 << 15, r: 8, p: 1 };
const KEYLEN = 32;

export async function hashPassword(password: string, kdf: Kdf = inlineKdf, cost = DEFAULT_COST): Promise<string> {
  const salt = randomBytes(16);
  const hash = await kdf(password, salt, KEYLEN, { ...cost, maxmem: 256 * cost.N * cost.r });
  return ['scrypt', cost.N, cost.r, cost.p, salt.toString('base64'), hash.toString('base64')].join('$');
}

/** A hash to verify against when the user does not exist, so both paths cost the same. */
let dummyHash: Promise<string> | undefined;
export function dummyPasswordHash(): Promise<string> {
  dummyHash ??= hashPassword(randomBytes(16).toString('hex'));
  return dummyHash;
}

export async function verifyPassword(password: string, stored: string, kdf: Kdf = inlineKdf): Promise<boolean> {
  const parts = stored.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') return false;
  const [N, r, p] = [Number(parts[1]), Number(parts[2]), Number(parts[3])];
  const salt = Buffer.from(parts[4]!, 'base64');
  const expected = Buffer.from(parts[5]!, 'base64');
  const got = await kdf(password, salt, expected.length, { N, r, p, maxmem: 256 * N * r });
  return timingSafeEqual(got, expected);
}

/** Rules for a new password: long enough to resist guessing, short enough to bound the KDF input. */
export function checkPasswordPolicy(password: string): string | undefined {
  if (password.length < 12) return 'a password needs at least 12 characters';
  if (password.length > 1024) return 'a password may have at most 1024 characters';
  return undefined;
}

export function generatePassword(): string {
  return randomBytes(18).toString('base64url');
}
