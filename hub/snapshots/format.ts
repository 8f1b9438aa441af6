/**
 * The snapshot file format: a self-describing header, then the payload encrypted in chunks.
 *
 *   magic      8 bytes  "TRELSNAP"
 *   hlen       u16 BE   length of the header JSON (at most 4 KiB)
 *   header     JSON     {"v":1,"kdf":"scrypt","N","r","p","salt"(b64, 16-64 bytes),"cipher":"aes-256-gcm",
 *                        "chunk"(plaintext bytes per chunk),"nonce"(b64, 4-byte prefix)}
 *   check      32 bytes HMAC-SHA256(macKey, magic|hlen|header): tells a wrong passphrase (or an
 *                       altered header) from a damaged body, before anything is decrypted
 *   chunks     each: u32 BE plaintext length (<= chunk) | AES-256-GCM ciphertext | 16-byte tag
 *
 * Keys: scrypt(passphrase, salt, N, r, p) → 64 bytes: the first 32 encrypt, the last 32 key the
 * check. Chunk i is encrypted under nonce = prefix(4) | u64 BE i with additional data
 * SHA-256(magic..check) | u64 BE i | final flag (1 on the last chunk, 0 before), so a chunk moved,
 * dropped, repeated, cut off at the end or taken from another snapshot fails authentication; a
 * file that ends before a final chunk, or has bytes after it, is refused. The KDF parameters a
 * file asks for are bounded on read (a hostile file cannot make the reader allocate gigabytes).
 *
 * Readers and writers stream: at most one chunk (1 MiB by default) is held in clear.
 */
import { createCipheriv, createDecipheriv, createHmac, createHash, randomBytes, scrypt, timingSafeEqual, type BinaryLike, type ScryptOptions } from 'node:crypto';
import { TrellisError } from '../../common/errors.js';

export const MAGIC = Buffer.from('TRELSNAP', 'latin1');
export const FORMAT_VERSION = 1;
export const DEFAULT_CHUNK = 1024 * 1024;
const MAX_CHUNK = 8 * 1024 * 1024;
const MAX_HEADER = 4096;
const TAG = 16;
const CHECK = 32;

export interface KdfParams { N: number; r: number; p: number }
/** 128 MiB of memory and about half a second on a server core. */
export const DEFAULT_KDF: KdfParams = { N: 2 ** 17, r: 8, p: 1 };
/** Limits on what a file may ask for: scrypt memory 128·N·r ≤ 512 MiB, work N·r·p ≤ 2^24. */
const MAX_KDF_MEMORY = 512 * 1024 * 1024;
const MAX_KDF_WORK = 2 ** 24;

/** Shortest passphrase accepted. */
export const MIN_PASSPHRASE = 12;
export const MAX_PASSPHRASE = 1024;

export interface Header {
  v: number;
  kdf: 'scrypt';
  N: number;
  r: number;
  p: number;
  salt: string;
  cipher: 'aes-256-gcm';
  chunk: number;
  nonce: string;
}

const invalid = (msg: string) => new TrellisError('TRELLIS_E_SNAPSHOT_INVALID', msg);

/** Throws TRELLIS_E_INVALID_ARGUMENT for a passphrase too short or too long (never echoing it). */
export function checkPassphrase(passphrase: string): void {
  if (typeof passphrase !== 'string' || passphrase.length < MIN_PASSPHRASE) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `a snapshot passphrase has at least ${MIN_PASSPHRASE} characters (snapshots are never stored unencrypted)`);
  }
  if (passphrase.length > MAX_PASSPHRASE) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `a snapshot passphrase has at most ${MAX_PASSPHRASE} characters`);
}

function checkKdf(k: KdfParams): void {
  const pow2 = Number.isInteger(k.N) && k.N >= 2 ** 10 && (k.N & (k.N - 1)) === 0;
  if (!pow2 || !Number.isInteger(k.r) || k.r < 1 || k.r > 64 || !Number.isInteger(k.p) || k.p < 1 || k.p > 16) {
    throw invalid(`snapshot header has bad scrypt parameters (N=${k.N}, r=${k.r}, p=${k.p}); it was damaged or not written by Trellis`);
  }
  if (128 * k.N * k.r > MAX_KDF_MEMORY || k.N * k.r * k.p > MAX_KDF_WORK) {
    throw invalid(`snapshot header asks for scrypt N=${k.N}, r=${k.r}, p=${k.p}, more than Trellis allows (at most 512 MiB of memory); refused`);
  }
}

async function deriveKeys(passphrase: string, salt: Buffer, k: KdfParams): Promise<{ enc: Buffer; mac: Buffer }> {
  const key = await new Promise<Buffer>((resolve, reject) => {
    const o: ScryptOptions = { N: k.N, r: k.r, p: k.p, maxmem: 128 * k.N * k.r + 2 * 1024 * 1024 };
    scrypt(passphrase as BinaryLike, salt, 64, o, (err, out) => (err ? reject(err) : resolve(out)));
  });
  return { enc: key.subarray(0, 32), mac: key.subarray(32) };
}

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
}

