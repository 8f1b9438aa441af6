/**
 * The agent port's TCP listener, owned by the hub: it bounds TLS handshakes BEFORE they start.
 *
 * After a hub restart thousands of agents connect within seconds. Left to grpc-js, every one
 * starts its TLS handshake at once on the hub's one thread; each is slowed by all the others,
 * hellos miss their deadline, agents retry, and a slow moment becomes a storm. So the hub
 * accepts TCP itself and hands a connection to grpc-js (which then does TLS and HTTP/2, through
 * `createConnectionInjector`) only while fewer than `maxHandshakes` connections are between
 * accept and the answer to their first stream (welcome or refusal; a connection with no stream
 * shortly after TLS gives its slot back). The rest wait in a FIFO
 * queue, unread (pauseOnConnect: a waiting connection costs a socket and a few hundred bytes).
 * A connection that waited `queueTimeoutMs`, or arrives with `maxQueued` already waiting, is
 * closed: its agent reconnects after its jittered backoff. Node cannot stop accepting while
 * listening, so "let the kernel backlog hold them" is not available; closing early is cheaper
 * for both ends than a handshake that would miss its deadline anyway.
 *
 * Per source: one source address (an IPv4 address, or an IPv6 /64: hub/auth/source.ts) may have
 * at most `maxPerSource` connections queued or in their TLS handshake at once; past that its new
 * connections are closed at once (counted, logged at most once per source per minute). Without
 * it one client holding silent TCP connections fills every slot and the queue ahead of the real
 * agents, which then wait `slotTimeoutMs` per slot. A connection stops counting for its source
 * when TLS completes (its client holds a certificate of the hub's CA) or when it closes.
 */
import net from 'node:net';
import type { TLSSocket } from 'node:tls';
import type * as grpc from '@grpc/grpc-js';
import { sourceKey } from '../auth/source.js';

export interface HandshakeGateOptions {
  /** Connections between accept and their first stream's answer at once. */
  maxHandshakes: number;
  /** Connections waiting for a slot; past this a new one is closed at once. */
  maxQueued: number;
  /** A connection waiting longer than this is closed (its agent retries after its backoff). */
  queueTimeoutMs: number;
  /** A slot is freed after this even without an answer (the connection stays: TLS has its own handshake timeout). */
  slotTimeoutMs: number;
  /**
   * A connection that finished TLS but opened no stream within this gives its slot back (grpc-js
   * clients reconnect in the background, before their next call). @default 1000
   */
  streamGraceMs?: number;
  /**
   * Connections from one source (IPv4 address, IPv6 /64) queued or in their TLS handshake at once;
   * past this a new one from that source is closed at once. @default unbounded
   */
  maxPerSource?: number;
  /** Where closures by the per-source bound are logged: at most one line per source per `sourceLogEveryMs`. */
  log?: { warn(o: object, msg: string): void };
  /** @default 60000 */
  sourceLogEveryMs?: number;
}

/** Sources whose closures are remembered for rate-limited logging; past this they are only counted (a flood from many sources). */
const SOURCE_LOG_MAX = 10_000;

interface Entry { socket: net.Socket; key: string; source: string; counted: boolean; queuedAt: number; injectedAt?: number; securedAt?: number; startedAt?: number; timer?: NodeJS.Timeout; grace?: NodeJS.Timeout; secured: boolean; streaming: boolean; released: boolean }

/**
 * The key of a connection: its remote address and port (unique among open connections to one
 * port), written as grpc-js's call.getPeer() writes it, so a handler can name its connection.
 */
export function connectionKey(remoteAddress: string | undefined, remotePort: number | undefined): string {
  return remotePort ? `${remoteAddress ?? ''}:${remotePort}` : remoteAddress ?? '';
}

