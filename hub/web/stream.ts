/**
 * The live stream: `wss://HUB:7445/stream`, events and execution updates as JSON text frames.
 *
 * Upgrade request:
 * - credentials: `Authorization: Bearer <login token or API key>`, `x-api-key`, or (browsers,
 *   which cannot set headers) the subprotocol `trellis.bearer.<token>`; offer `trellis.v1`
 *   alongside it and the hub selects `trellis.v1`, so the token is not echoed back; or the web
 *   console's session cookie on an upgrade from the hub's own origin;
 * - tenant: `x-trellis-tenant` or `?tenant=` (they must agree); membership is checked as on the
 *   admin port; administrators may ask `*` (every tenant); default: the caller's first tenant;
 * - permissions: `events:read`; `kinds` including executions also needs `executions:read`;
 * - filters (query): `type` (comma list of fnmatch globs, e.g. `core.*,webhook.deploy`), `agent`
 *   (comma list of agent ids), `execution` (comma list of execution ids, for execution
 *   messages), `kinds` (`events`, `executions` or both; default `events`). Each filter applies to
 *   the messages that carry its field. Unknown parameters are refused (400).
 * Refusals: 400 bad query, 401 bad credentials, 403 missing permission or tenant, 429 when the
 * user already has `web.maxStreamsPerUser` streams open (all their sessions and API keys
 * together), 503 when the hub is at its stream limit (`web.maxStreams`) or shutting down.
 *
 * Messages: `{"kind":"event","id","type","agent","tenant","timeMs","payload"}`,
 * `{"kind":"execution","record":{…}}`, `{"kind":"output","executionId","stream","data"}`.
 * In a cluster (several hubs on one PostgreSQL) the events of agents connected to other hubs
 * arrive too (hub/cluster/events.ts): an event too big to forward has `"payload":null,
 * "payloadTruncated":BYTES`; events another hub could not forward are reported to the followers
 * of their tenant as `{"kind":"gap","tenant","dropped":N,"reason"}`.
 *
 * A slow consumer never slows the hub: frames are queued by the socket, and when more than
 * `maxBufferedBytes` wait to be sent the stream is closed with 4008 "slow consumer: …" (then
 * cut if the close handshake does not finish in 5 s). Revoked credentials (user deactivated or
 * deleted, session ended, key disabled) and an expired login close it with 4001; lost rights
 * (events:read or executions:read no longer granted, removed from the tenant, no longer an
 * administrator for `*`) close it with 4003, within a second of the change (hub/live). The hub pings
 * every 30 s and cuts a peer that missed the previous ping. Hub shutdown closes with 1001.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, WebSocket } from 'ws';
import { authorize, resolveTenant, type Principal } from '../authz/index.js';
import { TrellisError, isTrellisError } from '../../common/errors.js';
import { compileWildcard } from '../../common/rules/patterns.js';
import type { Auth } from '../auth/index.js';
import type { EventIntake, HubEvent } from '../events/index.js';
import type { LiveStreams } from '../live/index.js';
import type { AuditSink } from '../audit/types.js';
import type { Logger } from '../../common/log.js';
import type { UpgradeRoute } from './index.js';

export const STREAM_PATH = '/stream';
export const CLOSE_REVOKED = 4001;
export const CLOSE_FORBIDDEN = 4003;
export const CLOSE_SLOW_CONSUMER = 4008;

/** What the stream needs of hub/executions (structural, so it compiles before that lands). */
export type ExecutionFeedUpdate =
  | { kind: 'state'; record: { id: string; tenant: string; agentId?: string } }
  | { kind: 'output'; tenant: string; executionId: string; agentId?: string; stream: unknown; data: Uint8Array | string };
export interface ExecutionFeed {
  subscribe(fn: (u: ExecutionFeedUpdate) => void): () => void;
}

export interface EventStreamOptions {
  auth: Auth;
  events: EventIntake;
  executions?: ExecutionFeed;
  /** Re-checks streams when rights change or credentials are revoked (shared with the admin port). */
  live: LiveStreams;
  audit?: AuditSink;
  log: Logger;
  /** Close a stream when more than this waits to be sent. @default 8 MiB */
  maxBufferedBytes?: number;
  /** @default 30000 */
  pingIntervalMs?: number;
  /** Concurrent streams. @default 1000 */
  maxClients?: number;
  /** Concurrent streams of one user (all their sessions and API keys). @default 8 */
  maxPerUser?: number;
  /**
   * The web console's session cookie, when an upgrade carries no other credential (the console
   * keeps its login token in an HttpOnly cookie: hub/web/console/session.ts checks the Origin).
   */
  cookieCredential?: (req: IncomingMessage) => string | undefined;
  /** Called when the number of streams following events changes (hub/cluster/events: other hubs forward only while some follow). */
  onFollowers?: (n: number) => void;
}

