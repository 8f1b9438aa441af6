/**
 * The http runner's keep-alive pool (agent/runners/http-pool.ts), against real HTTP(S) servers on
 * loopback: connections are reused between runs that end cleanly and only then; a run stopped
 * mid-way (timeout, cancel) closes its connection; a connection set up without verifying the
 * server (insecure) never serves a run that asked for verification; a kept connection the server
 * reset is retried once for an idempotent request and never for a POST.
 */
import t, { type Test } from 'tap';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { generateKey, issueCertificate } from '../certs/index.js';
import { HttpPool, runAction, type RunInputs, type RunRequest, type RunResult } from '../agent/runner.js';

let seq = 0;
function request(http: Partial<NonNullable<RunRequest['http']>>, o: Partial<RunRequest> = {}): RunRequest {
  return {
    executionId: `exec-${++seq}`, argv: [], timeoutMs: 10_000, env: {}, cwd: '', sealedEnv: {}, runner: 'http', runAs: '',
    script: Buffer.alloc(0), scriptName: '', sealedStdin: '', action: 'test.action',
    http: { method: 'GET', url: '', headers: {}, body: Buffer.alloc(0), insecure: false, successStatus: [], sealedHeaders: {}, ...http }, ...o,
  };
}

function run(req: RunRequest, inputs: RunInputs, cancelOnOutput = false): Promise<{ result: RunResult; out: string }> {
  return new Promise((resolve) => {
    const out: Buffer[] = [];
    const h = runAction(req, {
      output: (stream, data) => { if (stream === 'STDOUT') { out.push(data); if (cancelOnOutput) h.cancel(); } },
      done: (result) => resolve({ result, out: Buffer.concat(out).toString() }),
    }, inputs);
  });
}

/** A server that counts connections and the requests each carried; `handler` answers. */
async function server(t: Test, handler: (req: http.IncomingMessage, res: http.ServerResponse, nth: number) => void, tls?: { key: string; cert: string }) {
  const sockets: Socket[] = [];
  const perSocket = new Map<Socket, number>();
  const closed = new Set<Socket>();
  const onRequest = (req: http.IncomingMessage, res: http.ServerResponse) => {
    const n = (perSocket.get(req.socket) ?? 0) + 1;
    perSocket.set(req.socket, n);
    req.resume();
    req.on('end', () => handler(req, res, n));
  };
  const srv = tls ? https.createServer(tls, onRequest) : http.createServer(onRequest);
  srv.keepAliveTimeout = 30_000;
  srv.on(tls ? 'secureConnection' : 'connection', (s: Socket) => { sockets.push(s); s.on('close', () => closed.add(s)); });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => { srv.closeAllConnections(); srv.close(() => resolve()); }));
  return { base: `${tls ? 'https' : 'http'}://127.0.0.1:${(srv.address() as AddressInfo).port}`, sockets, closed };
}

t.test('runs that end cleanly share one connection; without a pool each run has its own', async (t) => {
  const srv = await server(t, (_req, res) => res.end('ok'));
  const pool = new HttpPool();
  t.teardown(() => pool.close());
  for (let i = 0; i < 20; i++) {
    const r = await run(request({ url: `${srv.base}/${i}` }), { http: pool });
    t.equal(r.result.status, 'succeeded');
  }
  t.equal(srv.sockets.length, 1, '20 runs over one kept connection');
  const failed = await run(request({ url: `${srv.base}/x`, successStatus: [201] }), { http: pool });
  t.match(failed.result, { status: 'failed', exitCode: 200 });
  t.equal(srv.sockets.length, 1, 'a complete response with a status outside success_status keeps the connection too');
  t.equal(pool.idle().http, 1, 'the connection is idle in the pool');

  const bare = await server(t, (_req, res) => res.end('ok'));
  for (let i = 0; i < 5; i++) await run(request({ url: `${bare.base}/${i}` }), {});
  t.equal(bare.sockets.length, 5, 'no pool: one connection per run');
});

