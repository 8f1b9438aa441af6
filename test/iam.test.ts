/**
 * Identity and access administration end to end: users, roles, groups, tenants, sessions and
 * API keys through the real admin API of a real hub, each security property with its negative.
 */
import t, { type Test } from 'tap';
import * as grpc from '@grpc/grpc-js';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { startHub, waitFor, type TestHub } from './helpers/hub.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import { grpcCodeOf } from '../common/grpc-errors.js';
import { hubPaths } from '../hub/paths.js';
import type { ApiKeyDoc } from '../hub/auth/index.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const PW = 'a-long-enough-password-1';

/** The TrellisError code a call fails with, or 'OK'. */
async function codeOf(p: Promise<unknown>): Promise<string> {
  try { await p; return 'OK'; } catch (e) { return (e as { code?: string }).code ?? String(e); }
}

/** The gRPC status code a call fails with, or OK. */
async function grpcOf(p: Promise<unknown>): Promise<number | undefined> {
  try { await p; return grpc.status.OK; } catch (e) { return grpcCodeOf(e); }
}

/** Logs in and returns clients with that login token (closed at the end of the test). */
async function loginAs(t: Test, h: TestHub, username: string, password = PW, tenant?: string): Promise<AdminClients & { token: string }> {
  const anon = adminClients(h.adminAddr, h.caPem);
  const r = await call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username, password }).finally(() => anon.close());
  const c = adminClients(h.adminAddr, h.caPem, r.token, tenant);
  t.teardown(() => c.close());
  return Object.assign(c, { token: r.token });
}

/** Clients that authenticate with an API key. */
function withKey(t: Test, h: TestHub, key: string, tenant?: string): AdminClients {
  const c = adminClients(h.adminAddr, h.caPem, key, tenant);
  t.teardown(() => c.close());
  return c;
}

const createUser = (h: TestHub, username: string, roles: string[] = ['user'], tenants: string[] = []) =>
  call<T.CreateUserRequest, T.UserInfo__Output>(h.admin, h.admin.users, h.admin.users.CreateUser, { username, password: PW, roles, tenants });
const getUser = (c: AdminClients, username: string) => call<T.GetUserRequest, T.UserInfo__Output>(c, c.users, c.users.GetUser, { username });
const whoami = (c: AdminClients) => call<T.WhoAmIRequest, T.WhoAmIResponse__Output>(c, c.auth, c.auth.WhoAmI, {});
const listAgents = (c: AdminClients) => call<T.ListAgentsRequest, T.ListAgentsResponse__Output>(c, c.agents, c.agents.ListAgents, {});
const createKey = (c: AdminClients, name = '') => call<T.CreateApiKeyRequest, T.CreateApiKeyResponse__Output>(c, c.apikeys, c.apikeys.CreateApiKey, { name });
const listKeys = (c: AdminClients, allUsers = false) => call<T.ListApiKeysRequest, T.ListApiKeysResponse__Output>(c, c.apikeys, c.apikeys.ListApiKeys, { allUsers });
const listSessions = (c: AdminClients, allUsers = false) => call<T.ListSessionsRequest, T.ListSessionsResponse__Output>(c, c.sessions, c.sessions.ListSessions, { allUsers });
const setActive = (h: TestHub, username: string, active: boolean) => call<T.SetUserActiveRequest, T.UserInfo__Output>(h.admin, h.admin.users, h.admin.users.SetUserActive, { username, active });
const assign = (c: AdminClients, role: string, m: { user?: string; group?: string }, on = true) =>
  call<T.AssignRoleRequest, T.RoleInfo__Output>(c, c.roles, on ? c.roles.AssignRole : c.roles.UnassignRole, { role, user: m.user ?? '', group: m.group ?? '' });
const login = (h: TestHub, username: string, password = PW) => {
  const anon = adminClients(h.adminAddr, h.caPem);
  return call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username, password }).finally(() => anon.close());
};

// ------------------------------------------------------------------ users

