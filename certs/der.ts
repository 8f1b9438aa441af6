/**
 * ASN.1 / DER helpers. Building goes through node-forge's `asn1` layer (create / toDer /
 * oidToDer); reading uses a small strict DER reader of our own, because the PKI code needs
 * the exact byte offsets of sub-structures (the CSR's CertificationRequestInfo, the issuer's
 * subject Name) rather than a re-encoded tree.
 */
import { createRequire } from 'node:module';
import type forgeTypes from 'node-forge';
import { TrellisError, type ErrorCode } from '../common/errors.js';

// Only forge's asn1 layer (and the util and oids modules it requires), not the whole library:
// `node-forge` itself loads every cipher, TLS and PKI module (~9 MB of RSS in each agent).
const requireForge = createRequire(import.meta.url);
requireForge('node-forge/lib/asn1.js'); // defines forge.asn1, forge.util and forge.oids
const forge = requireForge('node-forge/lib/forge.js') as Pick<typeof forgeTypes, 'asn1' | 'util'>;
const asn1 = forge.asn1;
const U = asn1.Class.UNIVERSAL;
const T = asn1.Type;

export type Node = forgeTypes.asn1.Asn1;

/** Well-known object identifiers used across certs/. */
export const OID = {
  commonName: '2.5.4.3',
  organization: '2.5.4.10',
  organizationalUnit: '2.5.4.11',
  basicConstraints: '2.5.29.19',
  keyUsage: '2.5.29.15',
  extKeyUsage: '2.5.29.37',
  subjectAltName: '2.5.29.17',
  subjectKeyIdentifier: '2.5.29.14',
  authorityKeyIdentifier: '2.5.29.35',
  cRLNumber: '2.5.29.20',
  extensionRequest: '1.2.840.113549.1.9.14',
  serverAuth: '1.3.6.1.5.5.7.3.1',
  clientAuth: '1.3.6.1.5.5.7.3.2',
} as const;

/** DER tag bytes the reader checks for. */
export const TAG = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  UTF8: 0x0c,
  PRINTABLE: 0x13,
  T61: 0x14,
  IA5: 0x16,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  BMP: 0x1e,
  SEQUENCE: 0x30,
  SET: 0x31,
} as const;

const bin = (b: Buffer): string => b.toString('latin1');

// ---------------------------------------------------------------- building

export function seq(...items: (Node | undefined)[]): Node {
  return asn1.create(U, T.SEQUENCE, true, items.filter((i): i is Node => i !== undefined));
}

export function set(...items: Node[]): Node {
  return asn1.create(U, T.SET, true, items);
}

const oidBytes = new Map<string, string>();

export function oid(dotted: string): Node {
  let bytes = oidBytes.get(dotted);
  if (bytes === undefined) {
    bytes = asn1.oidToDer(dotted).getBytes();
    if (oidBytes.size < 1024) oidBytes.set(dotted, bytes);
  }
  return asn1.create(U, T.OID, false, bytes);
}

/** A non-negative INTEGER from an unsigned big-endian magnitude, number or bigint. */
export function uint(value: Buffer | number | bigint): Node {
  let mag: Buffer;
  if (Buffer.isBuffer(value)) {
    mag = value;
  } else {
    const v = BigInt(value);
    if (v < 0n) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'integer must not be negative');
    const hex = v.toString(16);
    mag = Buffer.from(hex.length % 2 ? '0' + hex : hex, 'hex');
  }
  let i = 0;
  while (i < mag.length - 1 && mag[i] === 0) i++;
  mag = mag.subarray(i);
  if (mag.length === 0) mag = Buffer.alloc(1);
  if (mag[0]! & 0x80) mag = Buffer.concat([Buffer.alloc(1), mag]);
  return asn1.create(U, T.INTEGER, false, bin(mag));
}

export function bool(v: boolean): Node {
  return asn1.create(U, T.BOOLEAN, false, v ? '\xff' : '\x00');
}

export function nul(): Node {
  return asn1.create(U, T.NULL, false, '');
}

export function utf8(s: string): Node {
  return asn1.create(U, T.UTF8, false, forge.util.encodeUtf8(s));
}

export function octets(b: Buffer): Node {
  return asn1.create(U, T.OCTETSTRING, false, bin(b));
}

export function bitString(b: Buffer, unusedBits = 0): Node {
  return asn1.create(U, T.BITSTRING, false, String.fromCharCode(unusedBits) + bin(b));
}

/** A BIT STRING of named bits (bit 0 = most significant bit of the first byte), DER-trimmed. */
export function namedBits(bits: number[]): Node {
  const max = Math.max(...bits);
  const out = Buffer.alloc(Math.floor(max / 8) + 1);
  for (const b of bits) out[b >> 3]! |= 0x80 >> (b & 7);
  return bitString(out, 7 - (max & 7));
}

