/**
 * The agent side of event_to_action_p99_ms, in its own process: the real agent (agent/agent.ts,
 * with its durable outbox in a temp directory), publishing `core.bench_ping` events through
 * Agent.publishEvent at `rate`/s. The hub's rule runs the action `bench.ping` on this agent: the
 * agent's http runner makes one request to the sink (bench/e2a-sink.ts, a process of its own), so
 * the measured latency is event published on the agent → the action actually run (its request
 * arriving), end to end.
 *
 * This process runs as an agent with 1,000 events/s should: without `--lite-mode` (the unit
 * `trellis agent install` writes has it, for idle servers; the README says to remove it from a
 * busy agent's unit: lite mode cost 1.5–1.9× the agent CPU at this rate), with node's default
 * young generation. TRELLIS_BENCH_E2A_NODE_ARGS adds flags (e.g. "--lite-mode" to compare).
 *
 * Reads its credentials and the pace from stdin (JSON), prints one JSON object on stdout:
 * latencies (ms) of the measured events, how many measured events never ran their action
 * (`missing`) or ran it more than once (`duplicated`), what the outbox refused, and the CPU time
 * of this process (agent + event generator: all of the run, and `windowCpuMs` while the measured
 * events were published) and of the sink. Before it, a line `window` when the first measured event
 * is published and `window end` after the last (the parent reads the hub's CPU at both). Warm-up events carry n = -(index + 1)
 * and are not measured; the first `ramp` of them climb from a tenth of the rate to the rate.
 *
 * With `floor: true` the agent is bench/e2a-floor-agent.ts against bench/e2a-floor-hub.ts (the same
 * pipeline with nothing of Trellis: event_to_action_floor_p99_ms). With `trace: true` stderr gets
 * where slow events spent their time (published → request at the agent → sink), the slowest
 * events, per-250 maxima (warm-up included) and this process's event-loop delay.
 */
import { fork } from 'node:child_process';
import { monitorEventLoopDelay, PerformanceObserver, constants as perfConstants } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { Agent } from '../agent/agent.js';
import { FloorAgent } from './e2a-floor-agent.js';
import { percentile } from './lib.js';
import { silenceIpServernameWarning } from '../common/warnings.js';

silenceIpServernameWarning();

interface Input { target: string; caPem: string; keyPem: string; certPem: string; rate: number; warm: number; measured: number; ramp?: number; floor?: boolean; trace: boolean; waitMs?: number }

interface SinkMessage { port?: number; hits?: number; arrived?: number; lat?: number[]; warm?: number[]; duplicated?: number; cpuMs?: number }

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const now = () => performance.timeOrigin + performance.now();