t.test('users: create, list, show; the password policy applies and nothing secret is returned', async (t) => {
  await using h = await startHub();
  const u = await createUser(h, 'alice');
  t.same([u.username, u.roles, u.tenants, u.active, u.source], ['alice', ['user'], ['default'], true, 'local']);
  t.same([u.effectiveRoles, u.effectiveTenants], [['user'], ['default']]);
  t.notMatch(JSON.stringify(u), /scrypt|passwordHash|failures/, 'no password hash or failure times in UserInfo');
  const list = await call<T.ListUsersRequest, T.ListUsersResponse__Output>(h.admin, h.admin.users, h.admin.users.ListUsers, {});
  t.same(list.users.map((x) => x.username).sort(), ['admin', 'alice']);
  t.notMatch(JSON.stringify(list), /scrypt/);
  t.equal((await getUser(h.admin, 'alice')).username, 'alice');
  t.equal(await codeOf(getUser(h.admin, 'ghost')), 'TRELLIS_E_NOT_FOUND');

  const create = (req: Partial<T.CreateUserRequest>) => call(h.admin, h.admin.users, h.admin.users.CreateUser, { username: 'bob', password: PW, roles: [], tenants: [], ...req });
  t.equal(await codeOf(create({ password: '' })), 'TRELLIS_E_INVALID_ARGUMENT', 'a local user needs a password');
  t.equal(await codeOf(create({ password: 'short' })), 'TRELLIS_E_INVALID_ARGUMENT', 'at least 12 characters');
  t.equal(await codeOf(create({ roles: ['no-such-role'] })), 'TRELLIS_E_NOT_FOUND');
  t.equal(await codeOf(create({ tenants: ['no-such-tenant'] })), 'TRELLIS_E_NOT_FOUND');
  t.equal(await codeOf(create({ username: 'bad name!' })), 'TRELLIS_E_INVALID_ARGUMENT');
  t.equal(await codeOf(create({ username: 'alice' })), 'TRELLIS_E_ALREADY_EXISTS');
});

t.test('passwd: one\'s own needs the current password; another\'s needs an administrator; other sessions end', async (t) => {
  await using h = await startHub();
  await createUser(h, 'alice');
  await createUser(h, 'bob');
  const a1 = await loginAs(t, h, 'alice');
  const a2 = await loginAs(t, h, 'alice');
  const setPw = (c: AdminClients, req: Partial<T.SetPasswordRequest>) =>
    call<T.SetPasswordRequest, T.SetPasswordResponse__Output>(c, c.users, c.users.SetPassword, { username: '', currentPassword: '', newPassword: 'the-new-password-1', ...req });

  t.equal(await codeOf(setPw(a1, { currentPassword: 'wrong-password-1' })), 'TRELLIS_E_PERMISSION_DENIED', 'wrong current password');
  t.equal(await grpcOf(setPw(a1, { currentPassword: 'wrong-password-1' })), grpc.status.PERMISSION_DENIED);
  t.equal(await codeOf(setPw(a1, {})), 'TRELLIS_E_INVALID_ARGUMENT', 'no current password');
  t.equal(await codeOf(setPw(a1, { currentPassword: PW, newPassword: 'short' })), 'TRELLIS_E_INVALID_ARGUMENT', 'the policy applies');
  t.equal(await codeOf(setPw(a1, { username: 'bob', currentPassword: PW })), 'TRELLIS_E_PERMISSION_DENIED', 'a user cannot set another\'s password');
  t.equal(await codeOf(setPw(a1, { username: 'alice', currentPassword: PW })), 'OK', 'own password by name');
  t.equal(await codeOf(whoami(a1)), 'OK', 'the session that changed it stays');
  t.equal(await codeOf(whoami(a2)), 'TRELLIS_E_UNAUTHENTICATED', 'the other session of alice ended');
  t.equal(await codeOf(login(h, 'alice', PW)), 'TRELLIS_E_UNAUTHENTICATED', 'the old password is refused');
  t.equal(await codeOf(login(h, 'alice', 'the-new-password-1')), 'OK');

  // An administrator resets it without the current one; alice's sessions end.
  t.equal(await codeOf(setPw(h.admin, { username: 'alice', newPassword: 'admin-set-password-1' })), 'OK');
  t.equal(await codeOf(whoami(a1)), 'TRELLIS_E_UNAUTHENTICATED', 'alice\'s sessions ended with the reset');
  t.equal(await codeOf(login(h, 'alice', 'admin-set-password-1')), 'OK');
  t.equal(await codeOf(setPw(h.admin, { username: 'ghost', newPassword: 'admin-set-password-1' })), 'TRELLIS_E_NOT_FOUND');
});

