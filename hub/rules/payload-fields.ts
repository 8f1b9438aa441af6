/**
 * The top-level fields of an event payload that the hub rules of its type read, taken from the
 * payload bytes without parsing the rest into objects.
 *
 * On the ingest hot path most events are matched and not fired: their criteria read one or two
 * fields, yet `JSON.parse` of the whole payload (plus its UTF-8 decoding, and the garbage of every
 * value it builds) was most of what rules cost per event. Here one pass over the bytes checks that
 * the whole payload is JSON exactly as `JSON.parse(payload.toString('utf8'))` would accept it (a
 * payload that is not JSON is `null` for rules, as before: criteria on it are false) and notes
 * where the wanted top-level fields' values lie (the last one of a key given twice, as JSON.parse
 * keeps); only those values are decoded. A payload that is JSON but not an object answers
 * `FULL_PARSE` (the caller parses it whole, as before: criteria index arrays by position).
 *
 * Equivalence with JSON.parse over the UTF-8 decoding: outside strings only ASCII is JSON, so a
 * byte ≥ 0x80 there is an error; inside strings any byte ≥ 0x80 is accepted (decoding turns
 * invalid sequences into U+FFFD, never into a quote or a control character, and never swallows an
 * ASCII byte), so string boundaries are the same on bytes as on the decoded text, and a value's
 * bytes decode to the same text alone as within the whole payload.
 */

import { PAYLOAD_SCAN_WASM } from './payload-scan-wasm.js';
import { MAX_EVENT_PAYLOAD_BYTES } from '../events/index.js';

/** The payload is JSON but not an object: parse it whole. */
export const FULL_PARSE = Symbol('full-parse');

/** Which scanner reads payloads: the WebAssembly one where it can (default), or the TypeScript one alone. */
export type ScannerChoice = 'auto' | 'typescript';

const EMPTY = Buffer.alloc(0);

const OBJ = 1, ARR = 2;
const enum Mode { Value, After, Key }

export class PayloadFields {
  private readonly keyBytes: Buffer[];
  private readonly start: Int32Array;
  private readonly end: Int32Array;
  /** Per wanted key: its string value had an escape or a non-ASCII byte. */
  private readonly endSpecial: Uint8Array;
  /**
   * The answer, reused from one read to the next (no allocation per event). Every wanted key is
   * an own property, answering undefined when absent: rules read fields through an own-property
   * step that answers undefined for an absent key and for an undefined one alike. Each is a getter
   * that decodes its value on first use after a read: most events are matched and not fired, and
   * their criteria stop at the first that fails, so a field the criteria never reach is never
   * decoded (a string value cost ~280 ns to make, more than matching ten rules). Without prototype
   * when a key is `__proto__` (then an ordinary field).
   */
  private readonly out: Record<string, unknown>;
  /** The payload of the last read (its values are decoded from it on demand), until release(). */
  private buf: Buffer = EMPTY;
  /** Per wanted key: the read its value was decoded for (`gen`), and the value. */
  private readonly decodedIn: Float64Array;
  private readonly values: unknown[];
  private gen = 0;
  /** A view of the payload for reading 4 bytes at a time (long strings), set per read. */
  private view?: DataView;
  private stack = new Uint8Array(32);
  /** Set by str(): the string had an escape or a non-ASCII byte. */
  private special = false;

  /** The WebAssembly scanner, unless the TypeScript one was asked for (it is also the fallback). */
  private readonly wasm: boolean;

  constructor(readonly keys: readonly string[], o: { scanner?: ScannerChoice } = {}) {
    this.wasm = (o.scanner ?? 'auto') === 'auto';
    this.keyBytes = keys.map((k) => Buffer.from(k, 'utf8'));
    this.start = new Int32Array(keys.length);
    this.end = new Int32Array(keys.length);
    this.endSpecial = new Uint8Array(keys.length);
    this.decodedIn = new Float64Array(keys.length);
    this.values = keys.map(() => undefined);
    const out = (keys.includes('__proto__') ? Object.create(null) : {}) as Record<string, unknown>;
    keys.forEach((k, idx) => Object.defineProperty(out, k, { get: () => this.value(idx), enumerable: true }));
    this.out = out;
  }