export class HandshakeGate {
  private readonly queue: Entry[] = [];
  private queueHead = 0;
  /** Connections holding a slot, by connectionKey. */
  private readonly active = new Map<string, Entry>();
  private inject: ((s: net.Socket) => void) | undefined;
  private sweeper: NodeJS.Timeout | undefined;
  /** source → its connections queued or in TLS (only with maxPerSource). */
  private readonly perSource = new Map<string, number>();
  /** Connections counted in perSource, by connectionKey (a slot may time out before TLS completes). */
  private readonly handshaking = new Map<string, Entry>();
  /** source → when its last closure line was logged, and closures since. */
  private readonly sourceLog = new Map<string, { atMs: number; since: number }>();
  /**
   * injected: handed to grpc-js; waited: had to queue (the bound was hit); dropped*: closed
   * unserved; slotTimeouts: slots freed by the timeout rather than an answer.
   */
  readonly stats = { accepted: 0, injected: 0, waited: 0, droppedFull: 0, droppedTimeout: 0, slotTimeouts: 0, peakInFlight: 0, peakQueued: 0,
    /** Closed at once because their source already had `maxPerSource` connections queued or handshaking. */
    droppedPerSource: 0,
    /** Sums (ms) and counts of the phases: waiting, handed on → TLS done, TLS done → stream, stream → answer. */
    queueMs: 0, tlsMs: 0, tlsN: 0, streamMs: 0, streamN: 0, answerMs: 0, answerN: 0 };

  constructor(readonly opts: HandshakeGateOptions, private readonly now: () => number = Date.now) {}

  get inFlight(): number { return this.active.size; }
  get queued(): number { return this.queue.length - this.queueHead; }
  /** Connections of `source` (sourceKey) queued or in their TLS handshake. */
  fromSource(source: string): number { return this.perSource.get(source) ?? 0; }

  /** Starts serving: `inject` hands a connection to grpc-js. */
  attach(inject: (s: net.Socket) => void): void {
    this.inject = inject;
    this.sweeper = setInterval(() => this.sweep(), Math.max(50, Math.min(1_000, this.opts.queueTimeoutMs / 4)));
    this.sweeper.unref();
  }

  /** A new TCP connection (paused). */
  accept(socket: net.Socket): void {
    this.stats.accepted++;
    socket.on('error', () => undefined); // a reset while queued or handshaking: nothing to do
    const max = this.opts.maxPerSource;
    const source = max === undefined ? '' : sourceKey(socket.remoteAddress);
    if (max !== undefined && this.fromSource(source) >= max) { this.stats.droppedPerSource++; this.noteSourceDrop(source); socket.destroy(); return; }
    const e: Entry = { socket, key: connectionKey(socket.remoteAddress, socket.remotePort), source, counted: false, queuedAt: this.now(), secured: false, streaming: false, released: false };
    if (this.active.size < this.opts.maxHandshakes && this.queued === 0) { this.count(e); this.start(e); return; }
    if (this.queued >= this.opts.maxQueued) { this.stats.droppedFull++; socket.destroy(); return; }
    this.count(e);
    this.stats.waited++;
    this.queue.push(e);
    if (this.queued > this.stats.peakQueued) this.stats.peakQueued = this.queued;
  }

  /** The first stream of the connection `peer` (call.getPeer()) was answered: its slot goes to the next one. */
  settle(peer: string): void {
    const e = this.active.get(peer);
    if (!e) return;
    if (e.startedAt && !e.released) { this.stats.answerMs += this.now() - e.startedAt; this.stats.answerN++; }
    this.release(e);
  }

  /** The connection `peer` opened a stream: its slot is kept until settle(). */
  started(peer: string): void {
    const h = this.handshaking.get(peer);
    if (h) this.uncount(h); // a stream means TLS is done (also should secureConnection not be seen)
    const e = this.active.get(peer);
    if (!e || e.streaming) return;
    e.streaming = true;
    e.startedAt = this.now();
    if (e.securedAt) { this.stats.streamMs += e.startedAt - e.securedAt; this.stats.streamN++; }
    clearTimeout(e.grace);
  }

  /**
   * The connection finished its TLS handshake (http2 server's secureConnection). Without a stream
   * soon after, it is a client connecting ahead of its next call: the slot goes to the next one.
   */
  secured(socket: TLSSocket): void {
    const key = connectionKey(socket.remoteAddress, socket.remotePort);
    const h = this.handshaking.get(key);
    if (h) this.uncount(h); // TLS done: no longer a handshake its source holds
    const e = this.active.get(key);
    if (!e) return;
    e.secured = true;
    e.securedAt = this.now();
    this.stats.tlsMs += e.securedAt - (e.injectedAt ?? e.securedAt);
    this.stats.tlsN++;
    if (e.streaming) return;
    e.grace = setTimeout(() => this.release(e), this.opts.streamGraceMs ?? 1_000);
    e.grace.unref();
  }

