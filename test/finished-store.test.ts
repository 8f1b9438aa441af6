/**
 * Finished executions off the JavaScript heap (hub/executions/finished.ts) and the key index
 * under it (hub/executions/key-index.ts): they must answer exactly as Maps of strings and
 * objects would, through growth, removal, slot reuse and compaction, for any string (lone
 * surrogates, astral characters, long keys), and hold no JavaScript object per record.
 */
import t from 'tap';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { KeyIndex, hashKey, sipHash32 } from '../hub/executions/key-index.js';
import { FinishedStore, type Held } from '../hub/executions/finished.js';
import type { ExecutionRecord } from '../hub/executions/types.js';
import type { ExecutionStatus } from '../common/automation/types.js';
import { mulberry32 } from '../bench/prng.js';
import { pino } from 'pino';
import { Executions } from '../hub/executions/index.js';
import { historyCapacity } from '../hub/executions/history.js';
import { tempDir } from './helpers/hub.js';

const ALPHABET = ['a', 'b', 'z', '0', '|', 'é', '\u{1F600}', '\uD800', '\uDFFF', '\u0000', '"', '\\', '\n'];
const randomKey = (rnd: () => number, max = 12) => {
  let s = '';
  const n = Math.floor(rnd() * max);
  for (let i = 0; i < n; i++) s += ALPHABET[Math.floor(rnd() * ALPHABET.length)];
  return s;
};

t.test('KeyIndex answers as a Map of strings would, through growth, removal, slot reuse and compaction', async (t) => {
  for (const seed of [1, 2, 3]) {
    const rnd = mulberry32(seed);
    const idx = new KeyIndex(seed);
    const ref = new Map<string, number>();
    const present: string[] = [];
    let wrong = 0;
    for (let op = 0; op < 40_000; op++) {
      const key = rnd() < 0.3 && present.length ? present[Math.floor(rnd() * present.length)]! : randomKey(rnd, op % 97 === 0 ? 3000 : 12);
      const r = rnd();
      if (r < 0.5) {
        const found = idx.find(key, idx.hashOf(key)); // with the hash given, as the store passes it
        const added = found < 0;
        const slot = added ? idx.insert(key) : found;
        if (added !== !ref.has(key)) wrong++;
        if (!added && ref.get(key) !== slot) wrong++;
        if (added) present.push(key);
        ref.set(key, slot);
      } else if (r < 0.8) {
        const slot = ref.get(key);
        if (slot === undefined) { if (idx.find(key) !== -1) wrong++; continue; }
        idx.remove(slot);
        ref.delete(key);
        const at = present.indexOf(key);
        present[at] = present[present.length - 1]!;
        present.pop();
      } else if (idx.find(key) !== (ref.get(key) ?? -1)) wrong++;
      if (idx.size !== ref.size) wrong++;
    }
    for (const [k, s] of ref) if (idx.key(s) !== k || idx.find(k) !== s) wrong++;
    t.equal(wrong, 0, `seed ${seed}: ${ref.size} keys at the end, every answer as the Map's`);
    t.ok(idx.stats.garbage <= idx.stats.used, 'removed keys are reclaimed by compaction');
  }
});

