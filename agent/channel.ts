/**
 * The agent's side of the AgentChannel stream: one live connection at a time, reconnect with
 * jittered exponential backoff, a single-flight loop, make-before-break switching when the
 * certificate is renewed, and events re-sent until the hub acknowledges them.
 *
 * Events wait in the agent's durable outbox (agent/outbox/) when one is given: publish()
 * appends to it, the flush loop reads batches from it, EventAcks move its cursor and a
 * reconnect rewinds it to the first unacknowledged event. Without an outbox they wait in memory
 * (bounded by maxQueued, oldest dropped first), as before.
 */
import * as grpc from '@grpc/grpc-js';
import { EventEmitter } from 'node:events';
import { channelV1 } from '../common/proto-channel.js';
import { AGENT_FEATURES, EVENT_ACK_THROUGH, RESULT_OUTPUT } from '../common/features.js';
import { secureChannel } from '../common/grpc-tls.js';
import { backoffDelay, retryAfterDelay, retryAfterMs, DEFAULT_MAX_BACKOFF_MS, RETRYABLE_CODES } from '../common/backoff.js';
import { fromGrpcError, CODE_KEY } from '../common/grpc-errors.js';
import { TrellisError } from '../common/errors.js';
import { wrongPortForAgent } from '../common/connect-diagnosis.js';
import type { Logger } from '../common/log.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';
import type { Outbox, OutboxBatch } from './outbox/index.js';
import type { HubAddresses } from './hub-addresses.js';

/**
 * - connecting: no stream yet, or reconnecting after a failure;
 * - ready: a stream is open and the hub has welcomed the agent;
 * - closed: stopped for good (close() called, or a fatal refusal such as revocation).
 */
export type ChannelState = 'connecting' | 'ready' | 'closed';

export interface Credentials { caPem: string; keyPem: string; certPem: string }

export interface ChannelOptions {
  target: string;
  /** Several hubs (a cluster): connect to addresses.current, fail over to the next (agent/hub-addresses.ts); `target` is then unused. */
  addresses?: HubAddresses;
  credentials: () => Credentials;
  hello: () => T.Hello;
  onAction: (req: T.ActionRequest__Output) => void;
  onCancel: (executionId: string) => void;
  /** The hub's config for this agent (sensors, edge rules, sealed values); sent after welcome and on change. */
  onConfig?: (config: T.AgentConfig__Output) => void;
  /** More to say in each heartbeat (the edge rules' counters). */
  heartbeat?: () => Partial<T.Heartbeat>;
  log: Logger;
  /** Most events per batch. @default 500 */
  batchSize?: number;
  /** Most unacknowledged batches in flight. @default 16 */
  maxInflight?: number;
  /** Without an outbox: most events held in memory; older ones are dropped and counted. @default 100000 */
  maxQueued?: number;
  /** Durable event store; events survive hub outages and agent restarts. @default none (in memory) */
  outbox?: Outbox;
  /** Cap of the reconnect backoff (full jitter: each wait is uniform in [0, min(cap, 500 ms * 2^attempt)]). @default 10000 */
  maxBackoffMs?: number;
  /**
   * Called when a connection attempt fails in a way TLS may explain: returns an error naming the
   * cause and the fix (e.g. the hub's CA was rotated while this agent was offline), or undefined.
   */
  diagnose?: (err: Error) => Promise<Error | undefined>;
  /**
   * The hub refused the certificate as replaced by a renewal whose answer never arrived (e.g. the
   * hub restarted mid-renewal): renew again with it (the hub allows that until the replacement
   * connects). Resolves true when new credentials are in place and reconnecting can help.
   */
  onSuperseded?: () => Promise<boolean>;
}

/** Unacknowledged action results kept for re-sending (a result is a few hundred bytes). */
export const MAX_UNACKED_RESULTS = 10_000;

