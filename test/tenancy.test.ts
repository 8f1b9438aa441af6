/**
 * Tenant isolation on the admin port: two tenants, red and blue, one `user` in each (and a second
 * one in red), agents enrolled with each tenant's join tokens. Another tenant's agents and tokens
 * do not exist for a user (NOT_FOUND); naming a tenant one is not in is PERMISSION_DENIED.
 */
import t, { type Test } from 'tap';
import * as grpc from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import { ADMIN_PASSWORD, startHub, type TestHub } from './helpers/hub.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import { certInfo } from '../certs/index.js';
import { agentPaths } from '../agent/identity.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const PW = 'a-long-enough-password-1';

async function codeOf(p: Promise<unknown>): Promise<string> {
  try { await p; return 'OK'; } catch (e) { return (e as { code?: string }).code ?? String(e); }
}

interface World { h: TestHub; r: AdminClients; r2: AdminClients; b: AdminClients; redAgent: string; blueAgent: string }

/** Logs a user in with AdminAuth.Login and returns clients for their token and tenant. */
async function clientsFor(t: Test, h: TestHub, username: string, tenant?: string, password = PW): Promise<AdminClients> {
  const anon = adminClients(h.adminAddr, h.caPem);
  const r = await call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username, password }).finally(() => anon.close());
  const c = adminClients(h.adminAddr, h.caPem, r.token, tenant);
  t.teardown(() => c.close());
  return c;
}

async function world(t: Test): Promise<World> {
  const h = await startHub();
  t.teardown(() => h.close());
  for (const name of ['red', 'blue']) await call(h.admin, h.admin.tenants, h.admin.tenants.CreateTenant, { name, description: '' });
  // `user` cannot revoke agents; this role lets the isolation of RevokeAgent be seen.
  await call(h.admin, h.admin.roles, h.admin.roles.CreateRole, { name: 'revoker', description: '', grants: [{ permission: 'agents:revoke', scope: '' }] });
  for (const [username, tenant] of [['r', 'red'], ['r2', 'red'], ['b', 'blue']] as const) {
    await call(h.admin, h.admin.users, h.admin.users.CreateUser, { username, password: PW, roles: ['user', 'revoker'], tenants: [tenant] });
  }
  const redAgent = (await h.enroll({ token: await h.token({ tenant: 'red' }) })).agentId;
  const blueAgent = (await h.enroll({ token: await h.token({ tenant: 'blue' }) })).agentId;
  return { h, redAgent, blueAgent, r: await clientsFor(t, h, 'r', 'red'), r2: await clientsFor(t, h, 'r2', 'red'), b: await clientsFor(t, h, 'b', 'blue') };
}

const agentIds = async (c: AdminClients) => (await call<T.ListAgentsRequest, T.ListAgentsResponse__Output>(c, c.agents, c.agents.ListAgents, {})).agents.map((a) => a.id).sort();
const tokens = async (c: AdminClients) => (await call<T.ListJoinTokensRequest, T.ListJoinTokensResponse__Output>(c, c.tokens, c.tokens.ListJoinTokens, { includeInactive: true })).tokens;
const createToken = (c: AdminClients, req: Partial<T.CreateJoinTokenRequest> = {}) =>
  call<T.CreateJoinTokenRequest, T.CreateJoinTokenResponse__Output>(c, c.tokens, c.tokens.CreateJoinToken, { tenant: '', uses: 1, ttlMs: 600_000, ...req });

/** The gRPC status a Run stream ends with. */
function runCode(c: AdminClients, agentId: string): Promise<number> {
  return new Promise((resolve) => {
    const s = c.runs.Run({ agentId, argv: ['true'], timeoutMs: 5_000 }, c.metadata);
    s.on('data', () => undefined);
    s.on('error', (e: grpc.ServiceError) => resolve(e.code));
    s.on('end', () => resolve(grpc.status.OK));
  });
}

t.test('each user lists only their own tenant\'s agents; another tenant\'s agent is NOT_FOUND', async (t) => {
  const { h, r, b, redAgent, blueAgent } = await world(t);
  t.same(await agentIds(r), [redAgent], 'r sees the red agent only');
  t.same(await agentIds(b), [blueAgent], 'b sees the blue agent only');
  t.equal((await call<T.GetAgentRequest, T.AgentInfo__Output>(r, r.agents, r.agents.GetAgent, { id: redAgent })).tenant, 'red');

  for (const [who, c, other] of [['r', r, blueAgent], ['b', b, redAgent]] as const) {
    t.equal(await codeOf(call(c, c.agents, c.agents.GetAgent, { id: other })), 'TRELLIS_E_NOT_FOUND', `${who}: GetAgent of the other tenant's agent`);
    t.equal(await codeOf(call(c, c.agents, c.agents.RevokeAgent, { id: other, reason: 'x' })), 'TRELLIS_E_NOT_FOUND', `${who}: RevokeAgent of the other tenant's agent`);
    t.equal(await runCode(c, other), grpc.status.NOT_FOUND, `${who}: Run on the other tenant's agent`);
  }
  const all = await call<T.ListAgentsRequest, T.ListAgentsResponse__Output>(h.admin, h.admin.agents, h.admin.agents.ListAgents, {});
  t.ok(all.agents.every((a) => !a.revoked), 'the refused revokes revoked nothing');
  t.equal(await codeOf(call(r, r.agents, r.agents.RevokeAgent, { id: redAgent, reason: 'x' })), 'OK', 'r may revoke her own tenant\'s agent');
});