t.test('deactivating a user refuses their login token and API key at once and cuts their running stream', async (t) => {
  await using h = await startHub();
  await createUser(h, 'alice');
  const a = await loginAs(t, h, 'alice');
  const key = (await createKey(a, 'ci')).key;
  const k = withKey(t, h, key);
  const { dataDir, agentId } = await h.enroll();
  await h.agent({ dataDir });

  const stream = a.runs.Run({ agentId, argv: ['sleep', '30'], timeoutMs: 60_000 }, a.metadata) as grpc.ClientReadableStream<T.RunUpdate__Output>;
  let started!: () => void;
  const startedP = new Promise<void>((r) => (started = r));
  const ended = new Promise<{ code: number; at: number }>((resolve) => {
    stream.on('data', (u: T.RunUpdate__Output) => { if (u.started) started(); });
    stream.on('error', (e: grpc.ServiceError) => resolve({ code: e.code, at: Date.now() }));
    stream.on('end', () => resolve({ code: grpc.status.OK, at: Date.now() }));
  });
  await startedP;

  const before = Date.now();
  const info = await setActive(h, 'alice', false);
  t.equal(info.active, false);
  t.same(info.effectiveRoles, [], 'a deactivated user has no effective roles');
  const cut = await ended;
  t.equal(cut.code, grpc.status.UNAUTHENTICATED, 'the running stream ends with UNAUTHENTICATED');
  t.ok(cut.at - before < 1500, `the stream was cut within 1.5 s (${cut.at - before} ms)`);
  t.equal(await codeOf(whoami(a)), 'TRELLIS_E_UNAUTHENTICATED', 'the login token is refused');
  t.equal(await codeOf(whoami(k)), 'TRELLIS_E_UNAUTHENTICATED', 'the API key is refused');
  t.equal(await codeOf(login(h, 'alice')), 'TRELLIS_E_UNAUTHENTICATED', 'a new login is refused');

  await setActive(h, 'alice', true);
  t.equal(await codeOf(whoami(a)), 'TRELLIS_E_UNAUTHENTICATED', 'the old login token stays dead after activation');
  t.equal(await codeOf(login(h, 'alice')), 'OK', 'alice logs in again');
  t.equal((await whoami(k)).username, 'alice', 'her API key works again');
  t.equal(await codeOf(setActive(h, 'admin', false)), 'TRELLIS_E_INVALID_ARGUMENT', 'an administrator cannot deactivate themselves');
});

t.test('deleting a user removes their sessions, API keys and group memberships', async (t) => {
  await using h = await startHub();
  await createUser(h, 'alice', []);
  await call(h.admin, h.admin.groups, h.admin.groups.CreateGroup, { name: 'ops', description: '', ldapGroups: [] });
  await assign(h.admin, 'user', { group: 'ops' });
  await call(h.admin, h.admin.groups, h.admin.groups.AddGroupMember, { group: 'ops', user: 'alice' });
  const a = await loginAs(t, h, 'alice');
  const key = (await createKey(a)).key;
  t.same((await getUser(h.admin, 'alice')).effectiveRoles, ['user'], 'alice has user through ops');

  t.equal(await codeOf(call(h.admin, h.admin.users, h.admin.users.DeleteUser, { username: 'alice' })), 'OK');
  t.equal(await codeOf(getUser(h.admin, 'alice')), 'TRELLIS_E_NOT_FOUND');
  t.same(await h.hub.components.auth.sessions('alice'), [], 'no sessions left');
  t.same(await h.hub.components.auth.apiKeys('alice'), [], 'no API keys left');
  t.equal(await codeOf(whoami(a)), 'TRELLIS_E_UNAUTHENTICATED');
  t.equal(await codeOf(whoami(withKey(t, h, key))), 'TRELLIS_E_UNAUTHENTICATED');

  await createUser(h, 'alice', []);
  const again = await getUser(h.admin, 'alice');
  t.same([again.groups, again.effectiveRoles], [[], []], 'a new alice inherits nothing from the old one');
  t.equal(await codeOf(call(h.admin, h.admin.users, h.admin.users.DeleteUser, { username: 'admin' })), 'TRELLIS_E_INVALID_ARGUMENT', 'an administrator cannot delete themselves');
  t.equal(await codeOf(call(h.admin, h.admin.users, h.admin.users.DeleteUser, { username: 'ghost' })), 'TRELLIS_E_NOT_FOUND');
});

t.test('a locked-out user is refused even with the right password until unlocked', async (t) => {
  await using h = await startHub();
  await createUser(h, 'alice');
  for (let i = 0; i < 5; i++) t.equal(await codeOf(login(h, 'alice', 'wrong-password-1')), 'TRELLIS_E_UNAUTHENTICATED');
  const locked = await login(h, 'alice').catch((e: Error) => e);
  t.match((locked as Error).message, /locked/, 'the right password is refused while locked');
  const u = await getUser(h.admin, 'alice');
  t.ok(u.lockedUntilMs > Date.now(), 'locked_until_ms is set');
  t.equal(u.failedLogins, 5);
  const unlocked = await call<T.UnlockUserRequest, T.UserInfo__Output>(h.admin, h.admin.users, h.admin.users.UnlockUser, { username: 'alice' });
  t.same([unlocked.lockedUntilMs, unlocked.failedLogins], [0, 0]);
  t.equal(await codeOf(login(h, 'alice')), 'OK', 'logs in after the unlock');
});

// ------------------------------------------------------------------ roles