/**
 * Keepalive of the agent's stream. A ping every 30 s finds a dead hub or a broken NAT mapping;
 * the 20 s answer deadline is long on purpose: a hub stalled for a few seconds (a GC pause, a
 * reconnect storm) must not read as a dead connection, or every agent reconnects at once and
 * the slow moment becomes a storm. Between pings the heartbeat keeps the connection busy.
 */
export const AGENT_CHANNEL_OPTIONS = {
  'grpc.keepalive_time_ms': 30_000,
  'grpc.keepalive_timeout_ms': 20_000,
  'grpc.keepalive_permit_without_calls': 1,
} as const;

class Connection {
  readonly client: grpc.Client & { Connect: (md?: grpc.Metadata) => grpc.ClientDuplexStream<T.AgentMessage, T.HubMessage__Output> };
  readonly call: grpc.ClientDuplexStream<T.AgentMessage, T.HubMessage__Output>;
  readonly welcome: Promise<T.Welcome__Output>;
  readonly closed: Promise<Error | undefined>;
  readonly certPem: string;
  /** The credentials the client was built with (a reused client must match them all). */
  readonly credsKey: string;
  private ended = false;

  /** `reuse`: the client (and its TLS connection) of an attempt the hub shed, with the same credentials. */
  constructor(target: string, creds: Credentials, hello: T.Hello, onMessage: (m: T.HubMessage__Output, c: Connection) => void, reuse?: grpc.Client) {
    this.certPem = creds.certPem;
    this.credsKey = credsKey(creds);
    if (reuse) {
      this.client = reuse as Connection['client'];
    } else {
      const tls = secureChannel(target, creds.caPem, creds.keyPem, creds.certPem);
      this.client = new channelV1.AgentChannel(target, tls.creds, { ...tls.options, ...AGENT_CHANNEL_OPTIONS }) as unknown as Connection['client'];
    }
    this.call = this.client.Connect();
    let resolveWelcome!: (w: T.Welcome__Output) => void, rejectWelcome!: (e: Error) => void;
    this.welcome = new Promise((res, rej) => { resolveWelcome = res; rejectWelcome = rej; });
    this.welcome.catch(() => undefined);
    this.closed = new Promise((resolve) => {
      this.call.on('error', (err) => { rejectWelcome(err); resolve(err); });
      this.call.on('status', (s: grpc.StatusObject) => {
        if (s.code === grpc.status.OK) { const e = new TrellisError('TRELLIS_E_UNAVAILABLE', 'the hub closed the stream'); rejectWelcome(e); resolve(undefined); }
      });
    });
    this.call.on('data', (m: T.HubMessage__Output) => {
      if (m.msg === 'welcome' && m.welcome) resolveWelcome(m.welcome);
      else onMessage(m, this);
    });
    // The features this channel implements go with every hello, whatever the caller's hello holds.
    this.call.write({ hello: { ...hello, features: [...AGENT_FEATURES] } });
  }

  /** What the hub of this stream listed in its Welcome (common/features.ts); empty until then. */
  features: ReadonlySet<string> = new Set();

  write(m: T.AgentMessage): boolean {
    if (this.ended) return false;
    // A result carrying output, to a hub that does not take it (an older hub, met after the
    // output was held): the output goes first in messages of its own, then the bare result.
    const out = m.result?.output;
    if (out && out.length > 0 && !this.features.has(RESULT_OUTPUT)) {
      for (const o of out) this.call.write({ output: o });
      return this.call.write({ result: { ...m.result, output: [] } });
    }
    return this.call.write(m);
  }

  /** Half-close: the hub finishes what it has and closes its side. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.call.end();
    setTimeout(() => this.destroy(), 5_000).unref();
  }

  destroy(): void {
    this.ended = true;
    this.call.cancel();
    this.client.close();
  }

  /** Ends the call but keeps the client: its TLS connection serves the next attempt (no new handshake for the hub). */
  detachClient(): grpc.Client {
    this.ended = true;
    this.call.cancel();
    return this.client;
  }
}

