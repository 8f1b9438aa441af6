/**
 * Event intake from agents: de-duplication by event id (delivery is at least once) and
 * fan-out to subscribers. The rules engine and the live stream subscribe here.
 */
import type { Event__Output } from '../../common/proto-gen/trellis/v1/Event.js';

export interface HubEvent { id: string; type: string; payload: Buffer; timeMs: number; agentId: string; tenant: string }
export type EventListener = (events: HubEvent[]) => void;

/** Remembers the last `capacity` event ids of one agent. */
class RecentIds {
  private readonly ids = new Set<string>();
  private readonly order: string[] = [];
  private head = 0;
  constructor(private readonly capacity: number) {}
  /** True if the id is new (and remembers it). */
  add(id: string): boolean {
    if (this.ids.has(id)) return false;
    this.ids.add(id);
    if (this.order.length < this.capacity) this.order.push(id);
    else {
      this.ids.delete(this.order[this.head]!);
      this.order[this.head] = id;
      this.head = (this.head + 1) % this.capacity;
    }
    return true;
  }
}

export const MAX_EVENTS_PER_BATCH = 10_000;
export const MAX_EVENT_PAYLOAD_BYTES = 64 * 1024;

export class EventIntake {
  private readonly recent = new Map<string, RecentIds>();
  private readonly listeners = new Set<EventListener>();
  private readonly idleSince = new Map<string, number>();
  received = 0;
  duplicates = 0;
  rejected = 0;
  listenerErrors = 0;

  /**
   * dedupWindow: event ids remembered per agent. It must cover what an agent can re-send after
   * a reconnect (its unacknowledged batches: 16 × 500 by default); 20,000 leaves room.
   */
  constructor(private readonly opts: { dedupWindow: number } = { dedupWindow: 20_000 }) {}

  subscribe(fn: EventListener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  ingest(agentId: string, tenant: string, batch: Event__Output[]): void {
    let recent = this.recent.get(agentId);
    if (!recent) this.recent.set(agentId, (recent = new RecentIds(this.opts.dedupWindow)));
    const fresh: HubEvent[] = [];
    for (const e of batch) {
      if (!e.id || e.id.length > 64 || !e.type || e.type.length > 128 || e.payloadJson.length > MAX_EVENT_PAYLOAD_BYTES) { this.rejected++; continue; }
      if (!recent.add(e.id)) { this.duplicates++; continue; }
      fresh.push({ id: e.id, type: e.type, payload: e.payloadJson, timeMs: e.timeMs, agentId, tenant });
    }
    this.received += fresh.length;
    if (fresh.length === 0) return;
    for (const fn of this.listeners) {
      // A listener's failure (rules, stream, history) never reaches the agent's stream.
      try { fn(fresh); } catch { this.listenerErrors++; }
    }
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
