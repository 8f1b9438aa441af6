/**
 * Executions: every action run on an agent, with a lifecycle and an append-only history.
 *
 * Lifecycle: requested → scheduled (sent down the agent's stream) → running (ActionStarted, or
 * the first output) → succeeded | failed | timeout | canceled | error, as the agent reports.
 * The hub decides only these:
 * - `requested` waits, in a FIFO queue per agent, for the agent to be connected and below its
 *   concurrency limit (`perAgentConcurrency`); after `maxWaitMs` it ends with status `error`
 *   ("agent offline" or "busy"). A cancel ends it at once (`canceled`).
 * - `scheduled`/`running` with no result within the action's timeout + `abandonGraceMs`:
 *   `abandoned`. An agent that disconnects with executions in flight has `reconnectGraceMs` to
 *   come back (then the timeout rule applies again); if it does not, they are `abandoned`.
 *   `abandoned` is the hub's verdict, not the agent's: a result the agent reports later (its
 *   outbox delivers after a reconnect) still replaces it, and history records both.
 * - A hub restart: `requested` executions were never sent (a request goes out only once its
 *   `scheduled` line is on disk). Those whose action and parameters reference no datastore value
 *   and hold no redacted secret are rendered again and wait for their agent; the others end in
 *   `error` (their rendered secrets lived in memory only). `scheduled`/`running` ones wait
 *   `reconnectGraceMs` for their agent as above, then their timeout (kept in history) applies again.
 * - Dispatch failures (sealing, agent refused) are `error`.
 *
 * Every state change is one history line (hub/executions/history.ts) and one update to
 * subscribers; output chunks are kept up to `maxOutputBytes` per execution. Secret values are
 * sealed per agent and execution and never stored, logged or put in history.
 *
 * With several hubs on one PostgreSQL (`deps.cluster`), history is the shared table
 * (history-pg.ts), this hub holds in memory only the executions it owns (and its finished ones
 * for a minute), and reads, cancels and follows others' from the database; creation, claiming
 * and take-over across hubs are in cluster.ts (the section "several hubs" below is its glue).
 */
import { monotonicUlidFactory } from '../../common/ids.js';
import { RESULT_OUTPUT_MAX_CHUNKS } from '../../common/features.js';
import { TrellisError } from '../../common/errors.js';
import { FINAL_STATUSES, type EdgeExecutionPayload, type ExecutionStatus } from '../../common/automation/types.js';
import { actionRefs, renderAction, type RenderedAction } from '../../common/rules/render.js';
import type { AgentRegistry, AgentLink } from '../agents/index.js';
import type { KvStore } from '../kv/index.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';
import { History, historyCapacity } from './history.js';
import { PgHistory, type HistoryBackend, type ExecRow } from './history-pg.js';
import { ClusterExecutions, notFound, type ClusterDeps, type ClusterHost } from './cluster.js';
import { Updates } from './updates.js';
import { FinishedStore } from './finished.js';
import { edgeRecord, type SentEdgeRule } from './edge.js';
import {
  prepareAction, prepareCommand, actionRequest, storedParameters, commandParameters, checkCommand,
  commandFromParameters, checkAgents, checkParameters, COMMAND_ACTION, REDACTED,
} from './prepare.js';
import { compileOptions, type CompiledOptions } from './types.js';
import type { ExecutionRecord, ExecutionUpdate, ExecuteRequest, CommandRequest, ListFilter, ActionCatalog, ExecutionsOptions, KvRequester } from './types.js';

export type { ExecutionRecord, ExecutionUpdate, ExecuteRequest, CommandRequest, ListFilter, ActionCatalog, ExecutionsOptions, KvRequester } from './types.js';
export { COMMAND_ACTION } from './prepare.js';

const AGENT_STATUSES = new Set<string>(['succeeded', 'failed', 'timeout', 'canceled', 'error']);
const ERROR_MAX = 4096;
/** Executions retention dropped that are forgotten per turn of the event loop. */
const FORGET_SLICE = 1000;
export const DEFAULT_LIST_LIMIT = 50;
export const MAX_LIST_LIMIT = 1000;

const isFinal = (s: ExecutionStatus) => FINAL_STATUSES.has(s);

interface Entry {
  rec: ExecutionRecord;
  /** Bumped on every state change: followers skip what they already replayed. */
  ver: number;
  dedupKey?: string;
  /** Output bytes kept in history. */
  stored: number;
  live?: Live;
}

/** What a non-final execution holds in memory. */
interface Live {
  /** The rendered action (secrets in clear), until it is sent. */
  rendered?: RenderedAction;
  timeoutMs: number;
  /** maxWait while requested; timeout + grace once sent. */
  timer?: NodeJS.Timeout;
  /** Running while its agent is disconnected. */
  graceTimer?: NodeJS.Timeout;
  /** Holds one of its agent's concurrency slots. */
  slot: boolean;
  /** When it was asked for (a rule's: when the hub received the event), until it is first sent (metrics). */
  askedMs?: number;
}

/** What the index is built from (the composition root, hub/hub.ts). */
export interface ExecutionsDeps {
  agents: AgentRegistry;
  kv: KvStore;
  catalog?: ActionCatalog;
  /** Several hubs on one PostgreSQL: history in the database, dispatch across hubs (hub/executions/cluster.ts). */
  cluster?: ClusterDeps;
}

interface CreateOptions {
  tenant: string; action: string; agentIds: string[]; keys: (string | undefined)[]; parameters: Record<string, unknown>;
  requestedBy: string; rule: string; triggerEventId: string; rendered: RenderedAction; timeoutMs: number; triggeredAtMs?: number;
  kvCaller: KvRequester;
}

/** Per agent: ids holding a slot, and ids waiting (FIFO). */
interface AgentSlots { active: Set<string>; waiting: string[] }

export class Executions {
  private readonly newId = monotonicUlidFactory();
  /** Executions in flight (and an abandoned one a late report revived): finished ones are in `finished`. */
  private readonly entries = new Map<string, Entry>();
  /** Dedup keys of the executions in `entries` (`finished` indexes its own). */
  private readonly dedup = new Map<string, string>();
  /** Finished executions, outside the JavaScript heap (hub/executions/finished.ts). */
  private readonly finished = new FinishedStore();
  /** Ids retention dropped, still to forget (`forget`), and the turn that forgets the next slice. */
  private forgetting: string[][] = [];
  private forgetTimer?: NodeJS.Immediate;
  private readonly slots = new Map<string, AgentSlots>();
  private readonly pumping = new Set<string>();
  private closed = false;
  private history!: HistoryBackend;
  /** Several hubs on one PostgreSQL (hub/executions/cluster.ts); undefined with one hub. */
  private cluster?: ClusterExecutions;
  /** Agents attached here whose unfinished executions are being taken over from other hubs. */
  private readonly attaching = new Map<string, Promise<void>>();
  private readonly updates: Updates;
  private readonly o: CompiledOptions;
  private readonly edgeRefused = new Map<string, { total: number; sinceLog: number; lastLogMs: number }>();

