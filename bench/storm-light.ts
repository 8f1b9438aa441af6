/**
 * A lighter simulated agent for bench/storm.ts (issue 13 allows one "as long as each is its own
 * mTLS connection with its own certificate speaking the real protocol"): node:tls + node:http2
 * directly instead of a grpc-js channel per agent, which cost the client processes more CPU per
 * connect than the hub spent admitting the agent (the cores are shared, so that was storm time).
 *
 * What stays real: one TLS 1.3 connection per agent with its own key and certificate, the hub
 * certificate checked against the CA (and the IP dialed, as common/grpc-tls.ts does), HTTP/2
 * with ALPN h2, the AgentChannel.Connect gRPC stream (headers, length-prefixed protobuf frames,
 * trailers), a hello, the welcome decoded, heartbeats at the hub's interval and keepalive pings,
 * and the real agent's reconnect policy (agent/channel.ts): full-jitter backoff from
 * common/backoff.ts, the hub's retry-after on a shed stream (the connection kept for the next
 * attempt), refusals of the certificate final.
 * What is cut: per-agent TLS context rebuilt per attempt (one per agent, built once), protobuf
 * encoding per message (the hello and heartbeat frames are encoded once per process or tick),
 * grpc-js's resolver/subchannel/load-balancer objects and their timers (one process-wide tick
 * sends heartbeats and pings), decoding anything after the welcome (counted, not parsed), and
 * the TLS and HTTP/2 objects of an attempt whose TCP connection is refused (TLS starts on the TCP
 * connection once it is up: while the hub restarts, thousands of refused attempts per second cost
 * the client processes, on the hub's cores, little more than the refused sockets).
 */
import http2 from 'node:http2';
import tls from 'node:tls';
import net, { isIP } from 'node:net';
import { EventEmitter } from 'node:events';
import type protobuf from 'protobufjs';
import { loadChannelRoot } from '../common/proto-channel.js';
import { backoffDelay, retryAfterDelay, MAX_RETRY_AFTER_MS, RETRY_AFTER_KEY, RETRYABLE_CODES, DEFAULT_MAX_BACKOFF_MS } from '../common/backoff.js';
import { IP_TARGET_SNI } from '../common/grpc-tls.js';
import { parseHostPort } from '../common/grpc-options.js';
import type { SimIdentity } from './simagent.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const PATH = '/trellis.v1.AgentChannel/Connect';
/** gRPC status codes used here (numeric, as on the wire). */
const UNAVAILABLE = 14, RESOURCE_EXHAUSTED = 8, PERMISSION_DENIED = 7, UNAUTHENTICATED = 16;
const CODE_KEY = 'trellis-error-code';

interface Status { code: number; message: string; retryAfterMs?: number; trellisCode?: string }

function safeDecode(s: string): string { try { return decodeURIComponent(s); } catch { return s; } }

/** One length-prefixed gRPC message (uncompressed). */
export function grpcFrame(payload: Uint8Array): Buffer {
  const b = Buffer.allocUnsafe(5 + payload.length);
  b[0] = 0;
  b.writeUInt32BE(payload.length, 1);
  b.set(payload, 5);
  return b;
}

/** What every light agent of a process shares: the target, the encoded hello, the message types, the tick. */
export class LightFleet {
  readonly host: string;
  readonly port: number;
  readonly servername: string | undefined;
  readonly authority: string;
  readonly hello: Buffer;
  readonly agents = new Set<LightAgent>();
  private readonly agentMessage: protobuf.Type;
  private readonly hubMessage: protobuf.Type;
  private heartbeat: Buffer;
  private tick = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(readonly o: { target: string; hello: T.Hello; maxBackoffMs?: number; keepaliveS?: number }) {
    const { host, port } = parseHostPort(o.target, 443);
    this.host = host;
    this.port = port;
    this.servername = isIP(host) ? IP_TARGET_SNI : host;
    this.authority = `https://${o.target}`;
    const root = loadChannelRoot();
    this.agentMessage = root.lookupType('trellis.v1.AgentMessage');
    this.hubMessage = root.lookupType('trellis.v1.HubMessage');
    this.hello = grpcFrame(this.agentMessage.encode(this.agentMessage.fromObject({ hello: o.hello })).finish());
    this.heartbeat = this.encodeHeartbeat();
    // One timer for the process: every second, the agents whose turn it is send a heartbeat
    // (every heartbeatIntervalMs the hub named) or a keepalive ping (every keepaliveS).
    this.timer = setInterval(() => this.onTick(), 1_000);
    this.timer.unref();
  }