t.test('a granted permission applies to the very next call and a revoked one is gone at once', async (t) => {
  await using h = await startHub();
  const role = await call<T.CreateRoleRequest, T.RoleInfo__Output>(h.admin, h.admin.roles, h.admin.roles.CreateRole, {
    name: 'ops', description: 'operators', grants: [{ permission: 'agents:list', scope: '' }],
  });
  t.same([role.builtin, role.grants], [false, [{ permission: 'agents:list', scope: '' }]]);
  await createUser(h, 'carol', ['ops']);
  const c = await loginAs(t, h, 'carol');
  const listTokens = () => call(c, c.tokens, c.tokens.ListJoinTokens, { includeInactive: false });
  t.equal(await codeOf(listAgents(c)), 'OK');
  t.equal(await codeOf(listTokens()), 'TRELLIS_E_PERMISSION_DENIED');
  const grant = (verb: 'GrantPermission' | 'RevokePermission', permission: string, scope = '') =>
    call<T.GrantPermissionRequest, T.RoleInfo__Output>(h.admin, h.admin.roles, h.admin.roles[verb], { role: 'ops', grant: { permission, scope } });
  await grant('GrantPermission', 'tokens:list');
  t.equal(await codeOf(listTokens()), 'OK', 'the grant applies to the next call');
  await grant('RevokePermission', 'tokens:list');
  t.equal(await codeOf(listTokens()), 'TRELLIS_E_PERMISSION_DENIED', 'the revoke applies to the next call');
  t.equal(await codeOf(grant('RevokePermission', 'tokens:list')), 'TRELLIS_E_NOT_FOUND', 'revoking a grant the role lacks');
  const shown = await call<T.GetRoleRequest, T.RoleInfo__Output>(h.admin, h.admin.roles, h.admin.roles.GetRole, { name: 'ops' });
  t.same(shown.users, ['carol']);
  await call(h.admin, h.admin.roles, h.admin.roles.DeleteRole, { name: 'ops' });
  t.equal(await codeOf(listAgents(c)), 'TRELLIS_E_PERMISSION_DENIED', 'a deleted role gives nothing');
  t.same((await getUser(h.admin, 'carol')).roles, [], 'and is unassigned');
});

t.test('built-in roles cannot be changed or deleted', async (t) => {
  await using h = await startHub();
  const r = h.admin.roles;
  const g = { permission: 'agents:list', scope: '' };
  t.equal(await codeOf(call(h.admin, r, r.GrantPermission, { role: 'observer', grant: { permission: 'agents:run', scope: '' } })), 'TRELLIS_E_INVALID_ARGUMENT');
  t.equal(await codeOf(call(h.admin, r, r.RevokePermission, { role: 'user', grant: g })), 'TRELLIS_E_INVALID_ARGUMENT');
  t.equal(await codeOf(call(h.admin, r, r.RevokePermission, { role: 'admin', grant: { permission: '*', scope: '' } })), 'TRELLIS_E_INVALID_ARGUMENT');
  for (const name of ['admin', 'user', 'observer']) t.equal(await codeOf(call(h.admin, r, r.DeleteRole, { name })), 'TRELLIS_E_INVALID_ARGUMENT', `delete ${name}`);
  t.equal(await codeOf(call(h.admin, r, r.CreateRole, { name: 'admin', description: '', grants: [] })), 'TRELLIS_E_ALREADY_EXISTS');
  const list = await call<T.ListRolesRequest, T.ListRolesResponse__Output>(h.admin, r, r.ListRoles, {});
  t.same(list.roles.filter((x) => x.builtin).map((x) => x.name), ['admin', 'user', 'observer']);
  t.same(list.roles.find((x) => x.name === 'admin')!.users, ['admin']);
});

t.test('an unknown permission or a bad scope is rejected with INVALID_ARGUMENT', async (t) => {
  await using h = await startHub();
  const r = h.admin.roles;
  await call(h.admin, r, r.CreateRole, { name: 'ops', description: '', grants: [] });
  const bad = async (grant: T.Grant | null, what: string) => {
    t.equal(await grpcOf(call(h.admin, r, r.GrantPermission, { role: 'ops', grant })), grpc.status.INVALID_ARGUMENT, `grant ${what}`);
  };
  await bad({ permission: 'agents:fly', scope: '' }, 'an unknown permission');
  await bad({ permission: 'agents:list', scope: 'tenant:red' }, 'an unknown scope kind');
  await bad({ permission: 'agents:list', scope: 'pack:' }, 'an empty pack');
  await bad({ permission: 'agents:list', scope: 'action:web' }, 'an action without a name');
  await bad(null, 'no grant');
  const e = await call(h.admin, r, r.CreateRole, { name: 'x', description: '', grants: [{ permission: 'agents:fly', scope: '' }] }).catch((err: Error) => err);
  t.match((e as Error).message, /unknown permission "agents:fly"/);
  t.equal(await codeOf(call(h.admin, r, r.GetRole, { name: 'x' })), 'TRELLIS_E_NOT_FOUND', 'nothing was created');
});