  private constructor(private readonly deps: ExecutionsDeps, opts: ExecutionsOptions) {
    this.o = compileOptions(opts);
    this.updates = new Updates(this.o.log);
  }

  /** Opens the history (rebuilding the index of recent executions) and resumes what was in flight. */
  static async open(deps: ExecutionsDeps, opts: ExecutionsOptions): Promise<Executions> {
    const x = new Executions(deps, opts);
    if (deps.cluster) return x.openCluster(deps.cluster);
    const { history, records } = await History.open({
      dir: x.o.dir, log: x.o.log, maxSegmentBytes: x.o.maxSegmentBytes, maxAgeMs: x.o.maxAgeMs, maxCount: x.o.maxCount,
      flushIntervalMs: x.o.flushIntervalMs, onDrop: (ids) => x.forget(ids),
    });
    x.history = history;
    x.finished.reserve(Math.max(records.size, historyCapacity(x.o.maxCount))); // never grown by doubling on the request path (historyCapacity says why)
    for (const { rec, dedupKey, line } of records.values()) {
      const e: Entry = { rec, ver: 1, dedupKey, stored: Math.min(rec.outputBytes, x.o.maxOutputBytes) };
      if (isFinal(rec.status)) x.finished.put(e, line);
      else x.hold(e);
    }
    for (const r of records.values()) {
      const e = x.entries.get(r.rec.id);
      if (e) x.resume(e, r.timeoutMs ?? 0);
    }
    return x;
  }

  /** After a restart: what was waiting failed; what was in flight waits for its agent again. */
  private resume(e: Entry, timeoutMs: number): void {
    const s = e.rec.status;
    if (s === 'requested') {
      const rendered = this.renderAgain(e.rec);
      if (!rendered) { this.finish(e, { status: 'error', error: 'the hub restarted before it was sent to the agent; run it again' }); return; }
      e.live = { rendered, timeoutMs: rendered.timeoutMs || timeoutMs, slot: false };
      e.live.timer = this.timer(e.rec.requestedMs + this.o.maxWaitMs - Date.now(), () => this.expireWait(e));
      this.agentSlots(e.rec.agentId).waiting.push(e.rec.id);
      this.o.log.info({ executionId: e.rec.id, agentId: e.rec.agentId, action: e.rec.action }, 'execution waiting again after a hub restart (it had not been sent)');
    } else if (s === 'scheduled' || s === 'running') {
      e.live = { timeoutMs, slot: true };
      this.agentSlots(e.rec.agentId).active.add(e.rec.id);
      if (timeoutMs > 0) this.armTimeout(e, Math.max(0, (e.rec.startedMs || e.rec.requestedMs) + timeoutMs + this.o.abandonGraceMs - Date.now()));
      e.live.graceTimer = this.timer(this.o.reconnectGraceMs, () => this.finish(e, {
        status: 'abandoned', error: `the hub restarted while it ran and agent ${e.rec.agentId} reported no result within ${Math.round(this.o.reconnectGraceMs / 1000)}s`,
      }));
    }
  }

  /**
   * A pack action that was never sent, rendered again from history after a restart: only when
   * nothing needs the requester's view of the datastore (no kv/secret reference, no redacted
   * literal secret), so rendering it again yields what was requested. Undefined otherwise.
   */
  private renderAgain(rec: ExecutionRecord): RenderedAction | undefined {
    if (rec.edge || rec.action === COMMAND_ACTION) return undefined;
    const action = this.deps.catalog?.action(rec.tenant, rec.action);
    if (!action || JSON.stringify(rec.parameters).includes(JSON.stringify(REDACTED))) return undefined;
    try {
      if (actionRefs(action, rec.parameters).length > 0) return undefined;
      const rendered = renderAction(action, rec.parameters, { resolve: () => undefined });
      return rendered.secretValues.length === 0 ? rendered : undefined;
    } catch {
      return undefined;
    }
  }

  /**
   * Forgets executions retention dropped from the history. A segment holds a tenth of
   * `retention.maxCount` executions (10,000 by default), dropped at once: they are forgotten
   * FORGET_SLICE per turn of the event loop (~1 ms each), not all in one turn that held every
   * request arriving meanwhile (~11 ms measured at 10,000).
   */
  private forget(ids: string[]): void {
    if (this.closed) return; // a closing hub: those executions are gone from the files already
    for (let i = 0; i < ids.length; i += FORGET_SLICE) this.forgetting.push(ids.slice(i, i + FORGET_SLICE));
    if (this.forgetting.length === 0 || this.forgetTimer) return;
    const next = () => {
      this.forgetTimer = undefined;
      for (const id of this.forgetting.shift() ?? []) {
        const e = this.entries.get(id);
        if (!e) { this.finished.delete(id); continue; }
        if (e.live) continue; // in flight: its next line lands in a newer segment
        this.unhold(e);
      }
      if (this.forgetting.length > 0) this.forgetTimer = setImmediate(next);
    };
    this.forgetTimer = setImmediate(next);
  }

  /** An execution in flight: in `entries`, its dedup key in `dedup`. */
  private hold(e: Entry): void {
    this.entries.set(e.rec.id, e);
    if (e.dedupKey) this.dedup.set(e.dedupKey, e.rec.id);
  }

  /** Takes `e` out of `entries` and `dedup` (the key stays if a newer execution holds it). */
  private unhold(e: Entry): void {
    const id = e.rec.id;
    this.entries.delete(id);
    if (e.dedupKey && this.dedup.get(e.dedupKey) === id) this.dedup.delete(e.dedupKey);
  }

  /** An execution held here: from `entries`, or read anew from `finished` (a copy: changing it changes nothing). */
  private entry(id: string): Entry | undefined {
    return this.entries.get(id) ?? this.finished.get(id);
  }

  private holds(id: string): boolean {
    return this.entries.has(id) || this.finished.has(id);
  }

  /** The execution a dedup key leads to. */
  private byKey(key: string): Entry | undefined {
    const id = this.dedup.get(key);
    return (id === undefined ? undefined : this.entries.get(id)) ?? this.finished.byKey(key);
  }

  /** A finished execution leaves `entries` (and the heap) for `finished`; nothing for one in flight. */
  private settle(e: Entry): void {
    const id = e.rec.id;
    if (e.live || !isFinal(e.rec.status) || this.entries.get(id) !== e) return;
    this.unhold(e);
    this.finished.put(e, this.history.queuedLine?.(e.rec)); // the line the history writes, built once
  }

  private timer(ms: number, fn: () => void): NodeJS.Timeout {
    const t = setTimeout(fn, Math.min(Math.max(ms, 0), 2 ** 31 - 1));
    t.unref();
    return t;
  }

