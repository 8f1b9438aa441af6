/**
 * The de-duplication window of one agent: the last `capacity` event ids it sent, each kept as a
 * 128-bit hash (MurmurHash3 x86_128 of the id's UTF-16 code units) in typed arrays, not as a
 * string in a Set.
 *
 * Why: every event id stays in the window for the next `capacity` events of its agent, so with
 * strings in a Set each id outlived the young generation and was copied and promoted by the GC
 * (measured: ~1.4 µs of hub CPU per event, more than the rules of ingest_events_per_s cost),
 * and 20,000 ids took ~1.5 MB per busy agent. Here a window is a ring of hashes plus an
 * open-addressing index (linear probing, backward-shift deletion): no allocation per event, 32–48
 * bytes per remembered id, grown by doubling up to `capacity`. An index slot holds the ring
 * position and the first hash lane side by side, so a probe reads one cache line and the ring only
 * on a likely match (and sequentially, at its head, to forget the oldest).
 *
 * A different id with the same 128-bit hash inside one agent's window would be taken for a
 * duplicate: about capacity × 2^-128 (≈ 6e-35 for 20,000) per event for ids that are not
 * chosen against the hash. Ids chosen to collide can only hide that agent's own events, which
 * it could as well not send: windows are per agent.
 *
 * Event ids come from the agent, so each window hashes with its own random seed: with a fixed
 * seed an agent could choose ids whose hashes share their low bits and turn every lookup into a
 * walk of one long probe chain (hash flooding: tens of µs per event instead of < 1). Ids that
 * collide whatever the seed collide in all 128 bits, are taken for duplicates and never chain.
 */
import { randomBytes } from 'node:crypto';

const C1 = 0x239b961b, C2 = 0xab0e9789, C3 = 0x38b34ae5, C4 = 0xa1e38b93;
const rotl = (x: number, r: number) => (x << r) | (x >>> (32 - r));
const fmix = (h: number) => {
  h ^= h >>> 16; h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13; h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
};

/**
 * MurmurHash3 x86_128 with `seed` of `s` read as 32-bit words of two UTF-16 code units each (the
 * last word of an odd length padded with 0; the length in bytes is mixed in). Writes the four
 * 32-bit lanes to out[0..3].
 */
export function murmur128(s: string, out: Int32Array, seed = 0): void {
  let h1 = seed, h2 = seed, h3 = seed, h4 = seed;
  const n = s.length;
  const words = (n + 1) >>> 1;
  const blocks = words >>> 2;
  for (let b = 0; b < blocks; b++) {
    const i = b << 3; // 8 code units per block, all present
    let k1 = s.charCodeAt(i) | (s.charCodeAt(i + 1) << 16), k2 = s.charCodeAt(i + 2) | (s.charCodeAt(i + 3) << 16);
    let k3 = s.charCodeAt(i + 4) | (s.charCodeAt(i + 5) << 16), k4 = s.charCodeAt(i + 6) | (s.charCodeAt(i + 7) << 16);
    k1 = Math.imul(k1, C1); k1 = rotl(k1, 15); k1 = Math.imul(k1, C2); h1 ^= k1;
    h1 = rotl(h1, 19); h1 = (h1 + h2) | 0; h1 = (Math.imul(h1, 5) + 0x561ccd1b) | 0;
    k2 = Math.imul(k2, C2); k2 = rotl(k2, 16); k2 = Math.imul(k2, C3); h2 ^= k2;
    h2 = rotl(h2, 17); h2 = (h2 + h3) | 0; h2 = (Math.imul(h2, 5) + 0x0bcaa747) | 0;
    k3 = Math.imul(k3, C3); k3 = rotl(k3, 17); k3 = Math.imul(k3, C4); h3 ^= k3;
    h3 = rotl(h3, 15); h3 = (h3 + h4) | 0; h3 = (Math.imul(h3, 5) + 0x96cd1c35) | 0;
    k4 = Math.imul(k4, C4); k4 = rotl(k4, 18); k4 = Math.imul(k4, C1); h4 ^= k4;
    h4 = rotl(h4, 13); h4 = (h4 + h1) | 0; h4 = (Math.imul(h4, 5) + 0x32ac3b17) | 0;
  }
  const tail = blocks << 2;
  const rest = words - tail;
  const word = (w: number) => { const i = w << 1; return s.charCodeAt(i) | (i + 1 < n ? s.charCodeAt(i + 1) << 16 : 0); }; // the last word may be half
  if (rest >= 3) { let k3 = word(tail + 2); k3 = Math.imul(k3, C3); k3 = rotl(k3, 17); k3 = Math.imul(k3, C4); h3 ^= k3; }
  if (rest >= 2) { let k2 = word(tail + 1); k2 = Math.imul(k2, C2); k2 = rotl(k2, 16); k2 = Math.imul(k2, C3); h2 ^= k2; }
  if (rest >= 1) { let k1 = word(tail); k1 = Math.imul(k1, C1); k1 = rotl(k1, 15); k1 = Math.imul(k1, C2); h1 ^= k1; }
  const len = n * 2;
  h1 ^= len; h2 ^= len; h3 ^= len; h4 ^= len;
  h1 = (h1 + h2) | 0; h1 = (h1 + h3) | 0; h1 = (h1 + h4) | 0;
  h2 = (h2 + h1) | 0; h3 = (h3 + h1) | 0; h4 = (h4 + h1) | 0;
  h1 = fmix(h1); h2 = fmix(h2); h3 = fmix(h3); h4 = fmix(h4);
  h1 = (h1 + h2) | 0; h1 = (h1 + h3) | 0; h1 = (h1 + h4) | 0;
  h2 = (h2 + h1) | 0; h3 = (h3 + h1) | 0; h4 = (h4 + h1) | 0;
  out[0] = h1; out[1] = h2; out[2] = h3; out[3] = h4;
}

