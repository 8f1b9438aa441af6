/**
 * The web console's HTTP side without a browser: the assets and their CSP, the session cookie,
 * CSRF, the API bridge onto the admin handlers (same method table, tenant check and audit as
 * gRPC), the request limits, logout, and the /stream cookie with its Origin check.
 */
import t from 'tap';
import { WebSocket, type ClientOptions } from 'ws';
import { startHub, ADMIN_PASSWORD, type TestHub } from './helpers/hub.js';
import { webRequest, consoleLogin, consoleCall } from './helpers/console.js';
import { csrfFor } from '../hub/web/console/session.js';

const PW = 'console-password-1';

async function auditOf(h: TestHub, method: string) {
  await h.hub.components.audit.flush();
  return (await h.hub.components.audit.query({ methodContains: method, limit: 1000 }));
}

t.test('the console page and scripts are served with a strict CSP and no inline script or style', async (t) => {
  await using h = await startHub();
  const page = await webRequest(h, 'GET', '/console/');
  t.equal(page.status, 200);
  t.match(page.headers['content-type'], /text\/html/);
  const csp = String(page.headers['content-security-policy']);
  t.match(csp, /default-src 'self'/);
  t.match(csp, /script-src 'self'(;|$)/);
  t.notMatch(csp, /unsafe-inline|unsafe-eval|https?:/, 'no inline, eval or other origin allowed');
  t.match(csp, /frame-ancestors 'none'/);
  t.equal(page.headers['x-content-type-options'], 'nosniff');
  t.notMatch(page.body, /<script(?![^>]*\bsrc=)[^>]*>/, 'every script has a src');
  t.notMatch(page.body, /<style|style=/, 'no inline style');
  t.notMatch(page.body, /https?:\/\//, 'no third-party origin');
  const app = await webRequest(h, 'GET', '/console/app.js');
  t.equal(app.status, 200);
  t.match(app.headers['content-type'], /text\/javascript/);
  t.match(app.headers['content-security-policy'], /default-src 'self'/);
  t.equal((await webRequest(h, 'GET', '/console/console.css')).status, 200);
  t.equal((await webRequest(h, 'GET', '/console/../hub.yaml')).status, 404);
  t.equal((await webRequest(h, 'GET', '/console/nothing.js')).status, 404);
  t.equal((await webRequest(h, 'GET', '/console')).status, 308);
});

t.test('login sets an HttpOnly, Secure, SameSite=Strict cookie; the token never reaches script; a wrong password gets 401 and no cookie', async (t) => {
  await using h = await startHub();
  const bad = await webRequest(h, 'POST', '/console/api/login', { headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: 'admin', password: 'wrong-password' }) });
  t.equal(bad.status, 401);
  t.equal(bad.headers['set-cookie'], undefined);
  t.equal(bad.json().code, 'TRELLIS_E_UNAUTHENTICATED');
  const s = await consoleLogin(h, 'admin', ADMIN_PASSWORD);
  t.match(s.setCookie, /^__Host-trellis-session=tls1_[^;]*; Path=\/; Secure; HttpOnly; SameSite=Strict; Max-Age=\d+$/);
  t.ok(s.token.length > 20);
  // The body has the CSRF token, not the login token.
  const login = await webRequest(h, 'POST', '/console/api/login', { headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: 'admin', password: ADMIN_PASSWORD }) });
  const cookie2 = String(login.headers['set-cookie']?.[0]).split(';')[0]!;
  t.notOk(login.body.includes(cookie2.slice(cookie2.indexOf('=') + 1)), 'the login answer does not carry the token');
  const who = await webRequest(h, 'GET', '/console/api/session', { headers: { cookie: s.cookie } });
  t.equal(who.status, 200);
  t.equal(who.json().username, 'admin');
  t.equal(who.json().csrf, s.csrf);
  t.notOk(who.body.includes(s.token), 'the session answer does not carry the token');
  t.equal((await webRequest(h, 'GET', '/console/api/session')).status, 401);
  // The login is the admin port's: audited like `trellis login`.
  const recs = await auditOf(h, 'AdminAuth/Login');
  t.ok(recs.some((r) => r.result === 'unauthenticated' && r.target === 'user:admin'), 'the failed login is audited');
  // The token cannot be taken through the generic bridge either.
  t.equal((await consoleCall(h, s, 'AdminAuth/Login', { username: 'admin', password: ADMIN_PASSWORD })).status, 404);
});