  /**
   * The wanted fields of the payload (absent ones undefined), `null` when the payload is not JSON,
   * FULL_PARSE when it is JSON but not an object. The object answered is valid until the next
   * read (it is reused).
   */
  read(buf: Uint8Array): Record<string, unknown> | null | typeof FULL_PARSE {
    try {
      return this.scan(buf);
    } finally {
      this.view = undefined; // whatever the answer: no view of the payload is kept
    }
  }

  /** Which scanner answered the last read (tests). */
  lastScanner: 'wasm' | 'typescript' | undefined;

  private scan(buf: Uint8Array): Record<string, unknown> | null | typeof FULL_PARSE {
    const w = this.wasm ? wasmScanner() : undefined;
    if (w && buf.length <= WASM_MAX_INPUT) {
      const r = w.scan(this.keyBytes, buf, this.start, this.end, this.endSpecial);
      if (r !== WASM_FALLBACK) {
        this.lastScanner = 'wasm';
        return r === WASM_OBJECT ? this.result(buf) : r === WASM_NOT_JSON ? null : FULL_PARSE;
      }
    }
    this.lastScanner = 'typescript';
    return this.scanTs(buf);
  }

  /** The reference scanner (payload-scan.c is the same algorithm). */
  private scanTs(buf: Uint8Array): Record<string, unknown> | null | typeof FULL_PARSE {
    const n = buf.length;
    let i = ws(buf, 0);
    if (i >= n) return null;
    if (buf[i] !== 0x7b) return FULL_PARSE; // '{'
    const start = this.start, end = this.end;
    start.fill(-1);
    this.view = n >= 64 ? new DataView(buf.buffer, buf.byteOffset, n) : undefined;
    let depth = 0;
    let cur = -1; // the wanted key whose value is being read (top level only)
    let mode = Mode.Value;
    for (;;) {
      if (mode === Mode.Value) {
        if (i >= n) return null;
        const c = buf[i]!;
        if (c === 0x7b || c === 0x5b) { // { [
          i = ws(buf, i + 1);
          if (i >= n) return null;
          if (buf[i] === (c === 0x7b ? 0x7d : 0x5d)) { i++; mode = Mode.After; continue; }
          if (depth === this.stack.length) { const s = new Uint8Array(depth * 2); s.set(this.stack); this.stack = s; }
          this.stack[depth++] = c === 0x7b ? OBJ : ARR;
          mode = c === 0x7b ? Mode.Key : Mode.Value;
          continue;
        }
        if (c === 0x22) i = this.str(buf, i);
        else if (c === 0x2d || (c >= 0x30 && c <= 0x39)) i = num(buf, i);
        else if (c === 0x74) i = lit(buf, i, TRUE);
        else if (c === 0x66) i = lit(buf, i, FALSE);
        else if (c === 0x6e) i = lit(buf, i, NULL);
        else return null;
        if (i < 0) return null;
        mode = Mode.After;
        continue;
      }
      if (mode === Mode.After) {
        if (depth === 1 && cur >= 0) { end[cur] = i; this.endSpecial[cur] = this.special ? 1 : 0; cur = -1; }
        i = ws(buf, i);
        if (depth === 0) return i === n ? this.result(buf) : null;
        if (i >= n) return null;
        const c = buf[i]!;
        const top = this.stack[depth - 1];
        if (c === 0x2c) { i = ws(buf, i + 1); mode = top === OBJ ? Mode.Key : Mode.Value; continue; } // ,
        if ((top === OBJ && c === 0x7d) || (top === ARR && c === 0x5d)) { i++; depth--; continue; }
        return null;
      }
      // Mode.Key
      if (i >= n || buf[i] !== 0x22) return null;
      const ks = i;
      i = this.str(buf, i);
      if (i < 0) return null;
      if (depth === 1) cur = this.wanted(buf, ks + 1, i - 1);
      i = ws(buf, i);
      if (i >= n || buf[i] !== 0x3a) return null; // :
      i = ws(buf, i + 1);
      if (depth === 1 && cur >= 0) start[cur] = i;
      mode = Mode.Value;
    }
  }

