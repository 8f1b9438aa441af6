/**
 * Executions across the hubs of a cluster (store kind "postgres"): the database row is the truth,
 * the cluster bus (hub/cluster/bus.ts) only says "look again".
 *
 * - **Creation**: every execution is inserted at once (one statement per request), its idempotency
 *   key under the table's UNIQUE index: a key that exists, on any hub, returns the earlier
 *   execution. An execution for an agent connected to this hub is owned by this hub
 *   (`owner_hub`); one for an agent connected elsewhere (or nowhere) has no owner yet, and
 *   `exec_dispatch {ids}` goes out on the bus.
 * - **Claiming**: the hub holding the agent claims with a conditional UPDATE (only while
 *   requested and with no live owner) and renders the action again from the stored parameters
 *   with the requester's view of the shared datastore: rendered secrets never travel on the bus
 *   or in the database. An agent that attaches to a hub makes it take over every unfinished
 *   execution of that agent (the agent left its former hub): requested ones are sent from here,
 *   sent ones wait here for their result (the agent's outbox delivers it). The former owner's
 *   later writes are refused (fencing, hub/executions/history-pg.ts) and it forgets them.
 *   A sweep (every `sweepMs`, and after the bus reconnects) claims what a missed message left
 *   waiting for an agent connected here, and ends in the database what waits longer than
 *   maxWait, or ran on a hub that is gone, with no agent to report it.
 * - **Following**: each owner batch write sends `exec_update {ids}`; a hub with a follower or
 *   a run's streaming answer for one of them re-reads the row and the new output chunks.
 * - **Cancel**: on the owner, as on one hub; elsewhere `exec_cancel {id}` to the owner, or, with
 *   no live owner, the row is ended in the database directly.
 *
 * Messages are hints: a receiver re-reads the row and acts on what the database says.
 */
import { TrellisError } from '../../common/errors.js';
import { FINAL_STATUSES, type ExecutionStatus } from '../../common/automation/types.js';
import type { Logger } from '../../common/log.js';
import type { ClusterBus } from '../cluster/bus.js';
import { parseRow, ROW_COLUMNS, OPEN_STATUSES, type ExecDb, type ExecRow, type PgHistory } from './history-pg.js';
import type { Meta } from './updates.js';
import type { ExecutionRecord, ExecutionUpdate, ListFilter } from './types.js';
import { AgentPresence } from '../cluster/presence.js';

export interface ClusterDeps {
  db: ExecDb;
  bus: ClusterBus;
  /** Ids of the hubs alive now (hubs registry, not stale), this one included. */
  liveHubs: () => Promise<string[]>;
  /** How often to claim missed work and end orphaned executions. @default 5000 */
  sweepMs?: number;
  /** Final executions this hub ran stay in its memory this long (then are read from the database). @default 60000 */
  keepFinalMs?: number;
}

/** What the executions index gives the cluster module. */
export interface ClusterHost {
  readonly log: Logger;
  readonly maxWaitMs: number;
  readonly graceMs: number;
  connectedAgents(): string[];
  isLocalAgent(agentId: string): boolean;
  has(id: string): boolean;
  /** Rows this hub now owns: requested ones wait for their agent here, sent ones for their result. */
  take(rows: ExecRow[]): Promise<void>;
  cancelLocal(id: string): Promise<void>;
  emit(u: ExecutionUpdate, meta: Meta): void;
  /** Drops final executions finished before `beforeMs` from memory. */
  evict(beforeMs: number): void;
}

export interface NewRow { rec: ExecutionRecord; dedupKey?: string; timeoutMs: number; kvCaller: { username: string; isAdmin: boolean }; local: boolean }

interface Interest { ver: number; out: number; refs: number; busy?: Promise<void>; again?: boolean }

const T_DISPATCH = 'exec_dispatch';
const T_UPDATE = 'exec_update';
const T_CANCEL = 'exec_cancel';
const IDS_PER_MESSAGE = 200;
const isFinal = (s: string) => FINAL_STATUSES.has(s as ExecutionStatus);

