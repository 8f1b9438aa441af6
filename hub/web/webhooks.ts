/**
 * `POST /webhooks/<name>` (tenant from `x-trellis-tenant`, default `default`) and
 * `POST /webhooks/<tenant>/<name>` (for senders that cannot set headers; when both name a
 * tenant they must agree) on the web port. The body, a JSON object of at most 256 KiB, becomes
 * an event of type `webhook.<name>` (agent '') published to the hub's listeners (rules, stream).
 *
 * Authentication, one of:
 * - an API key (`x-api-key: tak1_…` or `Authorization: Bearer tak1_…`) whose owner holds
 *   `webhooks:post` and belongs to the tenant. A bad key: 401. A good key without the permission
 *   or the tenant: 403 (decided from the key alone, before the webhook is looked up);
 * - `X-Trellis-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`
 *   (see hub/webhooks): wrong, stale (more than 300 s off) or replayed: 401.
 * An unknown webhook is answered 401 on both paths, exactly like a wrong signature, so the
 * port is no oracle for names. Other answers: 202 `{"id"}`, 400 not a JSON object, 405 not
 * POST, 413 over 256 KiB (by content-length, and by counting the bytes read: reading stops at
 * the limit and the connection is closed), 415 not `application/json`.
 *
 * Every call is audited (method `POST /webhooks`, target `webhook:<tenant>/<name>`), never with
 * its body or credentials.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { monotonicUlidFactory } from '../../common/ids.js';
import { authorize, resolveTenant, type Principal } from '../authz/index.js';
import { isTrellisError } from '../../common/errors.js';
import type { Webhooks, WebhookRefusal } from '../webhooks/index.js';
import type { Auth } from '../auth/index.js';
import type { EventIntake } from '../events/index.js';
import type { AuditEntry, AuditSink } from '../audit/types.js';
import type { Logger } from '../../common/log.js';
import type { Route } from './index.js';

export const MAX_WEBHOOK_BODY_BYTES = 256 * 1024;
const PREFIX = '/webhooks/';
const METHOD = 'POST /webhooks';

export interface WebhookRouteDeps {
  webhooks: Webhooks;
  auth: Auth;
  events: EventIntake;
  audit: AuditSink;
  log: Logger;
  /** @default 262144 (256 KiB) */
  maxBodyBytes?: number;
}

class Refusal {
  /** Why, as `webhooks list` counts it (set where it is thrown). */
  reason?: WebhookRefusal;
  constructor(readonly status: number, readonly message: string, readonly result: AuditEntry['result'], readonly detail: string, readonly close = false) {}
  as(reason: WebhookRefusal): this { this.reason = reason; return this; }
}

/** Text from the URL or a header, made safe for a log line or an audit record. */
const printable = (s: string, max = 100) => s.slice(0, max).replace(/[^\x20-\x7e]/g, '?');

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return typeof v === 'string' ? v : Array.isArray(v) ? v[0] : undefined;
}

/** An API key from `x-api-key` or `Authorization: Bearer`; undefined when neither is sent. */
function apiKeyOf(req: IncomingMessage): string | undefined {
  const k = header(req, 'x-api-key')?.trim();
  if (k) return k;
  const a = header(req, 'authorization')?.trim();
  if (!a) return undefined;
  const m = /^Bearer\s+(\S+)$/i.exec(a);
  return m ? m[1] : a;
}

function isJsonType(ct: string | undefined): boolean {
  const type = (ct ?? '').split(';')[0]!.trim().toLowerCase();
  return type === 'application/json' || /^application\/[a-z0-9.+-]+\+json$/.test(type);
}

/** Reads the body, counting bytes; stops reading (and pauses the request) past `max`. */
function readBody(req: IncomingMessage, max: number): Promise<Buffer | 'too-large'> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    const done = (v: Buffer | 'too-large' | Error) => {
      req.off('data', onData).off('end', onEnd).off('error', onError).off('aborted', onAborted);
      if (v instanceof Error) reject(v); else resolve(v);
    };
    const onData = (c: Buffer) => {
      n += c.length;
      if (n > max) { req.pause(); done('too-large'); return; }
      chunks.push(c);
    };
    const onEnd = () => done(Buffer.concat(chunks, n));
    const onError = (e: Error) => done(e);
    const onAborted = () => done(new Error('request aborted'));
    req.on('data', onData).on('end', onEnd).on('error', onError).on('aborted', onAborted);
  });
}

function reply(res: ServerResponse, status: number, body: unknown, close: boolean): void {
  const text = JSON.stringify(body);
  const headers: Record<string, string | number> = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' };
  if (status === 405) headers.allow = 'POST';
  if (close) headers.connection = 'close';
  res.writeHead(status, headers);
  res.end(text);
  // A body we did not read to its end is not drained: the connection goes.
  if (close) res.once('finish', () => res.socket?.destroySoon?.());
}

