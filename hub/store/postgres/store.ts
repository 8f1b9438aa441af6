/**
 * The state store on PostgreSQL, built for several hubs over one database.
 *
 * - Every mutation is a transaction that takes the document's advisory lock first, so writers of
 *   one (collection, id), on any hub, run one at a time and each write's `version` (from one
 *   sequence, taken under the lock) grows in commit order. `update()` reads the row under that
 *   lock and runs `fn` on the fresh row: read-modify-write is atomic across hubs.
 * - A mutation resolves once committed, and sends `NOTIFY trellis_store` with
 *   `{"c": collection, "i": id, "v": version}` in the same transaction.
 * - Reads (`peek`, `get`, `list`, `count`) come from an in-memory cache: loaded at open, updated
 *   by this hub's own commits, and by other hubs' through LISTEN: a notification only says what
 *   changed; the row itself is read from the table (a forged notification cannot put anything
 *   into the cache). When the LISTEN connection drops, reads fail with TRELLIS_E_UNAVAILABLE
 *   (the cache may miss other hubs' changes) until it is back and the cache reloaded; `peek`,
 *   which is synchronous and on hot paths, keeps answering from the cache.
 */
import pg from 'pg';
import { TrellisError } from '../../../common/errors.js';
import { checkCollection, checkId, toStoredDoc } from '../base.js';
import { DocCache, cacheKey, type Row } from './cache.js';
import { COLLECTIONS, type Collection, type Doc, type Store } from '../types.js';
import { checkSchema } from './migrations.js';
import { poolConfig, storeError, type PostgresConnectOptions } from './connection.js';

export const NOTIFY_CHANNEL = 'trellis_store';
/** Names of cluster channels (listen/notify): `trellis_` and a lower-case word. */
export const CHANNEL_RE = /^trellis_[a-z][a-z0-9_]{0,40}$/;
/** PostgreSQL refuses NOTIFY payloads of 8000 bytes and more. */
export const MAX_CHANNEL_PAYLOAD = 7900;

function checkChannel(channel: string): void {
  if (!CHANNEL_RE.test(channel) || channel === NOTIFY_CHANNEL) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `"${channel.slice(0, 60)}" is not a cluster channel name (trellis_ and a lower-case word, not ${NOTIFY_CHANNEL})`);
  }
}
/** NOTIFY payloads are limited to 8000 bytes; a longer one asks listeners to reload the collection. */
const MAX_PAYLOAD = 7900;

export type PostgresStoreState = 'connecting' | 'ready' | 'stale' | 'closed';

export interface PostgresStoreOptions extends PostgresConnectOptions {
  /** Told about lost and regained LISTEN connections (never with the password). */
  onStateChange?: (state: PostgresStoreState, detail: string) => void;
  /** Longest wait between reconnect attempts of the LISTEN connection. @default 5000 */
  maxReconnectDelayMs?: number;
}

interface Notice {
  c: string;
  i?: string;
  v?: string;
}

export class PostgresStore implements Store {
  readonly where: string;
  readonly #pool: pg.Pool;
  readonly #config: pg.PoolConfig;
  readonly #opts: PostgresStoreOptions;
  readonly #cache = new DocCache();
  #ownInFlight = 0;
  /** Mutations started and not settled: close() waits for them before ending the pool. */
  readonly #inFlight = new Set<Promise<unknown>>();
  #state: PostgresStoreState = 'connecting';
  #listener: pg.Client | undefined;
  #reconnectTimer: NodeJS.Timeout | undefined;
  #reconnectDelay = 0;
  #pingTimer: NodeJS.Timeout | undefined;
  /** Notifications waiting to be fetched, drained one batch at a time. */
  #pending: Notice[] = [];
  #draining: Promise<void> | undefined;
  #inUpdateFn = false;
  #closed = false;
  readonly #changeFns = new Set<(col: Collection, id: string | undefined) => void>();
  /** Cluster channels (hub/cluster/bus.ts): channel → handlers of their payloads. */
  readonly #channels = new Map<string, Set<(payload: string) => void>>();
  readonly #resyncFns = new Set<() => void>();