t.test('pack- and action-scoped grants allow only their pack or action', async (t) => {
  await using h = await startHub();
  const r = h.admin.roles;
  await call(h.admin, r, r.CreateRole, { name: 'web-ops', description: '', grants: [{ permission: 'actions:execute', scope: 'pack:web' }] });
  await call(h.admin, r, r.CreateRole, { name: 'web-restart', description: '', grants: [{ permission: 'actions:execute', scope: 'action:web.restart' }] });
  await createUser(h, 'p', ['web-ops']);
  await createUser(h, 'q', ['web-restart']);
  const grantsOf = async (u: string) => (await h.hub.components.iam.resolve(u))!.grants;
  const p = await grantsOf('p');
  t.ok(p.allows('actions:execute', { pack: 'web' }), 'pack:web allows pack web');
  t.ok(p.allows('actions:execute', { pack: 'web', action: 'anything' }), 'and every action in it');
  t.notOk(p.allows('actions:execute', { pack: 'db' }), 'not pack db');
  t.notOk(p.allows('actions:execute'), 'not the platform');
  t.notOk(p.allows('kv:read', { pack: 'web' }), 'not another permission');
  const q = await grantsOf('q');
  t.ok(q.allows('actions:execute', { pack: 'web', action: 'restart' }), 'action:web.restart allows it');
  t.notOk(q.allows('actions:execute', { pack: 'web', action: 'stop' }), 'not another action of the pack');
  t.notOk(q.allows('actions:execute', { pack: 'web' }), 'not the whole pack');
  t.notOk(q.allows('actions:execute', { pack: 'db', action: 'restart' }), 'not the same action name in another pack');
});

t.test('managing roles cannot escalate: one hands out only grants one holds', async (t) => {
  await using h = await startHub();
  const r = h.admin.roles;
  await call(h.admin, r, r.CreateRole, {
    name: 'role-admin', description: '',
    grants: ['roles:create', 'roles:update', 'roles:assign', 'roles:get', 'agents:list'].map((permission) => ({ permission, scope: '' })),
  });
  await createUser(h, 'mgr', ['role-admin']);
  await createUser(h, 'dan', []);
  const m = await loginAs(t, h, 'mgr');
  t.equal(await codeOf(assign(m, 'admin', { user: 'mgr' })), 'TRELLIS_E_PERMISSION_DENIED', 'cannot assign admin to oneself');
  t.equal(await codeOf(assign(m, 'user', { user: 'dan' })), 'TRELLIS_E_PERMISSION_DENIED', 'cannot assign a role with grants one lacks');
  t.equal(await codeOf(assign(m, 'admin', { user: 'admin' }, false)), 'TRELLIS_E_PERMISSION_DENIED', 'cannot unassign admin from the administrator');
  t.equal(await codeOf(call(m, m.roles, m.roles.GrantPermission, { role: 'role-admin', grant: { permission: '*', scope: '' } })), 'TRELLIS_E_PERMISSION_DENIED', 'cannot grant * to own role');
  t.equal(await codeOf(call(m, m.roles, m.roles.CreateRole, { name: 'runner', description: '', grants: [{ permission: 'agents:run', scope: '' }] })), 'TRELLIS_E_PERMISSION_DENIED', 'cannot create a role with more');
  t.equal(await codeOf(call(m, m.roles, m.roles.CreateRole, { name: 'lister', description: '', grants: [{ permission: 'agents:list', scope: 'pack:web' }] })), 'OK', 'may hand out a narrower grant it holds');
  t.equal(await codeOf(assign(m, 'lister', { user: 'dan' })), 'OK', 'and assign it');
  t.same((await getUser(h.admin, 'admin')).roles, ['admin'], 'the administrator keeps admin');
  t.same((await getUser(h.admin, 'mgr')).roles, ['role-admin'], 'mgr gained nothing');
});

// ------------------------------------------------------------------ groups and tenants