t.test('KeyIndex keys compare as JavaScript strings compare (code units), in slots and against strings', async (t) => {
  const rnd = mulberry32(7);
  const idx = new KeyIndex(7);
  // Short keys of every kind, and long ones over two letters (long shared prefixes: the 7-unit
  // prefix numbers tie and the next ones or the full comparison decide), some with a wide unit.
  const twoLetter = () => { let k = ''; const n = 1 + Math.floor(rnd() * 20); for (let i = 0; i < n; i++) k += rnd() < 0.5 ? 'a' : 'b'; return rnd() < 0.1 ? k + '\u{1F600}' : k; };
  const keys = [...new Set([...Array.from({ length: 300 }, () => randomKey(rnd, 6)), ...Array.from({ length: 300 }, twoLetter)])];
  const slots = keys.map((k) => idx.insert(k));
  let wrong = 0;
  for (let i = 0; i < keys.length; i++) for (let j = 0; j < keys.length; j += 7) {
    const want = Math.sign(keys[i]! < keys[j]! ? -1 : keys[i]! > keys[j]! ? 1 : 0);
    if (Math.sign(idx.compareSlots(slots[i]!, slots[j]!)) !== want) wrong++;
    if (Math.sign(idx.compare(slots[i]!, keys[j]!)) !== want) wrong++;
  }
  t.equal(wrong, 0, 'same order as < and > on the strings');
  t.equal(idx.key(idx.insert('\uD800x\uDFFF')), '\uD800x\uDFFF', 'lone surrogates come back as they went in');
  const long = 'k'.repeat(10_000) + '\u{1F600}';
  t.equal(idx.key(idx.insert(long)), long, 'a key longer than one decode chunk comes back whole');
});

t.test('KeyIndex: keys get slots in order, two indexes with different hash keys find the same keys, an absent key is absent, the table stays at most half full', async (t) => {
  const a = new KeyIndex(1), b = new KeyIndex(2);
  for (let i = 0; i < 5000; i++) { a.insert(`id-${i}`); b.insert(`id-${i}`); }
  t.equal(a.find('id-4999'), 4999);
  t.equal(b.find('id-4999'), 4999);
  t.equal(a.find('id-5000'), -1, 'an absent key is absent');
  t.ok(a.stats.table >= 2 * a.size, 'load factor at most one half');
});

const STATUSES: ExecutionStatus[] = ['succeeded', 'failed', 'timeout', 'canceled', 'abandoned', 'error'];

function record(rnd: () => number, i: number): ExecutionRecord {
  return {
    id: `01j${String(1_000_000 + Math.floor(rnd() * 9_000_000)).padStart(10, '0')}${String(i).padStart(13, '0')}`,
    tenant: ['default', 'blue', 'é\u{1F600}'][Math.floor(rnd() * 3)]!,
    action: ['core.command', 'web.ping', 'db.backup'][Math.floor(rnd() * 3)]!,
    agentId: `agent-${Math.floor(rnd() * 20)}`,
    status: STATUSES[Math.floor(rnd() * STATUSES.length)]!,
    exitCode: Math.floor(rnd() * 3) - 1, error: rnd() < 0.2 ? 'boom "quoted" \\ \uD800' : '',
    requestedBy: 'rule:r', rule: rnd() < 0.5 ? 'web.on-ping' : '', triggerEventId: `ev${i}`,
    parameters: { n: i, s: randomKey(rnd), nested: { a: [1, 'two', null] } },
    requestedMs: 1_700_000_000_000 + Math.floor(rnd() * 1e6), startedMs: 0, finishedMs: 1_700_001_000_000 + i,
    edge: rnd() < 0.1, outputBytes: Math.floor(rnd() * 5000), outputTruncated: rnd() < 0.1,
  };
}

/** The reference: what hub/executions did before the store (a Map of objects, filtered and sorted). */
function refList(ref: Map<string, Held>, tenant: string, f: { action?: string; agentId?: string; status?: string; rule?: string; sinceMs?: number; beforeId?: string }, limit: number): string[] {
  return [...ref.values()].map((h) => h.rec)
    .filter((r) => (tenant === '*' || r.tenant === tenant) && (!f.action || r.action === f.action) && (!f.agentId || r.agentId === f.agentId)
      && (!f.status || r.status === f.status) && (!f.rule || r.rule === f.rule) && (!f.sinceMs || r.requestedMs >= f.sinceMs) && (!f.beforeId || r.id < f.beforeId))
    .map((r) => r.id).sort().reverse().slice(0, limit);
}

