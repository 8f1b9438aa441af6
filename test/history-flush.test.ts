/**
 * What each kind of history write waits for (hub/executions/history.ts):
 * - flushStates(): what goes to the state file — state lines (what a request needs on disk before
 *   it goes out) and the first INLINE_BYTES of each execution's output — in one durable write;
 *   output-file lines stay queued for the next full write (one durable write per dispatch, not two);
 * - written(): the next full write, without forcing one (result acknowledgements), released only
 *   by a write that succeeded; at once when nothing is queued or being written.
 */
import t from 'tap';
import { readdirSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { FileHandle } from 'node:fs/promises';
import { History, INLINE_BYTES } from '../hub/executions/history.js';
import type { ExecutionRecord } from '../hub/executions/types.js';
import { captureLogger, tempDir } from './helpers/hub.js';

// A flush timer that never fires during a test: every write here is one the test asked for.
const open = (dir: string) => History.open({ dir, log: captureLogger().log, maxSegmentBytes: 1 << 20, maxAgeMs: 86_400_000, maxCount: 1000, flushIntervalMs: 600_000, onDrop: () => undefined });

function fileLines(dir: string, re: RegExp): string[] {
  return readdirSync(dir).filter((n) => re.test(n)).sort().flatMap((n) => readFileSync(join(dir, n), 'utf8').split('\n').filter(Boolean));
}
type Line = { k: string; r: ExecutionRecord; id?: string; o?: number };
const stateFile = (dir: string) => fileLines(dir, /^\d{12}\.jsonl$/).map((l) => JSON.parse(l) as Line);
const stateLines = (dir: string) => stateFile(dir).filter((l) => l.k === 's');
/** Output lines kept in the state file (the first INLINE_BYTES of an execution's output). */
const inlineLines = (dir: string) => stateFile(dir).filter((l) => l.k === 'o');
const outputLines = (dir: string) => fileLines(dir, /^\d{12}\.out\.jsonl$/);
const ticks = async (n = 5) => { for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r)); };

function record(id: string): ExecutionRecord {
  return {
    id, tenant: 'default', action: 'p.a', agentId: 'a1', status: 'scheduled', exitCode: 0, error: '', requestedBy: 'rule:r', rule: 'r',
    triggerEventId: 'e1', parameters: {}, requestedMs: 1, startedMs: 0, finishedMs: 0, edge: false, outputBytes: 0, outputTruncated: false,
  };
}

t.test('flushStates writes the state file (state lines, the first output bytes) and leaves output-file lines for the next full write', async (t) => {
  await using d = await tempDir();
  const dir = join(d.path, 'executions');
  const { history } = await open(dir);
  history.appendState(record('ex-a'), { dedupKey: 'k-a', timeoutMs: 1000 });
  history.appendOutput('ex-b', 'STDOUT', 0, Buffer.from('hello'));
  const big = Buffer.alloc(INLINE_BYTES, 'x');
  history.appendOutput('ex-c', 'STDOUT', 0, Buffer.from('c0'));
  history.appendOutput('ex-c', 'STDOUT', 2, big); // ends past INLINE_BYTES: the output file
  await history.flushStates();
  t.same(stateLines(dir).map((l) => l.r.id), ['ex-a'], 'the state line is on disk');
  t.same(inlineLines(dir).map((l) => [l.id, l.o]), [['ex-b', 0], ['ex-c', 0]], 'output within the first INLINE_BYTES went with it, in the state file');
  t.same(outputLines(dir), [], 'output past INLINE_BYTES is not written by a states-only write');
  const chunks = await history.readOutput('ex-c'); // a full write first
  t.equal(Buffer.concat(chunks.map((c) => c.data)).toString(), 'c0' + big.toString(), 'both files are read, in offset order');
  t.equal(outputLines(dir).length, 1, 'the big chunk is in the output file');
  t.equal(Buffer.concat((await history.readOutput('ex-b')).map((c) => c.data)).toString(), 'hello');
  t.same(await history.readOutput('ex-a'), [], 'a state line is never read as output');
  await history.close();
});

