/**
 * Events across hubs: `/stream` (and `trellis events --follow`) on any hub of a cluster sees the
 * events of agents connected to every hub. Each hub forwards the events it takes in (after its
 * de-duplication and source policy) over the cluster bus, and delivers the events other hubs
 * forward to its own followers through the same filter and authorization as its local events
 * (tenant, `events:read`, filters; rights re-checked by hub/live). Rules run only on the hub the
 * agent is connected to: forwarded events reach followers, never the rules engine.
 *
 * Cost only when someone follows: a hub forwards only while another hub has event followers, and
 * only events of the tenants they watch. Hubs announce on topic `followers` when what their event
 * followers watch changes (none, these tenants, every tenant), again every `announceEveryMs` while
 * they have any (an announcement is valid for
 * `interestTtlMs`: a killed hub's interest lapses), and ask the others at start and after the
 * bus reconnected.
 *
 * Batching: events are gathered for `flushMs` and sent in messages of at most MAX_BUS_MESSAGE
 * bytes (PostgreSQL NOTIFY carries < 8,000 bytes). Nothing is dropped silently: an event too big
 * for one message is forwarded with its payload cut (`payload: null, payloadTruncated: BYTES` in
 * the stream frame); when more than `maxPending` events wait (the bus is slower than the events)
 * or a message cannot be sent (database away), the events are dropped and the followers of their
 * tenant get a `{"kind":"gap","dropped":N,"reason":…}` frame. Delivery is at most once: a
 * follower is a live view, not a history.
 *
 * A message is data from the database: entries are checked (types and lengths) and bad ones
 * ignored with a warning. Anyone who can NOTIFY on the database can forge one; that role can
 * also write every document, so this adds no trust.
 */
import type { Logger } from '../../common/log.js';
import { cleanText } from '../../common/text.js';
import type { HubEvent, EventIntake } from '../events/index.js';
import { MAX_BUS_MESSAGE, type ClusterBus } from './bus.js';

export const EVENTS_TOPIC = 'events';
export const FOLLOWERS_TOPIC = 'followers';

/** Where forwarded events go on this hub (hub/web/stream.ts). */
export interface EventFollowers {
  /** Event followers connected to this hub now. */
  followers(): number;
  /** The tenants they watch (`*`: every tenant); other hubs forward only events of these. @default '*' */
  followedTenants?(): '*' | string[];
  /** Delivers events forwarded by another hub, filtered and authorized as local ones. */
  deliverRemote(events: HubEvent[]): void;
  /** Tells the followers of `tenant` that `dropped` events of another hub could not be forwarded. */
  deliverGap(tenant: string, dropped: number, reason: string): void;
}

export interface ClusterEventsOptions {
  bus: ClusterBus;
  events: EventIntake;
  followers: EventFollowers;
  log: Logger;
  /** Events are gathered this long before they are sent. @default 25 */
  flushMs?: number;
  /** Most events waiting to be sent; more are dropped (and reported as a gap). @default 20000 */
  maxPending?: number;
  /** An announcement of followers is valid this long. @default 30000 */
  interestTtlMs?: number;
  /** While it has followers, a hub announces them this often. @default 10000 */
  announceEveryMs?: number;
}

/** A forwarded event: [id, type, agentId, tenant, timeMs, payload (UTF-8 text) or null, truncated bytes?]. */
type Wire = [string, string, string, string, number, string | null, number?];

/** Room left in a message for the envelope (`{"f":hub id,"m":{"e":[…]}}`) and slack. */
const ENVELOPE = 200;
const BUDGET = MAX_BUS_MESSAGE - ENVELOPE;
const MAX_GAP_TENANTS = 64;
/** Bus messages sent in one round trip to the database. */
const MESSAGES_PER_TRIP = 32;

export interface ClusterEventsStats {
  /** Events sent to other hubs. */
  forwarded: number;
  /** Bus messages sent. */
  messages: number;
  /** Events forwarded with their payload cut (too big for one message). */
  truncated: number;
  /** Events not forwarded (backlog over maxPending, or the bus failed). */
  dropped: number;
  /** Events received from other hubs and handed to this hub's followers. */
  received: number;
  /** Entries of received messages that were malformed (ignored). */
  malformed: number;
}