t.test('groups give their roles and tenants to their members, and take them back', async (t) => {
  await using h = await startHub();
  await call(h.admin, h.admin.tenants, h.admin.tenants.CreateTenant, { name: 'red', description: '' });
  const g = await call<T.CreateGroupRequest, T.GroupInfo__Output>(h.admin, h.admin.groups, h.admin.groups.CreateGroup, { name: 'red-ops', description: 'red team', ldapGroups: ['cn=red-ops'] });
  t.same(g.ldapGroups, ['cn=red-ops']);
  await assign(h.admin, 'user', { group: 'red-ops' });
  await call(h.admin, h.admin.tenants, h.admin.tenants.AddTenantMember, { tenant: 'red', user: '', group: 'red-ops' });
  await createUser(h, 'dave', []);
  const d = await loginAs(t, h, 'dave', PW, 'red');
  t.equal(await codeOf(listAgents(d)), 'TRELLIS_E_PERMISSION_DENIED', 'no role and not in red yet');

  const member = (verb: 'AddGroupMember' | 'RemoveGroupMember') => call<T.GroupMemberRequest, T.GroupInfo__Output>(h.admin, h.admin.groups, h.admin.groups[verb], { group: 'red-ops', user: 'dave' });
  t.same((await member('AddGroupMember')).members, ['dave']);
  t.equal(await codeOf(listAgents(d)), 'OK', 'the group gives role user and tenant red');
  const u = await getUser(h.admin, 'dave');
  t.same([u.roles, u.groups, u.effectiveRoles, [...u.effectiveTenants].sort()], [[], ['red-ops'], ['user'], ['default', 'red']]);
  const tenant = await call<T.GetTenantRequest, T.TenantInfo__Output>(h.admin, h.admin.tenants, h.admin.tenants.GetTenant, { name: 'red' });
  t.same([tenant.users, tenant.groups], [[], ['red-ops']]);

  await member('RemoveGroupMember');
  t.equal(await codeOf(listAgents(d)), 'TRELLIS_E_PERMISSION_DENIED', 'leaving the group takes both back');
  t.equal(await codeOf(call(h.admin, h.admin.groups, h.admin.groups.AddGroupMember, { group: 'red-ops', user: 'ghost' })), 'TRELLIS_E_NOT_FOUND');
  t.equal(await codeOf(call(h.admin, h.admin.groups, h.admin.groups.CreateGroup, { name: 'red-ops', description: '', ldapGroups: [] })), 'TRELLIS_E_ALREADY_EXISTS');
  t.equal(await codeOf(call(h.admin, h.admin.groups, h.admin.groups.DeleteGroup, { name: 'red-ops' })), 'OK');
  t.equal(await codeOf(call(h.admin, h.admin.groups, h.admin.groups.GetGroup, { name: 'red-ops' })), 'TRELLIS_E_NOT_FOUND');
});

t.test('a tenant cannot be deleted while agents or usable join tokens belong to it', async (t) => {
  await using h = await startHub();
  const del = (name: string) => call(h.admin, h.admin.tenants, h.admin.tenants.DeleteTenant, { name });
  await createUser(h, 'erin', ['user']);
  const { agentId } = await h.enroll({ token: await h.token({ tenant: 'tmp' }) });
  await call(h.admin, h.admin.tenants, h.admin.tenants.AddTenantMember, { tenant: 'tmp', user: 'erin', group: '' });
  const e = await del('tmp').catch((err: Error & { code: string }) => err);
  t.equal((e as { code?: string }).code, 'TRELLIS_E_INVALID_ARGUMENT');
  t.match((e as Error).message, /1 agent/);
  await h.token({ tenant: 'tmp' });
  t.match((await del('tmp').catch((err: Error) => err) as Error).message, /1 agent.*1 usable join token/);
  await call(h.admin, h.admin.agents, h.admin.agents.RevokeAgent, { id: agentId, reason: 'test' });
  const tokens = await call<T.ListJoinTokensRequest, T.ListJoinTokensResponse__Output>(h.admin, h.admin.tokens, h.admin.tokens.ListJoinTokens, { includeInactive: false });
  for (const tok of tokens.tokens.filter((x) => x.tenant === 'tmp')) await call(h.admin, h.admin.tokens, h.admin.tokens.RevokeJoinToken, { id: tok.id });
  t.equal(await codeOf(del('tmp')), 'OK', 'deleted once its agents and tokens are revoked');
  t.equal(await codeOf(call(h.admin, h.admin.tenants, h.admin.tenants.GetTenant, { name: 'tmp' })), 'TRELLIS_E_NOT_FOUND');
  t.same((await getUser(h.admin, 'erin')).tenants, ['default'], 'memberships of the tenant are gone');
  t.equal(await codeOf(del('default')), 'TRELLIS_E_INVALID_ARGUMENT', 'default cannot be deleted');
  t.equal(await codeOf(call(h.admin, h.admin.tenants, h.admin.tenants.CreateTenant, { name: '*', description: '' })), 'TRELLIS_E_INVALID_ARGUMENT');
});

// ------------------------------------------------------------------ sessions

