/**
 * The live stream (wss://HUB:WEBPORT/stream, hub/web/stream.ts) and `trellis events`: filters
 * by type and agent, tenant isolation, refusals (401 bad credentials, 403 no events:read /
 * executions:read / tenant, 400 bad query), revoked credentials closing the stream (4001), a
 * slow consumer closed with 4008 while another keeps receiving, and the real CLI.
 */
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import * as https from 'node:https';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';
import { ulid } from 'ulid';
import { startHub, login, tempDir, waitFor, ADMIN_PASSWORD, type TestHub } from './helpers/hub.js';
import { adminClients, call } from '../cli/client.js';
import { writeProfile } from '../cli/profile.js';
import { signWebhook } from '../hub/webhooks/index.js';
import type { HubEvent } from '../hub/events/index.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const PW = 'a-long-enough-password-1';
const bin = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'trellis.js');

interface Msg { kind: string; id?: string; type?: string; agent?: string; tenant?: string; timeMs?: number; payload?: unknown }
interface Conn { ws: WebSocket; messages: Msg[]; closed: Promise<{ code: number; reason: string }> }

/** Opens a stream; rejects with the HTTP status when the upgrade is refused. */
function connect(t: Test, h: TestHub, o: { token?: string; headers?: Record<string, string>; query?: string; protocols?: string[] } = {}): Promise<Conn> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { ...(o.headers ?? {}) };
    if (o.token) headers.authorization = `Bearer ${o.token}`;
    const ws = new WebSocket(`wss://127.0.0.1:${h.hub.webPort}/stream${o.query ?? ''}`, o.protocols ?? ['trellis.v1'], { ca: h.caPem, headers, perMessageDeflate: false });
    const messages: Msg[] = [];
    const closed = new Promise<{ code: number; reason: string }>((r) => ws.on('close', (code, reason) => r({ code, reason: reason.toString() })));
    ws.on('message', (d) => messages.push(JSON.parse(d.toString()) as Msg));
    ws.on('open', () => resolve({ ws, messages, closed }));
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d)).on('end', () => reject(Object.assign(new Error(body), { status: res.statusCode })));
    });
    ws.on('error', reject);
    t.teardown(() => ws.terminate());
  });
}

async function statusOf(p: Promise<Conn>): Promise<number | string> {
  try { const c = await p; c.ws.close(); return 101; } catch (e) { return (e as { status?: number }).status ?? (e as Error).message; }
}

const ev = (tenant: string, type: string, payload: unknown = {}, agentId = 'agent-1'): HubEvent =>
  ({ id: ulid(), type, payload: Buffer.from(JSON.stringify(payload)), timeMs: Date.now(), agentId, tenant });

const USERS = { r: [['user'], ['red']], b: [['user'], ['blue']], nobody: [[], ['red']], evonly: [['events-only'], ['red']] } as const;
type Who = keyof typeof USERS | 'admin';

/** A hub with tenants red and blue, and login tokens of the users asked for (password hashing is slow: ask for few). */
async function world(t: Test, who: Who[]): Promise<{ h: TestHub; tokens: Record<string, string> }> {
  const h = await startHub();
  t.teardown(() => h.close());
  for (const name of ['red', 'blue']) await call(h.admin, h.admin.tenants, h.admin.tenants.CreateTenant, { name, description: '' });
  await call(h.admin, h.admin.roles, h.admin.roles.CreateRole, { name: 'events-only', description: '', grants: [{ permission: 'events:read', scope: '' }, { permission: 'apikeys:create', scope: '' }] });
  const tokens: Record<string, string> = {};
  for (const u of who) {
    if (u !== 'admin') {
      const [roles, tenants] = USERS[u];
      await call(h.admin, h.admin.users, h.admin.users.CreateUser, { username: u, password: PW, roles: [...roles], tenants: [...tenants] });
    }
    tokens[u] = (await login(h, u, u === 'admin' ? ADMIN_PASSWORD : PW)).token;
  }
  return { h, tokens };
}