t.test('FinishedStore answers as a Map of records would: get, dedup keys, filters, newest first, counts, replace, delete, evict', async (t) => {
  const rnd = mulberry32(11);
  const store = new FinishedStore(11);
  const ref = new Map<string, Held>();
  const keys = new Map<string, string>(); // dedup key → id
  let wrong = 0;
  const hold = (h: Held) => {
    const old = ref.get(h.rec.id);
    if (old?.dedupKey && keys.get(old.dedupKey) === h.rec.id) keys.delete(old.dedupKey);
    ref.set(h.rec.id, h);
    if (h.dedupKey) keys.set(h.dedupKey, h.rec.id);
    store.put(structuredClone(h));
  };
  const ids: string[] = [];
  for (let i = 0; i < 6000; i++) {
    const rec = record(rnd, i);
    ids.push(rec.id);
    hold({ rec, ver: 1 + Math.floor(rnd() * 4), stored: Math.floor(rnd() * 1000), dedupKey: rnd() < 0.5 ? `web.on-ping|ev${Math.floor(rnd() * 3000)}|${rec.agentId}` : undefined });
    if (i % 5 === 4) { // replace one, delete one
      const a = ids[Math.floor(rnd() * ids.length)]!;
      const h = ref.get(a);
      if (h) hold({ ...h, rec: { ...h.rec, status: 'error', error: 'replaced' }, ver: h.ver + 1 });
      const d = ids[Math.floor(rnd() * ids.length)]!;
      const gone = ref.get(d);
      if (gone?.dedupKey && keys.get(gone.dedupKey) === d) keys.delete(gone.dedupKey);
      if (ref.delete(d) !== store.delete(d)) wrong++;
    }
  }
  t.equal(store.size, ref.size, 'as many records');
  const text = (h: Held | undefined) => h && JSON.stringify([h.rec, h.ver, h.stored, h.dedupKey ?? null]);
  for (const [id, h] of ref) if (text(store.get(id)) !== text(h)) wrong++;
  t.equal(wrong, 0, 'every record reads back exactly (deleted ones are gone)');
  let keyWrong = 0;
  for (const [k, id] of keys) if (store.byKey(k)?.rec.id !== id) keyWrong++;
  t.equal(keyWrong, 0, `each of ${keys.size} dedup keys leads to its latest record`);
  t.equal(store.byKey('no such key'), undefined);

  const filters = [
    {}, { action: 'web.ping' }, { agentId: 'agent-3', status: 'failed' }, { rule: 'web.on-ping', sinceMs: 1_700_000_500_000 },
    { status: 'abandoned' }, { action: 'not.installed' }, { status: 'nonsense' }, { beforeId: ids[3000] }, { agentId: 'agent-7', beforeId: ids[4500] },
  ];
  let listWrong = 0;
  for (const tenant of ['*', 'default', 'blue', 'é\u{1F600}', 'nobody']) for (const f of filters) for (const limit of [1, 50, 100_000]) {
    const got = store.newest(store.match(tenant, f), limit).map((s) => store.idAt(s));
    if (JSON.stringify(got) !== JSON.stringify(refList(ref, tenant, f, limit))) listWrong++;
  }
  t.equal(listWrong, 0, 'every filter, tenant and limit: the same ids in the same order as filtering and sorting the records');

  const counts = new Map<string, number>();
  for (const h of ref.values()) counts.set(h.rec.status, (counts.get(h.rec.status) ?? 0) + 1);
  t.same(Object.fromEntries(store.statusCounts()), Object.fromEntries(counts), 'counts by status');

  const abandoned = [...ref.values()].find((h) => h.rec.status === 'abandoned' && !h.rec.edge)!;
  t.ok(store.abandonedOf(abandoned.rec.id, abandoned.rec.agentId), 'an abandoned pack execution of its agent');
  t.notOk(store.abandonedOf(abandoned.rec.id, 'agent-999'), 'not another agent\'s');
  const done = [...ref.values()].find((h) => h.rec.status === 'succeeded')!;
  t.notOk(store.abandonedOf(done.rec.id, done.rec.agentId), 'not a succeeded one');
  const edge = [...ref.values()].find((h) => h.rec.status === 'abandoned' && h.rec.edge);
  t.ok(edge, 'the records include an abandoned edge execution');
  t.notOk(store.abandonedOf(edge!.rec.id, edge!.rec.agentId), 'not an edge one');

  const cut = 1_700_001_000_000 + 3000;
  const evicted = store.evict(cut);
  const before = [...ref.values()].filter((h) => (h.rec.finishedMs || h.rec.requestedMs) < cut).length;
  t.equal(evicted, before, 'evict drops those that ended before the cut');
  t.equal(store.size, ref.size - before);
  for (const id of [...ref.keys()]) store.delete(id);
  t.equal(store.size, 0, 'all deleted');
  t.same(store.stats, { textBytes: store.stats.textBytes, textUsed: 0, textDead: 0, interned: 0, keys: 0 }, 'nothing left: no bytes in use, no interned value, no key');
});

