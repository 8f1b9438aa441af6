/**
 * `GET /metrics` (Prometheus text format) and `GET /readyz` on the web port. (`GET /healthz`,
 * "the process answers", is served by hub/web/index.ts itself.)
 *
 * /metrics access, one of:
 * - a client address inside `metrics.allow` (CIDR ranges in hub.json; default none), e.g. the
 *   Prometheus server's;
 * - an API key (`Authorization: Bearer tak1_…` or `x-api-key`) whose owner holds `metrics:read`.
 * No credential: 401; a bad key: 401; a good key without the permission: 403. Refusals carry no
 * detail in the body (`{"error":"unauthorized"}` / `{"error":"forbidden"}`) and are audited
 * through the refusal throttle (method `GET /metrics`).
 *
 * /readyz: 200 `ready` when the store answers, the ports are bound and the hub is not draining;
 * otherwise 503 with a one-line reason. No authentication (it tells nothing but up or down).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { authorize } from '../authz/index.js';
import { isTrellisError } from '../../common/errors.js';
import { cidrMatcher } from '../../common/cidr.js';
import type { Auth } from '../auth/index.js';
import type { AuditSink } from '../audit/types.js';
import type { Logger } from '../../common/log.js';
import type { HubMetrics } from '../metrics/index.js';
import type { Route } from './index.js';

export interface MetricsRouteDeps {
  metrics: HubMetrics;
  auth: Auth;
  audit: AuditSink;
  log: Logger;
  /** `metrics.allow`: CIDR ranges that need no key. */
  allow: readonly string[];
  /** Undefined when ready, else the one-line reason it is not. */
  notReady: () => Promise<string | undefined>;
}

const METHOD = 'GET /metrics';

function credential(req: IncomingMessage): string | undefined {
  const k = req.headers['x-api-key'];
  if (typeof k === 'string' && k.trim()) return k.trim();
  const a = req.headers.authorization;
  if (typeof a !== 'string') return undefined;
  const m = /^Bearer\s+(\S+)$/i.exec(a.trim());
  return m ? m[1] : undefined;
}

function plain(res: ServerResponse, status: number, text: string, contentType = 'text/plain; charset=utf-8'): void {
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}

const pathOf = (url: string | undefined) => (url ?? '').split('?')[0];

export function metricsRoute(d: MetricsRouteDeps): Route {
  const allowed = cidrMatcher(d.allow);
  return async (req, res) => {
    const path = pathOf(req.url);
    if (path === '/readyz') {
      if (req.method !== 'GET' && req.method !== 'HEAD') { plain(res, 405, 'method not allowed\n'); return true; }
      const reason = await d.notReady().catch((err: Error) => `readiness check failed: ${err.message}`);
      plain(res, reason ? 503 : 200, reason ? `not ready: ${reason.replace(/[\r\n]+/g, ' ')}\n` : 'ready\n');
      return true;
    }
    if (path !== '/metrics') return false;
    if (req.method !== 'GET') { plain(res, 405, 'method not allowed\n'); return true; }
    const peer = req.socket.remoteAddress ?? '';
    if (!allowed.matches(peer)) {
      const refuse = (status: 401 | 403, result: 'unauthenticated' | 'denied', actor: string, detail: string) => {
        d.audit.record({ timeMs: Date.now(), actor, tenant: '', method: METHOD, target: 'metrics', result, sourceAddress: peer, detail });
        res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...(status === 401 ? { 'www-authenticate': 'Bearer' } : {}) });
        res.end(JSON.stringify({ error: status === 401 ? 'unauthorized' : 'forbidden' }));
        return true;
      };
      const key = credential(req);
      // Only API keys: a scraper holds a long-lived key, never a user's login token.
      if (!key || !key.startsWith('tak1_')) return refuse(401, 'unauthenticated', '-', key ? 'not an API key' : 'no credentials');
      let principal;
      try {
        principal = await d.auth.authenticate(key);
      } catch (err) {
        if (isTrellisError(err)) return refuse(401, 'unauthenticated', '-', 'API key unknown, disabled or deleted');
        throw err;
      }
      try {
        authorize(principal, 'metrics:read');
      } catch (err) {
        if (isTrellisError(err)) return refuse(403, 'denied', `apikey:${principal.apiKeyId}@${principal.username}`, `${principal.username} lacks the permission metrics:read`);
        throw err;
      }
    }
    const { contentType, body } = await d.metrics.scrape();
    plain(res, 200, body, contentType);
    return true;
  };
}