  private hubCert: { fingerprint: string; detailed: tls.DetailedPeerCertificate } | undefined;

  /**
   * Node's TLS client checks the server's identity with getPeerCertificate(true), the whole chain
   * as legacy objects (~2.5 ms of client CPU per connection on OpenSSL 3, the largest cost of a
   * simulated agent). Every agent of the fleet sees the same hub certificate: the object is built
   * once and reused for a connection whose leaf certificate (its SHA-256) is the same; checkServerIdentity still runs on every connection,
   * and OpenSSL still verifies the chain against the CA on every handshake.
   */
  peerCertificate(socket: tls.TLSSocket, detailed?: boolean): tls.PeerCertificate | tls.DetailedPeerCertificate {
    const legacy = tls.TLSSocket.prototype.getPeerCertificate;
    if (!detailed) return legacy.call(socket);
    // The leaf alone (its fingerprint) is ~8x cheaper than the chain. Not getPeerX509Certificate():
    // on a client socket Node 20 takes the leaf out of OpenSSL's peer chain, and the connection then fails.
    const fp = (legacy.call(socket) as tls.PeerCertificate).fingerprint256;
    if (fp && this.hubCert?.fingerprint === fp) return this.hubCert.detailed;
    const detailedCert = legacy.call(socket, true) as tls.DetailedPeerCertificate;
    if (fp) this.hubCert = { fingerprint: fp, detailed: detailedCert };
    return detailedCert;
  }

  decode(bytes: Uint8Array): T.HubMessage__Output {
    return this.hubMessage.toObject(this.hubMessage.decode(bytes), { longs: String, defaults: false }) as T.HubMessage__Output;
  }

  private encodeHeartbeat(): Buffer {
    return grpcFrame(this.agentMessage.encode(this.agentMessage.fromObject({ heartbeat: { sentAtMs: Date.now() } })).finish());
  }

  private onTick(): void {
    this.tick++;
    this.heartbeat = this.encodeHeartbeat();
    const keepalive = this.o.keepaliveS ?? 30;
    for (const a of this.agents) a.onTick(this.tick, this.heartbeat, keepalive);
  }

  close(): void { clearInterval(this.timer); }
}

export interface LightAgentStats { shed: number; connects: number }

let nextSlot = 0;

/**
 * One simulated agent. Events: 'welcome' (the hub welcomed this stream), 'state' (state, error).
 * `noRetry`: no reconnect (the raw baseline: a failure is counted, not retried).
 */
export class LightAgent extends EventEmitter {
  state: 'connecting' | 'ready' | 'closed' = 'connecting';
  readonly stats: LightAgentStats = { shed: 0, connects: 0 };
  lastError: string | undefined;
  private ctx: tls.SecureContext | undefined;
  private session: http2.ClientHttp2Session | undefined;
  /** The TCP connection of an attempt, until it is up (then TLS and HTTP/2 start on it). */
  private tcp: net.Socket | undefined;
  private stream: http2.ClientHttp2Stream | undefined;
  private heartbeatEvery = 10;
  private attempt = 0;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  /** Spreads the agents' heartbeats and pings over the seconds of their period. */
  private readonly slot = nextSlot++;

  constructor(private readonly fleet: LightFleet, readonly identity: SimIdentity, readonly noRetry = false) { super(); }

  get agentId(): string { return this.identity.agentId; }

  start(): void {
    this.fleet.agents.add(this);
    this.connect();
  }