/** The hub refused a certificate replaced by a renewal (agent-channel.ts identifyPeer). */
function isSuperseded(err: unknown): boolean {
  const tcode = (err as grpc.ServiceError).metadata?.get(CODE_KEY)?.[0];
  return tcode === 'TRELLIS_E_CERT_REVOKED' && /replaced by a renewal/.test(String((err as Error).message));
}

function credsKey(c: Credentials): string { return `${c.caPem}\0${c.keyPem}\0${c.certPem}`; }

/** The hub shed the stream to bound its admissions (RESOURCE_EXHAUSTED with a retry-after). */
function isShed(err: unknown): boolean {
  return (err as { code?: number } | undefined)?.code === grpc.status.RESOURCE_EXHAUSTED && retryAfterMs(err) !== undefined;
}

/** Errors after which reconnecting cannot help. */
function isFatal(err: unknown): boolean {
  const code = (err as { code?: number }).code;
  const tcode = (err as grpc.ServiceError).metadata?.get(CODE_KEY)?.[0];
  if (tcode === 'TRELLIS_E_CERT_REVOKED' || tcode === 'TRELLIS_E_CERT_EXPIRED') return true;
  return code === grpc.status.PERMISSION_DENIED || code === grpc.status.UNAUTHENTICATED;
}

export class HubChannel extends EventEmitter {
  state: ChannelState = 'connecting';
  private current?: Connection;
  private stopped = false;
  private loopPromise?: Promise<void>;
  private sleepTimer?: NodeJS.Timeout;
  /** The client of the last failed attempt or lost stream, kept for the next attempt while the credentials are the same. */
  private spare?: { client: grpc.Client; credsKey: string };
  private wake?: () => void;
  private heartbeatTimer?: NodeJS.Timeout;
  /** Events not yet sent: pending[pendingHead..] (a head index instead of shifting the array). */
  private pending: T.Event[] = [];
  private pendingHead = 0;
  /** Sent, unacknowledged batches by seq (with their outbox batch when there is an outbox). */
  private inflight = new Map<number, { events: T.Event[]; batch?: OutboxBatch }>();
  private seq = 0;
  private outQueue: T.AgentMessage[] = [];
  /**
   * Results sent or queued and not yet acknowledged by the hub (ResultAck), oldest first. They go
   * again on every new stream: a hub killed before it wrote a result does not lose it.
   */
  private unackedResults = new Map<string, T.AgentMessage>();
  private closedResolve!: (e: Error | undefined) => void;
  /** Resolves (never rejects) with the error that closed the channel, if any. */
  readonly closedPromise: Promise<Error | undefined>;
  /** eventsDropped: dropped from the in-memory queue; eventsRefused: refused by a full outbox. */
  /** eventsRefused: by a full outbox; eventsRefusedByHub: types this agent may not publish (acknowledged, never published). */
  stats = { connects: 0, shed: 0, reused: 0, eventsSent: 0, eventsAcked: 0, eventsDropped: 0, eventsRefused: 0, eventsRefusedByHub: 0, resultsResent: 0, resultsDropped: 0 };
  private refusedLogMs = 0;

  constructor(private readonly opts: ChannelOptions) {
    super();
    this.closedPromise = new Promise((r) => { this.closedResolve = r; });
  }

  start(): void {
    this.loopPromise ??= this.loop();
  }

  /** The hub address in use (the current one of several, with `addresses`). */
  get target(): string { return this.opts.addresses?.current ?? this.opts.target; }

  /**
   * Several hubs: the current address failed, move to the next one (its client is not reused).
   * True when the next attempt should go at once (the round is not over), false when every
   * address failed since the last success and the backoff applies.
   */
  private failOver(): boolean {
    const a = this.opts.addresses;
    if (!a || a.all.length < 2) return false;
    const from = a.current;
    const roundOver = a.failed();
    this.spare?.client.close();
    this.spare = undefined;
    this.opts.log.info({ from, to: a.current }, 'trying the next hub address');
    return !roundOver;
  }

  private setState(s: ChannelState, detail?: unknown): void {
    if (this.state === s) return;
    this.state = s;
    this.emit('state', s, detail);
  }