  /** Index of the wanted key spelled by bytes [s, e) of a key (decoded when escaped or non-ASCII), or -1. */
  private wanted(buf: Uint8Array, s: number, e: number): number {
    const kb = this.keyBytes;
    if (this.special) {
      const key = JSON.parse(Buffer.from(buf.buffer, buf.byteOffset + s - 1, e - s + 2).toString('utf8')) as string;
      return this.keys.indexOf(key);
    }
    const len = e - s;
    for (let k = 0; k < kb.length; k++) {
      const b = kb[k]!;
      if (b.length !== len) continue;
      let j = 0;
      while (j < len && buf[s + j] === b[j]) j++;
      if (j === len) return k;
    }
    return -1;
  }

  /** Past the string starting at the quote `i`, or -1 (unterminated, bad escape, raw control character). */
  private str(buf: Uint8Array, i: number): number {
    const n = buf.length;
    let special = false;
    let j = i + 1;
    const v = this.view;
    if (v) {
      // Four bytes at a time while none of them is a quote, a backslash, a control character or
      // non-ASCII (each test is exact for "some byte is": no byte is skipped that the loop below
      // would stop at); the loop below takes it from the first that is.
      for (; j + 4 <= n; j += 4) {
        const x = v.getUint32(j, true);
        const q = x ^ 0x22222222, b = x ^ 0x5c5c5c5c;
        if ((x & 0x80808080) !== 0 || (((x - 0x20202020) & ~x) | ((q - 0x01010101) & ~q) | ((b - 0x01010101) & ~b)) & 0x80808080) break;
      }
    }
    for (; j < n; j++) {
      const c = buf[j]!;
      if (PLAIN[c] === 1) continue; // most bytes of most strings
      if (c === 0x22) { this.special = special; return j + 1; }
      if (c === 0x5c) {
        special = true;
        const d = buf[j + 1];
        if (d === 0x75) { // \uXXXX
          if (j + 5 >= n || !hex(buf[j + 2]!) || !hex(buf[j + 3]!) || !hex(buf[j + 4]!) || !hex(buf[j + 5]!)) return -1;
          j += 5;
        } else if (d === 0x22 || d === 0x5c || d === 0x2f || d === 0x62 || d === 0x66 || d === 0x6e || d === 0x72 || d === 0x74) j++;
        else return -1;
      } else if (c < 0x20) return -1;
      else if (c >= 0x80) special = true;
    }
    return -1;
  }

  private result(buf: Uint8Array): Record<string, unknown> {
    this.buf = buf instanceof Buffer ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.length);
    this.gen++;
    return this.out;
  }

  /**
   * Lets go of the last payload (its answer then reads every field as undefined). The payload is
   * a slice of the gRPC message it came in, which may be megabytes: a plan kept per trigger type
   * must not hold one such message each between events.
   */
  release(): void {
    this.buf = EMPTY; // value() answers undefined until the next read
    this.gen++;
    if (this.decodedSinceRelease) { this.values.fill(undefined); this.decodedSinceRelease = false; } // decoded values (a parsed object field may be large) go too
  }

  /** A value was decoded since the last release(). */
  private decodedSinceRelease = false;

  /** The value of wanted key `k` in the last payload read, decoded once per read. */
  private value(k: number): unknown {
    if (this.decodedIn[k] === this.gen) return this.values[k];
    const s = this.buf === EMPTY ? -1 : this.start[k]!;
    let v: unknown;
    this.decodedSinceRelease = true;
    if (s >= 0) {
      const b = this.buf, e = this.end[k]!, c = b[s]!;
      if (c === 0x2d || (c >= 0x30 && c <= 0x39)) v = numberAt(b, s, e);
      else if (c === 0x22) v = this.endSpecial[k] ? JSON.parse(b.toString('utf8', s, e)) : b.toString('latin1', s + 1, e - 1); // plain ASCII: its bytes are its text
      else if (c === 0x74) v = true;
      else if (c === 0x66) v = false;
      else if (c === 0x6e) v = null;
      else v = JSON.parse(b.toString('utf8', s, e)); // an object or a list: JSON.parse of the value alone
    }
    this.values[k] = v;
    this.decodedIn[k] = this.gen;
    return v;
  }
}

