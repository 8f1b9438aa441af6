/**
 * kill -9 of the hub running an execution (issue 14 §2): two `trellis hub run` processes on one
 * throwaway PostgreSQL, a real agent on hub A. A run requested through hub B runs on the agent on
 * A; A is killed with -9 while the command runs; the agent moves to B, B takes the execution
 * over, the agent's result reaches B, and the run's streaming answer on B ends `succeeded`: the
 * command ran exactly once and nothing accepted was lost. A run through B afterwards runs on the
 * agent, now on B.
 */
import t from 'tap';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { ADMIN_PASSWORD, fileAgentLogger, tempDir, waitFor } from './helpers/hub.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import { initHub } from '../hub/init.js';
import { enroll } from '../agent/enroll.js';
import { Agent } from '../agent/agent.js';
import { freePorts } from '../bench/lib.js';
import { runHub, stopHub, type HubProc } from './helpers/hub-process.js';
import { readLines } from './helpers/admin.js';
import { needs } from './helpers/needs.js';
import { copyHubForJoin, postgresMissing, startPostgres } from './helpers/postgres.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const MAX_BACKOFF_MS = 2_000;

async function adminLogin(addr: string, caPem: string): Promise<AdminClients> {
  const anon = adminClients(addr, caPem);
  try {
    const r = await call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username: 'admin', password: ADMIN_PASSWORD });
    return adminClients(addr, caPem, r.token, '*');
  } finally { anon.close(); }
}

interface Ran { started?: T.RunStarted__Output; finished?: T.RunFinished__Output; out: string; error?: Error }

function run(c: AdminClients, agentId: string, argv: string[], onStarted?: (s: T.RunStarted__Output) => void): Promise<Ran> {
  const s = c.runs.Run({ agentId, argv, timeoutMs: 60_000, env: {}, cwd: '', selector: {} }, c.metadata) as grpc.ClientReadableStream<T.RunUpdate__Output>;
  const r: Ran = { out: '' };
  return new Promise((resolve) => {
    s.on('data', (u: T.RunUpdate__Output) => {
      if (u.started) { r.started = u.started; onStarted?.(u.started); }
      if (u.output) r.out += Buffer.from(u.output.data).toString();
      if (u.finished) r.finished = u.finished;
    });
    s.on('error', (e: Error) => { r.error = e; resolve(r); });
    s.on('end', () => resolve(r));
  });
}

const getExecution = (c: AdminClients, id: string) => call<T.GetExecutionRequest, T.ExecutionInfo__Output>(c, c.executions, c.executions.GetExecution, { id });

void t.test('kill -9 of the hub running an execution: the agent moves, the other hub takes it over, it ran once and its result is kept', needs(t, postgresMissing()), async (t) => {
  const pg = await startPostgres();
  t.teardown(() => pg.close());
  const url = await pg.createDatabase('failover');
  await using dir = await tempDir('trellis-clexec-');
  const [aAgent, aAdmin, aWeb, bAgent, bAdmin, bWeb] = await freePorts(6);
  const A = join(dir.path, 'hub-a'), B = join(dir.path, 'hub-b');
  await initHub({
    dataDir: A, names: ['localhost', '127.0.0.1'], adminPassword: ADMIN_PASSWORD, storeUrl: url,
    config: { bind: '127.0.0.1', cluster: { addresses: [`127.0.0.1:${aAgent}`, `127.0.0.1:${bAgent}`], heartbeatInterval: '1s', staleAfter: '4s' } },
  });
  mkdirSync(B, { mode: 0o700 });
  // What `hub init --join` brings: the key files (keys/ too: the master key) and settings.
  copyHubForJoin(A, B);
  const caPem = readFileSync(join(A, 'ca.pem'), 'utf8');
  // Each hub is stopped by a teardown registered as soon as it runs: a failed start of B must not leave A running.
  let hubA: HubProc | undefined = await runHub(A, [aAgent!, aAdmin!, aWeb!]);
  t.teardown(() => stopHub(hubA, 'SIGKILL'));
  const hubB: HubProc = await runHub(B, [bAgent!, bAdmin!, bWeb!]);
  t.teardown(() => stopHub(hubB, 'SIGKILL'));
  const adminA = await adminLogin(`127.0.0.1:${aAdmin}`, caPem);
  const adminB = await adminLogin(`127.0.0.1:${bAdmin}`, caPem);
  t.teardown(() => { adminA.close(); adminB.close(); });

  const tok = await call<T.CreateJoinTokenRequest, T.CreateJoinTokenResponse__Output>(adminA, adminA.tokens, adminA.tokens.CreateJoinToken, { tenant: 'default', uses: 1 });
  const agentDir = join(dir.path, 'agent');
  const { agentId } = await enroll({ hub: `127.0.0.1:${aAdmin}`, token: tok.token, dataDir: agentDir });
  const agent = await Agent.start({ dataDir: agentDir, log: fileAgentLogger(agentDir).log, maxBackoffMs: MAX_BACKOFF_MS });
  t.teardown(() => agent.close());
  await waitFor(() => agent.channel.state === 'ready' && agent.target === `127.0.0.1:${aAgent}`, 30_000, 'agent on A');
  await waitFor(async () => (await call<T.GetAgentRequest, T.AgentInfo__Output>(adminB, adminB.agents, adminB.agents.GetAgent, { id: agentId })).status === 'online', 15_000, 'B sees the agent online');

  // A run through B, on the agent on A, still running when A dies.
  const marks = join(dir.path, 'marks');
  let started!: (id: string) => void;
  const idP = new Promise<string>((resolve) => { started = resolve; });
  const ranP = run(adminB, agentId, ['sh', '-c', 'echo begun; sleep 4; echo ran >> "$0"; echo finished', marks], (s) => started(s.executionId));
  const id = await idP;
  await waitFor(async () => (await getExecution(adminB, id)).status === 'running', 20_000, 'running on the agent on A');
  await stopHub(hubA, 'SIGKILL');
  hubA = undefined;
  await waitFor(() => agent.channel.state === 'ready' && agent.target === `127.0.0.1:${bAgent}`, MAX_BACKOFF_MS * 2 + 20_000, 'agent on B');

  const ran = await ranP;
  t.error(ran.error);
  t.equal(ran.finished?.status, 'succeeded', `the run's answer on B ends succeeded (${ran.finished?.error ?? ''})`);
  const rec = await getExecution(adminB, id);
  t.equal(rec.status, 'succeeded', 'B recorded the result the agent reported after moving');
  t.equal(rec.exitCode, 0);
  await new Promise((r) => setTimeout(r, 1_000));
  t.same(readLines(marks), ['ran'], 'the command ran exactly once');

  // A run through B now reaches the agent on B.
  const again = await run(adminB, agentId, ['sh', '-c', 'echo again >> "$0"; echo second-run', marks]);
  t.equal(again.finished?.status, 'succeeded');
  t.match(again.out, /second-run/);
  t.same(readLines(marks), ['ran', 'again'], 'each run once');

  // A comes back: the execution stays B's (A's new incarnation owns nothing) and reads the same there.
  hubA = await runHub(A, [aAgent!, aAdmin!, aWeb!]);
  const adminA2 = await adminLogin(`127.0.0.1:${aAdmin}`, caPem);
  t.teardown(() => adminA2.close());
  t.equal((await getExecution(adminA2, id)).status, 'succeeded', 'A, restarted, reads the execution from the shared history');
});
