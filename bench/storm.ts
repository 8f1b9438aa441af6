/**
 * `npm run bench:storm -- --agents N [--procs P] [--raw-only] [--no-raw] [--idle-s S] [--max-backoff-ms MS] [--max-handshakes K] [--client light|grpc]`
 *
 * Reconnect storms and what a connected agent costs the hub (issue 13 §2), against a real
 * `trellis hub run` child process and N simulated agents (distinct certificates, one mTLS
 * connection each, the real AgentChannel protocol and the real agent's reconnect policy) spread
 * over P client child processes (default: at most 2,500 agents each; one process cannot drive
 * 10,000 streams on one core). `--client light` (default): bench/storm-light.ts, node:tls +
 * node:http2, about half the client CPU per connect of `--client grpc` (bench/simagent.ts, the
 * real agent's grpc-js channel); the clients share the cores with the hub, so that is storm time.
 * The raw baseline uses the same client. Prints `name: value unit` lines:
 *
 *   raw_conn_kb_per_agent  RSS per connection of a plain grpc-js mTLS server (child process),
 *                          same clients, each holding one idle bidi stream (the floor)
 *   raw_connect_per_s      how fast the same clients connect to that server (the ceiling of
 *                          connect_per_s on this machine at this load)
 *   connect_per_s          N agents from the first connection to the last welcome
 *   hub_rss_mb             hub RSS with N agents connected and idle
 *   hub_rss_kb_per_agent   (that - the hub's RSS before any agent) / N
 *   hub_idle_cpu_pct       hub CPU (user+sys, % of one core) with N idle agents (heartbeats only)
 *   storm_settle_s         `kill -9` the hub, restart it on the same data dir and ports: from the
 *                          restart until all N agents are welcomed again
 *   storm_hub_cpu_us_per_agent  hub CPU (user+sys) from listening after the restart until settled, / N
 *   storm_client_cpu_us_per_agent  the client processes' CPU over the same window, / N
 *   connect_hub_cpu_us_per_agent, connect_client_cpu_us_per_agent  the same for the first connect
 *                          (the client's includes building each agent's TLS context once)
 * Progress goes to stderr. The machine's load is printed as a note: figures on a busy machine
 * are worse, compare ratios (hub_rss_kb_per_agent / raw_conn_kb_per_agent) across runs.
 */
import crypto from 'node:crypto';
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { initHub } from '../hub/init.js';
import { DEFAULT_MAX_BACKOFF_MS } from '../common/backoff.js';
import { issueSimIdentities } from './simagent.js';
import { freePorts, intFlag, note, processCpuMs, sleep } from './lib.js';
import { HUB_NODE_FLAGS } from '../common/service/unit.js';
import type { StormClientCommand, StormClientReport } from './storm-client.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const NAMES = ['localhost', '127.0.0.1'];
const TRUST_DOMAIN = 'trellis.local';

export interface StormOptions {
  agents: number;
  procs: number;
  rawOnly: boolean;
  noRaw: boolean;
  idleS: number;
  maxBackoffMs: number;
  concurrency: number;
  settleTimeoutS: number;
  /** Write a heap snapshot of the hub (N agents, idle) into this directory. */
  heapSnapshotDir?: string;
  /** Write a CPU profile of the hub (connect and idle phases; implies --no-storm) into this directory. */
  cpuProfDir?: string;
  /** Write a CPU profile of the hub restarted for the storm (written when the bench stops it) into this directory. */
  stormCpuProfDir?: string;
  /** Write CPU profiles of the client processes (written when they stop) into this directory. */
  clientCpuProfDir?: string;
  /** Skip the kill -9 / restart storm. */
  noStorm: boolean;
  /** The simulated agents: light (node:tls + node:http2, bench/storm-light.ts) or grpc (grpc-js, the real agent's channel). */
  client: 'light' | 'grpc';
  /** The hub's agentChannel.maxHandshakes (default: the hub's default). */
  maxHandshakes?: number;
}

