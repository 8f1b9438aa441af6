/**
 * One `npm run soak` run (bench/soak/main.ts parses the options; see bench/soak/args.ts).
 *
 * Phases:
 *  1. A hub data directory (initHub) in a temp dir, `trellis hub run` as a child process on fixed
 *     loopback ports; a pack with action soak.run, hub rule soak-fire (core.soak → soak.run on the
 *     publishing agent, idempotency key soak-fire|<event id>|<agent>) and edge rule soak-edge
 *     (core.soak_edge, target local). hub_rss_mb with 0 agents.
 *  2. N identities issued from the hub's CA; P client processes (bench/soak/client.ts) connect
 *     them: connect_per_s. Then hub_idle_cpu_pct over --idle and hub_rss_mb / hub_rss_kb_per_agent.
 *  3. The workload for --duration: events from every agent through its outbox, the admin writer,
 *     and the fault schedule (seeded): K hub kill -9s (files checked for tears before each
 *     restart; storm_settle_s is restart → all N agents welcomed again) and K2 client kill -9s
 *     (their outboxes and logs checked, then restarted with the same identities and dirs).
 *  4. Drain: publishing stops; every outbox empties; every execution settles. Acknowledged admin
 *     writes are read back. The hub stops (SIGTERM); its history is read and the checks run.
 *  5. hub_start_ms: history filled to --history executions through the hub's own History code,
 *     then the hub is started once more with the N agents registered.
 *
 * stdout: only `name: value unit` lines (and the JSON object with --json); progress on stderr.
 */