t.test('sessions: one lists and ends one\'s own; another user\'s needs sessions:list / sessions:revoke', async (t) => {
  await using h = await startHub();
  await createUser(h, 'erin');
  await createUser(h, 'frank');
  const e1 = await loginAs(t, h, 'erin');
  const e2 = await loginAs(t, h, 'erin');
  const f = await loginAs(t, h, 'frank');
  const own = await listSessions(e1);
  t.equal(own.sessions.length, 2);
  t.ok(own.sessions.every((s) => s.username === 'erin' && /^[0-9a-f]{16}$/.test(s.id) && s.sourceAddress), 'short handles with the source address');
  t.equal(own.sessions.filter((s) => s.current).length, 1, 'one is marked current');
  t.notOk(JSON.stringify(own).includes(e1.token.slice(5, 20)), 'no token in the listing');
  const other = own.sessions.find((s) => !s.current)!;
  const current = own.sessions.find((s) => s.current)!;

  t.equal(await codeOf(listSessions(f, true)), 'TRELLIS_E_PERMISSION_DENIED', 'all users needs sessions:list');
  t.same((await listSessions(f)).sessions.map((s) => s.username), ['frank'], 'frank sees only his own');
  t.equal(await codeOf(call(f, f.sessions, f.sessions.RevokeSession, { id: current.id })), 'TRELLIS_E_PERMISSION_DENIED', 'frank cannot end erin\'s session');
  t.equal(await codeOf(whoami(e1)), 'OK', 'erin\'s session lives on');
  t.equal(await codeOf(call(e1, e1.sessions, e1.sessions.RevokeSession, { id: other.id })), 'OK', 'erin ends her other session');
  t.equal(await codeOf(whoami(e2)), 'TRELLIS_E_UNAUTHENTICATED');
  t.equal(await codeOf(call(e1, e1.sessions, e1.sessions.RevokeSession, { id: 'ffffffffffffffff' })), 'TRELLIS_E_NOT_FOUND');

  const all = await listSessions(h.admin, true);
  t.same([...new Set(all.sessions.map((s) => s.username))].sort(), ['admin', 'erin', 'frank'], 'the administrator sees everyone\'s');
  const fs = all.sessions.find((s) => s.username === 'frank')!;
  t.equal(await codeOf(call(h.admin, h.admin.sessions, h.admin.sessions.RevokeSession, { id: fs.id })), 'OK');
  t.equal(await codeOf(whoami(f)), 'TRELLIS_E_UNAUTHENTICATED', 'the administrator ended frank\'s session');
});

// ------------------------------------------------------------------ API keys

t.test('an API key is shown once and stored only as a salted hash; last use is recorded', async (t) => {
  await using h = await startHub();
  await createUser(h, 'gina');
  const g = await loginAs(t, h, 'gina');
  const r = await createKey(g, 'ci');
  const m = /^tak1_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/.exec(r.key);
  t.ok(m, 'the key has the documented form');
  const [, id, secret] = m!;
  t.same([r.info!.id, r.info!.owner, r.info!.name, r.info!.enabled, r.info!.lastUsedMs], [id, 'gina', 'ci', true, 0]);
  const listed = await listKeys(g);
  t.notOk(JSON.stringify(listed).includes(secret!), 'the list never carries the key');
  const state = readFileSync(hubPaths(h.dataDir).store, 'utf8');
  t.ok(state.includes(id!), 'the key record is in state.json');
  t.notOk(state.includes(r.key), 'state.json does not hold the key');
  t.notOk(state.includes(secret!), 'state.json does not hold the secret part');
  const doc = (await h.hub.components.store.get<ApiKeyDoc>('apiKeys', id!))!;
  t.notOk(state.includes(createHash('sha256').update(secret!).digest('hex')), 'nor an unsalted hash of it');
  t.match(doc.salt, /^[0-9a-f]{32}$/, 'a per-key salt');

  const usedFrom = Date.now();
  t.equal((await whoami(withKey(t, h, r.key))).username, 'gina', 'the key works');
  await waitFor(async () => (await listKeys(g)).keys[0]!.lastUsedMs > 0, 5000, 'last used to be recorded');
  const lastUsed = Number((await listKeys(g)).keys[0]!.lastUsedMs);
  t.ok(lastUsed >= usedFrom && lastUsed <= Date.now(), `last_used_ms is set when the key is used (${lastUsed - usedFrom} ms after the call began)`);
});

