/**
 * The web port's fuzzer (`npm run fuzz -- --target web`): raw HTTP/1.1 over TLS to the hub's web
 * port (webhooks, /stream, /agent/* downloads, /healthz), written byte by byte so malformed
 * requests reach the server: random methods, paths (known routes, traversal, encodings, 64 KiB
 * long), headers (duplicated, oversized, bad Content-Length, chunked with bad chunks, Upgrade),
 * bodies (random, signed webhook bodies then mutated, oversized, truncated).
 *
 * Oracle, per case: an answer is a status the hub sends on purpose: 1xx-4xx, or 503 (shedding).
 * Any other 5xx is a finding. Requests built well-formed must be answered (a silent close or no
 * answer within the deadline is a finding); malformed or truncated ones may be closed without an
 * answer (Node's parser does that). Some cases name the exact 4xx they must get (an unknown path
 * 404, a webhook without credentials 401, a body over the limit 413). After each batch the hub
 * process must run and GET /healthz must answer 200.
 */
import tls from 'node:tls';
import { createHmac } from 'node:crypto';
import { writeCase } from './run.js';
import { caseRng, chance, int, pick, type Rng } from './gen.js';

export interface WebFuzzOptions {
  /** host:port of the web port (HTTPS). */
  webAddr: string;
  caPem: string;
  seconds: number;
  seed: number;
  maxCases?: number;
  /** A webhook of the fuzzer's own: its path (/webhooks/NAME) and HMAC secret, for signed bodies. */
  webhook?: { path: string; secret: string };
  /** An API key (for /stream and webhook cases with credentials). */
  apiKey?: string;
  hubExit?: () => string | undefined;
  outDir?: string;
  note?: (msg: string) => void;
  concurrency?: number;
  batchSize?: number;
  /** How long a well-formed request may wait for its answer (default 20 s). */
  deadlineMs?: number;
}

export interface WebCase {
  seed: number;
  index: number;
  kind: 'wellformed' | 'malformed' | 'truncated';
  /** The request bytes, base64. */
  bytes: string;
  /** The status it must get, when the case names one. */
  expect?: number;
  what: string;
}

export interface WebOutcome { status?: number; closedWithoutAnswer?: boolean; timedOut?: boolean; error?: string }

export interface WebFinding { case: WebCase; outcome: WebOutcome; reason: string; file?: string }

export interface WebFuzzResult {
  cases: number;
  crashes: number;
  crash?: { reason: string; file?: string };
  unexpected: WebFinding[];
  statuses: Record<string, number>;
}

const KNOWN_PATHS = ['/healthz', '/version', '/stream', '/agent/ca.pem', '/agent/install.sh', '/agent/bundle.tgz', '/agent/bundle.tgz.sha256', '/webhooks/', '/webhooks/fz-nope', '/webhooks/default/fz-nope', '/'];
const NASTY_PATHS = ['/../../../../etc/passwd', '/agent/../../ca.key', '/%2e%2e/%2e%2e/etc/passwd', '/webhooks/%00', '/webhooks/a/b/c', '//', '/stream?tenant=%ff', '/stream?tenant=a&tenant=b', '/agent/bundle.tgz?x=' + 'y'.repeat(500), '*', 'http://evil.example/', '/\u00e9t\u00e9', '/webhooks/__proto__', '/webhooks/constructor/prototype', '/healthz?', '/healthz#x', '/HEALTHZ'];
const METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'HEAD', 'OPTIONS', 'PATCH', 'TRACE', 'CONNECT', 'PROPFIND', 'get', 'G ET', 'GET\u0000', 'X'.repeat(40)];