  private agentSlots(agentId: string): AgentSlots {
    let s = this.slots.get(agentId);
    if (!s) this.slots.set(agentId, (s = { active: new Set(), waiting: [] }));
    return s;
  }

  // ------------------------------------------------------------ requests

  /** One execution per agent (or the earlier one with the same dedup key). */
  async request(req: ExecuteRequest): Promise<ExecutionRecord[]> {
    this.checkOpen();
    const agentIds = checkAgents(req.agentIds);
    checkParameters(req.parameters);
    const keys = agentIds.map((a) => req.dedupKey?.(a));
    const known = () => keys.map((k) => (k ? this.byKey(k) : undefined));
    if (known().every((e) => e)) return known().map((e) => ({ ...e!.rec }));
    if (this.cluster && keys.every((k) => k)) { // a key another hub (or this one, earlier) already holds
      const earlier = await this.cluster.byKeys(keys as string[]);
      if (keys.every((k) => earlier.has(k!))) return keys.map((k) => ({ ...(this.entry(earlier.get(k!)!.id)?.rec ?? earlier.get(k!)!) }));
    }
    this.o.admit({ requestedBy: req.requestedBy, rule: req.rule });
    const caller = req.kvCaller ?? { username: req.requestedBy, isAdmin: false };
    const rendered = await prepareAction(this.deps.kv, { tenant: req.tenant, caller, action: req.action, parameters: req.parameters });
    this.checkOpen();
    const parameters = storedParameters(req.action, req.parameters);
    return this.create({
      tenant: req.tenant, action: req.action.ref, agentIds, keys, parameters, requestedBy: req.requestedBy, rule: req.rule ?? '',
      triggerEventId: req.triggerEventId ?? '', rendered, timeoutMs: rendered.timeoutMs || req.action.timeoutMs, triggeredAtMs: req.triggeredAtMs, kvCaller: caller,
    });
  }

  /** An ad-hoc command (`trellis run -- CMD`): executions of the built-in action core.command. */
  async runCommand(req: CommandRequest): Promise<ExecutionRecord[]> {
    this.checkOpen();
    const agentIds = checkAgents(req.agentIds);
    checkCommand(req);
    this.o.admit({ requestedBy: req.requestedBy });
    const caller = req.kvCaller ?? { username: req.requestedBy, isAdmin: false };
    const rendered = await prepareCommand(this.deps.kv, { tenant: req.tenant, caller, argv: req.argv, env: req.env, cwd: req.cwd, timeoutMs: req.timeoutMs });
    this.checkOpen();
    return this.create({
      tenant: req.tenant, action: COMMAND_ACTION, agentIds, keys: [], parameters: commandParameters(req), requestedBy: req.requestedBy, rule: '',
      triggerEventId: '', rendered, timeoutMs: req.timeoutMs, kvCaller: caller,
    });
  }

  private create(o: CreateOptions): ExecutionRecord[] | Promise<ExecutionRecord[]> {
    if (this.cluster) return this.createClustered(o, this.cluster);
    const out: Entry[] = [];
    o.agentIds.forEach((agentId, i) => {
      const key = o.keys[i];
      const earlier = key ? this.byKey(key) : undefined;
      if (earlier) { out.push(earlier); return; }
      const now = Date.now();
      const rec: ExecutionRecord = {
        id: this.newId(now).toLowerCase(), tenant: o.tenant, action: o.action, agentId, status: 'requested', exitCode: 0, error: '',
        requestedBy: o.requestedBy, rule: o.rule, triggerEventId: o.triggerEventId, parameters: o.parameters,
        requestedMs: now, startedMs: 0, finishedMs: 0, edge: false, outputBytes: 0, outputTruncated: false,
      };
      const e: Entry = { rec, ver: 0, dedupKey: key, stored: 0, live: { rendered: o.rendered, timeoutMs: o.timeoutMs, slot: false, askedMs: o.triggeredAtMs ?? now } };
      this.hold(e);
      this.o.log.info({ executionId: rec.id, agentId, action: rec.action, requestedBy: rec.requestedBy, rule: rec.rule || undefined }, 'execution requested');
      this.changed(e);
      e.live!.timer = this.timer(this.o.maxWaitMs, () => this.expireWait(e));
      this.agentSlots(agentId).waiting.push(rec.id);
      out.push(e);
    });
    for (const agentId of new Set(o.agentIds)) this.pump(agentId);
    return out.map((e) => ({ ...e.rec }));
  }

  private expireWait(e: Entry): void {
    if (e.rec.status !== 'requested') return;
    const online = !!this.deps.agents.link(e.rec.agentId);
    const waited = `${Math.round(this.o.maxWaitMs / 1000)}s`;
    this.finish(e, {
      status: 'error',
      error: online
        ? `agent ${e.rec.agentId} stayed at its concurrency limit (${this.o.perAgentConcurrency}) for ${waited}; the execution was not sent (TRELLIS_E_AGENT_BUSY)`
        : `agent ${e.rec.agentId} did not connect within ${waited}; the execution was not sent (TRELLIS_E_AGENT_OFFLINE)`,
    });
  }

  /** Sends waiting executions of an agent while it is connected and has free slots. */
  private pump(agentId: string): void {
    if (this.closed || this.pumping.has(agentId)) return; // a finish inside dispatch: the loop below goes on
    const s = this.slots.get(agentId);
    if (!s) return;
    this.pumping.add(agentId);
    try {
      let link = this.deps.agents.link(agentId);
      while (link && s.active.size < this.o.perAgentConcurrency && s.waiting.length > 0) {
        const e = this.entries.get(s.waiting.shift()!);
        if (!e || e.rec.status !== 'requested' || !e.live?.rendered) continue;
        if (!this.dispatch(e, link)) { s.waiting.unshift(e.rec.id); link = undefined; }
      }
    } finally {
      this.pumping.delete(agentId);
    }
    if (s.active.size === 0 && s.waiting.length === 0) this.slots.delete(agentId);
  }

  /**
   * Seals one execution, records it `scheduled` and sends it once that line (and the
   * `requested` line with its idempotency key) is on disk: after a hub crash, history then knows
   * every execution an agent may have received, and an event sent again cannot run its action
   * twice. `requested` after a restart means never sent. False when the link is already closed
   * (it stays requested).
   */
  private dispatch(e: Entry, link: AgentLink): boolean {
    const live = e.live!;
    if (link !== this.deps.agents.link(e.rec.agentId)) return false;
    let msg: T.ActionRequest;
    try {
      msg = actionRequest({ executionId: e.rec.id, action: e.rec.action, agentId: e.rec.agentId, certPem: link.certPem, rendered: live.rendered! });
    } catch (err) {
      this.finish(e, { status: 'error', error: `cannot seal the secrets of this execution for agent ${e.rec.agentId}: ${(err as Error).message}` });
      return true;
    }
    live.slot = true;
    this.agentSlots(e.rec.agentId).active.add(e.rec.id);
    this.armTimeout(e, live.timeoutMs + this.o.abandonGraceMs);
    this.set(e, { status: 'scheduled' });
    const at = performance.now();
    void this.requestsDurable().then(() => this.send(e, link, msg, performance.now() - at));
    return true;
  }

