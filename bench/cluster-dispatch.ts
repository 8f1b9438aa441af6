/**
 * cluster_dispatch_p99_ms: a run requested on hub B until its ActionRequest arrives at an agent
 * connected to hub A (two hubs in this process on one throwaway PostgreSQL, test/helpers/
 * postgres.ts: fsync off). The path measured: B inserts the execution (no owner), announces it
 * on the cluster bus (NOTIFY), A claims it (conditional UPDATE), renders it again, writes it
 * `scheduled` and sends it down the agent's stream. The agent is a light simulated agent
 * (bench/simagent.ts) that answers each action with a result at once. Runs one after another,
 * after 10 unmeasured warm-up runs.
 */
import { mkdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { initHub } from '../hub/init.js';
import { Hub } from '../hub/hub.js';
import { copyHubForJoin, postgresMissing, startPostgres } from '../test/helpers/postgres.js';
import { issueSimIdentities, SimAgent } from './simagent.js';
import { percentile } from './lib.js';

const WARMUP = 10;

export async function benchClusterDispatch(o: { samples: number; names: string[]; trustDomain: string }): Promise<{ p99: number; p50: number; n: number }> {
  const missing = postgresMissing();
  if (missing) throw new Error(missing);
  const dir = await mkdtemp(join(tmpdir(), 'trellis-bench-cluster-'));
  const server = await startPostgres();
  const closers: Array<() => Promise<void>> = [];
  try {
    const url = await server.createDatabase('cluster');
    const A = join(dir, 'hub-a'), B = join(dir, 'hub-b');
    await initHub({ dataDir: A, names: o.names, adminPassword: 'bench-admin-password-1', storeUrl: url, config: { agentPort: 0, adminPort: 0, webPort: 0, bind: '127.0.0.1' } });
    mkdirSync(B, { mode: 0o700 });
    // What `hub init --join` brings: the key files (keys/ too: the master key) and settings.
    copyHubForJoin(A, B);
    const log = pino({ level: 'silent' });
    const hubA = await Hub.start({ dataDir: A, log });
    closers.push(() => hubA.close(1_000));
    const hubB = await Hub.start({ dataDir: B, log });
    closers.push(() => hubB.close(1_000));
    const [identity] = issueSimIdentities({ hubDir: A, names: o.names, trustDomain: o.trustDomain, n: 1 });
    const arrived = new Map<string, number>();
    const waiters = new Map<string, () => void>();
    const agent = new SimAgent({
      target: `127.0.0.1:${hubA.agentPort}`, identity: identity!,
      onAction: (a, ag) => {
        arrived.set(a.executionId, performance.now());
        waiters.get(a.executionId)?.();
        const now = Date.now();
        ag.channel.send({ result: { executionId: a.executionId, status: 'succeeded', exitCode: 0, error: '', startedMs: now, finishedMs: now } });
      },
    });
    agent.start();
    closers.push(() => agent.close());
    const agentId = identity!.agentId;
    const until = Date.now() + 30_000;
    while (!(hubA.components.agents.link(agentId) && hubB.components.agents.isOnline(agentId))) {
      if (Date.now() > until) throw new Error('the simulated agent did not attach to hub A (or hub B did not see it) within 30 s');
      await new Promise((r) => setTimeout(r, 20));
    }
    const ms: number[] = [];
    for (let i = 0; i < WARMUP + o.samples; i++) {
      const t0 = performance.now();
      const [rec] = await hubB.components.executions.runCommand({ tenant: 'default', agentIds: [agentId], argv: ['true'], env: {}, cwd: '', timeoutMs: 10_000, requestedBy: 'bench' });
      const id = rec!.id;
      if (!arrived.has(id)) {
        await new Promise<void>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`execution ${id} did not reach the agent on hub A within 10 s`)), 10_000);
          waiters.set(id, () => { clearTimeout(timer); resolve(); });
        });
      }
      waiters.delete(id);
      if (i >= WARMUP) ms.push(arrived.get(id)! - t0);
      arrived.delete(id);
    }
    return { p99: percentile(ms, 99), p50: percentile(ms, 50), n: ms.length };
  } finally {
    for (const c of closers.reverse()) await c().catch(() => undefined);
    await server.close().catch(() => undefined);
    await rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
}
