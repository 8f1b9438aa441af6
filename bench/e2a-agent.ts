/**
 * The agent side of event_to_action_p99_ms, in its own process: the real agent (agent/agent.ts,
 * with its durable outbox in a temp directory), publishing `core.bench_ping` events through
 * Agent.publishEvent at `rate`/s. The hub's rule runs the action `bench.ping` on this agent: the
 * agent's http runner makes one request to a sink in this process, so the measured latency is
 * event published on the agent → the action actually run (its request arriving), end to end.
 *
 * Reads its credentials and the pace from stdin (JSON), prints one JSON object on stdout:
 * latencies (ms) of the measured events, how many measured events never ran their action
 * (`missing`) or ran it more than once (`duplicated`), and what the outbox refused. Warm-up
 * events carry n = -1 and are not measured.
 */
import http from 'node:http';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { Agent } from '../agent/agent.js';
import { silenceIpServernameWarning } from '../common/warnings.js';

silenceIpServernameWarning();

interface Input { target: string; caPem: string; keyPem: string; certPem: string; rate: number; warm: number; measured: number; trace: boolean; waitMs?: number }

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const now = () => performance.timeOrigin + performance.now();

async function main(): Promise<void> {
  let text = '';
  for await (const chunk of process.stdin) text += chunk;
  const o = JSON.parse(text) as Input;
  const lat = new Array<number>(o.measured).fill(-1);
  let duplicated = 0;
  let hits = 0;
  let arrived = 0;
  // The sink: GET /<n>/<send time> is the action having run for measured event n.
  const sink = http.createServer((req, res) => {
    const at = now();
    const m = /^\/(-?\d+)\/([\d.]+)$/.exec(req.url ?? '');
    res.end();
    if (!m) return;
    hits++;
    const n = Number(m[1]);
    if (n < 0 || n >= o.measured) return;
    if (lat[n]! >= 0) { duplicated++; return; }
    lat[n] = at - Number(m[2]);
    arrived++;
  });
  // Node's default (5 s): the agent keeps connections until 1 s before the server's announced timeout.
  sink.keepAliveTimeout = 5000;
  await new Promise<void>((resolve) => sink.listen(0, '127.0.0.1', resolve));
  const port = (sink.address() as { port: number }).port;

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
    let lastHits = hits, lastProgress = Date.now();
    while (arrived < o.measured && Date.now() - lastProgress < quietMs && Date.now() < hardStop) {
      await sleep(20);
      if (hits !== lastHits) { lastHits = hits; lastProgress = Date.now(); }
    }
    // Late duplicates: a moment more for an action that would run twice.
    await sleep(300);
    const cpu = process.cpuUsage(cpu0);
    const got = lat.filter((v) => v >= 0);
    if (o.trace) for (let i = 0; i < got.length; i += 250) process.stderr.write(`[e2a] ${i}..: max ${Math.max(...got.slice(i, i + 250)).toFixed(1)} ms\n`);
    process.stdout.write(JSON.stringify({ lat: got, expected: o.measured, missing: o.measured - got.length, duplicated, refused, hits, outbox: agent.outbox.stats, cpuMs: (cpu.user + cpu.system) / 1000 }));
  } finally {
    await agent?.close().catch(() => undefined);
    sink.close();
    await rm(dataDir, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (err) => { process.stderr.write(`e2a agent: ${(err as Error).stack ?? err}\n`); process.exit(1); });
