/**
 * The web console on the web port: static assets under `/console/` and a JSON API under
 * `/console/api/`.
 *
 * Assets: `index.html` and `console.css` (hub/web/console/assets.ts) and the browser modules
 * compiled from console/src by `npm run build` into dist/console (shipped in the package). Every
 * response carries a strict Content-Security-Policy (`default-src 'self'`, no inline script or
 * style, no other origin, no framing): the console works with no internet.
 *
 * API (all answers JSON, `cache-control: no-store`):
 * - `POST /console/api/login` `{username, password}`: `AdminAuth/Login` through the bridge (same
 *   backends, limits, lock-outs and audit as `trellis login`); sets the session cookie
 *   (hub/web/console/session.ts) and answers `{username, csrf, expiresAtMs}`. The login token
 *   itself never reaches script.
 * - `GET /console/api/session`: who the cookie is (`username`, `tenants`, `permissions`,
 *   `isAdmin`, `csrf`, `expiresAtMs`), or 401.
 * - `POST /console/api/logout`: `AdminAuth/Logout` (the session is revoked: the cookie no longer
 *   works anywhere) and the cookie cleared.
 * - `POST /console/api/<Service>/<Method>`: any unary or server-streaming admin method, body the
 *   request message as JSON, tenant in `x-trellis-tenant` (hub/web/console/bridge.ts).
 * Every POST but login needs the session cookie (else 401) and the CSRF header (else 403); a
 * POST from another origin is refused (403); bodies are JSON (415 otherwise), at most
 * `maxBodyBytes` (413), well-formed (400).
 */
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { PERMISSIONS, isPermission, type Permission } from '../../authz/index.js';
import type { Auth } from '../../auth/index.js';
import type { Logger } from '../../../common/log.js';
import { isTrellisError } from '../../../common/errors.js';
import type { Route } from '../index.js';
import { ApiBridge, type ServedService } from './bridge.js';
import { INDEX_HTML, CONSOLE_CSS } from './assets.js';
import { sessionToken, sessionCookie, clearedCookie, csrfFor, csrfOk, sameOrigin } from './session.js';

export const CONSOLE_PREFIX = '/console/';
const API = '/console/api/';
const TENANT_RE = /^[a-z0-9*][a-z0-9-]{0,62}$/;

/** Security headers of every console response. */
export const CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy': CSP,
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'strict-transport-security': 'max-age=31536000',
};

export interface ConsoleOptions {
  auth: Auth;
  /** The admin server's services (GuardedServer.served): what the API bridge calls. */
  served: readonly ServedService[];
  log: Logger;
  /** Largest request body. @default 1 MiB */
  maxBodyBytes?: number;
  /** Where the compiled browser modules are. @default dist/console */
  assetsDir?: string;
}

interface Asset { body: Buffer; type: string; etag: string }

function asset(body: string | Buffer, type: string): Asset {
  const b = Buffer.isBuffer(body) ? body : Buffer.from(body, 'utf8');
  return { body: b, type, etag: `"${createHash('sha256').update(b).digest('base64url').slice(0, 22)}"` };
}

class HttpError extends Error {
  constructor(readonly status: number, message: string, readonly code: string) { super(message); }
}