  /**
   * The request goes out (its `scheduled` line is on disk, `syncWaitMs` after it was scheduled);
   * a link closed meanwhile puts it back in the queue.
   */
  private send(e: Entry, link: AgentLink, msg: T.ActionRequest, syncWaitMs: number): void {
    const live = e.live;
    if (this.closed || !live || e.rec.status !== 'scheduled' || !live.rendered) return; // canceled or ended meanwhile
    if (link.send({ action: msg })) { // the secrets leave memory with the request
      live.rendered = undefined;
      if (live.askedMs) { this.o.onDispatch({ rule: !!e.rec.rule, sinceMs: live.askedMs, syncWaitMs }); live.askedMs = undefined; }
      return;
    }
    // Never sent: waiting again, first in line for the agent's next connection.
    clearTimeout(live.timer);
    clearTimeout(live.graceTimer);
    live.graceTimer = undefined;
    live.slot = false;
    const s = this.agentSlots(e.rec.agentId);
    s.active.delete(e.rec.id);
    s.waiting.unshift(e.rec.id);
    this.set(e, { status: 'requested' });
    live.timer = this.timer(this.o.maxWaitMs - (Date.now() - e.rec.requestedMs), () => this.expireWait(e));
    this.pump(e.rec.agentId);
  }

  /**
   * Resolves (never rejects) once every history line queued so far is on disk. A failing disk is
   * logged by the history, which keeps the lines and retries; callers go on rather than stall.
   */
  durable(): Promise<void> {
    if (this.attaching.size) return Promise.all(this.attaching.values()).then(() => this.history.flush()).catch(() => undefined);
    return this.history.flush().catch(() => undefined);
  }

  /**
   * Resolves (never rejects) once every state line queued so far is on disk: what a request must
   * have on disk before it goes out, and before the event that caused it is acknowledged (its
   * `requested`/`scheduled` lines with the idempotency key). Output lines are not waited for
   * (they follow within `flushIntervalMs`): one fdatasync per write instead of two.
   */
  requestsDurable(): Promise<void> {
    if (this.attaching.size) return Promise.all(this.attaching.values()).then(() => this.history.flushStates()).catch(() => undefined);
    return this.history.flushStates().catch(() => undefined);
  }

  /**
   * Resolves (never rejects) once every history line queued so far is on disk, riding on the
   * next write rather than forcing one (within `flushIntervalMs`): for acknowledgements no
   * latency depends on (action results). A failing disk keeps it waiting for the retry.
   */
  written(): Promise<void> {
    return this.history.written();
  }

  /** An execution in flight with no result by then is abandoned. */
  private armTimeout(e: Entry, ms: number): void {
    const live = e.live!;
    clearTimeout(live.timer);
    live.timer = this.timer(ms, () => this.finish(e, {
      status: 'abandoned', error: `agent ${e.rec.agentId} reported no result within the timeout (${live.timeoutMs} ms) and a grace of ${Math.round(this.o.abandonGraceMs / 1000)}s`,
    }));
  }

  // ------------------------------------------------------------ state changes

  private set(e: Entry, patch: Partial<ExecutionRecord>): void {
    Object.assign(e.rec, patch);
    this.changed(e);
  }

  private changed(e: Entry): void {
    e.ver++;
    this.history.appendState(e.rec, { dedupKey: e.dedupKey, timeoutMs: e.live?.timeoutMs });
    if (this.updates.listened) this.updates.emit({ kind: 'state', record: { ...e.rec } }, { ver: e.ver });
  }

  private finish(e: Entry, r: { status: ExecutionStatus; exitCode?: number; error?: string; startedMs?: number; finishedMs?: number }): void {
    const prev = e.rec.status;
    if (isFinal(prev) && prev !== 'abandoned') return;
    const live = e.live;
    if (live) {
      clearTimeout(live.timer);
      clearTimeout(live.graceTimer);
      live.rendered = undefined;
      const s = this.slots.get(e.rec.agentId);
      if (s) {
        s.active.delete(e.rec.id);
        if (prev === 'requested') s.waiting = s.waiting.filter((id) => id !== e.rec.id);
      }
      e.live = undefined;
    }
    const now = Date.now();
    this.set(e, {
      status: r.status, exitCode: r.exitCode ?? (r.status === 'succeeded' ? 0 : -1), error: (r.error ?? '').slice(0, ERROR_MAX),
      startedMs: r.startedMs || e.rec.startedMs, finishedMs: r.finishedMs || now,
    });
    const durationMs = e.rec.startedMs ? e.rec.finishedMs - e.rec.startedMs : 0;
    this.o.log.info({ executionId: e.rec.id, agentId: e.rec.agentId, action: e.rec.action, status: r.status, exitCode: e.rec.exitCode, durationMs, late: prev === 'abandoned' || undefined }, 'execution finished');
    if (live?.slot || prev === 'requested') this.pump(e.rec.agentId);
    this.settle(e);
  }

  // ------------------------------------------------------------ agent channel hooks

  /**
   * An execution the agent may speak for: its own, sent to it, not finished (or abandoned by the
   * hub: then it comes back from `finished` into `entries`, and the caller settles it again).
   */
  private mine(agentId: string, executionId: string): Entry | undefined {
    let e = this.entries.get(executionId);
    if (!e && typeof executionId === 'string' && this.finished.abandonedOf(executionId, agentId)) {
      e = this.finished.get(executionId)!;
      this.finished.delete(executionId);
      this.hold(e);
    }
    if (!e || e.rec.agentId !== agentId || e.rec.edge) return undefined;
    const s = e.rec.status;
    return s === 'scheduled' || s === 'running' || s === 'abandoned' ? e : undefined;
  }

  onStarted(agentId: string, m: T.ActionStarted__Output): void {
    if (this.closed) return;
    const e = this.mine(agentId, m.executionId);
    if (!e && this.deferred(agentId, () => this.onStarted(agentId, m))) return;
    if (!e) return;
    if (e.rec.status === 'scheduled') this.set(e, { status: 'running', startedMs: Number(m.startedMs) || Date.now() });
    this.settle(e);
  }

  onOutput(agentId: string, m: T.ActionOutput__Output): void {
    if (this.closed) return;
    const e = this.mine(agentId, m.executionId);
    if (!e && this.deferred(agentId, () => this.onOutput(agentId, m))) return;
    if (!e) return;
    if (e.rec.status === 'scheduled') this.set(e, { status: 'running', startedMs: Date.now() });
    this.output(e, agentId, m);
    this.settle(e);
  }

