/**
 * The hubs registry: each hub records itself (id, name, addresses, version, start, connected
 * agents, last heartbeat) every `intervalMs`. On a shared store (PostgreSQL) the records live in
 * the `hubs` collection, so every hub lists every other; on lowdb/memory the record stays in
 * memory (a heartbeat must not rewrite state.json every few seconds), and the list is this hub.
 *
 * A hub's id is random per process start: a data directory copied to another machine does not
 * make two hubs share a record. A graceful stop deletes the record; a killed hub's record stays,
 * marked stale after `staleAfterMs`, and is removed by any hub an hour after its last heartbeat.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { Logger } from '../../common/log.js';
import type { Store } from '../store/index.js';

export interface HubRecord {
  id: string;
  name: string;
  addresses: string[];
  version: string;
  host: string;
  pid: number;
  startedAtMs: number;
  agents: number;
  lastHeartbeatMs: number;
  [k: string]: unknown;
}

/** A new hub id: random per process start (see above). */
export function newHubId(): string {
  return `hub-${randomBytes(8).toString('hex')}`;
}

export interface HubRegistryOptions {
  /** This hub's id (the cluster bus's too). @default newHubId() */
  id?: string;
  store: Store;
  /** True when the store is shared by several hubs (PostgreSQL). */
  shared: boolean;
  name: string;
  version: string;
  /** Agent and admin ports, HOST:PORT (read at each heartbeat: known once the ports are bound). */
  addresses: () => string[];
  /** Agents connected to this hub now. */
  agents: () => number;
  intervalMs: number;
  staleAfterMs: number;
  log: Logger;
  /** Records older than this are deleted by the next heartbeat of any hub. @default 1 h */
  forgetAfterMs?: number;
}

export class HubRegistry {
  readonly id: string;
  private readonly startedAtMs = Date.now();
  private timer?: NodeJS.Timeout;
  private last?: HubRecord;
  private beating?: Promise<void>;
  private failing = false;
  private stopped = false;

  constructor(private readonly o: HubRegistryOptions) {
    this.id = o.id ?? newHubId();
  }

  get shared(): boolean { return this.o.shared; }
  get staleAfterMs(): number { return this.o.staleAfterMs; }

  /** Records this hub now, then every intervalMs. */
  async start(): Promise<void> {
    await this.heartbeat();
    this.timer = setInterval(() => { this.beating ??= this.heartbeat().finally(() => { this.beating = undefined; }); }, this.o.intervalMs);
    this.timer.unref();
  }

  private record(): HubRecord {
    return {
      id: this.id, name: this.o.name, addresses: this.o.addresses(), version: this.o.version, host: hostname(), pid: process.pid,
      startedAtMs: this.startedAtMs, agents: this.o.agents(), lastHeartbeatMs: Date.now(),
    };
  }

  private async heartbeat(): Promise<void> {
    if (this.stopped) return;
    const rec = this.record();
    this.last = rec;
    if (!this.o.shared) return;
    try {
      await this.o.store.put('hubs', rec);
      const forget = rec.lastHeartbeatMs - (this.o.forgetAfterMs ?? 3_600_000);
      for (const old of await this.o.store.list<HubRecord>('hubs', (d) => d.lastHeartbeatMs < forget)) await this.o.store.delete('hubs', old.id);
      if (this.failing) this.o.log.info('hubs registry heartbeat recorded again');
      this.failing = false;
    } catch (err) {
      // The store is away (it reconnects on its own): logged once per outage, not per heartbeat.
      if (!this.failing) this.o.log.warn({ err: (err as Error).message }, 'cannot record this hub in the hubs registry; retrying at every heartbeat');
      this.failing = true;
    }
  }

  /** Every recorded hub (with `stale` and `self`), this one first refreshed. */
  async list(): Promise<Array<HubRecord & { stale: boolean; self: boolean }>> {
    const now = Date.now();
    const self = { ...this.record(), lastHeartbeatMs: this.last?.lastHeartbeatMs ?? now };
    const others = this.o.shared ? (await this.o.store.list<HubRecord>('hubs')).filter((h) => h.id !== this.id) : [];
    return [self, ...others]
      .map((h) => ({ ...h, self: h.id === this.id, stale: h.id !== this.id && now - h.lastHeartbeatMs > this.o.staleAfterMs }))
      .sort((a, b) => a.name.localeCompare(b.name) || a.startedAtMs - b.startedAtMs);
  }

  /** Stops the heartbeat; a graceful stop removes this hub's record. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    await this.beating;
    if (this.o.shared) await this.o.store.delete('hubs', this.id).catch(() => undefined);
  }
}
