/**
 * Limits on the web port (config `web`): live streams per user (429) and in all (503),
 * connections per source address (closed before the TLS handshake), and the handshake, header
 * and request timeouts that end slow clients. The hub keeps serving others throughout.
 */
import t, { type Test } from 'tap';
import * as net from 'node:net';
import * as tls from 'node:tls';
import * as https from 'node:https';
import { WebSocket } from 'ws';
import { startHub, login, waitFor, ADMIN_PASSWORD, type TestHub } from './helpers/hub.js';
import { call } from '../cli/client.js';

const PW = 'a-long-enough-password-1';

interface Conn { ws: WebSocket; closed: Promise<number> }

function stream(t: Test, h: TestHub, token: string): Promise<Conn> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`wss://127.0.0.1:${h.hub.webPort}/stream`, ['trellis.v1'], { ca: h.caPem, headers: { authorization: `Bearer ${token}` }, perMessageDeflate: false });
    const closed = new Promise<number>((r) => ws.on('close', (code) => r(code)));
    ws.on('open', () => resolve({ ws, closed }));
    ws.on('unexpected-response', (_q, res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d)).on('end', () => reject(Object.assign(new Error(body), { status: res.statusCode })));
    });
    ws.on('error', reject);
    t.teardown(() => ws.terminate());
  });
}

async function refusal(p: Promise<Conn>): Promise<{ status?: number; message: string }> {
  try { const c = await p; c.ws.close(); return { status: 101, message: '' }; } catch (e) { return { status: (e as { status?: number }).status, message: (e as Error).message }; }
}

function healthz(h: TestHub): Promise<number> {
  return new Promise((resolve, reject) => {
    https.get({ host: '127.0.0.1', port: h.hub.webPort, path: '/healthz', ca: h.caPem, servername: 'localhost', agent: false }, (res) => { res.resume(); resolve(res.statusCode ?? 0); }).on('error', reject);
  });
}

/** A TLS connection to the web port: resolves when the handshake is done, rejects if the hub closes it first. */
function tlsConnect(t: Test, h: TestHub): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port: h.hub.webPort, ca: h.caPem, servername: 'localhost' });
    s.once('secureConnect', () => resolve(s));
    s.once('error', reject);
    s.once('close', () => reject(new Error('closed before the handshake')));
    t.teardown(() => s.destroy());
  });
}

t.test('one user may hold at most web.maxStreamsPerUser streams (429, audited); others are not affected; the hub caps all streams at web.maxStreams (503)', async (t) => {
  const h = await startHub({ config: { web: { maxStreamsPerUser: 2, maxStreams: 4 } } });
  t.teardown(() => h.close());
  await call(h.admin, h.admin.users, h.admin.users.CreateUser, { username: 'r', password: PW, roles: ['user'], tenants: ['default'] });
  const r1 = (await login(h, 'r', PW)).token;
  const r2 = (await login(h, 'r', PW)).token; // a second session of the same user shares the limit
  const admin = (await login(h, 'admin', ADMIN_PASSWORD)).token;

  const a = await stream(t, h, r1);
  await stream(t, h, r2);
  const third = await refusal(stream(t, h, r1));
  t.equal(third.status, 429, 'the third stream of r is refused with 429');
  t.match(third.message, /r already has 2 streams open, the most one user may \(web\.maxStreamsPerUser\)/);
  t.equal((await refusal(stream(t, h, r2))).status, 429, 'whichever session asks');
  await t.resolves(stream(t, h, admin), 'another user still gets a stream (kept open: it counts towards the hub-wide cap below)');

  a.ws.close();
  await a.closed;
  let again: Conn | undefined;
  await waitFor(async () => { again = await stream(t, h, r1).catch(() => undefined); return again !== undefined; }, 5_000, 'a slot of r freed by a close');
  t.ok(again, 'a closed stream gives its slot back');

  // r holds 2, admin 1: one more fills the hub (4).
  await stream(t, h, admin);
  const full = await refusal(stream(t, h, admin));
  t.equal(full.status, 503, 'the hub-wide cap answers 503');
  t.match(full.message, /at most 4 streams/);
  t.equal(await healthz(h), 200, 'the web port still serves requests');

  await h.hub.components.audit.flush();
  const audited = await h.hub.components.audit.query({ methodContains: 'GET /stream', limit: 100 });
  t.ok(audited.some((x) => x.actor === 'r' && x.result === 'denied' && /maxStreamsPerUser/.test(x.detail)), 'the per-user refusal is audited');
});

t.test('connections per source address are capped (web.maxConnectionsPerClient): one more is closed before its handshake; a closed one frees its place', async (t) => {
  const h = await startHub({ config: { web: { maxConnectionsPerClient: 3 } } });
  t.teardown(() => h.close());
  const held = [await tlsConnect(t, h), await tlsConnect(t, h), await tlsConnect(t, h)];
  await t.rejects(tlsConnect(t, h), 'a fourth connection from the same address is closed');
  await t.rejects(healthz(h), 'even a plain request is closed while three are held');
  held[0]!.destroy();
  await waitFor(async () => { try { (await tlsConnect(t, h)).destroy(); return true; } catch { return false; } }, 5_000, 'a place freed');
  for (const s of held) s.destroy();
  await waitFor(async () => (await healthz(h).catch(() => 0)) === 200, 5_000, 'requests served again');
  t.equal(await healthz(h), 200, 'served again once the held connections closed');
});

t.test('slow clients are cut: no TLS handshake within web.handshakeTimeout, headers not finished within web.headersTimeout', async (t) => {
  const h = await startHub({ config: { web: { handshakeTimeout: '1s', headersTimeout: '1s', requestTimeout: '2s' } } });
  t.teardown(() => h.close());
  const ended = (s: net.Socket) => new Promise<number>((r) => { const t0 = performance.now(); s.on('error', () => undefined); s.once('close', () => r(performance.now() - t0)); });

  const raw = net.connect({ host: '127.0.0.1', port: h.hub.webPort }); // TCP only, never says hello
  t.teardown(() => raw.destroy());
  const rawMs = await ended(raw);
  t.ok(rawMs < 5_000, `a connection with no TLS handshake is closed after ${Math.round(rawMs)} ms (handshakeTimeout 1 s)`);

  const slow = await tlsConnect(t, h);
  let answer = '';
  slow.setEncoding('utf8').on('data', (d: string) => (answer += d));
  slow.write('GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: '); // never finishes its headers
  const slowMs = await ended(slow);
  t.ok(slowMs < 5_000, `unfinished headers are cut after ${Math.round(slowMs)} ms (headersTimeout 1 s)`);
  t.match(answer, /^HTTP\/1\.1 408/, 'with 408 Request Timeout');
  t.equal(await healthz(h), 200, 'others are served');
});

t.test('by default one user gets 8 streams: the 9th is refused with 429', async (t) => {
  const h = await startHub();
  t.teardown(() => h.close());
  const token = (await login(h, 'admin', ADMIN_PASSWORD)).token;
  for (let i = 0; i < 8; i++) await stream(t, h, token);
  t.equal((await refusal(stream(t, h, token))).status, 429);
});