  private output(e: Entry, agentId: string, m: T.ActionOutput__Output): void {
    const data = Buffer.from(m.data);
    const stream = m.stream === 'STDERR' ? 'STDERR' : 'STDOUT';
    const offset = e.rec.outputBytes;
    e.rec.outputBytes += data.length;
    const room = this.o.maxOutputBytes - e.stored;
    if (room > 0) {
      const part = data.length <= room ? data : data.subarray(0, room);
      this.history.appendOutput(e.rec.id, stream, offset, part);
      e.stored += part.length;
    }
    if (data.length > room) e.rec.outputTruncated = true;
    if (this.updates.listened) this.updates.emit({ kind: 'output', tenant: e.rec.tenant, executionId: e.rec.id, agentId, stream, data, offset }, { offset });
  }

  onResult(agentId: string, m: Omit<T.ActionResult__Output, 'output'> & { output?: T.ActionOutput__Output[] }): void {
    if (this.closed) return;
    const e = this.mine(agentId, m.executionId);
    if (!e && this.deferred(agentId, () => this.onResult(agentId, m))) return;
    if (!e) return;
    // Output the agent sent along with the result (hub feature "result_output"): taken first, in
    // order, as if it had come on its own (followers see `running`, then the output; the two
    // state lines share one history write, the later wins).
    if (m.output?.length) {
      if (e.rec.status === 'scheduled') this.set(e, { status: 'running', startedMs: Number(m.startedMs) || Date.now() });
      // Bounded: chunks past RESULT_OUTPUT_MAX_CHUNKS (never sent by a Trellis agent) are dropped, the output marked truncated.
      const n = Math.min(m.output.length, RESULT_OUTPUT_MAX_CHUNKS);
      for (let i = 0; i < n; i++) this.output(e, agentId, m.output[i]!);
      if (m.output.length > n) e.rec.outputTruncated = true;
    }
    const ok = AGENT_STATUSES.has(m.status);
    this.finish(e, {
      status: ok ? (m.status as ExecutionStatus) : 'error', exitCode: m.exitCode,
      error: ok ? String(m.error ?? '') : `the agent reported an unknown status "${String(m.status).slice(0, 32)}": ${String(m.error ?? '')}`,
      startedMs: Number(m.startedMs) || undefined, finishedMs: Number(m.finishedMs) || undefined,
    });
  }

  /** The agent has a live stream again (after the welcome): waiting executions go out, grace timers stop. */
  onAgentAttached(agentId: string): void {
    if (this.closed) return;
    const s = this.slots.get(agentId);
    for (const id of s?.active ?? []) {
      const live = this.entries.get(id)?.live;
      if (live?.graceTimer && live.timer) { clearTimeout(live.graceTimer); live.graceTimer = undefined; }
    }
    this.pump(agentId);
    if (this.cluster) { this.cluster.presence.set(agentId, true); this.takeOver(agentId, this.cluster); }
  }

  /** The agent's last stream closed: executions in flight get `reconnectGraceMs` to be reported. */
  onAgentDetached(agentId: string): void {
    if (this.closed || this.deps.agents.link(agentId)) return;
    this.cluster?.presence.set(agentId, false);
    const s = this.slots.get(agentId);
    for (const id of s?.active ?? []) {
      const e = this.entries.get(id);
      if (!e?.live || e.live.graceTimer) continue;
      e.live.graceTimer = this.timer(this.o.reconnectGraceMs, () => this.finish(e, {
        status: 'abandoned', error: `agent ${agentId} disconnected while it ran and reported no result within ${Math.round(this.o.reconnectGraceMs / 1000)}s`,
      }));
    }
  }

  // ------------------------------------------------------------ edge executions

  /**
   * Records an action an edge rule ran on the agent itself (a `trellis.execution` event).
   * `rule` is what the hub sent this agent for the reported rule (hub/agentconfig), undefined when
   * it never did: a report that does not match it is refused (counted per agent, logged at most
   * once a minute per agent) and never enters the history.
   */
  recordEdge(agentId: string, tenant: string, eventId: string, p: EdgeExecutionPayload, rule: SentEdgeRule | undefined): boolean {
    if (this.closed) return false;
    const now = Date.now();
    const r = edgeRecord({ agentId, tenant, p, rule, now, maxAgeMs: this.o.maxAgeMs });
    if (!r.ok) {
      const s = this.edgeRefused.get(agentId) ?? { total: 0, sinceLog: 0, lastLogMs: 0 };
      this.edgeRefused.set(agentId, s);
      s.total++;
      s.sinceLog++;
      if (now - s.lastLogMs >= 60_000) {
        this.o.log.warn({ agentId, tenant, eventId: String(eventId).slice(0, 64), reason: r.reason, refused: s.sinceLog, total: s.total }, 'edge execution report refused: it does not match the edge config the hub sent this agent');
        s.lastLogMs = now;
        s.sinceLog = 0;
      }
      return false;
    }
    if (this.holds(r.rec.id)) return false; // delivered again (the agent's outbox is at least once)
    const e: Entry = { rec: r.rec, ver: 0, stored: Math.min(r.output.length, this.o.maxOutputBytes) };
    this.entries.set(r.rec.id, e);
    if (e.stored) this.history.appendOutput(r.rec.id, 'STDOUT', 0, r.output.subarray(0, e.stored));
    this.changed(e);
    if (r.output.length) this.updates.emit({ kind: 'output', tenant, executionId: r.rec.id, agentId, stream: 'STDOUT', data: r.output, offset: 0 }, { offset: 0 });
    this.settle(e);
    return true;
  }

  /** Edge-execution reports of this agent refused since the hub started. */
  edgeRefusedCount(agentId: string): number {
    return this.edgeRefused.get(agentId)?.total ?? 0;
  }

  // ------------------------------------------------------------ reading, cancel, rerun

  private lookup(tenant: string | '*', id: string): Entry {
    const e = typeof id === 'string' ? this.entry(id) : undefined;
    if (!e || (tenant !== '*' && e.rec.tenant !== tenant)) {
      throw new TrellisError('TRELLIS_E_NOT_FOUND', `no execution ${String(id).slice(0, 64)}: see \`trellis executions list\``);
    }
    return e;
  }

  /** A record with its stored output (stdout and stderr as received). Another tenant's is NOT_FOUND. */
  async get(tenant: string | '*', id: string): Promise<ExecutionRecord & { output: Buffer }> {
    if (this.cluster && !this.holds(id)) {
      const row = await this.remoteRow(this.cluster, tenant, id);
      const chunks = await this.history.readOutput(id);
      return { ...row.record, output: Buffer.concat(chunks.map((c) => c.data)) };
    }
    this.lookup(tenant, id);
    const chunks = await this.history.readOutput(id);
    const e = this.lookup(tenant, id);
    return { ...e.rec, output: Buffer.concat(chunks.map((c) => c.data)) };
  }

  /** Executions by status (every tenant, what the history holds): for metrics. */
  statusCounts(): Map<ExecutionStatus, number> {
    const out = this.finished.statusCounts();
    for (const e of this.entries.values()) out.set(e.rec.status, (out.get(e.rec.status) ?? 0) + 1);
    return out;
  }

