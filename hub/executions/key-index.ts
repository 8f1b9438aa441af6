/**
 * Strings to small slot numbers with no JavaScript object per key: the keys lie end to end in one
 * byte array (one byte per character when every code unit is under 256, two otherwise), an
 * open-addressing table (linear probing, backward-shift deletion, load ≤ 0.5) maps a keyed hash
 * to a slot, and per-slot columns are typed arrays.
 *
 * Why: the hub keeps up to `maxCount` (100,000) finished executions and their history spans
 * for days. As strings in Maps, each key was a heap object that survived two scavenges, was
 * copied into the old generation and marked by every full GC: at 1,000 executions/s the old
 * generation grew ~1.2 MB/s and a mark-compact stalled the hub for 40–55 ms every ~5 s (the
 * e2a tail). Typed arrays live outside the JavaScript heap (their bytes are external memory,
 * which the GC neither copies nor marks).
 *
 * Slots are dense and reused after removal (a free list); the owner keeps its own columns indexed
 * by slot (`slotLimit` covers them all). Removed keys' bytes are reclaimed by compaction once
 * they are over half of what is stored. Keys may come from agents (edge execution ids, event ids inside
 * dedup keys): each index hashes with its own random 64-bit key through a keyed pseudo-random
 * function (`sipHash32`), so chosen keys cannot pile onto one probe chain.
 */
import { randomBytes } from 'node:crypto';

const MIN_TABLE = 16;
/** Code units of an execution id (a ULID): what a reservation counts per key. */
export const ID_UNITS = 26;
/** Code units decoded per String.fromCharCode call (its argument count is bounded). */
const DECODE_CHUNK = 4096;

/** The secret key of a keyed hash: 64 random bits (tests give a seed for a fixed one). */
export interface HashKey { k0: number; k1: number }

export function hashKey(seed?: number): HashKey {
  if (seed === undefined) { const b = randomBytes(8); return { k0: b.readInt32LE(0), k1: b.readInt32LE(4) }; }
  return { k0: seed | 0, k1: Math.imul(seed, 0x9e3779b1) | 0 };
}

const rotl = (x: number, b: number) => (x << b) | (x >>> (32 - b));

/**
 * HalfSipHash-1-3 (Aumasson; SipHash on 32-bit words, as Linux keys its hash tables on 32-bit
 * machines; 1-3 rounds, as Rust's HashMap uses SipHash) of `s` under `key`, 32 bits out; the
 * input is read as 32-bit words of two UTF-16 code units each, the last one padded, with the
 * length in code units in the final word.
 * A keyed pseudo-random function: without the key, keys that share a hash (and so a probe chain)
 * cannot be chosen. MurmurHash3 with a random seed was not enough: it has multicollisions that
 * hold for every seed, and keys here come from agents (edge execution ids, event ids in dedup keys).
 */
export function sipHash32(s: string, key: HashKey): number {
  let v0 = key.k0, v1 = key.k1, v2 = 0x6c796765 ^ key.k0, v3 = 0x74656462 ^ key.k1;
  const n = s.length;
  const words = (n + 1) >>> 1; // full words, the last maybe half
  for (let w = 0; w <= words; w++) {
    let m: number;
    if (w < words) { const i = w << 1; m = s.charCodeAt(i) | (i + 1 < n ? s.charCodeAt(i + 1) << 16 : 0); }
    else m = (n & 0xffff) | 0x55aa0000; // the final word: the length, and a marker no text word can be confused with at this position
    v3 ^= m;
    v0 = (v0 + v1) | 0; v1 = rotl(v1, 5); v1 ^= v0; v0 = rotl(v0, 16);
    v2 = (v2 + v3) | 0; v3 = rotl(v3, 8); v3 ^= v2;
    v0 = (v0 + v3) | 0; v3 = rotl(v3, 7); v3 ^= v0;
    v2 = (v2 + v1) | 0; v1 = rotl(v1, 13); v1 ^= v2; v2 = rotl(v2, 16);
    v0 ^= m;
  }
  v2 ^= 0xff;
  for (let r = 0; r < 3; r++) {
    v0 = (v0 + v1) | 0; v1 = rotl(v1, 5); v1 ^= v0; v0 = rotl(v0, 16);
    v2 = (v2 + v3) | 0; v3 = rotl(v3, 8); v3 ^= v2;
    v0 = (v0 + v3) | 0; v3 = rotl(v3, 7); v3 ^= v0;
    v2 = (v2 + v1) | 0; v1 = rotl(v1, 13); v1 ^= v2; v2 = rotl(v2, 16);
  }
  return v1 ^ v3;
}