t.test('a restart rebuilds from state lines only; output is read from both files, old segments too', async (t) => {
  await using d = await tempDir();
  const dir = join(d.path, 'executions');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  // A segment as written before output went inline: every output line in the .out.jsonl.
  writeFileSync(join(dir, '000000000001.jsonl'), JSON.stringify({ k: 's', r: { ...record('old'), status: 'succeeded', outputBytes: 6 } }) + '\n', { mode: 0o600 });
  writeFileSync(join(dir, '000000000001.out.jsonl'), [
    JSON.stringify({ k: 'o', id: 'old', s: 0, o: 0, d: Buffer.from('abc').toString('base64') }),
    JSON.stringify({ k: 'o', id: 'old', s: 1, o: 3, d: Buffer.from('def').toString('base64') }),
  ].join('\n') + '\n', { mode: 0o600 });
  const first = await open(dir);
  t.same([...first.records.keys()], ['old']);
  first.history.appendState({ ...record('new'), status: 'succeeded', outputBytes: 3 }, {});
  first.history.appendOutput('new', 'STDOUT', 0, Buffer.from('xyz'));
  await first.history.close();
  t.equal(inlineLines(dir).length, 1, 'the new output is in a state file');

  const again = await open(dir);
  t.same([...again.records.keys()].sort(), ['new', 'old'], 'inline output lines are not taken for executions');
  t.equal(again.records.get('new')!.rec.status, 'succeeded');
  t.same((await again.history.readOutput('old')).map((c) => [c.stream, c.data.toString()]), [['STDOUT', 'abc'], ['STDERR', 'def']], 'old-format output is read');
  t.same((await again.history.readOutput('new')).map((c) => c.data.toString()), ['xyz'], 'inline output is read after the restart');
  await again.history.close();
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
  t.equal(released, true, 'a states-only write that took everything queued (the output was inline) releases it');
  t.equal(stateLines(dir).length, 1);
  t.equal(inlineLines(dir).length, 1, 'the output line was on disk when it was released');

  released = false;
  history.appendState({ ...record('ex-a'), status: 'succeeded' }, {});
  history.appendOutput('ex-a', 'STDOUT', 100, Buffer.alloc(INLINE_BYTES, 'y')); // past INLINE_BYTES
  void history.written().then(() => { released = true; });
  await history.flushStates();
  await ticks();
  t.equal(released, false, 'a states-only write with output-file lines still queued does not release it');
  t.equal(stateLines(dir).length, 2);

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

t.test('a torn last line (crash mid-write) is skipped, inline output around it is read, and a new segment starts', async (t) => {
  await using d = await tempDir();
  const dir = join(d.path, 'executions');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const out = (id: string, o: number, text: string) => JSON.stringify({ k: 'o', id, s: 0, o, d: Buffer.from(text).toString('base64') });
  writeFileSync(join(dir, '000000000001.jsonl'), [
    JSON.stringify({ k: 's', r: { ...record('ex-a'), status: 'succeeded' }, dk: 'k-a' }),
    out('ex-a', 0, 'first '),
    '{"k":"o",', // an output line cut right after its prefix
    out('ex-a', 6, 'second'),
    JSON.stringify({ k: 's', r: record('ex-b') }).slice(0, 40), // torn: no newline, cut mid-record
  ].join('\n'), { mode: 0o600 });
  writeFileSync(join(dir, '000000000001.out.jsonl'), '', { mode: 0o600 });
  const logs = captureLogger();
  const { history, records } = await History.open({ dir, log: logs.log, maxSegmentBytes: 1 << 20, maxAgeMs: 86_400_000, maxCount: 1000, flushIntervalMs: 600_000, onDrop: () => undefined });
  t.same([...records.keys()], ['ex-a'], 'the whole state line only');
  t.equal(records.get('ex-a')!.dedupKey, 'k-a');
  t.equal(Buffer.concat((await history.readOutput('ex-a')).map((c) => c.data)).toString(), 'first second', 'both whole output lines');
  history.appendState(record('ex-c'), {});
  await history.flush();
  t.ok(readdirSync(dir).includes('000000000002.jsonl'), 'writes go to a new segment, not after the torn line');
  t.match(logs.lines.join('\n'), /torn line/, 'the torn segment is logged');
  await history.close();
});