export class ClusterEvents {
  readonly stats: ClusterEventsStats = { forwarded: 0, messages: 0, truncated: 0, dropped: 0, received: 0, malformed: 0 };
  /** Other hubs with event followers → when their announcement lapses, and the tenants they watch. */
  private readonly interest = new Map<string, { until: number; tenants: '*' | Set<string> }>();
  private pending: HubEvent[] = [];
  /** Per tenant: events dropped since the last gap report. */
  private gaps = new Map<string, number>();
  private gapReason = '';
  private timer?: NodeJS.Timeout;
  private sending?: Promise<void>;
  private announceTimer?: NodeJS.Timeout;
  private lastAnnounced = '';
  private announceSeq = 0;
  private announcing: Promise<void> = Promise.resolve();
  /** Per other hub: the number of its last announcement. */
  private readonly seen = new Map<string, number>();
  private readonly cleanups: Array<() => void> = [];
  private closed = false;
  private failing = false;
  private lastMalformedLog = 0;
  private readonly flushMs: number;
  private readonly maxPending: number;
  private readonly ttlMs: number;

  private constructor(private readonly o: ClusterEventsOptions) {
    this.flushMs = o.flushMs ?? 25;
    this.maxPending = o.maxPending ?? 20_000;
    this.ttlMs = o.interestTtlMs ?? 30_000;
  }

  /** Subscribes to the bus and asks the other hubs who follows; with LocalBus, does nothing. */
  static async start(o: ClusterEventsOptions): Promise<ClusterEvents> {
    const c = new ClusterEvents(o);
    if (!o.bus.clustered) return c;
    c.cleanups.push(o.events.subscribe((batch) => c.onLocal(batch)));
    c.cleanups.push(await o.bus.subscribe(EVENTS_TOPIC, (m, from) => c.onRemote(m, from)));
    c.cleanups.push(await o.bus.subscribe(FOLLOWERS_TOPIC, (m, from) => c.onInterest(m, from)));
    c.cleanups.push(o.bus.onResync(() => c.announce(true)));
    c.announceTimer = setInterval(() => { if (c.o.followers.followers() > 0) c.announce(false); }, o.announceEveryMs ?? 10_000);
    c.announceTimer.unref();
    c.announce(true);
    return c;
  }

  /** True when another hub has event followers now (events are forwarded). */
  get remoteFollowers(): boolean {
    return this.watched() !== undefined;
  }

  /** Would an event of `tenant` be forwarded now? */
  forwards(tenant: string): boolean {
    const w = this.watched();
    return w === '*' || (w !== undefined && w.has(tenant));
  }

  /** The tenants other hubs' followers watch now (`*`: every tenant), undefined when none. */
  private watched(): '*' | Set<string> | undefined {
    const now = Date.now();
    let out: Set<string> | undefined;
    for (const [hub, i] of this.interest) {
      if (i.until <= now) { this.interest.delete(hub); continue; }
      if (i.tenants === '*') return '*';
      out ??= new Set();
      for (const t of i.tenants) out.add(t);
    }
    return out;
  }

  /** This hub's event followers changed (hub/web/stream.ts calls it): the others hear when what they watch changed. */
  followersChanged(): void {
    if (this.closed || !this.o.bus.clustered) return;
    if (this.interestNow().key !== this.lastAnnounced) this.announce(false);
  }

  private interestNow(): { n: number; t: '*' | string[]; key: string } {
    const n = this.o.followers.followers();
    const t = n > 0 ? (this.o.followers.followedTenants?.() ?? '*') : [];
    // Too many tenants for one message: every tenant (more forwarded, nothing missed).
    const tenants = t !== '*' && JSON.stringify(t).length > MAX_BUS_MESSAGE / 2 ? '*' : t;
    return { n, t: tenants, key: n > 0 ? JSON.stringify(tenants) : '' };
  }

  /**
   * Announcements go out one after another (a chain), each numbered: two sent close together on
   * different database connections may arrive out of order, and the older is then ignored.
   */
  private announce(ask: boolean): void {
    if (this.closed) return;
    const { n, t, key } = this.interestNow();
    this.lastAnnounced = key;
    const s = ++this.announceSeq;
    this.announcing = this.announcing.then(() => this.o.bus.publish(FOLLOWERS_TOPIC, ask ? { n, t, s, ask: true } : { n, t, s })).catch((err: Error) => {
      this.o.log.warn({ err: err.message }, 'cannot announce this hub\'s event followers to the other hubs; retried at the next change or in a few seconds');
    });
  }