  /** Executions not finished yet (every tenant), oldest first, at most `limit`, and how many there are. */
  unfinished(limit = 1000): { records: ExecutionRecord[]; total: number } {
    const records: ExecutionRecord[] = [];
    let total = 0;
    for (const e of this.entries.values()) {
      if (isFinal(e.rec.status)) continue;
      total++;
      if (records.length < limit) records.push({ ...e.rec });
    }
    records.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    return { records, total };
  }

  /** Newest first. `tenant` '*' lists every tenant (administrators). */
  async list(tenant: string | '*', f: ListFilter = {}): Promise<ExecutionRecord[]> {
    const limit = !f.limit || f.limit <= 0 ? DEFAULT_LIST_LIMIT : Math.min(Math.floor(f.limit), MAX_LIST_LIMIT);
    if (this.cluster) { // every hub's executions: this hub's queued writes first, then the table
      await this.durable();
      return (await this.cluster.list(tenant, f, limit)).map((r) => ({ ...(this.entry(r.id)?.rec ?? r) }));
    }
    // Those in flight that match, by reference, and the `limit` newest finished ones that match
    // (filtered on the store's columns, chosen by id without reading a record), merged by id; only
    // the page is copied or read: a page of 50 out of 100,000 executions reads 50 records.
    const hot = this.matching(tenant, f);
    hot.sort((a, b) => (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
    const cold = this.finished.newest(this.finished.match(tenant, f), limit);
    const coldIds = cold.map((s) => this.finished.idAt(s));
    const out: ExecutionRecord[] = [];
    for (let i = 0, j = 0; out.length < limit && (i < hot.length || j < cold.length);) {
      if (j >= cold.length || (i < hot.length && hot[i]!.id > coldIds[j]!)) out.push({ ...hot[i++]! });
      else out.push(this.finished.read(cold[j++]!).rec);
    }
    return out;
  }

  /** The executions in flight that pass `f` (limit aside), not copied: callers copy what they return. */
  private matching(tenant: string | '*', f: ListFilter): ExecutionRecord[] {
    const out: ExecutionRecord[] = [];
    for (const e of this.entries.values()) {
      const r = e.rec;
      if (tenant !== '*' && r.tenant !== tenant) continue;
      if (f.action && r.action !== f.action) continue;
      if (f.agentId && r.agentId !== f.agentId) continue;
      if (f.status && r.status !== f.status) continue;
      if (f.rule && r.rule !== f.rule) continue;
      if (f.sinceMs && r.requestedMs < f.sinceMs) continue;
      if (f.beforeId && r.id >= f.beforeId) continue;
      out.push(r);
    }
    return out;
  }

  /**
   * How many executions pass `f` (its `status` and `limit` aside), by status: the console's
   * overview ("executions per status in the last hour"). Counted where they are (this hub's
   * index, or the cluster's table), nothing copied.
   */
  async countByStatus(tenant: string | '*', f: ListFilter = {}): Promise<Map<string, number>> {
    if (this.cluster) {
      await this.durable();
      return this.cluster.countByStatus(tenant, f);
    }
    const by = new Map<string, number>();
    const all = { ...f, status: undefined };
    for (const r of this.matching(tenant, all)) by.set(r.status, (by.get(r.status) ?? 0) + 1);
    for (const slot of this.finished.match(tenant, all)) { const s = this.finished.statusAt(slot); by.set(s, (by.get(s) ?? 0) + 1); }
    return by;
  }

  /**
   * Cancels: a waiting execution ends at once; a sent one gets a CancelAction (the agent kills
   * the process group and reports `canceled`). With the agent offline, the hub records
   * `canceled` itself and says the process may still run. A finished one is returned as is.
   */
  async cancel(tenant: string | '*', id: string): Promise<ExecutionRecord> {
    if (this.cluster && !this.holds(id)) return this.cluster.cancel(await this.remoteRow(this.cluster, tenant, id));
    const e = this.lookup(tenant, id);
    const s = e.rec.status;
    if (s === 'requested' || (s === 'scheduled' && e.live?.rendered)) { // scheduled, rendered: its request waits for the disk
      this.finish(e, { status: 'canceled', error: 'canceled before it was sent to the agent' });
    } else if (s === 'scheduled' || s === 'running') {
      const link = this.deps.agents.link(e.rec.agentId);
      if (link?.send({ cancel: { executionId: e.rec.id } })) {
        this.o.log.info({ executionId: e.rec.id, agentId: e.rec.agentId }, 'execution cancel sent');
        const live = e.live!;
        clearTimeout(live.timer);
        live.timer = this.timer(this.o.abandonGraceMs, () => this.finish(e, { status: 'canceled', error: `cancel sent; agent ${e.rec.agentId} did not confirm it within ${Math.round(this.o.abandonGraceMs / 1000)}s` }));
      } else {
        this.finish(e, { status: 'canceled', error: `agent ${e.rec.agentId} is offline: the cancel could not reach it and the process may still run there` });
      }
    }
    return { ...e.rec };
  }

  /** Runs an execution again, same action, agent and parameters (references resolved anew). */
  async rerun(tenant: string | '*', id: string, requestedBy: string, kvCaller?: KvRequester): Promise<ExecutionRecord[]> {
    const r = this.cluster && !this.holds(id) ? (await this.remoteRow(this.cluster, tenant, id)).record : this.lookup(tenant, id).rec;
    if (r.edge) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `execution ${id} was run by an edge rule on agent ${r.agentId}; it cannot be re-run from the hub`);
    if (JSON.stringify(r.parameters).includes(JSON.stringify(REDACTED))) {
      throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `execution ${id} had a secret parameter given as a literal value, which history does not keep; run the action again with a {{ secret.NAME }} reference`);
    }
    if (r.action === COMMAND_ACTION) return this.runCommand({ tenant: r.tenant, agentIds: [r.agentId], ...commandFromParameters(r.parameters), requestedBy, kvCaller });
    const action = this.deps.catalog?.action(r.tenant, r.action);
    if (!action) throw new TrellisError('TRELLIS_E_NOT_FOUND', `action ${r.action} is not installed in tenant ${r.tenant} any more: see \`trellis packs list\``);
    return this.request({ tenant: r.tenant, action, agentIds: [r.agentId], parameters: r.parameters, requestedBy, kvCaller });
  }

  // ------------------------------------------------------------ updates

  /** Every update of every tenant (the web stream filters by tenant). Returns the unsubscribe function. */
  subscribe(fn: (u: ExecutionUpdate) => void): () => void {
    return this.updates.subscribe(fn);
  }