  close(): void {
    clearInterval(this.sweeper);
    for (let i = this.queueHead; i < this.queue.length; i++) this.queue[i]!.socket.destroy();
    this.queue.length = 0;
    this.queueHead = 0;
    for (const e of this.active.values()) { clearTimeout(e.timer); clearTimeout(e.grace); }
    this.active.clear();
    this.handshaking.clear();
    this.perSource.clear();
    this.sourceLog.clear();
    this.inject = undefined;
  }

  private start(e: Entry): void {
    if (!this.inject) { e.socket.destroy(); return; }
    this.active.set(e.key, e);
    if (this.active.size > this.stats.peakInFlight) this.stats.peakInFlight = this.active.size;
    this.stats.injected++;
    e.injectedAt = this.now();
    this.stats.queueMs += e.injectedAt - e.queuedAt;
    e.timer = setTimeout(() => {
      if (e.released) return;
      // Freed, not closed: on a loaded machine a handshake can take that long, and closing it
      // would make its agent start over (a storm feeding itself). A silent client is closed by
      // TLS's own handshake timeout; it no longer holds a slot.
      this.stats.slotTimeouts++;
      this.release(e);
    }, this.opts.slotTimeoutMs);
    e.timer.unref();
    e.socket.once('close', () => { this.uncount(e); this.release(e); });
    try {
      this.inject(e.socket);
    } catch {
      e.socket.destroy();
      this.uncount(e);
      this.release(e);
    }
  }

  private release(e: Entry): void {
    if (e.released) return;
    e.released = true;
    clearTimeout(e.timer);
    clearTimeout(e.grace);
    if (this.active.get(e.key) === e) this.active.delete(e.key);
    this.drain();
  }

  private drain(): void {
    while (this.active.size < this.opts.maxHandshakes && this.queued > 0) {
      const e = this.queue[this.queueHead++]!;
      if (this.queueHead > 1024 && this.queueHead * 2 > this.queue.length) { this.queue.splice(0, this.queueHead); this.queueHead = 0; }
      // A waiting connection is not read from, so one its client closed is seen once handed on (and ends at once).
      if (e.released || e.socket.destroyed) { this.uncount(e); continue; }
      if (this.now() - e.queuedAt > this.opts.queueTimeoutMs) { this.stats.droppedTimeout++; e.socket.destroy(); this.uncount(e); continue; }
      this.start(e);
    }
  }

  /** Closes connections that waited too long (their agents back off instead of timing out later). */
  private sweep(): void {
    const t = this.now();
    for (let i = this.queueHead; i < this.queue.length; i++) {
      const e = this.queue[i]!;
      if (t - e.queuedAt <= this.opts.queueTimeoutMs) break; // FIFO: the rest are younger
      if (!e.released && !e.socket.destroyed) { this.stats.droppedTimeout++; e.socket.destroy(); }
      e.released = true;
      this.uncount(e);
    }
    this.drain();
    this.flushSourceLog(t);
  }

  /** The connection now counts for its source (only with maxPerSource). */
  private count(e: Entry): void {
    if (this.opts.maxPerSource === undefined) return;
    e.counted = true;
    this.perSource.set(e.source, this.fromSource(e.source) + 1);
    this.handshaking.set(e.key, e);
  }

  private uncount(e: Entry): void {
    if (!e.counted) return;
    e.counted = false;
    const n = this.fromSource(e.source) - 1;
    if (n > 0) this.perSource.set(e.source, n); else this.perSource.delete(e.source);
    if (this.handshaking.get(e.key) === e) this.handshaking.delete(e.key);
  }

  /** A connection of `source` closed by the per-source bound: one line per source per minute at most. */
  private noteSourceDrop(source: string): void {
    const now = this.now();
    let s = this.sourceLog.get(source);
    if (!s) {
      if (this.sourceLog.size >= SOURCE_LOG_MAX) return; // counted in stats (and the summary line), not logged per source
      this.sourceLog.set(source, (s = { atMs: -Infinity, since: 0 }));
    }
    s.since++;
    if (now - s.atMs < (this.opts.sourceLogEveryMs ?? 60_000)) return;
    this.logSource(source, s, now);
  }