/** Adds `slot` to an open-addressing table of slot + 1 values (0 = empty, linear probing, a power-of-two length) at its home `h`. */
/** The size of an open-addressing table (a power of two, now `size`) that holds `entries` at a load of at most a half. */
export function tableSizeFor(entries: number, size: number): number {
  while (entries * 2 > size) size *= 2;
  return size;
}

export function placeSlot(t: Int32Array, slot: number, h: number): void {
  const mask = t.length - 1;
  let i = h & mask;
  while (t[i] !== 0) i = (i + 1) & mask;
  t[i] = slot + 1;
}

/**
 * Removes `slot` from an open-addressing table of slot + 1 values (0 = empty, linear probing,
 * a power-of-two length) whose home positions are `hash[slot] & mask`, by backward shift: the
 * entries after it move back so that no probe chain breaks (no tombstones).
 */
export function removeSlot(t: Int32Array, slot: number, hash: Int32Array): void {
  const mask = t.length - 1;
  let i = hash[slot]! & mask;
  while (t[i] !== slot + 1) i = (i + 1) & mask;
  for (let j = (i + 1) & mask; t[j] !== 0; j = (j + 1) & mask) {
    const k = hash[t[j]! - 1]! & mask; // where the entry at j wants to be
    // It moves to the hole at i unless its home lies cyclically in (i, j].
    if (i <= j ? (k <= i || k > j) : (k <= i && k > j)) { t[i] = t[j]!; i = j; }
  }
  t[i] = 0;
}

/** Grows a typed array to at least `n` elements (doubling), keeping its contents. */
export function grown<A extends Int32Array | Uint32Array | Float64Array | Uint8Array | Uint16Array>(a: A, n: number): A {
  if (n <= a.length) return a;
  let len = Math.max(a.length, 8);
  while (len < n) len *= 2;
  const b = new (a.constructor as new (n: number) => A)(len);
  b.set(a);
  return b;
}

export class KeyIndex {
  private bytes = new Uint8Array(1024);
  /** The same memory as 16-bit units (two-byte keys start at an even offset). */
  private u16 = new Uint16Array(this.bytes.buffer);
  /** Bytes in use (live and removed keys) and of removed keys. */
  private used = 0;
  private garbage = 0;
  private off = new Uint32Array(16);
  /** Length in code units. */
  private len = new Uint32Array(16);
  /** 1: two bytes per code unit. */
  private wide = new Uint8Array(16);
  private hash = new Int32Array(16);
  private alive = new Uint8Array(16);
  /**
   * Code units 0–6 and 7–13 as base-128 numbers (-1 when one is 0 or over 127): most comparisons
   * end here (ULIDs: the first holds most of the time, the second the rest and the first random
   * characters).
   */
  private prefix = new Float64Array(16);
  private prefix2 = new Float64Array(16);
  /** Slot + 1 per table entry, 0 = empty; a power of two. */
  private table = new Int32Array(MIN_TABLE);
  private mask = MIN_TABLE - 1;
  private free = new Int32Array(16);
  private freeCount = 0;
  /** Slots ever handed out (a column sized to this covers every slot). */
  private top = 0;
  private count = 0;

  private readonly secret: HashKey;

  /** `seed`: a fixed hash key (tests); random otherwise. */
  constructor(seed?: number) { this.secret = hashKey(seed); }

  /** Keys held. */
  get size(): number { return this.count; }

  /** One past the highest slot in use: columns of this length cover every slot. */
  get slotLimit(): number { return this.top; }

  /** Whether `slot` holds a key. */
  has(slot: number): boolean { return slot >= 0 && slot < this.top && this.alive[slot] === 1; }

  /** The hash `find` and `insert` compute for `key`: a caller that does both passes it to each once. */
  hashOf(key: string): number {
    return sipHash32(key, this.secret);
  }

  /** Code unit `i` of the key in `slot`. */
  private unit(slot: number, i: number): number {
    const o = this.off[slot]!;
    return this.wide[slot] === 1 ? this.u16[(o >> 1) + i]! : this.bytes[o + i]!;
  }

  private equals(slot: number, key: string): boolean {
    const n = this.len[slot]!;
    if (n !== key.length) return false;
    const o = this.off[slot]!;
    if (this.wide[slot] === 1) {
      const u = this.u16, w = o >> 1;
      for (let i = 0; i < n; i++) if (u[w + i] !== key.charCodeAt(i)) return false;
    } else {
      const b = this.bytes;
      for (let i = 0; i < n; i++) if (b[o + i] !== key.charCodeAt(i)) return false;
    }
    return true;
  }