  /**
   * Calls `fn` with what exists of one execution (its record, then its stored output), then
   * with every later update, until it finishes; resolves with the final record. Resolves early
   * when `signal` aborts; rejects with TRELLIS_E_SHUTDOWN when the hub closes.
   */
  async follow(tenant: string | '*', id: string, fn: (u: ExecutionUpdate) => void, signal?: AbortSignal): Promise<ExecutionRecord> {
    if (this.cluster && !this.holds(id)) return this.followRemote(this.cluster, tenant, id, fn, signal);
    this.lookup(tenant, id);
    return this.updates.follow(id, {
      record: (x) => { const e = this.lookup(tenant, x); return { rec: e.rec, ver: e.ver }; },
      output: (x) => this.history.readOutput(x),
    }, fn, signal);
  }

  /**
   * Subscribes before a request so that none of its updates is missed: `start` makes the
   * executions, `fn` sees each of their updates until all finish (with `follow` false: only
   * one per execution, the record once requested). Resolves with the last records.
   */
  watch(start: () => Promise<ExecutionRecord[]>, fn: (u: ExecutionUpdate) => void, o: { follow: boolean; signal?: AbortSignal }): Promise<ExecutionRecord[]> {
    return this.updates.watch(start, (id) => this.entry(id)?.rec, fn, o);
  }


  // ------------------------------------------------------------ several hubs (hub/executions/cluster.ts)

  /** PostgreSQL: history in the database (nothing loaded: this new hub id owns nothing yet), dispatch across hubs. */
  private async openCluster(c: ClusterDeps): Promise<Executions> {
    const host: ClusterHost = {
      log: this.o.log, maxWaitMs: this.o.maxWaitMs, graceMs: this.o.abandonGraceMs + this.o.reconnectGraceMs,
      connectedAgents: () => this.deps.agents.connectedLinks().map((l) => l.agentId),
      isLocalAgent: (a) => !!this.deps.agents.link(a),
      has: (id) => !!this.entries.get(id)?.live,
      take: (rows) => this.takeRows(rows),
      cancelLocal: async (id) => { if (this.holds(id)) await this.cancel('*', id); },
      emit: (u, m) => this.updates.emit(u, m),
      evict: (beforeMs) => this.evict(beforeMs),
    };
    const cluster = new ClusterExecutions(c, host);
    const history = new PgHistory({
      db: c.db, hubId: c.bus.hubId, log: this.o.log, maxAgeMs: this.o.maxAgeMs, maxCount: this.o.maxCount, flushIntervalMs: this.o.flushIntervalMs,
      onWritten: (ids) => cluster.notify(ids), onLost: (ids) => this.lost(ids),
    });
    await history.start();
    this.history = history;
    this.cluster = cluster;
    await cluster.start(history);
    this.deps.agents.setElsewhere((id) => cluster.presence.elsewhere(id));
    return this;
  }

