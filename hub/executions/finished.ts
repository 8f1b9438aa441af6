/**
 * Finished executions, held outside the JavaScript heap.
 *
 * A hub keeps up to `maxCount` (100,000) executions from its history in memory, for reads,
 * lists and dedup keys; all but a few in flight are finished and never change again. As objects
 * (~15 per record: the entry, the record, its parameters, strings, boxed numbers) each survived
 * the young generation, was copied into the old one and marked by every full GC: at 1,000
 * executions/s the old generation grew ~1.2 MB/s and a mark-compact stalled the hub for 40–55 ms
 * every ~5 s, the main cause of the event→action tail (issue 13).
 *
 * Here a finished record is one JSON text (a history state line: `{"k":"s","r":record,"dk":key}`)
 * in byte chunks (below), and what lists filter on (status, tenant, action, agent, rule, requested time) plus its version, stored
 * output bytes and end time are typed-array columns by slot; ids are a KeyIndex, and dedup keys a
 * table of hashes whose matches are confirmed against the key in the record's text (a key is
 * looked up once per rule firing and found only for a re-delivered event).
 * None of it is a JavaScript object per record. Tenants, actions, agents and rules are interned
 * (counted references: a value no record uses any more is forgotten). Reading a record parses its
 * text (a fresh object the caller may keep); lists filter on the columns and parse only the page.
 */
import type { ExecutionStatus } from '../../common/automation/types.js';
import { ID_UNITS, KeyIndex, grown, hashKey, placeSlot, tableSizeFor, prefixOf, removeSlot, sipHash32, type HashKey } from './key-index.js';
import type { ExecutionRecord, ListFilter } from './types.js';

/** A finished execution as the executions index holds it. */
export interface Held { rec: ExecutionRecord; ver: number; dedupKey?: string; stored: number }

const STATUSES: readonly ExecutionStatus[] = ['requested', 'scheduled', 'running', 'succeeded', 'failed', 'timeout', 'canceled', 'abandoned', 'error'];
const STATUS_CODE = new Map<string, number>(STATUSES.map((s, i) => [s, i]));
const FLAG_EDGE = 1;
/** The record's dedup key is in the key table (a newer record may have taken it over). */
const FLAG_KEY = 2;
/**
 * Texts are appended to chunks of this size (a text longer than one gets a chunk of its own), each
 * after an 8-byte header (its slot and byte length) that lets a chunk be walked. Growing adds a
 * chunk; a chunk whose texts are all gone is freed (retention drops the oldest records, so chunks
 * empty in the order they filled); when over half the bytes held are dead, opening a new chunk
 * first moves the live texts of the emptiest one into it and frees it. No step copies more than
 * one chunk: a single slab grown by half and rewritten whole stalled the hub's event loop for
 * 43 ms at ~30,000 records (and would for every compaction of a full store of 100,000).
 */
const CHUNK = 1024 * 1024;
const HEADER = 8;
/** Freed chunks kept for reuse (no allocation churn as chunks empty and fill). */
const SPARE_CHUNKS = 2;

/** Strings to small numbers, counted: a value no record refers to any more is dropped. */
class Interner {
  private readonly codes = new Map<string, number>();
  private values: (string | undefined)[] = [];
  private refs: number[] = [];
  private free: number[] = [];

  /** The code of `v`, or -1 when no record holds it (a filter on it matches nothing). */
  code(v: string): number { return this.codes.get(v) ?? -1; }

  ref(v: string): number {
    let c = this.codes.get(v);
    if (c === undefined) {
      c = this.free.length ? this.free.pop()! : this.values.length;
      this.codes.set(v, c);
      this.values[c] = v;
      this.refs[c] = 0;
    }
    this.refs[c]!++;
    return c;
  }

  unref(code: number): void {
    if (--this.refs[code]! > 0) return;
    this.codes.delete(this.values[code]!);
    this.values[code] = undefined;
    this.free.push(code);
  }

  get size(): number { return this.codes.size; }
}