/** [n] EXPLICIT wrapper. */
export function explicit(n: number, inner: Node): Node {
  return asn1.create(asn1.Class.CONTEXT_SPECIFIC, n, true, [inner]);
}

/** [n] IMPLICIT primitive (e.g. GeneralName dNSName, keyIdentifier). */
export function implicitPrim(n: number, content: Buffer): Node {
  return asn1.create(asn1.Class.CONTEXT_SPECIFIC, n, false, bin(content));
}

/** [n] IMPLICIT constructed (e.g. CSR attributes [0] IMPLICIT SET OF). */
export function implicitCons(n: number, items: Node[]): Node {
  return asn1.create(asn1.Class.CONTEXT_SPECIFIC, n, true, items);
}

const pad = (n: number, w = 2): string => String(n).padStart(w, '0');

/** X.509 Time: UTCTime for years before 2050, GeneralizedTime from 2050 on (RFC 5280 4.1.2.5). */
export function time(d: Date): Node {
  const y = d.getUTCFullYear();
  if (!Number.isFinite(d.getTime()) || y < 1950 || y > 9999) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `date ${String(d)} is outside 1950..9999`);
  }
  const rest =
    pad(d.getUTCMonth() + 1) + pad(d.getUTCDate()) + pad(d.getUTCHours()) + pad(d.getUTCMinutes()) + pad(d.getUTCSeconds()) + 'Z';
  return y < 2050
    ? asn1.create(U, T.UTCTIME, false, pad(y % 100) + rest)
    : asn1.create(U, T.GENERALIZEDTIME, false, pad(y, 4) + rest);
}

/** Embeds already-encoded DER unchanged (verified: the bytes must survive a round trip). */
export function raw(der: Buffer): Node {
  const opts = { strict: true, parseAllBytes: true, decodeBitStrings: false };
  const node = asn1.fromDer(bin(der), opts as unknown as boolean);
  if (!toBuffer(node).equals(der)) {
    throw new TrellisError('TRELLIS_E_CERT_INVALID', 'embedded structure is not canonical DER');
  }
  return node;
}

/** DER length octets for a content length. */
function derLength(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

/**
 * A SEQUENCE around elements that are already DER (our own encodings): a header and a
 * concatenation, without parsing them back into forge nodes as raw() does.
 */
export function seqOfDer(parts: Buffer[]): Buffer {
  let len = 0;
  for (const p of parts) len += p.length;
  return Buffer.concat([Buffer.from([0x30]), derLength(len), ...parts]); // universal, constructed, SEQUENCE
}

export function toBuffer(node: Node): Buffer {
  return Buffer.from(asn1.toDer(node).getBytes(), 'latin1');
}

// ---------------------------------------------------------------- reading

/** One decoded TLV: tag byte, and offsets into buf for the whole element and its content. */
export interface Tlv {
  buf: Buffer;
  tag: number;
  start: number;
  cstart: number;
  end: number;
}

/** Thrown by the reader; callers translate it to the error code of their domain. */
export class DerError extends Error {
  override name = 'DerError';
}

export function readTlv(buf: Buffer, pos: number, limit = buf.length): Tlv {
  if (pos + 2 > limit) throw new DerError('truncated element');
  const tag = buf[pos]!;
  if ((tag & 0x1f) === 0x1f) throw new DerError('high-numbered tags are not supported');
  let len = buf[pos + 1]!;
  let p = pos + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0) throw new DerError('indefinite length is not DER');
    if (n > 4) throw new DerError('length field too long');
    if (p + n > limit) throw new DerError('truncated length');
    if (buf[p] === 0) throw new DerError('non-minimal length encoding');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[p + i]!;
    if (len < 0x80) throw new DerError('non-minimal length encoding');
    p += n;
  }
  if (p + len > limit) throw new DerError('element extends past the end of its container');
  return { buf, tag, start: pos, cstart: p, end: p + len };
}

/** Parses buf as exactly one element (no trailing bytes), optionally checking its tag. */
export function parseDer(buf: Buffer, tag?: number): Tlv {
  const t = readTlv(buf, 0);
  if (t.end !== buf.length) throw new DerError('trailing bytes after the DER structure');
  if (tag !== undefined) expectTag(t, tag, 'top-level element');
  return t;
}

export function children(t: Tlv): Tlv[] {
  if (!(t.tag & 0x20)) throw new DerError(`element with tag 0x${t.tag.toString(16)} is not constructed`);
  const out: Tlv[] = [];
  for (let p = t.cstart; p < t.end; ) {
    const c = readTlv(t.buf, p, t.end);
    out.push(c);
    p = c.end;
  }
  return out;
}