  private constructor(pool: pg.Pool, config: pg.PoolConfig & { where: string }, opts: PostgresStoreOptions) {
    this.#pool = pool;
    this.#config = config;
    this.#opts = opts;
    this.where = config.where;
    // An idle pooled connection that dies (database restart) is dropped by the pool; without a
    // listener the error would crash the process.
    pool.on('error', () => undefined);
  }

  /**
   * Connects, checks the schema (TRELLIS_E_CONFIG when it is missing, older or newer than this
   * build), starts listening and loads the cache.
   */
  static async open(opts: PostgresStoreOptions): Promise<PostgresStore> {
    const config = poolConfig(opts);
    const pool = new pg.Pool(config);
    const store = new PostgresStore(pool, config, opts);
    try {
      const client = await pool.connect();
      try { await checkSchema(client, config.where); } finally { client.release(); }
      await store.#connectListener();
    } catch (e) {
      await store.close();
      throw storeError(e, config.where);
    }
    return store;
  }

  get state(): PostgresStoreState { return this.#state; }

  onChange(fn: (col: Collection, id: string | undefined) => void): () => void {
    this.#changeFns.add(fn);
    return () => { this.#changeFns.delete(fn); };
  }

  #changed(col: string, id: string | undefined): void {
    for (const fn of this.#changeFns) {
      try { fn(col as Collection, id); } catch { /* a subscriber's failure is its own */ }
    }
  }

  // ---- cluster channels: LISTEN/NOTIFY for hub-to-hub messages (hub/cluster/bus.ts) ----

  /**
   * Delivers every notification on `channel` (a name matching CHANNEL_RE) to `fn`, from now on,
   * on the store's LISTEN connection (re-listened after a reconnect). At most once: messages sent
   * while the connection is down are lost; `onResync` says when it is back.
   */
  async listen(channel: string, fn: (payload: string) => void): Promise<() => void> {
    this.#checkOpen();
    checkChannel(channel);
    let set = this.#channels.get(channel);
    if (!set) {
      this.#channels.set(channel, (set = new Set()));
      const l = this.#listener;
      if (l) await l.query(`LISTEN ${channel}`).catch((err: Error) => this.#listenerLost(l, err));
    }
    set.add(fn);
    return () => { set!.delete(fn); };
  }

  /** Called each time the LISTEN connection is back (after a loss) and the cache reloaded. */
  onResync(fn: () => void): () => void {
    this.#resyncFns.add(fn);
    return () => { this.#resyncFns.delete(fn); };
  }

  /** Sends `payload` (at most MAX_CHANNEL_PAYLOAD bytes) to every hub listening on `channel`, this one included. */
  async notify(channel: string, payload: string): Promise<void> {
    this.#checkOpen();
    checkChannel(channel);
    if (Buffer.byteLength(payload) > MAX_CHANNEL_PAYLOAD) {
      throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `a cluster message on ${channel} is ${Buffer.byteLength(payload)} bytes, over the ${MAX_CHANNEL_PAYLOAD}-byte limit of NOTIFY`);
    }
    try {
      await this.#pool.query('SELECT pg_notify($1, $2)', [channel, payload]);
    } catch (e) {
      throw storeError(e, this.where);
    }
  }

  /**
   * Sends several payloads on `channel` in one round trip (one statement, delivered in order).
   * Identical payloads in one call reach listeners once (PostgreSQL folds them): make them differ.
   */
  async notifyMany(channel: string, payloads: string[]): Promise<void> {
    this.#checkOpen();
    checkChannel(channel);
    for (const p of payloads) {
      if (Buffer.byteLength(p) > MAX_CHANNEL_PAYLOAD) {
        throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `a cluster message on ${channel} is ${Buffer.byteLength(p)} bytes, over the ${MAX_CHANNEL_PAYLOAD}-byte limit of NOTIFY`);
      }
    }
    if (payloads.length === 0) return;
    try {
      await this.#pool.query('SELECT pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS m(p, n) ORDER BY n', [channel, payloads]);
    } catch (e) {
      throw storeError(e, this.where);
    }
  }

  /** Runs `sql` on a pooled connection (for modules with their own tables, e.g. execution history). */
  async query<R extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, params?: unknown[]): Promise<pg.QueryResult<R>> {
    this.#checkOpen();
    try {
      return await this.#pool.query<R>(sql, params);
    } catch (e) {
      throw storeError(e, this.where);
    }
  }

