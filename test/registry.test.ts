import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startHub, waitFor } from './helpers/hub.js';
import { v1 } from '../common/proto.js';
import { CLIENT_OPTIONS } from '../common/grpc-options.js';
import { call } from '../cli/client.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

async function agentStatus(h: Awaited<ReturnType<typeof startHub>>, id: string): Promise<T.AgentInfo__Output> {
  return call<T.GetAgentRequest, T.AgentInfo__Output>(h.admin, h.admin.agents, h.admin.agents.GetAgent, { id });
}

t.test('an agent that stops sending is shown offline after the heartbeat TTL, and online again when it speaks', async (t) => {
  await using h = await startHub({ config: { heartbeatTtl: 1000, heartbeatInterval: 60_000 } });
  const { dataDir, agentId } = await h.enroll();
  // A raw stream with the agent's real certificate: hello, then silence (the hub asked for heartbeats every 60 s).
  const creds = grpc.credentials.createSsl(readFileSync(join(dataDir, 'ca.pem')), readFileSync(join(dataDir, 'agent-key.pem')), readFileSync(join(dataDir, 'agent.pem')));
  const client = new v1.AgentChannel(h.agentAddr, creds, CLIENT_OPTIONS);
  const stream = client.Connect();
  t.teardown(() => { stream.cancel(); client.close(); });
  stream.on('error', () => undefined);
  const welcome = new Promise<T.Welcome__Output>((resolve) => stream.on('data', (m: T.HubMessage__Output) => m.welcome && resolve(m.welcome)));
  stream.write({ hello: { facts: { hostname: 'raw-host', os: 'linux', arch: 'x64', osRelease: '1', cpus: 1, memoryBytes: 1, agentVersion: 'test' }, labels: {} } });
  const w = await welcome;
  t.equal(w.agentId, agentId, 'the hub names the agent from its certificate');
  t.equal((await agentStatus(h, agentId)).status, 'online');
  t.equal((await agentStatus(h, agentId)).facts?.hostname, 'raw-host', 'facts from hello are kept');
  await waitFor(async () => (await agentStatus(h, agentId)).status === 'offline', 5000, 'offline after the TTL');
  stream.write({ heartbeat: { sentAtMs: Date.now() } });
  await waitFor(async () => (await agentStatus(h, agentId)).status === 'online', 5000, 'online after a heartbeat');
  stream.end();
  await waitFor(async () => (await agentStatus(h, agentId)).status === 'offline', 5000, 'offline once the stream ends');
});

t.test('an agent listing filters by label selector and GetAgent of an unknown id is NOT_FOUND', async (t) => {
  await using h = await startHub();
  await h.enroll({ token: await h.token({ labels: { role: 'web' } }) });
  await h.enroll({ token: await h.token({ labels: { role: 'db' } }) });
  const web = await call<T.ListAgentsRequest, T.ListAgentsResponse__Output>(h.admin, h.admin.agents, h.admin.agents.ListAgents, { selector: { role: 'web' } });
  t.equal(web.agents.length, 1);
  t.equal(web.agents[0]!.labels.role, 'web');
  const err = await call(h.admin, h.admin.agents, h.admin.agents.GetAgent, { id: 'nope' }).catch((e: Error & { code: string; grpcCode: number }) => e);
  t.equal((err as { grpcCode: number }).grpcCode, grpc.status.NOT_FOUND);
  t.equal((err as { code: string }).code, 'TRELLIS_E_NOT_FOUND');
});

t.test('agent records, revocations and tokens survive a hub restart', async (t) => {
  await using h = await startHub();
  const a = await h.enroll();
  const b = await h.enroll();
  await call(h.admin, h.admin.agents, h.admin.agents.RevokeAgent, { id: b.agentId, reason: 'test' });
  await h.restart();
  t.equal((await agentStatus(h, a.agentId)).status, 'offline');
  t.equal((await agentStatus(h, b.agentId)).status, 'revoked');
  const crl = await call<T.GetCrlRequest, T.GetCrlResponse__Output>(h.admin, h.admin.certs, h.admin.certs.GetCrl, {});
  t.equal(crl.revoked, 1, 'the revocation is still in the CRL');
  const agent = await h.agent({ dataDir: a.dataDir });
  t.equal(agent.channel.state, 'ready', 'a known agent reconnects to the restarted hub');
  const revoked = await h.agent({ dataDir: b.dataDir });
  await waitFor(() => revoked.channel.state === 'closed', 5000, 'revoked agent refused after restart');
});
