/**
 * The audit log in PostgreSQL, for hubs that share one database (store.kind "postgres"): every
 * hub appends to one table, `trellis_audit` (migration 3), and any hub lists and follows the
 * records of all of them.
 *
 * - Append-only: this module has no UPDATE of the table; its only DELETE is retention.
 * - Writing is as with the files: `record()` never waits for the database; records are queued
 *   and written in batches, one INSERT statement per batch (at most 1000 rows, `unnest` of
 *   arrays), on a short timer, when the queue gets long, on `flush()` and `close()`. A hub killed
 *   loses at most the batch not yet written. While the database is away the batch stays queued
 *   (bounded by `maxQueued`, the overflow dropped oldest first and counted) and is retried; a
 *   batch retried after an ambiguous failure (committed, answer lost) is not written twice
 *   (`ON CONFLICT (id) DO NOTHING`).
 * - Retention, as the files' (hub.json `audit.retention`): rows whose time is older than
 *   `maxAgeMs` go; and the files keep at most maxSegments × maxSegmentBytes bytes of JSON lines,
 *   so the table keeps the newest rows whose JSON-line sizes (`bytes`) add up to at most
 *   `maxBytes` = maxSegments × maxSegmentBytes. It runs at open and every `retentionIntervalMs`
 *   on every hub (deletes are idempotent, two hubs running it at once is harmless).
 * - Following across hubs: after a batch is committed the writer publishes `audit {from, to}`
 *   (its `seq` range) on the cluster bus; every other hub re-reads those rows from the table
 *   (never trusting the message: a forged one can only make it re-read real rows, and the ids
 *   delivered lately are remembered so none is sent to a follower twice) and hands them to its
 *   followers. The bus is at most once: when a hub's LISTEN connection comes back it re-reads
 *   what other hubs wrote after the last row it saw. This hub's own records reach its followers
 *   at once, as with the files.
 */
import { monotonicUlidFactory } from '../../common/ids.js';
import { silentLogger, type Logger } from '../../common/log.js';
import { SerialFlusher } from '../../common/serial.js';
import { open, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { clampLimit, parseLine, SEGMENT_RE, toAuditRecord } from './index.js';
import type { AuditBackend, AuditEntry, AuditQuery, AuditRecord } from './types.js';
import type { ClusterBus } from '../cluster/bus.js';

/** What the log needs of the database: PostgresStore's `query`. */
export interface AuditDb {
  query<R extends Record<string, unknown> = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<{ rows: R[] }>;
}

export interface PgAuditLogOptions {
  db: AuditDb;
  /** The cluster bus: `audit {from, to}` hints to and from the other hubs. */
  bus: ClusterBus;
  /** Drop rows older than this. @default 90 days */
  maxAgeMs?: number;
  /** Keep at most this many bytes of records (as JSON lines), the newest. @default 20 × 16 MiB */
  maxBytes?: number;
  /** Longest a record waits in memory before its batch is written. @default 100 */
  flushIntervalMs?: number;
  /** Records queued beyond this are dropped (oldest first) and counted. @default 100,000 */
  maxQueued?: number;
  /** How often retention runs. @default 60000 */
  retentionIntervalMs?: number;
  log?: Logger;
}

/** The bus topic of "new audit rows" hints. */
export const AUDIT_TOPIC = 'audit';
const BATCH_RECORDS = 1000;
/** A hint naming a wider seq range than this is cut to it (a forged one cannot make a hub read the whole table). */
const MAX_HINT_ROWS = 5000;
/** Ids of records delivered to followers lately, remembered to drop repeats. */
const RECENT_IDS = 20_000;

interface Row extends Record<string, unknown> {
  seq: string; id: string; time_ms: string; actor: string; tenant: string; method: string; target: string;
  result: AuditRecord['result']; source_address: string; detail: string;
}

const COLUMNS = 'seq, id, time_ms, actor, tenant, method, target, result, source_address, detail';

function fromRow(r: Row): AuditRecord {
  return {
    id: r.id, timeMs: Number(r.time_ms), actor: r.actor, tenant: r.tenant, method: r.method, target: r.target,
    result: r.result, sourceAddress: r.source_address, detail: r.detail,
  };
}

/** One INSERT of `batch` (rows already there, by id, are skipped); the seqs of the rows written. */
async function insertBatch(db: AuditDb, hub: string, batch: AuditRecord[]): Promise<number[]> {
  const col = <K extends keyof AuditRecord>(k: K) => batch.map((r) => r[k]);
  const r = await db.query<{ seq: string }>(
    `INSERT INTO trellis_audit (id, time_ms, hub, actor, tenant, method, target, result, source_address, detail, bytes)
     SELECT u.id, u.time_ms, $1, u.actor, u.tenant, u.method, u.target, u.result, u.source_address, u.detail, u.bytes
       FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::int[])
         AS u(id, time_ms, actor, tenant, method, target, result, source_address, detail, bytes)
     ON CONFLICT (id) DO NOTHING
     RETURNING seq`,
    [hub, col('id'), col('timeMs'), col('actor'), col('tenant'), col('method'), col('target'), col('result'), col('sourceAddress'), col('detail'),
      batch.map((x) => Buffer.byteLength(JSON.stringify(x)) + 1)],
  );
  return r.rows.map((x) => Number(x.seq));
}

/**
 * `hub migrate --from-data`: the records of a lowdb hub's audit segment files (DATA/audit) into
 * the table, in batches; records already there (a second run) are skipped, torn lines too.
 * Returns how many rows were added.
 */
export async function importAuditSegments(db: AuditDb, dir: string, hub: string): Promise<number> {
  let names: string[];
  try { names = (await readdir(dir)).filter((n) => SEGMENT_RE.test(n)).sort(); } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw e;
  }
  let added = 0;
  for (const name of names) {
    const records = (await readFile(join(dir, name), 'utf8')).split('\n').map(parseLine).filter((r): r is AuditRecord => !!r);
    for (let i = 0; i < records.length; i += BATCH_RECORDS) added += (await insertBatch(db, hub, records.slice(i, i + BATCH_RECORDS))).length;
  }
  return added;
}