function sendJson(res: ServerResponse, status: number, body: unknown, extra: Record<string, string | string[]> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { ...SECURITY_HEADERS, 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store', ...extra });
  res.end(text);
}

/** Reads a JSON body of at most `max` bytes. */
async function readJson(req: IncomingMessage, max: number): Promise<unknown> {
  const type = String(req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  if (type !== 'application/json') throw new HttpError(415, 'the request body is JSON: send content-type: application/json', 'TRELLIS_E_INVALID_ARGUMENT');
  const declared = Number(req.headers['content-length'] ?? NaN);
  if (declared > max) { req.resume(); throw new HttpError(413, `the request body is over ${max} bytes`, 'TRELLIS_E_TOO_LARGE'); }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > max) { req.resume(); throw new HttpError(413, `the request body is over ${max} bytes`, 'TRELLIS_E_TOO_LARGE'); }
    chunks.push(chunk as Buffer);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (!text.trim()) return {};
  try {
    return JSON.parse(text);
  } catch {
    throw new HttpError(400, 'the request body is not valid JSON', 'TRELLIS_E_INVALID_ARGUMENT');
  }
}

function peerOf(req: IncomingMessage): string {
  const a = req.socket.remoteAddress ?? '';
  return a.includes(':') ? `[${a}]:${req.socket.remotePort}` : `${a}:${req.socket.remotePort}`;
}

export class ConsoleRoute {
  private readonly bridge: ApiBridge;
  private readonly assets = new Map<string, Asset>();
  private readonly maxBody: number;

  constructor(private readonly o: ConsoleOptions) {
    this.bridge = new ApiBridge(o.served);
    this.maxBody = o.maxBodyBytes ?? 1024 * 1024;
    this.assets.set('index.html', asset(INDEX_HTML, 'text/html; charset=utf-8'));
    this.assets.set('console.css', asset(CONSOLE_CSS, 'text/css; charset=utf-8'));
    const dir = o.assetsDir ?? fileURLToPath(new URL('../../../console/', import.meta.url));
    if (existsSync(dir)) {
      for (const f of readdirSync(dir)) if (/^[a-z0-9-]+\.js$/.test(f)) this.assets.set(f, asset(readFileSync(`${dir}/${f}`), 'text/javascript; charset=utf-8'));
    }
    if (!this.assets.has('app.js')) o.log.warn({ dir }, 'the web console\'s scripts are missing (run `npm run build`): /console/ will not work');
  }

  route(): Route {
    return (req, res) => {
      const url = req.url ?? '';
      if (url !== '/console' && !url.startsWith(CONSOLE_PREFIX)) return false;
      return this.handle(req, res, url).then(() => true);
    };
  }

  private async handle(req: IncomingMessage, res: ServerResponse, url: string): Promise<void> {
    const path = url.split('?')[0]!;
    try {
      if (path.startsWith(API)) { await this.api(req, res, path.slice(API.length)); return; }
      if (req.method !== 'GET' && req.method !== 'HEAD') throw new HttpError(405, 'method not allowed', 'TRELLIS_E_INVALID_ARGUMENT');
      if (path === '/console') { res.writeHead(308, { ...SECURITY_HEADERS, location: CONSOLE_PREFIX, 'content-length': 0 }); res.end(); return; }
      const name = path === CONSOLE_PREFIX ? 'index.html' : path.slice(CONSOLE_PREFIX.length);
      const a = this.assets.get(name);
      if (!a) throw new HttpError(404, 'not found', 'TRELLIS_E_NOT_FOUND');
      if (req.headers['if-none-match'] === a.etag) { res.writeHead(304, { ...SECURITY_HEADERS, etag: a.etag }); res.end(); return; }
      res.writeHead(200, { ...SECURITY_HEADERS, 'content-type': a.type, 'content-length': a.body.length, etag: a.etag, 'cache-control': 'no-cache' });
      res.end(req.method === 'HEAD' ? undefined : a.body);
    } catch (err) {
      if (err instanceof HttpError) { sendJson(res, err.status, { error: err.message, code: err.code }); return; }
      throw err;
    }
  }

  private async api(req: IncomingMessage, res: ServerResponse, rest: string): Promise<void> {
    if (rest === 'session' && req.method === 'GET') { await this.session(req, res); return; }
    if (req.method !== 'POST') throw new HttpError(405, 'the console API takes POST (GET for session)', 'TRELLIS_E_INVALID_ARGUMENT');
    if (!sameOrigin(req)) throw new HttpError(403, 'cross-origin request refused', 'TRELLIS_E_PERMISSION_DENIED');
    const ac = new AbortController();
    res.on('close', () => { if (!res.writableFinished) ac.abort(); });
    const peer = peerOf(req);
    if (rest === 'login') {
      const body = await readJson(req, this.maxBody) as { username?: unknown; password?: unknown };
      const r = await this.bridge.call('AdminAuth', 'Login', { username: String(body?.username ?? ''), password: String(body?.password ?? '') }, { peer, signal: ac.signal });
      if (r.status !== 200) { sendJson(res, r.status, r.body); return; }
      const out = r.body as { token: string; expiresAtMs: number; username: string };
      sendJson(res, 200, { username: out.username, csrf: csrfFor(out.token), expiresAtMs: out.expiresAtMs }, { 'set-cookie': sessionCookie(out.token, out.expiresAtMs - Date.now()) });
      return;
    }
    const token = sessionToken(req);
    if (!token) throw new HttpError(401, 'not logged in', 'TRELLIS_E_UNAUTHENTICATED');
    if (!csrfOk(req, token)) throw new HttpError(403, 'missing or wrong CSRF token (x-trellis-csrf): reload the console', 'TRELLIS_E_PERMISSION_DENIED');
    // Like the admin port's pre-auth gate: no body is read for a session that does not exist (the
    // call itself authenticates again, through the wrapper, and audits a refusal).
    try {
      await this.o.auth.authenticate(token, { peek: true });
    } catch (err) {
      if (isTrellisError(err, 'TRELLIS_E_UNAUTHENTICATED')) {
        req.resume();
        sendJson(res, 401, { error: 'not logged in: the session ended or expired', code: 'TRELLIS_E_UNAUTHENTICATED' }, { 'set-cookie': clearedCookie() });
        return;
      }
      throw err;
    }
    const tenantHeader = req.headers['x-trellis-tenant'];
    const tenant = typeof tenantHeader === 'string' && tenantHeader ? tenantHeader : undefined;
    if (tenant !== undefined && !TENANT_RE.test(tenant)) throw new HttpError(400, 'bad x-trellis-tenant header', 'TRELLIS_E_INVALID_ARGUMENT');
    const body = await readJson(req, this.maxBody);
    if (rest === 'logout') {
      const r = await this.bridge.call('AdminAuth', 'Logout', {}, { credential: token, peer, signal: ac.signal });
      sendJson(res, r.status === 401 ? 200 : r.status, r.status === 401 ? {} : r.body, { 'set-cookie': clearedCookie() });
      return;
    }
    const m = /^([A-Z][A-Za-z]{1,40})\/([A-Z][A-Za-z]{1,40})$/.exec(rest);
    // Login answers the token itself: only /console/api/login, which keeps it in the cookie.
    if (!m || (m[1] === 'AdminAuth' && m[2] === 'Login') || !this.bridge.has(m[1]!, m[2]!)) throw new HttpError(404, `no such API method: ${rest.slice(0, 100)}`, 'TRELLIS_E_NOT_FOUND');
    const r = await this.bridge.call(m[1]!, m[2]!, body, { credential: token, tenant, peer, signal: ac.signal });
    if (!res.destroyed) sendJson(res, r.status, r.body);
  }

  /** Who the cookie is, with what the console needs to show (no token). */
  private async session(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const token = sessionToken(req);
    if (!token) throw new HttpError(401, 'not logged in', 'TRELLIS_E_UNAUTHENTICATED');
    try {
      const p = await this.o.auth.authenticate(token, { peek: true });
      if (p.kind !== 'user') throw new HttpError(401, 'not logged in', 'TRELLIS_E_UNAUTHENTICATED');
      const permissions = (Object.keys(PERMISSIONS) as Permission[]).filter((x) => isPermission(x) && p.grants.allowsAnywhere(x));
      sendJson(res, 200, {
        username: p.username, roles: [...p.roles], tenants: [...p.tenants], isAdmin: p.grants.isAdmin, permissions,
        csrf: csrfFor(token), expiresAtMs: p.sessionExpiresAt ?? 0,
      });
    } catch (err) {
      if (isTrellisError(err, 'TRELLIS_E_UNAUTHENTICATED')) throw new HttpError(401, (err as Error).message.replace(/`trellis login`/, 'the console'), 'TRELLIS_E_UNAUTHENTICATED');
      throw err;
    }
  }
}
