import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import { startHub } from './helpers/hub.js';
import { serviceDefinitions, allMethodPaths } from '../common/proto.js';
import { METHOD_TABLE, PERMISSIONS, assertTableCovers } from '../hub/authz/index.js';
import { adminClients, call } from '../cli/client.js';
import { hashToken } from '../hub/auth/index.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

/** Calls any admin-port method with an empty request; resolves to the gRPC status code. */
function callAny(addr: string, caPem: string, def: grpc.MethodDefinition<unknown, unknown>, md: grpc.Metadata): Promise<number> {
  const client = new grpc.Client(addr, grpc.credentials.createSsl(Buffer.from(caPem)));
  const opts = { deadline: Date.now() + 10_000 };
  return new Promise<number>((resolve) => {
    const done = (code: number) => { client.close(); resolve(code); };
    if (def.requestStream) {
      const s = client.makeBidiStreamRequest(def.path, def.requestSerialize, def.responseDeserialize, md, opts);
      s.on('data', () => undefined);
      s.on('status', (st: grpc.StatusObject) => done(st.code));
      s.on('error', () => undefined);
      s.end();
    } else if (def.responseStream) {
      const s = client.makeServerStreamRequest(def.path, def.requestSerialize, def.responseDeserialize, {}, md, opts);
      s.on('data', () => undefined);
      s.on('status', (st: grpc.StatusObject) => done(st.code));
      s.on('error', () => undefined);
    } else {
      client.makeUnaryRequest(def.path, def.requestSerialize, def.responseDeserialize, {}, md, opts, (err) => done(err ? err.code : grpc.status.OK));
    }
  });
}

const ADMIN_PORT_SERVICES = new Set([
  'Version', 'Enrollment', 'AdminAuth', 'AdminJoinTokens', 'AdminAgents', 'AdminCerts', 'AdminRuns',
  'AdminUsers', 'AdminSessions', 'AdminApiKeys', 'AdminRoles', 'AdminTenants', 'AdminGroups', 'AdminSystem', 'AdminAudit', 'AdminKv',
  'AdminPacks', 'AdminRules', 'AdminExecutions', 'AdminWebhooks', 'AdminCa', 'AdminSnapshots', 'AdminMaintenance', 'AdminCluster',
]);

/** Every admin-port method definition, by full path. */
function adminPortMethods(): Map<string, grpc.MethodDefinition<unknown, unknown>> {
  return new Map(serviceDefinitions().filter((s) => ADMIN_PORT_SERVICES.has(s.name))
    .flatMap((s) => Object.values(s.definition).map((d) => [d.path, d as grpc.MethodDefinition<unknown, unknown>] as const)));
}

