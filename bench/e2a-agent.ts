/**
 * The agent side of event_to_action_p99_ms, in its own process: reads its credentials and the
 * pace from stdin (JSON), publishes `core.bench_ping` events at `rate`/s whose payload carries the
 * send time, answers each ActionRequest at once, and prints the latencies (ms) of the measured
 * events — send → ActionRequest received — as JSON on stdout. Warm-up events carry t=0.
 */
import { pino } from 'pino';
import { ulid } from 'ulid';
import { HubChannel } from '../agent/channel.js';
import { agentFacts } from '../agent/agent.js';
import { silenceIpServernameWarning } from '../common/warnings.js';

silenceIpServernameWarning();

interface Input { target: string; caPem: string; keyPem: string; certPem: string; rate: number; warm: number; measured: number; trace: boolean }

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<void> {
  let text = '';
  for await (const chunk of process.stdin) text += chunk;
  const o = JSON.parse(text) as Input;
  const lat: number[] = [];
  const creds = { caPem: o.caPem, keyPem: o.keyPem, certPem: o.certPem };
  const ch: HubChannel = new HubChannel({
    target: o.target, credentials: () => creds, hello: () => ({ facts: agentFacts(), labels: {} }), log: pino({ level: 'silent' }), maxBackoffMs: 1000,
    onCancel: () => undefined,
    onAction: (a) => {
      const t = Number(a.argv[1]);
      if (Number.isFinite(t) && t > 0) lat.push(performance.timeOrigin + performance.now() - t);
      const now = Date.now();
      ch.send({ result: { executionId: a.executionId, status: 'succeeded', exitCode: 0, error: '', startedMs: now, finishedMs: now } });
    },
  });
  ch.start();
  const ready = Date.now() + 15_000;
  while (ch.state !== 'ready') {
    if (Date.now() > ready) throw new Error('the channel was not ready within 15 s');
    await sleep(10);
  }
  const total = o.warm + o.measured;
  const t0 = performance.now();
  for (let i = 0; i < total; i++) {
    const wait = t0 + (i * 1000) / o.rate - performance.now();
    if (wait > 1) await sleep(wait);
    const t = i < o.warm ? 0 : performance.timeOrigin + performance.now();
    ch.publish([{ id: `p-${i}-${ulid()}`, type: 'core.bench_ping', payloadJson: Buffer.from(`{"kind":"ping","t":"${t}"}`), timeMs: Date.now() }]);
  }
  const deadline = Date.now() + 10_000;
  while (lat.length < o.measured && Date.now() < deadline) await sleep(20);
  if (o.trace) for (let i = 0; i < lat.length; i += 250) process.stderr.write(`[e2a] ${i}..: max ${Math.max(...lat.slice(i, i + 250)).toFixed(1)} ms\n`);
  await ch.close();
  process.stdout.write(JSON.stringify({ lat, expected: o.measured }));
}

main().then(() => process.exit(0), (err) => { process.stderr.write(`e2a agent: ${(err as Error).stack ?? err}\n`); process.exit(1); });