  /**
   * Creates executions in the shared table first (its UNIQUE key index decides duplicates across
   * hubs); those for agents connected here wait here, the others are announced to the hub that
   * holds the agent (their rendered secrets are dropped here: that hub renders them again).
   */
  private async createClustered(o: CreateOptions, cluster: ClusterExecutions): Promise<ExecutionRecord[]> {
    const now = Date.now();
    const rows = o.agentIds.map((agentId, i) => ({
      rec: {
        id: this.newId(now).toLowerCase(), tenant: o.tenant, action: o.action, agentId, status: 'requested' as ExecutionStatus, exitCode: 0, error: '',
        requestedBy: o.requestedBy, rule: o.rule, triggerEventId: o.triggerEventId, parameters: o.parameters,
        requestedMs: now, startedMs: 0, finishedMs: 0, edge: false, outputBytes: 0, outputTruncated: false,
      },
      dedupKey: o.keys[i], timeoutMs: o.timeoutMs, kvCaller: { username: o.kvCaller.username, isAdmin: o.kvCaller.isAdmin }, local: !!this.deps.agents.link(agentId),
    }));
    if (rows.some((r) => !r.local) && JSON.stringify(o.parameters).includes(JSON.stringify(REDACTED))) {
      throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `a secret parameter given as a literal value cannot be sent to an agent connected to another hub (history does not keep it): use a {{ secret.NAME }} reference`);
    }
    const earlier = await cluster.insert(rows);
    const out: ExecutionRecord[] = [];
    const remote: ExecutionRecord[] = [];
    rows.forEach((r, i) => {
      const old = earlier[i];
      if (old) { out.push({ ...(this.entry(old.id)?.rec ?? old) }); return; }
      out.push({ ...r.rec });
      if (!r.local || this.closed) {
        remote.push(r.rec);
        this.o.log.info({ executionId: r.rec.id, agentId: r.rec.agentId, action: r.rec.action, requestedBy: r.rec.requestedBy, rule: r.rec.rule || undefined }, 'execution requested for an agent this hub does not hold: offered to the cluster');
        return;
      }
      const e: Entry = { rec: r.rec, ver: 0, dedupKey: r.dedupKey, stored: 0, live: { rendered: o.rendered, timeoutMs: o.timeoutMs, slot: false, askedMs: o.triggeredAtMs ?? now } };
      this.hold(e);
      this.o.log.info({ executionId: r.rec.id, agentId: r.rec.agentId, action: r.rec.action, requestedBy: r.rec.requestedBy, rule: r.rec.rule || undefined }, 'execution requested');
      this.changed(e);
      e.live!.timer = this.timer(this.o.maxWaitMs, () => this.expireWait(e));
      this.agentSlots(r.rec.agentId).waiting.push(r.rec.id);
    });
    if (remote.length) await cluster.announce(remote);
    for (const agentId of new Set(o.agentIds)) this.pump(agentId);
    return out;
  }

  /** The agent attached here: its unfinished executions on other hubs are taken over (results it reports meanwhile wait for that). */
  private takeOver(agentId: string, cluster: ClusterExecutions): void {
    if (this.attaching.has(agentId)) return;
    const p: Promise<void> = cluster.attach(agentId)
      .catch((err: Error) => this.o.log.warn({ agentId, err: err.message }, 'taking over the agent\'s executions from other hubs failed; the sweep retries the waiting ones'))
      .finally(() => { if (this.attaching.get(agentId) === p) this.attaching.delete(agentId); });
    this.attaching.set(agentId, p);
  }

  /** A report for an execution not held here while the agent's executions are being taken over: handled once that is done. */
  private deferred(agentId: string, again: () => void): boolean {
    const p = this.attaching.get(agentId);
    if (!p) return false;
    void p.then(again);
    return true;
  }

  /** Rows this hub now owns (claimed or taken over), oldest first. */
  private async takeRows(rows: ExecRow[]): Promise<void> {
    const agents = new Set<string>();
    for (const row of [...rows].sort((a, b) => (a.id < b.id ? -1 : 1))) {
      if (this.closed) return;
      const rec = row.record;
      if (this.entries.get(rec.id)?.live) continue;
      const timeoutMs = Number(row.timeout_ms) || 0;
      const e: Entry = { rec: { ...rec }, ver: Number(row.version) || 1, dedupKey: row.dedup_key ?? undefined, stored: Math.min(rec.outputBytes, this.o.maxOutputBytes) };
      // The row is newer than what this hub held (put replaces a finished record with its id).
      const held = this.entries.get(rec.id);
      if (held) this.unhold(held);
      if (isFinal(rec.status)) { this.finished.put(e); continue; }
      this.finished.delete(rec.id);
      this.hold(e);
      if (rec.status === 'requested') {
        let rendered: RenderedAction | undefined;
        let why = '';
        try { rendered = await this.renderFor(rec, row.kv_caller ?? { username: rec.requestedBy, isAdmin: false }); } catch (err) { why = (err as Error).message; }
        if (this.closed || e.rec.status !== 'requested' || this.entries.get(rec.id) !== e) continue; // ended meanwhile
        if (!rendered) { this.finish(e, { status: 'error', error: `could not be rendered again on the hub that holds agent ${rec.agentId}: ${why}`.slice(0, ERROR_MAX) }); continue; }
        e.live = { rendered, timeoutMs: rendered.timeoutMs || timeoutMs, slot: false };
        e.live.timer = this.timer(rec.requestedMs + this.o.maxWaitMs - Date.now(), () => this.expireWait(e));
        this.agentSlots(rec.agentId).waiting.push(rec.id);
        agents.add(rec.agentId);
      } else if (rec.status === 'scheduled' || rec.status === 'running') {
        e.live = { timeoutMs, slot: true };
        this.agentSlots(rec.agentId).active.add(rec.id);
        if (timeoutMs > 0) this.armTimeout(e, Math.max(0, (rec.startedMs || rec.requestedMs) + timeoutMs + this.o.abandonGraceMs - Date.now()));
        if (!this.deps.agents.link(rec.agentId)) {
          e.live.graceTimer = this.timer(this.o.reconnectGraceMs, () => this.finish(e, {
            status: 'abandoned', error: `agent ${rec.agentId} moved hubs while it ran and reported no result within ${Math.round(this.o.reconnectGraceMs / 1000)}s`,
          }));
        }
      }
    }
    for (const a of agents) this.pump(a);
  }

  /** Renders a claimed execution again, as its requester sees the shared datastore. */
  private async renderFor(rec: ExecutionRecord, caller: { username: string; isAdmin: boolean }): Promise<RenderedAction> {
    if (JSON.stringify(rec.parameters).includes(JSON.stringify(REDACTED))) throw new Error('a secret parameter was given as a literal value, which history does not keep');
    const kvCaller: KvRequester = { username: String(caller.username), isAdmin: caller.isAdmin === true };
    if (rec.action === COMMAND_ACTION) return prepareCommand(this.deps.kv, { tenant: rec.tenant, caller: kvCaller, ...commandFromParameters(rec.parameters) });
    const action = this.deps.catalog?.action(rec.tenant, rec.action);
    if (!action) throw new Error(`action ${rec.action} is not installed in tenant ${rec.tenant}`);
    return prepareAction(this.deps.kv, { tenant: rec.tenant, caller: kvCaller, action, parameters: rec.parameters });
  }

  /** Executions another hub took over (their agent attached there): this hub stops holding them. */
  private lost(ids: string[]): void {
    for (const id of ids) {
      const e = this.entries.get(id);
      if (!e) { this.finished.delete(id); continue; }
      const live = e.live;
      if (live) {
        clearTimeout(live.timer);
        clearTimeout(live.graceTimer);
        live.rendered = undefined;
        const s = this.slots.get(e.rec.agentId);
        if (s) { s.active.delete(id); s.waiting = s.waiting.filter((x) => x !== id); }
        e.live = undefined;
      }
      this.unhold(e);
      this.o.log.info({ executionId: id, agentId: e.rec.agentId }, 'execution taken over by another hub (its agent is there now)');
    }
  }

  /** Final executions finished before `beforeMs` leave memory (the database has them). */
  private evict(beforeMs: number): void {
    for (const e of this.entries.values()) {
      if (e.live || !isFinal(e.rec.status) || (e.rec.finishedMs || e.rec.requestedMs) >= beforeMs) continue;
      this.unhold(e);
    }
    this.finished.evict(beforeMs);
  }

  /** An execution this hub does not hold, from the database; another tenant's is NOT_FOUND. */
  private async remoteRow(cluster: ClusterExecutions, tenant: string | '*', id: string): Promise<ExecRow> {
    const row = typeof id === 'string' && id.length > 0 && id.length <= 64 ? await cluster.row(id) : undefined;
    if (!row || (tenant !== '*' && row.record.tenant !== tenant)) throw notFound(id);
    return row;
  }

  private async followRemote(cluster: ClusterExecutions, tenant: string | '*', id: string, fn: (u: ExecutionUpdate) => void, signal?: AbortSignal): Promise<ExecutionRecord> {
    let row = await this.remoteRow(cluster, tenant, id);
    const release = cluster.watchRemote(id);
    try {
      return await this.updates.follow(id, {
        output: async (x) => { row = (await cluster.row(x)) ?? row; return this.history.readOutput(x); },
        record: () => ({ rec: row.record, ver: Number(row.version) }),
      }, fn, signal);
    } finally {
      release();
    }
  }

  // ------------------------------------------------------------ shutdown

  private checkOpen(): void {
    if (this.closed) throw new TrellisError('TRELLIS_E_SHUTDOWN', 'the hub is shutting down; run it again once it is back');
  }

  /**
   * Waiting executions end in `error` (their secrets were in memory only) unless they can be
   * rendered again from history at the next start (see resume); executions in flight
   * stay as they are: after a restart their agents have `reconnectGraceMs` to report. Followers
   * end with TRELLIS_E_SHUTDOWN; history is flushed and closed.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true; // first: nothing is dispatched from here on
    clearImmediate(this.forgetTimer); // what retention dropped is gone from the history files: nothing to forget at the next start
    this.forgetTimer = undefined;
    this.forgetting = [];
    await this.cluster?.close();
    for (const e of this.entries.values()) {
      // Those that can be rendered again from history stay requested: the next start sends them
      // (with several hubs: the hub their agent attaches to, which renders them again).
      // Only those still waiting (rendering every finished one again cost seconds with 100,000 in history).
      if (e.rec.status !== 'requested') continue;
      const again = this.cluster ? !e.rec.edge && !JSON.stringify(e.rec.parameters).includes(JSON.stringify(REDACTED)) : !!this.renderAgain(e.rec);
      if (!again) this.finish(e, { status: 'error', error: 'the hub shut down before it was sent to the agent; run it again' });
    }
    for (const e of this.entries.values()) {
      if (!e.live) continue;
      clearTimeout(e.live.timer);
      clearTimeout(e.live.graceTimer);
      e.live.rendered = undefined;
    }
    this.updates.close();
    await this.history.close();
  }

  async [Symbol.asyncDispose](): Promise<void> { await this.close(); }
}