t.test('a stream gets its tenant\'s events filtered by type and agent; another tenant\'s never arrive; admins may follow `*`', async (t) => {
  const { h, tokens: w } = await world(t, ['r', 'b', 'admin']);
  const red = await connect(t, h, { token: w.r, query: '?type=core.*,webhook.deploy' });
  const redAgent = await connect(t, h, { token: w.r, headers: { 'x-trellis-tenant': 'red' }, query: '?agent=agent-2' });
  const blue = await connect(t, h, { token: w.b });
  const all = await connect(t, h, { token: w.admin, query: '?tenant=*' });
  const browser = await connect(t, h, { protocols: ['trellis.v1', `trellis.bearer.${w.r}`] });
  t.equal(browser.ws.protocol, 'trellis.v1', 'the hub selects trellis.v1, not the bearer protocol');

  h.hub.components.events.publish([
    ev('red', 'core.cpu', { load: 3 }), ev('red', 'disk.full'), ev('blue', 'core.cpu', { secret: 'blue-only' }),
    ev('red', 'core.mem', {}, 'agent-2'), ev('red', 'webhook.deploy', { ref: 'main' }, ''),
  ]);
  await waitFor(() => all.messages.length === 5 && red.messages.length === 3 && blue.messages.length === 1 && redAgent.messages.length === 1 && browser.messages.length === 4, 5000, 'messages');
  t.same(red.messages.map((m) => m.type), ['core.cpu', 'core.mem', 'webhook.deploy'], 'type globs');
  t.same(red.messages[0], { kind: 'event', id: red.messages[0]!.id, type: 'core.cpu', agent: 'agent-1', tenant: 'red', timeMs: red.messages[0]!.timeMs, payload: { load: 3 } });
  t.same(redAgent.messages.map((m) => [m.type, m.agent]), [['core.mem', 'agent-2']], 'agent filter');
  t.same(blue.messages.map((m) => [m.tenant, m.type]), [['blue', 'core.cpu']], 'blue sees blue only');
  t.notOk([...red.messages, ...redAgent.messages, ...browser.messages].some((m) => m.tenant !== 'red'), 'red never sees another tenant');
  t.same(new Set(all.messages.map((m) => m.tenant)), new Set(['red', 'blue']), 'an administrator following `*` sees every tenant');

  // A real webhook call reaches the stream too.
  const a = adminFor(h, w.admin, 'red');
  t.teardown(() => a.close());
  const { secret } = await call<T.CreateWebhookRequest, T.CreateWebhookResponse__Output>(a, a.webhooks, a.webhooks.CreateWebhook, { name: 'deploy', description: '' });
  const body = '{"ref":"v2"}';
  const res = await fetchWebhook(h, '/webhooks/red/deploy', body, signWebhook(secret, body, Math.floor(Date.now() / 1000)));
  t.equal(res, 202);
  await waitFor(() => red.messages.length === 4, 5000, 'the webhook event');
  t.same(red.messages[3]!.payload, { ref: 'v2' });
  t.equal(red.messages[3]!.agent, '');
});

const adminFor = (h: TestHub, token: string, tenant: string) => adminClients(h.adminAddr, h.caPem, token, tenant);
function fetchWebhook(h: TestHub, path: string, body: string, sig: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port: h.hub.webPort, path, method: 'POST', ca: h.caPem, servername: 'localhost', agent: false,
      headers: { 'content-type': 'application/json', 'x-trellis-signature': sig } }, (res) => { res.resume(); resolve(res.statusCode ?? 0); });
    req.on('error', reject);
    req.end(body);
  });
}

t.test('refusals: 401 bad credentials, 403 without events:read, executions:read or the tenant, 400 bad query', async (t) => {
  const { h, tokens: w } = await world(t, ['r', 'nobody', 'evonly']);
  t.equal(await statusOf(connect(t, h)), 401, 'no credentials');
  t.equal(await statusOf(connect(t, h, { token: 'tls1_not-a-real-token' })), 401, 'a bad token');
  t.equal(await statusOf(connect(t, h, { headers: { 'x-api-key': 'tak1_0123456789abcdef_' + 'x'.repeat(43) } })), 401, 'a bad API key');
  t.equal(await statusOf(connect(t, h, { token: w.nobody })), 403, 'no events:read');
  t.equal(await statusOf(connect(t, h, { token: w.evonly })), 101, 'events:read is enough for events');
  t.equal(await statusOf(connect(t, h, { token: w.evonly, query: '?kinds=events,executions' })), 403, 'execution updates need executions:read');
  t.equal(await statusOf(connect(t, h, { token: w.r, query: '?kinds=executions' })), 101, 'a user holds executions:read');
  t.equal(await statusOf(connect(t, h, { token: w.r, query: '?tenant=blue' })), 403, 'another tenant');
  t.equal(await statusOf(connect(t, h, { token: w.r, query: '?tenant=*' })), 403, '`*` is for administrators');
  t.equal(await statusOf(connect(t, h, { token: w.r, query: '?tenant=red', headers: { 'x-trellis-tenant': 'blue' } })), 400, 'header and query disagree');
  t.equal(await statusOf(connect(t, h, { token: w.r, query: '?kinds=logs' })), 400, 'an unknown kind');
  t.equal(await statusOf(connect(t, h, { token: w.r, query: '?colour=red' })), 400, 'an unknown parameter');
  t.equal(await statusOf(connect(t, h, { token: w.r, query: `?type=${'x'.repeat(200)}` })), 400, 'a pattern over 128 characters');
  await h.hub.components.audit.flush();
  const refused = await h.hub.components.audit.query({ methodContains: 'GET /stream', limit: 100 });
  t.ok(refused.some((r) => r.actor === 'nobody' && r.result === 'denied'), 'a refused stream is audited');
  t.ok(refused.some((r) => r.actor === '-' && r.result === 'unauthenticated'));
  t.notOk(JSON.stringify(refused).includes('not-a-real-token'), 'without the credential');
});

