/**
 * Event intake from agents: de-duplication by event id (delivery is at least once) and
 * fan-out to subscribers. The rules engine and the live stream subscribe here.
 */
import type { Event__Output } from '../../common/proto-gen/trellis/v1/Event.js';
import type { Logger } from '../../common/log.js';
import { RecentIds } from './recent-ids.js';

export { agentMayPublish } from './sources.js';

export interface HubEvent {
  id: string; type: string; payload: Buffer; timeMs: number; agentId: string; tenant: string;
  /** Set on an event forwarded by another hub without its payload (too big for the cluster bus): the payload's size. */
  truncatedBytes?: number;
}
/**
 * A subscriber of fresh events. It may return a promise: the batch is acknowledged to the agent
 * only once every such promise settled (the rules engine resolves once the executions the
 * events caused are on disk), so an acknowledged event is never lost to a hub crash.
 */
export type EventListener = (events: HubEvent[]) => unknown;

export const MAX_EVENTS_PER_BATCH = 10_000;
export const MAX_EVENT_PAYLOAD_BYTES = 64 * 1024;

/** Per agent: events refused by the source policy (hub/events/sources.ts). */
interface Refusals { total: number; sinceLog: number; lastLogMs: number; types: Set<string> }

/** What `ingest` did with one batch (the batch is acknowledged either way). */
export interface IngestResult {
  accepted: number; duplicates: number; malformed: number; refused: number; /** distinct, at most 8 */ refusedTypes: string[];
  /** Set when a listener is still making the batch's effects durable: acknowledge after it settles (it never rejects). */
  settled?: Promise<void>;
}

export interface EventIntakeOptions {
  /**
   * Event ids remembered per agent. It must cover what an agent can re-send after a reconnect
   * (its unacknowledged batches: 16 × 500 by default); 20,000 leaves room.
   * @default 20000
   */
  dedupWindow?: number;
  /** Where refusals are logged (at most one line per agent per `refusalLogEveryMs`). */
  log?: Logger;
  /** @default 60000 */
  refusalLogEveryMs?: number;
}

export class EventIntake {
  private readonly recent = new Map<string, RecentIds>();
  private readonly refusals = new Map<string, Refusals>();
  private readonly listeners = new Set<EventListener>();
  private readonly idleSince = new Map<string, number>();
  received = 0;
  duplicates = 0;
  rejected = 0;
  /** Events refused by the source policy (an agent publishing a type it may not). */
  refused = 0;
  listenerErrors = 0;
  /** Agent events acknowledged on the agent stream (the agent port counts them as it acks; metrics). */
  acked = 0;
  private readonly dedupWindow: number;

  constructor(private readonly opts: EventIntakeOptions = {}) {
    this.dedupWindow = opts.dedupWindow ?? 20_000;
  }

  /** How many events of this agent the source policy refused since the hub started. */
  refusedCount(agentId: string): number {
    return this.refusals.get(agentId)?.total ?? 0;
  }

  subscribe(fn: EventListener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /**
   * Takes one batch from an agent. `mayPublish` is the source policy for this agent
   * (`agentMayPublish` over the sensor triggers the hub configured on it): an event it refuses is
   * counted, logged (rate-limited) and never reaches a listener. The caller still acknowledges
   * the batch: a refusal is final (re-sending would be refused again), so the agent's outbox must
   * not keep it and retry it forever.
   */
  ingest(agentId: string, tenant: string, batch: Event__Output[], mayPublish: (type: string) => boolean = () => true): IngestResult {
    let recent = this.recent.get(agentId);
    if (!recent) this.recent.set(agentId, (recent = new RecentIds(this.dedupWindow)));
    const fresh: HubEvent[] = [];
    const r: IngestResult = { accepted: 0, duplicates: 0, malformed: 0, refused: 0, refusedTypes: [] };
    let refusedTypes: string[] | undefined;
    for (const e of batch) {
      if (!e.id || e.id.length > 64 || !e.type || e.type.length > 128 || e.payloadJson.length > MAX_EVENT_PAYLOAD_BYTES) { r.malformed++; continue; }
      if (!recent.add(e.id)) { r.duplicates++; continue; }
      if (!mayPublish(e.type)) { r.refused++; (refusedTypes ??= []).push(e.type); continue; }
      fresh.push({ id: e.id, type: e.type, payload: e.payloadJson, timeMs: e.timeMs, agentId, tenant });
    }
    r.accepted = fresh.length;
    this.rejected += r.malformed;
    this.duplicates += r.duplicates;
    this.received += fresh.length;
    if (refusedTypes) {
      this.noteRefused(agentId, tenant, refusedTypes);
      r.refusedTypes = [...new Set(refusedTypes)].slice(0, 8).map((x) => x.slice(0, 128));
    }
    if (fresh.length === 0) return r;
    let pending: Promise<void>[] | undefined;
    for (const fn of this.listeners) {
      // A listener's failure (rules, stream, history) never reaches the agent's stream.
      try {
        const p = fn(fresh);
        if (p instanceof Promise) (pending ??= []).push(p.then(() => undefined, () => { this.listenerErrors++; }));
      } catch { this.listenerErrors++; }
    }
    if (pending) r.settled = Promise.all(pending).then(() => undefined);
    return r;
  }

  private noteRefused(agentId: string, tenant: string, types: string[], now = Date.now()): void {
    this.refused += types.length;
    let s = this.refusals.get(agentId);
    if (!s) this.refusals.set(agentId, (s = { total: 0, sinceLog: 0, lastLogMs: 0, types: new Set() }));
    s.total += types.length;
    s.sinceLog += types.length;
    for (const t of types) if (s.types.size < 8) s.types.add(t.slice(0, 128));
    if (now - s.lastLogMs < (this.opts.refusalLogEveryMs ?? 60_000)) return;
    this.opts.log?.warn({ agentId, tenant, refused: s.sinceLog, total: s.total, types: [...s.types] },
      'agent published event types it may not (only core.*, trellis.execution and its configured sensors\' triggers): refused, not published');
    s.lastLogMs = now;
    s.sinceLog = 0;
    s.types.clear();
  }

  /**
   * The agent's stream closed. Its de-duplication window is kept for `keepMs` (an agent that
   * reconnects re-sends what was not acknowledged), then dropped, so memory follows the agents
   * that are connected rather than every agent ever seen.
   */
  detached(agentId: string, now = Date.now()): void {
    this.idleSince.set(agentId, now);
  }

  attached(agentId: string): void {
    this.idleSince.delete(agentId);
  }

  /** Drops the windows of agents detached for longer than keepMs; returns how many. */
  sweep(keepMs = 15 * 60_000, now = Date.now()): number {
    let n = 0;
    for (const [agentId, since] of this.idleSince) {
      if (now - since < keepMs) continue;
      this.idleSince.delete(agentId);
      if (this.recent.delete(agentId)) n++;
    }
    return n;
  }

  /**
   * Hub-originated events (webhooks), with fresh ids and `agentId: ''`: no de-duplication.
   * Listeners get them exactly as they get agent events; one listener's failure never stops
   * the others or reaches the publisher (it is counted in `listenerErrors`).
   */
  publish(events: HubEvent[]): void {
    if (events.length === 0) return;
    this.received += events.length;
    for (const fn of this.listeners) {
      try { fn(events); } catch { this.listenerErrors++; }
    }
  }
}
