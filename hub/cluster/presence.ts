/**
 * Which hub each agent is attached to, across the hubs of a cluster (hub/executions/cluster.ts
 * keeps it up to date from the agent channel's attach/detach).
 */
import type { Logger } from '../../common/log.js';
import type { ClusterBus } from './bus.js';
import type { ExecDb } from '../executions/history-pg.js';

export interface PresenceDeps {
  db: ExecDb;
  bus: ClusterBus;
  /** Ids of the hubs alive now (hubs registry, not stale), this one included. */
  liveHubs: () => Promise<string[]>;
}

const T_PRESENCE = 'agent_presence';
const AGENTS_PER_MESSAGE = 100;

/**
 * Which hub each agent is attached to (table trellis_agent_hubs), so that any hub sees an agent
 * on another hub as online (targets of `trellis run`, `agents list`). Attach/detach are written
 * in batches (one statement each per batch) and announced on the bus; every hub reloads the
 * whole table after a bus reconnect and every minute. An agent counts as elsewhere only while
 * its hub is live in the hubs registry.
 */
export class AgentPresence {
  private readonly where = new Map<string, string>();
  private live = new Set<string>();
  private queue = new Map<string, boolean>();
  private timer?: NodeJS.Timeout;
  private reloadTimer?: NodeJS.Timeout;
  private writing: Promise<void> = Promise.resolve();
  private unsubs: (() => void)[] = [];
  private closed = false;

  constructor(private readonly d: PresenceDeps, private readonly log: Logger) {}

  private get hubId(): string { return this.d.bus.hubId; }

  async start(): Promise<void> {
    this.unsubs.push(await this.d.bus.subscribe(T_PRESENCE, (m, from) => {
      const hub = typeof m.hub === 'string' ? m.hub : from;
      for (const a of strs(m.on)) this.where.set(a, hub);
      for (const a of strs(m.off)) if (this.where.get(a) === hub) this.where.delete(a);
      if (!this.live.has(hub)) void this.refreshLive();
    }));
    this.unsubs.push(this.d.bus.onResync(() => { void this.reload(); }));
    await this.reload();
    this.reloadTimer = setInterval(() => { void this.reload(); }, 60_000);
    this.reloadTimer.unref();
  }

  /** Attached to another live hub. */
  elsewhere(agentId: string): boolean {
    const h = this.where.get(agentId);
    return !!h && h !== this.hubId && this.live.has(h);
  }

  async refreshLive(): Promise<void> {
    try { this.live = new Set(await this.d.liveHubs()); } catch { /* the store is away: keep the last view */ }
  }

  private async reload(): Promise<void> {
    try {
      const r = await this.d.db.query<{ agent: string; hub: string }>('SELECT agent, hub FROM trellis_agent_hubs');
      this.where.clear();
      for (const x of r.rows) this.where.set(x.agent, x.hub);
      await this.refreshLive();
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'cannot read which hub each agent is on; retrying');
    }
  }

  /** The agent attached to (true) or left (false) this hub. */
  set(agentId: string, here: boolean): void {
    if (this.closed) return;
    this.queue.set(agentId, here);
    if (here) this.where.set(agentId, this.hubId);
    else if (this.where.get(agentId) === this.hubId) this.where.delete(agentId);
    this.timer ??= setTimeout(() => { this.timer = undefined; void this.flush(); }, 100);
  }

  private flush(): Promise<void> {
    this.writing = this.writing.then(async () => {
      const q = this.queue;
      this.queue = new Map();
      if (!q.size) return;
      const on = [...q].filter(([, v]) => v).map(([a]) => a), off = [...q].filter(([, v]) => !v).map(([a]) => a);
      try {
        if (on.length) {
          await this.d.db.query(`INSERT INTO trellis_agent_hubs (agent, hub) SELECT unnest($1::text[]), $2
            ON CONFLICT (agent) DO UPDATE SET hub = excluded.hub, since = now()`, [on, this.hubId]);
        }
        if (off.length) await this.d.db.query('DELETE FROM trellis_agent_hubs WHERE agent = ANY($1::text[]) AND hub = $2', [off, this.hubId]);
        for (let i = 0; i < Math.max(on.length, off.length); i += AGENTS_PER_MESSAGE) {
          await this.d.bus.publish(T_PRESENCE, { hub: this.hubId, on: on.slice(i, i + AGENTS_PER_MESSAGE), off: off.slice(i, i + AGENTS_PER_MESSAGE) }).catch(() => undefined);
        }
      } catch (err) {
        for (const [a, v] of q) if (!this.queue.has(a)) this.queue.set(a, v); // retried with the next change or the reload
        this.log.warn({ err: (err as Error).message }, 'cannot record which agents are on this hub; retrying');
        if (!this.closed) this.timer ??= setTimeout(() => { this.timer = undefined; void this.flush(); }, 2_000);
      }
    });
    return this.writing;
  }

  /** A graceful stop: this hub's agents are attached nowhere (until they reconnect). */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    clearInterval(this.reloadTimer);
    for (const u of this.unsubs.splice(0)) u();
    await this.writing;
    await this.d.db.query('DELETE FROM trellis_agent_hubs WHERE hub = $1', [this.hubId]).catch(() => undefined);
  }
}

function strs(v: unknown): string[] {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string' && x.length > 0 && x.length <= 128).slice(0, AGENTS_PER_MESSAGE) : [];
}
