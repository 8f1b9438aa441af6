/**
 * cluster_ingest_events_per_s: events acknowledged by two hubs (`trellis hub run` child
 * processes) on one throwaway PostgreSQL (test/helpers/postgres.ts: fsync off), from 10
 * simulated agents split over both hubs (5 each), with the rules of `ingest_events_per_s`
 * (bench/automation.ts): 1,000 rules, 10 of them triggered by the events' type (criteria
 * evaluated on every event, never matching). Hub B has A's keys and settings (what `hub init
 * --join` brings). One follower of `/stream` is connected to hub B, so hub A forwards its events
 * over the cluster bus (hub/cluster/events.ts) for the whole run: the figure includes that cost.
 * The same events without rules and without a follower are noted on stderr for reference.
 */

import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import crypto from 'node:crypto';
import { WebSocket } from 'ws';
import { initHub } from '../hub/init.js';
import { hubPaths } from '../hub/paths.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import { copyHubForJoin, postgresMissing, startPostgres } from '../test/helpers/postgres.js';
import { makeAgents, installBenchPack, pumpAll, waitAllReady, type AutomationCtx } from './automation.js';
import { note, pool, sleep, startChildHub, type ChildHub } from './lib.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

/** Why the figure cannot be measured here (PostgreSQL missing), or undefined. */
export function clusterBenchMissing(): string | undefined {
  return postgresMissing();
}

async function login(addr: string, caPem: string, password: string): Promise<AdminClients> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const anon = adminClients(addr, caPem);
    try {
      const r = await call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username: 'admin', password }, 5_000);
      return adminClients(addr, caPem, r.token);
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`cannot log in to ${addr}: ${(err as Error).message}`);
      await sleep(200);
    } finally { anon.close(); }
  }
}

/** A /stream follower of every event (tenant default) on `webPort`; resolves once open. */
function follow(webPort: number, caPem: string, token: string, query: string): Promise<{ count: () => number; close: () => void }> {
  return new Promise((resolve, reject) => {
    let n = 0;
    const ws = new WebSocket(`wss://127.0.0.1:${webPort}/stream${query}`, ['trellis.v1'], { ca: caPem, headers: { authorization: `Bearer ${token}` }, perMessageDeflate: false });
    ws.on('message', () => { n++; });
    ws.on('open', () => resolve({ count: () => n, close: () => ws.terminate() }));
    ws.on('error', reject);
  });
}

export interface ClusterIngest { perS: number; rawPerS: number; forwarded: number }

