/**
 * Group commit in the execution history (hub/executions/history.ts): a request waits for the
 * history write in flight (if any) and the one that takes its lines — never for the writes of
 * lines queued after it. Before, one write job looped "until the queue is empty": with
 * dispatches arriving during every fdatasync (1,000 events/s) it rarely ended, and every request
 * queued behind it waited write after write. Dispatches queued while a write is in flight share
 * one write (and one promise).
 */
import t from 'tap';
import { constants as fsConstants, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { History } from '../hub/executions/history.js';
import type { ExecutionRecord } from '../hub/executions/types.js';
import { captureLogger, tempDir } from './helpers/hub.js';

// A flush timer far away: only flushStates() writes here.
const open = (dir: string) => History.open({ dir, log: captureLogger().log, maxSegmentBytes: 64 << 20, maxAgeMs: 86_400_000, maxCount: 1_000_000, flushIntervalMs: 600_000, onDrop: () => undefined });

function ids(dir: string): Set<string> {
  return new Set(readdirSync(dir).filter((n) => /^\d{12}\.jsonl$/.test(n)).sort()
    .flatMap((n) => readFileSync(join(dir, n), 'utf8').split('\n').filter(Boolean).map((l) => (JSON.parse(l) as { r: ExecutionRecord }).r.id)));
}

function record(id: string): ExecutionRecord {
  return {
    id, tenant: 'default', action: 'p.a', agentId: 'a1', status: 'scheduled', exitCode: 0, error: '', requestedBy: 'rule:r', rule: 'r',
    triggerEventId: 'e1', parameters: {}, requestedMs: 1, startedMs: 0, finishedMs: 0, edge: false, outputBytes: 0, outputTruncated: false,
  };
}

t.test('flushStates resolves once its own lines are on disk while dispatches keep arriving', async (t) => {
  await using d = await tempDir();
  const dir = join(d.path, 'executions');
  const { history } = await open(dir);
  history.appendState(record('first'), { dedupKey: 'k-first' });
  let resolved = false;
  let onDiskAtResolve = false;
  const first = history.flushStates().then(() => { resolved = true; onDiskAtResolve = ids(dir).has('first'); });
  // A steady stream of dispatches, each with its own flushStates (as hub/executions dispatch does),
  // until the first request was released — or 5 s (the old loop held it until the stream stopped).
  let n = 0;
  const later: Promise<void>[] = [];
  const deadline = Date.now() + 5_000;
  while (!resolved && Date.now() < deadline) {
    history.appendState(record(`later-${n}`), { dedupKey: `k-${n}` });
    later.push(history.flushStates());
    n++;
    await new Promise((r) => setImmediate(r));
  }
  const stillStreaming = resolved;
  await first;
  t.ok(stillStreaming, `the first request was released while dispatches still arrived (${n} queued after it)`);
  t.ok(onDiskAtResolve, 'its line was on disk when it was released');
  await Promise.all(later);
  const onDisk = ids(dir);
  t.equal([...Array(n).keys()].filter((i) => !onDisk.has(`later-${i}`)).length, 0, 'every later line is on disk once its flushStates resolved');
  await history.close();
});

t.test('a request waits for at most the write in flight and its own; callers meanwhile share one write', async (t) => {
  await using d = await tempDir();
  const dir = join(d.path, 'executions');
  const { history } = await open(dir);
  history.appendState(record('a'), {});
  const order: string[] = [];
  const pa = history.flushStates().then(() => order.push('a'));
  // Queued while the write of `a` is in flight: both ride on the next write.
  await new Promise((r) => setImmediate(r));
  history.appendState(record('b'), {});
  const pb = history.flushStates();
  history.appendState(record('c'), {});
  const pc = history.flushStates();
  t.equal(pb, pc, 'two dispatches queued behind one write share the next one');
  const pbDone = pb.then(() => { order.push('b'); return ids(dir); });
  // Lines queued after b's write started go with a later write, which b does not wait for.
  let extra = 0;
  let bDone = false;
  void pbDone.then(() => { bDone = true; });
  const deadline = Date.now() + 5_000;
  const tail: Promise<void>[] = [];
  while (!bDone && Date.now() < deadline) {
    history.appendState(record(`x-${extra++}`), {});
    tail.push(history.flushStates());
    await new Promise((r) => setImmediate(r));
  }
  const seen = await pbDone;
  await pa;
  t.ok(bDone, 'b was released while lines kept being queued after it');
  t.same(order, ['a', 'b'], 'in order');
  t.ok(seen.has('b') && seen.has('c'), 'b and c were on disk when b was released');
  await Promise.all(tail);
  t.equal(ids(dir).size, 3 + extra, 'every line written');
  await history.close();
});

t.test('history files are opened O_DSYNC where the platform has it: one write is durable, no fdatasync round trip', { skip: process.platform !== 'linux' && 'reads /proc/self/fdinfo' }, async (t) => {
  await using d = await tempDir();
  const dir = join(d.path, 'executions');
  const { history } = await open(dir);
  history.appendState(record('a'), {});
  await history.flushStates();
  const flagsOf = (name: string) => {
    for (const fd of readdirSync('/proc/self/fd')) {
      let target = '';
      try { target = readlinkSync(`/proc/self/fd/${fd}`); } catch { continue; }
      if (target !== join(dir, name)) continue;
      const m = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
      return m ? parseInt(m[1]!, 8) : undefined;
    }
    return undefined;
  };
  for (const name of ['000000000001.jsonl', '000000000001.out.jsonl']) {
    const flags = flagsOf(name);
    t.ok(flags !== undefined, `${name} is open`);
    t.ok((flags! & fsConstants.O_DSYNC) !== 0, `${name}: O_DSYNC`);
    t.ok((flags! & fsConstants.O_APPEND) !== 0, `${name}: O_APPEND`);
  }
  await history.close();
  // Reopened after a restart (the same segment is appended to): still O_DSYNC.
  const again = await open(dir);
  t.ok((flagsOf('000000000001.jsonl')! & fsConstants.O_DSYNC) !== 0, 'reopened: O_DSYNC');
  t.ok(again.records.has('a'), 'the line is there after the restart');
  await again.history.close();
});

t.test('close writes what was queued while its own write ran (a write takes only what was queued when it started)', async (t) => {
  await using d = await tempDir();
  const dir = join(d.path, 'executions');
  const { history } = await open(dir);
  for (let i = 0; i < 200; i++) history.appendState(record(`early-${i}`), {});
  const closing = history.close();
  await new Promise((r) => setImmediate(r)); // the first write is under way
  history.appendState(record('late'), { dedupKey: 'k-late' });
  await closing;
  const again = await open(dir);
  t.ok(again.records.has('early-199'), 'the lines queued before close');
  t.match(again.records.get('late'), { dedupKey: 'k-late' }, 'and the line queued during its write');
  await again.history.close();
});