/** Judges one answer. */
export function judgeWeb(c: Pick<WebCase, 'kind' | 'expect'>, o: WebOutcome): { ok: true } | { ok: false; reason: string } {
  if (o.status !== undefined) {
    if (o.status >= 500 && o.status !== 503) return { ok: false, reason: `status ${o.status}: an unhandled error in the hub` };
    if (c.expect !== undefined && o.status !== c.expect) return { ok: false, reason: `status ${o.status}, expected ${c.expect}` };
    return { ok: true };
  }
  if (c.kind !== 'wellformed') return { ok: true };
  if (o.timedOut) return { ok: false, reason: 'no answer before the deadline (hang)' };
  return { ok: false, reason: `a well-formed request closed without an answer${o.error ? ` (${o.error})` : ''}` };
}

function randomBytes(r: Rng, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = int(r, 256);
  return b;
}

function sign(secret: string, body: Buffer, t = Math.floor(Date.now() / 1000)): string {
  return `t=${t},v1=${createHmac('sha256', secret).update(`${t}.`).update(body).digest('hex')}`;
}

/** The case with this index: a function of (seed, index) and the options (the webhook secret). */
export function makeWebCase(o: Pick<WebFuzzOptions, 'seed' | 'webhook' | 'apiKey' | 'webAddr'>, index: number): WebCase {
  const r = caseRng(o.seed ^ 0x5eb, index);
  const host = o.webAddr;
  const done = (kind: WebCase['kind'], bytes: Buffer, what: string, expect?: number): WebCase => ({ seed: o.seed, index, kind, bytes: bytes.toString('base64'), expect, what });
  const req = (method: string, path: string, headers: Array<[string, string]>, body?: Buffer) => {
    const head = `${method} ${path} HTTP/1.1\r\nHost: ${host}\r\n${headers.map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n`;
    return Buffer.concat([Buffer.from(head, 'latin1'), body ?? Buffer.alloc(0)]);
  };
  const closeHdr: [string, string] = ['Connection', 'close'];
  switch (int(r, 10)) {
    case 0: { // an unknown path, well-formed: 404
      const path = `/fz-${int(r, 1e6)}/${pick(r, ['a', 'b.txt', '..%2f', ''])}`;
      return done('wellformed', req('GET', path, [closeHdr]), `GET unknown ${path}`, 404);
    }
    case 1: { // a webhook POST without credentials: 401 (an unknown webhook is answered exactly so)
      const body = Buffer.from(JSON.stringify({ x: int(r, 100) }));
      const path = o.webhook && chance(r, 0.5) ? o.webhook.path : '/webhooks/fz-nope';
      return done('wellformed', req('POST', path, [closeHdr, ['Content-Type', 'application/json'], ['Content-Length', String(body.length)]], body), `POST ${path} without credentials`, 401);
    }
    case 2: { // a signed webhook body, sometimes tweaked after signing (must be 2xx or 4xx)
      if (!o.webhook) return done('wellformed', req('GET', '/healthz', [closeHdr]), 'GET /healthz', 200);
      let body = chance(r, 0.5) ? Buffer.from(JSON.stringify({ fz: int(r, 1e9), s: 'x'.repeat(int(r, 200)) })) : randomBytes(r, int(r, 300));
      let sig = sign(o.webhook.secret, body, chance(r, 0.2) ? int(r, 2e9) : undefined);
      const tweak = int(r, 5);
      if (tweak === 1) body = Buffer.concat([body, Buffer.from('x')]);
      if (tweak === 2) sig = sig.replace(/v1=./, 'v1=0');
      if (tweak === 3) sig = pick(r, ['', 't=', 'v1=', 't=1,v1=zz', `t=${'9'.repeat(400)},v1=aa`, sig + ',v1=' + sig]);
      const headers: Array<[string, string]> = [closeHdr, ['Content-Type', pick(r, ['application/json', 'text/plain', 'application/x-www-form-urlencoded', ''])], ['Content-Length', String(body.length)], ['X-Trellis-Signature', sig]];
      if (chance(r, 0.2)) headers.push(['X-Trellis-Tenant', pick(r, ['default', 'nope', '', '*', 'a'.repeat(300)])]);
      return done('wellformed', req('POST', o.webhook.path, headers, body), `POST signed webhook (tweak ${tweak})`);
    }
    case 3: { // a body over the limit, announced by Content-Length: 413 (or closed early)
      const n = pick(r, [2 * 1024 * 1024, 64 * 1024 * 1024, 2 ** 40]);
      const sent = randomBytes(r, Math.min(n, 256 * 1024));
      const path = o.webhook?.path ?? '/webhooks/fz-nope';
      return done('truncated', req('POST', path, [closeHdr, ['Content-Length', String(n)], ['X-Trellis-Signature', 't=1,v1=00']], sent), `POST ${n} bytes announced`);
    }
    case 4: { // truncated: the body stops short of its Content-Length, or chunked with bad chunks
      const path = pick(r, [...KNOWN_PATHS, o.webhook?.path ?? '/webhooks/x']);
      if (chance(r, 0.5)) return done('truncated', req('POST', path, [closeHdr, ['Content-Length', String(100 + int(r, 1000))]], randomBytes(r, int(r, 90))), `POST ${path} truncated body`);
      const chunks = pick(r, ['5\r\nabc', 'zz\r\nabc\r\n0\r\n\r\n', 'ffffffffffffffff\r\nx\r\n', '3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n', '-1\r\n\r\n']);
      return done('malformed', req('POST', path, [closeHdr, ['Transfer-Encoding', pick(r, ['chunked', 'chunked, gzip', 'gzip'])]], Buffer.from(chunks)), `POST ${path} bad chunks`);
    }
    case 5: { // random method and path, random headers, well-formed syntax where possible
      const method = pick(r, METHODS);
      const path = pick(r, [...KNOWN_PATHS, ...NASTY_PATHS]);
      const headers: Array<[string, string]> = [closeHdr];
      const n = int(r, 6);
      for (let i = 0; i < n; i++) {
        headers.push(pick(r, [
          ['Authorization', pick(r, ['Bearer ', 'Bearer tak1_' + 'a'.repeat(int(r, 80)), 'Basic Zm9vOmJhcg==', o.apiKey ? `Bearer ${o.apiKey}` : 'Bearer x'])],
          ['X-Api-Key', pick(r, ['tak1_', 'tak1_zzzz', o.apiKey ?? 'x'])],
          ['X-Trellis-Tenant', pick(r, ['default', '..', '', '\u00ff'])],
          ['Content-Length', pick(r, ['0', '-1', '1e3', 'abc', '18446744073709551616'])],
          ['Range', 'bytes=0-1,5-'], ['Accept-Encoding', 'gzip, br'], ['If-None-Match', '*'], ['Expect', '100-continue'],
          ['Upgrade', 'websocket'], ['Connection', 'Upgrade'], ['Sec-WebSocket-Version', pick(r, ['13', '8', 'x'])], ['Sec-WebSocket-Key', pick(r, ['dGhlIHNhbXBsZSBub25jZQ==', 'short', ''])],
          ['X-Big', 'b'.repeat(pick(r, [100, 8000, 20000]))],
        ] as Array<[string, string]>));
      }
      // CONNECT: Node closes the connection without an answer (the hub serves no proxy).
      const malformed = !/^[A-Z]+$/.test(method) || method === 'CONNECT' || /[^\x21-\x7e]/.test(path) || headers.some(([k, v]) => (k === 'Content-Length' && v !== '0') || k === 'X-Big' || k === 'Upgrade' || k === 'Expect');
      return done(malformed ? 'malformed' : 'wellformed', req(method, path, headers), `${method.slice(0, 12)} ${path.slice(0, 40)} with ${n} headers`);
    }
    case 6: // pure garbage, or an HTTP/2 preface, or TLS-in-TLS
      return done('malformed', pick(r, [randomBytes(r, int(r, 4000)), Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]), Buffer.from('GET / HTTP/1.1\r\n' + 'X: y\r\n'.repeat(3000) + '\r\n')]), 'garbage');
    case 7: { // a very long request line
      const path = '/' + 'a'.repeat(pick(r, [8_000, 70_000]));
      return done('malformed', req('GET', path, [closeHdr]), `GET ${path.length}-byte path`);
    }
    case 8: { // /stream (a WebSocket upgrade): without credentials, with a bad key, bad tenant (must be refused, never 5xx)
      const headers: Array<[string, string]> = [['Connection', 'Upgrade'], ['Upgrade', 'websocket'], ['Sec-WebSocket-Version', '13'], ['Sec-WebSocket-Key', 'dGhlIHNhbXBsZSBub25jZQ==']];
      if (chance(r, 0.5)) headers.push(['Authorization', `Bearer ${pick(r, ['tak1_nope', 'x', o.apiKey ?? 'y'])}`]);
      if (chance(r, 0.5)) headers.push(['X-Trellis-Tenant', pick(r, ['default', 'nope', 'fz'])]);
      const path = pick(r, ['/stream', '/stream?tenant=nope', '/stream?types=' + 'x,'.repeat(500), '/stream?since=-1', '/stream?tenant=default&x=%zz']);
      const withKey = headers.some(([k, v]) => k === 'Authorization' && o.apiKey !== undefined && v.endsWith(o.apiKey));
      // The query and tenant are checked first (400), then the credentials: a plain request without any is 401.
      const plain = path === '/stream' && !headers.some(([k]) => k === 'Authorization' || k === 'X-Trellis-Tenant');
      return done('wellformed', req('GET', path, headers), `GET ${path.slice(0, 40)}${withKey ? ' with a key' : ''}`, plain ? 401 : undefined);
    }
    default: { // downloads: HEAD/GET with ranges and conditions
      const path = pick(r, ['/agent/ca.pem', '/agent/install.sh', '/agent/bundle.tgz', '/agent/bundle.tgz.sha256', '/agent/', '/agent/nope', '/agent/ca.pem/x']);
      const method = pick(r, ['GET', 'HEAD', 'POST', 'DELETE']);
      const headers: Array<[string, string]> = [closeHdr];
      if (chance(r, 0.4)) headers.push(['Range', pick(r, ['bytes=0-10', 'bytes=-5', 'bytes=99999999-', 'bytes=a-b', 'bytes=0-1,3-4'])]);
      if (chance(r, 0.3)) headers.push(['If-None-Match', pick(r, ['*', '"x"', 'W/"y"'])]);
      return done('wellformed', req(method, path, headers), `${method} ${path}`);
    }
  }
}