t.test('disabling, enabling and deleting an API key take effect at once; another\'s needs a permission', async (t) => {
  await using h = await startHub();
  await createUser(h, 'gina');
  await createUser(h, 'hank');
  const g = await loginAs(t, h, 'gina');
  const hk = await loginAs(t, h, 'hank');
  const r = await createKey(g);
  const k = withKey(t, h, r.key);
  const id = r.info!.id;
  const enable = (c: AdminClients, enabled: boolean) => call<T.SetApiKeyEnabledRequest, T.ApiKeyInfo__Output>(c, c.apikeys, c.apikeys.SetApiKeyEnabled, { id, enabled });

  t.equal(await codeOf(enable(hk, false)), 'TRELLIS_E_PERMISSION_DENIED', 'hank cannot disable gina\'s key');
  t.equal(await codeOf(call(hk, hk.apikeys, hk.apikeys.DeleteApiKey, { id })), 'TRELLIS_E_PERMISSION_DENIED', 'nor delete it');
  t.equal(await codeOf(listKeys(hk, true)), 'TRELLIS_E_PERMISSION_DENIED', 'nor list every user\'s keys');
  t.same((await listKeys(hk)).keys, [], 'his own list is empty');
  t.equal((await enable(g, false)).enabled, false);
  t.equal(await codeOf(whoami(k)), 'TRELLIS_E_UNAUTHENTICATED', 'a disabled key is refused at once');
  await enable(g, true);
  t.equal(await codeOf(whoami(k)), 'OK', 'enabled again');
  t.equal((await enable(h.admin, false)).enabled, false, 'an administrator may disable another\'s key');
  await enable(h.admin, true);
  t.same((await listKeys(h.admin, true)).keys.map((x) => x.owner), ['gina']);
  await call(g, g.apikeys, g.apikeys.DeleteApiKey, { id });
  t.equal(await codeOf(whoami(k)), 'TRELLIS_E_UNAUTHENTICATED', 'a deleted key is refused at once');
  t.same((await listKeys(g)).keys, []);
  t.equal(await codeOf(enable(g, true)), 'TRELLIS_E_NOT_FOUND');
});

t.test('an API key acts as its owner and cannot escalate, and loses what its owner loses', async (t) => {
  await using h = await startHub();
  await createUser(h, 'gina', ['user']);
  const g = await loginAs(t, h, 'gina');
  const k = withKey(t, h, (await createKey(g)).key);
  t.equal((await whoami(k)).username, 'gina');
  t.equal(await codeOf(listAgents(k)), 'OK', 'the key can do what gina can');
  const denied = async (what: string, p: Promise<unknown>) => t.equal(await grpcOf(p), grpc.status.PERMISSION_DENIED, what);
  await denied('CreateUser', call(k, k.users, k.users.CreateUser, { username: 'evil', password: PW, roles: ['admin'], tenants: [] }));
  await denied('CreateTenant', call(k, k.tenants, k.tenants.CreateTenant, { name: 'evil', description: '' }));
  await denied('ReplaceHubCertificate', call(k, k.certs, k.certs.ReplaceHubCertificate, { certificate: 'x', privateKey: 'y' }));
  await denied('AssignRole admin to its owner', assign(k, 'admin', { user: 'gina' }));
  await denied('SetPassword of another user', call(k, k.users, k.users.SetPassword, { username: 'admin', currentPassword: '', newPassword: 'hijacked-password-1' }));

  // A key may make another key: the same owner, bounded the same way.
  const k2r = await createKey(k, 'from a key');
  t.equal(k2r.info!.owner, 'gina');
  const k2 = withKey(t, h, k2r.key);
  await denied('CreateUser with a key made by a key', call(k2, k2.users, k2.users.CreateUser, { username: 'evil', password: PW, roles: [], tenants: [] }));
  t.same((await getUser(h.admin, 'gina')).roles, ['user'], 'gina gained nothing');

  await assign(h.admin, 'user', { user: 'gina' }, false);
  t.equal(await codeOf(listAgents(k)), 'TRELLIS_E_PERMISSION_DENIED', 'the owner lost role user: so did the key');
  t.equal(await codeOf(listAgents(k2)), 'TRELLIS_E_PERMISSION_DENIED', 'and the key made by the key');
});

// ------------------------------------------------------------------ system

t.test('AdminSystem methods answer UNIMPLEMENTED to an administrator and PERMISSION_DENIED to a user', async (t) => {
  await using h = await startHub();
  await createUser(h, 'ivy');
  const u = await loginAs(t, h, 'ivy');
  for (const m of ['Upgrade', 'Rollback'] as const) {
    const asAdmin = await call(h.admin, h.admin.system, h.admin.system[m], { argument: '' }).catch((e: Error) => e);
    t.equal(grpcCodeOf(asAdmin), grpc.status.UNIMPLEMENTED, `${m} as an administrator`);
    t.equal((asAdmin as { code?: string }).code, 'TRELLIS_E_UNIMPLEMENTED');
    t.match((asAdmin as Error).message, new RegExp(`${m} is not available`));
    t.equal(await grpcOf(call(u, u.system, u.system[m], { argument: '' })), grpc.status.PERMISSION_DENIED, `${m} as a user`);
  }
});