t.test('FinishedStore texts live in 1 MiB chunks: growth adds one, oldest-first removal frees them, scattered removal is compacted a chunk at a time', async (t) => {
  const MiB = 1024 * 1024;
  const rnd = mulberry32(21);
  const store = new FinishedStore(21);
  const ref = new Map<string, Held>();
  const order: string[] = [];
  const put = (i: number, extra?: string) => {
    const rec = record(rnd, i);
    if (extra) rec.parameters = { ...rec.parameters, big: extra };
    const h: Held = { rec, ver: 1, stored: 0, dedupKey: `r|${rec.triggerEventId}|${rec.agentId}` };
    ref.set(rec.id, h);
    order.push(rec.id);
    store.put(structuredClone(h));
  };
  const readsBack = () => {
    let wrong = 0;
    for (const [id, h] of ref) if (JSON.stringify(store.get(id)) !== JSON.stringify({ rec: h.rec, ver: h.ver, dedupKey: h.dedupKey, stored: h.stored })) wrong++;
    return wrong;
  };
  for (let i = 0; i < 20_000; i++) put(i);
  const full = store.stats;
  t.ok(full.textUsed > 4 * MiB, `several chunks of texts (${(full.textUsed / MiB).toFixed(1)} MiB)`);
  t.ok(full.textBytes - full.textUsed < MiB, 'growing wastes less than one chunk (no slab grown by half)');
  t.equal(full.textDead, 0, 'nothing dead yet');

  for (const id of order.splice(0, 10_000)) { store.delete(id); ref.delete(id); } // retention: oldest first
  const half = store.stats;
  t.ok(half.textBytes <= full.textBytes / 2 + 2 * MiB, `the chunks the oldest half filled are freed (${(full.textBytes / MiB).toFixed(1)} → ${(half.textBytes / MiB).toFixed(1)} MiB)`);
  t.ok(half.textDead < 2 * MiB, 'at most the partly emptied chunk at the edge holds dead texts');
  t.equal(readsBack(), 0, 'the newer half reads back');

  for (const id of order.filter(() => rnd() < 0.8)) { store.delete(id); ref.delete(id); } // scattered: 80% of the rest
  t.ok(store.stats.textDead * 2 > store.stats.textUsed, 'scattered removal leaves most bytes dead');
  for (let i = 20_000; i < 30_000; i++) put(i);
  const after = store.stats;
  t.ok(after.textDead * 2 <= after.textUsed + 2 * MiB, `new chunks moved the live texts of sparse ones and freed them (dead ${(after.textDead / MiB).toFixed(1)} of ${(after.textUsed / MiB).toFixed(1)} MiB)`);
  t.equal(readsBack(), 0, 'every record reads back after compaction (moved texts, reused slots)');

  put(30_000, 'x'.repeat(3 * MiB)); // longer than a chunk: a chunk of its own
  const big = order.at(-1)!;
  t.equal(store.get(big)?.rec.parameters.big, 'x'.repeat(3 * MiB), 'a text longer than a chunk reads back');
  const withBig = store.stats.textBytes;
  put(30_001);
  store.delete(big); ref.delete(big);
  t.ok(store.stats.textBytes <= withBig - 3 * MiB + MiB, 'its chunk is freed with it');
  t.equal(readsBack(), 0, 'the others read back');

  for (const id of [...ref.keys()]) store.delete(id);
  t.same({ used: store.stats.textUsed, dead: store.stats.textDead }, { used: 0, dead: 0 }, 'all deleted: nothing in use, nothing dead');
  t.ok(store.stats.textBytes <= MiB, 'one chunk left to write to');
});