export class ClusterExecutions {
  private readonly interest = new Map<string, Interest>();
  private readonly unsubs: (() => void)[] = [];
  private sweepTimer?: NodeJS.Timeout;
  private sweeping?: Promise<void>;
  private closed = false;
  private history!: PgHistory;
  /** Which hub each agent is attached to. */
  readonly presence: AgentPresence;

  constructor(private readonly d: ClusterDeps, private readonly host: ClusterHost) {
    this.presence = new AgentPresence(d, host.log);
  }

  get hubId(): string { return this.d.bus.hubId; }

  async start(history: PgHistory): Promise<void> {
    this.history = history;
    await this.presence.start();
    const b = this.d.bus;
    this.unsubs.push(await b.subscribe(T_DISPATCH, (m) => this.onDispatch(m)));
    this.unsubs.push(await b.subscribe(T_UPDATE, (m) => { for (const id of ids(m)) this.refresh(id); }));
    this.unsubs.push(await b.subscribe(T_CANCEL, (m) => { for (const id of ids(m)) if (this.host.has(id)) void this.host.cancelLocal(id).catch(() => undefined); }));
    this.unsubs.push(b.onResync(() => { this.sweep(); for (const id of this.interest.keys()) this.refresh(id); }));
    this.sweepTimer = setInterval(() => this.sweep(), this.d.sweepMs ?? 5_000);
    this.sweepTimer.unref();
  }

  // ------------------------------------------------------------ creation

  /** Earlier executions holding these keys (any hub), by key. */
  async byKeys(keys: string[]): Promise<Map<string, ExecutionRecord>> {
    if (!keys.length) return new Map();
    const r = await this.d.db.query(`SELECT ${ROW_COLUMNS} FROM trellis_executions WHERE dedup_key = ANY($1::text[])`, [keys]);
    return new Map(r.rows.map((x) => { const row = parseRow(x); return [row.dedup_key!, row.record]; }));
  }

  /**
   * Inserts new executions in one statement; per row, the earlier execution when its key is
   * already taken (by any hub, also at the same instant: the UNIQUE index decides), else undefined.
   */
  async insert(rows: NewRow[]): Promise<(ExecutionRecord | undefined)[]> {
    const r = await this.d.db.query<{ id: string }>(
      `INSERT INTO trellis_executions (id, tenant, agent, action, status, rule, requested_ms, record, dedup_key, kv_caller, timeout_ms, owner_hub)
       SELECT u.id, u.tenant, u.agent, u.action, 'requested', u.rule, u.rq, u.rec::json, u.dk, u.kc::json, u.tmo, u.own
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::text[], $9::text[], $10::bigint[], $11::text[])
         AS u(id, tenant, agent, action, rule, rq, rec, dk, kc, tmo, own)
       ON CONFLICT (dedup_key) DO NOTHING
       RETURNING id`,
      [rows.map((x) => x.rec.id), rows.map((x) => x.rec.tenant), rows.map((x) => x.rec.agentId), rows.map((x) => x.rec.action), rows.map((x) => x.rec.rule),
        rows.map((x) => x.rec.requestedMs), rows.map((x) => JSON.stringify(x.rec)), rows.map((x) => x.dedupKey ?? null),
        rows.map((x) => JSON.stringify({ username: x.kvCaller.username, isAdmin: x.kvCaller.isAdmin })), rows.map((x) => x.timeoutMs || 0),
        rows.map((x) => (x.local ? this.hubId : null))],
    );
    const made = new Set(r.rows.map((x) => x.id));
    const lost = rows.filter((x) => !made.has(x.rec.id)).map((x) => x.dedupKey!);
    const earlier = lost.length ? await this.byKeys(lost) : new Map<string, ExecutionRecord>();
    return rows.map((x) => (made.has(x.rec.id) ? undefined : earlier.get(x.dedupKey!)));
  }