  private onInterest(m: Record<string, unknown>, from: string): void {
    const seq = typeof m.s === 'number' && Number.isSafeInteger(m.s) ? m.s : 0;
    if (seq <= (this.seen.get(from) ?? -1)) return; // an older announcement, overtaken
    if (this.seen.size > 1_000 && !this.seen.has(from)) this.seen.clear();
    this.seen.set(from, seq);
    const n = typeof m.n === 'number' && Number.isFinite(m.n) ? m.n : 0;
    // Tenants watched: a list of names, or anything else meaning every tenant (the safe reading).
    const tenants = Array.isArray(m.t) && m.t.every((x) => typeof x === 'string') ? new Set(m.t as string[]) : '*';
    if (n > 0) this.interest.set(from, { until: Date.now() + this.ttlMs, tenants });
    else this.interest.delete(from);
    // A hub that starts (or reconnected) asks: answer when there is something to say.
    if (m.ask === true && this.o.followers.followers() > 0) this.announce(false);
  }

  // ------------------------------------------------------------ sending

  private onLocal(all: HubEvent[]): void {
    if (this.closed) return;
    const watched = this.watched();
    if (!watched) return;
    const batch = watched === '*' ? all : all.filter((e) => watched.has(e.tenant));
    if (batch.length === 0) return;
    const room = this.maxPending - this.pending.length;
    if (room < batch.length) {
      for (const e of batch.slice(Math.max(0, room))) this.noteDropped(e.tenant, 1, 'the other hubs are not keeping up with this hub\'s events');
      if (room > 0) this.pending.push(...batch.slice(0, room));
    } else {
      this.pending.push(...batch);
    }
    this.timer ??= setTimeout(() => { this.timer = undefined; void this.flush(); }, this.flushMs);
  }

  private noteDropped(tenant: string, n: number, reason: string): void {
    this.stats.dropped += n;
    this.gapReason = reason;
    if (this.gaps.has(tenant) || this.gaps.size < MAX_GAP_TENANTS) this.gaps.set(tenant, (this.gaps.get(tenant) ?? 0) + n);
  }

  /** Sends what is pending, in order, one message at a time (single-flight). */
  flush(): Promise<void> {
    this.sending ??= (async () => {
      try {
        while (!this.closed && (this.pending.length > 0 || this.gaps.size > 0)) {
          const batch = this.pending;
          this.pending = [];
          const msgs = pack(batch, this.stats);
          // Several messages per round trip (one statement of pg_notify calls).
          for (let i = 0; i < msgs.length; i += MESSAGES_PER_TRIP) await this.sendMany(msgs.slice(i, i + MESSAGES_PER_TRIP));
          if (this.gaps.size > 0) {
            const gaps = Object.fromEntries(this.gaps);
            const reason = this.gapReason;
            this.gaps = new Map();
            await this.sendGap({ gap: gaps, reason });
          }
        }
      } finally { this.sending = undefined; }
    })();
    return this.sending;
  }

  private async sendMany(msgs: Array<{ entries: Wire[]; count: number }>): Promise<void> {
    try {
      await this.o.bus.publishMany(EVENTS_TOPIC, msgs.map((m) => ({ e: m.entries })));
      this.stats.messages += msgs.length;
      for (const m of msgs) this.stats.forwarded += m.count;
      if (this.failing) this.o.log.info('forwarding events to the other hubs again');
      this.failing = false;
    } catch (err) {
      if (!this.failing) this.o.log.warn({ err: (err as Error).message }, 'cannot forward events to the other hubs (their followers are told how many were lost)');
      this.failing = true;
      const byTenant = new Map<string, number>();
      for (const m of msgs) for (const w of m.entries) byTenant.set(w[3], (byTenant.get(w[3]) ?? 0) + 1);
      for (const [tenant, n] of byTenant) this.noteDropped(tenant, n, 'the database was unreachable');
    }
  }

  /** A gap report; one that cannot be sent (database away) is lost with the events it counts. */
  private async sendGap(msg: Record<string, unknown>): Promise<void> {
    try {
      await this.o.bus.publish(EVENTS_TOPIC, msg);
      this.stats.messages++;
    } catch (err) {
      if (!this.failing) this.o.log.warn({ err: (err as Error).message }, 'cannot forward events to the other hubs (their followers are told how many were lost)');
      this.failing = true;
    }
  }

  // ------------------------------------------------------------ receiving