interface Filter {
  events: boolean;
  executions: boolean;
  type?: (t: string) => boolean;
  agents?: Set<string>;
  executionIds?: Set<string>;
}

interface Client {
  ws: WebSocket;
  principal: Principal;
  /** undefined: every tenant (administrators asking `*`). */
  tenant: string | undefined;
  filter: Filter;
  alive: boolean;
  /** Stops the rights watch. */
  unlive: () => void;
  /** Closes the stream when a login token expires. */
  expiry?: NodeJS.Timeout;
  /** Cuts the socket when a close handshake does not finish. */
  kill?: NodeJS.Timeout;
}

class Refusal {
  constructor(readonly status: number, readonly message: string) {}
}

const STATUS_TEXT: Record<number, string> = { 400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 429: 'Too Many Requests', 500: 'Internal Server Error', 503: 'Service Unavailable' };
const QUERY_KEYS = new Set(['tenant', 'type', 'agent', 'execution', 'kinds']);
const LIST_MAX = 32;
const ITEM_MAX = 128;

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return typeof v === 'string' ? v : Array.isArray(v) ? v[0] : undefined;
}

function bearerProtocol(req: IncomingMessage): string | undefined {
  for (const p of (header(req, 'sec-websocket-protocol') ?? '').split(',')) {
    const t = p.trim();
    if (t.startsWith('trellis.bearer.')) return t.slice('trellis.bearer.'.length);
  }
  return undefined;
}

function credentialOf(req: IncomingMessage): string | undefined {
  const k = header(req, 'x-api-key')?.trim();
  if (k) return k;
  const a = header(req, 'authorization')?.trim();
  if (a) { const m = /^Bearer\s+(\S+)$/i.exec(a); return m ? m[1] : a; }
  return bearerProtocol(req);
}

function list(q: URLSearchParams, key: string): string[] | undefined {
  const all = q.getAll(key);
  if (all.length === 0) return undefined;
  const items = all.join(',').split(',').map((s) => s.trim()).filter(Boolean);
  if (items.length === 0) return undefined;
  if (items.length > LIST_MAX) throw new Refusal(400, `${key}: at most ${LIST_MAX} values`);
  for (const i of items) if (i.length > ITEM_MAX) throw new Refusal(400, `${key}: a value is at most ${ITEM_MAX} characters`);
  return items;
}

/** Parses the query into a filter; 400 naming the parameter on anything wrong. */
export function parseFilter(q: URLSearchParams): Filter {
  for (const k of q.keys()) if (!QUERY_KEYS.has(k)) throw new Refusal(400, `unknown query parameter "${k.slice(0, 32)}": use ${[...QUERY_KEYS].join(', ')}`);
  const kinds = list(q, 'kinds') ?? ['events'];
  for (const k of kinds) if (k !== 'events' && k !== 'executions') throw new Refusal(400, `kinds: "${k.slice(0, 32)}" is not events or executions`);
  const types = list(q, 'type');
  let type: Filter['type'];
  if (types) {
    // fnmatch globs matched in linear time (a backtracking glob regex let `*a*a*a…b` freeze the hub).
    const globs = types.map((g) => compileWildcard(g, 'type'));
    type = (t) => globs.some((m) => m(t));
  }
  const agents = list(q, 'agent');
  const executionIds = list(q, 'execution');
  return {
    events: kinds.includes('events'), executions: kinds.includes('executions'), type,
    agents: agents && new Set(agents), executionIds: executionIds && new Set(executionIds),
  };
}

/** A close reason fits in 123 bytes (RFC 6455). */
function closeReason(s: string): string {
  let r = s.replace(/[^\x20-\x7e]/g, '?');
  if (r.length > 123) r = `${r.slice(0, 120)}...`;
  return r;
}

function text(v: Uint8Array | string): string {
  return typeof v === 'string' ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('utf8');
}

/** JSON for execution records: bytes fields become text. */
function bytesAsText(this: unknown, key: string, value: unknown): unknown {
  const orig = (this as Record<string, unknown>)[key];
  return orig instanceof Uint8Array ? text(orig) : value;
}