export class FinishedStore {
  private readonly ids: KeyIndex;
  /** Dedup keys: record slot + 1 by the key's hash (open addressing, load ≤ 0.5), 0 = empty. */
  private keyTable = new Int32Array(16);
  private keyCount = 0;
  private readonly keySeed: HashKey;
  // Columns by record slot (the slot of its id).
  private keyHash = new Int32Array(16);
  private status = new Uint8Array(16);
  private flags = new Uint8Array(16);
  private tenant = new Int32Array(16);
  private action = new Int32Array(16);
  private agent = new Int32Array(16);
  private rule = new Int32Array(16);
  private requestedMs = new Float64Array(16);
  private endMs = new Float64Array(16);
  private ver = new Float64Array(16);
  private stored = new Float64Array(16);
  /** Where a record's text is: its chunk (-1: none), offset in it and byte length. */
  private textChunk = new Int32Array(16);
  private textOff = new Uint32Array(16);
  private textLen = new Uint32Array(16);
  private chunks: (Buffer | undefined)[] = [];
  /** Bytes written to each chunk (headers included), and of those still live. */
  private chunkUsed: number[] = [];
  private chunkLive: number[] = [];
  private freeChunkIds: number[] = [];
  private spare: Buffer[] = [];
  /** The chunk texts are appended to (-1: none yet). */
  private head = -1;
  private chunkBytes = 0;
  private usedBytes = 0;
  private liveBytes = 0;
  private compacting = false;
  private readonly strings = new Interner();
  private readonly byStatus = new Float64Array(STATUSES.length);

  /** `seed`: the hash seed of both key indexes (random unless given; tests give one). */
  constructor(seed?: number) {
    this.ids = new KeyIndex(seed);
    this.keySeed = hashKey(seed === undefined ? undefined : seed + 1);
  }

  /** Records held. */
  get size(): number { return this.ids.size; }

  /**
   * Room for `n` more records, each with a dedup key, without growing the columns, the id index or
   * the key table (a load of known size, or what retention lets the store reach; text chunks are
   * added as texts come).
   */
  reserve(n: number): void {
    this.ensure(this.ids.slotLimit + n);
    this.ids.reserve(n, n * ID_UNITS);
    const size = tableSizeFor(this.keyCount + n, this.keyTable.length);
    if (size > this.keyTable.length) this.rekey(size);
  }

  has(id: string): boolean { return this.ids.find(id) >= 0; }

  /**
   * Holds `h` (a record with the same id is replaced). Its dedup key, if any, now leads to it.
   * `line`: `h` as a history state line already (a hub start loads them from the history files
   * and saves serializing 100,000 records again); it must hold `h.rec` and `h.dedupKey`.
   */
  put(h: Held, line?: string): void {
    const r = h.rec;
    const idHash = this.ids.hashOf(r.id);
    const old = this.ids.find(r.id, idHash);
    if (old >= 0) this.drop(old);
    const text = line ?? JSON.stringify(h.dedupKey ? { k: 's', r, dk: h.dedupKey } : { k: 's', r });
    const s = this.ids.insert(r.id, idHash);
    this.ensure(s + 1);
    this.writeText(s, text);
    const st = STATUS_CODE.get(r.status) ?? STATUS_CODE.get('error')!;
    this.status[s] = st;
    this.byStatus[st]!++;
    this.flags[s] = r.edge ? FLAG_EDGE : 0;
    this.tenant[s] = this.strings.ref(r.tenant);
    this.action[s] = this.strings.ref(r.action);
    this.agent[s] = this.strings.ref(r.agentId);
    this.rule[s] = this.strings.ref(r.rule);
    this.requestedMs[s] = r.requestedMs;
    this.endMs[s] = r.finishedMs || r.requestedMs;
    this.ver[s] = h.ver;
    this.stored[s] = h.stored;
    if (h.dedupKey) {
      const kh = sipHash32(h.dedupKey, this.keySeed);
      const was = this.keySlot(h.dedupKey, kh);
      if (was >= 0) this.unkey(was); // an older record with this key: the key leads here now
      this.keyHash[s] = kh;
      this.flags[s]! |= FLAG_KEY;
      if ((this.keyCount + 1) * 2 > this.keyTable.length) this.rekey(this.keyTable.length * 2);
      placeSlot(this.keyTable, s, kh);
      this.keyCount++;
    }
  }