t.test('execution updates and output reach streams that ask for them, filtered by execution and tenant', async (t) => {
  const { h, tokens: w } = await world(t, ['r', 'b']);
  const [A, B, C] = [ulid().toLowerCase(), ulid().toLowerCase(), ulid().toLowerCase()]; // edge execution ids are ULIDs
  const execs = await connect(t, h, { token: w.r, query: '?kinds=executions' });
  const one = await connect(t, h, { token: w.r, query: `?kinds=events,executions&execution=${B}` });
  const eventsOnly = await connect(t, h, { token: w.r });
  const blue = await connect(t, h, { token: w.b, query: '?kinds=executions' });
  const edge = (id: string, tenant: string) => h.hub.components.executions.recordEdge('agent-1', tenant, ulid(), {
    executionId: id, rule: 'r1', action: 'core.echo', triggerEventId: 'e1', parameters: {}, status: 'succeeded', exitCode: 0, error: '',
    startedMs: Date.now() - 5, finishedMs: Date.now(), output: 'hello\n', outputTruncated: false,
  }, { action: 'core.echo', createdMs: 0 }); // as if the hub had sent agent-1 the edge rule r1
  edge(A, 'red');
  edge(B, 'red');
  edge(C, 'blue');
  h.hub.components.events.publish([ev('red', 'core.cpu')]);
  await waitFor(() => execs.messages.length === 4 && one.messages.length === 3 && eventsOnly.messages.length === 1 && blue.messages.length === 2, 5000, 'messages');
  t.same(execs.messages.map((m) => m.kind), ['execution', 'output', 'execution', 'output']);
  const rec = (execs.messages[0] as unknown as { record: Record<string, unknown> }).record;
  t.same({ id: rec.id, tenant: rec.tenant, status: rec.status, agentId: rec.agentId }, { id: A, tenant: 'red', status: 'succeeded', agentId: 'agent-1' });
  t.same(execs.messages[1], { kind: 'output', executionId: A, stream: 'STDOUT', data: 'hello\n' });
  t.same(one.messages.map((m) => m.kind), ['execution', 'output', 'event'], 'the execution filter keeps events and the one execution');
  t.equal((one.messages[0] as unknown as { record: { id: string } }).record.id, B);
  t.same(eventsOnly.messages.map((m) => m.kind), ['event'], 'no execution updates unless asked');
  t.same(blue.messages.map((m) => (m as unknown as { record?: { id: string }; executionId?: string }).record?.id ?? (m as unknown as { executionId: string }).executionId), [C, C], 'blue sees blue executions only');
});

t.test('revoked credentials close the stream with 4001: API key disabled, user deactivated', async (t) => {
  const { h, tokens: w } = await world(t, ['r', 'evonly']);
  const c = adminFor(h, w.evonly, 'red');
  t.teardown(() => c.close());
  const key = await call<T.CreateApiKeyRequest, T.CreateApiKeyResponse__Output>(c, c.apikeys, c.apikeys.CreateApiKey, { name: 'dash' });
  const byKey = await connect(t, h, { headers: { 'x-api-key': key.key } });
  const byLogin = await connect(t, h, { token: w.r });
  await call(c, c.apikeys, c.apikeys.SetApiKeyEnabled, { id: key.info!.id, enabled: false });
  t.same(await byKey.closed, { code: 4001, reason: 'credentials revoked' });
  await call(h.admin, h.admin.users, h.admin.users.SetUserActive, { username: 'r', active: false });
  t.equal((await byLogin.closed).code, 4001);
  t.equal(await statusOf(connect(t, h, { headers: { 'x-api-key': key.key } })), 401, 'and it cannot come back');
});

