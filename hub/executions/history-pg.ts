/**
 * The execution history in PostgreSQL (store kind "postgres"), shared by every hub of a cluster:
 * table `trellis_executions` (one row per execution, the whole record as JSON, its idempotency
 * key under a UNIQUE index, the hub that owns it) and `trellis_output` (one row per output chunk),
 * schema migration 2 (hub/store/postgres/migrations.ts).
 *
 * Same contract as the file history (hub/executions/history.ts): `appendState`/`appendOutput`
 * never wait; queued lines are written in batches (on a short timer, when the queue gets long, on
 * `flush()` and `close()`): one statement for the state rows of a batch and one for its output
 * chunks, in one transaction. Changes of one execution within a batch coalesce into one row write.
 *
 * Fencing: a hub writes only the rows it owns (`owner_hub`). A row another hub took over (its
 * agent moved there) is left alone, and the ids so refused are reported through `onLost` so the
 * former owner stops dispatching them. Output chunks are keyed by (id, offset): written once.
 *
 * Retention (age and count, as the file history) runs at open and hourly on one hub at a time
 * (an advisory lock): finished executions last written before maxAge, then the oldest finished
 * ones beyond maxCount, with their output.
 */
import type pg from 'pg';
import type { Logger } from '../../common/log.js';
import { SerialFlusher } from '../../common/serial.js';
import { FINAL_STATUSES } from '../../common/automation/types.js';
import type { Chunk } from './history.js';
import type { ExecutionRecord } from './types.js';

/** What the history needs of the PostgreSQL store (hub/store/postgres: query, transaction). */
export interface ExecDb {
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, params?: unknown[]): Promise<pg.QueryResult<R>>;
  transaction<R>(body: (c: pg.PoolClient) => Promise<R>): Promise<R>;
}

/** What the executions index writes to and reads from (the file history and this one). */
export interface HistoryBackend {
  appendState(rec: ExecutionRecord, extra?: { dedupKey?: string; timeoutMs?: number }): void;
  appendOutput(id: string, stream: 'STDOUT' | 'STDERR', offset: number, data: Buffer): void;
  /** The file history's state line queued for this record object, built once (it keeps finished executions as that text); others: undefined. */
  queuedLine?(rec: ExecutionRecord): string | undefined;
  flush(): Promise<void>;
  /** Every state line queued so far on disk (output may follow later). */
  flushStates(): Promise<void>;
  /** Every line queued so far on disk, riding on the next write where the backend batches. */
  written(): Promise<void>;
  readOutput(id: string): Promise<Chunk[]>;
  close(): Promise<void>;
}

export interface PgHistoryOptions {
  db: ExecDb;
  hubId: string;
  log: Logger;
  maxAgeMs: number;
  maxCount: number;
  flushIntervalMs: number;
  /** Ids whose rows this batch wrote (followers on other hubs are told). */
  onWritten?: (ids: string[]) => void;
  /** Ids this hub no longer owns (another hub took them over): their writes were refused. */
  onLost?: (ids: string[]) => void;
}

export interface ExecRow {
  id: string;
  record: ExecutionRecord;
  dedup_key: string | null;
  kv_caller: { username: string; isAdmin: boolean } | null;
  timeout_ms: string;
  owner_hub: string | null;
  version: string;
}

const BATCH_ROWS = 500;
const MAX_QUEUED = 200_000;
const RETAIN_EVERY_MS = 3_600_000;
const RETAIN_LOCK = [0x7472656c, 2] as const;
const OPEN = ['requested', 'scheduled', 'running'];
export const FINAL_LIST = [...FINAL_STATUSES];

/** Parses a row read with `SELECT … record::text AS record …`. */
export function parseRow(r: Record<string, unknown>): ExecRow {
  return {
    id: String(r.id),
    record: (typeof r.record === 'string' ? JSON.parse(r.record) : r.record) as ExecutionRecord,
    dedup_key: (r.dedup_key as string | null) ?? null,
    kv_caller: (typeof r.kv_caller === 'string' ? JSON.parse(r.kv_caller) : r.kv_caller) as ExecRow['kv_caller'],
    timeout_ms: String(r.timeout_ms ?? '0'),
    owner_hub: (r.owner_hub as string | null) ?? null,
    version: String(r.version ?? '0'),
  };
}