/** Sends one case and reads the status line of the answer (or how the connection ended). */
export function sendWebCase(webAddr: string, caPem: string, c: WebCase, deadlineMs: number): Promise<WebOutcome> {
  const i = webAddr.lastIndexOf(':');
  const host = webAddr.slice(0, i), port = Number(webAddr.slice(i + 1));
  const bytes = Buffer.from(c.bytes, 'base64');
  return new Promise((resolve) => {
    let got = '';
    let settled = false;
    const sock = tls.connect({ host, port, ca: caPem, servername: host === '127.0.0.1' ? undefined : host, checkServerIdentity: () => undefined });
    const finish = (o: WebOutcome) => { if (!settled) { settled = true; clearTimeout(timer); sock.destroy(); resolve(o); } };
    const timer = setTimeout(() => finish({ timedOut: true }), deadlineMs);
    sock.on('secureConnect', () => {
      // A TLS half-close ends the connection for the server: only requests that may go unanswered send it.
      sock.write(bytes, () => { if (c.kind !== 'wellformed' && chance(caseRng(c.seed, c.index), 0.5)) sock.end(); });
    });
    sock.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(got);
      if (m) {
        const status = Number(m[1]);
        // 100 Continue: wait for the final status.
        if (status === 100) { const rest = got.indexOf('\r\n\r\n'); if (rest >= 0) { got = got.slice(rest + 4); } return; }
        finish({ status });
      } else if (got.length > 64 && !got.startsWith('HTTP/')) finish({ error: `not HTTP: ${JSON.stringify(got.slice(0, 40))}` });
    });
    sock.on('error', (err) => finish({ closedWithoutAnswer: true, error: err.message }));
    sock.on('close', () => finish({ closedWithoutAnswer: true }));
  });
}