t.test('a slow consumer is closed with 4008 while another consumer keeps receiving', async (t) => {
  const { h, tokens: w } = await world(t, ['admin']);
  const slow = await connect(t, h, { token: w.admin, query: '?tenant=red' });
  const fast = await connect(t, h, { token: w.admin, query: '?tenant=red' });
  slow.ws.pause(); // stops reading its socket: the hub's send buffer for it grows
  const pad = 'x'.repeat(1024 * 1024);
  const slowLogged = () => h.logLines.some((l) => l.includes('stream closed: slow consumer'));
  let sent = 0;
  while (!slowLogged() && sent < 200) {
    h.hub.components.events.publish([ev('red', 'bulk', { n: sent, pad })]);
    sent++;
    const want = sent;
    await waitFor(() => fast.messages.length === want, 10_000, `fast consumer got ${want}`);
  }
  t.ok(slowLogged(), `the hub gave up on the slow consumer after ${sent} MiB`);
  t.equal(fast.ws.readyState, WebSocket.OPEN, 'the other consumer is still open');
  h.hub.components.events.publish([ev('red', 'after')]);
  await waitFor(() => fast.messages.at(-1)?.type === 'after', 5000, 'the next event');
  slow.ws.resume();
  const closed = await slow.closed;
  t.equal(closed.code, 4008);
  t.match(closed.reason, /^slow consumer: /);
  t.ok(slow.messages.length <= sent, 'what was queued before the close still arrives, in order');
  t.notOk(slow.messages.some((m) => m.type === 'after'), 'nothing is sent after it was given up on');
});

function trellis(args: string[], env: Record<string, string>): { done: Promise<{ code: number | null; out: string; err: string }>; out: () => string; kill: (s: NodeJS.Signals) => void } {
  const c = spawn(process.execPath, [bin, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '', err = '';
  c.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  c.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const done = new Promise<{ code: number | null; out: string; err: string }>((resolve) => c.on('close', (code) => resolve({ code, out, err })));
  return { done, out: () => out, kill: (s) => c.kill(s) };
}

t.test('trellis events --follow prints live events (one line, or JSON); without --follow it says why not', async (t) => {
  const { h } = await world(t, []);
  await call(h.admin, h.admin.users, h.admin.users.CreateUser, { username: 'r', password: PW, roles: ['user'], tenants: ['red'] });
  await using home = await tempDir();
  const l = await login(h, 'r', PW);
  await writeProfile({ hub: h.adminAddr, caPem: h.caPem, username: 'r', token: l.token, expiresAtMs: Number(l.expiresAtMs), tenant: 'red' }, { TRELLIS_HOME: home.path });
  const env = { TRELLIS_HOME: home.path, TRELLIS_TENANT: '' };

  const nofollow = await trellis(['events'], env).done;
  t.equal(nofollow.code, 1);
  t.match(nofollow.err, /no event history.*trellis events --follow.*TRELLIS_E_INVALID_ARGUMENT/);

  const text = trellis(['events', '--follow', '--type', 'app.*'], env);
  const json = trellis(['events', '--follow', '--json'], env);
  t.teardown(() => { text.kill('SIGKILL'); json.kill('SIGKILL'); });
  await waitFor(() => h.logLines.filter((x) => x.includes('stream opened')).length >= 2, 20_000, 'two CLI streams');
  h.hub.components.events.publish([ev('red', 'noise'), ev('red', 'app.deployed', { version: '1.2.3' }), ev('blue', 'app.deployed', { version: 'blue' })]);
  await waitFor(() => text.out().includes('app.deployed') && json.out().split('\n').filter(Boolean).length >= 2, 10_000, 'CLI output');
  t.match(text.out(), /^\d{4}-\d\d-\d\dT[\d:.]+Z {2}app\.deployed {2}agent-1 {2}\{"version":"1\.2\.3"\}\n$/, 'one line: time, type, agent, compact payload');
  const lines = json.out().trim().split('\n').map((x) => JSON.parse(x) as Msg);
  t.same(lines.map((m) => m.type), ['noise', 'app.deployed']);
  t.notOk(json.out().includes('blue'), 'the other tenant never shows');
  text.kill('SIGINT');
  t.equal((await text.done).code, 0, 'Ctrl-C ends it cleanly');

  // The hub restarts (same ports): the CLI reconnects by itself.
  await h.restart();
  await waitFor(async () => {
    h.hub.components.events.publish([ev('red', 'after.restart')]);
    await new Promise((r) => setTimeout(r, 200));
    return json.out().includes('after.restart');
  }, 20_000, 'the CLI back on the stream after a restart');
  json.kill('SIGINT');
  const j = await json.done;
  t.equal(j.code, 0);
  t.match(j.err, /trellis: stream closed 1001: hub shutting down; reconnecting in/, 'it said why it reconnects');

  const denied = await trellis(['events', '--follow'], { ...env, TRELLIS_API_KEY: 'tak1_0123456789abcdef_' + 'x'.repeat(43) }).done;
  t.equal(denied.code, 1, 'refused credentials end it: no endless retry');
  t.match(denied.err, /TRELLIS_E_UNAUTHENTICATED/);
});
