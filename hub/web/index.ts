/**
 * The web port (HTTPS): health and version now; webhooks and the live event stream attach
 * here. Served with the hub certificate, swapped in place when it is replaced.
 */
import * as https from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { HubPki } from '../pki/index.js';
import type { Logger } from '../../common/log.js';
import { TRELLIS_VERSION, API_VERSION } from '../../common/version.js';

export type Route = (req: IncomingMessage, res: ServerResponse) => boolean | Promise<boolean>;

export class WebServer {
  private readonly server: https.Server;
  private readonly routes: Route[] = [];
  port = 0;

  constructor(private readonly pki: HubPki, private readonly log: Logger) {
    const id = pki.hubIdentity;
    this.server = https.createServer({ cert: id.certChainPem, key: id.keyPem, minVersion: 'TLSv1.2' }, (req, res) => void this.handle(req, res));
    this.server.headersTimeout = 10_000;
    this.server.requestTimeout = 30_000;
    pki.onIdentityChange((next) => this.server.setSecureContext({ cert: next.certChainPem, key: next.keyPem }));
    this.route((req, res) => {
      if (req.method !== 'GET' || (req.url !== '/healthz' && req.url !== '/version')) return false;
      const body = req.url === '/healthz' ? { status: 'ok' } : { version: TRELLIS_VERSION, api: API_VERSION, caFingerprint: this.pki.caFingerprint };
      send(res, 200, body);
      return true;
    });
  }

  route(r: Route): void { this.routes.push(r); }

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

  close(): Promise<void> {
    return new Promise((resolve) => { this.server.close(() => resolve()); this.server.closeAllConnections(); });
  }
}

export function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}
