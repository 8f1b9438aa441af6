/**
 * Two hubs on one throwaway PostgreSQL (issue 14 §2, first slice), as real `trellis hub run`
 * processes: hub B is made with `trellis hub init --join URL --from A's-data-dir` (A's CA and
 * master key; no key goes through the database). Three real agents enroll on A and get both agent
 * addresses; `trellis cluster status` on either hub lists both with their agent counts; kill -9 A:
 * the agents move to B within the backoff cap, B welcomes them (their records come from the
 * shared store), A is shown stale, and a `trellis run` through B reaches them. An agent revoked
 * through B is refused by A when A comes back. `cluster status` is for administrators only.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ADMIN_PASSWORD, fileAgentLogger, tempDir, waitFor } from './helpers/hub.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import { initHub } from '../hub/init.js';
import { enroll } from '../agent/enroll.js';
import { Agent } from '../agent/agent.js';
import { agentPaths, readState } from '../agent/identity.js';
import { freePorts } from '../bench/lib.js';
import { runHub, stopHub, type HubProc } from './helpers/hub-process.js';
import { runCli } from './helpers/cli.js';
import { writeProfile } from '../cli/profile.js';
import { postgresMissing, startPostgres } from './helpers/postgres.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const MAX_BACKOFF_MS = 3_000;


async function adminLogin(addr: string, caPem: string): Promise<AdminClients> {
  const anon = adminClients(addr, caPem);
  try {
    const r = await call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username: 'admin', password: ADMIN_PASSWORD });
    return adminClients(addr, caPem, r.token);
  } finally { anon.close(); }
}

const status = (c: AdminClients) => call<T.ClusterStatusRequest, T.ClusterStatusResponse__Output>(c, c.cluster, c.cluster.GetClusterStatus, {});

t.test('two hubs on one PostgreSQL: registry, fail-over of agents on kill -9, run through the other hub, revocation shared', { skip: postgresMissing() }, async (t) => {
  const pg = await startPostgres();
  t.teardown(() => pg.close());
  const url = await pg.createDatabase('cluster');
  await using dir = await tempDir('trellis-cluster-');
  const [aAgent, aAdmin, aWeb, bAgent, bAdmin, bWeb] = await freePorts(6);
  const A = join(dir.path, 'hub-a'), B = join(dir.path, 'hub-b');
  await initHub({
    dataDir: A, names: ['localhost', '127.0.0.1'], adminPassword: ADMIN_PASSWORD, storeUrl: url,
    config: { bind: '127.0.0.1', cluster: { addresses: [`127.0.0.1:${aAgent}`, `127.0.0.1:${bAgent}`], heartbeatInterval: '1s', staleAfter: '4s' } },
  });
  // Hub B: `trellis hub init --join` with A's CA and master key from A's data directory (none of
  // it through the database), its own certificate, A's settings.
  const joined = await runCli(['hub', 'init', '--data', B, '--name', 'localhost,127.0.0.1', '--join', url, '--from', A]);
  t.equal(joined.code, 0, joined.err);
  const caPem = readFileSync(join(A, 'ca.pem'), 'utf8');

  let hubA: HubProc | undefined = await runHub(A, [aAgent!, aAdmin!, aWeb!]);
  let hubB: HubProc | undefined = await runHub(B, [bAgent!, bAdmin!, bWeb!]);
  t.teardown(async () => { await stopHub(hubA, 'SIGKILL'); await stopHub(hubB, 'SIGKILL'); });
  const adminA = await adminLogin(`127.0.0.1:${aAdmin}`, caPem);
  const adminB = await adminLogin(`127.0.0.1:${bAdmin}`, caPem); // the admin user comes from the shared store
  t.teardown(() => { adminA.close(); adminB.close(); });

  // Three agents enroll on A and are given both hubs' agent ports.
  const tok = await call<T.CreateJoinTokenRequest, T.CreateJoinTokenResponse__Output>(adminA, adminA.tokens, adminA.tokens.CreateJoinToken, { tenant: 'default', uses: 3 });
  const agents: Agent[] = [];
  t.teardown(async () => { for (const a of agents) await a.close(); });
  const ids: string[] = [];
  for (let i = 0; i < 3; i++) {
    const dataDir = join(dir.path, `agent-${i}`);
    const r = await enroll({ hub: `127.0.0.1:${aAdmin}`, token: tok.token, dataDir });
    ids.push(r.agentId);
    t.same(readState(agentPaths(dataDir)).hubs, [`127.0.0.1:${aAgent}`, `127.0.0.1:${bAgent}`], `agent ${i} keeps both hubs`);
    agents.push(await Agent.start({ dataDir, log: fileAgentLogger(dataDir).log, maxBackoffMs: MAX_BACKOFF_MS }));
  }
  await waitFor(() => agents.every((a) => a.channel.state === 'ready'), 30_000, 'agents connected to A');
  t.ok(agents.every((a) => a.target === `127.0.0.1:${aAgent}`), 'all on hub A');

  // Both hubs list both hubs; A counts three agents once its heartbeat ran.
  await waitFor(async () => (await status(adminB)).hubs.find((h) => h.addresses.includes(`localhost:${aAgent}`))?.agents === 3, 15_000, 'A heartbeats 3 agents');
  for (const [name, c, self] of [['A', adminA, aAdmin], ['B', adminB, bAdmin]] as const) {
    const s = await status(c);
    t.equal(s.store, 'postgres', `${name}: shared store`);
    t.equal(s.hubs.length, 2, `${name} lists two hubs`);
    t.equal(s.hubs.filter((h) => h.self).length, 1);
    t.ok(s.hubs.find((h) => h.self)!.addresses.includes(`localhost:${self}`), `${name} marks itself`);
    t.notOk(s.hubs.some((h) => h.stale), 'none stale');
  }

  // The CLI: `trellis cluster status` through B (table and --json).
  await using home = await tempDir('trellis-cluster-home-');
  const env = { TRELLIS_HOME: home.path, TRELLIS_API_KEY: '', TRELLIS_TENANT: '' };
  const tokB = await call<T.LoginRequest, T.LoginResponse__Output>(adminB, adminB.auth, adminB.auth.Login, { username: 'admin', password: ADMIN_PASSWORD });
  await writeProfile({ hub: `127.0.0.1:${bAdmin}`, caPem, username: 'admin', token: tokB.token, expiresAtMs: tokB.expiresAtMs, tenant: 'default' }, { ...process.env, ...env });
  const table = await runCli(['cluster', 'status'], env);
  t.equal(table.code, 0, table.err);
  t.match(table.out, /HUB\s+ID\s+ADDRESSES\s+AGENTS\s+HEARTBEAT/);
  t.match(table.out, /store: postgres \(shared by every hub\); 2 hub\(s\), 0 stale/);

  // kill -9 A: every agent moves to B within the backoff cap (plus connect time on a busy machine).
  const t0 = Date.now();
  await stopHub(hubA, 'SIGKILL');
  hubA = undefined;
  await waitFor(() => agents.every((a) => a.channel.state === 'ready' && a.target === `127.0.0.1:${bAgent}`), MAX_BACKOFF_MS * 2 + 20_000, 'agents on hub B');
  const movedMs = Date.now() - t0;
  t.ok(movedMs < MAX_BACKOFF_MS * 2 + 20_000, `agents moved to B in ${movedMs} ms`);
  t.comment(`fail-over of 3 agents after kill -9: ${movedMs} ms (backoff cap ${MAX_BACKOFF_MS} ms)`);

  // B shows A stale, itself with the three agents.
  await waitFor(async () => {
    const s = await status(adminB);
    return s.hubs.some((h) => !h.self && h.stale) && s.hubs.find((h) => h.self)?.agents === 3;
  }, 20_000, 'A stale, B with 3 agents');
  const json = await runCli(['cluster', 'status', '--json'], env);
  t.equal(json.code, 0, json.err);
  const parsed = JSON.parse(json.out) as { hubs: Array<{ stale: boolean; self: boolean; agents: number }> };
  t.same(parsed.hubs.map((h) => [h.self, h.stale]).sort(), [[false, true], [true, false]], '--json: B live, A stale');
  const stale = await runCli(['cluster', 'status'], env);
  t.match(stale.out, /STALE/);

  // `trellis run` through B reaches an agent now connected to B.
  const run = await runCli(['run', '--agent', ids[0]!, '--', 'sh', '-c', 'echo from-$0', 'hub-b'], env);
  t.equal(run.code, 0, run.err);
  t.match(run.out, /from-hub-b/);

  // The audit log is one table: `trellis audit` on B lists the join token A created (and A's
  // batch was written before its kill -9).
  const audit = await runCli(['audit', '--method', 'CreateJoinToken', '--json'], env);
  t.equal(audit.code, 0, audit.err);
  t.match(audit.out, /AdminJoinTokens\/CreateJoinToken/, 'B lists the record A wrote');

  // Revoke agent 2 through B; A, started again, refuses it (revocations are in the shared store).
  await call<T.RevokeAgentRequest, T.RevokeAgentResponse__Output>(adminB, adminB.agents, adminB.agents.RevokeAgent, { id: ids[2]!, reason: 'cluster test' });
  const revoked = await agents[2]!.channel.closedPromise;
  t.equal((revoked as { code?: string } | undefined)?.code, 'TRELLIS_E_CERT_REVOKED', 'B closed the revoked agent\'s stream');
  await agents[2]!.close();
  hubA = await runHub(A, [aAgent!, aAdmin!, aWeb!]);
  const again = await Agent.start({ dataDir: join(dir.path, 'agent-2'), log: fileAgentLogger(join(dir.path, 'agent-2')).log, maxBackoffMs: MAX_BACKOFF_MS, hub: `127.0.0.1:${aAgent}` });
  agents.push(again);
  const refused = await again.channel.closedPromise;
  t.equal((refused as { code?: string } | undefined)?.code, 'TRELLIS_E_CERT_REVOKED', 'A refuses the agent revoked through B');
  // A non-revoked agent still connects to A directly.
  await agents[1]!.close();
  const ok = await Agent.start({ dataDir: join(dir.path, 'agent-1'), log: fileAgentLogger(join(dir.path, 'agent-1')).log, maxBackoffMs: MAX_BACKOFF_MS, hub: `127.0.0.1:${aAgent}` });
  agents.push(ok);
  await waitFor(() => ok.channel.state === 'ready', 30_000, 'agent 1 on A again');

  // Administrators only: a user without the admin role is refused.
  const adminNew = await adminLogin(`127.0.0.1:${aAdmin}`, caPem);
  t.teardown(() => adminNew.close());
  await call(adminNew, adminNew.users, adminNew.users.CreateUser, { username: 'ivy', password: 'ivy-password-long-1', roles: [], tenants: ['default'] });
  const anon = adminClients(`127.0.0.1:${bAdmin}`, caPem);
  const ivyLogin = await call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username: 'ivy', password: 'ivy-password-long-1' });
  anon.close();
  const ivy = adminClients(`127.0.0.1:${bAdmin}`, caPem, ivyLogin.token);
  t.teardown(() => ivy.close());
  const denied = await status(ivy).then(() => undefined, (e: Error) => e);
  t.ok(denied, 'refused');
  t.equal((denied as { code?: string } | undefined)?.code, 'TRELLIS_E_PERMISSION_DENIED', 'PERMISSION_DENIED for a non-administrator');

  // A clean stop removes the hub's record.
  await stopHub(hubA, 'SIGTERM');
  hubA = undefined;
  await waitFor(async () => (await status(adminB)).hubs.filter((h) => !h.stale).length === 1, 20_000, 'A gone');
});