async function loginMetadata(h: { adminAddr: string; caPem: string }, username: string, password: string): Promise<grpc.Metadata> {
  const anon = adminClients(h.adminAddr, h.caPem);
  const login = await call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username, password }).finally(() => anon.close());
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${login.token}`);
  return md;
}

t.test('every method of the contract has an authorization entry, and a missing one stops start-up', async (t) => {
  t.doesNotThrow(() => assertTableCovers(allMethodPaths()));
  const paths = allMethodPaths();
  t.ok(paths.length >= 17, `the proto declares ${paths.length} methods`);
  for (const p of paths) t.ok(METHOD_TABLE[p], `${p} has an entry`);
  t.throws(() => assertTableCovers([...paths, '/trellis.v1.AdminAgents/DeleteEverything']), /no authorization entry for \/trellis.v1.AdminAgents\/DeleteEverything/);
  // Every service the proto declares is served somewhere: the admin port or the agent port.
  for (const { name } of serviceDefinitions()) t.ok(ADMIN_PORT_SERVICES.has(name) || name === 'AgentChannel', `${name} is served`);
});

t.test('with no credentials every admin-port method but Version returns UNAUTHENTICATED', async (t) => {
  await using h = await startHub();
  for (const { name, definition } of serviceDefinitions()) {
    if (!ADMIN_PORT_SERVICES.has(name)) continue;
    for (const def of Object.values(definition)) {
      const code = await callAny(h.adminAddr, h.caPem, def as grpc.MethodDefinition<unknown, unknown>, new grpc.Metadata());
      t.equal(code, def.path === '/trellis.v1.Version/GetVersion' ? grpc.status.OK : grpc.status.UNAUTHENTICATED, `${def.path} with no credentials`);
    }
  }
  // A garbage or forged bearer token is no better than none.
  for (const bad of ['Bearer nonsense', 'Bearer tls1_' + 'A'.repeat(43), 'Basic YWRtaW46YWRtaW4=']) {
    const md = new grpc.Metadata();
    md.set('authorization', bad);
    const code = await callAny(h.adminAddr, h.caPem, serviceDefinitions().find((s) => s.name === 'AdminAgents')!.definition.ListAgents as grpc.MethodDefinition<unknown, unknown>, md);
    t.equal(code, grpc.status.UNAUTHENTICATED, `ListAgents with "${bad.slice(0, 14)}…"`);
  }
});

t.test('a user with no roles gets PERMISSION_DENIED everywhere but their own session', async (t) => {
  await using h = await startHub();
  await h.hub.components.auth.createUser({ username: 'nobody', password: 'nobody-password-1', roles: [] });
  const md = await loginMetadata(h, 'nobody', 'nobody-password-1');
  const expected: Record<string, number> = {
    '/trellis.v1.Version/GetVersion': grpc.status.OK,
    '/trellis.v1.AdminAuth/WhoAmI': grpc.status.OK,
    '/trellis.v1.AdminAuth/Login': grpc.status.UNAUTHENTICATED, // empty user name and password
    '/trellis.v1.Enrollment/Enroll': grpc.status.UNAUTHENTICATED, // needs a join token, not a login
    // 'self' methods: allowed on one's own things; an empty request gets the handler's answer.
    '/trellis.v1.AdminUsers/SetPassword': grpc.status.INVALID_ARGUMENT, // own password: current_password missing
    '/trellis.v1.AdminSessions/ListSessions': grpc.status.OK, // own sessions
    '/trellis.v1.AdminSessions/RevokeSession': grpc.status.INVALID_ARGUMENT, // the id is required
    '/trellis.v1.AdminApiKeys/ListApiKeys': grpc.status.OK, // own keys
    '/trellis.v1.AdminApiKeys/SetApiKeyEnabled': grpc.status.INVALID_ARGUMENT, // the id is required
    '/trellis.v1.AdminApiKeys/DeleteApiKey': grpc.status.INVALID_ARGUMENT,
  };
  const order = (p: string) => (p.endsWith('/Logout') ? 1 : 0); // log out last
  const defs = serviceDefinitions().filter((s) => ADMIN_PORT_SERVICES.has(s.name)).flatMap((s) => Object.values(s.definition)).sort((a, b) => order(a.path) - order(b.path));
  for (const def of defs) {
    const code = await callAny(h.adminAddr, h.caPem, def as grpc.MethodDefinition<unknown, unknown>, md);
    const want = expected[def.path] ?? (def.path.endsWith('/Logout') ? grpc.status.OK : grpc.status.PERMISSION_DENIED);
    t.equal(code, want, `${def.path} as a user with no roles`);
  }
  // After logout the token is dead.
  const code = await callAny(h.adminAddr, h.caPem, defs.find((d) => d.path.endsWith('/WhoAmI')) as grpc.MethodDefinition<unknown, unknown>, md);
  t.equal(code, grpc.status.UNAUTHENTICATED, 'WhoAmI after logout');
});

t.test('a user with the built-in user role gets PERMISSION_DENIED on every admin-only method', async (t) => {
  await using h = await startHub();
  await h.hub.components.auth.createUser({ username: 'worker', password: 'worker-password-1', roles: ['user'] });
  const md = await loginMetadata(h, 'worker', 'worker-password-1');
  const defs = adminPortMethods();
  const adminOnly = Object.entries(METHOD_TABLE).filter(([, r]) => r.kind === 'admin').map(([p]) => p);
  t.ok(adminOnly.length >= 20, `${adminOnly.length} admin-only methods`);
  for (const path of adminOnly) {
    const def = defs.get(path);
    t.ok(def, `${path} is served on the admin port`);
    if (def) t.equal(await callAny(h.adminAddr, h.caPem, def, md), grpc.status.PERMISSION_DENIED, `${path} as a user`);
  }
  // The same user is not refused across the board: their own work goes through.
  t.equal(await callAny(h.adminAddr, h.caPem, defs.get('/trellis.v1.AdminAgents/ListAgents')!, md), grpc.status.OK, 'ListAgents as a user');
});

t.test('the README permission table lists every permission', async (t) => {
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
  const html = (x: string) => x.replace(/</g, '&lt;').replace(/>/g, '&gt;');
  for (const [p, what] of Object.entries(PERMISSIONS)) t.ok(readme.includes(`| \`${p}\` | ${html(what)} |`), `README row for ${p}`);
});

t.test('agent-port services are not reachable on the admin port', async (t) => {
  await using h = await startHub();
  const def = serviceDefinitions().find((s) => s.name === 'AgentChannel')!.definition.Renew as grpc.MethodDefinition<unknown, unknown>;
  const code = await callAny(h.adminAddr, h.caPem, def, new grpc.Metadata());
  t.equal(code, grpc.status.UNIMPLEMENTED);
});

t.test('an expired login token is refused and removed', async (t) => {
  // 3 s: the first call after login must land inside the session's life on a busy 2-core machine.
  await using h = await startHub({ config: { sessionTtl: 3000 } });
  const anon = adminClients(h.adminAddr, h.caPem);
  const login = await call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username: 'admin', password: 'test-admin-password-1' });
  anon.close();
  const c = adminClients(h.adminAddr, h.caPem, login.token);
  t.teardown(() => c.close());
  await call(c, c.auth, c.auth.WhoAmI, {});
  await new Promise((r) => setTimeout(r, Math.max(0, login.expiresAtMs - Date.now()) + 120));
  const err = await call(c, c.auth, c.auth.WhoAmI, {}).then(() => undefined, (e: Error & { code: string }) => e);
  t.equal(err?.code, 'TRELLIS_E_UNAUTHENTICATED');
  t.match(err?.message, /expired/);
  t.equal(await h.hub.components.store.get('sessions', hashToken(login.token)), undefined, 'the expired session is gone from the store');
});

t.test('wrong password and unknown user get the same answer', async (t) => {
  await using h = await startHub();
  const anon = adminClients(h.adminAddr, h.caPem);
  t.teardown(() => anon.close());
  const e1 = await call(anon, anon.auth, anon.auth.Login, { username: 'admin', password: 'wrong-password-123' }).catch((e: Error) => e);
  const e2 = await call(anon, anon.auth, anon.auth.Login, { username: 'ghost', password: 'wrong-password-123' }).catch((e: Error) => e);
  t.equal((e1 as Error).message, (e2 as Error).message);
  t.equal((e1 as Error & { code: string }).code, 'TRELLIS_E_UNAUTHENTICATED');
});