  /** The connection attempt waiting for its welcome, if any (close() cancels it). */
  private attempting: Connection | undefined;

  private async loop(): Promise<void> {
    let attempt = 0;
    while (!this.stopped) {
      let conn = this.current;
      if (!conn) {
        this.setState('connecting');
        const creds = this.opts.credentials();
        const spare = this.takeSpare(credsKey(creds));
        if (spare) this.stats.reused++;
        conn = new Connection(this.target, creds, this.opts.hello(), (m, c) => this.onMessage(m, c), spare);
        this.attempting = conn;
        try {
          const welcome = await conn.welcome.finally(() => { this.attempting = undefined; });
          if (this.stopped) { conn.destroy(); break; }
          this.adopt(conn, welcome);
          this.opts.addresses?.succeeded();
          attempt = 0;
        } catch (err) {
          // The next attempt reuses the client (grpc-js reconnects it when its connection is gone):
          // shed by a busy hub, the TLS connection is still up and the hub is spared a second
          // handshake; with the hub down, no TLS context is built again per attempt.
          this.park(conn, err);
          if (this.stopped) break;
          if (isSuperseded(err) && this.opts.onSuperseded && await this.opts.onSuperseded().catch(() => false)) {
            this.opts.log.warn('the hub had replaced this certificate by a renewal whose answer was lost; renewed again');
            continue;
          }
          if (isFatal(err)) { this.fail(err); break; }
          // The address answers TLS but has no AgentChannel: the admin port (or another gRPC server). Retrying cannot help.
          if ((err as { code?: number }).code === grpc.status.UNIMPLEMENTED) { this.fail(wrongPortForAgent(this.target, err), 'wrong hub port; not reconnecting'); break; }
          // Shed: the hub named when to come back (jittered); the exponential backoff is for
          // failures, and does not grow on a shed, or shed agents would drift to the cap.
          if (isShed(err)) { const delay = retryAfterDelay(retryAfterMs(err)!); this.shed(delay); await this.sleep(delay); continue; }
          if (this.failOver()) { this.opts.log.debug({ err: (err as Error).message }, 'connection attempt failed (transport detail)'); continue; }
          const delay = this.retryDelay(err, attempt++);
          const why = await this.diagnosed(err as Error);
          if (this.stopped) break;
          this.opts.log.debug({ err: (err as Error).message }, 'connection attempt failed (transport detail)');
          if ((why as TrellisError | undefined)?.code === 'TRELLIS_E_WRONG_PORT') { this.fail(why, 'wrong hub port; not reconnecting'); break; }
          if (why) this.opts.log.error({ code: (why as { code?: string }).code, err: why.message, retryInMs: delay }, 'cannot connect to the hub');
          else this.opts.log.warn({ err: fromGrpcError(err).message, retryInMs: delay }, 'cannot connect to the hub; retrying');
          if (why) this.emit('diagnosis', why);
          await this.sleep(delay);
          continue;
        }
      }
      const err = await conn.closed;
      if (this.current !== conn) continue; // replaced by a newer connection (certificate switch)
      this.current = undefined;
      clearInterval(this.heartbeatTimer);
      this.park(conn, err);
      if (this.stopped) break;
      if (err && isFatal(err)) { this.fail(err); break; }
      const code = (err as { code?: number } | undefined)?.code;
      if (err && code !== undefined && !RETRYABLE_CODES.has(code)) this.opts.log.error({ code, err: err.message }, 'unexpected stream error; reconnecting');
      // A lost stream is usually lost by every agent at once (hub restart, network blip): even
      // the first reconnect waits a random part of a second, so they do not all come back together.
      attempt = Math.max(attempt, 1);
      const delay = this.retryDelay(err, attempt++);
      if (err) this.opts.log.debug({ err: err.message }, 'stream ended (transport detail)');
      this.opts.log.warn({ err: err ? fromGrpcError(err).message : 'stream closed', retryInMs: delay }, 'disconnected from the hub');
      this.setState('connecting', err);
      await this.sleep(delay);
    }
  }