/** Results of payload-scan.c's scan(). */
const WASM_NOT_JSON = 0, WASM_OBJECT = 1, WASM_FALLBACK = 3;
/** The largest payload given to the WebAssembly scanner: an agent's event at most; a larger one (a webhook's) goes to the TypeScript scanner. */
const WASM_MAX_INPUT = MAX_EVENT_PAYLOAD_BYTES;

/** What is used of the WebAssembly global (not in this project's type libraries); undefined where WebAssembly is off. */
interface WasmMemory { readonly buffer: ArrayBuffer; grow(pages: number): number }
interface WasmApi {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: { memory: WasmMemory; scan: WasmScanFn; __heap_base: { value: number } } };
}
type WasmScanFn = (b: number, n: number, keys: number, nkeys: number, out: number) => number;

/**
 * payload-scan.c compiled to WebAssembly (payload-scan-wasm.ts): one instance per process, shared
 * by every PayloadFields. Its memory holds, from the module's heap base: the wanted keys of the
 * PayloadFields that used it last ((address, length) pairs, then their bytes), its answer (start,
 * end, special per key), and the payload, copied in per read and followed by a 0 byte and 16
 * bytes of slack (what the C scanner expects).
 */
class WasmScanner {
  private readonly memory: WasmMemory;
  private readonly fn: WasmScanFn;
  private readonly base: number;
  private u8: Uint8Array;
  private i32: Int32Array;
  /** The key list laid out in memory now (compared by identity: each PayloadFields has its own). */
  private keysOf?: readonly Buffer[];
  private keysAt = 0;
  private outAt = 0;
  private inputAt = 0;

  constructor() {
    const api = (globalThis as { WebAssembly?: WasmApi }).WebAssembly;
    if (!api) throw new Error('WebAssembly is off');
    const ex = new api.Instance(new api.Module(Buffer.from(PAYLOAD_SCAN_WASM, 'base64')), {}).exports;
    this.memory = ex.memory;
    this.fn = ex.scan;
    this.base = Number(ex.__heap_base.value);
    this.u8 = new Uint8Array(this.memory.buffer);
    this.i32 = new Int32Array(this.memory.buffer);
  }

  /** Lays out `keys` (once per change of key list) and makes room for the largest payload after them. */
  private load(keys: readonly Buffer[]): void {
    const align = (x: number) => (x + 7) & ~7;
    this.keysAt = align(this.base);
    let bytesAt = this.keysAt + 8 * keys.length;
    this.outAt = align(bytesAt + keys.reduce((s, k) => s + k.length, 0));
    this.inputAt = align(this.outAt + 12 * keys.length);
    const need = this.inputAt + WASM_MAX_INPUT + 32;
    if (need > this.memory.buffer.byteLength) {
      this.memory.grow(Math.ceil((need - this.memory.buffer.byteLength) / 65536));
      this.u8 = new Uint8Array(this.memory.buffer);
      this.i32 = new Int32Array(this.memory.buffer);
    }
    keys.forEach((k, idx) => {
      this.i32[this.keysAt / 4 + 2 * idx] = bytesAt;
      this.i32[this.keysAt / 4 + 2 * idx + 1] = k.length;
      this.u8.set(k, bytesAt);
      bytesAt += k.length;
    });
    this.keysOf = keys;
  }