import crypto from 'node:crypto';
import { fork, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { monotonicFactory } from 'ulid';
import { initHub } from '../../hub/init.js';
import { hubPaths } from '../../hub/paths.js';
import { History } from '../../hub/executions/history.js';
import { call } from '../../cli/client.js';
import { silenceIpServernameWarning } from '../../common/warnings.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';
import { issueSimIdentities, type SimIdentity } from '../simagent.js';
import { freePorts, processCpuMs, sleep } from '../lib.js';
import { prng, type SoakOptions } from './args.js';
import { SoakAdmin } from './admin.js';
import { checkClientLogs, checkHubFiles, checkOutbox, readFields, readHistory, type TornReport } from './files.js';
import { killHub, rssMb, startHub, type HubPorts, type SoakHub } from './hub.js';
import { SoakFuzz } from './fuzz.js';
import { SOAK_ACTION, SOAK_EDGE_RULE, SOAK_EDGE_TRIGGER, SOAK_RULE, SOAK_TRIGGER, type ClientConfig, type ClientStats, type FromClient } from './protocol.js';

silenceIpServernameWarning();

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const HERE = dirname(fileURLToPath(import.meta.url));
const NAMES = ['localhost', '127.0.0.1'];
const TRUST_DOMAIN = 'trellis.local';
const FINAL = new Set(['succeeded', 'failed', 'timeout', 'canceled', 'error', 'abandoned']);

const note = (msg: string) => process.stderr.write(`[soak] ${msg}\n`);
const figures: Record<string, number> = {};
function figure(name: string, value: number, unit: string, decimals = 0): void {
  figures[name] = Number(value.toFixed(decimals));
  process.stdout.write(`${name}: ${decimals === 0 ? String(Math.round(value)) : value.toFixed(decimals)} ${unit}\n`);
}

class Client {
  proc: ChildProcess | undefined;
  boot = -1;
  stats: ClientStats | undefined;
  exited: Promise<void> = Promise.resolve();
  /** Kill times (ms since the epoch): executions in flight on these agents then are not "lost". */
  readonly kills: number[] = [];
  error: string | undefined;
  /** When its channels started (performance.now()). */
  startedAt = 0;

  constructor(readonly index: number, readonly dir: string, readonly agents: SimIdentity[], private readonly base: Omit<ClientConfig, 'index' | 'boot' | 'dir' | 'identitiesFile'>) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    fs.writeFileSync(this.identitiesFile, JSON.stringify(agents), { mode: 0o600 });
  }

  get identitiesFile(): string { return join(this.dir, 'identities.json'); }
  get alive(): boolean { return !!this.proc && this.proc.exitCode === null && this.proc.signalCode === null; }

  /** Forks the process; resolves once its outboxes are open and its channels started. */
  start(): Promise<void> {
    this.boot++;
    this.stats = undefined;
    const cfg: ClientConfig = { ...this.base, index: this.index, boot: this.boot, dir: this.dir, identitiesFile: this.identitiesFile };
    const proc = fork(join(HERE, 'client.js'), [JSON.stringify(cfg)], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'], execArgv: ['--max-semi-space-size=16'] });
    this.proc = proc;
    proc.on('error', (err) => { if (this.alive) note(`client ${this.index}: ${err.message}`); }); // IPC to a process just killed
    this.exited = new Promise((r) => proc.once('exit', () => r()));
    return new Promise((resolve, reject) => {
      proc.on('message', (m: FromClient) => {
        if (m.t === 'stats') this.stats = m;
        else if (m.t === 'started') { this.startedAt = performance.now(); note(`client ${this.index} (boot ${this.boot}): ${m.agents} agents, outboxes open in ${Math.round(m.openMs)} ms`); resolve(); }
        else if (m.t === 'error') { this.error = m.message; reject(new Error(`client ${this.index}: ${m.message}`)); }
      });
      proc.once('exit', (code, sig) => reject(new Error(`client ${this.index} exited (${code ?? sig}) before it started`)));
    });
  }

  send(m: unknown): void {
    const p = this.proc;
    if (!p || !this.alive || !p.connected) return;
    try { p.send(m as object, (err) => { void err; /* killed meanwhile: nothing to tell it */ }); } catch { /* exiting */ }
  }

  async kill9(): Promise<void> {
    if (!this.alive) return;
    this.kills.push(Date.now());
    this.proc!.kill('SIGKILL');
    await this.exited;
  }

  async close(): Promise<void> {
    if (!this.alive) return;
    this.send({ t: 'close' });
    const t = setTimeout(() => this.proc?.kill('SIGKILL'), 30_000);
    await this.exited;
    clearTimeout(t);
  }
}

interface Run {
  o: SoakOptions;
  tmp: string;
  hubDir: string;
  ports: HubPorts;
  hub?: SoakHub;
  admin?: SoakAdmin;
  clients: Client[];
  torn: string[];
  tornFilesChecked: number;
  settles: number[];
  hubLog: string[];
  /** The protocol fuzzer (--fuzz-seconds), paused around each hub kill. */
  fuzz?: SoakFuzz;
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
const ready = (r: Run) => sum(r.clients.map((c) => (c.alive ? c.stats?.ready ?? 0 : 0)));

async function waitFor(what: string, pred: () => boolean, timeoutMs: number, every = 100): Promise<number> {
  const t0 = performance.now();
  while (!pred()) {
    if (performance.now() - t0 > timeoutMs) throw new Error(`${what}: not within ${Math.round(timeoutMs / 1000)} s`);
    await sleep(every);
  }
  return performance.now() - t0;
}

function addTorn(r: Run, rep: TornReport, when: string): void {
  r.tornFilesChecked += rep.files;
  for (const t of rep.torn) { r.torn.push(`${when}: ${t}`); note(`TORN ${when}: ${t}`); }
}

async function startTheHub(r: Run): Promise<SoakHub> {
  r.hub = await startHub(ROOT, r.hubDir, r.ports, (line) => { if (r.hubLog.length < 2000) r.hubLog.push(line); if (/"level":(50|60)|\berror\b/i.test(line)) note(`hub: ${line.slice(0, 400)}`); });
  return r.hub;
}

async function setup(r: Run, password: string): Promise<void> {
  await initHub({
    dataDir: r.hubDir, names: NAMES, trustDomain: TRUST_DOMAIN, adminPassword: password,
    // Short graces so that executions whose agent or result a kill took settle within the drain.
    // Every simulated agent connects from 127.0.0.1 (a fleet behind one NAT address): the per-address handshake bound is raised as for one.
    config: { bind: '127.0.0.1', executions: { reconnectGrace: '5s', abandonGrace: '5s' }, agentChannel: { maxHandshakesPerAddress: 1_000_000 } } as never,
  });
  await startTheHub(r);
  const caPem = fs.readFileSync(hubPaths(r.hubDir).caCert, 'utf8');
  r.admin = new SoakAdmin(`127.0.0.1:${r.ports.adminPort}`, caPem, password);
  await r.admin.waitUp(30_000);
  const files: T.PackFile[] = [
    { path: 'pack.yaml', content: Buffer.from('name: soak\nversion: 1.0.0\ndescription: soak runner pack\n'), mode: 0o644 },
    { path: 'actions/run.yaml', content: Buffer.from('name: run\ndescription: recorded by the simulated agent\nrunner: command\ncommand: ["true", "{{ t }}"]\ntimeout: 10s\nparameters:\n  t: { type: string, default: "" }\n'), mode: 0o644 },
  ];
  await r.admin.run((c) => call<T.InstallPackRequest, T.PackInfo__Output>(c, c.packs, c.packs.InstallPack, { files, force: true }));
  const rule = (def: object) => r.admin!.run((c) => call<T.CreateRuleRequest, T.RuleInfo__Output>(c, c.rules, c.rules.CreateRule, { definition: JSON.stringify(def), replace: true, source: 'soak' }));
  await rule({ name: SOAK_RULE, trigger: SOAK_TRIGGER, action: { ref: SOAK_ACTION, parameters: { t: '{{ trigger.id }}' } }, target: { agent: '{{ trigger.agent }}' } });
  await rule({ name: SOAK_EDGE_RULE, trigger: SOAK_EDGE_TRIGGER, action: { ref: SOAK_ACTION, parameters: { t: '{{ trigger.id }}' } }, target: 'local' });
}

/** Stats from every live client every `ms`. */
function pollStats(r: Run, ms = 250): () => void {
  const t = setInterval(() => { for (const c of r.clients) c.send({ t: 'stats' }); }, ms);
  return () => clearInterval(t);
}

async function measureIdle(r: Run): Promise<void> {
  const pid = r.hub!.pid;
  await sleep(3_000); // the connect burst's garbage and timers settle
  const cpu0 = processCpuMs(pid);
  const t0 = performance.now();
  await sleep(r.o.idleMs);
  const cpu = processCpuMs(pid) - cpu0;
  const pct = (100 * cpu) / (performance.now() - t0);
  figure('hub_idle_cpu_pct', pct, '%', 1);
  note(`idle: hub CPU ${Math.round(cpu)} ms over ${Math.round(performance.now() - t0)} ms with ${ready(r)} agents connected, nothing published`);
}

/** K hub kills and K2 client kills at seeded random moments of the workload, in time order. */
function schedule(o: SoakOptions, rand: () => number): Array<{ atMs: number; kind: 'hub' | 'client'; client: number }> {
  const span = (k: number) => Array.from({ length: k }, () => o.durationMs * (0.1 + 0.75 * rand()));
  const hub = span(o.kills).map((atMs) => ({ atMs, kind: 'hub' as const, client: -1 }));
  const cl = span(o.agentKills).map((atMs) => ({ atMs, kind: 'client' as const, client: Math.floor(rand() * o.procs) }));
  return [...hub, ...cl].sort((a, b) => a.atMs - b.atMs);
}

async function hubKill(r: Run, n: number): Promise<void> {
  const hub = r.hub!;
  await r.fuzz?.pause();
  note(`fault: kill -9 the hub (pid ${hub.pid}), #${n}`);
  await killHub(hub, 'SIGKILL');
  addTorn(r, checkHubFiles(r.hubDir), `after hub kill #${n}`);
  r.admin!.reset();
  const t0 = performance.now();
  const h = await startTheHub(r);
  note(`hub restarted in ${Math.round(h.startMs)} ms (pid ${h.pid})`);
  // Storm: restart → every agent of every live client welcomed again (ready counts refresh every 250 ms).
  for (const c of r.clients) c.stats = undefined;
  const expected = () => sum(r.clients.map((c) => (c.alive ? c.agents.length : 0)));
  await waitFor('storm: all agents welcomed after a hub restart', () => r.clients.every((c) => !c.alive || c.stats !== undefined) && ready(r) >= expected(), 600_000, 50);
  const s = (performance.now() - t0) / 1000;
  r.settles.push(s);
  note(`storm #${n}: ${expected()} agents welcomed ${s.toFixed(1)} s after the restart`);
  r.fuzz?.resume();
}

async function clientKill(r: Run, c: Client): Promise<void> {
  note(`fault: kill -9 client ${c.index} (pid ${c.proc?.pid}, ${c.agents.length} agents)`);
  await c.kill9();
  for (const a of c.agents) addTorn(r, checkOutbox(join(c.dir, 'agents', a.agentId, 'outbox')), `after client ${c.index} kill`);
  addTorn(r, checkClientLogs(c.dir), `after client ${c.index} kill`);
  await c.start();
  c.send({ t: 'publish', on: true });
  await waitFor(`client ${c.index}: agents welcomed after its restart`, () => (c.stats?.ready ?? 0) >= c.agents.length, 300_000, 50);
}

async function workload(r: Run): Promise<void> {
  const rand = prng(r.o.seed);
  const plan = schedule(r.o, rand);
  note(`workload: ${r.o.durationMs / 1000} s, ${r.o.eventsPerS} events/s, faults at ${plan.map((p) => `${(p.atMs / 1000).toFixed(1)}s ${p.kind === 'hub' ? 'hub' : `client ${p.client}`}`).join(', ') || 'none'}`);
  for (const c of r.clients) c.send({ t: 'publish', on: true });
  r.fuzz?.resume();
  let writing = true;
  const writer = (async () => { while (writing) { await r.admin!.writeOne(); await sleep(100); } })();
  const t0 = Date.now();
  let hubKills = 0;
  for (const p of plan) {
    const wait = t0 + p.atMs - Date.now();
    if (wait > 0) await sleep(wait);
    if (p.kind === 'hub') await hubKill(r, ++hubKills);
    else await clientKill(r, r.clients[p.client]!);
  }
  const rest = t0 + r.o.durationMs - Date.now();
  if (rest > 0) await sleep(rest);
  for (const c of r.clients) c.send({ t: 'publish', on: false });
  writing = false;
  await writer;
  await r.fuzz?.stop();
}

async function nonFinal(r: Run): Promise<number> {
  let n = 0;
  for (const status of ['requested', 'scheduled', 'running']) {
    const res = await r.admin!.run((c) => call<T.ListExecutionsRequest, T.ListExecutionsResponse__Output>(c, c.executions, c.executions.ListExecutions, { status, limit: 1000 } as T.ListExecutionsRequest, 10_000));
    n += res.executions.length;
  }
  return n;
}

async function drain(r: Run): Promise<void> {
  await sleep(500);
  const backlog = () => sum(r.clients.map((c) => (c.stats?.backlog ?? 1) + (c.stats?.edgeRunning ?? 0)));
  const ms = await waitFor('drain: every outbox empty', () => backlog() === 0 && ready(r) === r.o.agents, 180_000, 100);
  note(`drain: every outbox acknowledged ${Math.round(ms)} ms after the workload stopped`);
  const t0 = performance.now();
  let left = -1;
  while (performance.now() - t0 < 60_000) {
    try { left = await nonFinal(r); } catch { left = -1; }
    if (left === 0) break;
    await sleep(500);
  }
  note(`drain: ${left === 0 ? 'every execution settled' : `${left} executions not settled`} after ${Math.round(performance.now() - t0)} ms`);
}

interface Checks { eventsLost: number; eventsDup: number; execDup: number; execLost: number; resultsLost: number; abandoned: number; accepted: number; executions: number; examples: string[] }

/**
 * The end-of-run checks, against the hub's history on disk (read after a graceful stop) and the
 * clients' logs (bench/soak/protocol.ts):
 *  - soak_events_lost: an event its outbox accepted (accepted.log) with no execution of rule
 *    soak-fire for (agent, event id) in history; or an edge-execution report the outbox accepted
 *    whose execution id is not in history as an edge execution.
 *  - soak_events_duplicated: more than one soak-fire execution for one (agent, event id).
 *  - soak_executions_duplicated: one idempotency key (soak-fire|event|agent) run more than once
 *    by the agents (ran.log, fsynced before each result is sent, so a client kill hides nothing).
 *  - soak_executions_lost: an execution an agent ran that history does not know; or a soak-fire
 *    execution the hub accepted that is not final at the end, or ended without being tried (an
 *    `error`, e.g. "the hub restarted before it was sent"). `abandoned` is the hub's verdict when a
 *    kill took the request or its result in flight (not a loss of the request): counted apart in
 *    soak_executions_abandoned, and of those the ones that did run in soak_results_lost.
 */
function check(r: Run): Checks {
  const hist = readHistory(r.hubDir);
  const x: Checks = { eventsLost: 0, eventsDup: 0, execDup: 0, execLost: 0, resultsLost: 0, abandoned: 0, accepted: 0, executions: hist.size, examples: [] };
  const ex = (s: string) => { if (x.examples.length < 20) x.examples.push(s); };
  // The hub's view of rule matching: executions of soak-fire by (agent, trigger event id).
  const byEvent = new Map<string, string[]>();
  for (const rec of hist.values()) {
    if (rec.rule !== SOAK_RULE || rec.edge) continue;
    const k = `${rec.agentId} ${rec.triggerEventId}`;
    const l = byEvent.get(k);
    if (l) l.push(rec.id); else byEvent.set(k, [rec.id]);
  }
  const ranIds = new Set<string>();
  const byKey = new Map<string, number>();
  for (const c of r.clients) {
    for (const f of readFields(join(c.dir, 'accepted.log'))) {
      const [agent, id, kind, execId] = f;
      x.accepted++;
      if (kind === 'r') {
        const got = byEvent.get(`${agent} ${id}`)?.length ?? 0;
        if (got === 0) { x.eventsLost++; ex(`event ${id} of agent ${agent}: accepted by its outbox, no execution of ${SOAK_RULE}`); }
        if (got > 1) { x.eventsDup += got - 1; ex(`event ${id} of agent ${agent}: ${got} executions of ${SOAK_RULE}`); }
      } else if (kind === 'x') {
        const rec = hist.get(execId ?? '');
        if (!rec || !rec.edge) { x.eventsLost++; ex(`edge execution ${execId} of agent ${agent}: reported through the outbox, not in the hub's history`); }
      }
    }
    for (const [agent, execId, key] of readFields(join(c.dir, 'ran.log'))) {
      const n = (byKey.get(key!) ?? 0) + 1;
      byKey.set(key!, n);
      if (n > 1) { x.execDup++; ex(`idempotency key ${key} ran ${n} times (execution ${execId})`); }
      ranIds.add(execId!);
      if (!hist.has(execId!)) { x.execLost++; ex(`execution ${execId} ran on agent ${agent} but the hub's history does not know it`); }
    }
  }
  for (const rec of hist.values()) {
    if (rec.rule !== SOAK_RULE || rec.edge || rec.status === 'succeeded') continue;
    const ran = ranIds.has(rec.id);
    if (rec.status === 'abandoned') {
      // The hub's verdict when a kill (of the hub or of the agent's process) took the request or
      // its result in flight: honest, not a loss of the request. Counted apart.
      x.abandoned++;
      if (ran) x.resultsLost++;
      continue;
    }
    // Accepted by the hub and then dropped: never final, or ended without being tried.
    x.execLost++;
    ex(`execution ${rec.id} (agent ${rec.agentId}, event ${rec.triggerEventId}): ${rec.status}${ran ? ' (it ran)' : ', never ran'}${rec.error ? `: ${rec.error}` : ''}`);
  }
  return x;
}

/** Fills the history to `target` executions through the hub's own History code (the hub stopped). */
async function seedHistory(r: Run, target: number): Promise<number> {
  const dir = hubPaths(r.hubDir).executions;
  const { history, records } = await History.open({ dir, log: pino({ level: 'silent' }), maxSegmentBytes: 64 * 1024 * 1024, maxAgeMs: 30 * 86_400_000, maxCount: Math.max(target, 100_000), flushIntervalMs: 100, onDrop: () => undefined });
  const agents = r.clients.flatMap((c) => c.agents.map((a) => a.agentId));
  const have = records.size;
  const newId = monotonicFactory();
  const now = Date.now();
  for (let i = have; i < target; i++) {
    const t = now - (target - i) * 50;
    const agentId = agents[i % agents.length]!;
    const id = newId(t).toLowerCase();
    history.appendState({
      id, tenant: 'default', action: SOAK_ACTION, agentId, status: 'succeeded', exitCode: 0, error: '', requestedBy: `rule:${SOAK_RULE}`, rule: SOAK_RULE,
      triggerEventId: `seed-${i}`, parameters: { t: `seed-${i}` }, requestedMs: t, startedMs: t + 2, finishedMs: t + 9, edge: false, outputBytes: 0, outputTruncated: false,
    }, { dedupKey: `${SOAK_RULE}|seed-${i}|${agentId}`, timeoutMs: 10_000 });
    if (i % 5000 === 0) await history.flush();
  }
  await history.close();
  return Math.max(0, target - have);
}

/** One soak run (options parsed by bench/soak/main.ts): 0 all checks passed, 1 a check failed, 2 a harness error. */
export async function runSoak(o: SoakOptions): Promise<number> {
  note(`seed ${o.seed} (reproduce the fault schedule with --seed ${o.seed}); ${o.agents} agents over ${o.procs} client processes, ${o.kills} hub kills, ${o.agentKills} client kills`);
  const tmp = await mkdtemp(join(tmpdir(), 'trellis-soak-'));
  const [agentPort, adminPort, webPort] = await freePorts(3);
  const r: Run = { o, tmp, hubDir: join(tmp, 'hub'), ports: { agentPort: agentPort!, adminPort: adminPort!, webPort: webPort! }, clients: [], torn: [], tornFilesChecked: 0, settles: [], hubLog: [] };
  let stopPoll = () => undefined as void;
  let failed = false;
  const onSignal = () => { note('interrupted: stopping'); void cleanup(r, true).then(() => process.exit(2)); };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  // Whatever ends this process, no hub or client process outlives it.
  process.once('exit', () => { for (const c of r.clients) if (c.alive) c.proc!.kill('SIGKILL'); if (r.hub && r.hub.proc.exitCode === null) r.hub.proc.kill('SIGKILL'); });
  process.once('uncaughtException', (err) => { note(`harness error: ${err.stack ?? err}`); process.exit(2); });
  try {
    const password = crypto.randomBytes(18).toString('base64url');
    await setup(r, password);
    await sleep(1_000);
    const rss0 = rssMb(r.hub!.pid);
    note(`hub up (start ${Math.round(r.hub!.startMs)} ms), RSS ${rss0.toFixed(0)} MB with 0 agents`);

    // ---- connect N agents over P client processes
    const t0 = performance.now();
    const ids = issueSimIdentities({ hubDir: r.hubDir, names: NAMES, trustDomain: TRUST_DOMAIN, n: o.agents });
    note(`${o.agents} identities issued in ${Math.round(performance.now() - t0)} ms`);
    const ratePerAgent = o.eventsPerS / o.agents;
    for (let p = 0; p < o.procs; p++) {
      const mine = ids.filter((_, i) => i % o.procs === p);
      r.clients.push(new Client(p, join(tmp, 'clients', String(p)), mine, { target: `127.0.0.1:${r.ports.agentPort}`, ratePerAgent, edgeFraction: 0.1, maxBackoffMs: o.agentMaxBackoffMs, inject: o.inject }));
    }
    stopPoll = pollStats(r);
    const tc = performance.now();
    await Promise.all(r.clients.map((c) => c.start()));
    await waitFor(`connect: all ${o.agents} agents welcomed`, () => ready(r) >= o.agents, 600_000, 50);
    // From the first client's channels starting (its process and outboxes are ready) to the last welcome.
    const connectS = (performance.now() - Math.min(...r.clients.map((c) => c.startedAt))) / 1000;
    note(`connect: ${o.agents} agents welcomed in ${connectS.toFixed(1)} s after the first client started its channels (mTLS, hello, welcome); ${((performance.now() - tc) / 1000).toFixed(1)} s with the client processes' start`);
    figure('connect_per_s', o.agents / connectS, 'agents/s');

    // ---- idle footprint with N connected
    await measureIdle(r);
    const rss = rssMb(r.hub!.pid);
    figure('hub_rss_mb', rss, 'MB');
    figure('hub_rss_kb_per_agent', ((rss - rss0) * 1024) / o.agents, 'KB');

    // ---- the protocol fuzzer's principals (it runs during the workload)
    if (o.fuzzSeconds > 0) {
      const hubExit = () => { const p = r.hub?.proc; return !p || (p.exitCode === null && p.signalCode === null) ? undefined : p.signalCode ? `signal ${p.signalCode}` : `code ${p.exitCode}`; };
      r.fuzz = new SoakFuzz({ adminAddr: `127.0.0.1:${r.ports.adminPort}`, agentAddr: `127.0.0.1:${r.ports.agentPort}`, caPem: fs.readFileSync(hubPaths(r.hubDir).caCert, 'utf8'), dataDir: r.hubDir, password, exit: hubExit },
        { seconds: o.fuzzSeconds, seed: o.seed, outDir: tmp, inject: o.inject === 'fuzz-failure', note });
      await r.fuzz.prepare();
      note(`fuzz: ${o.fuzzSeconds} s of protocol fuzzing (seed ${o.seed}) during the workload; failing cases go to ${join(tmp, 'fuzz')}`);
    }

    // ---- workload and faults, then drain
    await workload(r);
    await drain(r);
    const writes = await r.admin!.verify();
    note(`admin: ${writes.checked} acknowledged writes read back (${r.admin!.failed} writes got no OK and are not checked)`);
    for (const l of writes.lost.slice(0, 10)) note(`LOST WRITE ${l}`);
    stopPoll();
    await Promise.all(r.clients.map((c) => c.close()));
    r.admin!.close();
    await killHub(r.hub!, 'SIGTERM');
    addTorn(r, checkHubFiles(r.hubDir), 'after the final stop');

    const x = check(r);
    note(`checked ${x.accepted} accepted events against ${x.executions} executions in history; ${x.abandoned} executions abandoned (a kill took the request or its result in flight), of which ${x.resultsLost} ran on their agent but the result never reached history`);
    for (const e of x.examples) note(`FAIL ${e}`);
    figure('soak_events_lost', x.eventsLost, 'events');
    figure('soak_events_duplicated', x.eventsDup, 'events');
    figure('soak_executions_duplicated', x.execDup, 'executions');
    figure('soak_executions_lost', x.execLost, 'executions');
    figure('soak_state_files_torn', r.torn.length, 'files');
    figure('soak_acked_writes_lost', writes.lost.length, 'writes');
    figure('soak_executions_abandoned', x.abandoned, 'executions');
    figure('soak_results_lost', x.resultsLost, 'results');
    if (r.settles.length > 0) {
      figure('storm_settle_s', Math.max(...r.settles), 's', 1);
      note(`storm settle per hub restart: ${r.settles.map((s) => s.toFixed(1)).join(', ')} s (storm_settle_s is the slowest)`);
    }
    note(`state files checked after kills: ${r.tornFilesChecked}`);
    let fuzzFailures = 0;
    if (r.fuzz) {
      const f = r.fuzz.totals;
      fuzzFailures = f.crashes + f.unexpected;
      note(`fuzz: ${f.cases} cases in ${f.seconds.toFixed(0)} s over ${f.rounds} rounds; statuses ${Object.entries(f.statuses).map(([k, v]) => `${k} ${v}`).join(', ')}`);
      for (const e of f.examples) note(`FAIL fuzz ${e}`);
      figure('soak_fuzz_cases', f.cases, 'cases');
      figure('soak_fuzz_failures', fuzzFailures, 'failures');
    }
    failed = x.eventsLost + x.eventsDup + x.execDup + x.execLost + r.torn.length + writes.lost.length + fuzzFailures > 0;

    // ---- hub start time with N agents registered and a full history
    if (o.historySeed > 0) {
      const ts = performance.now();
      const added = await seedHistory(r, o.historySeed);
      note(`history: ${added} executions appended through hub/executions/history.ts in ${Math.round(performance.now() - ts)} ms (now ${o.historySeed})`);
      const h = await startTheHub(r);
      figure('hub_start_ms', h.startMs, 'ms');
      await killHub(h, 'SIGTERM');
    }
    if (o.json) process.stdout.write(`${JSON.stringify({ seed: o.seed, agents: o.agents, procs: o.procs, kills: o.kills, agentKills: o.agentKills, ...figures })}\n`);
  } catch (err) {
    note(`harness error: ${(err as Error).stack ?? err}`);
    for (const l of r.hubLog.slice(-20)) note(`hub log: ${l.slice(0, 300)}`);
    stopPoll();
    await cleanup(r, true);
    return 2;
  }
  await cleanup(r, o.keep || failed);
  return failed ? 1 : 0;
}

async function cleanup(r: Run, keep: boolean): Promise<void> {
  for (const c of r.clients) if (c.alive) c.proc!.kill('SIGKILL');
  await Promise.all(r.clients.map((c) => c.exited));
  r.admin?.close();
  if (r.hub) await killHub(r.hub, 'SIGKILL');
  if (keep) note(`kept ${r.tmp}`);
  else await rm(r.tmp, { recursive: true, force: true });
}