type Follower = { onRecord: (r: AuditRecord) => void; onEnd?: () => void };

export class PgAuditLog implements AuditBackend {
  private readonly newId = monotonicUlidFactory();
  private readonly followers = new Set<Follower>();
  private readonly flusher = new SerialFlusher(() => this.writeQueued());
  private queue: AuditRecord[] = [];
  private closed = false;
  private following = true;
  private failing = false;
  private retentionTimer?: NodeJS.Timeout;
  private retaining?: Promise<void>;
  private unsubscribe?: () => void;
  private unresync?: () => void;
  /** Ids recently handed to followers (insertion-ordered; the oldest forgotten first). */
  private readonly recent = new Set<string>();
  /** The highest seq of another hub's row handed to followers (where a resync re-reads from). */
  private lastSeq = 0;
  /** Records dropped because the queue overflowed (the database stayed away). */
  dropped = 0;
  get queued(): number { return this.queue.length; }

  private constructor(private readonly o: Required<PgAuditLogOptions>) {}

  static async open(opts: PgAuditLogOptions): Promise<PgAuditLog> {
    const log = new PgAuditLog({
      db: opts.db, bus: opts.bus,
      maxAgeMs: opts.maxAgeMs ?? 90 * 86_400_000,
      maxBytes: opts.maxBytes ?? 20 * 16 * 2 ** 20,
      flushIntervalMs: opts.flushIntervalMs ?? 100,
      maxQueued: opts.maxQueued ?? 100_000,
      retentionIntervalMs: opts.retentionIntervalMs ?? 60_000,
      log: opts.log ?? silentLogger(),
    });
    if (log.o.maxBytes < 1 || log.o.maxAgeMs < 1) throw new RangeError('maxBytes and maxAgeMs must be at least 1');
    const top = await log.o.db.query<{ s: string | null }>('SELECT max(seq) AS s FROM trellis_audit');
    log.lastSeq = Number(top.rows[0]?.s ?? 0);
    log.unsubscribe = await log.o.bus.subscribe(AUDIT_TOPIC, (msg, fromHub) => log.onHint(msg, fromHub));
    log.unresync = log.o.bus.onResync(() => void log.catchUp());
    await log.retain();
    log.retentionTimer = setInterval(() => void log.retain(), log.o.retentionIntervalMs);
    log.retentionTimer.unref();
    return log;
  }

