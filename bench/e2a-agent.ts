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
 * of this process (agent + event generator) and of the sink. Warm-up events carry n = -1 and are
 * not measured.
 */
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { Agent } from '../agent/agent.js';
import { silenceIpServernameWarning } from '../common/warnings.js';

silenceIpServernameWarning();

interface Input { target: string; caPem: string; keyPem: string; certPem: string; rate: number; warm: number; measured: number; trace: boolean; waitMs?: number }

interface SinkMessage { port?: number; hits?: number; arrived?: number; lat?: number[]; duplicated?: number; cpuMs?: number }

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
  try {
    const files = { certFile: join(dataDir, 'cert.pem'), keyFile: join(dataDir, 'key.pem'), caFile: join(dataDir, 'ca.pem') };
    await writeFile(files.certFile, o.certPem, { mode: 0o600 });
    await writeFile(files.keyFile, o.keyPem, { mode: 0o600 });
    await writeFile(files.caFile, o.caPem, { mode: 0o600 });
    agent = await Agent.start({ dataDir, ...files, hub: o.target, log: pino({ level: 'silent' }), maxBackoffMs: 1000 });
    const ready = Date.now() + 15_000;
    while (agent.channel.state !== 'ready' || !agent.agentId) {
      if (Date.now() > ready) throw new Error('the agent was not welcomed by the hub within 15 s');
      await sleep(10);
    }
    let refused = 0;
    sink.send({ start: true });
    const cpu0 = process.cpuUsage();
    const total = o.warm + o.measured;
    const t0 = performance.now();
    for (let i = 0; i < total; i++) {
      const wait = t0 + (i * 1000) / o.rate - performance.now();
      if (wait > 1) await sleep(wait);
      else if (i % 50 === 0) await new Promise((r) => setImmediate(r)); // behind schedule: still let actions in
      const n = i < o.warm ? -1 : i - o.warm;
      refused += agent.publishEvent('core.bench_ping', { kind: 'ping', n: String(n), t: now().toFixed(3), port: String(port) }).refused;
    }
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
    if (o.trace) for (let i = 0; i < got.length; i += 250) process.stderr.write(`[e2a] ${i}..: max ${Math.max(...got.slice(i, i + 250)).toFixed(1)} ms\n`);
    process.stdout.write(JSON.stringify({
      lat: got, expected: o.measured, missing: o.measured - got.length, duplicated: r.duplicated, refused, hits: r.hits, outbox: agent.outbox.stats,
      cpuMs: (cpu.user + cpu.system) / 1000, sinkCpuMs: r.cpuMs,
    }));
  } finally {
    await agent?.close().catch(() => undefined);
    if (sink.connected) sink.disconnect();
    await sinkExit;
    await rm(dataDir, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (err) => { process.stderr.write(`e2a agent: ${(err as Error).stack ?? err}\n`); process.exit(1); });