  private logSource(source: string, s: { atMs: number; since: number }, now: number): void {
    this.opts.log?.warn({ source, closed: s.since, maxHandshakesPerAddress: this.opts.maxPerSource },
      'agent connections from one source address closed at once: it already had agentChannel.maxHandshakesPerAddress connections queued or in their TLS handshake (behind a NAT, raise it)');
    s.atMs = now;
    s.since = 0;
  }

  /** Sources quiet for a logging period are forgotten; closures not yet logged get their line first. */
  private flushSourceLog(now: number): void {
    const every = this.opts.sourceLogEveryMs ?? 60_000;
    for (const [source, s] of this.sourceLog) {
      if (now - s.atMs < every) continue;
      if (s.since > 0) this.logSource(source, s, now);
      else this.sourceLog.delete(source);
    }
  }
}

/**
 * One summary line per `everyMs` while connections wait or are closed unserved (never a line per
 * connection: a storm has thousands). Returns the timer's stop.
 */
export function logHandshakeSummary(gate: HandshakeGate, log: { warn(o: object, msg: string): void }, everyMs = 10_000): () => void {
  let last = { ...gate.stats };
  const timer = setInterval(() => {
    const s = gate.stats;
    const d = { waited: s.waited - last.waited, droppedFull: s.droppedFull - last.droppedFull, droppedTimeout: s.droppedTimeout - last.droppedTimeout, droppedPerSource: s.droppedPerSource - last.droppedPerSource, slotTimeouts: s.slotTimeouts - last.slotTimeouts };
    last = { ...s };
    if (d.waited + d.droppedFull + d.droppedTimeout + d.droppedPerSource + d.slotTimeouts === 0) return;
    const avg = (ms: number, n: number) => (n ? Math.round(ms / n) : 0);
    log.warn({ ...d, avgQueueMs: avg(s.queueMs, s.injected), avgTlsMs: avg(s.tlsMs, s.tlsN), avgToStreamMs: avg(s.streamMs, s.streamN), avgToAnswerMs: avg(s.answerMs, s.answerN), injected: s.injected, inFlight: gate.inFlight, queued: gate.queued, peakQueued: s.peakQueued, maxHandshakes: gate.opts.maxHandshakes },
      'agent connections waited for a handshake slot (more connecting at once than agentChannel.maxHandshakes); dropped ones retry after their backoff');
  }, everyMs);
  timer.unref();
  return () => clearInterval(timer);
}

export interface AgentListener {
  port: number;
  /** Takes no new connection (hub shutdown: first step); those already served go on until close(). */
  stopAccepting(): void;
  close(): Promise<void>;
}

/**
 * Listens on host:port for the agent port and feeds `server` through a connection injector
 * bounded by `gate`. The injector's HTTP/2 server is one of grpc-js's servers, so the
 * flow-control and TLS-audit hooks (which walk them) apply to it as to a bound port.
 */
export async function listenAgentPort(server: grpc.Server, creds: grpc.ServerCredentials, host: string, port: number, gate: HandshakeGate): Promise<AgentListener> {
  const injector = server.createConnectionInjector(creds);
  const h2 = [...(server as unknown as { http2Servers?: Map<net.Server, unknown> }).http2Servers?.keys() ?? []].at(-1);
  h2?.on('secureConnection', (s: TLSSocket) => gate.secured(s));
  gate.attach((s) => injector.injectConnection(s));
  // pauseOnConnect: nothing is read from a waiting connection; TLS resumes it when injected.
  const tcp = net.createServer({ pauseOnConnect: true, noDelay: true }, (s) => gate.accept(s));
  await new Promise<void>((resolve, reject) => {
    tcp.once('error', reject);
    tcp.listen({ host, port, backlog: 2048 }, () => { tcp.off('error', reject); resolve(); });
  });
  tcp.on('error', () => undefined);
  const bound = (tcp.address() as net.AddressInfo).port;
  return {
    port: bound,
    stopAccepting: () => {
      tcp.close(); // new connections are refused by the kernel from here on
      gate.close(); // queued ones (not yet in TLS) are dropped: they retry after their backoff
    },
    // Stops listening at once; connections already served end with the grpc-js server (forceShutdown).
    close: async () => {
      gate.close();
      injector.destroy();
      tcp.close();
    },
  };
}