function aad(headerHash: Buffer, index: number, final: boolean): Buffer {
  return Buffer.concat([headerHash, u64(index), Buffer.from([final ? 1 : 0])]);
}

/** Where encrypted bytes go: a file handle, a stream, a buffer list. */
export type ByteSink = (b: Buffer) => Promise<void>;

/**
 * Encrypts a payload written in pieces. `open()` derives the key and writes the header; `write()`
 * buffers up to one chunk; `finish()` writes the final chunk. Nothing is written before open().
 */
export class SnapshotWriter {
  private buf: Buffer[] = [];
  private buffered = 0;
  private index = 0;
  private done = false;
  /** Plaintext bytes written so far. */
  plainBytes = 0;

  private constructor(private readonly sink: ByteSink, private readonly key: Buffer, private readonly prefix: Buffer, private readonly headerHash: Buffer, private readonly chunk: number) {}

  static async open(sink: ByteSink, passphrase: string, o: { kdf?: KdfParams; chunk?: number } = {}): Promise<SnapshotWriter> {
    checkPassphrase(passphrase);
    const kdf = o.kdf ?? DEFAULT_KDF;
    checkKdf(kdf);
    const chunk = o.chunk ?? DEFAULT_CHUNK;
    const salt = randomBytes(32);
    const prefix = randomBytes(4);
    const header: Header = { v: FORMAT_VERSION, kdf: 'scrypt', N: kdf.N, r: kdf.r, p: kdf.p, salt: salt.toString('base64'), cipher: 'aes-256-gcm', chunk, nonce: prefix.toString('base64') };
    const json = Buffer.from(JSON.stringify(header), 'utf8');
    const len = Buffer.alloc(2);
    len.writeUInt16BE(json.length);
    const head = Buffer.concat([MAGIC, len, json]);
    const { enc, mac } = await deriveKeys(passphrase, salt, kdf);
    const check = createHmac('sha256', mac).update(head).digest();
    const all = Buffer.concat([head, check]);
    await sink(all);
    return new SnapshotWriter(sink, enc, prefix, createHash('sha256').update(all).digest(), chunk);
  }

  async write(data: Buffer): Promise<void> {
    if (this.done) throw new Error('snapshot writer already finished');
    this.plainBytes += data.length;
    let off = 0;
    while (off < data.length) {
      const take = Math.min(this.chunk - this.buffered, data.length - off);
      this.buf.push(data.subarray(off, off + take));
      this.buffered += take;
      off += take;
      if (this.buffered === this.chunk) await this.emit(false);
    }
  }

  /** Writes the final chunk (possibly empty). */
  async finish(): Promise<void> {
    if (this.done) return;
    await this.emit(true);
    this.done = true;
  }

  private async emit(final: boolean): Promise<void> {
    const plain = Buffer.concat(this.buf, this.buffered);
    this.buf = [];
    this.buffered = 0;
    const c = createCipheriv('aes-256-gcm', this.key, Buffer.concat([this.prefix, u64(this.index)]));
    c.setAAD(aad(this.headerHash, this.index, final));
    const ct = Buffer.concat([c.update(plain), c.final()]);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(plain.length);
    this.index++;
    await this.sink(Buffer.concat([len, ct, c.getAuthTag()]));
  }
}

/** Pulls bytes from a file or stream: `read(n)` resolves with up to n bytes, an empty buffer at the end. */
export type ByteSource = (n: number) => Promise<Buffer>;

async function readExactly(src: ByteSource, n: number, what: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  let got = 0;
  while (got < n) {
    const b = await src(n - got);
    if (b.length === 0) throw invalid(`snapshot is truncated: it ends inside ${what}; nothing was restored`);
    parts.push(b);
    got += b.length;
  }
  return Buffer.concat(parts, n);
}