  /** The slot of the record the dedup key leads to, or -1 (a hash match is confirmed in the record's text). */
  private keySlot(key: string, kh: number): number {
    const t = this.keyTable, mask = t.length - 1;
    for (let i = kh & mask; t[i] !== 0; i = (i + 1) & mask) {
      const s = t[i]! - 1;
      if (this.keyHash[s] === kh && this.read(s).dedupKey === key) return s;
    }
    return -1;
  }

  /** Takes record `s` out of the key table. */
  private unkey(s: number): void {
    if ((this.flags[s]! & FLAG_KEY) === 0) return;
    this.flags[s]! &= ~FLAG_KEY;
    removeSlot(this.keyTable, s, this.keyHash);
    this.keyCount--;
  }

  private rekey(size: number): void {
    const t = new Int32Array(size);
    this.ids.forEach((s) => { if ((this.flags[s]! & FLAG_KEY) !== 0) placeSlot(t, s, this.keyHash[s]!); });
    this.keyTable = t;
  }

  /** The record with this id, read anew (the caller may keep or change it), or undefined. */
  get(id: string): Held | undefined {
    const s = this.ids.find(id);
    return s < 0 ? undefined : this.read(s);
  }

  /** The record the dedup key leads to, or undefined. */
  byKey(dedupKey: string): Held | undefined {
    const s = this.keySlot(dedupKey, sipHash32(dedupKey, this.keySeed));
    return s < 0 ? undefined : this.read(s);
  }

  /** Whether `id` is an `abandoned` pack execution of `agentId` (a late report may still replace it). */
  abandonedOf(id: string, agentId: string): boolean {
    const s = this.ids.find(id);
    return s >= 0 && STATUSES[this.status[s]!] === 'abandoned' && (this.flags[s]! & FLAG_EDGE) === 0 && this.agent[s] === this.strings.code(agentId);
  }

  /** Drops the record with this id; false if none was held. */
  delete(id: string): boolean {
    const s = this.ids.find(id);
    if (s < 0) return false;
    this.drop(s);
    return true;
  }

  private drop(s: number): void {
    this.unkey(s);
    this.byStatus[this.status[s]!]!--;
    this.strings.unref(this.tenant[s]!);
    this.strings.unref(this.action[s]!);
    this.strings.unref(this.agent[s]!);
    this.strings.unref(this.rule[s]!);
    this.dropText(s);
    this.ids.remove(s);
  }

  /** Drops the records that ended (finished, or were requested) before `beforeMs`; returns how many. */
  evict(beforeMs: number): number {
    let n = 0;
    this.ids.forEach((s) => { if (this.endMs[s]! < beforeMs) { this.drop(s); n++; } });
    return n;
  }

  /** Records by status. */
  statusCounts(): Map<ExecutionStatus, number> {
    const out = new Map<ExecutionStatus, number>();
    this.byStatus.forEach((n, i) => { if (n > 0) out.set(STATUSES[i]!, n); });
    return out;
  }

  /**
   * The slots of the records that pass `f` (its `limit` aside) in `tenant` ('*': every tenant).
   * Read with `read`, ordered with `newest`; valid until the store next changes.
   */
  match(tenant: string | '*', f: ListFilter): number[] {
    const out: number[] = [];
    const want = (v: string | undefined) => (v ? this.strings.code(v) : -2);
    const t = tenant === '*' ? -2 : this.strings.code(tenant);
    const action = want(f.action), agent = want(f.agentId), rule = want(f.rule);
    const status = f.status ? (STATUS_CODE.get(f.status) ?? -1) : -2;
    if (t === -1 || action === -1 || agent === -1 || rule === -1 || status === -1) return out; // a value no record holds
    const since = f.sinceMs || 0, before = f.beforeId, beforePrefix = [before ? prefixOf(before) : -1, before ? prefixOf(before, 7) : -1] as const;
    this.ids.forEach((s) => {
      if (t >= 0 && this.tenant[s] !== t) return;
      if (action >= 0 && this.action[s] !== action) return;
      if (agent >= 0 && this.agent[s] !== agent) return;
      if (rule >= 0 && this.rule[s] !== rule) return;
      if (status >= 0 && this.status[s] !== status) return;
      if (since && this.requestedMs[s]! < since) return;
      if (before && this.ids.compare(s, before, beforePrefix) >= 0) return;
      out.push(s);
    });
    return out;
  }

