/**
 * The web port (HTTPS): health and version now; webhooks and the live event stream attach
 * here. Served with the hub certificate, swapped in place when it is replaced.
 */
import * as https from 'node:https';
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

export class WebServer {
  private readonly server: https.Server;
  private readonly routes: Route[] = [];
  private readonly upgrades: UpgradeRoute[] = [];
  port = 0;

  constructor(private readonly pki: HubPki, private readonly log: Logger) {
    const id = pki.hubIdentity;
    this.server = https.createServer({ cert: id.certChainPem, key: id.keyPem, minVersion: 'TLSv1.2' }, (req, res) => void this.handle(req, res));
    this.server.headersTimeout = 10_000;
    this.server.requestTimeout = 30_000;
    pki.onIdentityChange((next) => this.server.setSecureContext({ cert: next.certChainPem, key: next.keyPem }));
    this.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => this.handleUpgrade(req, socket, head));
    this.route((req, res) => {
      if (req.method !== 'GET' || (req.url !== '/healthz' && req.url !== '/version')) return false;
      const body = req.url === '/healthz' ? { status: 'ok' } : { version: TRELLIS_VERSION, api: API_VERSION, caFingerprint: this.pki.caFingerprint };
      send(res, 200, body);
      return true;
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
