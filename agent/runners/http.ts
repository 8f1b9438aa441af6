/**
 * Runner `http`: the agent makes one HTTP(S) request.
 *
 * Output: the response head as the first STDERR chunk, in HTTP's own text form
 *   HTTP/1.1 200 OK
 *   content-type: application/json
 *   <blank line>
 * then the response body as STDOUT chunks (the run's 8 MiB output cap applies; past it the
 * connection is closed and a note goes to STDERR).
 * Result: succeeded (exitCode 0) when the status is in success_status (default: any 2xx), else
 * failed with exitCode = the status. Redirects are not followed (a 3xx is just a status).
 * Network and TLS errors are status error with the reason; the action timeout covers the whole
 * exchange; cancel aborts it. run_as does not apply (refused).
 * Connections are kept alive between runs in the agent's pool (./http-pool.ts) when the context
 * has one; a run that does not end cleanly (timeout, cancel, error, truncation) closes its own.
 */
import http from 'node:http';
import https from 'node:https';
import { errorOutcome, stopReason, stoppedOutcome, type Outcome, type RunContext } from './types.js';

export const MAX_URL_CHARS = 8192;
export const MAX_HEADERS = 100;
export const MAX_HEADER_BYTES = 64 * 1024;
export const MAX_BODY_BYTES = 8 * 1024 * 1024;
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$/;
const BAD_VALUE = /[\0\r\n]/;

/** The URL without credentials or query, for messages. */
function shown(u: URL): string {
  return `${u.protocol}//${u.host}${u.pathname}`;
}

interface Prepared { url: URL; method: string; headers: Record<string, string>; body: Buffer; success: (status: number) => boolean }

function prepare(ctx: RunContext): Prepared | Outcome {
  const spec = ctx.req.http;
  if (!spec) return errorOutcome('http: the request has no http spec (runner http)');
  if (ctx.req.runAs) return errorOutcome('run_as: does not apply to runner http (the agent makes the request itself)');
  if (ctx.stdin) return errorOutcome('stdin: does not apply to runner http; send data in http.body');
  const method = spec.method || 'GET';
  if (!TOKEN.test(method)) return errorOutcome(`http.method: '${method.slice(0, 32)}' is not a valid HTTP method`);
  if (!spec.url) return errorOutcome('http.url: required');
  if (spec.url.length > MAX_URL_CHARS) return errorOutcome(`http.url: ${spec.url.length} characters, over the ${MAX_URL_CHARS} limit`);
  let url: URL;
  try { url = new URL(spec.url); } catch { return errorOutcome('http.url: not a valid absolute URL'); }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return errorOutcome(`http.url: scheme ${url.protocol} is not supported (http or https)`);
  // Plain headers first, secret ones override (case-insensitively).
  const headers: Record<string, string> = {};
  const byLower = new Map<string, string>();
  let size = 0;
  for (const [source, map] of [['http.headers', spec.headers], ['http.sealed_headers', ctx.headers]] as const) {
    for (const [name, value] of Object.entries(map ?? {})) {
      if (!TOKEN.test(name)) return errorOutcome(`${source}: '${name.slice(0, 64)}' is not a valid header name`);
      if (BAD_VALUE.test(value)) return errorOutcome(`${source} ${name}: the value contains CR, LF or NUL`);
      const prev = byLower.get(name.toLowerCase());
      if (prev !== undefined) delete headers[prev];
      byLower.set(name.toLowerCase(), name);
      headers[name] = value;
      size += name.length + value.length + 4;
    }
  }
  if (byLower.size > MAX_HEADERS) return errorOutcome(`http.headers: ${byLower.size} headers, over the limit of ${MAX_HEADERS}`);
  if (size > MAX_HEADER_BYTES) return errorOutcome(`http.headers: ${size} bytes, over the ${MAX_HEADER_BYTES}-byte limit`);
  const body = spec.body ?? Buffer.alloc(0);
  if (body.length > MAX_BODY_BYTES) return errorOutcome(`http.body: ${body.length} bytes, over the ${MAX_BODY_BYTES}-byte limit`);
  if (body.length > 0 && !byLower.has('content-length') && !byLower.has('transfer-encoding')) headers['Content-Length'] = String(body.length);
  const codes = spec.successStatus ?? [];
  if (codes.length > 100) return errorOutcome('http.success_status: at most 100 codes');
  const badCode = codes.find((c) => !Number.isInteger(c) || c < 100 || c > 599);
  if (badCode !== undefined) return errorOutcome(`http.success_status: ${badCode} is not an HTTP status (100-599)`);
  const allowed = new Set(codes);
  return { url, method, headers, body, success: (s) => (allowed.size > 0 ? allowed.has(s) : s >= 200 && s <= 299) };
}

