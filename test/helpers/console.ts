/**
 * HTTPS requests to the web console's API (hub/web/console) as a browser would make them: the
 * session cookie, the CSRF header, the Origin.
 */
import * as https from 'node:https';
import type { IncomingHttpHeaders } from 'node:http';
import type { TestHub } from './hub.js';

export interface WebAnswer { status: number; headers: IncomingHttpHeaders; body: string; json: () => Record<string, unknown> }

export function webRequest(h: TestHub, method: string, path: string, o: { headers?: Record<string, string>; body?: string | Buffer } = {}): Promise<WebAnswer> {
  return new Promise((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port: h.hub.webPort, path, method, ca: h.caPem, servername: 'localhost', headers: o.headers }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d)).on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body, json: () => JSON.parse(body) as Record<string, unknown> }));
    });
    req.on('error', reject);
    req.end(o.body);
  });
}

export interface ConsoleSession { cookie: string; token: string; csrf: string; setCookie: string }

/** Logs in through POST /console/api/login; the cookie as the browser would send it back. */
export async function consoleLogin(h: TestHub, username: string, password: string): Promise<ConsoleSession> {
  const r = await webRequest(h, 'POST', '/console/api/login', { headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username, password }) });
  if (r.status !== 200) throw new Error(`console login failed: ${r.status} ${r.body}`);
  const setCookie = String(r.headers['set-cookie']?.[0] ?? '');
  const cookie = setCookie.split(';')[0]!;
  return { cookie, token: cookie.slice(cookie.indexOf('=') + 1), csrf: String(r.json().csrf), setCookie };
}

/** POST /console/api/<method> with the session's cookie and CSRF token (`headers` override them). */
export function consoleCall(h: TestHub, s: ConsoleSession | undefined, method: string, body: unknown = {}, headers: Record<string, string> = {}): Promise<WebAnswer> {
  const base: Record<string, string> = { 'content-type': 'application/json' };
  if (s) { base.cookie = s.cookie; base['x-trellis-csrf'] = s.csrf; }
  return webRequest(h, 'POST', `/console/api/${method}`, { headers: { ...base, ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) });
}
