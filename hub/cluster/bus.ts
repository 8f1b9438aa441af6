/**
 * The cluster bus: small hub-to-hub messages over PostgreSQL LISTEN/NOTIFY (on the state store's
 * LISTEN connection), for hubs that share one database. A topic is one channel
 * (`trellis_<topic>`); a message is a JSON object sent with the sender's hub id.
 *
 * What a message may carry: a reference or a small fact (an execution id to dispatch, "a cancel
 * was asked", a batch of small events), never the only copy of something that must not be lost:
 * delivery is at most once (a hub whose LISTEN connection is down misses what is sent meanwhile;
 * `onResync` tells it to catch up from the database). A message must also never be trusted more
 * than a row in the database: any role that can NOTIFY on the database can forge one, so a
 * receiver re-reads what it acts on (the sender's id is a hint, not an authentication).
 *
 * With one hub (lowdb or memory store) the bus is `LocalBus`: `clustered` is false, `publish`
 * delivers nothing (there is no other hub) and subscribers never hear anything.
 */
import { TrellisError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import { MAX_CHANNEL_PAYLOAD, type PostgresStore } from '../store/postgres/index.js';
import type { Store } from '../store/index.js';

export type BusHandler = (msg: Record<string, unknown>, fromHub: string) => void;

export interface ClusterBus {
  /** This hub's id (the hubs registry's). */
  readonly hubId: string;
  /** True when other hubs can hear this one. */
  readonly clustered: boolean;
  /**
   * Sends `msg` to every other hub subscribed to `topic` (this hub's own messages are not
   * delivered back unless `subscribe(…, { self: true })`). Resolves once handed to the database;
   * TRELLIS_E_INVALID_ARGUMENT when the encoded message is over MAX_BUS_MESSAGE bytes,
   * TRELLIS_E_UNAVAILABLE when the database is away.
   */
  publish(topic: string, msg: Record<string, unknown>): Promise<void>;
  /** Sends several messages on `topic` in one round trip, in order (each as `publish` checks it). */
  publishMany(topic: string, msgs: Array<Record<string, unknown>>): Promise<void>;
  /** Calls `fn` for each message on `topic`; returns the unsubscribe function. */
  subscribe(topic: string, fn: BusHandler, opts?: { self?: boolean }): Promise<() => void>;
  /** Called when this hub may have missed messages (its LISTEN connection came back). */
  onResync(fn: () => void): () => void;
}

/** Bytes of one encoded message (topic name excluded). */
export const MAX_BUS_MESSAGE = MAX_CHANNEL_PAYLOAD;
const TOPIC_RE = /^[a-z][a-z0-9_]{0,30}$/;

function channelOf(topic: string): string {
  if (!TOPIC_RE.test(topic)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `"${topic.slice(0, 40)}" is not a bus topic (a lower-case word)`);
  return `trellis_${topic}`;
}

/** The bus of a hub alone: nothing to send to, nothing to hear. */
export class LocalBus implements ClusterBus {
  readonly clustered = false;
  constructor(readonly hubId: string) {}
  async publish(topic: string, msg: Record<string, unknown>): Promise<void> {
    channelOf(topic);
    const n = Buffer.byteLength(JSON.stringify({ f: this.hubId, m: msg }));
    if (n > MAX_BUS_MESSAGE) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `a bus message on ${topic} is ${n} bytes, over ${MAX_BUS_MESSAGE}`);
  }
  async publishMany(topic: string, msgs: Array<Record<string, unknown>>): Promise<void> {
    for (const m of msgs) await this.publish(topic, m);
  }
  async subscribe(topic: string): Promise<() => void> {
    channelOf(topic);
    return () => undefined;
  }
  onResync(): () => void {
    return () => undefined;
  }
}

/** The bus over a PostgreSQL store shared by several hubs. */
export class PgBus implements ClusterBus {
  readonly clustered = true;
  constructor(readonly hubId: string, private readonly store: PostgresStore, private readonly log: Logger) {}

  async publish(topic: string, msg: Record<string, unknown>): Promise<void> {
    await this.store.notify(channelOf(topic), JSON.stringify({ f: this.hubId, m: msg }));
  }

  async publishMany(topic: string, msgs: Array<Record<string, unknown>>): Promise<void> {
    await this.store.notifyMany(channelOf(topic), msgs.map((m) => JSON.stringify({ f: this.hubId, m })));
  }

  async subscribe(topic: string, fn: BusHandler, opts: { self?: boolean } = {}): Promise<() => void> {
    return this.store.listen(channelOf(topic), (payload) => {
      let env: { f?: unknown; m?: unknown };
      try { env = JSON.parse(payload) as typeof env; } catch {
        this.log.warn({ topic }, 'ignored a cluster message that is not JSON');
        return;
      }
      if (!env || typeof env.f !== 'string' || !env.m || typeof env.m !== 'object' || Array.isArray(env.m)) {
        this.log.warn({ topic }, 'ignored a malformed cluster message');
        return;
      }
      if (env.f === this.hubId && !opts.self) return;
      try {
        fn(env.m as Record<string, unknown>, env.f);
      } catch (err) {
        this.log.error({ err, topic }, 'a cluster message handler failed');
      }
    });
  }

  onResync(fn: () => void): () => void {
    return this.store.onResync(fn);
  }
}

/** The bus for this hub's store: PgBus on PostgreSQL, LocalBus otherwise. */
export function busFor(store: Store, hubId: string, log: Logger): ClusterBus {
  const pgStore = store as Partial<PostgresStore>;
  if (typeof pgStore.notify === 'function' && typeof pgStore.listen === 'function') return new PgBus(hubId, store as PostgresStore, log);
  return new LocalBus(hubId);
}