function parseArgs(argv: string[]): StormOptions {
  const o: StormOptions = { agents: 1000, procs: 0, rawOnly: false, noRaw: false, idleS: 20, maxBackoffMs: DEFAULT_MAX_BACKOFF_MS, concurrency: 64, settleTimeoutS: 600, noStorm: false, client: 'light' };
  const num = intFlag;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    switch (a) {
      case '--agents': o.agents = num(a, argv[++i], 1); break;
      case '--procs': o.procs = num(a, argv[++i], 1); break;
      case '--raw-only': o.rawOnly = true; break;
      case '--no-raw': o.noRaw = true; break;
      case '--idle-s': o.idleS = num(a, argv[++i], 1); break;
      case '--max-backoff-ms': o.maxBackoffMs = num(a, argv[++i], 100); break;
      case '--concurrency': o.concurrency = num(a, argv[++i], 1); break;
      case '--settle-timeout-s': o.settleTimeoutS = num(a, argv[++i], 1); break;
      case '--no-storm': o.noStorm = true; break;
      case '--client': {
        const v = argv[++i];
        if (v !== 'light' && v !== 'grpc') throw new Error(`--client needs light or grpc (got ${v ?? 'nothing'})`);
        o.client = v;
        break;
      }
      case '--max-handshakes': o.maxHandshakes = num(a, argv[++i], 1); break;
      case '--hub-cpu-prof': o.cpuProfDir = argv[++i]; o.noStorm = true; if (!o.cpuProfDir) throw new Error('--hub-cpu-prof needs a directory'); break;
      case '--storm-cpu-prof': o.stormCpuProfDir = argv[++i]; if (!o.stormCpuProfDir) throw new Error('--storm-cpu-prof needs a directory'); break;
      case '--client-cpu-prof': o.clientCpuProfDir = argv[++i]; if (!o.clientCpuProfDir) throw new Error('--client-cpu-prof needs a directory'); break;
      case '--hub-heap-snapshot': o.heapSnapshotDir = argv[++i]; if (!o.heapSnapshotDir) throw new Error('--hub-heap-snapshot needs a directory'); break;
      case '-h': case '--help':
        process.stdout.write('usage: npm run bench:storm -- --agents N [--procs P] [--raw-only] [--no-raw] [--idle-s 20] [--max-backoff-ms 30000] [--concurrency 64] [--settle-timeout-s 600] [--no-storm] [--client light|grpc] [--max-handshakes K] [--hub-heap-snapshot DIR] [--hub-cpu-prof DIR] [--storm-cpu-prof DIR] [--client-cpu-prof DIR]\n');
        process.exit(0);
        break;
      default: throw new Error(`unknown argument ${a} (see --help)`);
    }
  }
  if (o.rawOnly && o.noRaw) throw new Error('--raw-only and --no-raw exclude each other');
  if (o.procs === 0) o.procs = Math.max(1, Math.ceil(o.agents / 2500));
  if (o.procs > o.agents) o.procs = o.agents;
  return o;
}

const figure = (name: string, value: number, unit: string, digits = 1) => process.stdout.write(`${name}: ${value.toFixed(digits)} ${unit}\n`);

/** Resident set of a process, in KiB (VmRSS). */
function rssKb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]);
}

interface Hub { proc: ChildProcess; pid: number; exited: Promise<void>; listeningMs: number; listeningCpuMs: number }