t.test('sized for what retention lets the hub hold, the store and the history index never grow on the request path', async (t) => {
  t.equal(historyCapacity(100_000), 110_000, 'the default maxCount and a segment more');
  t.equal(historyCapacity(10), 11);
  t.equal(historyCapacity(10_000_000), 1 << 18, 'capped: beyond it, growth by doubling as before');
  // Every column, the id index and the key table stay the same arrays through `n` records with
  // dedup keys after reserve(n) (the arrays are the store's own: read through a cast, as a probe).
  const n = 40_000;
  const rnd = mulberry32(5);
  const store = new FinishedStore(5);
  store.reserve(n);
  type Probe = { status: Uint8Array; requestedMs: Float64Array; textLen: Uint32Array; keyTable: Int32Array; ids: { table: Int32Array; off: Uint32Array; bytes: Uint8Array } };
  const arrays = (p: Probe) => [p.status, p.requestedMs, p.textLen, p.keyTable, p.ids.table, p.ids.off, p.ids.bytes];
  const before = arrays(store as unknown as Probe);
  for (let i = 0; i < n; i++) {
    const rec = record(rnd, i);
    store.put({ rec, ver: 1, stored: 0, dedupKey: `r|${rec.triggerEventId}|${rec.agentId}` });
  }
  const after = arrays(store as unknown as Probe);
  t.equal(store.size, n);
  t.ok(before.every((a, i) => a === after[i]), 'no array was replaced (none grew)');
  // Without the reservation the same records replace them (the probe can tell).
  const grownStore = new FinishedStore(5);
  const first = arrays(grownStore as unknown as Probe);
  for (let i = 0; i < n; i++) { const rec = record(rnd, i); grownStore.put({ rec, ver: 1, stored: 0, dedupKey: `r|${rec.triggerEventId}|${rec.agentId}` }); }
  t.ok(arrays(grownStore as unknown as Probe).every((a, i) => a !== first[i]), 'without it every one of them grew');
});

t.test('FinishedStore holds no JavaScript object per record: 20,000 records grow the heap by under 2 MB', async (t) => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const rnd = mulberry32(5);
  const store = new FinishedStore();
  gc(); gc();
  const before = process.memoryUsage().heapUsed;
  for (let i = 0; i < 20_000; i++) { // each record is made, held and dropped here: only what the store keeps stays
    const rec = record(rnd, i);
    store.put({ rec, ver: 3, stored: 10, dedupKey: `r|${rec.triggerEventId}|${rec.agentId}` });
  }
  gc(); gc();
  const grew = process.memoryUsage().heapUsed - before;
  // As objects (the Map of entries this replaced) the same records took ~25 MB of heap.
  t.ok(grew < 2 * 1024 * 1024, `heap grew ${(grew / 1024).toFixed(0)} KiB for 20,000 records`);
  t.equal(store.size, 20_000);
});

t.test('the index hash is keyed: keys that share a 32-bit hash under one key do not under another (no chain an agent can plan)', async (t) => {
  const a = hashKey(101), b = hashKey(202);
  const seen = new Map<number, string>();
  const pairs: [string, string][] = [];
  for (let i = 0; i < 200_000; i++) {
    const k = `01j${i.toString(32).padStart(23, '0')}`;
    const h = sipHash32(k, a);
    const other = seen.get(h);
    if (other !== undefined) pairs.push([other, k]); else seen.set(h, k);
  }
  t.ok(pairs.length > 0, `${pairs.length} pairs of the 200,000 keys share a hash under the first key (birthday bound: ~4.7 expected)`);
  t.ok(pairs.every(([x, y]) => sipHash32(x, b) !== sipHash32(y, b)), 'none of them under the second');
  t.not(sipHash32('abc', a), sipHash32('abc', b), 'the same text hashes differently under two keys');
  t.equal(sipHash32('abc', a), sipHash32('abc', hashKey(101)), 'and the same under one key');
  t.not(sipHash32('ab', a), sipHash32('ab\u0000', a), 'a trailing zero unit changes the hash (the length is hashed)');
});

