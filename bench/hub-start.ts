/**
 * `npm run bench:hub-start -- [--agents 10000] [--history 100000] [--runs 3] [--cpu-prof DIR] [--data DIR]`
 *
 * How long `trellis hub run` takes from process start to its ports being open (issue 13:
 * `hub_start_ms`, with N agents and 100,000 executions in history), and what it does meanwhile.
 * A data directory is made once (hub init; N agent records as agents that connected leave them,
 * with facts and a certificate serial; the history filled through the hub's own History code),
 * then the hub is started `--runs` times on it and killed with SIGKILL after each start (as a
 * crash would: the next start recovers from that). Prints `name: value unit` lines:
 *
 *   hub_start_ms          spawn → the "agent port N, admin port M" line (median of the runs)
 *   hub_start_cpu_ms      the hub's CPU (user+sys) over the same span (median)
 *
 * `--cpu-prof DIR`: a V8 CPU profile of each start (the hub is stopped with SIGINT after the
 * listening line so that the profile is written). `--data DIR`: prepare there (kept), or reuse
 * it if it holds a hub already.
 */
import crypto from 'node:crypto';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { monotonicFactory, ulid } from 'ulid';
import { initHub } from '../hub/init.js';
import { hubPaths } from '../hub/paths.js';
import { History } from '../hub/executions/history.js';
import { LowdbStore } from '../hub/store/index.js';
import type { AgentDoc } from '../hub/agents/index.js';
import { agentFacts } from '../agent/agent.js';
import { cleanFacts } from '../hub/agents/facts.js';
import { freePorts, intFlag, note, percentile, processCpuMs, sleep } from './lib.js';
import { HUB_NODE_FLAGS } from '../common/service/unit.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const TRUST_DOMAIN = 'trellis.local';

export interface HubStartOptions { agents: number; history: number; runs: number; cpuProfDir?: string; dataDir?: string }

function parseArgs(argv: string[]): HubStartOptions {
  const o: HubStartOptions = { agents: 10_000, history: 100_000, runs: 3 };
  const num = intFlag;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    switch (a) {
      case '--agents': o.agents = num(a, argv[++i], 0); break;
      case '--history': o.history = num(a, argv[++i], 0); break;
      case '--runs': o.runs = num(a, argv[++i], 1); break;
      case '--cpu-prof': o.cpuProfDir = argv[++i]; if (!o.cpuProfDir) throw new Error('--cpu-prof needs a directory'); break;
      case '--data': o.dataDir = argv[++i]; if (!o.dataDir) throw new Error('--data needs a directory'); break;
      case '-h': case '--help':
        process.stdout.write('usage: npm run bench:hub-start -- [--agents 10000] [--history 100000] [--runs 3] [--cpu-prof DIR] [--data DIR]\n');
        process.exit(0);
        break;
      default: throw new Error(`unknown argument ${a} (see --help)`);
    }
  }
  return o;
}

/** A hub data directory with `agents` agent records and `history` executions. */
export async function prepareHubDir(dir: string, o: { agents: number; history: number }): Promise<void> {
  const [agentPort, adminPort, webPort] = await freePorts(3);
  await initHub({ dataDir: dir, names: ['localhost', '127.0.0.1'], trustDomain: TRUST_DOMAIN, adminPassword: crypto.randomBytes(18).toString('base64url'),
    config: { bind: '127.0.0.1', agentPort, adminPort, webPort } });
  const paths = hubPaths(dir);
  const store = await LowdbStore.open({ path: paths.store });
  const facts = cleanFacts(agentFacts()).facts;
  const now = Date.now();
  const ids: string[] = [];
  // What a first connection leaves (hub/grpc/agent-channel.ts admitAgent, then the hello's facts).
  await Promise.all(Array.from({ length: o.agents }, () => {
    const id = ulid().toLowerCase();
    ids.push(id);
    const serial = crypto.randomBytes(16).toString('hex');
    const doc: AgentDoc = {
      id, tenant: 'default', hostname: facts.hostname ?? '', labels: {}, facts, enrolledAt: now, tokenId: 'unknown',
      spiffeId: `spiffe://${TRUST_DOMAIN}/tenant/default/agent/${id}`, certSerial: serial, certExpiresAt: now + 86_400_000,
      serials: [{ serial, notAfter: now + 86_400_000 }], revoked: false, lastSeen: now,
    };
    return store.insert('agents', doc);
  }));
  await store.close();
  if (o.history > 0) {
    const { history } = await History.open({ dir: paths.executions, log: pino({ level: 'silent' }), maxSegmentBytes: 64 * 1024 * 1024, maxAgeMs: 30 * 86_400_000, maxCount: Math.max(o.history, 100_000), flushIntervalMs: 100, onDrop: () => undefined });
    const newId = monotonicFactory();
    for (let i = 0; i < o.history; i++) {
      const t = now - (o.history - i) * 50;
      const agentId = ids.length ? ids[i % ids.length]! : 'none';
      history.appendState({
        id: newId(t).toLowerCase(), tenant: 'default', action: 'bench.run', agentId, status: 'succeeded', exitCode: 0, error: '', requestedBy: 'rule:bench', rule: 'bench',
        triggerEventId: `seed-${i}`, parameters: { t: `seed-${i}` }, requestedMs: t, startedMs: t + 2, finishedMs: t + 9, edge: false, outputBytes: 0, outputTruncated: false,
      }, { dedupKey: `bench|seed-${i}|${agentId}`, timeoutMs: 10_000 });
      if (i % 5000 === 0) await history.flush();
    }
    await history.close();
  }
}

