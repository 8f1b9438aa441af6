/**
 * The execution history (hub/executions/history.ts) writes one state line per execution per
 * write: changes of one execution queued together coalesce into its latest record (with its
 * idempotency key and timeout kept), changes in separate writes stay separate lines, and a
 * restart rebuilds the latest state from the files on disk.
 */
import t from 'tap';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { History } from '../hub/executions/history.js';
import type { ExecutionRecord } from '../hub/executions/types.js';
import { captureLogger, tempDir } from './helpers/hub.js';

const open = (dir: string) => History.open({ dir, log: captureLogger().log, maxSegmentBytes: 1 << 20, maxAgeMs: 86_400_000, maxCount: 1000, flushIntervalMs: 60_000, onDrop: () => undefined });

function lines(dir: string): Array<{ r: ExecutionRecord; dk?: string; to?: number }> {
  return readdirSync(dir).filter((n) => /^\d{12}\.jsonl$/.test(n)).sort()
    .flatMap((n) => readFileSync(join(dir, n), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)));
}

function record(id: string): ExecutionRecord {
  return {
    id, tenant: 'default', action: 'p.a', agentId: 'a1', status: 'requested', exitCode: 0, error: '', requestedBy: 'rule:r', rule: 'r',
    triggerEventId: 'e1', parameters: {}, requestedMs: 1, startedMs: 0, finishedMs: 0, edge: false, outputBytes: 0, outputTruncated: false,
  };
}

t.test('changes of one execution within one write are one line, the latest; separate writes stay separate', async (t) => {
  await using d = await tempDir();
  const dir = join(d.path, 'executions');
  const { history } = await open(dir);
  const a = record('ex-a'), b = record('ex-b');
  history.appendState(a, { dedupKey: 'rule:r|e1|a1', timeoutMs: 5000 });
  history.appendState(b, {});
  Object.assign(a, { status: 'scheduled' });
  history.appendState(a, {}); // the key and timeout of the earlier change are kept
  await history.flush();
  const first = lines(dir);
  t.equal(first.length, 2, 'two executions, two lines');
  t.match(first.find((l) => l.r.id === 'ex-a'), { r: { status: 'scheduled' }, dk: 'rule:r|e1|a1', to: 5000 });
  t.match(first.find((l) => l.r.id === 'ex-b'), { r: { status: 'requested' } });

  Object.assign(a, { status: 'running', startedMs: 2 });
  history.appendState(a, { dedupKey: 'rule:r|e1|a1', timeoutMs: 5000 });
  await history.flush();
  Object.assign(a, { status: 'succeeded', finishedMs: 3 });
  history.appendState(a, { dedupKey: 'rule:r|e1|a1' });
  await history.flush();
  t.same(lines(dir).filter((l) => l.r.id === 'ex-a').map((l) => l.r.status), ['scheduled', 'running', 'succeeded'], 'one line per write');
  await history.close();

  const again = await open(dir);
  t.match(again.records.get('ex-a'), { rec: { status: 'succeeded', finishedMs: 3 }, dedupKey: 'rule:r|e1|a1', timeoutMs: 5000 });
  t.match(again.records.get('ex-b'), { rec: { status: 'requested' } });
  await again.history.close();
});
