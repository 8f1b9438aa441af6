/**
 * The wait a rule's request has for its history lines alone (hub/executions/history.ts), without
 * the rest of the hub: `rate` dispatches per second, each queues its `scheduled` line and calls
 * flushStates() as Executions.dispatch does (the request would go out when it resolves); 3 ms
 * later its result line is queued (it rides the 100 ms flush timer, as results do). Real files in
 * a temp directory on this machine's disk.
 *
 *   node dist/bench/e2a-history.js [rate=1000] [seconds=8] [dir=os.tmpdir()]
 *
 * Prints `name: value unit` lines: e2a_history_sync_wait_p50_ms, e2a_history_sync_wait_p99_ms
 * (scheduled → durable, the first second left out as warm-up), e2a_history_cpu_us (this
 * process's CPU per dispatch, thread-pool syscalls included), e2a_history_lines_per_dispatch
 * (state lines written per dispatch: 2 when its scheduled and succeeded lines never share a write).
 */
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { History } from '../hub/executions/history.js';
import type { ExecutionRecord } from '../hub/executions/types.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function percentile(v: number[], p: number): number {
  const s = [...v].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

async function main(): Promise<void> {
  const rate = Number(process.argv[2] ?? 1000);
  const seconds = Number(process.argv[3] ?? 8);
  if (!(rate > 0) || !(seconds > 1)) throw new Error('usage: e2a-history.js [rate>0] [seconds>1] [dir]');
  const root = await mkdtemp(join(process.argv[4] ?? tmpdir(), 'trellis-e2a-history-'));
  try {
    const dir = join(root, 'executions');
    const { history } = await History.open({ dir, log: pino({ level: 'silent' }), maxSegmentBytes: 64 << 20, maxAgeMs: 86_400_000, maxCount: 1_000_000, flushIntervalMs: 100, onDrop: () => undefined });
    const total = Math.round(rate * seconds), warm = Math.round(rate);
    const waits: number[] = [];
    const pending: Promise<void>[] = [];
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    for (let i = 0; i < total; i++) {
      const due = t0 + (i * 1000) / rate - performance.now();
      if (due > 1) await sleep(due);
      else if (i % 50 === 0) await new Promise((r) => setImmediate(r));
      const rec: ExecutionRecord = {
        id: `ex-${String(i).padStart(8, '0')}`, tenant: 'default', action: 'bench.ping', agentId: 'agent-1', status: 'scheduled', exitCode: 0, error: '',
        requestedBy: 'rule:bench-latency', rule: 'bench-latency', triggerEventId: `ev-${i}`, parameters: { n: String(i), t: String(Date.now()), port: '40000' },
        requestedMs: Date.now(), startedMs: 0, finishedMs: 0, edge: false, outputBytes: 0, outputTruncated: false,
      };
      history.appendState(rec, { dedupKey: `rule:bench-latency|ev-${i}|agent-1`, timeoutMs: 10_000 });
      const at = performance.now();
      pending.push(history.flushStates().then(() => { if (i >= warm) waits.push(performance.now() - at); }));
      setTimeout(() => { rec.status = 'succeeded'; rec.finishedMs = Date.now(); history.appendState(rec); }, 3);
    }
    await Promise.all(pending);
    await history.close();
    const cpu = process.cpuUsage(cpu0);
    // Writes made: state lines of one write are contiguous, so count the distinct write batches by
    // the lines written (each execution has at most two: scheduled and succeeded).
    let lines = 0;
    for (const n of await readdir(dir)) if (/^\d{12}\.jsonl$/.test(n)) lines += (await readFile(join(dir, n), 'utf8')).split('\n').filter(Boolean).length;
    process.stdout.write(`e2a_history_sync_wait_p50_ms: ${percentile(waits, 50).toFixed(2)} ms\n`);
    process.stdout.write(`e2a_history_sync_wait_p99_ms: ${percentile(waits, 99).toFixed(2)} ms\n`);
    process.stdout.write(`e2a_history_cpu_us: ${(((cpu.user + cpu.system) / total)).toFixed(0)} us/dispatch\n`);
    process.stdout.write(`e2a_history_lines_per_dispatch: ${(lines / total).toFixed(2)} lines\n`);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (err) => { process.stderr.write(`e2a-history: ${(err as Error).stack ?? err}\n`); process.exit(1); });