  private onRemote(m: Record<string, unknown>, from: string): void {
    if (this.closed) return;
    if (m.gap && typeof m.gap === 'object' && !Array.isArray(m.gap)) {
      // Text from another hub (or anyone who can NOTIFY) goes to followers' terminals: one line, no escapes.
      const reason = typeof m.reason === 'string' ? cleanText(m.reason.slice(0, 200)) : '';
      for (const [tenant, n] of Object.entries(m.gap as Record<string, unknown>).slice(0, MAX_GAP_TENANTS)) {
        if (typeof n === 'number' && Number.isSafeInteger(n) && n > 0 && tenant.length <= 63) this.o.followers.deliverGap(tenant, n, `${reason} (hub ${cleanText(from.slice(0, 40))})`);
      }
      return;
    }
    if (!Array.isArray(m.e)) { this.malformed(from, 1); return; }
    const out: HubEvent[] = [];
    let bad = 0;
    for (const w of m.e as unknown[]) {
      const e = decode(w);
      if (e) out.push(e); else bad++;
    }
    if (bad) this.malformed(from, bad);
    if (out.length === 0) return;
    this.stats.received += out.length;
    this.o.followers.deliverRemote(out);
  }

  private malformed(from: string, n: number): void {
    this.stats.malformed += n;
    const now = Date.now();
    if (now - this.lastMalformedLog < 60_000) return;
    this.lastMalformedLog = now;
    this.o.log.warn({ from: from.slice(0, 40), entries: n }, 'ignored malformed forwarded events from the cluster bus');
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    clearInterval(this.announceTimer);
    for (const c of this.cleanups) c();
    if (this.lastAnnounced !== '' && this.o.bus.clustered) {
      const s = ++this.announceSeq;
      void this.announcing.then(() => this.o.bus.publish(FOLLOWERS_TOPIC, { n: 0, t: [], s })).catch(() => undefined);
    }
  }
}

/** One event as sent: its payload as text, or cut when the entry alone would not fit a message. */
function encode(e: HubEvent, stats: ClusterEventsStats): { wire: Wire; bytes: number } {
  const wire: Wire = [e.id, e.type, e.agentId, e.tenant, Number(e.timeMs) || 0, e.payload.toString('utf8')];
  let bytes = Buffer.byteLength(JSON.stringify(wire));
  if (bytes > BUDGET) {
    stats.truncated++;
    wire[5] = null;
    wire[6] = e.payload.length;
    bytes = Buffer.byteLength(JSON.stringify(wire));
  }
  return { wire, bytes };
}

/** Splits events into messages of at most BUDGET bytes of entries, in order. */
function pack(events: HubEvent[], stats: ClusterEventsStats): Array<{ entries: Wire[]; count: number }> {
  const out: Array<{ entries: Wire[]; count: number }> = [];
  let cur: Wire[] = [];
  let size = 2;
  for (const e of events) {
    const { wire, bytes } = encode(e, stats);
    if (cur.length > 0 && size + bytes + 1 > BUDGET) { out.push({ entries: cur, count: cur.length }); cur = []; size = 2; }
    cur.push(wire);
    size += bytes + 1;
  }
  if (cur.length > 0) out.push({ entries: cur, count: cur.length });
  return out;
}

const str = (v: unknown, max: number, min = 0): v is string => typeof v === 'string' && v.length >= min && v.length <= max;

/** A forwarded entry back into an event, or undefined when it is not one. */
function decode(w: unknown): HubEvent | undefined {
  if (!Array.isArray(w) || w.length < 6 || w.length > 7) return undefined;
  const [id, type, agentId, tenant, timeMs, payload, cut] = w as unknown[];
  if (!str(id, 64, 1) || !str(type, 128, 1) || !str(agentId, 128) || !str(tenant, 63, 1)) return undefined;
  if (typeof timeMs !== 'number' || !Number.isFinite(timeMs)) return undefined;
  if (payload === null) {
    if (typeof cut !== 'number' || !Number.isSafeInteger(cut) || cut < 0) return undefined;
    return { id, type, agentId, tenant, timeMs, payload: Buffer.alloc(0), truncatedBytes: cut };
  }
  if (typeof payload !== 'string' || payload.length > MAX_BUS_MESSAGE) return undefined;
  return { id, type, agentId, tenant, timeMs, payload: Buffer.from(payload, 'utf8') };
}