t.test('a run stopped mid-way (timeout, cancel) closes its connection; the next run gets a new one', async (t) => {
  const srv = await server(t, (req, res) => {
    if (req.url === '/slow') return; // never answers
    if (req.url === '/stream') { res.write('first\n'); return; } // never ends
    res.end('ok');
  });
  const pool = new HttpPool();
  t.teardown(() => pool.close());
  t.equal((await run(request({ url: `${srv.base}/a` }), { http: pool })).result.status, 'succeeded');
  const slow = await run(request({ url: `${srv.base}/slow` }, { timeoutMs: 300 }), { http: pool });
  t.equal(slow.result.status, 'timeout');
  t.equal(srv.sockets.length, 1, 'the timed-out run used the kept connection');
  const c = await run(request({ url: `${srv.base}/stream` }), { http: pool }, true);
  t.equal(c.result.status, 'canceled');
  await new Promise((r) => setTimeout(r, 100));
  t.equal(srv.closed.size, srv.sockets.length, 'every connection of a stopped run was closed, none went back to the pool');
  t.equal(pool.idle().http, 0);
  const after = await run(request({ url: `${srv.base}/b` }), { http: pool });
  t.equal(after.result.status, 'succeeded');
  t.equal(after.out, 'ok', 'the next run reads its own response, nothing left over from the stopped ones');
});

t.test('an insecure (unverified) connection never serves a run that asks for verification', async (t) => {
  const k = generateKey('ec-p256');
  const cert = issueCertificate({ issuerCertPem: null, issuerKey: k.privateKey, subjectPublicKey: k.publicKey, subject: { commonName: 'self' }, ipAddresses: ['127.0.0.1'], usage: 'server', notAfter: new Date(Date.now() + 3_600_000) });
  const srv = await server(t, (_req, res) => res.end('tls ok'), { key: k.privateKeyPem, cert });
  const pool = new HttpPool();
  t.teardown(() => pool.close());
  const insecure = await run(request({ url: `${srv.base}/`, insecure: true }), { http: pool });
  t.match(insecure, { out: 'tls ok', result: { status: 'succeeded' } });
  t.equal(pool.idle().httpsInsecure, 1, 'the insecure connection is kept, in its own pool');
  const strict = await run(request({ url: `${srv.base}/` }), { http: pool });
  t.equal(strict.result.status, 'error', 'the verifying run checked the certificate on a connection of its own');
  t.match(strict.result.error, /self[- ]signed/i);
  t.equal(pool.idle().https, 0);
  t.equal((await run(request({ url: `${srv.base}/`, insecure: true }), { http: pool })).result.status, 'succeeded');
  t.equal(srv.sockets.length, 1, 'the second insecure run reused the first one\'s connection');
});

t.test('a kept connection reset by the server: an idempotent request goes again on a new one, a POST is not repeated', async (t) => {
  let posts = 0;
  // The second request on any connection finds it reset (a server closing an idle connection as the request arrives).
  const srv = await server(t, (req, res, nth) => {
    if (req.method === 'POST') posts++;
    if (nth >= 2) { req.socket.resetAndDestroy(); return; }
    res.end('ok');
  });
  const pool = new HttpPool();
  t.teardown(() => pool.close());
  t.equal((await run(request({ url: `${srv.base}/1` }), { http: pool })).result.status, 'succeeded');
  const get = await run(request({ url: `${srv.base}/2` }), { http: pool });
  t.match(get, { result: { status: 'succeeded' }, out: 'ok' }, 'GET retried on a new connection');
  t.equal(srv.sockets.length, 2);
  // The retry's connection was its own; the first POST opens a new kept one, the second finds it reset.
  t.equal((await run(request({ method: 'POST', url: `${srv.base}/3`, body: Buffer.from('x') }), { http: pool })).result.status, 'succeeded');
  const post = await run(request({ method: 'POST', url: `${srv.base}/4`, body: Buffer.from('x') }), { http: pool });
  t.equal(post.result.status, 'error', 'the POST on the reset connection fails');
  t.match(post.result.error, /ECONNRESET/);
  t.equal(posts, 2, 'and was sent once, not again');
});

t.test('a closed pool: runs still work, each on a connection of its own', async (t) => {
  const srv = await server(t, (_req, res) => res.end('ok'));
  const pool = new HttpPool();
  pool.close();
  for (let i = 0; i < 3; i++) t.equal((await run(request({ url: `${srv.base}/${i}` }), { http: pool })).result.status, 'succeeded');
  t.equal(srv.sockets.length, 3);
});