  /** Executions created here for agents this hub does not hold: followed here, offered to the hub that holds the agent. */
  async announce(recs: ExecutionRecord[]): Promise<void> {
    for (const r of recs) this.watchRemote(r.id, 1);
    for (let i = 0; i < recs.length; i += IDS_PER_MESSAGE) {
      const part = recs.slice(i, i + IDS_PER_MESSAGE);
      await this.d.bus.publish(T_DISPATCH, { ids: part.map((r) => r.id), agents: [...new Set(part.map((r) => r.agentId))] })
        .catch((err: Error) => this.host.log.warn({ err: err.message }, 'cannot announce executions on the cluster bus; the sweep of the hub holding the agent claims them'));
    }
  }

  private onDispatch(m: Record<string, unknown>): void {
    const agents = Array.isArray(m.agents) ? m.agents.filter((a): a is string => typeof a === 'string' && this.host.isLocalAgent(a)) : [];
    if (!agents.length) return;
    void this.claimWaiting(agents, ids(m)).catch((err: Error) => this.host.log.warn({ err: err.message }, 'claiming executions announced by another hub failed; the sweep retries'));
  }

  /** Claims requested executions of these agents (those ids only, when given) with no live owner. */
  private async claimWaiting(agents: string[], only?: string[]): Promise<void> {
    const live = await this.d.liveHubs();
    const r = await this.d.db.query(
      `UPDATE trellis_executions SET owner_hub = $1, version = version + 1, updated_at = now()
       WHERE agent = ANY($2::text[]) AND status = 'requested' AND (owner_hub IS NULL OR NOT (owner_hub = ANY($3::text[])))
         AND ($4::text[] IS NULL OR id = ANY($4::text[]))
       RETURNING ${ROW_COLUMNS}`, [this.hubId, agents, live, only?.length ? only : null]);
    if (r.rows.length) await this.take(r.rows.map(parseRow), 'claimed');
  }

  /** An agent attached here: this hub takes over its unfinished executions (it left its former hub). */
  async attach(agentId: string): Promise<void> {
    const r = await this.d.db.query(
      `UPDATE trellis_executions SET owner_hub = $1, version = version + 1, updated_at = now()
       WHERE agent = $2 AND status = ANY($3::text[]) AND owner_hub IS DISTINCT FROM $1
       RETURNING ${ROW_COLUMNS}`, [this.hubId, agentId, OPEN_STATUSES]);
    if (r.rows.length) await this.take(r.rows.map(parseRow), 'taken over');
  }

  private async take(rows: ExecRow[], how: string): Promise<void> {
    for (const r of rows) this.interest.delete(r.id);
    this.host.log.info({ executions: rows.length, ids: rows.slice(0, 20).map((r) => r.id), from: [...new Set(rows.map((r) => r.owner_hub ?? 'none'))].slice(0, 5) }, `executions ${how} from the cluster`);
    await this.host.take(rows);
    this.notify(rows.map((r) => r.id));
  }

  /** Tells the other hubs these executions changed (after a batch write). */
  notify(list: string[]): void {
    if (this.closed || !list.length) return;
    for (let i = 0; i < list.length; i += IDS_PER_MESSAGE) {
      void this.d.bus.publish(T_UPDATE, { ids: list.slice(i, i + IDS_PER_MESSAGE) }).catch(() => undefined);
    }
  }

  // ------------------------------------------------------------ reading

  async row(id: string): Promise<ExecRow | undefined> {
    const r = await this.d.db.query(`SELECT ${ROW_COLUMNS} FROM trellis_executions WHERE id = $1`, [id]);
    return r.rows[0] ? parseRow(r.rows[0]) : undefined;
  }

