/**
 * What every in-process backend shares: the documents live in memory as
 * collection → id → deep-frozen document (Maps, so insertion order is kept), every call is
 * validated and copied here, and a backend only decides how a change becomes durable.
 */
import { TrellisError } from '../../common/errors.js';
import { COLLECTIONS, type Collection, type Doc, type Store } from './types.js';

/** collection → id → stored (deep-frozen, plain JSON) document, each Map in insertion order. */
export type Tables = Map<string, Map<string, Doc>>;

const KNOWN_COLLECTIONS: ReadonlySet<string> = new Set(COLLECTIONS);
const EMPTY: ReadonlyMap<string, Doc> = new Map();

export abstract class MapStore implements Store {
  protected readonly tables: Tables;
  #closed = false;
  #inUpdateFn = false;

  protected constructor(tables: Tables) {
    this.tables = tables;
  }

  /**
   * Resolves once the state as of this call is durable. `changed` is false when the caller only
   * observed state (an update that stored nothing, a delete of a missing id) but must still not
   * report something that a crash could undo.
   */
  protected abstract persist(changed: boolean): Promise<void>;
  /** Resolves when every change made so far is durable, writing at once rather than waiting to coalesce. */
  protected abstract persistAll(): Promise<void>;

  async get<T extends Doc>(col: Collection, id: string): Promise<T | undefined> {
    this.#checkOpen();
    checkId(col, id);
    const doc = this.#read(col).get(id);
    return doc === undefined ? undefined : (structuredClone(doc) as T);
  }

  peek<T extends Doc>(col: Collection, id: string): Readonly<T> | undefined {
    this.#checkOpen();
    checkId(col, id);
    return this.#read(col).get(id) as T | undefined;
  }

  async list<T extends Doc>(col: Collection, filter?: (d: T) => boolean): Promise<T[]> {
    this.#checkOpen();
    const out: T[] = [];
    for (const doc of this.#read(col).values()) {
      if (!filter || filter(doc as T)) out.push(structuredClone(doc) as T);
    }
    return out;
  }

  async count(col: Collection): Promise<number> {
    this.#checkOpen();
    return this.#read(col).size;
  }

  async insert<T extends Doc>(col: Collection, doc: T): Promise<void> {
    const table = this.#write(col);
    const stored = toStoredDoc(col, doc);
    if (table.has(stored.id)) {
      throw new TrellisError('TRELLIS_E_ALREADY_EXISTS', `${col} '${stored.id}' already exists`);
    }
    table.set(stored.id, stored);
    await this.persist(true);
  }

  async put<T extends Doc>(col: Collection, doc: T): Promise<void> {
    const table = this.#write(col);
    const stored = toStoredDoc(col, doc);
    table.set(stored.id, stored);
    await this.persist(true);
  }

  async delete(col: Collection, id: string): Promise<boolean> {
    const table = this.#write(col);
    checkId(col, id);
    const existed = table.delete(id);
    await this.persist(existed);
    return existed;
  }

  async update<T extends Doc>(
    col: Collection,
    id: string,
    fn: (cur: T | undefined) => T | undefined,
  ): Promise<T | undefined> {
    const table = this.#write(col);
    checkId(col, id);
    const cur = table.get(id);
    let next: T | undefined;
    // Everything from reading `cur` to storing `next` is synchronous, so no other mutation can
    // interleave; the flag catches fn itself calling back into the store.
    this.#inUpdateFn = true;
    try {
      next = fn(cur === undefined ? undefined : (structuredClone(cur) as T));
    } finally {
      this.#inUpdateFn = false;
    }
    if (next === undefined) {
      const existed = table.delete(id);
      await this.persist(existed);
      return undefined;
    }
    const stored = toStoredDoc(col, next);
    if (stored.id !== id) {
      throw new TrellisError(
        'TRELLIS_E_INVALID_ARGUMENT',
        `update of ${col} '${id}' returned a document with id '${stored.id}'; the id cannot change`,
      );
    }
    table.set(id, stored);
    await this.persist(true);
    return next;
  }

  async flush(): Promise<void> {
    this.#checkOpen();
    await this.persistAll();
  }

  async close(): Promise<void> {
    this.#closed = true;
    // A failed final flush rejects here; calling close() again retries it.
    await this.persistAll();
  }

  #checkOpen(): void {
    if (this.#closed) throw new TrellisError('TRELLIS_E_SHUTDOWN', 'the state store is closed');
  }

