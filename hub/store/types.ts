/**
 * The hub's state store: a narrow, asynchronous key-value store of JSON documents grouped in a
 * fixed list of collections. Narrow on purpose: a PostgreSQL backend must be able to implement
 * it with one table per collection (or one `(collection, id, doc jsonb)` table) and a
 * transaction per `update()`.
 */

/** Every collection the hub keeps. Adding one is one line here. */
export const COLLECTIONS = [
  'meta',
  'users',
  'sessions',
  'joinTokens',
  'agents',
  'revocations',
  'roles',
  'groups',
  'tenants',
  'apiKeys',
  'kv',
  'packs',
  'rules',
  'webhooks',
  'hubs',
] as const;

export type Collection = (typeof COLLECTIONS)[number];

/**
 * A stored document. Values must be plain JSON (objects, arrays, strings, finite numbers,
 * booleans, null); a `Date`, `Map`, `NaN`, function, ... is rejected with
 * TRELLIS_E_INVALID_ARGUMENT rather than silently changed, so every backend, before and after
 * a restart, returns exactly what was stored. Object properties that are `undefined` are
 * dropped, as JSON does.
 */
export interface Doc {
  id: string;
  [k: string]: unknown;
}

/**
 * Mutations resolve only once durable. When persisting fails, the waiting calls reject, but the
 * change stays in memory and is written by the next successful write (the next mutation or
 * `flush()` retries): a rejection means "not known to be on disk", not "rolled back".
 */
export interface Store {
  /** A copy of the document, or undefined. */
  get<T extends Doc>(col: Collection, id: string): Promise<T | undefined>;
  /**
   * The stored document itself, deep-frozen (mutating it throws), or undefined: no copy, for
   * hot paths that only read a field or two (the rules engine checks a target agent per event).
   */
  peek<T extends Doc>(col: Collection, id: string): Readonly<T> | undefined;
  /**
   * Copies of the documents (that pass `filter`), in insertion order: `put` over an existing id
   * keeps its place, delete then insert moves it to the end. `filter` sees the stored document
   * itself, deep-frozen: it must not mutate it (doing so throws).
   */
  list<T extends Doc>(col: Collection, filter?: (d: T) => boolean): Promise<T[]>;
  count(col: Collection): Promise<number>;
  /** Adds a new document; TRELLIS_E_ALREADY_EXISTS when the id is taken (nothing changes). */
  insert<T extends Doc>(col: Collection, doc: T): Promise<void>;
  /** Adds or replaces the document. */
  put<T extends Doc>(col: Collection, doc: T): Promise<void>;
  /** True when a document was deleted, false when there was none. */
  delete(col: Collection, id: string): Promise<boolean>;
  /**
   * Atomic read-modify-write of one document. `fn` gets a copy of the current document (or
   * undefined) and runs with no other mutation interleaved; it returns the document to store
   * (its id must equal `id`), or undefined to delete. If `fn` throws, nothing changes and the
   * error propagates. Resolves to `fn`'s result once it is durable.
   */
  update<T extends Doc>(col: Collection, id: string, fn: (cur: T | undefined) => T | undefined): Promise<T | undefined>;
  /**
   * Shared stores only (PostgreSQL): `fn` is called after another hub's change to a document
   * reached this hub's reads (`id` undefined: the whole collection may have changed, e.g. after a
   * reconnect reloaded everything). Not called for this hub's own writes, except rarely when
   * their notification overtakes the commit's answer: subscribers re-read and must tolerate a
   * repeat. Returns an unsubscribe function. Stores of one hub (lowdb, memory) do not have it.
   */
  onChange?(fn: (col: Collection, id: string | undefined) => void): () => void;
  /** Resolves when every mutation accepted so far is on disk. */
  flush(): Promise<void>;
  /** Flushes, then refuses every further call with TRELLIS_E_SHUTDOWN. Calling it again is harmless. */
  close(): Promise<void>;
}