t.test('a value that is not a string is found nowhere and breaks nothing', async (t) => {
  const store = new FinishedStore(3);
  for (const bad of [undefined, null, 42, {}, ['x']] as unknown as string[]) {
    t.equal(store.get(bad), undefined);
    t.equal(store.has(bad), false);
    t.equal(store.delete(bad), false);
    t.equal(store.abandonedOf(bad, 'agent'), false);
  }
});

t.test('Executions: lists and counts merge executions in flight with finished ones (off the heap), and read both', async (t) => {
  await using tmp = await tempDir('trellis-finished-');
  const dir = tmp.path;
  // No agent is connected: runs wait `requested` (in flight) until canceled (finished: into the store).
  const deps = { agents: { link: () => undefined, connectedLinks: () => [] }, kv: {} } as unknown as Parameters<typeof Executions.open>[0];
  const x = await Executions.open(deps, { dir, log: pino({ level: 'silent' }), maxWaitMs: 600_000 });
  const ids: string[] = [];
  for (let i = 0; i < 12; i++) {
    const [r] = await x.runCommand({ tenant: i % 4 === 3 ? 'blue' : 'default', agentIds: [`agent-${i % 2}`], argv: ['true', String(i)], env: {}, cwd: '', timeoutMs: 1000, requestedBy: 'alice' });
    ids.push(r!.id);
  }
  for (const id of ids.filter((_, i) => i % 3 !== 0)) await x.cancel('*', id);
  const status = (i: number) => (i % 3 !== 0 ? 'canceled' : 'requested');
  t.same(Object.fromEntries(x.statusCounts()), { requested: 4, canceled: 8 }, 'counts by status: 4 in flight, 8 finished');
  // Pages of 5, newest first, across both.
  const seen: string[] = [];
  for (let before = ''; ;) {
    const page = await x.list('*', { limit: 5, beforeId: before || undefined });
    seen.push(...page.map((r) => r.id));
    if (page.length < 5) break;
    before = page[page.length - 1]!.id;
  }
  t.same(seen, [...ids].sort().reverse(), 'every execution once, in id order, in flight and finished interleaved');
  t.same((await x.list('default', { status: 'canceled', agentId: 'agent-1', limit: 50 })).map((r) => r.id),
    ids.filter((_, i) => i % 4 !== 3 && status(i) === 'canceled' && i % 2 === 1).sort().reverse(), 'filters apply to both');
  t.same(Object.fromEntries(await x.countByStatus('blue', {})), { requested: 1, canceled: 2 }, 'a tenant\'s counts');
  const done = await x.get('default', ids[1]!);
  t.equal(done.status, 'canceled');
  t.same(done.parameters, { argv: ['true', '1'], env: {}, cwd: '', timeoutMs: 1000 }, 'a finished record reads back whole');
  await t.rejects(x.get('blue', ids[1]!), { code: 'TRELLIS_E_NOT_FOUND' }, 'another tenant\'s finished execution does not exist');
  t.equal((await x.cancel('*', ids[1]!)).status, 'canceled', 'canceling a finished one returns it as it is');
  await x.close();
  // After a restart the same, from the history files.
  const y = await Executions.open(deps, { dir, log: pino({ level: 'silent' }), maxWaitMs: 600_000 });
  t.same((await y.list('*', { limit: 50 })).map((r) => r.id).filter((id) => ids.indexOf(id) % 3 !== 0), [...ids].filter((_, i) => i % 3 !== 0).sort().reverse(), 'the finished ones after a restart');
  await y.close(); // before the directory goes
});
