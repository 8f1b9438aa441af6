/**
 * Join token strings: `tj1.<id>.<secret>.<ca-sha256>`.
 * - id: 16 hex chars, names the token in listings and revocation (not secret);
 * - secret: 43 base64url chars (32 random bytes); the hub stores only its SHA-256;
 * - ca-sha256: 64 hex chars, the SHA-256 fingerprint of the hub CA certificate, so a new agent
 *   can pin the hub before it trusts anything (as kubeadm's discovery hash does).
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { TrellisError } from './errors.js';

export interface JoinToken { id: string; secret: string; caFingerprint: string }

const RE = /^tj1\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})\.([0-9a-f]{64})$/;

export function newJoinToken(caFingerprint: string): JoinToken {
  return { id: randomBytes(8).toString('hex'), secret: randomBytes(32).toString('base64url'), caFingerprint };
}

export function formatJoinToken(t: JoinToken): string {
  return `tj1.${t.id}.${t.secret}.${t.caFingerprint}`;
}

export function parseJoinToken(text: string): JoinToken {
  const m = RE.exec(String(text ?? '').trim());
  if (!m) {
    throw new TrellisError('TRELLIS_E_TOKEN_INVALID',
      'malformed join token: expected tj1.<id>.<secret>.<ca-sha256> exactly as printed by `trellis tokens create`');
  }
  return { id: m[1]!, secret: m[2]!, caFingerprint: m[3]! };
}

export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex');
}

/** Constant-time comparison of two hex digests. */
export function digestsEqual(a: string, b: string): boolean {
  const x = Buffer.from(a, 'hex');
  const y = Buffer.from(b, 'hex');
  return x.length === y.length && x.length > 0 && timingSafeEqual(x, y);
}