/** The tenant and name a path names, or undefined when the path is not a webhook path. */
function parsePath(url: string): { tenant?: string; name: string } | undefined {
  const path = url.split('?')[0]!;
  if (!path.startsWith(PREFIX)) return undefined;
  const parts = path.slice(PREFIX.length).split('/');
  if (parts.length === 1 && parts[0]) return { name: parts[0] };
  if (parts.length === 2 && parts[0] && parts[1]) return { tenant: parts[0], name: parts[1] };
  return undefined;
}

export function webhookRoute(d: WebhookRouteDeps): Route {
  const max = d.maxBodyBytes ?? MAX_WEBHOOK_BODY_BYTES;
  const newId = monotonicUlidFactory();

  return async (req, res) => {
    const where = parsePath(req.url ?? '');
    if (!where) return false;
    const start = performance.now();
    const asked = header(req, 'x-trellis-tenant');
    let tenant = where.tenant ?? asked ?? 'default';
    const name = where.name;
    let actor = '-';
    const audit = (result: AuditEntry['result'], detail: string) => d.audit.record({
      timeMs: Date.now(), actor, tenant: printable(tenant, 63), method: METHOD, target: `webhook:${printable(tenant, 63)}/${printable(name)}`,
      result, sourceAddress: req.socket.remoteAddress ?? '', detail: detail.slice(0, 300),
    });

    try {
      if (req.method !== 'POST') throw new Refusal(405, 'use POST', 'invalid', `method ${printable(req.method ?? '', 16)}`).as('method');
      if (where.tenant !== undefined && asked !== undefined && asked !== where.tenant) {
        throw new Refusal(400, 'the tenant in the path and in x-trellis-tenant differ', 'invalid', 'tenant mismatch', true).as('tenant-mismatch');
      }
      if (!isJsonType(header(req, 'content-type'))) {
        throw new Refusal(415, 'send the body as application/json', 'invalid', `content-type ${printable(header(req, 'content-type') ?? '(none)', 64)}`, true).as('content-type');
      }
      const declared = header(req, 'content-length');
      if (declared !== undefined && !(Number(declared) <= max)) {
        throw new Refusal(413, `the body is over ${max} bytes`, 'invalid', `content-length ${printable(declared, 20)}`, true).as('too-large');
      }

      let how: string;
      const key = apiKeyOf(req);
      if (key !== undefined) {
        let p: Principal;
        try {
          if (!key.startsWith('tak1_')) throw new Error('only API keys are accepted here');
          p = await d.auth.authenticate(key);
        } catch (e) {
          throw new Refusal(401, 'webhook credentials or signature invalid', 'unauthenticated', `api key: ${isTrellisError(e) ? e.message : (e as Error).message}`, true).as('api-key');
        }
        actor = p.apiKeyId ? `apikey:${p.apiKeyId}@${p.username}` : p.username;
        try {
          authorize(p, 'webhooks:post');
          tenant = resolveTenant(p, tenant);
        } catch (e) {
          throw new Refusal(403, (e as Error).message, 'denied', (e as Error).message, true).as('denied');
        }
        if (!(await d.webhooks.exists(tenant, name))) throw new Refusal(401, 'webhook credentials or signature invalid', 'unauthenticated', 'api key: unknown webhook', true);
        how = 'api key';
      }

      const body = await readBody(req, max);
      if (body === 'too-large') throw new Refusal(413, `the body is over ${max} bytes`, 'invalid', `body over ${max} bytes`, true).as('too-large');

      if (key === undefined) {
        const check = await d.webhooks.verify(tenant, name, header(req, 'x-trellis-signature'), body);
        if (!check.ok) throw new Refusal(401, 'webhook credentials or signature invalid', 'unauthenticated', `signature: ${check.reason}`).as(check.reason);
        actor = `webhook:${name}`;
        how = 'signature';
      }

      let parsed: unknown;
      try { parsed = JSON.parse(body.toString('utf8')); } catch { parsed = undefined; }
      if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
        throw new Refusal(400, 'the body must be a JSON object', 'invalid', 'body is not a JSON object').as('not-json');
      }

      const id = newId();
      d.events.publish([{ id, type: `webhook.${name}`, payload: body, timeMs: Date.now(), agentId: '', tenant }]);
      d.webhooks.received(tenant, name);
      audit('ok', `event ${id} (${how!}, ${body.length} bytes)`);
      d.log.info({ webhook: name, tenant, eventId: id, bytes: body.length, ms: Math.round(performance.now() - start) }, 'webhook accepted');
      reply(res, 202, { id }, false);
    } catch (e) {
      if (!(e instanceof Refusal)) throw e; // WebServer answers 500 and logs it
      audit(e.result, e.detail);
      if (e.reason) await d.webhooks.refused(tenant, name, e.reason).catch(() => undefined);
      d.log.warn({ webhook: printable(name), tenant: printable(tenant, 63), status: e.status, reason: e.detail, peer: req.socket.remoteAddress }, 'webhook refused');
      reply(res, e.status, { error: e.message }, e.close);
    }
    return true;
  };
}
