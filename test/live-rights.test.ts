/**
 * Live streams follow the rights of their caller (hub/live): a `/stream` consumer, an
 * `executions follow` and an `audit --follow` opened with rights that are then taken away end
 * within a second of the change — removal from the tenant, the role unassigned, the grant revoked
 * from the role — with 4003 (web) or PERMISSION_DENIED (admin port). Streams whose caller still
 * qualifies stay open.
 */
import t, { type Test } from 'tap';
import * as grpc from '@grpc/grpc-js';
import { WebSocket } from 'ws';
import { startHub, login, waitFor, tempDir, type TestHub } from './helpers/hub.js';
import { startCli } from './helpers/cli.js';
import { writeProfile } from '../cli/profile.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import { CODE_KEY } from '../common/grpc-errors.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const PW = 'a-long-enough-password-1';
/** The bound the tests hold the hub to (a change cuts within ~1 s; measured figures are printed). */
const CUT_MS = 1_000;

interface Ended { at: number; code: number | string; reason: string }
interface Live { ended: Promise<Ended>; isOpen(): boolean }

function wsStream(t: Test, h: TestHub, token: string, query: string): Promise<Live> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`wss://127.0.0.1:${h.hub.webPort}/stream${query}`, ['trellis.v1'], { ca: h.caPem, headers: { authorization: `Bearer ${token}` }, perMessageDeflate: false });
    let open = false;
    const ended = new Promise<Ended>((r) => ws.on('close', (code, reason) => { open = false; r({ at: performance.now(), code, reason: reason.toString() }); }));
    ws.on('open', () => { open = true; resolve({ ended, isOpen: () => open }); });
    ws.on('unexpected-response', (_q, res) => reject(new Error(`HTTP ${res.statusCode}`)));
    ws.on('error', reject);
    t.teardown(() => ws.terminate());
  });
}

/** A server stream already serving (its first message arrived), and how it ended. */
async function grpcStream(t: Test, s: grpc.ClientReadableStream<unknown>): Promise<Live> {
  let open = true;
  const ended = new Promise<Ended>((r) => {
    s.on('error', (e: grpc.ServiceError) => { open = false; r({ at: performance.now(), code: e.code, reason: `${String(e.metadata?.get(CODE_KEY)[0] ?? '')} ${e.details}` }); });
    s.on('status', (st: grpc.StatusObject) => { if (st.code === grpc.status.OK) { open = false; r({ at: performance.now(), code: st.code, reason: 'ended' }); } });
  });
  await new Promise<void>((resolve, reject) => { s.once('data', () => resolve()); s.once('error', reject); });
  t.teardown(() => s.cancel());
  return { ended, isOpen: () => open };
}

interface World { h: TestHub; w: AdminClients; aud: AdminClients; wToken: string; w2Token: string; wKey: string; execId: string }

/**
 * Tenant red; role `watcher` (events:read, executions:read) held by w and w2 in red; role
 * `auditor` (`*`, an administrator) held by aud; an execution in red that stays open (its agent
 * is enrolled but never connects).
 */
async function world(t: Test): Promise<World> {
  const h = await startHub();
  t.teardown(() => h.close());
  const a = h.admin;
  await call(a, a.tenants, a.tenants.CreateTenant, { name: 'red', description: '' });
  await call(a, a.roles, a.roles.CreateRole, { name: 'watcher', description: '', grants: [{ permission: 'events:read', scope: '' }, { permission: 'executions:read', scope: '' }, { permission: 'apikeys:create', scope: '' }] });
  await call(a, a.roles, a.roles.CreateRole, { name: 'auditor', description: '', grants: [{ permission: '*', scope: '' }] });
  for (const [u, roles] of [['w', ['watcher']], ['w2', ['watcher']], ['aud', ['auditor']]] as const) {
    await call(a, a.users, a.users.CreateUser, { username: u, password: PW, roles: [...roles], tenants: ['red'] });
  }
  // One after another: the hub runs at most 2 password checks per address at once (auth.limits).
  const wl = await login(h, 'w', PW);
  const w2l = await login(h, 'w2', PW);
  const al = await login(h, 'aud', PW);
  const w = adminClients(h.adminAddr, h.caPem, wl.token, 'red');
  const aud = adminClients(h.adminAddr, h.caPem, al.token, 'default');
  t.teardown(() => { w.close(); aud.close(); });
  const { agentId } = await h.enroll({ token: await h.token({ tenant: 'red' }) });
  const [rec] = await h.hub.components.executions.runCommand({ tenant: 'red', agentIds: [agentId], argv: ['sleep', '60'], env: {}, cwd: '', timeoutMs: 60_000, requestedBy: 'admin' });
  const key = await call<T.CreateApiKeyRequest, T.CreateApiKeyResponse__Output>(w, w.apikeys, w.apikeys.CreateApiKey, { name: 'dash' });
  return { h, w, aud, wToken: wl.token, w2Token: w2l.token, wKey: key.key, execId: rec!.id };
}