t.test('the API bridge: no cookie 401, CSRF missing or wrong 403, another origin 403, bad JSON 400, not JSON 415, oversize 413, unknown method 404', async (t) => {
  await using h = await startHub();
  const s = await consoleLogin(h, 'admin', ADMIN_PASSWORD);
  const ok = await consoleCall(h, s, 'AdminAgents/ListAgents', {});
  t.equal(ok.status, 200, ok.body);
  t.same(ok.json().agents, []);
  const none = await consoleCall(h, undefined, 'AdminAgents/ListAgents', {});
  t.equal(none.status, 401);
  t.equal(none.json().code, 'TRELLIS_E_UNAUTHENTICATED');
  // A made-up session (with the CSRF token that goes with it) is refused before its body is read.
  const fake = 'tls1_' + 'A'.repeat(43);
  const made = await consoleCall(h, { cookie: `__Host-trellis-session=${fake}`, token: fake, csrf: csrfFor(fake), setCookie: '' }, 'AdminKv/Set', { key: 'k', value: 'x'.repeat(2 * 1024 * 1024) });
  t.equal(made.status, 401, 'unknown session: 401, not 413 (the body was not read)');
  t.equal((await consoleCall(h, s, 'AdminAgents/ListAgents', {}, { 'x-trellis-csrf': '' })).status, 403, 'no CSRF token');
  const wrong = await consoleCall(h, s, 'AdminAgents/ListAgents', {}, { 'x-trellis-csrf': s.csrf.replace(/^./, (c) => (c === 'A' ? 'B' : 'A')) });
  t.equal(wrong.status, 403, 'wrong CSRF token');
  t.match(wrong.json().error, /CSRF/);
  // A state-changing call with a wrong CSRF token does nothing.
  const tok = await consoleCall(h, s, 'AdminJoinTokens/CreateJoinToken', { uses: 1, ttlMs: 60_000 }, { 'x-trellis-csrf': 'forged' });
  t.equal(tok.status, 403);
  t.equal((await h.hub.components.tokens.list(true)).length, 0, 'no join token was created');
  t.equal((await consoleCall(h, s, 'AdminAgents/ListAgents', {}, { origin: 'https://evil.example' })).status, 403, 'cross-origin');
  t.equal((await consoleCall(h, s, 'AdminAgents/ListAgents', {}, { origin: `https://localhost:${h.hub.webPort}`, host: `localhost:${h.hub.webPort}` })).status, 200, 'same origin');
  const badJson = await consoleCall(h, s, 'AdminAgents/ListAgents', '{"status": ');
  t.equal(badJson.status, 400);
  t.equal(badJson.json().code, 'TRELLIS_E_INVALID_ARGUMENT');
  t.equal((await consoleCall(h, s, 'AdminAgents/ListAgents', '[1,2]')).status, 400, 'not an object');
  t.equal((await consoleCall(h, s, 'AdminAgents/ListAgents', { selector: 'not-a-map' })).status, 400, 'wrong field type');
  t.equal((await consoleCall(h, s, 'AdminAgents/ListAgents', { status: 'sideways' })).status, 400, 'the handler\'s own validation');
  t.equal((await consoleCall(h, s, 'AdminAgents/ListAgents', {}, { 'content-type': 'text/plain' })).status, 415);
  const big = await consoleCall(h, s, 'AdminKv/Set', { key: 'big', value: 'x'.repeat(1024 * 1024 + 10) });
  t.equal(big.status, 413);
  t.equal(big.json().code, 'TRELLIS_E_TOO_LARGE');
  t.equal((await consoleCall(h, s, 'AdminAgents/Nothing', {})).status, 404);
  t.equal((await consoleCall(h, s, 'nothing', {})).status, 404);
  t.equal((await webRequest(h, 'GET', '/console/api/AdminAgents/ListAgents', { headers: { cookie: s.cookie } })).status, 405);
  // An answer with bytes fields and a server-streaming method (collected).
  const ver = await consoleCall(h, s, 'Version/GetVersion', {});
  t.equal(ver.status, 200);
  t.equal(ver.json().caFingerprint, h.hub.components.pki.caFingerprint);
  const audit = await consoleCall(h, s, 'AdminAudit/ListAudit', { limit: 5 });
  t.equal(audit.status, 200, audit.body);
  t.ok(Array.isArray(audit.json().messages));
  // The hub is still fine.
  t.equal((await webRequest(h, 'GET', '/healthz')).status, 200);
});