/** One frame per event, built once however many streams receive it. */
function eventFrame(e: HubEvent): string {
  if (e.truncatedBytes !== undefined) {
    return `{"kind":"event","id":${JSON.stringify(e.id)},"type":${JSON.stringify(e.type)},"agent":${JSON.stringify(e.agentId)},"tenant":${JSON.stringify(e.tenant)},"timeMs":${Number(e.timeMs) || 0},"payload":null,"payloadTruncated":${Number(e.truncatedBytes) || 0}}`;
  }
  const raw = e.payload.toString('utf8');
  let payload: string;
  try { JSON.parse(raw); payload = raw; } catch { payload = JSON.stringify(raw); } // not JSON: sent as a string
  return `{"kind":"event","id":${JSON.stringify(e.id)},"type":${JSON.stringify(e.type)},"agent":${JSON.stringify(e.agentId)},"tenant":${JSON.stringify(e.tenant)},"timeMs":${Number(e.timeMs) || 0},"payload":${payload || 'null'}}`;
}

export class EventStream implements UpgradeRoute {
  private readonly wss: WebSocketServer;
  private readonly clients = new Set<Client>();
  private readonly unsubscribe: Array<() => void> = [];
  private readonly pingTimer: NodeJS.Timeout;
  private readonly maxBuffered: number;
  private readonly maxClients: number;
  private readonly maxPerUser: number;
  /** Open (and accepted, upgrading) streams per user name. */
  private readonly perUser = new Map<string, number>();
  private pending = 0;
  private eventFollowers = 0;
  private closed = false;
  /** Streams closed as slow consumers (for tests and metrics). */
  slowConsumers = 0;

  constructor(private readonly o: EventStreamOptions) {
    this.maxBuffered = o.maxBufferedBytes ?? 8 * 1024 * 1024;
    this.maxClients = o.maxClients ?? 1000;
    this.maxPerUser = o.maxPerUser ?? 8;
    this.wss = new WebSocketServer({
      noServer: true, perMessageDeflate: false, maxPayload: 4096, clientTracking: false,
      handleProtocols: (protocols) => (protocols.has('trellis.v1') ? 'trellis.v1' : [...protocols].find((p) => p.startsWith('trellis.bearer.')) ?? false),
    });
    this.unsubscribe.push(o.events.subscribe((batch) => this.onEvents(batch)));
    if (o.executions?.subscribe) this.unsubscribe.push(o.executions.subscribe((u) => this.onExecution(u)));
    this.pingTimer = setInterval(() => this.ping(), o.pingIntervalMs ?? 30_000);
    this.pingTimer.unref();
  }

  get size(): number { return this.clients.size; }

  /** Streams following events now. */
  followers(): number { return this.eventFollowers; }

  /** The tenants event followers watch now (`*`: some administrator follows every tenant). */
  followedTenants(): '*' | string[] {
    const out = new Set<string>();
    for (const c of this.clients) {
      if (!c.filter.events) continue;
      if (c.tenant === undefined) return '*';
      out.add(c.tenant);
    }
    return [...out].sort();
  }

  /** Events another hub forwarded (hub/cluster/events): filtered and authorized as local ones. */
  deliverRemote(batch: HubEvent[]): void { this.onEvents(batch); }

  /** Tells the event followers of `tenant` that `dropped` events of another hub were not forwarded. */
  deliverGap(tenant: string, dropped: number, reason: string): void {
    let frame: string | undefined;
    for (const c of this.clients) {
      if (!c.filter.events || !this.visible(c, tenant)) continue;
      frame ??= JSON.stringify({ kind: 'gap', tenant, dropped, reason });
      this.deliver(c, frame);
    }
  }