  /** The status of a matched slot (counting without reading the records). */
  statusAt(slot: number): ExecutionStatus { return STATUSES[this.status[slot]!]!; }

  /** The id of a slot. */
  idAt(slot: number): string { return this.ids.key(slot); }

  /** The `limit` slots of `slots` with the greatest ids, greatest first (a bounded heap: no sort of every match). */
  newest(slots: number[], limit: number): number[] {
    if (limit <= 0) return [];
    const heap: number[] = []; // a min-heap by id: its root is the smallest id kept
    const less = (a: number, b: number) => this.ids.compareSlots(a, b) < 0;
    const down = (i: number) => {
      for (;;) {
        const l = 2 * i + 1, r = l + 1;
        let m = i;
        if (l < heap.length && less(heap[l]!, heap[m]!)) m = l;
        if (r < heap.length && less(heap[r]!, heap[m]!)) m = r;
        if (m === i) return;
        [heap[i], heap[m]] = [heap[m]!, heap[i]!];
        i = m;
      }
    };
    for (const s of slots) {
      if (heap.length < limit) {
        heap.push(s);
        for (let i = heap.length - 1; i > 0;) { const p = (i - 1) >> 1; if (!less(heap[i]!, heap[p]!)) break; [heap[i], heap[p]] = [heap[p]!, heap[i]!]; i = p; }
      } else if (less(heap[0]!, s)) {
        heap[0] = s;
        down(0);
      }
    }
    return heap.sort((a, b) => this.ids.compareSlots(b, a));
  }

  /** The record in a slot, read anew. */
  read(s: number): Held {
    const off = this.textOff[s]!;
    const { r, dk } = JSON.parse(this.chunks[this.textChunk[s]!]!.toString('utf8', off, off + this.textLen[s]!)) as { r: ExecutionRecord; dk?: string };
    return { rec: r, ver: this.ver[s]!, dedupKey: dk, stored: this.stored[s]! };
  }

  /** Text chunks' bytes (allocated, written, of those dead), interned values and dedup keys (diagnostics, tests). */
  get stats(): { textBytes: number; textUsed: number; textDead: number; interned: number; keys: number } {
    return { textBytes: this.chunkBytes, textUsed: this.usedBytes, textDead: this.usedBytes - this.liveBytes, interned: this.strings.size, keys: this.keyCount };
  }

  private ensure(n: number): void {
    if (n <= this.status.length) return;
    this.keyHash = grown(this.keyHash, n); this.status = grown(this.status, n); this.flags = grown(this.flags, n);
    this.tenant = grown(this.tenant, n); this.action = grown(this.action, n); this.agent = grown(this.agent, n); this.rule = grown(this.rule, n);
    this.requestedMs = grown(this.requestedMs, n); this.endMs = grown(this.endMs, n); this.ver = grown(this.ver, n);
    this.stored = grown(this.stored, n); this.textChunk = grown(this.textChunk, n); this.textOff = grown(this.textOff, n); this.textLen = grown(this.textLen, n);
  }

  /** Appends the text of slot `s` to the head chunk (a new one when it does not fit). */
  private writeText(s: number, text: string): void {
    // UTF-8 bytes: at most 3 per code unit; counted only when that much might not fit.
    const room = this.head < 0 ? -1 : this.chunks[this.head]!.length - this.chunkUsed[this.head]! - HEADER;
    if (text.length * 3 > room) {
      const need = Buffer.byteLength(text);
      if (need > room) this.newHead(HEADER + need);
    }
    const c = this.head, chunk = this.chunks[c]!, at = this.chunkUsed[c]!;
    const n = chunk.write(text, at + HEADER, 'utf8');
    this.place(s, c, at, n);
  }

