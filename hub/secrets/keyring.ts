/**
 * The hub master key ring: versions in DATA/keys/master-<n>.key (32 random bytes, 0600; the
 * directory 0700). Every version on disk is loaded at start; the current one (highest) encrypts.
 * Ciphertexts are `v<n>:<b64 iv>:<b64 ct+tag>` (AES-256-GCM, 12-byte IV, additional data bound
 * by the caller), so a value names the version that opens it.
 */
import { createCipheriv, createDecipheriv, createHmac, randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { chmod, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { TrellisError } from '../../common/errors.js';
import { atomicWriteFile, ensureDir } from '../../common/fsutil.js';

export const KEY_BYTES = 32;
const FILE_RE = /^master-(\d{1,9})\.key$/;
const CT_RE = /^v(\d{1,9}):([A-Za-z0-9+/=]{16}):([A-Za-z0-9+/=]+)$/;

export const keysDir = (dataDir: string) => join(dataDir, 'keys');
const keyFile = (dir: string, v: number) => join(dir, `master-${v}.key`);

/** A supplied key: 32 raw bytes, or 64 hex / 44 base64 characters of text. */
export function parseMasterKey(buf: Buffer, what: string): Buffer {
  if (buf.length === KEY_BYTES) return Buffer.from(buf);
  const text = buf.toString('utf8').trim();
  if (/^[0-9a-fA-F]{64}$/.test(text)) return Buffer.from(text, 'hex');
  if (/^[A-Za-z0-9+/]{43}=?$/.test(text)) {
    const b = Buffer.from(text, 'base64');
    if (b.length === KEY_BYTES) return b;
  }
  throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${what}: a master key is 32 bytes (raw, or 64 hex or 44 base64 characters); this file holds ${buf.length} bytes`);
}

/** Creates DATA/keys with version 1 (random, or `supplied`) unless a version already exists. */
export async function initKeyring(dataDir: string, supplied?: Buffer, force = false): Promise<void> {
  const dir = keysDir(dataDir);
  await ensureDir(dir, 0o700);
  await chmod(dir, 0o700);
  if (force) for (const f of readdirSync(dir)) if (FILE_RE.test(f)) await rm(join(dir, f), { force: true });
  if (readdirSync(dir).some((f) => FILE_RE.test(f))) return;
  await atomicWriteFile(keyFile(dir, 1), supplied ?? randomBytes(KEY_BYTES), { mode: 0o600 });
}

/**
 * A check value of a master key: HMAC-SHA-256 keyed with it over a fixed label (hex). Equal for
 * one key, different for two; finding the key from it means breaking HMAC-SHA-256 of a random
 * 256-bit key. Hubs of a cluster compare these, never the keys.
 */
export function masterKeyCheck(key: Buffer): string {
  return createHmac('sha256', key).update('trellis master key check v1').digest('hex');
}

export class Keyring {
  private readonly keys = new Map<number, Buffer>();
  private constructor(private readonly dir: string) {}

  /** Loads every version; a data dir without keys (older init) gets version 1. */
  static async open(dataDir: string): Promise<Keyring> {
    const dir = keysDir(dataDir);
    if (!existsSync(dir) || !readdirSync(dir).some((f) => FILE_RE.test(f))) await initKeyring(dataDir);
    const k = new Keyring(dir);
    for (const f of readdirSync(dir)) {
      const m = FILE_RE.exec(f);
      if (!m) continue;
      const buf = readFileSync(join(dir, f));
      if (buf.length !== KEY_BYTES) throw new TrellisError('TRELLIS_E_CONFIG', `${join(dir, f)} is not a master key (${buf.length} bytes, expected ${KEY_BYTES})`);
      k.keys.set(Number(m[1]), buf);
    }
    return k;
  }

  get current(): number { return Math.max(...this.keys.keys()); }

  /** Per version, a check value of its key (hub/cluster/keys.ts): tells keys apart, reveals nothing of them. */
  checks(): Map<number, string> {
    return new Map([...this.keys].map(([v, k]) => [v, masterKeyCheck(k)]));
  }
  versions(): number[] { return [...this.keys.keys()].sort((a, b) => a - b); }
  has(v: number): boolean { return this.keys.has(v); }

  /** Writes a new version (atomically, fsynced) and makes it current. */
  async addVersion(): Promise<number> {
    const v = this.current + 1;
    const key = randomBytes(KEY_BYTES);
    await atomicWriteFile(keyFile(this.dir, v), key, { mode: 0o600 });
    this.keys.set(v, key);
    return v;
  }

  /** Deletes an old version's file (never the current one). The caller checks nothing uses it. */
  async dropVersion(v: number): Promise<void> {
    if (v === this.current) return;
    this.keys.delete(v);
    await rm(keyFile(this.dir, v), { force: true });
  }

  encrypt(plaintext: string, aad: string): string {
    const v = this.current;
    const iv = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', this.keys.get(v)!, iv);
    c.setAAD(Buffer.from(aad, 'utf8'));
    const ct = Buffer.concat([c.update(plaintext, 'utf8'), c.final(), c.getAuthTag()]);
    return `v${v}:${iv.toString('base64')}:${ct.toString('base64')}`;
  }

  /** The version a ciphertext names, or undefined when it is not one. */
  static versionOf(ciphertext: string): number | undefined {
    const m = CT_RE.exec(ciphertext);
    return m ? Number(m[1]) : undefined;
  }

  decrypt(ciphertext: string, aad: string): string {
    const m = CT_RE.exec(ciphertext);
    if (!m) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'the stored secret is not a ciphertext (damaged or tampered with); it cannot be opened');
    const key = this.keys.get(Number(m[1]));
    if (!key) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `the stored secret names master key version ${m[1]}, which this hub does not hold`);
    const iv = Buffer.from(m[2]!, 'base64');
    const body = Buffer.from(m[3]!, 'base64');
    if (iv.length !== 12 || body.length < 16) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'the stored secret is truncated (damaged or tampered with); it cannot be opened');
    try {
      const d = createDecipheriv('aes-256-gcm', key, iv);
      d.setAAD(Buffer.from(aad, 'utf8'));
      d.setAuthTag(body.subarray(body.length - 16));
      return Buffer.concat([d.update(body.subarray(0, body.length - 16)), d.final()]).toString('utf8');
    } catch {
      throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'the stored secret failed authentication: it was tampered with or moved from another key or tenant; it cannot be opened');
    }
  }
}
