/**
 * The outbox's on-disk format: pure encode/decode over buffers, no I/O.
 *
 *   segment = frame*
 *   frame   = u32le (0x80000000 | bodyLength) | u32le crc32(body) | body      (one write)
 *   body    = record+
 *   record  = u32le length-of-the-rest | u8 version (1) | f64le timeMs
 *           | u16le idLength | id (UTF-8) | u16le typeLength | type (UTF-8)
 *           | u32le payloadLength | payload
 *
 * One CRC per frame (one per append write, not one per event) keeps the hot path cheap. A
 * frame counts only when it is whole, its CRC matches and its records tile its body exactly;
 * a torn tail, zeros after a power cut or bit rot are reported as invalid, never decoded into
 * a wrong event. The high bit tells a frame header from a record, so a reader can start at any
 * frame or record boundary. A payload given as a string is base64 (what the wire would make of
 * it: protobufjs reads a bytes field given as a string that way).
 */
import * as zlib from 'node:zlib';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

export const FRAME_HEADER_BYTES = 8;
const FRAME_FLAG = 0x80000000;
const VERSION = 1;
/** Length field + version + time + the three length fields. */
const RECORD_MIN_BYTES = 4 + 1 + 8 + 2 + 2 + 4;
/** Limits of one event in the outbox (the hub applies its own, stricter ones). */
export const MAX_ID_BYTES = 256;
export const MAX_TYPE_BYTES = 256;
export const MAX_PAYLOAD_BYTES = 1024 * 1024;
const MAX_RECORD_BYTES = RECORD_MIN_BYTES + MAX_ID_BYTES + MAX_TYPE_BYTES + MAX_PAYLOAD_BYTES;

/** CRC-32 (IEEE): zlib's native one where Node has it (20.15+), else a table-driven fallback. */
export const crc32: (data: Uint8Array) => number = typeof (zlib as { crc32?: unknown }).crc32 === 'function'
  ? (data) => (zlib as unknown as { crc32: (d: Uint8Array) => number }).crc32(data)
  : (() => {
    const table = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[n] = c >>> 0;
    }
    return (data: Uint8Array) => {
      let c = 0xffffffff;
      for (let i = 0; i < data.length; i++) c = table[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
      return (c ^ 0xffffffff) >>> 0;
    };
  })();

/**
 * Cheap checks before encoding (a UTF-16 length over the byte limit is over it in UTF-8 too):
 * a message naming the bad field, or undefined.
 */
export function checkShape(e: T.Event): string | undefined {
  if (typeof e !== 'object' || e === null) return 'event is not an object';
  if (typeof e.id !== 'string' || e.id.length === 0) return 'event.id is missing';
  if (e.id.length > MAX_ID_BYTES) return `event.id is over ${MAX_ID_BYTES} bytes`;
  if (typeof e.type !== 'string' || e.type.length === 0) return 'event.type is missing';
  if (e.type.length > MAX_TYPE_BYTES) return `event.type is over ${MAX_TYPE_BYTES} bytes`;
  const p = e.payloadJson;
  if (p !== undefined && p !== null && typeof p !== 'string' && !(p instanceof Uint8Array)) return 'event.payloadJson is not bytes or a string';
  // A string is base64, as protobufjs reads a bytes field given as a string.
  if (p && (typeof p === 'string' ? Math.floor(p.length * 3 / 4) : p.byteLength) > MAX_PAYLOAD_BYTES) return `event.payloadJson is over ${MAX_PAYLOAD_BYTES} bytes`;
  return undefined;
}

/** Worst-case encoded size of an event that passed checkShape(), to size the buffer first. */
export function maxRecordBytes(e: T.Event): number {
  const p = e.payloadJson;
  const payload = !p ? 0 : typeof p === 'string' ? p.length : p.byteLength;
  return RECORD_MIN_BYTES + e.id!.length * 3 + e.type!.length * 3 + payload;
}

function timeOf(t: T.Event['timeMs']): number {
  const n = typeof t === 'object' && t !== null ? Number((t as { toNumber(): number }).toNumber()) : Number(t ?? 0);
  return Number.isFinite(n) ? n : 0;
}

/**
 * Encodes `e` (checked by checkShape()) at `buf[off..]`, which must hold maxRecordBytes(e).
 * Returns the offset after the record, or a message naming the bad field.
 */