export const ROW_COLUMNS = 'id, record::text AS record, dedup_key, kv_caller::text AS kv_caller, timeout_ms, owner_hub, version';

export class PgHistory implements HistoryBackend {
  private stateQ = new Map<string, { rec: ExecutionRecord; to?: number }>();
  private outQ: { id: string; off: number; s: number; d: Buffer }[] = [];
  private readonly flusher = new SerialFlusher(() => this.writeQueued());
  private retainTimer?: NodeJS.Timeout;
  private closed = false;
  private failing = false;
  dropped = 0;

  constructor(private readonly o: PgHistoryOptions) {}

  /** Applies retention once and every hour. Nothing is loaded: reads go to the database. */
  async start(): Promise<void> {
    await this.retain().catch((err) => this.o.log.error({ err }, 'execution history retention failed'));
    this.retainTimer = setInterval(() => { void this.flusher.run(() => this.retain()).catch((err) => this.o.log.error({ err }, 'execution history retention failed')); }, RETAIN_EVERY_MS);
    this.retainTimer.unref();
  }

  appendState(rec: ExecutionRecord, extra: { dedupKey?: string; timeoutMs?: number } = {}): void {
    const prev = this.stateQ.get(rec.id);
    this.stateQ.set(rec.id, { rec, to: extra.timeoutMs || prev?.to });
    this.queued();
  }

  appendOutput(id: string, stream: 'STDOUT' | 'STDERR', offset: number, data: Buffer): void {
    this.outQ.push({ id, off: offset, s: stream === 'STDERR' ? 1 : 0, d: Buffer.from(data) });
    this.queued();
  }

  private queued(): void {
    if (this.closed) return;
    const n = this.stateQ.size + this.outQ.length;
    if (n > MAX_QUEUED && this.outQ.length > 0) {
      // Only a database away for long gets here: output goes first, state rows are kept.
      const k = Math.min(this.outQ.length, n - MAX_QUEUED);
      this.outQ.splice(0, k);
      this.dropped += k;
    }
    this.flusher.schedule(n >= BATCH_ROWS ? 0 : this.o.flushIntervalMs);
  }

  flush(): Promise<void> {
    return this.flusher.flush();
  }

  /** State rows and output go in one transaction: the same as flush(). */
  flushStates(): Promise<void> {
    return this.flusher.flush();
  }

  /** The next batch's commit (forced now: one transaction carries everything queued). */
  written(): Promise<void> {
    return this.flusher.flush().catch(() => undefined);
  }

