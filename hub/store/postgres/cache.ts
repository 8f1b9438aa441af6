/**
 * The PostgreSQL store's in-memory copy of the documents table, which every read answers from.
 * It only takes a document version newer than the one it holds, so this hub's commits (applied
 * when they resolve, in any order) and other hubs' (fetched after a notification) can arrive
 * in any order and the newest wins. A delete leaves a tombstone (its version) while this hub
 * still has writes settling, so an older write resolving late cannot bring the document back.
 */
import { toStoredDoc } from '../base.js';
import type { Doc } from '../types.js';

export interface Entry {
  doc: Doc;
  version: bigint;
  seq: bigint;
}

/** A row of trellis_docs as `pg` returns it (bigints as strings), with the id already decoded. */
export interface Row {
  collection: string;
  id: string;
  doc: unknown;
  version: string;
  seq: string;
}

export function cacheKey(col: string, id: string): string {
  return `${col}\u001f${id}`;
}

export class DocCache {
  /** collection → id → entry; each Map in listing (seq) order unless marked in #unsorted. */
  #tables = new Map<string, Map<string, Entry>>();
  readonly #unsorted = new Set<string>();
  /** The highest seq in each collection's Map. */
  readonly #maxSeq = new Map<string, bigint>();
  readonly #tombstones = new Map<string, bigint>();
  /** Keys written by this hub while a reload ran: the reload must not overwrite them. */
  #touched: Set<string> | undefined;

  get(col: string, id: string): Entry | undefined {
    return this.#tables.get(col)?.get(id);
  }

  size(col: string): number {
    return this.#tables.get(col)?.size ?? 0;
  }

  /** The collection's entries in listing order. */
  sorted(col: string): Iterable<Entry> {
    const t = this.#tables.get(col);
    if (!t) return [];
    if (this.#unsorted.has(col)) {
      const entries = [...t.entries()].sort((a, b) => (a[1].seq < b[1].seq ? -1 : a[1].seq > b[1].seq ? 1 : 0));
      t.clear();
      for (const [k, v] of entries) t.set(k, v);
      this.#unsorted.delete(col);
    }
    return t.values();
  }

  /** The newest version known for the document: held, or deleted (tombstone), or -1. */
  knownVersion(col: string, id: string): bigint {
    return this.get(col, id)?.version ?? this.#tombstones.get(cacheKey(col, id)) ?? -1n;
  }

  /** This hub's committed write: `doc` stored, or deleted when `doc` is undefined. */
  applyOwn(col: string, id: string, version: bigint, doc?: Doc, seq?: bigint): void {
    const key = cacheKey(col, id);
    this.#touched?.add(key);
    if (version <= this.knownVersion(col, id)) return; // a newer write already landed
    if (doc === undefined) {
      this.#tables.get(col)?.delete(id);
      this.#tombstones.set(key, version);
    } else {
      this.#tombstones.delete(key);
      this.#set(col, id, { doc, version, seq: seq! });
    }
  }

  /** A row read from the table after a notification; false when it is not a document this build can hold. */
  applyRow(row: Row): boolean {
    const version = BigInt(row.version);
    if (version <= this.knownVersion(row.collection, row.id)) return true;
    let doc: Doc;
    try {
      doc = toStoredDoc(row.collection, row.doc);
    } catch {
      return false;
    }
    this.#tombstones.delete(cacheKey(row.collection, row.id));
    this.#set(row.collection, row.id, { doc, version, seq: BigInt(row.seq) });
    return true;
  }

  /** The document is gone from the table (another hub deleted it) as of a change at `version`. */
  applyGone(col: string, id: string, version: bigint): void {
    if (this.get(col, id) !== undefined && this.knownVersion(col, id) < version) this.#tables.get(col)!.delete(id);
  }

  /** After a whole-collection fetch: drops what the table no longer holds. */
  keepOnly(col: string, ids: Set<string>): void {
    const t = this.#tables.get(col);
    if (t) for (const id of [...t.keys()]) if (!ids.has(id) && !this.#tombstones.has(cacheKey(col, id))) t.delete(id);
  }

  /** A notification of this hub's own delete: its tombstone is no longer needed. */
  settled(col: string, id: string, version: bigint): void {
    const key = cacheKey(col, id);
    if (this.#tombstones.get(key) === version) this.#tombstones.delete(key);
  }

  /** No write of this hub is settling: no late result can arrive. */
  clearTombstones(): void {
    this.#tombstones.clear();
  }

  /** Starts a reload: writes from now until `replaceAll` are kept over the loaded rows. */
  beginReload(): Set<string> {
    this.#touched = new Set();
    return this.#touched;
  }

  /** Replaces everything with `rows` (a snapshot of the table), keeping this hub's writes made since `beginReload`. */
  replaceAll(rows: Row[], touched: Set<string>): void {
    const fresh = new Map<string, Map<string, Entry>>();
    for (const row of rows) {
      let doc: Doc;
      try { doc = toStoredDoc(row.collection, row.doc); } catch { continue; } // not a document this build can hold
      let t = fresh.get(row.collection);
      if (!t) fresh.set(row.collection, (t = new Map()));
      t.set(row.id, { doc, version: BigInt(row.version), seq: BigInt(row.seq) });
    }
    for (const key of touched) {
      const i = key.indexOf('\u001f');
      const col = key.slice(0, i);
      const id = key.slice(i + 1);
      const mine = this.get(col, id);
      let t = fresh.get(col);
      if (!t) fresh.set(col, (t = new Map()));
      const theirs = t.get(id);
      if (mine && (!theirs || mine.version > theirs.version)) t.set(id, mine);
      else if (!mine && theirs && theirs.version <= (this.#tombstones.get(key) ?? -1n)) t.delete(id);
    }
    this.#tables = fresh;
    this.#maxSeq.clear();
    for (const [col, t] of fresh) {
      let max = -1n;
      for (const e of t.values()) if (e.seq > max) max = e.seq;
      this.#maxSeq.set(col, max);
      this.#unsorted.add(col); // kept writes may sit out of order
    }
    if (this.#touched === touched) this.#touched = undefined;
  }

  endReload(touched: Set<string>): void {
    if (this.#touched === touched) this.#touched = undefined;
  }

  #set(col: string, id: string, e: Entry): void {
    let t = this.#tables.get(col);
    if (!t) this.#tables.set(col, (t = new Map()));
    const old = t.get(id);
    if (old !== undefined && old.seq === e.seq) {
      t.set(id, e); // a replace keeps its place
      return;
    }
    t.delete(id);
    t.set(id, e);
    // Another hub's insert can arrive after a later one of ours: the Map is re-sorted on the next list().
    const max = this.#maxSeq.get(col) ?? -1n;
    if (e.seq < max) this.#unsorted.add(col);
    else this.#maxSeq.set(col, e.seq);
  }
}