function headText(res: http.IncomingMessage): Buffer {
  const lines = [`HTTP/${res.httpVersion} ${res.statusCode ?? 0} ${res.statusMessage ?? ''}`.trimEnd()];
  for (let i = 0; i + 1 < res.rawHeaders.length; i += 2) lines.push(`${res.rawHeaders[i]}: ${res.rawHeaders[i + 1]}`);
  return Buffer.from(`${lines.join('\n')}\n\n`);
}

/** Methods a client may send again after a connection failure (RFC 9110 §9.2.2). */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);
/** Errors of a kept connection the server closed as the request went out (before any response). */
const STALE_CONNECTION = new Set(['ECONNRESET', 'EPIPE']);

export async function runHttp(ctx: RunContext): Promise<Outcome> {
  const p = prepare(ctx);
  if (!('url' in p)) return p;
  if (ctx.signal.aborted) return stoppedOutcome(ctx, -1, 'the request was not sent');
  const what = `${p.method} ${shown(p.url)}`;
  const insecure = p.url.protocol === 'https:' && !!ctx.req.http!.insecure;
  return new Promise<Outcome>((resolve) => {
    let settled = false;
    let req: http.ClientRequest;
    // clean: the response was read to its end, so the connection may go back to the pool.
    const settle = (o: Outcome, clean = false) => {
      if (settled) return;
      settled = true;
      ctx.signal.removeEventListener('abort', onAbort);
      if (!clean) req.destroy();
      resolve(o);
    };
    const onAbort = () => settle(stoppedOutcome(ctx, -1, `the request ${what} was aborted`));
    const send = (pooled: boolean) => {
      // A kept connection from the agent's pool (runners/http-pool.ts), or one of its own.
      const agent = (pooled && ctx.http?.agentFor(p.url, insecure)) || false;
      const options: https.RequestOptions = {
        method: p.method, headers: p.headers, agent,
        ...(p.url.protocol === 'https:' ? { rejectUnauthorized: !insecure } : {}),
      };
      try {
        req = (p.url.protocol === 'https:' ? https : http).request(p.url, options);
      } catch (err) {
        settle(errorOutcome(`http ${what}: ${(err as Error).message}`), true);
        return;
      }
      const mine = req;
      let responded = false;
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (mine !== req) return;
        if (stopReason(ctx.signal)) return onAbort();
        // The server closed a kept connection as this request went out: nothing was answered,
        // so an idempotent request goes once more, on a new connection.
        if (mine.reusedSocket && !responded && STALE_CONNECTION.has(err.code ?? '') && IDEMPOTENT.has(p.method.toUpperCase()) && !settled) {
          mine.destroy();
          send(false);
          return;
        }
        settle(errorOutcome(`http ${what} failed: ${err.code ? `${err.code}: ` : ''}${err.message}`));
      });
      req.on('response', (res) => {
        responded = true;
        const status = res.statusCode ?? 0;
        let truncated = false;
        ctx.output('STDERR', headText(res));
        res.on('data', (chunk: Buffer) => {
          if (truncated || ctx.output('STDOUT', chunk)) return;
          truncated = true;
          res.destroy();
        });
        res.on('error', () => { /* reported on close below */ });
        res.on('close', () => {
          if (stopReason(ctx.signal)) return onAbort();
          if (!res.complete && !truncated) return settle(errorOutcome(`http ${what}: the connection closed before the response body was complete (status ${status})`));
          const note = truncated ? 'the response body was truncated at the output limit' : '';
          settle(p.success(status)
            ? { status: 'succeeded', exitCode: 0, error: note }
            : { status: 'failed', exitCode: status, error: `HTTP status ${status}${res.statusMessage ? ` ${res.statusMessage}` : ''}${note ? `; ${note}` : ''}` }, !truncated);
        });
      });
      req.end(p.body.length > 0 ? p.body : undefined);
    };
    ctx.signal.addEventListener('abort', onAbort, { once: true });
    send(true);
    if (!settled) ctx.started(0);
  });
}