  // ------------------------------------------------------------ writing

  /** Queues one record (never waits for the database) and hands it to this hub's followers. */
  record(e: AuditEntry): void {
    if (this.closed) {
      this.o.log.warn({ method: e.method }, 'audit record after close; not written');
      return;
    }
    const r = toAuditRecord(e, this.newId);
    this.queue.push(r);
    if (this.queue.length > this.o.maxQueued) {
      const n = this.queue.length - this.o.maxQueued;
      this.queue.splice(0, n);
      this.dropped += n;
    }
    this.flusher.schedule(this.queue.length >= BATCH_RECORDS ? 0 : this.o.flushIntervalMs);
    this.deliver(r);
  }

  flush(): Promise<void> {
    return this.flusher.flush();
  }

  private async writeQueued(): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.queue.slice(0, BATCH_RECORDS);
      let seqs: number[];
      try {
        seqs = await this.insert(batch);
        if (this.failing) { this.failing = false; this.o.log.info('audit log writable again'); }
      } catch (err) {
        if (!this.failing) this.o.log.error({ err: (err as Error).message, queued: this.queue.length }, 'writing the audit log to the database failed; retrying');
        this.failing = true;
        if (!this.closed) this.flusher.schedule(Math.max(this.o.flushIntervalMs, 1000));
        throw err;
      }
      // Only now leave the queue: records queued meanwhile stay behind the batch (an overflow
      // while the insert ran dropped from the front, so the batch is found by identity).
      const written = new Set(batch);
      this.queue = this.queue.filter((r) => !written.has(r));
      if (seqs.length) {
        const from = Math.min(...seqs), to = Math.max(...seqs);
        await this.o.bus.publish(AUDIT_TOPIC, { from, to }).catch((err: Error) => this.o.log.debug({ err: err.message }, 'audit hint to the other hubs not sent'));
      }
    }
  }

  /** One INSERT of the batch; the seqs of the rows written. */
  private insert(batch: AuditRecord[]): Promise<number[]> {
    return insertBatch(this.o.db, this.o.bus.hubId, batch);
  }

  // ------------------------------------------------------------ retention

  /** Deletes rows older than maxAgeMs and the oldest beyond maxBytes (the only DELETE of the table). */
  retain(): Promise<void> {
    if (this.closed) return this.retaining ?? Promise.resolve();
    this.retaining ??= (async () => {
      try {
        const byAge = await this.o.db.query('DELETE FROM trellis_audit WHERE time_ms < $1 RETURNING 1 AS x', [Date.now() - this.o.maxAgeMs]);
        const bySize = await this.o.db.query(
          `DELETE FROM trellis_audit WHERE id <= (
             SELECT id FROM (SELECT id, sum(bytes) OVER (ORDER BY id DESC) AS total FROM trellis_audit) AS t
              WHERE total > $1 ORDER BY id DESC LIMIT 1)
           RETURNING 1 AS x`,
          [this.o.maxBytes],
        );
        if (byAge.rows.length || bySize.rows.length) this.o.log.info({ byAge: byAge.rows.length, bySize: bySize.rows.length }, 'audit records removed by retention');
      } catch (err) {
        this.o.log.warn({ err: (err as Error).message }, 'audit retention did not run (the database is away?); it runs again later');
      } finally {
        this.retaining = undefined;
      }
    })();
    return this.retaining;
  }

  // ------------------------------------------------------------ reading

  async query(q: AuditQuery = {}): Promise<AuditRecord[]> {
    await this.flush().catch(() => undefined);
    const where: string[] = [];
    const params: unknown[] = [];
    if (q.sinceMs) { params.push(q.sinceMs); where.push(`time_ms >= $${params.length}`); }
    if (q.actor) { params.push(q.actor); where.push(`actor = $${params.length}`); }
    // strpos, not LIKE: the text is matched as it is (no wildcards in what the caller typed).
    if (q.methodContains) { params.push(q.methodContains.toLowerCase()); where.push(`strpos(lower(method), $${params.length}) > 0`); }
    params.push(clampLimit(q.limit));
    const r = await this.o.db.query<Row>(
      `SELECT ${COLUMNS} FROM trellis_audit ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT $${params.length}`,
      params,
    );
    return r.rows.reverse().map(fromRow);
  }

  follow(onRecord: (r: AuditRecord) => void, onEnd?: () => void): () => void {
    const f: Follower = { onRecord, onEnd };
    if (!this.following) { onEnd?.(); return () => undefined; }
    this.followers.add(f);
    return () => { this.followers.delete(f); };
  }

  get followerCount(): number { return this.followers.size; }

  endFollowers(): void {
    this.following = false;
    const all = [...this.followers];
    this.followers.clear();
    for (const f of all) {
      try { f.onEnd?.(); } catch (err) { this.o.log.error({ err }, 'audit follower failed'); }
    }
  }

  /** Hands a record to the followers once (a repeat of a recent id is dropped). */
  private deliver(r: AuditRecord): void {
    if (this.recent.has(r.id)) return;
    this.recent.add(r.id);
    if (this.recent.size > RECENT_IDS) this.recent.delete(this.recent.values().next().value!);
    for (const f of this.followers) {
      try { f.onRecord(r); } catch (err) { this.o.log.error({ err }, 'audit follower failed'); }
    }
  }

  /** Another hub wrote rows `from`..`to`: read them from the table for the followers. */
  private onHint(msg: Record<string, unknown>, fromHub: string): void {
    const from = Number(msg.from), to = Number(msg.to);
    if (!Number.isSafeInteger(from) || !Number.isSafeInteger(to) || from < 1 || to < from) {
      this.o.log.warn({ fromHub: fromHub.slice(0, 64) }, 'ignored a malformed audit hint');
      return;
    }
    if (!this.followers.size) { this.lastSeq = Math.max(this.lastSeq, to); return; }
    void this.readRows('seq BETWEEN $1 AND $2', [from, Math.min(to, from + MAX_HINT_ROWS - 1)]);
  }

  /** After a lost LISTEN connection: what other hubs wrote since the last row seen (hints were missed). */
  private async catchUp(): Promise<void> {
    if (!this.followers.size) return;
    // Rows are numbered at insert and committed later: start a little before the last one seen (repeats are dropped).
    await this.readRows('seq > $1 AND hub <> $2', [Math.max(0, this.lastSeq - 1000), this.o.bus.hubId]);
  }

  private async readRows(cond: string, params: unknown[]): Promise<void> {
    try {
      const r = await this.o.db.query<Row>(`SELECT ${COLUMNS} FROM trellis_audit WHERE ${cond} ORDER BY seq LIMIT ${MAX_HINT_ROWS}`, params);
      for (const row of r.rows) {
        this.lastSeq = Math.max(this.lastSeq, Number(row.seq));
        if (this.following) this.deliver(fromRow(row));
      }
    } catch (err) {
      this.o.log.warn({ err: (err as Error).message }, 'reading other hubs\' audit records for followers failed');
    }
  }

  /** Every record, oldest first, as segment-file lines into the new file `file` (0600): for snapshots. */
  async exportTo(file: string): Promise<void> {
    await this.flush().catch(() => undefined);
    const fh = await open(file, 'wx', 0o600);
    try {
      let after = '';
      for (;;) {
        const r = await this.o.db.query<Row>(`SELECT ${COLUMNS} FROM trellis_audit WHERE id > $1 ORDER BY id LIMIT 5000`, [after]);
        if (r.rows.length === 0) break;
        await fh.appendFile(r.rows.map((x) => JSON.stringify(fromRow(x)) + '\n').join(''));
        after = r.rows.at(-1)!.id;
      }
      await fh.sync();
    } finally {
      await fh.close();
    }
  }

  // ------------------------------------------------------------ closing

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true; // later records are dropped with a warning; a failed flush is not retried
    this.endFollowers();
    clearInterval(this.retentionTimer);
    this.unsubscribe?.();
    this.unresync?.();
    this.flusher.cancel();
    await this.flush().catch((err: Error) => this.o.log.error({ err: err.message, lost: this.queue.length }, 'audit records not written at close (the database is away)'));
    await this.flusher.idle();
    await this.retaining;
    if (this.dropped) this.o.log.error({ dropped: this.dropped }, 'audit records were dropped while the database was away');
  }

  async [Symbol.asyncDispose](): Promise<void> { await this.close(); }
}