export function expectTag(t: Tlv | undefined, tag: number, what: string): Tlv {
  if (!t) throw new DerError(`missing ${what}`);
  if (t.tag !== tag) throw new DerError(`${what}: expected tag 0x${tag.toString(16)}, got 0x${t.tag.toString(16)}`);
  return t;
}

export const content = (t: Tlv): Buffer => t.buf.subarray(t.cstart, t.end);
export const whole = (t: Tlv): Buffer => t.buf.subarray(t.start, t.end);

export function readOid(t: Tlv): string {
  expectTag(t, TAG.OID, 'object identifier');
  if (t.end === t.cstart) throw new DerError('empty object identifier');
  return asn1.derToOid(bin(content(t)));
}

export function readBool(t: Tlv): boolean {
  expectTag(t, TAG.BOOLEAN, 'boolean');
  const c = content(t);
  if (c.length !== 1 || (c[0] !== 0 && c[0] !== 0xff)) throw new DerError('BOOLEAN is not DER');
  return c[0] === 0xff;
}

/** Non-negative INTEGER as a bigint. */
export function readUint(t: Tlv): bigint {
  expectTag(t, TAG.INTEGER, 'integer');
  const c = content(t);
  if (c.length === 0) throw new DerError('empty INTEGER');
  if (c[0]! & 0x80) throw new DerError('negative INTEGER');
  if (c.length > 1 && c[0] === 0 && !(c[1]! & 0x80)) throw new DerError('non-minimal INTEGER');
  return BigInt('0x' + c.toString('hex'));
}

/** BIT STRING contents, requiring zero unused bits. */
export function readBitStringBytes(t: Tlv): Buffer {
  expectTag(t, TAG.BIT_STRING, 'bit string');
  const c = content(t);
  if (c.length < 1 || c[0] !== 0) throw new DerError('BIT STRING has unused bits');
  return c.subarray(1);
}

export function readString(t: Tlv): string {
  const c = content(t);
  switch (t.tag) {
    case TAG.UTF8:
      return new TextDecoder('utf-8', { fatal: true }).decode(c);
    case TAG.PRINTABLE:
    case TAG.IA5:
    case TAG.T61:
      return c.toString('latin1');
    case TAG.BMP:
      return new TextDecoder('utf-16be', { fatal: true }).decode(c);
    default:
      throw new DerError(`unsupported string type 0x${t.tag.toString(16)}`);
  }
}

export function readTime(t: Tlv): Date {
  const s = content(t).toString('latin1');
  let m: RegExpExecArray | null;
  let year: number;
  if (t.tag === TAG.UTC_TIME && (m = /^(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)Z$/.exec(s))) {
    const yy = Number(m[1]);
    year = yy < 50 ? 2000 + yy : 1900 + yy;
  } else if (t.tag === TAG.GENERALIZED_TIME && (m = /^(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)Z$/.exec(s))) {
    year = Number(m[1]);
  } else {
    throw new DerError(`invalid time value '${s}'`);
  }
  const [mo, d, h, mi, se] = m.slice(2, 7).map(Number) as [number, number, number, number, number];
  return new Date(Date.UTC(year, mo - 1, d, h, mi, se));
}

// ---------------------------------------------------------------- PEM

export function pemEncode(label: string, der: Buffer): string {
  const b64 = der.toString('base64');
  const lines: string[] = [];
  for (let i = 0; i < b64.length; i += 64) lines.push(b64.slice(i, i + 64));
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}

export interface PemBlock {
  label: string;
  der: Buffer;
}

/** Every PEM block in text, in order. Throws (code) when a block's body is not clean base64. */
export function pemBlocks(text: string, code: ErrorCode = 'TRELLIS_E_CERT_INVALID'): PemBlock[] {
  const re = /-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END ([A-Z0-9 ]+)-----/g;
  const out: PemBlock[] = [];
  for (let m = re.exec(text); m; m = re.exec(text)) {
    const [, label, body, endLabel] = m as unknown as [string, string, string, string];
    if (label !== endLabel) throw new TrellisError(code, `PEM block BEGIN ${label} is closed by END ${endLabel}`);
    const b64 = body.replace(/\s+/g, '');
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64) || b64.length % 4 !== 0) {
      throw new TrellisError(code, `PEM block ${label} does not contain valid base64`);
    }
    out.push({ label, der: Buffer.from(b64, 'base64') });
  }
  return out;
}

/** True when the input looks like PEM text rather than raw DER. */
export function looksLikePem(input: string | Buffer): boolean {
  const head = typeof input === 'string' ? input.slice(0, 4096) : input.subarray(0, 4096).toString('latin1');
  return head.includes('-----BEGIN ');
}