/** `trellis hub run` on the data dir's configured ports; resolves once it listens. */
async function startHub(dataDir: string, diag: { snapshotDir?: string; cpuProfDir?: string } = {}): Promise<Hub> {
  const t0 = performance.now();
  const snap = [
    ...(diag.snapshotDir ? ['--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${diag.snapshotDir}`] : []),
    ...(diag.cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${diag.cpuProfDir}`] : []),
  ];
  const proc = spawn(process.execPath, [...HUB_NODE_FLAGS, ...snap, 'bin/trellis.js', 'hub', 'run', '--data', dataDir], {
    cwd: ROOT, env: { ...process.env, TRELLIS_LOG_LEVEL: 'warn' }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  let text = '';
  let registered = 0;
  const up = new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      const s = chunk.toString('utf8');
      if (text.length < 20_000) text += s;
      // Simulated agents register on first contact (one warn line each): counted, not printed.
      for (const line of s.split('\n')) {
        if (!line.trim() || /trellis hub: agent port/.test(line)) continue;
        if (/no record: registered/.test(line)) { registered++; continue; }
        process.stderr.write(`[hub] ${line.slice(0, 400)}\n`);
      }
      if (/trellis hub: agent port \d+, admin port \d+/.test(text)) resolve();
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', onData);
    void exited.then(() => reject(new Error(`hub exited before listening: ${text.slice(-500)}`)));
  });
  await Promise.race([up, sleep(120_000).then(() => { throw new Error('hub did not listen within 120 s'); })]);
  // Its CPU time too: on a shared machine, wall time well above it is time the hub waited for a core.
  return { proc, pid: proc.pid!, exited, listeningMs: performance.now() - t0, listeningCpuMs: processCpuMs(proc.pid!) };
}

class Clients {
  readonly procs: ChildProcess[] = [];
  readonly reports: StormClientReport[] = [];
  constructor(n: number, cpuProfDir?: string) {
    const script = fileURLToPath(new URL('./storm-client.js', import.meta.url));
    for (let i = 0; i < n; i++) {
      const p = fork(script, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${cpuProfDir}`] : [] });
      this.reports.push({ ready: 0, welcomedSinceMark: 0, closed: 0, shed: 0, connects: 0, failures: 0 });
      p.on('message', (m: StormClientReport | { done: true }) => { if ('ready' in m) this.reports[i] = m; });
      this.procs.push(p);
    }
  }
  send(i: number, m: StormClientCommand): void { this.procs[i]!.send(m); }
  all(m: StormClientCommand): void { for (let i = 0; i < this.procs.length; i++) this.send(i, m); }
  sum(k: 'ready' | 'welcomedSinceMark' | 'closed' | 'shed' | 'connects' | 'failures'): number { return this.reports.reduce((n, r) => n + r[k], 0); }
  lastError(): string | undefined { return this.reports.find((r) => r.lastError)?.lastError; }
  cpuMs(): number[] { return this.procs.map((p) => { try { return processCpuMs(p.pid!); } catch { return 0; } }); }
  async wait(what: string, cond: () => boolean, timeoutS: number, progress?: () => string): Promise<void> {
    const end = Date.now() + timeoutS * 1000;
    let lastNote = Date.now();
    while (!cond()) {
      if (Date.now() > end) throw new Error(`${what}: not within ${timeoutS} s (${progress?.() ?? ''}; last client error: ${this.lastError() ?? '-'})`);
      if (progress && Date.now() - lastNote > 5_000) { note(`${what}: ${progress()}`); lastNote = Date.now(); }
      await sleep(100);
    }
  }
  async stop(): Promise<void> {
    this.all({ cmd: 'stop' });
    await Promise.race([Promise.all(this.procs.map((p) => new Promise((r) => p.once('exit', r)))), sleep(20_000)]);
    for (const p of this.procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  }
}

async function writeIdFiles(dir: string, ids: ReturnType<typeof issueSimIdentities>, procs: number): Promise<string[]> {
  const files: string[] = [];
  for (let i = 0; i < procs; i++) {
    const f = join(dir, `ids-${i}.json`);
    await writeFile(f, JSON.stringify(ids.filter((_, j) => j % procs === i)), { mode: 0o600 });
    files.push(f);
  }
  return files;
}

async function rawBaseline(o: StormOptions, hubDir: string, idFiles: string[]): Promise<number> {
  const [port] = await freePorts(1);
  const server = fork(fileURLToPath(new URL('./storm-raw-server.js', import.meta.url)), [hubDir, String(port)], {
    // The hub's own V8 flags (bin/trellis.js): a young generation sized like the hub's, or the comparison is off by its size.
    execArgv: [...HUB_NODE_FLAGS], stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('message', () => resolve());
      server.once('exit', (c) => reject(new Error(`raw server exited (${c})`)));
    });
    await sleep(2_000);
    const rss0 = rssKb(server.pid!);
    const clients = new Clients(o.procs);
    try {
      const t0 = performance.now();
      for (let i = 0; i < o.procs; i++) clients.send(i, { cmd: 'start', mode: 'raw', client: o.client, target: `127.0.0.1:${port}`, idsFile: idFiles[i]!, concurrency: o.concurrency, maxBackoffMs: o.maxBackoffMs });
      await clients.wait('raw connections', () => clients.sum('ready') + clients.sum('failures') >= o.agents, o.settleTimeoutS, () => `${clients.sum('ready')}/${o.agents} streams`);
      if (clients.sum('failures')) throw new Error(`raw baseline: ${clients.sum('failures')} connections failed (${clients.lastError()})`);
      const rawS = (performance.now() - t0) / 1000;
      note(`raw: ${o.agents} mTLS streams in ${rawS.toFixed(1)} s`);
      // What the clients and the machine allow at all (a server doing nothing but TLS + HTTP/2):
      // the ceiling connect_per_s is to be read against.
      figure('raw_connect_per_s', o.agents / rawS, 'agents/s');
      await sleep(5_000);
      const rss1 = rssKb(server.pid!);
      note(`raw: server RSS ${Math.round(rss0 / 1024)} MiB before, ${Math.round(rss1 / 1024)} MiB with ${o.agents} streams`);
      return (rss1 - rss0) / o.agents;
    } finally {
      await clients.stop();
    }
  } finally {
    server.kill('SIGKILL');
  }
}