const INITIAL = 64;

/** Remembers the last `capacity` event ids of one agent (by 128-bit hash). */
export class RecentIds {
  /** Ring of hashes: entry p is lanes[4p .. 4p+3]. */
  private lanes: Int32Array;
  /**
   * Open-addressing index of (ring position + 1, first lane) pairs; position 0 = empty. Slots: a
   * power of two ≥ 2 × ring size.
   */
  private slots: Int32Array;
  private mask: number;
  private size: number;
  private count = 0;
  /** Next ring position to write (the oldest once the ring is full). */
  private head = 0;
  private readonly h = new Int32Array(4);

  /** `seed`: the hash seed (random unless given; tests give one). */
  constructor(private readonly capacity: number, private readonly seed = randomBytes(4).readInt32LE(0)) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError('capacity must be a positive integer');
    this.size = Math.min(capacity, INITIAL);
    this.lanes = new Int32Array(this.size * 4);
    this.slots = new Int32Array(tableSize(this.size) * 2);
    this.mask = (this.slots.length >> 1) - 1;
  }

  /** Ids remembered. */
  get length(): number { return this.count; }

  /** True if the id is new (and remembers it, forgetting the oldest past `capacity`). */
  add(id: string): boolean {
    const h = this.h;
    murmur128(id, h, this.seed);
    const h0 = h[0]!, h1 = h[1]!, h2 = h[2]!, h3 = h[3]!;
    const lanes = this.lanes, slots = this.slots, mask = this.mask;
    let i = h0 & mask;
    for (let s = slots[i << 1]!; s !== 0; s = slots[i << 1]!) {
      if (slots[(i << 1) + 1] === h0) {
        const p = (s - 1) << 2;
        if (lanes[p + 1] === h1 && lanes[p + 2] === h2 && lanes[p + 3] === h3) return false;
      }
      i = (i + 1) & mask;
    }
    if (this.count === this.capacity) {
      this.evict(this.head); // the oldest; its removal may shift entries, so the free slot is searched again
      this.count--;
      i = h0 & mask;
      while (slots[i << 1] !== 0) i = (i + 1) & mask;
    } else if (this.count === this.size) {
      this.grow(); // a new index: the free slot is searched again
      i = h0 & this.mask;
      while (this.slots[i << 1] !== 0) i = (i + 1) & this.mask;
    }
    this.count++;
    this.put(this.head, i, h0, h1, h2, h3);
    this.head = this.head + 1 === this.capacity ? 0 : this.head + 1;
    return true;
  }

  /** The longest run of occupied index slots (a lookup walks at most this far). */
  get longestProbeRun(): number {
    const slots = this.slots;
    const n = slots.length >> 1;
    let longest = 0, run = 0;
    for (let k = 0; k < 2 * n; k++) { // twice round: a run may wrap
      if (slots[(k % n) << 1] !== 0) { run++; if (run > longest) longest = run; } else run = 0;
    }
    return Math.min(longest, n);
  }

  private put(pos: number, slot: number, h0: number, h1: number, h2: number, h3: number): void {
    const p = pos << 2;
    this.lanes[p] = h0; this.lanes[p + 1] = h1; this.lanes[p + 2] = h2; this.lanes[p + 3] = h3;
    this.slots[slot << 1] = pos + 1;
    this.slots[(slot << 1) + 1] = h0;
  }

  /** Removes ring entry `pos` from the index (backward-shift deletion keeps probe chains whole). */
  private evict(pos: number): void {
    const slots = this.slots, mask = this.mask;
    let i = this.lanes[pos << 2]! & mask;
    while (slots[i << 1] !== pos + 1) i = (i + 1) & mask;
    let j = i;
    for (;;) {
      j = (j + 1) & mask;
      const s = slots[j << 1]!;
      if (s === 0) break;
      const h = slots[(j << 1) + 1]!;
      const k = h & mask; // where the entry at j wants to be
      // It may move to the hole at i unless its home lies cyclically in (i, j].
      if (i <= j ? (k <= i || k > j) : (k <= i && k > j)) { slots[i << 1] = s; slots[(i << 1) + 1] = h; i = j; }
    }
    slots[i << 1] = 0;
  }

  /** Doubles the ring (up to capacity); only while it has not wrapped, so positions stay in order. */
  private grow(): void {
    const size = Math.min(this.capacity, this.size * 2);
    const lanes = new Int32Array(size * 4);
    lanes.set(this.lanes);
    const n = tableSize(size);
    const slots = new Int32Array(n * 2);
    const mask = n - 1;
    for (let pos = 0; pos < this.count; pos++) {
      const h = lanes[pos << 2]!;
      let i = h & mask;
      while (slots[i << 1] !== 0) i = (i + 1) & mask;
      slots[i << 1] = pos + 1;
      slots[(i << 1) + 1] = h;
    }
    this.lanes = lanes;
    this.slots = slots;
    this.mask = mask;
    this.size = size;
  }
}

/** A power of two at least twice `n` (load factor ≤ 0.5: short probe chains). */
function tableSize(n: number): number {
  let t = 8;
  while (t < n * 2) t *= 2;
  return t;
}