  /** Slot `s`'s text is the `n` bytes after the header at `at` in chunk `c` (written there just now): the header and the counts. */
  private place(s: number, c: number, at: number, n: number): void {
    const chunk = this.chunks[c]!;
    chunk.writeUInt32LE(s, at);
    chunk.writeUInt32LE(n, at + 4);
    this.textChunk[s] = c;
    this.textOff[s] = at + HEADER;
    this.textLen[s] = n;
    this.chunkUsed[c] = at + HEADER + n;
    this.chunkLive[c]! += HEADER + n;
    this.usedBytes += HEADER + n;
    this.liveBytes += HEADER + n;
  }

  private dropText(s: number): void {
    const c = this.textChunk[s]!;
    if (c < 0) return;
    this.textChunk[s] = -1;
    const n = HEADER + this.textLen[s]!;
    this.chunkLive[c]! -= n;
    this.liveBytes -= n;
    if (this.chunkLive[c] !== 0) return;
    if (c === this.head) { this.usedBytes -= this.chunkUsed[c]!; this.chunkUsed[c] = 0; } // empty: written from its start again
    else this.freeChunk(c);
  }

  private freeChunk(c: number): void {
    const chunk = this.chunks[c]!;
    if (chunk.length === CHUNK && this.spare.length < SPARE_CHUNKS) this.spare.push(chunk);
    this.chunks[c] = undefined;
    this.chunkBytes -= chunk.length;
    this.usedBytes -= this.chunkUsed[c]!; // its live bytes are 0: dropped, or moved and counted where they went
    this.chunkUsed[c] = 0;
    this.chunkLive[c] = 0;
    this.freeChunkIds.push(c);
  }

  /** A head chunk with room for `need` bytes; first, when over half the bytes held are dead, the emptiest chunk's texts move into it. */
  private newHead(need: number): void {
    const old = this.head;
    if (old >= 0 && this.chunkLive[old] === 0 && this.chunks[old]!.length >= need) { this.usedBytes -= this.chunkUsed[old]!; this.chunkUsed[old] = 0; return; }
    const chunk = need <= CHUNK ? (this.spare.pop() ?? Buffer.allocUnsafeSlow(CHUNK)) : Buffer.allocUnsafeSlow(need);
    const c = this.freeChunkIds.length ? this.freeChunkIds.pop()! : this.chunks.length;
    this.chunks[c] = chunk;
    this.chunkUsed[c] = 0;
    this.chunkLive[c] = 0;
    this.chunkBytes += chunk.length;
    this.head = c;
    if (old >= 0 && this.chunkLive[old] === 0) this.freeChunk(old);
    if (!this.compacting && need <= CHUNK && (this.usedBytes - this.liveBytes) * 2 > this.usedBytes) this.compactOne();
  }

  /** Moves the live texts of the chunk with the fewest live bytes (not the head) to the head, and frees it. */
  private compactOne(): void {
    let from = -1;
    for (let c = 0; c < this.chunks.length; c++) {
      if (c === this.head || !this.chunks[c]) continue;
      if (from < 0 || this.chunkLive[c]! < this.chunkLive[from]!) from = c;
    }
    if (from < 0 || this.chunkLive[from]! > CHUNK / 2) return; // nothing half empty: no move would gain a chunk
    this.compacting = true;
    try {
      const src = this.chunks[from]!, end = this.chunkUsed[from]!;
      for (let at = 0; at < end;) {
        const s = src.readUInt32LE(at), n = src.readUInt32LE(at + 4);
        if (this.textChunk[s] === from && this.textOff[s] === at + HEADER) { // still this slot's text (not dropped, not a reused slot's)
          if (this.chunks[this.head]!.length - this.chunkUsed[this.head]! < HEADER + n) this.newHead(HEADER + n);
          const c = this.head, dst = this.chunks[c]!, to = this.chunkUsed[c]!;
          src.copy(dst, to + HEADER, at + HEADER, at + HEADER + n);
          this.chunkLive[from]! -= HEADER + n;
          this.liveBytes -= HEADER + n;
          this.place(s, c, to, n);
        }
        at += HEADER + n;
      }
      this.freeChunk(from);
    } finally {
      this.compacting = false;
    }
  }
}