  private secureContext(): tls.SecureContext {
    this.ctx ??= tls.createSecureContext({ ca: this.identity.caPem, key: this.identity.keyPem, cert: this.identity.certPem, minVersion: 'TLSv1.2' });
    return this.ctx;
  }

  /**
   * The HTTP/2 session over `tcp`, a TCP connection already open: TLS starts on it now. (A hub
   * that is down refuses the TCP connection; building the TLS and HTTP/2 objects only once TCP is
   * up keeps a refused attempt at the cost of a refused socket, as it costs an agent on its own host.
   * Each simulated agent shares the cores with the hub, so what its retries cost is taken from the hub's restart.)
   */
  private openSession(tcp: net.Socket): http2.ClientHttp2Session {
    const f = this.fleet;
    const ip = isIP(f.host) ? f.host : undefined;
    const s = http2.connect(f.authority, {
      createConnection: () => {
        const socket = tls.connect({
          socket: tcp, host: f.host, servername: f.servername, secureContext: this.secureContext(), ALPNProtocols: ['h2'],
          // An IP target: the SNI is a placeholder; the certificate must name the IP dialed (as common/grpc-tls.ts).
          ...(ip ? { checkServerIdentity: (_sni: string, cert: tls.PeerCertificate) => tls.checkServerIdentity(ip, cert) } : {}),
        });
        Object.defineProperty(socket, 'getPeerCertificate', { value: (detailed?: boolean) => f.peerCertificate(socket, detailed), configurable: true, writable: true });
        return socket;
      },
    });
    s.on('error', () => undefined); // surfaces as the stream's close
    s.once('close', () => { if (this.session === s) this.session = undefined; });
    return s;
  }

  private connect(): void {
    if (this.stopped) return;
    this.setState('connecting');
    // A session kept from a shed attempt serves the next one (no second handshake, as the real agent).
    const s = this.session;
    if (s && !s.closed && !s.destroyed) { this.openStream(s); return; }
    this.session = undefined;
    const f = this.fleet;
    const tcp = net.connect({ host: f.host, port: f.port, noDelay: true });
    this.tcp = tcp;
    const onError = (e: NodeJS.ErrnoException) => {
      if (this.tcp !== tcp) return;
      this.tcp = undefined;
      tcp.destroy();
      if (this.stopped) return;
      this.retry({ code: UNAVAILABLE, message: `cannot connect: ${e.code ?? e.message}` }, false);
    };
    tcp.once('error', onError);
    tcp.once('connect', () => {
      tcp.off('error', onError);
      if (this.tcp !== tcp) return;
      this.tcp = undefined;
      if (this.stopped) { tcp.destroy(); return; }
      this.openStream(this.session = this.openSession(tcp));
    });
  }

  private openStream(s: http2.ClientHttp2Session): void {
    const req = s.request({ ':method': 'POST', ':path': PATH, 'content-type': 'application/grpc', te: 'trailers', 'grpc-accept-encoding': 'identity' });
    this.stream = req;
    let welcomed = false;
    let pending: Buffer | undefined;
    let status: Status | undefined;
    const readStatus = (h: http2.IncomingHttpHeaders) => {
      const v = h['grpc-status'];
      if (v === undefined) return;
      const ra = Number(h[RETRY_AFTER_KEY]);
      status = { code: Number(v), message: safeDecode(String(h['grpc-message'] ?? '')), retryAfterMs: Number.isFinite(ra) && ra >= 0 ? Math.min(ra, MAX_RETRY_AFTER_MS) : undefined, trellisCode: h[CODE_KEY] as string | undefined };
    };
    req.on('response', readStatus); // a trailers-only answer (a refusal before any message)
    req.on('trailers', readStatus);
    req.on('data', (chunk: Buffer) => {
      if (welcomed) return; // read (flow control) but not parsed
      pending = pending ? Buffer.concat([pending, chunk]) : chunk;
      while (pending.length >= 5) {
        const len = pending.readUInt32BE(1);
        if (pending.length < 5 + len) break;
        const msg = this.fleet.decode(pending.subarray(5, 5 + len));
        pending = pending.subarray(5 + len);
        if (msg.welcome) {
          welcomed = true;
          pending = undefined;
          this.heartbeatEvery = Math.max(1, Math.round((Number(msg.welcome.heartbeatIntervalMs) || 10_000) / 1000));
          this.attempt = 0;
          this.stats.connects++;
          this.setState('ready');
          this.emit('welcome', msg.welcome);
          return;
        }
      }
    });
    req.on('error', () => undefined); // its close says what happened
    req.on('close', () => {
      if (this.stream === req) this.stream = undefined;
      if (this.stopped) return;
      this.retry(status && status.code !== 0 ? status : { code: UNAVAILABLE, message: welcomed ? 'stream lost' : `stream closed before the welcome (http2 ${req.rstCode})` }, welcomed);
    });
    req.write(this.fleet.hello);
  }