/** Reads and checks the header only (no passphrase): what `snapshots inspect`-style tools may show. */
export async function readHeader(src: ByteSource): Promise<{ header: Header; head: Buffer; check: Buffer }> {
  const first = await src(MAGIC.length);
  if (first.length === 0) throw invalid('the file is empty: not a Trellis snapshot');
  const magic = first.length === MAGIC.length ? first : Buffer.concat([first, await readExactly(src, MAGIC.length - first.length, 'the header')]);
  if (!magic.equals(MAGIC)) throw invalid('not a Trellis snapshot (the file does not start with TRELSNAP)');
  const lenBuf = await readExactly(src, 2, 'the header');
  const len = lenBuf.readUInt16BE();
  if (len < 2 || len > MAX_HEADER) throw invalid(`snapshot header length ${len} is out of range; the file is damaged`);
  const json = await readExactly(src, len, 'the header');
  let h: Header;
  try { h = JSON.parse(json.toString('utf8')) as Header; } catch { throw invalid('snapshot header is not valid JSON; the file is damaged'); }
  if (!h || typeof h !== 'object') throw invalid('snapshot header is not an object; the file is damaged');
  if (h.v !== FORMAT_VERSION) {
    throw invalid(typeof h.v === 'number' && h.v > FORMAT_VERSION
      ? `snapshot format ${h.v} was written by a newer Trellis (this one reads format ${FORMAT_VERSION}); restore it with that version`
      : `snapshot header names an unknown format version; the file is damaged`);
  }
  if (h.kdf !== 'scrypt' || h.cipher !== 'aes-256-gcm') throw invalid('snapshot header names an unknown key derivation or cipher; the file is damaged');
  checkKdf(h);
  if (!Number.isInteger(h.chunk) || h.chunk < 1024 || h.chunk > MAX_CHUNK) throw invalid(`snapshot header has a bad chunk size (${h.chunk}); the file is damaged`);
  const salt = typeof h.salt === 'string' ? Buffer.from(h.salt, 'base64') : Buffer.alloc(0);
  const prefix = typeof h.nonce === 'string' ? Buffer.from(h.nonce, 'base64') : Buffer.alloc(0);
  if (salt.length < 16 || salt.length > 64 || prefix.length !== 4) throw invalid('snapshot header has a bad salt or nonce; the file is damaged');
  const check = await readExactly(src, CHECK, 'the header');
  return { header: h, head: Buffer.concat([MAGIC, lenBuf, json]), check };
}

/**
 * Decrypts a snapshot chunk by chunk. `next()` resolves with the next chunk's plaintext, or
 * undefined after the final chunk (having checked that nothing follows it). Every failure is a
 * TRELLIS_E_SNAPSHOT_INVALID saying what went wrong, never the passphrase.
 */
export class SnapshotReader {
  private index = 0;
  private ended = false;
  private constructor(private readonly src: ByteSource, readonly header: Header, private readonly key: Buffer, private readonly prefix: Buffer, private readonly headerHash: Buffer) {}

  static async open(src: ByteSource, passphrase: string): Promise<SnapshotReader> {
    const { header, head, check } = await readHeader(src);
    const { enc, mac } = await deriveKeys(passphrase, Buffer.from(header.salt, 'base64'), header);
    const want = createHmac('sha256', mac).update(head).digest();
    if (!timingSafeEqual(want, check)) throw invalid('wrong passphrase for this snapshot (or its header was altered); nothing was restored');
    const hash = createHash('sha256').update(Buffer.concat([head, check])).digest();
    return new SnapshotReader(src, header, enc, Buffer.from(header.nonce, 'base64'), hash);
  }

  async next(): Promise<Buffer | undefined> {
    if (this.ended) return undefined;
    const lenBuf = await this.src(4);
    if (lenBuf.length === 0) throw invalid(`snapshot is truncated: it ends after chunk ${this.index} without its final chunk; nothing was restored`);
    const len = (lenBuf.length === 4 ? lenBuf : Buffer.concat([lenBuf, await readExactly(this.src, 4 - lenBuf.length, `chunk ${this.index}`)])).readUInt32BE();
    if (len > this.header.chunk) throw invalid(`snapshot chunk ${this.index} claims ${len} bytes, more than the header's chunk size; the file is damaged or tampered with; nothing was restored`);
    const body = await readExactly(this.src, len + TAG, `chunk ${this.index}`);
    const nonce = Buffer.concat([this.prefix, u64(this.index)]);
    const open = (final: boolean): Buffer | undefined => {
      try {
        const d = createDecipheriv('aes-256-gcm', this.key, nonce);
        d.setAAD(aad(this.headerHash, this.index, final));
        d.setAuthTag(body.subarray(len));
        return Buffer.concat([d.update(body.subarray(0, len)), d.final()]);
      } catch {
        return undefined;
      }
    };
    // A full chunk is normally not the last one; a short one normally is.
    const guessFinal = len < this.header.chunk;
    let final = guessFinal;
    let plain = open(final);
    if (!plain) { final = !guessFinal; plain = open(final); }
    if (!plain) throw invalid(`snapshot chunk ${this.index} failed authentication: the file is damaged or was tampered with; nothing was restored`);
    this.index++;
    if (final) {
      this.ended = true;
      const extra = await this.src(1);
      if (extra.length > 0) throw invalid('snapshot has bytes after its final chunk: the file was tampered with; nothing was restored');
    }
    return plain;
  }
}

/** A ByteSource over a buffer (tests, small files). */
export function bufferSource(b: Buffer): ByteSource {
  let off = 0;
  return async (n) => {
    const out = b.subarray(off, off + n);
    off += out.length;
    return out;
  };
}

/** A ByteSource over an open file handle, read in blocks of up to 1 MiB. */
export function fileSource(fh: { read(buf: Buffer, offset: number, length: number, position: number | null): Promise<{ bytesRead: number }> }): ByteSource {
  return async (n) => {
    const b = Buffer.allocUnsafe(Math.min(n, 1024 * 1024));
    const { bytesRead } = await fh.read(b, 0, b.length, null);
    return b.subarray(0, bytesRead);
  };
}