export interface StartRun { startMs: number; cpuMs: number }

/** Starts `trellis hub run` on `dir` once: spawn → listening line, and the CPU it used; then stops it. */
export async function timeHubStart(dir: string, cpuProfDir?: string): Promise<StartRun> {
  const t0 = performance.now();
  const prof = cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${cpuProfDir}`] : [];
  const proc = spawn(process.execPath, [...HUB_NODE_FLAGS, ...prof, 'bin/trellis.js', 'hub', 'run', '--data', dir], {
    cwd: ROOT, env: { ...process.env, TRELLIS_LOG_LEVEL: 'warn' }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  let text = '';
  let startMs = -1;
  let cpuMs = -1;
  const up = new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      text += chunk.toString('utf8');
      if (startMs < 0 && /trellis hub: agent port \d+, admin port \d+/.test(text)) {
        startMs = performance.now() - t0;
        cpuMs = processCpuMs(proc.pid!);
        resolve();
      }
      if (text.length > 200_000) text = text.slice(-20_000);
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', onData);
    void exited.then(() => reject(new Error(`hub exited before listening: ${text.slice(-800)}`)));
  });
  await Promise.race([up, sleep(180_000).then(() => { throw new Error('hub did not listen within 180 s'); })]);
  proc.kill(cpuProfDir ? 'SIGINT' : 'SIGKILL');
  await Promise.race([exited, sleep(60_000)]);
  if (proc.exitCode === null && proc.signalCode === null) { proc.kill('SIGKILL'); await exited; }
  return { startMs, cpuMs };
}

const figure = (name: string, value: number, unit: string) => process.stdout.write(`${name}: ${Math.round(value)} ${unit}\n`);

export async function runHubStart(o: HubStartOptions): Promise<void> {
  const tmp = o.dataDir ? undefined : await mkdtemp(join(tmpdir(), 'trellis-hubstart-'));
  const dir = o.dataDir ?? join(tmp!, 'hub');
  try {
    if (!existsSync(join(dir, 'hub.json'))) {
      const t = performance.now();
      await prepareHubDir(dir, o);
      note(`hub-start: data dir with ${o.agents} agents and ${o.history} executions prepared in ${((performance.now() - t) / 1000).toFixed(1)} s (${dir})`);
    } else note(`hub-start: reusing ${dir}`);
    const runs: StartRun[] = [];
    for (let i = 0; i < o.runs; i++) {
      const r = await timeHubStart(dir, o.cpuProfDir);
      note(`hub-start: run ${i + 1}: ports open after ${Math.round(r.startMs)} ms (${Math.round(r.cpuMs)} ms CPU); load ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
      runs.push(r);
    }
    figure('hub_start_ms', percentile(runs.map((r) => r.startMs), 50), 'ms');
    figure('hub_start_cpu_ms', percentile(runs.map((r) => r.cpuMs), 50), 'ms');
  } finally {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  let opts: HubStartOptions;
  try { opts = parseArgs(process.argv.slice(2)); } catch (e) { process.stderr.write(`bench:hub-start: ${(e as Error).message}\n`); process.exit(2); }
  runHubStart(opts).then(() => process.exit(0), (e: Error) => { process.stderr.write(`bench:hub-start failed: ${e.stack ?? e.message}\n`); process.exit(1); });
}