  /** The real agent's reconnect policy (agent/channel.ts) after a failed attempt or a lost stream. */
  private retry(err: Status, welcomed: boolean): void {
    this.lastError = `${err.code}: ${err.message}`.slice(0, 200);
    if (this.noRetry) { this.fail(err); return; }
    // Refusals of the certificate are final (agent/channel.ts isFatal).
    if (err.code === PERMISSION_DENIED || err.code === UNAUTHENTICATED || err.trellisCode === 'TRELLIS_E_CERT_REVOKED' || err.trellisCode === 'TRELLIS_E_CERT_EXPIRED') { this.fail(err); return; }
    let delay: number;
    if (!welcomed && err.code === RESOURCE_EXHAUSTED && err.retryAfterMs !== undefined) {
      // Shed: come back after the hub's retry-after (jittered), on the same connection; the backoff does not grow.
      this.stats.shed++;
      delay = retryAfterDelay(err.retryAfterMs);
    } else {
      if (welcomed) this.attempt = Math.max(this.attempt, 1); // a lost stream: even the first reconnect waits a random part of a second
      if (!RETRYABLE_CODES.has(err.code)) this.lastError = `unexpected ${this.lastError}`;
      const backoff = backoffDelay(this.attempt++, { maxMs: this.fleet.o.maxBackoffMs ?? DEFAULT_MAX_BACKOFF_MS });
      delay = err.code === RESOURCE_EXHAUSTED && err.retryAfterMs !== undefined ? Math.max(backoff, retryAfterDelay(err.retryAfterMs)) : backoff;
      // Not a shed: the connection is not trusted for the next attempt (the hub restarted, or it reset the stream).
      if (err.code !== RESOURCE_EXHAUSTED) { this.session?.destroy(); this.session = undefined; }
    }
    this.setState('connecting', err);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** Called by the fleet every second: a heartbeat or a ping when it is this agent's turn. */
  onTick(tick: number, heartbeat: Buffer, keepaliveS: number): void {
    if (this.state !== 'ready') return;
    const t = tick + this.slot;
    if (t % this.heartbeatEvery === 0) this.stream?.write(heartbeat);
    if (t % keepaliveS === 0) this.session?.ping(() => undefined);
  }

  private fail(err: { code: number; message: string }): void {
    this.lastError = `${err.code}: ${err.message}`.slice(0, 200);
    this.stopped = true;
    this.fleet.agents.delete(this);
    this.tcp?.destroy();
    this.tcp = undefined;
    this.session?.destroy();
    this.setState('closed', new Error(this.lastError));
  }

  private setState(s: LightAgent['state'], detail?: unknown): void {
    if (this.state === s) return;
    this.state = s;
    this.emit('state', s, detail);
  }

  async close(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    this.fleet.agents.delete(this);
    this.tcp?.destroy();
    this.tcp = undefined;
    this.stream?.close();
    const s = this.session;
    this.session = undefined;
    if (s && !s.destroyed) await new Promise<void>((r) => { s.close(() => r()); setTimeout(() => { s.destroy(); r(); }, 2_000).unref(); });
  }
}