  private countFollowers(delta: number): void {
    this.eventFollowers += delta;
    try { this.o.onFollowers?.(this.eventFollowers); } catch (err) { this.o.log.warn({ err }, 'follower count listener failed'); }
  }

  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): boolean {
    let url: URL;
    try { url = new URL(req.url ?? '/', 'https://hub.invalid'); } catch { return false; }
    if (url.pathname !== STREAM_PATH) return false;
    this.pending++;
    void this.accept(req, socket, head, url.searchParams)
      .catch((err: unknown) => {
        if (err instanceof Refusal) return this.refuse(req, socket, err);
        this.o.log.error({ err }, 'stream upgrade failed');
        this.refuse(req, socket, new Refusal(500, 'internal error'));
      })
      .finally(() => { this.pending--; });
    return true;
  }

  private async accept(req: IncomingMessage, socket: Duplex, head: Buffer, q: URLSearchParams): Promise<void> {
    if (this.closed) throw new Refusal(503, 'the hub is shutting down');
    if (this.clients.size + this.pending > this.maxClients) throw new Refusal(503, `the hub serves at most ${this.maxClients} streams; try again later`);
    const filter = parseFilter(q);
    const hTenant = header(req, 'x-trellis-tenant');
    const qTenant = q.get('tenant') ?? undefined;
    if (hTenant !== undefined && qTenant !== undefined && hTenant !== qTenant) throw new Refusal(400, 'tenant: x-trellis-tenant and ?tenant= differ');
    const asked = hTenant ?? qTenant;
    if (asked !== undefined && asked.length > 63) throw new Refusal(400, 'tenant: at most 63 characters');

    const since = this.o.live.generation;
    let p: Principal;
    try { p = await this.o.auth.authenticate(credentialOf(req) ?? this.o.cookieCredential?.(req)); } catch (e) {
      throw new Refusal(401, isTrellisError(e) ? e.message : 'unrecognised credential');
    }
    let tenant: string | undefined;
    try {
      authorize(p, 'events:read');
      if (filter.executions) authorize(p, 'executions:read');
      tenant = asked === '*' && p.grants.isAdmin ? undefined : resolveTenant(p, asked);
    } catch (e) {
      this.auditRefusal(req, p, asked, (e as Error).message);
      throw new Refusal(403, (e as Error).message);
    }
    if (this.closed) throw new Refusal(503, 'the hub is shutting down');
    if (socket.destroyed) return;
    this.reserve(p, asked, req, socket);
    this.wss.handleUpgrade(req, socket, head, (ws) => this.attach(ws, p, tenant, filter, req.socket.remoteAddress ?? '', since));
  }

  /** Takes one of the user's stream slots until the socket closes, or refuses with 429. */
  private reserve(p: Principal, asked: string | undefined, req: IncomingMessage, socket: Duplex): void {
    const n = this.perUser.get(p.username) ?? 0;
    if (n >= this.maxPerUser) {
      const msg = `${p.username} already has ${n} streams open, the most one user may (web.maxStreamsPerUser); close one and try again`;
      this.auditRefusal(req, p, asked, msg);
      throw new Refusal(429, msg);
    }
    this.perUser.set(p.username, n + 1);
    let held = true;
    socket.once('close', () => {
      if (!held) return;
      held = false;
      const left = (this.perUser.get(p.username) ?? 1) - 1;
      if (left > 0) this.perUser.set(p.username, left); else this.perUser.delete(p.username);
    });
  }

  /** What a stream keeps needing: its permissions and its tenant (`*`: being an administrator). */
  private check(c: Client, p: Principal): void {
    authorize(p, 'events:read');
    if (c.filter.executions) authorize(p, 'executions:read');
    if (c.tenant === undefined ? !p.grants.isAdmin : !(p.grants.isAdmin || p.tenants.includes(c.tenant))) {
      throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `${p.username} is no longer a member of tenant ${c.tenant ?? '*'}`);
    }
  }

  private attach(ws: WebSocket, principal: Principal, tenant: string | undefined, filter: Filter, peer: string, since: number): void {
    if (this.closed) { ws.terminate(); return; }
    const c: Client = { ws, principal, tenant, filter, alive: true, unlive: () => undefined };
    c.unlive = this.o.live.add({
      principal,
      check: (p) => this.check(c, p),
      cut: (err) => (err.code === 'TRELLIS_E_UNAUTHENTICATED'
        ? this.kick(c, CLOSE_REVOKED, 'credentials revoked')
        : this.kick(c, CLOSE_FORBIDDEN, closeReason(`permission revoked: ${err.message}`))),
    }, since);
    if (principal.sessionExpiresAt) {
      c.expiry = setTimeout(() => this.kick(c, CLOSE_REVOKED, 'login expired'), Math.min(Math.max(0, principal.sessionExpiresAt - Date.now()), 2 ** 31 - 1));
      c.expiry.unref();
    }
    this.clients.add(c);
    if (filter.events) this.countFollowers(1);
    ws.on('pong', () => { c.alive = true; });
    ws.on('message', () => undefined); // nothing to say to the hub: ignored (maxPayload bounds it)
    ws.on('error', () => undefined);
    ws.on('close', (code) => {
      if (this.clients.delete(c) && filter.events) this.countFollowers(-1);
      c.unlive();
      clearTimeout(c.expiry);
      clearTimeout(c.kill);
      this.o.log.info({ user: principal.username, tenant: tenant ?? '*', peer, code }, 'stream closed');
    });
    this.o.log.info({ user: principal.username, tenant: tenant ?? '*', peer, events: filter.events, executions: filter.executions }, 'stream opened');
  }

  private refuse(req: IncomingMessage, socket: Duplex, r: Refusal): void {
    if (r.status === 401) this.auditRefusal(req, undefined, header(req, 'x-trellis-tenant'), r.message);
    if (socket.destroyed) return;
    const body = JSON.stringify({ error: r.message });
    socket.end(`HTTP/1.1 ${r.status} ${STATUS_TEXT[r.status] ?? 'Error'}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
  }

  private auditRefusal(req: IncomingMessage, p: Principal | undefined, tenant: string | undefined, detail: string): void {
    this.o.audit?.record({
      timeMs: Date.now(), actor: p ? (p.apiKeyId ? `apikey:${p.apiKeyId}@${p.username}` : p.username) : '-', tenant: (tenant ?? '').slice(0, 63).replace(/[^\x20-\x7e]/g, '?'),
      method: 'GET /stream', target: 'stream', result: p ? 'denied' : 'unauthenticated', sourceAddress: req.socket.remoteAddress ?? '', detail: detail.slice(0, 300),
    });
  }

  /** Sends one frame; a consumer that lets too much pile up is closed, never waited for. */
  private deliver(c: Client, frame: string): void {
    if (c.ws.readyState !== WebSocket.OPEN) return;
    c.ws.send(frame);
    if (c.ws.bufferedAmount > this.maxBuffered) {
      this.slowConsumers++;
      this.o.log.warn({ user: c.principal.username, buffered: c.ws.bufferedAmount }, 'stream closed: slow consumer');
      this.kick(c, CLOSE_SLOW_CONSUMER, `slow consumer: over ${Math.round(this.maxBuffered / 1024)} KiB unread`);
    }
  }

  private kick(c: Client, code: number, reason: string): void {
    if (c.ws.readyState === WebSocket.OPEN) c.ws.close(code, reason);
    if (!c.kill) {
      c.kill = setTimeout(() => c.ws.terminate(), 5_000);
      c.kill.unref();
    }
  }

  private visible(c: Client, tenant: string): boolean {
    return c.tenant === undefined || c.tenant === tenant;
  }

  private onEvents(batch: HubEvent[]): void {
    if (this.clients.size === 0) return;
    const frames = new Map<HubEvent, string>();
    for (const c of this.clients) {
      const f = c.filter;
      if (!f.events) continue;
      for (const e of batch) {
        if (!this.visible(c, e.tenant)) continue;
        if (f.type && !f.type(e.type)) continue;
        if (f.agents && !f.agents.has(e.agentId)) continue;
        let frame = frames.get(e);
        if (frame === undefined) frames.set(e, (frame = eventFrame(e)));
        this.deliver(c, frame);
        if (c.ws.readyState !== WebSocket.OPEN) break;
      }
    }
  }

  private onExecution(u: ExecutionFeedUpdate): void {
    if (this.clients.size === 0) return;
    const tenant = u.kind === 'state' ? u.record.tenant : u.tenant;
    const execId = u.kind === 'state' ? u.record.id : u.executionId;
    const agent = (u.kind === 'state' ? u.record.agentId : u.agentId) ?? '';
    let frame: string | undefined;
    for (const c of this.clients) {
      const f = c.filter;
      if (!f.executions || !this.visible(c, tenant)) continue;
      if (f.executionIds && !f.executionIds.has(execId)) continue;
      if (f.agents && !f.agents.has(agent)) continue;
      frame ??= u.kind === 'state'
        ? `{"kind":"execution","record":${JSON.stringify(u.record, bytesAsText)}}`
        : JSON.stringify({ kind: 'output', executionId: u.executionId, stream: u.stream, data: text(u.data) });
      this.deliver(c, frame);
    }
  }

  private ping(): void {
    for (const c of this.clients) {
      if (!c.alive) { c.ws.terminate(); continue; }
      c.alive = false;
      if (c.ws.readyState === WebSocket.OPEN) c.ws.ping();
    }
  }

  /** Closes every stream (1001), cutting those that do not finish the handshake within 1 s. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.pingTimer);
    for (const u of this.unsubscribe) u();
    const all = [...this.clients];
    await Promise.all(all.map((c) => new Promise<void>((resolve) => {
      if (c.ws.readyState === WebSocket.CLOSED) return resolve();
      const t = setTimeout(() => { c.ws.terminate(); resolve(); }, 1_000);
      c.ws.once('close', () => { clearTimeout(t); resolve(); });
      if (c.ws.readyState === WebSocket.OPEN) c.ws.close(1001, 'hub shutting down');
    })));
    this.wss.close();
  }
}