  /** Runs `body` in one transaction on one pooled connection (BEGIN … COMMIT, ROLLBACK on a throw). */
  async transaction<R>(body: (c: pg.PoolClient) => Promise<R>): Promise<R> {
    this.#checkOpen();
    let client: pg.PoolClient;
    try { client = await this.#pool.connect(); } catch (e) { throw storeError(e, this.where); }
    let broken: Error | undefined;
    try {
      await client.query('BEGIN');
      const r = await body(client);
      await client.query('COMMIT');
      return r;
    } catch (e) {
      try { await client.query('ROLLBACK'); } catch (rb) { broken = rb as Error; }
      throw e instanceof TrellisError ? e : storeError(e, this.where);
    } finally {
      client.release(broken);
    }
  }

  // ---- reads: from the cache ----

  async get<T extends Doc>(col: Collection, id: string): Promise<T | undefined> {
    this.#checkReadable(col);
    checkId(col, id);
    const e = this.#cache.get(col, id);
    return e === undefined ? undefined : (structuredClone(e.doc) as T);
  }

  peek<T extends Doc>(col: Collection, id: string): Readonly<T> | undefined {
    this.#checkOpen();
    checkCollection(col);
    checkId(col, id);
    return this.#cache.get(col, id)?.doc as T | undefined;
  }

  async list<T extends Doc>(col: Collection, filter?: (d: T) => boolean): Promise<T[]> {
    this.#checkReadable(col);
    const out: T[] = [];
    for (const e of this.#cache.sorted(col)) {
      if (!filter || filter(e.doc as T)) out.push(structuredClone(e.doc) as T);
    }
    return out;
  }

  async count(col: Collection): Promise<number> {
    this.#checkReadable(col);
    return this.#cache.size(col);
  }

  // ---- writes: one transaction each, under the document's lock ----

  async insert<T extends Doc>(col: Collection, doc: T): Promise<void> {
    this.#checkWritable(col);
    const stored = toStoredDoc(col, doc);
    const r = await this.#write(col, stored.id, async (c) => {
      const res = await c.query<{ version: string; seq: string }>(
        `INSERT INTO trellis_docs (collection, id, doc, version, seq)
         VALUES ($1, $2, $3::json, nextval('trellis_doc_version'), nextval('trellis_doc_seq'))
         ON CONFLICT (collection, id) DO NOTHING RETURNING version, seq`,
        [col, dbId(stored.id), JSON.stringify(stored)],
      );
      return res.rows[0] && { ...res.rows[0], doc: stored };
    });
    if (!r) throw new TrellisError('TRELLIS_E_ALREADY_EXISTS', `${col} '${stored.id}' already exists`);
  }

  async put<T extends Doc>(col: Collection, doc: T): Promise<void> {
    this.#checkWritable(col);
    const stored = toStoredDoc(col, doc);
    await this.#write(col, stored.id, (c) => upsert(c, col, stored));
  }

  async delete(col: Collection, id: string): Promise<boolean> {
    this.#checkWritable(col);
    checkId(col, id);
    const r = await this.#write(col, id, (c) => remove(c, col, id));
    return r !== undefined;
  }

  async update<T extends Doc>(col: Collection, id: string, fn: (cur: T | undefined) => T | undefined): Promise<T | undefined> {
    this.#checkWritable(col);
    checkId(col, id);
    let result: T | undefined;
    await this.#write(col, id, async (c) => {
      const cur = await c.query<{ doc: unknown }>('SELECT doc FROM trellis_docs WHERE collection = $1 AND id = $2 FOR UPDATE', [col, dbId(id)]);
      const before = cur.rows[0] === undefined ? undefined : (cur.rows[0].doc as T);
      this.#inUpdateFn = true;
      let next: T | undefined;
      try {
        next = fn(before);
      } finally {
        this.#inUpdateFn = false;
      }
      if (next === undefined) {
        result = undefined;
        return before === undefined ? undefined : remove(c, col, id);
      }
      const stored = toStoredDoc(col, next);
      if (stored.id !== id) {
        throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `update of ${col} '${id}' returned a document with id '${stored.id}'; the id cannot change`);
      }
      result = next;
      return upsert(c, col, stored);
    });
    return result;
  }

  /**
   * Waits for the mutations started so far to settle. A mutation that failed was rolled back
   * (unlike lowdb, nothing stays pending to retry): its own call reports it.
   */
  async flush(): Promise<void> {
    this.#checkOpen();
    await Promise.allSettled([...this.#inFlight]);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#state = 'closed';
    await Promise.allSettled([...this.#inFlight]);
    clearTimeout(this.#reconnectTimer);
    clearInterval(this.#pingTimer);
    const listener = this.#listener;
    this.#listener = undefined;
    await listener?.end().catch(() => undefined);
    await this.#draining?.catch(() => undefined);
    await this.#pool.end().catch(() => undefined);
  }

  /**
   * Runs `body` in a transaction holding the document's advisory lock, commits, and applies what
   * it returns to the cache (`{version, seq, doc}` stored, `{version}` alone deleted, undefined
   * nothing changed).
   */
  #write<R extends { version: string; seq?: string; doc?: Doc } | undefined>(
    col: string,
    id: string,
    body: (c: pg.PoolClient) => Promise<R>,
  ): Promise<R> {
    const p = this.#transaction(col, id, body);
    this.#inFlight.add(p);
    void p.finally(() => this.#inFlight.delete(p)).catch(() => undefined);
    return p;
  }

  async #transaction<R extends { version: string; seq?: string; doc?: Doc } | undefined>(
    col: string,
    id: string,
    body: (c: pg.PoolClient) => Promise<R>,
  ): Promise<R> {
    this.#ownInFlight++;
    try {
      let client: pg.PoolClient;
      try {
        client = await this.#pool.connect();
      } catch (e) {
        throw storeError(e, this.where);
      }
      let r: R;
      let broken: Error | undefined;
      try {
        await client.query('BEGIN');
        await client.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [`${col}\u001f${dbId(id)}`]);
        r = await body(client);
        if (r !== undefined) {
          const payload = JSON.stringify({ c: col, i: id, v: r.version });
          await client.query('SELECT pg_notify($1, $2)', [NOTIFY_CHANNEL, Buffer.byteLength(payload) <= MAX_PAYLOAD ? payload : JSON.stringify({ c: col })]);
        }
        await client.query('COMMIT');
      } catch (e) {
        try { await client.query('ROLLBACK'); } catch (rb) { broken = rb as Error; }
        throw e instanceof TrellisError || (e instanceof Error && !('code' in e) && !isPgClientError(e)) ? e : storeError(e, this.where);
      } finally {
        client.release(broken);
      }
      if (r !== undefined) this.#applyOwn(col, id, r);
      return r;
    } finally {
      if (--this.#ownInFlight === 0) this.#cache.clearTombstones();
    }
  }

  #applyOwn(col: string, id: string, r: { version: string; seq?: string; doc?: Doc }): void {
    if (this.#closed) return;
    this.#cache.applyOwn(col, id, BigInt(r.version), r.doc, r.seq === undefined ? undefined : BigInt(r.seq));
  }

  // ---- keeping the cache fresh ----

  async #connectListener(): Promise<void> {
    const client = new pg.Client(this.#config);
    client.on('error', (err) => this.#listenerLost(client, err));
    client.on('end', () => this.#listenerLost(client, new Error('connection ended')));
    client.on('notification', (n) => {
      if (client !== this.#listener) return;
      if (n.channel === NOTIFY_CHANNEL) {
        this.#notice(n.payload);
        return;
      }
      const fns = this.#channels.get(n.channel);
      if (fns) {
        for (const fn of fns) {
          try { fn(n.payload ?? ''); } catch { /* a subscriber's failure is its own */ }
        }
      }
    });
    try {
      await client.connect();
      // Listen first, then load: a change committed after the load's snapshot is notified.
      await client.query(`LISTEN ${NOTIFY_CHANNEL}`);
      for (const channel of this.#channels.keys()) await client.query(`LISTEN ${channel}`);
    } catch (e) {
      client.removeAllListeners('end');
      await client.end().catch(() => undefined);
      throw e;
    }
    if (this.#closed) {
      await client.end().catch(() => undefined);
      return;
    }
    this.#listener = client;
    const again = this.#state === 'stale';
    try {
      await this.#reload();
    } catch (e) {
      this.#listenerLost(client, e as Error);
      throw e;
    }
    this.#reconnectDelay = 0;
    this.#setState('ready', 'listening for changes');
    if (again) {
      // Other hubs' changes made while the connection was down are in the reloaded cache.
      for (const col of COLLECTIONS) this.#changed(col, undefined);
      for (const fn of this.#resyncFns) {
        try { fn(); } catch { /* a subscriber's failure is its own */ }
      }
    }
    // A connection cut without a FIN is only noticed when something is sent on it.
    clearInterval(this.#pingTimer);
    this.#pingTimer = setInterval(() => {
      if (this.#listener === client) void client.query('SELECT 1').catch((err: Error) => this.#listenerLost(client, err));
    }, 5_000);
    this.#pingTimer.unref();
  }

  /** Replaces the cache with the table's contents, keeping this hub's writes made meanwhile. */
  async #reload(): Promise<void> {
    const touched = this.#cache.beginReload();
    try {
      const r = await this.#pool.query<Row>('SELECT collection, id, doc, version, seq FROM trellis_docs ORDER BY collection, seq');
      if (this.#closed) return;
      for (const row of r.rows) row.id = fromDbId(row.id);
      this.#cache.replaceAll(r.rows, touched);
    } finally {
      this.#cache.endReload(touched);
    }
  }

  #notice(payload: string | undefined): void {
    let n: Notice;
    try {
      n = JSON.parse(payload ?? '') as Notice;
    } catch {
      return;
    }
    if (typeof n?.c !== 'string') return;
    if (n.i !== undefined && typeof n.i !== 'string') return;
    if (n.v !== undefined && (typeof n.v !== 'string' || !/^\d{1,19}$/.test(n.v))) return;
    // This hub's own change (or an older one): nothing to fetch.
    if (n.i !== undefined && n.v !== undefined && this.#cache.knownVersion(n.c, n.i) >= BigInt(n.v)) {
      this.#cache.settled(n.c, n.i, BigInt(n.v));
      return;
    }
    this.#pending.push(n);
    this.#draining ??= this.#drain().finally(() => { this.#draining = undefined; });
  }

  async #drain(): Promise<void> {
    while (this.#pending.length > 0 && !this.#closed) {
      const batch = this.#pending.splice(0, 500);
      try {
        await this.#fetch(batch);
      } catch (err) {
        // The database went away mid-fetch: the listener is lost too, and its reload covers this batch.
        if (this.#listener) this.#listenerLost(this.#listener, err as Error);
        this.#pending = [];
        return;
      }
    }
  }

  async #fetch(batch: Notice[]): Promise<void> {
    const whole = [...new Set(batch.filter((n) => n.i === undefined).map((n) => n.c))];
    const keys = new Map<string, Notice>();
    for (const n of batch) if (n.i !== undefined && !whole.includes(n.c)) keys.set(cacheKey(n.c, n.i), n);
    const cols = [...keys.values()].map((n) => n.c);
    const ids = [...keys.values()].map((n) => dbId(n.i!));
    const r = await this.#pool.query<Row & { last: string }>(
      `SELECT d.collection, d.id, d.doc, d.version, d.seq FROM trellis_docs d
         JOIN unnest($1::text[], $2::text[]) AS k(c, i) ON d.collection = k.c AND d.id = k.i
       UNION ALL
       SELECT collection, id, doc, version, seq FROM trellis_docs WHERE collection = ANY($3::text[])`,
      [cols, ids, whole],
    );
    if (this.#closed) return;
    for (const row of r.rows) row.id = fromDbId(row.id);
    const found = new Map<string, Row>();
    for (const row of r.rows) found.set(cacheKey(row.collection, row.id), row);
    const changed: Notice[] = [];
    for (const [key, n] of keys) {
      const row = found.get(key);
      // Only what changed this hub's reads is reported: a late notice of this hub's own write or
      // delete (its tombstone already cleared) finds the cache as it is.
      const before = this.#cache.get(n.c, n.i!);
      // Gone from the table: deleted by another hub (a newer write of ours would be in it, or newer than n.v).
      if (row) this.#cache.applyRow(row);
      else this.#cache.applyGone(n.c, n.i!, BigInt(n.v ?? '0'));
      if (this.#cache.get(n.c, n.i!) !== before) changed.push(n);
    }
    for (const col of whole) {
      const rows = r.rows.filter((row) => row.collection === col);
      for (const row of rows) this.#cache.applyRow(row);
      this.#cache.keepOnly(col, new Set(rows.map((row) => row.id)));
    }
    if (this.#changeFns.size > 0) {
      for (const n of changed) this.#changed(n.c, n.i);
      for (const col of whole) this.#changed(col, undefined);
    }
  }

  #listenerLost(client: pg.Client, err: Error): void {
    if (client !== this.#listener || this.#closed) return;
    this.#listener = undefined;
    clearInterval(this.#pingTimer);
    client.removeAllListeners('notification');
    void client.end().catch(() => undefined);
    this.#setState('stale', `LISTEN connection lost (${(err as { code?: string }).code ?? err.message}); reads fail until it is back`);
    this.#scheduleReconnect();
  }

  /** Single-flight: one timer at a time; capped exponential backoff with full jitter. */
  #scheduleReconnect(): void {
    if (this.#closed || this.#reconnectTimer) return;
    const cap = this.#opts.maxReconnectDelayMs ?? 5_000;
    this.#reconnectDelay = Math.min(cap, Math.max(100, this.#reconnectDelay * 2));
    const delay = this.#reconnectDelay / 2 + Math.random() * (this.#reconnectDelay / 2);
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = undefined;
      this.#connectListener().catch(() => this.#scheduleReconnect());
    }, delay);
    this.#reconnectTimer.unref();
  }

  #setState(state: PostgresStoreState, detail: string): void {
    if (this.#closed || this.#state === state) return;
    this.#state = state;
    this.#opts.onStateChange?.(state, detail);
  }

  #checkOpen(): void {
    if (this.#closed) throw new TrellisError('TRELLIS_E_SHUTDOWN', 'the state store is closed');
  }

  #checkReadable(col: string): void {
    this.#checkOpen();
    checkCollection(col);
    if (this.#state !== 'ready') {
      throw new TrellisError('TRELLIS_E_UNAVAILABLE', `the state database ${this.where} is unreachable: reads wait for the connection to come back`);
    }
  }

  #checkWritable(col: string): void {
    this.#checkOpen();
    if (this.#inUpdateFn) throw new TrellisError('TRELLIS_E_INTERNAL', 'a store update() function may not change the store itself');
    checkCollection(col);
  }
}

async function upsert(c: pg.PoolClient, col: string, doc: Doc): Promise<{ version: string; seq: string; doc: Doc }> {
  const r = await c.query<{ version: string; seq: string }>(
    `INSERT INTO trellis_docs (collection, id, doc, version, seq)
     VALUES ($1, $2, $3::json, nextval('trellis_doc_version'), nextval('trellis_doc_seq'))
     ON CONFLICT (collection, id) DO UPDATE SET doc = EXCLUDED.doc, version = EXCLUDED.version
     RETURNING version, seq`,
    [col, dbId(doc.id), JSON.stringify(doc)],
  );
  return { ...r.rows[0]!, doc };
}

async function remove(c: pg.PoolClient, col: string, id: string): Promise<{ version: string } | undefined> {
  const r = await c.query<{ version: string }>(
    `WITH d AS (DELETE FROM trellis_docs WHERE collection = $1 AND id = $2 RETURNING 1)
     SELECT nextval('trellis_doc_version') AS version FROM d`,
    [col, dbId(id)],
  );
  return r.rows[0];
}

/**
 * The id as kept in the id column. PostgreSQL text cannot hold NUL (the kv store's ids use it as
 * a separator) and UTF-8 cannot hold an unpaired surrogate: those, and the backslash, are
 * escaped (`\\`, `\uXXXX`); every other id is kept as is. The document itself (json) keeps the
 * real id.
 */
export function dbId(id: string): string {
  return id.replace(/[\\\u0000]|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g,
    (ch) => (ch === '\\' ? '\\\\' : `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`));
}

export function fromDbId(s: string): string {
  return s.replace(/\\(\\|u[0-9a-f]{4})/g, (_m, e: string) => (e === '\\' ? '\\' : String.fromCharCode(parseInt(e.slice(1), 16))));
}

function isPgClientError(e: Error): boolean {
  return /Connection terminated|Query read timeout|Client has encountered a connection error|Connection ended unexpectedly/i.test(e.message);
}