/** GET /healthz answers 200. */
async function healthy(o: WebFuzzOptions): Promise<string | undefined> {
  const exit = o.hubExit?.();
  if (exit !== undefined) return `hub process exited (${exit})`;
  const out = await sendWebCase(o.webAddr, o.caPem, { seed: 0, index: 0, kind: 'wellformed', what: 'probe', bytes: Buffer.from(`GET /healthz HTTP/1.1\r\nHost: ${o.webAddr}\r\nConnection: close\r\n\r\n`).toString('base64') }, 15_000);
  const exit2 = o.hubExit?.();
  if (exit2 !== undefined) return `hub process exited (${exit2})`;
  return out.status === 200 ? undefined : `GET /healthz: ${out.status ?? (out.timedOut ? 'no answer in 15 s' : `closed (${out.error ?? 'no answer'})`)}`;
}

export async function runWebFuzz(o: WebFuzzOptions): Promise<WebFuzzResult> {
  const result: WebFuzzResult = { cases: 0, crashes: 0, unexpected: [], statuses: {} };
  const note = o.note ?? (() => undefined);
  // The hub builds the agent bundle on its first request (seconds, more on a busy machine): once,
  // before the clock starts, so the fuzzer's deadline measures answers, not the build.
  const t0 = Date.now();
  const warm = await sendWebCase(o.webAddr, o.caPem, { seed: 0, index: 0, kind: 'wellformed', what: 'warm-up', bytes: Buffer.from(`GET /agent/bundle.tgz.sha256 HTTP/1.1\r\nHost: ${o.webAddr}\r\nConnection: close\r\n\r\n`).toString('base64') }, 180_000);
  note(`web: the agent bundle answered ${warm.status ?? JSON.stringify(warm)} in ${Date.now() - t0} ms (built on first request)`);
  const started = Date.now();
  const batchSize = o.batchSize ?? 32;
  const concurrency = o.concurrency ?? 4;
  let index = 0;
  while (Date.now() - started < o.seconds * 1000 && (o.maxCases === undefined || index < o.maxCases)) {
    const end = o.maxCases === undefined ? index + batchSize : Math.min(o.maxCases, index + batchSize);
    const batch: WebCase[] = [];
    for (; index < end; index++) batch.push(makeWebCase(o, index));
    let next = 0;
    await Promise.all(Array.from({ length: concurrency }, async () => {
      while (next < batch.length) {
        const c = batch[next++]!;
        const out = await sendWebCase(o.webAddr, o.caPem, c, o.deadlineMs ?? 20_000);
        result.cases++;
        const k = out.status !== undefined ? String(out.status) : out.timedOut ? 'timeout' : 'closed';
        result.statuses[k] = (result.statuses[k] ?? 0) + 1;
        const v = judgeWeb(c, out);
        if (!v.ok) {
          const file = result.unexpected.length < 100 ? writeCase(o.outDir, `web-unexpected-${o.seed}-${c.index}.json`, { ...c, outcome: out, reason: v.reason }) : undefined;
          result.unexpected.push({ case: c, outcome: out, reason: v.reason, file });
          note(`unexpected: web case ${c.index} (${c.what}): ${v.reason}${file ? ` -> ${file}` : ''}`);
        }
      }
    }));
    const down = await healthy(o);
    if (down) {
      result.crashes++;
      const file = writeCase(o.outDir, `web-crash-${o.seed}-${batch[0]?.index ?? 0}.json`, { reason: down, cases: batch });
      result.crash = { reason: down, file };
      note(`hub down after web cases ${batch[0]?.index}..${index - 1}: ${down}`);
      break;
    }
  }
  return result;
}