  #read(col: Collection): ReadonlyMap<string, Doc> {
    checkCollection(col);
    return this.tables.get(col) ?? EMPTY;
  }

  #write(col: Collection): Map<string, Doc> {
    this.#checkOpen();
    if (this.#inUpdateFn) {
      throw new TrellisError('TRELLIS_E_INTERNAL', 'a store update() function may not change the store itself');
    }
    checkCollection(col);
    let table = this.tables.get(col);
    if (!table) {
      table = new Map();
      this.tables.set(col, table);
    }
    return table;
  }
}

export function checkCollection(col: string): void {
  if (!KNOWN_COLLECTIONS.has(col)) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `unknown store collection '${col}'`);
  }
}

export function checkId(col: string, id: unknown): asserts id is string {
  if (typeof id !== 'string' || id === '') {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${col} document id must be a non-empty string`);
  }
}

/**
 * Validates `doc` as a plain-JSON document of `col` and returns a deep-frozen copy of it: the
 * caller keeps no reference into the store, and nothing inside the store can change it by
 * accident.
 */
export function toStoredDoc(col: string, doc: unknown): Doc {
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `a ${col} document must be an object`);
  }
  const id = (doc as { id?: unknown }).id;
  checkId(col, id);
  return frozenJsonCopy(doc, `${col} '${id}'`, '', new Set()) as Doc;
}

/**
 * toStoredDoc() for a document fresh out of JSON.parse (the state file at start-up): already plain
 * JSON (no cycles, no undefined, no class instances, own "__proto__" keys as data), so it is
 * frozen in place instead of copied (at 10,000 agents the copy was a tenth of the hub's start).
 */
export function toStoredParsedDoc(col: string, doc: unknown): Doc {
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `a ${col} document must be an object`);
  }
  checkId(col, (doc as { id?: unknown }).id);
  return deepFreeze(doc) as Doc;
}

function deepFreeze(value: object): object {
  if (Array.isArray(value)) {
    for (const v of value) if (typeof v === 'object' && v !== null) deepFreeze(v);
  } else {
    for (const k in value) {
      const v = (value as Record<string, unknown>)[k];
      if (typeof v === 'object' && v !== null) deepFreeze(v);
    }
  }
  return Object.freeze(value);
}

function frozenJsonCopy(value: unknown, where: string, path: string, seen: Set<object>): unknown {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return value;
    case 'number':
      if (Number.isFinite(value)) return value;
      throw notJson(where, path, `is ${value}`);
    case 'object': {
      if (value === null) return null;
      if (seen.has(value)) throw notJson(where, path, 'is a circular reference');
      seen.add(value);
      let out: unknown;
      if (Array.isArray(value)) {
        const arr: unknown[] = [];
        for (let i = 0; i < value.length; i++) {
          const item: unknown = value[i];
          if (item === undefined) throw notJson(where, `${path}[${i}]`, 'is undefined');
          arr.push(frozenJsonCopy(item, where, `${path}[${i}]`, seen));
        }
        out = arr;
      } else {
        const proto: unknown = Object.getPrototypeOf(value);
        if (proto !== Object.prototype && proto !== null) {
          const kind = (value as { constructor?: { name?: string } }).constructor?.name || 'non-plain object';
          throw notJson(where, path, `is a ${kind}`);
        }
        const obj: Record<string, unknown> = {};
        for (const [k, v] of Object.entries(value)) {
          if (v === undefined) continue;
          const copy = frozenJsonCopy(v, where, `${path}.${k}`, seen);
          // A plain assignment to "__proto__" would set the prototype instead of a property.
          Object.defineProperty(obj, k, { value: copy, enumerable: true, writable: true, configurable: true });
        }
        out = obj;
      }
      seen.delete(value);
      return Object.freeze(out);
    }
    default:
      throw notJson(where, path, `is ${typeof value === 'undefined' ? 'undefined' : `a ${typeof value}`}`);
  }
}

function notJson(where: string, path: string, what: string): TrellisError {
  const field = path === '' ? 'the document' : `field ${path.startsWith('.') ? path.slice(1) : path}`;
  return new TrellisError(
    'TRELLIS_E_INVALID_ARGUMENT',
    `${where}: ${field} ${what}; the store keeps plain JSON only (store dates as ISO strings)`,
  );
}