export async function runStorm(o: StormOptions): Promise<void> {
  const tmp = await mkdtemp(join(tmpdir(), 'trellis-storm-'));
  let hub: Hub | undefined;
  let clients: Clients | undefined;
  try {
    note(`storm: ${o.agents} agents over ${o.procs} client processes; load average ${loadavg().map((x) => x.toFixed(1)).join(' ')} on ${(await import('node:os')).cpus().length} cores`);
    const hubDir = join(tmp, 'hub');
    const [agentPort, adminPort, webPort] = await freePorts(3);
    await initHub({ dataDir: hubDir, names: NAMES, trustDomain: TRUST_DOMAIN, adminPassword: crypto.randomBytes(18).toString('base64url'),
      // Every simulated agent connects from 127.0.0.1 (a fleet behind one NAT address): the per-address handshake bound is raised as for one.
      config: { bind: '127.0.0.1', agentPort, adminPort, webPort, agentChannel: { maxHandshakesPerAddress: 1_000_000, ...(o.maxHandshakes ? { maxHandshakes: o.maxHandshakes } : {}) } } });
    const ti = performance.now();
    const ids = issueSimIdentities({ hubDir, names: NAMES, trustDomain: TRUST_DOMAIN, n: o.agents });
    const idFiles = await writeIdFiles(tmp, ids, o.procs);
    note(`storm: ${o.agents} identities issued in ${((performance.now() - ti) / 1000).toFixed(1)} s (not counted)`);

    if (!o.noRaw) {
      const raw = await rawBaseline(o, hubDir, idFiles);
      figure('raw_conn_kb_per_agent', raw, 'KiB');
      if (o.rawOnly) return;
    }

    hub = await startHub(hubDir, { snapshotDir: o.heapSnapshotDir, cpuProfDir: o.cpuProfDir });
    await sleep(3_000);
    const rss0 = rssKb(hub.pid);
    note(`hub: listening after ${Math.round(hub.listeningMs)} ms (${Math.round(hub.listeningCpuMs)} ms of hub CPU), RSS ${Math.round(rss0 / 1024)} MiB with no agent`);
    clients = new Clients(o.procs, o.clientCpuProfDir);
    const target = `127.0.0.1:${agentPort}`;
    const c = clients;
    const cpuC0 = c.cpuMs();
    const hubCpu0 = processCpuMs(hub.pid);
    const t0 = performance.now();
    for (let i = 0; i < o.procs; i++) c.send(i, { cmd: 'start', mode: 'sim', client: o.client, target, idsFile: idFiles[i]!, concurrency: o.concurrency, maxBackoffMs: o.maxBackoffMs });
    await c.wait('connect', () => c.sum('ready') >= o.agents || c.sum('closed') > 0, o.settleTimeoutS, () => `${c.sum('ready')}/${o.agents} welcomed, ${c.sum('shed')} shed`);
    if (c.sum('closed')) throw new Error(`${c.sum('closed')} agents refused for good: ${c.lastError()}`);
    const connectS = (performance.now() - t0) / 1000;
    const clientCpu = c.cpuMs().map((x, i) => x - cpuC0[i]!);
    note(`connect: ${o.agents} agents welcomed in ${connectS.toFixed(1)} s (${c.sum('shed')} streams shed and retried); client processes used ${clientCpu.map((x) => ((x / 1000 / connectS) * 100).toFixed(0) + '%').join(', ')} of a core`);
    note(`connect: the hub used ${((processCpuMs(hub.pid) - hubCpu0) / o.agents).toFixed(1)} ms of CPU per agent admitted (TLS, identity, registry, welcome, config)`);
    figure('connect_per_s', o.agents / connectS, 'agents/s');
    figure('connect_hub_cpu_us_per_agent', ((processCpuMs(hub.pid) - hubCpu0) * 1000) / o.agents, 'us', 0);
    // The simulated agents share the cores with the hub: what one costs its client process.
    figure('connect_client_cpu_us_per_agent', (clientCpu.reduce((a, b) => a + b, 0) * 1000) / o.agents, 'us', 0);

    // Idle: let the connect burst's garbage go, then heartbeats only.
    await sleep(10_000);
    const cpu0 = processCpuMs(hub.pid);
    const w0 = performance.now();
    await sleep(o.idleS * 1000);
    const idlePct = ((processCpuMs(hub.pid) - cpu0) / (performance.now() - w0)) * 100;
    const rss1 = rssKb(hub.pid);
    if (c.sum('ready') < o.agents) note(`warning: only ${c.sum('ready')}/${o.agents} agents connected at the end of the idle window`);
    figure('hub_rss_mb', rss1 / 1024, 'MiB');
    figure('hub_rss_kb_per_agent', (rss1 - rss0) / o.agents, 'KiB');
    figure('hub_idle_cpu_pct', idlePct, '%');
    if (o.heapSnapshotDir) {
      hub.proc.kill('SIGUSR2');
      note(`hub heap snapshot requested (pid ${hub.pid}) into ${o.heapSnapshotDir}; waiting 60 s for it`);
      await sleep(60_000);
    }

    if (o.noStorm) return;
    // The storm: kill -9, restart on the same data dir and ports, until all are welcomed again.
    c.all({ cmd: 'mark' });
    await sleep(1_000);
    if (c.sum('welcomedSinceMark') !== 0) throw new Error('mark did not reach every client');
    const shed0 = c.sum('shed');
    const stormC0 = c.cpuMs();
    hub.proc.kill('SIGKILL');
    await hub.exited;
    const tr = performance.now();
    hub = await startHub(hubDir, { cpuProfDir: o.stormCpuProfDir });
    note(`storm: hub restarted, listening after ${Math.round(hub.listeningMs)} ms (${Math.round(hub.listeningCpuMs)} ms of hub CPU; load average ${loadavg().map((x) => x.toFixed(1)).join(' ')})`);
    const stormCpu0 = processCpuMs(hub.pid); // start-up (loading the store, opening ports) not counted
    await c.wait('storm', () => c.sum('welcomedSinceMark') >= o.agents || c.sum('closed') > 0, o.settleTimeoutS,
      () => `${c.sum('welcomedSinceMark')}/${o.agents} welcomed again after ${((performance.now() - tr) / 1000).toFixed(0)} s, ${c.sum('shed') - shed0} shed`);
    if (c.sum('closed')) throw new Error(`${c.sum('closed')} agents refused for good after the restart: ${c.lastError()}`);
    const settle = (performance.now() - tr) / 1000;
    note(`storm: all ${o.agents} welcomed again ${settle.toFixed(1)} s after the restart (${c.sum('shed') - shed0} streams shed and retried; hub RSS ${Math.round(rssKb(hub.pid) / 1024)} MiB)`);
    figure('storm_settle_s', settle, 's');
    // CPU time is less sensitive to the machine's load than wall time: what each re-admission cost.
    figure('storm_hub_cpu_us_per_agent', ((processCpuMs(hub.pid) - stormCpu0) * 1000) / o.agents, 'us', 0);
    figure('storm_client_cpu_us_per_agent', (c.cpuMs().reduce((a, x, i) => a + x - stormC0[i]!, 0) * 1000) / o.agents, 'us', 0);
  } finally {
    if (clients) await clients.stop();
    if (hub) { hub.proc.kill('SIGTERM'); await Promise.race([hub.exited, sleep(60_000)]); hub.proc.kill('SIGKILL'); }
    await rm(tmp, { recursive: true, force: true });
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  let opts: StormOptions;
  try { opts = parseArgs(process.argv.slice(2)); } catch (e) { process.stderr.write(`bench:storm: ${(e as Error).message}\n`); process.exit(2); }
  runStorm(opts).then(() => process.exit(0), (e: Error) => { process.stderr.write(`bench:storm failed: ${e.stack ?? e.message}\n`); process.exit(1); });
}