t.test('join tokens land in the caller\'s tenant, list per tenant, and another tenant\'s cannot be revoked', async (t) => {
  const { r, b } = await world(t);
  const rt = await createToken(r);
  const bt = await createToken(b);
  t.equal(rt.info!.tenant, 'red', 'r\'s token is in red');
  t.equal(bt.info!.tenant, 'blue', 'b\'s token is in blue');
  const rs = await tokens(r);
  t.ok(rs.length >= 2 && rs.every((x) => x.tenant === 'red'), 'r lists red tokens only (hers and the one the admin made)');
  t.ok((await tokens(b)).every((x) => x.tenant === 'blue'), 'b lists blue tokens only');
  t.equal(await codeOf(call(r, r.tokens, r.tokens.RevokeJoinToken, { id: bt.info!.id })), 'TRELLIS_E_NOT_FOUND', 'r cannot revoke b\'s token');
  t.notOk((await tokens(b)).find((x) => x.id === bt.info!.id)!.revoked, 'b\'s token is untouched');
  t.equal(await codeOf(createToken(r, { tenant: 'blue' })), 'TRELLIS_E_PERMISSION_DENIED', 'a token for a tenant one is not in');
  t.equal(await codeOf(createToken(r, { tenant: 'red' })), 'OK', 'naming one\'s own tenant is fine');
});

t.test('asking for a tenant one is not a member of is PERMISSION_DENIED', async (t) => {
  const { h } = await world(t);
  const rInBlue = await clientsFor(t, h, 'r', 'blue');
  t.equal(await codeOf(call(rInBlue, rInBlue.agents, rInBlue.agents.ListAgents, {})), 'TRELLIS_E_PERMISSION_DENIED', 'ListAgents in blue');
  t.equal(await codeOf(createToken(rInBlue)), 'TRELLIS_E_PERMISSION_DENIED', 'CreateJoinToken in blue');
  const rInAll = await clientsFor(t, h, 'r', '*');
  t.equal(await codeOf(call(rInAll, rInAll.agents, rInAll.agents.ListAgents, {})), 'TRELLIS_E_PERMISSION_DENIED', '* is for administrators only');
});

t.test('a private token is invisible to another user of the same tenant, visible to its creator and the administrator', async (t) => {
  const { h, r, r2 } = await world(t);
  const p = await createToken(r, { private: true });
  t.equal(p.info!.private, true);
  const has = async (c: AdminClients) => (await tokens(c)).some((x) => x.id === p.info!.id);
  t.ok(await has(r), 'the creator sees it');
  t.notOk(await has(r2), 'another red user does not');
  t.equal(await codeOf(call(r2, r2.tokens, r2.tokens.RevokeJoinToken, { id: p.info!.id })), 'TRELLIS_E_NOT_FOUND', 'nor can revoke it');
  t.ok(await has(h.admin), 'the administrator (tenant *) sees it');
  const adminRed = await clientsFor(t, h, 'admin', 'red', ADMIN_PASSWORD);
  t.ok(await has(adminRed), 'and so does the administrator in tenant red');
  const shared = await createToken(r2);
  t.ok((await tokens(r)).some((x) => x.id === shared.info!.id), 'a token that is not private is visible to the tenant');
});

t.test('an administrator with tenant * sees every tenant\'s agents and tokens', async (t) => {
  const { h, redAgent, blueAgent } = await world(t);
  t.same(await agentIds(h.admin), [redAgent, blueAgent].sort());
  t.same([...new Set((await tokens(h.admin)).map((x) => x.tenant))].sort(), ['blue', 'red']);
});

t.test('a join token of tenant blue enrolls its agent into blue', async (t) => {
  const { h, b } = await world(t);
  const token = (await createToken(b)).token;
  const e = await h.enroll({ token });
  const uris = certInfo(readFileSync(agentPaths(e.dataDir).cert, 'utf8')).uris;
  t.equal(uris.length, 1);
  t.match(uris[0], new RegExp(`/tenant/blue/agent/${e.agentId}$`), 'the certificate names tenant blue');
  t.equal((await call<T.GetAgentRequest, T.AgentInfo__Output>(b, b.agents, b.agents.GetAgent, { id: e.agentId })).tenant, 'blue');
});