/** Streams of w (events, executions, follow) and of w2 (events); aud's audit follow when asked. */
async function open(t: Test, x: World, withAudit: boolean) {
  const events = await wsStream(t, x.h, x.wToken, '');
  const updates = await wsStream(t, x.h, x.wToken, '?kinds=executions');
  const follow = await grpcStream(t, x.w.executions.FollowExecution({ id: x.execId }, x.w.metadata) as grpc.ClientReadableStream<unknown>);
  const bystander = await wsStream(t, x.h, x.w2Token, '');
  const audit = withAudit ? await grpcStream(t, x.aud.audit.ListAudit({ follow: true, limit: 1 }, x.aud.metadata) as grpc.ClientReadableStream<unknown>) : undefined;
  return { events, updates, follow, bystander, audit };
}

/** Runs the change, then checks each stream ended within CUT_MS of the call's return. */
async function cutWithin(t: Test, change: () => Promise<unknown>, streams: Record<string, Live | undefined>, expect: (name: string, e: Ended) => void): Promise<void> {
  await change();
  const returned = performance.now();
  for (const [name, s] of Object.entries(streams)) {
    if (!s) continue;
    const e = await Promise.race([s.ended, new Promise<undefined>((r) => setTimeout(() => r(undefined), CUT_MS + 2_000))]);
    if (!e) { t.fail(`${name}: still open ${CUT_MS + 2_000} ms after the change`); continue; }
    const ms = Math.max(0, e.at - returned);
    t.ok(ms < CUT_MS, `${name}: ended ${Math.round(ms)} ms after the change returned (< ${CUT_MS} ms)`);
    expect(name, e);
  }
}

const wsForbidden = (t: Test) => (name: string, e: Ended) => {
  if (typeof e.code === 'number' && e.code >= 4000) {
    t.equal(e.code, 4003, `${name}: close code 4003`);
    t.match(e.reason, /^permission revoked: /, `${name}: says why`);
  } else {
    t.equal(e.code, grpc.status.PERMISSION_DENIED, `${name}: PERMISSION_DENIED`);
    t.match(e.reason, /TRELLIS_E_PERMISSION_DENIED/);
  }
};

t.test('(a) removal from the tenant cuts the /stream consumers and executions follow within a second; another member keeps streaming', async (t) => {
  const x = await world(t);
  const s = await open(t, x, false);
  await cutWithin(t, () => call(x.h.admin, x.h.admin.tenants, x.h.admin.tenants.RemoveTenantMember, { tenant: 'red', user: 'w' }),
    { '/stream events': s.events, '/stream executions': s.updates, 'executions follow': s.follow }, wsForbidden(t));
  t.ok(s.bystander.isOpen(), 'w2, still a member, keeps streaming');
  // Back in the tenant: streams open again (the cut is not a ban).
  await call(x.h.admin, x.h.admin.tenants, x.h.admin.tenants.AddTenantMember, { tenant: 'red', user: 'w' });
  const again = await wsStream(t, x.h, x.wToken, '');
  t.ok(again.isOpen());
});

