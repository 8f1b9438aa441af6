/**
 * The web port (HTTPS): health and version now; webhooks, the live event stream and the web
 * console (hub/web/console) attach here. Served with the hub certificate, swapped in place when
 * it is replaced.
 *
 * Limits (config `web`): at most `maxConnectionsPerClient` open connections per source address
 * (more are closed before the TLS handshake), a TLS handshake within `handshakeTimeout`, request
 * headers within `headersTimeout` and a whole request within `requestTimeout` (408 / closed),
 * idle keep-alive connections closed after 5 s.
 */
import * as https from 'node:https';
import type { Socket } from 'node:net';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { HubPki } from '../pki/index.js';
import type { Logger } from '../../common/log.js';
import { TRELLIS_VERSION, API_VERSION } from '../../common/version.js';

export type Route = (req: IncomingMessage, res: ServerResponse) => boolean | Promise<boolean>;

/** A handler of HTTP upgrades (the WebSocket stream): `upgrade` returns false when the path is not its own. */
export interface UpgradeRoute {
  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): boolean;
  /** Ends its connections (upgraded sockets are not closed by the HTTP server). */
  close(): Promise<void>;
}

export interface WebServerOptions {
  /** Open connections from one source address; more are closed at once. @default 64 */
  maxConnectionsPerClient?: number;
  /** The TLS handshake must finish within this. @default 10000 */
  handshakeTimeoutMs?: number;
  /** Request headers must arrive within this. @default 10000 */
  headersTimeoutMs?: number;
  /** A whole request (headers and body) must arrive within this. @default 30000 */
  requestTimeoutMs?: number;
}

/** One key per client address (an IPv4 client seen on a dual-stack socket counts once). */
function clientKey(s: Socket): string {
  const a = s.remoteAddress ?? '';
  return a.startsWith('::ffff:') ? a.slice(7) : a;
}

export class WebServer {
  private readonly server: https.Server;
  private readonly routes: Route[] = [];
  private readonly upgrades: UpgradeRoute[] = [];
  private readonly perClient = new Map<string, number>();
  private readonly maxPerClient: number;
  /** Connections closed for being over the per-client cap (tests and metrics). */
  refusedConnections = 0;
  port = 0;

  constructor(private readonly pki: HubPki, private readonly log: Logger, o: WebServerOptions = {}) {
    const id = pki.hubIdentity;
    const headersTimeout = o.headersTimeoutMs ?? 10_000;
    const requestTimeout = Math.max(o.requestTimeoutMs ?? 30_000, headersTimeout);
    this.maxPerClient = o.maxConnectionsPerClient ?? 64;
    this.server = https.createServer({
      cert: id.certChainPem, key: id.keyPem, minVersion: 'TLSv1.2',
      handshakeTimeout: o.handshakeTimeoutMs ?? 10_000, headersTimeout, requestTimeout, keepAliveTimeout: 5_000,
      // How often Node checks the two timeouts above (its default, 30 s, would let them run late by that much).
      connectionsCheckingInterval: Math.min(1_000, headersTimeout),
    }, (req, res) => void this.handle(req, res));
    this.server.on('connection', (s: Socket) => this.countConnection(s));
    pki.onIdentityChange((next) => this.server.setSecureContext({ cert: next.certChainPem, key: next.keyPem }));
    this.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => this.handleUpgrade(req, socket, head));
    this.route((req, res) => {
      if (req.method !== 'GET' || (req.url !== '/healthz' && req.url !== '/version')) return false;
      const body = req.url === '/healthz' ? { status: 'ok' } : { version: TRELLIS_VERSION, api: API_VERSION, caFingerprint: this.pki.caFingerprint };
      send(res, 200, body);
      return true;
    });
  }

  /** Counts a new TCP connection against its source address; over the cap it is closed at once. */
  private countConnection(s: Socket): void {
    const key = clientKey(s);
    const n = (this.perClient.get(key) ?? 0) + 1;
    if (n > this.maxPerClient) {
      if (this.refusedConnections++ % 1000 === 0) this.log.warn({ peer: key, open: n - 1, refused: this.refusedConnections }, 'web connection refused: too many from one address (web.maxConnectionsPerClient)');
      s.destroy();
      return;
    }
    this.perClient.set(key, n);
    s.once('close', () => {
      const left = (this.perClient.get(key) ?? 1) - 1;
      if (left > 0) this.perClient.set(key, left); else this.perClient.delete(key);
    });
  }

  route(r: Route): void { this.routes.push(r); }

  upgradeRoute(u: UpgradeRoute): void { this.upgrades.push(u); }

  private handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => socket.destroy());
    try {
      for (const u of this.upgrades) if (u.upgrade(req, socket, head)) return;
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    } catch (err) {
      this.log.error({ err, url: req.url?.slice(0, 200) }, 'web upgrade failed');
      socket.destroy();
    }
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      for (const r of this.routes) if (await r(req, res)) return;
      send(res, 404, { error: 'not found' });
    } catch (err) {
      this.log.error({ err, url: req.url?.slice(0, 200) }, 'web request failed');
      if (!res.headersSent) send(res, 500, { error: 'internal error' });
    }
  }

  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        this.port = (this.server.address() as { port: number }).port;
        resolve(this.port);
      });
    });
  }

  async close(): Promise<void> {
    for (const u of this.upgrades) await u.close().catch((err: unknown) => this.log.warn({ err }, 'closing upgraded connections failed'));
    return new Promise((resolve) => { this.server.close(() => resolve()); this.server.closeAllConnections(); });
  }
}

export function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}