  /**
   * The wait before the next attempt: full-jitter backoff, and when the hub shed the stream with
   * a retry-after, at least that (jittered up to twice it, so the shed agents do not return together).
   */
  private retryDelay(err: unknown, attempt: number): number {
    const backoff = backoffDelay(attempt, { maxMs: this.opts.maxBackoffMs ?? DEFAULT_MAX_BACKOFF_MS });
    const ra = (err as { code?: number } | undefined)?.code === grpc.status.RESOURCE_EXHAUSTED ? retryAfterMs(err) : undefined;
    return ra === undefined ? backoff : Math.max(backoff, retryAfterDelay(ra));
  }

  /** After a retryable failure (or a stream that just ended) the client is kept for the next attempt; otherwise it is closed. */
  private park(conn: Connection, err: unknown): void {
    if (!this.stopped && (!err || RETRYABLE_CODES.has((err as { code?: number }).code ?? -1))) this.spare = { client: conn.detachClient(), credsKey: conn.credsKey };
    else conn.destroy();
  }

  /** The client of a shed attempt, if its credentials are still the current ones (else it is closed). */
  private takeSpare(key: string): grpc.Client | undefined {
    const s = this.spare;
    this.spare = undefined;
    if (!s) return undefined;
    if (s.credsKey === key) return s.client;
    s.client.close();
    return undefined;
  }

  /** The hub is shedding load (RESOURCE_EXHAUSTED with retry-after): not a fault, logged at info. */
  private shed(delay: number): void {
    this.stats.shed++;
    this.opts.log.info({ retryInMs: delay }, 'the hub is busy admitting other agents; retrying later');
    this.emit('shed', delay);
  }

  private lastDiagnosisMs = 0;
  private lastDiagnosis: Error | undefined;

  /** A TLS failure explained (at most one probe per 30 s; the last answer is reused in between). */
  private async diagnosed(err: Error): Promise<Error | undefined> {
    if (!this.opts.diagnose) return undefined;
    const now = Date.now();
    if (now - this.lastDiagnosisMs < 30_000) return this.lastDiagnosis;
    this.lastDiagnosisMs = now;
    this.lastDiagnosis = await this.opts.diagnose(err).catch(() => undefined);
    return this.lastDiagnosis;
  }