  /** Room for `keys` keys of about `units` code units in all without growing (a load of known size). */
  reserve(keys: number, units: number): void {
    const slots = this.top + keys;
    this.grow(slots);
    this.room(units);
    const size = tableSizeFor(this.count + keys, this.table.length);
    if (size > this.table.length) this.rehash(size);
  }

  /** The slot of `key`, or -1 (also for a value that is not a string: ids come from requests). */
  find(key: string, h?: number): number {
    if (typeof key !== 'string') return -1;
    h ??= this.hashOf(key);
    const t = this.table, mask = this.mask;
    for (let i = h & mask; ; i = (i + 1) & mask) {
      const v = t[i]!;
      if (v === 0) return -1;
      if (this.hash[v - 1] === h && this.equals(v - 1, key)) return v - 1;
    }
  }

  /** Adds a key known not to be held; returns its slot. `h`: `hashOf(key)`, when the caller has it. */
  insert(key: string, h = this.hashOf(key)): number {
    if ((this.count + 1) * 2 > this.table.length) this.rehash(this.table.length * 2);
    const slot = this.freeCount > 0 ? this.free[--this.freeCount]! : this.top++;
    this.grow(slot + 1);
    const n = key.length;
    let wide = 0;
    for (let i = 0; i < n; i++) if (key.charCodeAt(i) > 255) { wide = 1; break; }
    this.room(wide ? 2 * n + 1 : n);
    let o = this.used;
    if (wide) {
      o += o & 1; // aligned for the 16-bit view
      const u = this.u16, w = o >> 1;
      for (let i = 0; i < n; i++) u[w + i] = key.charCodeAt(i);
      this.used = o + 2 * n;
    } else {
      const b = this.bytes;
      for (let i = 0; i < n; i++) b[o + i] = key.charCodeAt(i);
      this.used = o + n;
    }
    this.off[slot] = o; this.len[slot] = n; this.wide[slot] = wide; this.hash[slot] = h; this.alive[slot] = 1;
    this.prefix[slot] = prefixOf(key);
    this.prefix2[slot] = prefixOf(key, 7);
    placeSlot(this.table, slot, h);
    this.count++;
    return slot;
  }

  /** Removes the key in `slot` (nothing if the slot holds none); the slot may be handed out again. */
  remove(slot: number): void {
    if (!this.has(slot)) return;
    removeSlot(this.table, slot, this.hash);
    this.alive[slot] = 0;
    this.garbage += this.len[slot]! * (this.wide[slot]! + 1);
    this.count--;
    this.free = grown(this.free, this.freeCount + 1);
    this.free[this.freeCount++] = slot;
    if (this.count === 0) { this.used = 0; this.garbage = 0; } // nothing left to keep
    else if (this.table.length > MIN_TABLE && this.count * 8 < this.table.length) this.rehash(this.table.length / 2);
  }

  /** The key in `slot` ('' for a slot that holds none). */
  key(slot: number): string {
    if (!this.has(slot)) return '';
    const o = this.off[slot]!, n = this.len[slot]!;
    if (this.wide[slot] !== 1) return Buffer.from(this.bytes.buffer, this.bytes.byteOffset + o, n).toString('latin1');
    let s = '';
    const w = o >> 1;
    for (let i = 0; i < n; i += DECODE_CHUNK) s += String.fromCharCode.apply(null, this.u16.subarray(w + i, w + Math.min(n, i + DECODE_CHUNK)) as unknown as number[]);
    return s;
  }

  /**
   * Compares the key in `slot` with `key` as strings compare (by UTF-16 code units): < 0, 0, > 0.
   * `keyPrefix`: `[prefixOf(key), prefixOf(key, 7)]`, when the caller compares many slots with one key.
   */
  compare(slot: number, key: string, keyPrefix = [prefixOf(key), prefixOf(key, 7)] as const): number {
    const p = this.prefix[slot]!;
    if (p >= 0 && keyPrefix[0] >= 0 && p !== keyPrefix[0]) return p - keyPrefix[0];
    const p2 = this.prefix2[slot]!;
    if (p === keyPrefix[0] && p >= 0 && p2 >= 0 && keyPrefix[1] >= 0 && p2 !== keyPrefix[1]) return p2 - keyPrefix[1];
    const n = this.len[slot]!;
    const m = Math.min(n, key.length);
    for (let i = 0; i < m; i++) {
      const d = this.unit(slot, i) - key.charCodeAt(i);
      if (d !== 0) return d;
    }
    return n - key.length;
  }