  /** Newest first, from the database (what every hub wrote). */
  async list(tenant: string | '*', f: ListFilter, limit: number): Promise<ExecutionRecord[]> {
    const r = await this.d.db.query(
      `SELECT record::text AS record FROM trellis_executions
       WHERE ($1::text IS NULL OR tenant = $1) AND ($2::text IS NULL OR action = $2) AND ($3::text IS NULL OR agent = $3)
         AND ($4::text IS NULL OR status = $4) AND ($5::text IS NULL OR rule = $5) AND ($6::bigint IS NULL OR requested_ms >= $6)
         AND ($7::text IS NULL OR id < $7)
       ORDER BY id DESC LIMIT $8`,
      [tenant === '*' ? null : tenant, f.action || null, f.agentId || null, f.status || null, f.rule || null, f.sinceMs || null, f.beforeId || null, limit]);
    return r.rows.map((x) => JSON.parse(String(x.record)) as ExecutionRecord);
  }

  /** How many executions pass `f` (status and limit aside), by status, counted in the table. */
  async countByStatus(tenant: string | '*', f: ListFilter): Promise<Map<string, number>> {
    const r = await this.d.db.query(
      `SELECT status, count(*)::bigint AS n FROM trellis_executions
       WHERE ($1::text IS NULL OR tenant = $1) AND ($2::text IS NULL OR action = $2) AND ($3::text IS NULL OR agent = $3)
         AND ($4::text IS NULL OR rule = $4) AND ($5::bigint IS NULL OR requested_ms >= $5) AND ($6::text IS NULL OR id < $6)
       GROUP BY status`,
      [tenant === '*' ? null : tenant, f.action || null, f.agentId || null, f.rule || null, f.sinceMs || null, f.beforeId || null]);
    return new Map(r.rows.map((x) => [String(x.status), Number(x.n)]));
  }