async function main(): Promise<void> {
  let text = '';
  for await (const chunk of process.stdin) text += chunk;
  const o = JSON.parse(text) as Input;
  // The sink: a process of its own (its CPU is the called service's, not the agent's).
  const sink = fork(fileURLToPath(new URL('./e2a-sink.js', import.meta.url)), [String(o.measured)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const replies: Array<(m: SinkMessage) => void> = [];
  sink.on('message', (m: SinkMessage) => replies.shift()?.(m));
  const ask = (m: object) => new Promise<SinkMessage>((resolve, reject) => {
    replies.push(resolve);
    sink.send(m, (err) => { if (err) reject(err); });
  });
  const sinkExit = new Promise<void>((resolve) => sink.once('exit', () => resolve()));
  sink.on('exit', (code) => { // a question it can no longer answer would wait for ever
    if (replies.length === 0) return;
    process.stderr.write(`e2a agent: the sink exited with ${code} during the run\n`);
    process.exit(1);
  });
  const port = await new Promise<number>((resolve, reject) => {
    replies.push((m) => resolve(m.port!));
    sink.once('exit', (code) => reject(new Error(`the sink exited with ${code} before listening`)));
  });

  const dataDir = await mkdtemp(join(tmpdir(), 'trellis-e2a-'));
  let agent: Agent | undefined;
  let floor: FloorAgent | undefined;
  try {
    const files = { certFile: join(dataDir, 'cert.pem'), keyFile: join(dataDir, 'key.pem'), caFile: join(dataDir, 'ca.pem') };
    await writeFile(files.certFile, o.certPem, { mode: 0o600 });
    await writeFile(files.keyFile, o.keyPem, { mode: 0o600 });
    await writeFile(files.caFile, o.caPem, { mode: 0o600 });
    let publisher: { publishEvent(type: string, payload: Record<string, unknown>): { refused: number } };
    if (o.floor) { // the floor: the pipeline without Trellis (bench/e2a-floor-hub.ts)
      floor = new FloorAgent({ dataDir, target: o.target, caPem: o.caPem, keyPem: o.keyPem, certPem: o.certPem });
      await Promise.race([floor.welcomed, sleep(15_000).then(() => { throw new Error('the floor hub did not answer within 15 s'); })]);
      publisher = floor;
    } else {
      agent = await Agent.start({ dataDir, ...files, hub: o.target, log: pino({ level: 'silent' }), maxBackoffMs: 1000 });
      const ready = Date.now() + 15_000;
      while (agent.channel.state !== 'ready' || !agent.agentId) {
        if (Date.now() > ready) throw new Error('the agent was not welcomed by the hub within 15 s');
        await sleep(10);
      }
      publisher = agent;
    }
    // Trace: when each measured request reached the agent (ms after its event was published; NaN:
    // not yet). A typed array, not a Map: tens of thousands of entries in a Map grew this process's
    // old generation into a full GC every ~2 s, a tail of the trace's own making.
    const reachedMs = new Float64Array(o.measured).fill(NaN);
    const reached = { get: (n: number) => (Number.isNaN(reachedMs[n]!) ? undefined : reachedMs[n]) };
    if (o.trace && agent) {
      const a = agent as unknown as { onAction: (req: { http?: { url?: string } | null }) => void };
      const orig = a.onAction.bind(agent);
      a.onAction = (req) => {
        const m = /\/(\d+)\/([\d.]+)$/.exec(req.http?.url ?? '');
        const n = m ? Number(m[1]) : -1;
        if (n >= 0 && n < reachedMs.length) reachedMs[n] = now() - Number(m![2]);
        orig(req);
      };
    }
    let refused = 0;
    sink.send({ start: true });
    const cpu0 = process.cpuUsage();
    const eld = o.trace ? monitorEventLoopDelay({ resolution: 1 }) : undefined; // the trace: this process's event-loop delay
    eld?.enable();
    // The trace: this process's garbage collections by kind (count, longest, total) and the slowest ones with when they ended.
    const gcs = new Map<string, { n: number; max: number; sum: number }>(), slowGc: string[] = [], gcT0 = performance.now();
    const gcObs = o.trace ? new PerformanceObserver((list) => {
      for (const e of list.getEntries()) {
        const kind = (e as unknown as { detail?: { kind?: number } }).detail?.kind === perfConstants.NODE_PERFORMANCE_GC_MINOR ? 'minor' : 'major/incremental';
        const g = gcs.get(kind) ?? { n: 0, max: 0, sum: 0 };
        g.n++; g.sum += e.duration; g.max = Math.max(g.max, e.duration);
        gcs.set(kind, g);
        if (e.duration >= 5) slowGc.push(`${kind} ${e.duration.toFixed(1)} ms at ${((e.startTime + e.duration - gcT0) / 1000).toFixed(2)} s`);
      }
    }) : undefined;
    gcObs?.observe({ entryTypes: ['gc'] });
    const total = o.warm + o.measured;
    const t0 = performance.now();
    let windowCpu0: NodeJS.CpuUsage | undefined;
    // Pace: the first `ramp` warm-up events climb from a tenth of the rate to the rate (JIT and
    // caches warm without a cold-start backlog), then every event is at the rate.
    const ramp = Math.min(o.ramp ?? 0, o.warm);
    let at = 0; // ms after t0 of event i
    for (let i = 0; i < total; i++) {
      const r = i < ramp ? o.rate * (0.1 + (0.9 * i) / ramp) : o.rate;
      if (i > 0) at += 1000 / r;
      const wait = t0 + at - performance.now();
      if (wait > 1) await sleep(wait);
      else if (i % 50 === 0) await new Promise((r) => setImmediate(r)); // behind schedule: still let actions in
      const n = i < o.warm ? -(i + 1) : i - o.warm; // warm-up: negative (its index, for the trace)
      if (n === 0) { process.stdout.write('window\n'); windowCpu0 = process.cpuUsage(); } // the measured window starts: the parent reads the hub's threads
      refused += publisher.publishEvent('core.bench_ping', { kind: 'ping', n: String(n), t: now().toFixed(3), port: String(port) }).refused;
    }
    const windowCpu = process.cpuUsage(windowCpu0);
    process.stdout.write('window end\n');
    // Slow is not missing: wait while actions keep arriving (a busy machine drains a backlog),
    // until none came for `waitMs` (10 s) or 120 s passed; what never ran by then is missing.
    const quietMs = o.waitMs ?? 10_000;
    const hardStop = Date.now() + 120_000;
    let { hits, arrived } = await ask({ progress: true });
    let lastHits = hits, lastProgress = Date.now();
    while (arrived! < o.measured && Date.now() - lastProgress < quietMs && Date.now() < hardStop) {
      await sleep(20);
      ({ hits, arrived } = await ask({ progress: true }));
      if (hits !== lastHits) { lastHits = hits; lastProgress = Date.now(); }
    }
    // Late duplicates: a moment more for an action that would run twice.
    await sleep(300);
    const cpu = process.cpuUsage(cpu0);
    const r = await ask({ report: true });
    const got = r.lat!.filter((v) => v >= 0);
    if (o.trace) {
      const warm = r.warm!;
      // A warm-up action that never arrived is a hole in `warm`: left out of its maximum.
      for (let i = 0; i < warm.length; i += 250) process.stderr.write(`[e2a] warm-up ${i}..: max ${Math.max(...warm.slice(i, i + 250).filter((v) => typeof v === 'number')).toFixed(1)} ms\n`);
      const q = (v: number[], p: number) => percentile(v, p).toFixed(2);
      const toAgent: number[] = [], toSink: number[] = [];
      r.lat!.forEach((v, n) => { const g = reached.get(n); if (v >= 0 && g !== undefined) { toAgent.push(g); toSink.push(v - g); } });
      eld!.disable();
      gcObs!.disconnect();
      process.stderr.write(`[e2a] agent process GC: ${[...gcs].map(([k, g]) => `${k} ${g.n} × (longest ${g.max.toFixed(1)} ms, ${g.sum.toFixed(0)} ms in all)`).join(', ') || 'none'}; 5 ms or longer (s after the start): ${slowGc.slice(0, 30).join(', ') || 'none'}\n`);
      process.stderr.write(`[e2a] agent process event-loop delay (1 ms resolution): p50 ${(eld!.percentile(50) / 1e6).toFixed(1)} p99 ${(eld!.percentile(99) / 1e6).toFixed(1)} max ${(eld!.max / 1e6).toFixed(1)} ms\n`);
      if (toAgent.length) process.stderr.write(`[e2a] published → request at the agent: p50 ${q(toAgent, 50)} p90 ${q(toAgent, 90)} p99 ${q(toAgent, 99)} ms; request at the agent → sink: p50 ${q(toSink, 50)} p90 ${q(toSink, 90)} p99 ${q(toSink, 99)} ms\n`);
      const slow = r.lat!.map((v, n) => [n, v] as const).filter(([, v]) => v >= 0).sort((a, b) => b[1] - a[1]).slice(0, 12);
      process.stderr.write(`[e2a] slowest: ${slow.map(([n, v]) => { const g = reached.get(n); return `#${n} ${v.toFixed(1)}${g === undefined ? '' : `=${g.toFixed(1)}+${(v - g).toFixed(1)}`}`; }).join(' ')}\n`);
      for (let i = 0; i < got.length; i += 250) process.stderr.write(`[e2a] ${i}..: max ${Math.max(...got.slice(i, i + 250)).toFixed(1)} ms\n`);
    }
    process.stdout.write(JSON.stringify({
      lat: got, expected: o.measured, missing: o.measured - got.length, duplicated: r.duplicated, refused, hits: r.hits, outbox: agent?.outbox.stats,
      cpuMs: (cpu.user + cpu.system) / 1000, sinkCpuMs: r.cpuMs, windowCpuMs: (windowCpu.user + windowCpu.system) / 1000,
    }));
  } finally {
    await agent?.close().catch(() => undefined);
    floor?.close();
    if (sink.connected) sink.disconnect();
    await sinkExit;
    await rm(dataDir, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (err) => { process.stderr.write(`e2a agent: ${(err as Error).stack ?? err}\n`); process.exit(1); });