  private async writeQueued(): Promise<void> {
    while (this.stateQ.size > 0 || this.outQ.length > 0) {
      const states = this.stateQ, outs = this.outQ;
      this.stateQ = new Map(); this.outQ = [];
      let written: string[] = [];
      try {
        written = await this.o.db.transaction(async (c) => {
          let ids: string[] = [];
          if (states.size) {
            const v = [...states.values()];
            const r = await c.query<{ id: string }>(
              `INSERT INTO trellis_executions AS x (id, tenant, agent, action, status, rule, requested_ms, record, timeout_ms, owner_hub)
               SELECT u.id, u.tenant, u.agent, u.action, u.status, u.rule, u.rq, u.rec::json, u.tmo, $9
               FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::text[], $10::bigint[])
                 AS u(id, tenant, agent, action, status, rule, rq, rec, tmo)
               ON CONFLICT (id) DO UPDATE SET status = excluded.status, record = excluded.record,
                 timeout_ms = CASE WHEN excluded.timeout_ms > 0 THEN excluded.timeout_ms ELSE x.timeout_ms END,
                 version = x.version + 1, updated_at = now()
               WHERE x.owner_hub = $9
               RETURNING id`,
              [v.map((q) => q.rec.id), v.map((q) => q.rec.tenant), v.map((q) => q.rec.agentId), v.map((q) => q.rec.action), v.map((q) => q.rec.status),
                v.map((q) => q.rec.rule), v.map((q) => q.rec.requestedMs), v.map((q) => JSON.stringify(q.rec)), this.o.hubId, v.map((q) => q.to ?? 0)],
            );
            ids = r.rows.map((x) => x.id);
          }
          if (outs.length) {
            await c.query(
              `INSERT INTO trellis_output (id, off, stream, data)
               SELECT * FROM unnest($1::text[], $2::bigint[], $3::smallint[], $4::bytea[]) ON CONFLICT DO NOTHING`,
              [outs.map((x) => x.id), outs.map((x) => x.off), outs.map((x) => x.s), outs.map((x) => x.d)],
            );
          }
          return ids;
        });
        if (this.failing) { this.failing = false; this.o.log.info('execution history writable again'); }
      } catch (err) {
        for (const [id, q] of this.stateQ) { states.delete(id); states.set(id, { rec: q.rec, to: q.to || states.get(id)?.to }); }
        this.stateQ = states;
        this.outQ = outs.concat(this.outQ);
        if (!this.failing) this.o.log.error({ err: (err as Error).message, queued: this.stateQ.size + this.outQ.length }, 'writing the execution history to PostgreSQL failed; retrying');
        this.failing = true;
        if (!this.closed) this.flusher.schedule(Math.max(this.o.flushIntervalMs, 1000));
        throw err;
      }
      const ok = new Set(written);
      const lost = [...states.keys()].filter((id) => !ok.has(id));
      if (lost.length) this.o.onLost?.(lost);
      const touched = new Set([...written, ...outs.map((x) => x.id)]);
      if (touched.size) this.o.onWritten?.([...touched]);
    }
  }

  /** Finished executions past maxAge, then the oldest finished beyond maxCount, with their output (one hub at a time). */
  private async retain(): Promise<void> {
    const removed = await this.o.db.transaction(async (c) => {
      const got = await c.query<{ ok: boolean }>('SELECT pg_try_advisory_xact_lock($1, $2) AS ok', [...RETAIN_LOCK]);
      if (!got.rows[0]?.ok) return 0;
      const aged = await c.query(
        `WITH d AS (DELETE FROM trellis_executions WHERE updated_at < now() - ($1::bigint * interval '1 millisecond') AND status = ANY($2::text[]) RETURNING id)
         DELETE FROM trellis_output o USING d WHERE o.id = d.id`, [this.o.maxAgeMs, FINAL_LIST]);
      const counted = await c.query(
        `WITH d AS (DELETE FROM trellis_executions WHERE id IN (
            SELECT id FROM trellis_executions WHERE status = ANY($2::text[]) ORDER BY id DESC OFFSET $1) RETURNING id)
         DELETE FROM trellis_output o USING d WHERE o.id = d.id`, [this.o.maxCount, FINAL_LIST]);
      void aged; void counted;
      return 1;
    });
    if (removed) this.o.log.debug('execution history retention ran');
  }

  /** Output chunks of one execution, in order (what this hub queued is written first). */
  async readOutput(id: string): Promise<Chunk[]> {
    await this.flush().catch(() => undefined);
    return this.readOutputFrom(id, 0);
  }

  /** Output chunks from byte `from` on (followers on other hubs). */
  async readOutputFrom(id: string, from: number): Promise<Chunk[]> {
    const r = await this.o.db.query<{ off: string; stream: number; data: Buffer }>(
      'SELECT off, stream, data FROM trellis_output WHERE id = $1 AND off >= $2 ORDER BY off', [id, from]);
    return r.rows.map((x) => ({ stream: x.stream === 1 ? 'STDERR' : 'STDOUT', offset: Number(x.off), data: x.data }));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.flusher.cancel();
    clearInterval(this.retainTimer);
    await this.flush().catch((err) => this.o.log.error({ err: (err as Error).message, lost: this.stateQ.size + this.outQ.length }, 'execution history not written at close'));
    await this.flusher.idle();
    if (this.dropped) this.o.log.error({ dropped: this.dropped }, 'execution output chunks were dropped while the database was away');
  }
}

export { OPEN as OPEN_STATUSES };