  /** Follows an execution another hub owns: its updates are emitted here as they are written. Returns the release function. */
  watchRemote(id: string, refs = 1): () => void {
    const i = this.interest.get(id) ?? { ver: 0, out: 0, refs: 0 };
    i.refs += refs;
    this.interest.set(id, i);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const cur = this.interest.get(id);
      if (cur && --cur.refs <= 0) this.interest.delete(id);
    };
  }

  /** Re-reads one followed execution: the state if it changed, the output chunks not yet emitted. */
  private refresh(id: string): void {
    const i = this.interest.get(id);
    if (!i || this.closed) return;
    if (i.busy) { i.again = true; return; }
    i.busy = (async () => {
      do {
        i.again = false;
        const row = await this.row(id);
        if (!row) return;
        const chunks = await this.history.readOutputFrom(id, i.out);
        for (const c of chunks) {
          if (c.offset < i.out) continue;
          this.host.emit({ kind: 'output', tenant: row.record.tenant, executionId: id, agentId: row.record.agentId, stream: c.stream, data: c.data, offset: c.offset }, { offset: c.offset });
          i.out = c.offset + c.data.length;
        }
        const ver = Number(row.version);
        if (ver > i.ver) {
          i.ver = ver;
          this.host.emit({ kind: 'state', record: row.record }, { ver });
        }
        if (isFinal(row.record.status)) { this.interest.delete(id); return; }
      } while (i.again && !this.closed);
    })().catch((err: Error) => this.host.log.warn({ executionId: id, err: err.message }, 'reading an execution another hub runs failed')).finally(() => { i.busy = undefined; });
  }

  // ------------------------------------------------------------ cancel and the sweep

  /** Cancels an execution this hub does not hold. */
  async cancel(row: ExecRow): Promise<ExecutionRecord> {
    const id = row.id;
    const live = await this.d.liveHubs();
    const ownerLive = !!row.owner_hub && live.includes(row.owner_hub);
    if (!ownerLive) {
      const ended = await this.endInDb(`id = $1 AND status = ANY($2::text[]) AND (owner_hub IS NULL OR NOT (owner_hub = ANY($3::text[])))`, [id, OPEN_STATUSES, live],
        (rec) => rec.status === 'requested'
          ? { status: 'canceled', error: 'canceled before it was sent to the agent' }
          : { status: 'canceled', error: `the hub that sent it (${row.owner_hub}) is gone and agent ${rec.agentId} is not connected: the cancel could not reach it and the process may still run there` });
      if (ended.length) return ended[0]!;
    }
    await this.d.bus.publish(T_CANCEL, { ids: [id] });
    // The owner cancels and writes it (within abandonGrace when the agent does not confirm): wait a little for it.
    const until = Date.now() + 3_000;
    for (;;) {
      const now = await this.row(id);
      if (!now || isFinal(now.record.status) || Date.now() >= until) return (now ?? row).record;
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Ends open rows in the database (no live hub owns them); returns the new records. */
  private async endInDb(where: string, params: unknown[], patch: (rec: ExecutionRecord) => { status: ExecutionStatus; error: string }): Promise<ExecutionRecord[]> {
    const out = await this.d.db.transaction(async (c) => {
      const r = await c.query(`SELECT ${ROW_COLUMNS} FROM trellis_executions WHERE ${where} FOR UPDATE SKIP LOCKED`, params);
      const recs = r.rows.map(parseRow).map((row) => {
        const p = patch(row.record);
        return { ...row.record, status: p.status, error: p.error.slice(0, 4096), exitCode: -1, finishedMs: Date.now() };
      });
      if (recs.length) {
        await c.query(
          `UPDATE trellis_executions x SET status = u.status, record = u.rec::json, version = x.version + 1, updated_at = now()
           FROM unnest($1::text[], $2::text[], $3::text[]) AS u(id, status, rec) WHERE x.id = u.id`,
          [recs.map((r) => r.id), recs.map((r) => r.status), recs.map((r) => JSON.stringify(r))]);
      }
      return recs;
    });
    if (out.length) this.notify(out.map((r) => r.id));
    return out;
  }

  /** Claims what waits for agents connected here; ends what nobody can send or report any more. */
  sweep(): void {
    if (this.closed || this.sweeping) return;
    this.sweeping = (async () => {
      await this.presence.refreshLive();
      const agents = this.host.connectedAgents();
      if (agents.length) await this.claimWaiting(agents);
      const live = await this.d.liveHubs();
      const now = Date.now();
      await this.endInDb(`status = 'requested' AND requested_ms < $1 AND (owner_hub IS NULL OR NOT (owner_hub = ANY($2::text[])))`, [now - this.host.maxWaitMs, live],
        (rec) => ({ status: 'error', error: `agent ${rec.agentId} did not connect to any hub within ${Math.round(this.host.maxWaitMs / 1000)}s; the execution was not sent (TRELLIS_E_AGENT_OFFLINE)` }));
      await this.endInDb(`status IN ('scheduled', 'running') AND NOT (owner_hub = ANY($1::text[])) AND requested_ms + timeout_ms + $2 < $3`, [live, this.host.graceMs, now],
        (rec) => ({ status: 'abandoned', error: `the hub that sent it is gone and agent ${rec.agentId} reported its result to no hub in time` }));
      this.host.evict(now - (this.d.keepFinalMs ?? 60_000));
    })().catch((err: Error) => this.host.log.warn({ err: err.message }, 'cluster execution sweep failed; it runs again')).finally(() => { this.sweeping = undefined; });
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.sweepTimer);
    for (const u of this.unsubs.splice(0)) u();
    await this.sweeping;
    await this.presence.close();
  }
}

function ids(m: Record<string, unknown>): string[] {
  return Array.isArray(m.ids) ? m.ids.filter((x): x is string => typeof x === 'string' && x.length > 0 && x.length <= 64).slice(0, IDS_PER_MESSAGE) : [];
}

export function notFound(id: string): TrellisError {
  return new TrellisError('TRELLIS_E_NOT_FOUND', `no execution ${String(id).slice(0, 64)}: see \`trellis executions list\``);
}