t.test('same authorization as gRPC: an observer\'s forged RunAction is 403 PERMISSION_DENIED and audited; another tenant is refused', async (t) => {
  await using h = await startHub();
  const c = h.hub.components;
  await c.iam.createTenant('red', '');
  await c.iam.createTenant('blue', '');
  await c.auth.createUser({ username: 'watcher', password: PW, roles: ['observer'], tenants: ['red'] });
  const s = await consoleLogin(h, 'watcher', PW);
  const who = (await webRequest(h, 'GET', '/console/api/session', { headers: { cookie: s.cookie } })).json();
  t.same(who.tenants, ['red']);
  t.notOk((who.permissions as string[]).includes('actions:execute'));
  t.ok((who.permissions as string[]).includes('agents:list'));
  const run = await consoleCall(h, s, 'AdminExecutions/RunAction', { action: 'core.echo', agentId: 'x', parameters: { message: 'hi' } }, { 'x-trellis-tenant': 'red' });
  t.equal(run.status, 403, run.body);
  t.equal(run.json().code, 'TRELLIS_E_PERMISSION_DENIED');
  const revoke = await consoleCall(h, s, 'AdminAgents/RevokeAgent', { id: 'whatever' });
  t.equal(revoke.status, 403);
  const denied = await auditOf(h, 'AdminExecutions/RunAction');
  t.ok(denied.some((r) => r.actor === 'watcher' && r.result === 'denied'), 'the refusal is audited as on the admin port');
  // Reads in their tenant work; another tenant is refused; a bad tenant header is 400.
  t.equal((await consoleCall(h, s, 'AdminAgents/ListAgents', {}, { 'x-trellis-tenant': 'red' })).status, 200);
  const blue = await consoleCall(h, s, 'AdminAgents/ListAgents', {}, { 'x-trellis-tenant': 'blue' });
  t.equal(blue.status, 403, blue.body);
  t.equal((await consoleCall(h, s, 'AdminAgents/ListAgents', {}, { 'x-trellis-tenant': 'Bad Tenant!' })).status, 400);
  // Platform administration stays an administrator's.
  t.equal((await consoleCall(h, s, 'AdminUsers/ListUsers', {})).status, 403);
  t.equal((await consoleCall(h, s, 'AdminAudit/ListAudit', {})).status, 403);
});