  private fail(err: unknown, msg = 'the hub refused this agent; not reconnecting'): void {
    const e = fromGrpcError(err);
    this.opts.log.error({ code: e.code, err: e.message }, msg);
    this.stopped = true;
    this.spare?.client.close();
    this.spare = undefined;
    this.setState('closed', e);
    this.closedResolve(e);
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      this.wake = resolve;
      this.sleepTimer = setTimeout(resolve, ms);
    });
  }

  private adopt(conn: Connection, welcome: T.Welcome__Output): void {
    conn.features = new Set(welcome.features ?? []);
    const old = this.current;
    this.current = conn;
    this.stats.connects++;
    // Anything not acknowledged goes again, first, on the new stream; the hub drops duplicates.
    if (this.opts.outbox) {
      this.opts.outbox.rewind();
    } else {
      const unacked = [...this.inflight.entries()].sort((a, b) => a[0] - b[0]).flatMap(([, b]) => b.events);
      this.pending = unacked.concat(this.pending.slice(this.pendingHead));
      this.pendingHead = 0;
    }
    this.inflight.clear();
    clearInterval(this.heartbeatTimer);
    const every = Math.max(1000, welcome.heartbeatIntervalMs || 10_000);
    this.heartbeatTimer = setInterval(() => this.current?.write({ heartbeat: { ...this.opts.heartbeat?.(), sentAtMs: Date.now() } }), every);
    this.heartbeatTimer.unref();
    old?.end();
    // Queued starts and outputs first, then every unacknowledged result (each once), so an
    // execution's output still precedes its result.
    const queued = this.outQueue;
    this.outQueue = [];
    for (const m of queued) if (!m.result) conn.write(m);
    for (const m of this.unackedResults.values()) { conn.write(m); this.stats.resultsResent++; }
    this.opts.log.info({ agentId: welcome.agentId, tenant: welcome.tenant }, 'connected to the hub');
    this.setState('ready');
    this.emit('welcome', welcome);
    this.flush();
  }

  private onMessage(m: T.HubMessage__Output, c: Connection): void {
    switch (m.msg) {
      case 'action': if (m.action) this.opts.onAction(m.action); break;
      case 'cancel': if (m.cancel) this.opts.onCancel(m.cancel.executionId); break;
      case 'config': if (m.config) this.opts.onConfig?.(m.config); break;
      case 'eventAck': {
        if (!m.eventAck || c !== this.current) break;
        // A hub that listed EVENT_ACK_THROUGH acknowledges every batch up to seq (they went out in
        // seq order, and the map keeps that order); any other, that batch only.
        const upTo = m.eventAck.seq, through = c.features.has(EVENT_ACK_THROUGH);
        let events = 0;
        for (const [seq, sent] of this.inflight) {
          if (seq > upTo) break;
          if (!through && seq !== upTo) continue;
          this.inflight.delete(seq);
          if (sent.batch) this.opts.outbox?.ack(sent.batch);
          events += sent.events.length;
        }
        if (events > 0) {
          this.stats.eventsAcked += events;
          if (m.eventAck.refused) this.hubRefused(m.eventAck.refused, m.eventAck.refusedTypes);
          this.emit('acked', events);
          this.flush();
        }
        break;
      }
      case 'caBundle': if (m.caBundle) this.emit('caBundle', m.caBundle.certificates, m.caBundle); break;
      case 'resultAck': for (const id of m.resultAck?.executionIds ?? []) this.unackedResults.delete(id); break;
      default: break;
    }
  }

  /** The hub refused events of types this agent may not publish: counted, logged at most once a minute. */
  private hubRefused(n: number, types: string[]): void {
    this.stats.eventsRefusedByHub += n;
    const now = Date.now();
    if (now - this.refusedLogMs < 60_000) return;
    this.refusedLogMs = now;
    this.opts.log.warn({ refused: n, total: this.stats.eventsRefusedByHub, types: types.slice(0, 8) },
      'the hub refused events of types this agent may not publish (only core.*, trellis.execution and its configured sensors\' triggers); they are dropped');
  }

  /** Sends an action output or result; held in memory while disconnected. */
  send(m: T.AgentMessage): void {
    const resultId = m.result?.executionId;
    if (resultId) {
      this.unackedResults.delete(resultId);
      this.unackedResults.set(resultId, m);
      if (this.unackedResults.size > MAX_UNACKED_RESULTS) { // a hub that never acknowledges (an older hub): keep the newest
        const oldest = this.unackedResults.keys().next().value as string;
        this.unackedResults.delete(oldest);
        this.stats.resultsDropped++;
      }
    }
    if (this.current && this.state !== 'closed') { this.current.write(m); return; }
    if (resultId) return; // goes with the unacknowledged results on the next stream
    if (this.outQueue.length < 10_000) this.outQueue.push(m);
  }

  /** Whether the hub of the current stream listed `feature` in its Welcome (common/features.ts). */
  hubHas(feature: string): boolean {
    return !!this.current && this.state !== 'closed' && this.current.features.has(feature);
  }

  /** Results the hub has not yet acknowledged. */
  get unackedResultCount(): number { return this.unackedResults.size; }

  /**
   * Queues events for delivery; they are re-sent until the hub acknowledges them. With an
   * outbox, a full outbox refuses the events that do not fit (counted in stats.eventsRefused).
   */
  publish(events: T.Event[]): { accepted: number; refused: number } {
    if (this.opts.outbox) {
      const r = this.opts.outbox.append(events);
      this.stats.eventsRefused += r.refused;
      if (r.accepted > 0) this.flush();
      return r;
    }
    const max = this.opts.maxQueued ?? 100_000;
    for (const e of events) this.pending.push(e);
    const queued = this.pending.length - this.pendingHead;
    if (queued > max) {
      const drop = queued - max;
      this.pendingHead += drop;
      this.stats.eventsDropped += drop;
    }
    this.flush();
    return { accepted: events.length, refused: 0 };
  }

  /** Events not yet acknowledged by the hub. */
  get backlog(): number {
    if (this.opts.outbox) return this.opts.outbox.stats.queued;
    let n = this.pending.length - this.pendingHead;
    for (const b of this.inflight.values()) n += b.events.length;
    return n;
  }

  private flush(): void {
    const conn = this.current;
    if (!conn || this.state !== 'ready') return;
    const size = this.opts.batchSize ?? 500;
    const maxInflight = this.opts.maxInflight ?? 16;
    const outbox = this.opts.outbox;
    if (outbox) {
      while (this.inflight.size < maxInflight) {
        const batch = outbox.read(size);
        if (!batch) break;
        const seq = ++this.seq;
        this.inflight.set(seq, { events: batch.events, batch });
        this.stats.eventsSent += batch.events.length;
        conn.write({ events: { seq, events: batch.events } });
      }
      return;
    }
    while (this.pending.length > this.pendingHead && this.inflight.size < maxInflight) {
      const batch = this.pending.slice(this.pendingHead, this.pendingHead + size);
      this.pendingHead += batch.length;
      const seq = ++this.seq;
      this.inflight.set(seq, { events: batch });
      this.stats.eventsSent += batch.length;
      conn.write({ events: { seq, events: batch } });
    }
    // Compact once the consumed head dominates, so the array does not grow without bound.
    if (this.pendingHead > 4096 && this.pendingHead * 2 > this.pending.length) {
      this.pending = this.pending.slice(this.pendingHead);
      this.pendingHead = 0;
    }
  }

  /** Make-before-break: open a stream with the current credentials, then retire the old one. */
  async reconnectWithNewCredentials(): Promise<void> {
    if (this.stopped) return;
    const conn = new Connection(this.target, this.opts.credentials(), this.opts.hello(), (m, c) => this.onMessage(m, c));
    try {
      const welcome = await conn.welcome;
      if (this.stopped) { conn.destroy(); return; }
      this.adopt(conn, welcome);
      this.wake?.();
    } catch (err) {
      conn.destroy();
      throw fromGrpcError(err);
    }
  }

  /** The certificate of the live stream, if any (after a renewal: old until the switch succeeded). */
  get connectedCert(): string | undefined { return this.current?.certPem; }

  /** Sends a unary Renew over the current credentials. */
  async renew(csr: string, timeoutMs = 15_000): Promise<T.RenewResponse__Output> {
    const c = this.opts.credentials();
    const tls = secureChannel(this.target, c.caPem, c.keyPem, c.certPem);
    const client = new channelV1.AgentChannel(this.target, tls.creds, tls.options);
    try {
      return await new Promise((resolve, reject) => client.Renew({ csr }, { deadline: Date.now() + timeoutMs }, (err, r) => (err ? reject(fromGrpcError(err)) : resolve(r!))));
    } finally {
      client.close();
    }
  }

  /** Drain → close: stop reconnecting, end the stream. */
  async close(): Promise<void> {
    if (this.stopped && this.state === 'closed') return;
    this.stopped = true;
    clearTimeout(this.sleepTimer);
    this.wake?.();
    clearInterval(this.heartbeatTimer);
    this.spare?.client.close();
    this.spare = undefined;
    // An attempt still waiting for its welcome (its connection may sit in the hub's handshake
    // queue for a minute) is cancelled: close() does not wait for it.
    this.attempting?.destroy();
    this.attempting = undefined;
    const conn = this.current;
    this.current = undefined;
    conn?.end();
    conn?.destroy();
    await this.loopPromise;
    this.setState('closed');
    this.closedResolve(undefined);
  }
}