  /** Compares the keys in two slots as strings compare. */
  compareSlots(a: number, b: number): number {
    const pa = this.prefix[a]!, pb = this.prefix[b]!;
    if (pa >= 0 && pb >= 0 && pa !== pb) return pa - pb;
    if (pa >= 0 && pa === pb) { // the first 7 are equal: the next 7 may tell
      const qa = this.prefix2[a]!, qb = this.prefix2[b]!;
      if (qa >= 0 && qb >= 0 && qa !== qb) return qa - qb;
    }
    const na = this.len[a]!, nb = this.len[b]!;
    const m = Math.min(na, nb);
    if (this.wide[a] === 0 && this.wide[b] === 0) {
      const bytes = this.bytes, oa = this.off[a]!, ob = this.off[b]!;
      for (let i = 0; i < m; i++) {
        const d = bytes[oa + i]! - bytes[ob + i]!;
        if (d !== 0) return d;
      }
      return na - nb;
    }
    for (let i = 0; i < m; i++) {
      const d = this.unit(a, i) - this.unit(b, i);
      if (d !== 0) return d;
    }
    return na - nb;
  }

  /** Calls `fn` with every slot that holds a key (removing the current one is allowed). */
  forEach(fn: (slot: number) => void): void {
    for (let s = 0; s < this.top; s++) if (this.alive[s] === 1) fn(s);
  }

  /** Bytes stored and typed-array bytes held (diagnostics, tests). */
  get stats(): { used: number; garbage: number; bytes: number; table: number } {
    const bytes = this.bytes.byteLength + this.off.byteLength + this.len.byteLength + this.wide.byteLength + this.hash.byteLength
      + this.alive.byteLength + this.prefix.byteLength + this.prefix2.byteLength + this.table.byteLength + this.free.byteLength;
    return { used: this.used, garbage: this.garbage, bytes, table: this.table.length };
  }

  private grow(slots: number): void {
    if (slots <= this.off.length) return;
    this.off = grown(this.off, slots); this.len = grown(this.len, slots); this.wide = grown(this.wide, slots);
    this.hash = grown(this.hash, slots); this.alive = grown(this.alive, slots);
    this.prefix = grown(this.prefix, slots); this.prefix2 = grown(this.prefix2, slots);
  }

  /** Room for `n` more bytes: removed keys' bytes dropped first when they are over half, then the array grown by half. */
  private room(n: number): void {
    if (this.used + n + 1 <= this.bytes.length) return;
    if (this.garbage > this.used / 2) this.compact();
    if (this.used + n + 1 <= this.bytes.length) return;
    let size = Math.max(1024, this.bytes.length);
    while (size < this.used + n + 1) size = Math.ceil(size * 1.5);
    const bytes = new Uint8Array(size + (size & 1));
    bytes.set(this.bytes.subarray(0, this.used));
    this.bytes = bytes;
    this.u16 = new Uint16Array(bytes.buffer);
  }

  private rehash(size: number): void {
    const t = new Int32Array(size);
    for (let s = 0; s < this.top; s++) if (this.alive[s] === 1) placeSlot(t, s, this.hash[s]!);
    this.table = t;
    this.mask = size - 1;
  }

  /** Rewrites the live keys end to end (removed keys' bytes are dropped). */
  private compact(): void {
    const bytes = new Uint8Array(this.bytes.length);
    let o = 0;
    for (let s = 0; s < this.top; s++) {
      if (this.alive[s] !== 1) continue;
      const wide = this.wide[s]!, n = this.len[s]! * (wide + 1), from = this.off[s]!;
      if (wide) o += o & 1;
      bytes.set(this.bytes.subarray(from, from + n), o);
      this.off[s] = o;
      o += n;
    }
    this.bytes = bytes;
    this.u16 = new Uint16Array(bytes.buffer);
    this.used = o;
    this.garbage = 0;
  }
}

/**
 * Code units `from` to `from + 6` of `key` as a base-128 number (a missing one is 0), or -1 when
 * one is 0 or over 127. Two keys whose numbers differ compare as their numbers do (when the
 * units before `from` are equal).
 */
export function prefixOf(key: string, from = 0): number {
  let p = 0;
  for (let i = from; i < from + 7; i++) {
    const c = i < key.length ? key.charCodeAt(i) : 0;
    if (i < key.length && (c === 0 || c > 127)) return -1;
    p = p * 128 + c;
  }
  return p;
}