t.test('(b) unassigning the role cuts /stream, executions follow and audit --follow within a second', async (t) => {
  const x = await world(t);
  const s = await open(t, x, true);
  const byKey = await wsStream(t, x.h, x.wKey, '');
  const a = x.h.admin;
  await cutWithin(t, async () => {
    await call(a, a.roles, a.roles.UnassignRole, { role: 'watcher', user: 'w' });
  }, { '/stream events': s.events, '/stream executions': s.updates, 'executions follow': s.follow, '/stream with an API key of w': byKey }, wsForbidden(t));
  t.ok(s.audit!.isOpen(), 'the auditor, untouched, keeps following');
  t.ok(s.bystander.isOpen(), 'w2 keeps streaming');
  await cutWithin(t, () => call(a, a.roles, a.roles.UnassignRole, { role: 'auditor', user: 'aud' }), { 'audit --follow': s.audit }, wsForbidden(t));
});

t.test('(c) revoking the grant from the role cuts what needed it within a second; what did not need it stays', async (t) => {
  const x = await world(t);
  const s = await open(t, x, true);
  const a = x.h.admin;
  await cutWithin(t, () => call(a, a.roles, a.roles.RevokePermission, { role: 'watcher', grant: { permission: 'executions:read', scope: '' } }),
    { '/stream executions': s.updates, 'executions follow': s.follow }, wsForbidden(t));
  t.ok(s.events.isOpen(), 'an events-only stream still holds events:read and stays');
  await cutWithin(t, () => call(a, a.roles, a.roles.RevokePermission, { role: 'watcher', grant: { permission: 'events:read', scope: '' } }),
    { '/stream events': s.events, '/stream (w2, same role)': s.bystander }, wsForbidden(t));
  await cutWithin(t, () => call(a, a.roles, a.roles.RevokePermission, { role: 'auditor', grant: { permission: '*', scope: '' } }), { 'audit --follow': s.audit }, wsForbidden(t));
});

t.test('group changes count too: a stream held through a group ends when the user leaves the group', async (t) => {
  const x = await world(t);
  const a = x.h.admin;
  await call(a, a.roles, a.roles.UnassignRole, { role: 'watcher', user: 'w' });
  await call(a, a.groups, a.groups.CreateGroup, { name: 'ops', description: '' });
  await call(a, a.groups, a.groups.AddGroupMember, { group: 'ops', user: 'w' });
  await call(a, a.roles, a.roles.AssignRole, { role: 'watcher', group: 'ops' });
  const events = await wsStream(t, x.h, x.wToken, '');
  await cutWithin(t, () => call(a, a.groups, a.groups.RemoveGroupMember, { group: 'ops', user: 'w' }), { '/stream via group': events }, wsForbidden(t));
});

t.test('the real CLI: `trellis events --follow` and `trellis executions follow` end with exit 1 and PERMISSION_DENIED when the role goes', async (t) => {
  const x = await world(t);
  await using home = await tempDir();
  await writeProfile({ hub: x.h.adminAddr, caPem: x.h.caPem, username: 'w', token: x.wToken, expiresAtMs: Date.now() + 3_600_000, tenant: 'red' }, { TRELLIS_HOME: home.path });
  const env = { TRELLIS_HOME: home.path, TRELLIS_TENANT: '' };
  const events = startCli(['events', '--follow'], env);
  const follow = startCli(['executions', 'follow', x.execId], env);
  t.teardown(() => { events.child.kill('SIGKILL'); follow.child.kill('SIGKILL'); });
  const liveCount = () => (x.h.hub as unknown as { live: { size: number } }).live.size; // the hub's registry of live streams
  await waitFor(() => liveCount() === 2, 20_000, 'both CLI streams registered at the hub');
  await call(x.h.admin, x.h.admin.roles, x.h.admin.roles.UnassignRole, { role: 'watcher', user: 'w' });
  t.equal(await events.done, 1, 'events --follow exits 1 (no reconnect loop)');
  t.match(events.err(), /permission revoked: .*TRELLIS_E_PERMISSION_DENIED|TRELLIS_E_PERMISSION_DENIED/);
  t.equal(await follow.done, 1, 'executions follow exits 1');
  t.match(follow.err(), /TRELLIS_E_PERMISSION_DENIED/);
});