export function encodeRecord(buf: Buffer, off: number, e: T.Event): number | string {
  let p = off + 4;
  buf[p++] = VERSION;
  buf.writeDoubleLE(timeOf(e.timeMs), p);
  p += 8;
  const idLen = buf.write(e.id!, p + 2, 'utf8');
  if (idLen > MAX_ID_BYTES) return `event.id is over ${MAX_ID_BYTES} bytes`;
  buf.writeUInt16LE(idLen, p);
  p += 2 + idLen;
  const typeLen = buf.write(e.type!, p + 2, 'utf8');
  if (typeLen > MAX_TYPE_BYTES) return `event.type is over ${MAX_TYPE_BYTES} bytes`;
  buf.writeUInt16LE(typeLen, p);
  p += 2 + typeLen;
  const payload = e.payloadJson;
  let payloadLen = 0;
  if (typeof payload === 'string') payloadLen = buf.write(payload, p + 4, 'base64');
  else if (payload) { buf.set(payload, p + 4); payloadLen = payload.byteLength; }
  if (payloadLen > MAX_PAYLOAD_BYTES) return `event.payloadJson is over ${MAX_PAYLOAD_BYTES} bytes`;
  buf.writeUInt32LE(payloadLen, p);
  p += 4 + payloadLen;
  buf.writeUInt32LE(p - off - 4, off);
  return p;
}

/** Fills in the header of the frame at buf[start..end) (its body starts at start + 8). */
export function sealFrame(buf: Buffer, start: number, end: number): void {
  buf.writeUInt32LE((FRAME_FLAG | (end - start - FRAME_HEADER_BYTES)) >>> 0, start);
  buf.writeUInt32LE(crc32(buf.subarray(start + FRAME_HEADER_BYTES, end)), start + 4);
}

/**
 * What starts at `buf[off..end)`: a record (its length, > 0), a frame header (-FRAME_HEADER_BYTES),
 * 0 when the bytes end first (read more), or NaN when it is not valid. Record structure is
 * checked; frame CRCs are checked only by checkFrame().
 */
export function unitAt(buf: Buffer, off: number, end: number): number {
  if (end - off < 4) return 0;
  const head = buf.readUInt32LE(off);
  if (head & FRAME_FLAG) return end - off < FRAME_HEADER_BYTES ? 0 : -FRAME_HEADER_BYTES;
  const len = head + 4;
  if (len < RECORD_MIN_BYTES || len > MAX_RECORD_BYTES) return NaN;
  if (end - off < len) return 0;
  const idLen = buf.readUInt16LE(off + 13);
  const typeAt = off + 15 + idLen;
  if (buf[off + 4] !== VERSION || typeAt + 2 > off + len) return NaN;
  const payloadAt = typeAt + 2 + buf.readUInt16LE(typeAt);
  if (payloadAt + 4 > off + len || payloadAt + 4 + buf.readUInt32LE(payloadAt) !== off + len) return NaN;
  return len;
}

/**
 * Checks the whole frame at buf[off..end): CRC and records tiling the body. Returns its length
 * and the offsets of its records, or undefined when it is torn or invalid.
 */
export function checkFrame(buf: Buffer, off: number, end: number): { length: number; records: number[] } | undefined {
  if (end - off < FRAME_HEADER_BYTES) return undefined;
  const head = buf.readUInt32LE(off);
  if (!(head & FRAME_FLAG)) return undefined;
  const frameEnd = off + FRAME_HEADER_BYTES + (head & ~FRAME_FLAG);
  if (frameEnd > end || frameEnd === off + FRAME_HEADER_BYTES) return undefined;
  if (crc32(buf.subarray(off + FRAME_HEADER_BYTES, frameEnd)) !== buf.readUInt32LE(off + 4)) return undefined;
  const records: number[] = [];
  for (let p = off + FRAME_HEADER_BYTES; p < frameEnd;) {
    const n = unitAt(buf, p, frameEnd);
    if (!(n > 0)) return undefined;
    records.push(p);
    p += n;
  }
  return { length: frameEnd - off, records };
}

/** Decodes the record unitAt() accepted at `off`; the payload is copied out of `buf`. */
export function decodeRecord(buf: Buffer, off: number): T.Event {
  const timeMs = buf.readDoubleLE(off + 5);
  const idLen = buf.readUInt16LE(off + 13);
  const id = buf.toString('utf8', off + 15, off + 15 + idLen);
  const typeAt = off + 15 + idLen;
  const typeLen = buf.readUInt16LE(typeAt);
  const type = buf.toString('utf8', typeAt + 2, typeAt + 2 + typeLen);
  const payloadAt = typeAt + 2 + typeLen;
  const payloadLen = buf.readUInt32LE(payloadAt);
  const payloadJson = Buffer.from(buf.subarray(payloadAt + 4, payloadAt + 4 + payloadLen));
  return { id, type, payloadJson, timeMs };
}
