/**
 * What each kind of history write waits for (hub/executions/history.ts):
 * - flushStates(): the state lines only — what a request needs on disk before it goes out —
 *   output lines stay queued for the next full write (one fdatasync per dispatch, not two);
 * - written(): the next full write, without forcing one (result acknowledgements), released only
 *   by a write that succeeded; at once when nothing is queued or being written.
 */
import t from 'tap';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { FileHandle } from 'node:fs/promises';
import { History } from '../hub/executions/history.js';
import type { ExecutionRecord } from '../hub/executions/types.js';
import { captureLogger, tempDir } from './helpers/hub.js';

// A flush timer that never fires during a test: every write here is one the test asked for.
const open = (dir: string) => History.open({ dir, log: captureLogger().log, maxSegmentBytes: 1 << 20, maxAgeMs: 86_400_000, maxCount: 1000, flushIntervalMs: 600_000, onDrop: () => undefined });

function fileLines(dir: string, re: RegExp): string[] {
  return readdirSync(dir).filter((n) => re.test(n)).sort().flatMap((n) => readFileSync(join(dir, n), 'utf8').split('\n').filter(Boolean));
}
const stateLines = (dir: string) => fileLines(dir, /^\d{12}\.jsonl$/).map((l) => JSON.parse(l) as { r: ExecutionRecord });
const outputLines = (dir: string) => fileLines(dir, /^\d{12}\.out\.jsonl$/);
const ticks = async (n = 5) => { for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r)); };

function record(id: string): ExecutionRecord {
  return {
    id, tenant: 'default', action: 'p.a', agentId: 'a1', status: 'scheduled', exitCode: 0, error: '', requestedBy: 'rule:r', rule: 'r',
    triggerEventId: 'e1', parameters: {}, requestedMs: 1, startedMs: 0, finishedMs: 0, edge: false, outputBytes: 0, outputTruncated: false,
  };
}

t.test('flushStates writes the state lines and leaves output lines for the next full write', async (t) => {
  await using d = await tempDir();
  const dir = join(d.path, 'executions');
  const { history } = await open(dir);
  history.appendState(record('ex-a'), { dedupKey: 'k-a', timeoutMs: 1000 });
  history.appendOutput('ex-b', 'STDOUT', 0, Buffer.from('hello'));
  await history.flushStates();
  t.same(stateLines(dir).map((l) => l.r.id), ['ex-a'], 'the state line is on disk');
  t.same(outputLines(dir), [], 'the output line is not written by a states-only write');
  const chunks = await history.readOutput('ex-b'); // a full write first
  t.equal(Buffer.concat(chunks.map((c) => c.data)).toString(), 'hello', 'the output line is written by the next full write and found again');
  t.equal(outputLines(dir).length, 1);
  await history.close();
});

t.test('written() rides on the next full write: it forces none, and a states-only write does not release it', async (t) => {
  await using d = await tempDir();
  const dir = join(d.path, 'executions');
  const { history } = await open(dir);
  let released = false;
  const first = await Promise.race([history.written().then(() => 'resolved'), ticks(3).then(() => 'pending')]);
  t.equal(first, 'resolved', 'with nothing queued or being written, written() resolves at once');

  history.appendState(record('ex-a'), {});
  history.appendOutput('ex-a', 'STDERR', 0, Buffer.from('HTTP/1.1 200 OK\n\n'));
  void history.written().then(() => { released = true; });
  await new Promise((r) => setTimeout(r, 200));
  t.equal(released, false, 'not released before a write');
  t.same(stateLines(dir), [], 'written() did not force a write');

  await history.flushStates();
  await ticks();
  t.equal(released, false, 'a states-only write with output still queued does not release it');
  t.equal(stateLines(dir).length, 1);

  await history.flush();
  await ticks();
  t.equal(released, true, 'released by the full write');
  t.equal(outputLines(dir).length, 1, 'the output line was on disk when it was released');
  await history.close();
});

t.test('a failed write keeps written() waiting; the retry that succeeds releases it', async (t) => {
  await using d = await tempDir();
  const dir = join(d.path, 'executions');
  const { history } = await open(dir);
  let released = false;
  history.appendState(record('ex-a'), {});
  void history.written().then(() => { released = true; });
  // The current segment's file closes under the history: its next write fails (a real EBADF-like error).
  await (history as unknown as { fh: FileHandle }).fh.close();
  await t.rejects(history.flush(), 'the write fails');
  await ticks();
  t.equal(released, false, 'not released by a failed write');
  await history.flush(); // the retry goes to a fresh segment
  await ticks();
  t.equal(released, true, 'released once the line is on disk');
  t.same(stateLines(dir).map((l) => l.r.id), ['ex-a']);
  await history.close();
});
