/**
 * Strings to small slot numbers with no JavaScript object per key: the keys' UTF-16 code units
 * lie end to end in one typed array, an open-addressing table (linear probing, backward-shift
 * deletion, load ≤ 0.5) maps a seeded hash to a slot, and per-slot columns are typed arrays.
 *
 * Why: the hub keeps up to `maxCount` (100,000) finished executions and their history spans
 * for days. As strings in Maps, each key was a heap object that survived two scavenges, was
 * copied into the old generation and marked by every full GC: at 1,000 executions/s the old
 * generation grew ~1.2 MB/s and a mark-compact stalled the hub for 40–55 ms every ~5 s (the
 * e2a tail). Typed arrays live outside the JavaScript heap (their bytes are external memory,
 * which the GC neither copies nor marks).
 *
 * Slots are dense and reused after removal (a free list); the owner keeps its own columns indexed
 * by slot (see `ensure`). Removed keys' code units are reclaimed by compaction once they are
 * over half of what is stored. Keys may come from agents (event ids inside dedup keys): each
 * index hashes with its own random seed, so chosen keys cannot pile onto one probe chain.
 */
import { randomBytes } from 'node:crypto';
import { murmur128 } from '../events/recent-ids.js';

const MIN_TABLE = 16;
/** Code units decoded per String.fromCharCode call (its argument count is bounded). */
const DECODE_CHUNK = 4096;

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
  private units = new Uint16Array(1024);
  /** Code units in use (live and removed keys) and of removed keys. */
  private used = 0;
  private garbage = 0;
  private off = new Uint32Array(16);
  private len = new Uint32Array(16);
  private hash = new Int32Array(16);
  private alive = new Uint8Array(16);
  /** Slot + 1 per table entry, 0 = empty; a power of two. */
  private table = new Int32Array(MIN_TABLE);
  private mask = MIN_TABLE - 1;
  private free = new Int32Array(16);
  private freeCount = 0;
  /** Slots ever handed out (a column sized to this covers every slot). */
  private top = 0;
  private count = 0;
  private readonly h = new Int32Array(4);

  /** `seed`: the hash seed (random unless given; tests give one). */
  constructor(private readonly seed = randomBytes(4).readInt32LE(0)) {}

  /** Keys held. */
  get size(): number { return this.count; }

  /** One past the highest slot in use: columns of this length cover every slot. */
  get slotLimit(): number { return this.top; }

  /** Whether `slot` holds a key. */
  has(slot: number): boolean { return slot >= 0 && slot < this.top && this.alive[slot] === 1; }

  private hashOf(key: string): number {
    murmur128(key, this.h, this.seed);
    return this.h[0]!;
  }

  private equals(slot: number, key: string): boolean {
    const n = this.len[slot]!;
    if (n !== key.length) return false;
    const u = this.units, o = this.off[slot]!;
    for (let i = 0; i < n; i++) if (u[o + i] !== key.charCodeAt(i)) return false;
    return true;
  }

  /** The slot of `key`, or -1. */
  find(key: string): number {
    const h = this.hashOf(key);
    const t = this.table, mask = this.mask;
    for (let i = h & mask; ; i = (i + 1) & mask) {
      const v = t[i]!;
      if (v === 0) return -1;
      if (this.hash[v - 1] === h && this.equals(v - 1, key)) return v - 1;
    }
  }

  /** The slot of `key`, added if it was not held (`added` tells which). */
  add(key: string): { slot: number; added: boolean } {
    const found = this.find(key);
    if (found >= 0) return { slot: found, added: false };
    return { slot: this.insert(key), added: true };
  }

  /** Adds a key known not to be held; returns its slot. */
  insert(key: string): number {
    if ((this.count + 1) * 2 > this.table.length) this.rehash(this.table.length * 2);
    const slot = this.freeCount > 0 ? this.free[--this.freeCount]! : this.top++;
    if (slot >= this.off.length) {
      this.off = grown(this.off, slot + 1); this.len = grown(this.len, slot + 1);
      this.hash = grown(this.hash, slot + 1); this.alive = grown(this.alive, slot + 1);
    }
    if (this.used + key.length > this.units.length) {
      if (this.garbage > this.used / 2) this.compact();
      this.units = grown(this.units, this.used + key.length);
    }
    const o = this.used;
    for (let i = 0; i < key.length; i++) this.units[o + i] = key.charCodeAt(i);
    this.used += key.length;
    const h = this.hashOf(key);
    this.off[slot] = o; this.len[slot] = key.length; this.hash[slot] = h; this.alive[slot] = 1;
    let i = h & this.mask;
    while (this.table[i] !== 0) i = (i + 1) & this.mask;
    this.table[i] = slot + 1;
    this.count++;
    return slot;
  }

  /** Removes the key in `slot` (nothing if the slot holds none); the slot may be handed out again. */
  remove(slot: number): void {
    if (!this.has(slot)) return;
    const t = this.table, mask = this.mask;
    let i = this.hash[slot]! & mask;
    while (t[i] !== slot + 1) i = (i + 1) & mask;
    for (let j = (i + 1) & mask; t[j] !== 0; j = (j + 1) & mask) {
      const k = this.hash[t[j]! - 1]! & mask; // where the entry at j wants to be
      // It moves to the hole at i unless its home lies cyclically in (i, j].
      if (i <= j ? (k <= i || k > j) : (k <= i && k > j)) { t[i] = t[j]!; i = j; }
    }
    t[i] = 0;
    this.alive[slot] = 0;
    this.garbage += this.len[slot]!;
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
    let s = '';
    for (let i = 0; i < n; i += DECODE_CHUNK) s += String.fromCharCode.apply(null, this.units.subarray(o + i, o + Math.min(n, i + DECODE_CHUNK)) as unknown as number[]);
    return s;
  }

  /** Compares the key in `slot` with `key` as strings compare (by UTF-16 code units): < 0, 0, > 0. */
  compare(slot: number, key: string): number {
    const u = this.units, o = this.off[slot]!, n = this.len[slot]!;
    const m = Math.min(n, key.length);
    for (let i = 0; i < m; i++) {
      const d = u[o + i]! - key.charCodeAt(i);
      if (d !== 0) return d;
    }
    return n - key.length;
  }

  /** Compares the keys in two slots as strings compare. */
  compareSlots(a: number, b: number): number {
    const u = this.units, oa = this.off[a]!, ob = this.off[b]!, na = this.len[a]!, nb = this.len[b]!;
    const m = Math.min(na, nb);
    for (let i = 0; i < m; i++) {
      const d = u[oa + i]! - u[ob + i]!;
      if (d !== 0) return d;
    }
    return na - nb;
  }

  /** Calls `fn` with every slot that holds a key (removing the current one is allowed). */
  forEach(fn: (slot: number) => void): void {
    for (let s = 0; s < this.top; s++) if (this.alive[s] === 1) fn(s);
  }

  /** Code units stored and typed-array bytes held (diagnostics, tests). */
  get stats(): { units: number; garbage: number; bytes: number; table: number } {
    const bytes = this.units.byteLength + this.off.byteLength + this.len.byteLength + this.hash.byteLength
      + this.alive.byteLength + this.table.byteLength + this.free.byteLength;
    return { units: this.used, garbage: this.garbage, bytes, table: this.table.length };
  }

  private rehash(size: number): void {
    const t = new Int32Array(size), mask = size - 1;
    for (let s = 0; s < this.top; s++) {
      if (this.alive[s] !== 1) continue;
      let i = this.hash[s]! & mask;
      while (t[i] !== 0) i = (i + 1) & mask;
      t[i] = s + 1;
    }
    this.table = t;
    this.mask = mask;
  }

  /** Rewrites the live keys end to end (removed keys' code units are dropped). */
  private compact(): void {
    const live = this.used - this.garbage;
    const units = new Uint16Array(Math.max(1024, live * 2));
    let o = 0;
    for (let s = 0; s < this.top; s++) {
      if (this.alive[s] !== 1) continue;
      const n = this.len[s]!, from = this.off[s]!;
      units.set(this.units.subarray(from, from + n), o);
      this.off[s] = o;
      o += n;
    }
    this.units = units;
    this.used = o;
    this.garbage = 0;
  }
}