  /** Scans `buf` for `keys`; on WASM_OBJECT the value ranges are in start, end and special. */
  scan(keys: readonly Buffer[], buf: Uint8Array, start: Int32Array, end: Int32Array, special: Uint8Array): number {
    if (keys !== this.keysOf) this.load(keys);
    const n = buf.length, u8 = this.u8;
    u8.set(buf, this.inputAt);
    u8[this.inputAt + n] = 0;
    const r = this.fn(this.inputAt, n, this.keysAt, keys.length, this.outAt);
    if (r === WASM_OBJECT) {
      const i32 = this.i32;
      for (let k = 0, o = this.outAt / 4; k < keys.length; k++, o += 3) {
        start[k] = i32[o]!;
        end[k] = i32[o + 1]!;
        special[k] = i32[o + 2]!;
      }
    }
    return r;
  }
}

/** The process's WebAssembly scanner; null where it cannot run (WebAssembly off, e.g. node --jitless, or no SIMD). */
let wasmInstance: WasmScanner | null | undefined;
function wasmScanner(): WasmScanner | undefined {
  if (wasmInstance === undefined) {
    try { wasmInstance = new WasmScanner(); } catch { wasmInstance = null; }
  }
  return wasmInstance ?? undefined;
}

/** 1 for the bytes a string may hold as they are (printable ASCII but the quote and the backslash). */
const PLAIN = new Uint8Array(256);
for (let c = 0x20; c < 0x80; c++) if (c !== 0x22 && c !== 0x5c) PLAIN[c] = 1;

const POW10 = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22];

/**
 * The JSON number in bytes [s, e) (already validated). Clinger's fast path: with at most 15
 * significant digits and a decimal exponent within ±22, both the digits and the power of ten are
 * exact doubles, so one multiplication or division rounds correctly, as Number() does; anything
 * else goes through Number().
 */
function numberAt(b: Buffer, s: number, e: number): number {
  let i = s;
  const neg = b[i] === 0x2d;
  if (neg) i++;
  let m = 0, digits = 0, exp = 0;
  for (; i < e; i++) {
    const c = b[i]!;
    if (c >= 0x30 && c <= 0x39) { if (digits > 0 || c !== 0x30) digits++; m = m * 10 + (c - 0x30); continue; }
    if (c === 0x2e) { for (i++; i < e; i++) { const d = b[i]!; if (d < 0x30 || d > 0x39) break; if (digits > 0 || d !== 0x30) digits++; m = m * 10 + (d - 0x30); exp--; } }
    break;
  }
  if (i < e || digits > 15 || exp < -22) return Number(b.toString('latin1', s, e)); // an exponent part, or beyond the fast path
  const v = exp === 0 ? m : m / POW10[-exp]!;
  return neg ? -v : v;
}

const TRUE = [0x74, 0x72, 0x75, 0x65], FALSE = [0x66, 0x61, 0x6c, 0x73, 0x65], NULL = [0x6e, 0x75, 0x6c, 0x6c];

function lit(buf: Uint8Array, i: number, word: readonly number[]): number {
  for (let k = 0; k < word.length; k++) if (buf[i + k] !== word[k]) return -1;
  return i + word.length;
}

const digit = (c: number | undefined) => c !== undefined && c >= 0x30 && c <= 0x39;
const hex = (c: number) => (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x46) || (c >= 0x61 && c <= 0x66);

/** Past the JSON number at `i`, or -1. */
function num(buf: Uint8Array, i: number): number {
  if (buf[i] === 0x2d) i++;
  if (buf[i] === 0x30) i++;
  else if (digit(buf[i])) { while (digit(buf[i])) i++; } else return -1;
  if (buf[i] === 0x2e) { i++; if (!digit(buf[i])) return -1; while (digit(buf[i])) i++; }
  if (buf[i] === 0x65 || buf[i] === 0x45) {
    i++;
    if (buf[i] === 0x2b || buf[i] === 0x2d) i++;
    if (!digit(buf[i])) return -1;
    while (digit(buf[i])) i++;
  }
  return i;
}

/** Past JSON whitespace (space, tab, LF, CR). */
function ws(buf: Uint8Array, i: number): number {
  const n = buf.length;
  while (i < n) {
    const c = buf[i]!;
    if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) break;
    i++;
  }
  return i;
}