export async function benchClusterIngest(o: { root: string; names: string[]; trustDomain: string }): Promise<ClusterIngest> {
  const missing = postgresMissing();
  if (missing) throw new Error(missing);
  const dir = await mkdtemp(join(tmpdir(), 'trellis-bench-cluster-'));
  const server = await startPostgres();
  const hubs: ChildHub[] = [];
  const closers: Array<() => Promise<void> | void> = [];
  try {
    const url = await server.createDatabase('cluster');
    const password = crypto.randomBytes(18).toString('base64url');
    const A = join(dir, 'hub-a');
    const B = join(dir, 'hub-b');
    await initHub({ dataDir: A, names: o.names, trustDomain: o.trustDomain, adminPassword: password, storeUrl: url, config: { bind: '127.0.0.1', agentChannel: { maxHandshakesPerAddress: 1_000_000 } } }); // simulated agents all connect from 127.0.0.1
    copyHubForJoin(A, B);
    for (const d of [A, B]) hubs.push(await startChildHub(o.root, d, []));
    note(`cluster: hub A pid ${hubs[0]!.pid}, hub B pid ${hubs[1]!.pid} on one PostgreSQL`);
    const caPem = await readFile(hubPaths(A).caCert, 'utf8');
    const adminA = await login(`127.0.0.1:${hubs[0]!.adminPort}`, caPem, password);
    const adminB = await login(`127.0.0.1:${hubs[1]!.adminPort}`, caPem, password);
    closers.push(() => { adminA.close(); adminB.close(); });
    const ctx = (h: ChildHub, admin: AdminClients): AutomationCtx => ({
      admin, hubDir: A, hubPid: h.pid, agentAddr: `127.0.0.1:${h.agentPort}`, webAddr: `127.0.0.1:${h.webPort}`, caPem, trustDomain: o.trustDomain, names: o.names, closers: [],
    });
    const agents = [...makeAgents(ctx(hubs[0]!, adminA), 5), ...makeAgents(ctx(hubs[1]!, adminB), 5)];
    for (const a of agents) { a.ch.start(); closers.push(() => a.ch.close()); }
    const chs = agents.map((a) => a.ch);
    await waitAllReady(chs, 30_000);
    const SLICE = 15_000; // per agent, as ingest_events_per_s
    await pumpAll(chs, 5_000, 'core.bench_raw'); // warm-up
    const raw = await pumpAll(chs, SLICE, 'core.bench_raw');
    note(`cluster: raw (no rules, no follower): ${raw.events} events in ${Math.round(raw.ms)} ms = ${Math.round(raw.perS)} events/s`);

    await installBenchPack(adminA);
    // The rules of ingest_events_per_s (bench/automation.ts benchIngest), created through hub A.
    await pool(1000, 8, async (i) => {
      const onCpu = i < 10;
      const def = {
        name: `bench-rule-${i}`, trigger: onCpu ? 'core.bench_cpu' : `core.bench_other${i % 99}`,
        criteria: { 'trigger.payload.percent': { type: 'gt', pattern: 101 + i }, 'trigger.payload.host': { type: 'startswith', pattern: 'web-' } },
        action: { ref: 'bench.noop', parameters: { t: '{{ trigger.payload.host }}' } },
        target: { agent: '{{ trigger.agent }}' },
      };
      await call<T.CreateRuleRequest, T.RuleInfo__Output>(adminA, adminA.rules, adminA.rules.CreateRule, { definition: JSON.stringify(def), replace: true, source: 'bench' });
    });
    // Hub B has them too (propagated), before anything is measured.
    const deadline = Date.now() + 30_000;
    for (;;) {
      const r = await call<T.ListRulesRequest, T.ListRulesResponse__Output>(adminB, adminB.rules, adminB.rules.ListRules, { pack: '', trigger: 'core.bench_cpu' });
      if (r.rules.length === 10) break;
      if (Date.now() > deadline) throw new Error(`hub B knows ${r.rules.length}/10 rules of core.bench_cpu after 30 s`);
      await sleep(100);
    }
    // A follower on hub B: hub A forwards all its events over the bus throughout (hub B's filter
    // then keeps those of one agent of A, so the follower in this busy process keeps up).
    const token = (await call<T.LoginRequest, T.LoginResponse__Output>(adminB, adminB.auth, adminB.auth.Login, { username: 'admin', password })).token;
    const watcher = await follow(hubs[1]!.webPort, caPem, token, `?type=core.bench_cpu&agent=${agents[0]!.id}`);
    closers.push(() => watcher.close());
    await sleep(500); // the follower's announcement reaches hub A
    await pumpAll(chs, 5_000, 'core.bench_cpu'); // warm-up of the rules path
    const r = await pumpAll(chs, SLICE, 'core.bench_cpu');
    await sleep(500); // the last forwarded batches
    note(`cluster: with rules (10 evaluated per event) and a follower on B: ${r.events} events in ${Math.round(r.ms)} ms = ${Math.round(r.perS)} events/s; `
      + `the follower on B got ${watcher.count()} of the ${SLICE + 5_000} events of one agent on A`);
    return { perS: r.perS, rawPerS: raw.perS, forwarded: watcher.count() };
  } finally {
    for (const c of closers.reverse()) await Promise.resolve(c()).catch(() => undefined);
    for (const h of hubs) await h.stop().catch(() => undefined);
    await server.close().catch(() => undefined);
    await rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
}