t.test('logout revokes the session: the cookie no longer works on the console, /stream or the admin port', async (t) => {
  await using h = await startHub();
  const s = await consoleLogin(h, 'admin', ADMIN_PASSWORD);
  t.equal((await consoleCall(h, s, 'AdminAgents/ListAgents', {})).status, 200);
  // Logout is state-changing: CSRF required.
  t.equal((await consoleCall(h, s, 'logout', {}, { 'x-trellis-csrf': 'nope' })).status, 403);
  const out = await consoleCall(h, s, 'logout', {});
  t.equal(out.status, 200, out.body);
  t.match(String(out.headers['set-cookie']?.[0]), /^__Host-trellis-session=; .*Max-Age=0/);
  t.equal((await consoleCall(h, s, 'AdminAgents/ListAgents', {})).status, 401, 'the old cookie is refused');
  t.equal((await webRequest(h, 'GET', '/console/api/session', { headers: { cookie: s.cookie } })).status, 401);
  await t.rejects(h.hub.components.auth.authenticate(s.token), /unknown or revoked/, 'the login token is revoked everywhere');
  t.notOk(h.logLines.some((l) => l.includes(s.token)), 'the login token is in no hub log line');
  t.notOk(h.logLines.some((l) => l.includes(ADMIN_PASSWORD)), 'nor the password');
});

t.test('/stream takes the console cookie only from the hub\'s own origin', async (t) => {
  await using h = await startHub();
  const s = await consoleLogin(h, 'admin', ADMIN_PASSWORD);
  const open = (headers: Record<string, string>) => new Promise<number>((resolve) => {
    const ws = new WebSocket(`wss://127.0.0.1:${h.hub.webPort}/stream`, { ca: h.caPem, servername: 'localhost', headers } as ClientOptions);
    ws.on('open', () => { ws.close(); resolve(101); });
    ws.on('unexpected-response', (_req, res) => { res.resume(); resolve(res.statusCode ?? 0); });
    ws.on('error', () => resolve(-1));
  });
  const host = `localhost:${h.hub.webPort}`;
  t.equal(await open({ cookie: s.cookie, origin: `https://${host}`, host }), 101, 'same origin');
  t.equal(await open({ cookie: s.cookie, origin: 'https://evil.example', host }), 401, 'another origin: the cookie is not used');
  t.equal(await open({ cookie: s.cookie, host }), 401, 'no origin (not a browser): the cookie is not used');
  await consoleCall(h, s, 'logout', {});
  t.equal(await open({ cookie: s.cookie, origin: `https://${host}`, host }), 401, 'after logout');
});

t.test('agents are paged and filtered by the hub: limit, after_id, total', async (t) => {
  await using h = await startHub();
  const ids = [];
  for (let i = 0; i < 3; i++) ids.push((await h.enroll()).agentId);
  ids.sort();
  const s = await consoleLogin(h, 'admin', ADMIN_PASSWORD);
  const p1 = (await consoleCall(h, s, 'AdminAgents/ListAgents', { limit: 2 })).json() as { agents: Array<{ id: string }>; total: number };
  t.same(p1.agents.map((a) => a.id), ids.slice(0, 2));
  t.equal(p1.total, 3);
  const p2 = (await consoleCall(h, s, 'AdminAgents/ListAgents', { limit: 2, afterId: ids[1] })).json() as { agents: Array<{ id: string }>; total: number };
  t.same(p2.agents.map((a) => a.id), ids.slice(2));
  t.equal(p2.total, 3);
  const online = (await consoleCall(h, s, 'AdminAgents/ListAgents', { status: 'online', limit: 1 })).json();
  t.equal(online.total, 0, 'a status filter counts on the hub');
  t.equal((await consoleCall(h, s, 'AdminAgents/ListAgents', { limit: 5000 })).status, 400);
  // Without paging (the CLI): every agent, as before.
  t.equal(((await consoleCall(h, s, 'AdminAgents/ListAgents', {})).json().agents as unknown[]).length, 3);
});

t.test('web.console: false turns the console off (404), the rest of the web port stays', async (t) => {
  await using h = await startHub({ config: { web: { console: false } } });
  t.equal((await webRequest(h, 'GET', '/console/')).status, 404);
  t.equal((await webRequest(h, 'POST', '/console/api/login', { headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: 'admin', password: ADMIN_PASSWORD }) })).status, 404);
  t.equal((await webRequest(h, 'GET', '/healthz')).status, 200);
});
