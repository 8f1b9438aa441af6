/**
 * Pieces of the event → action hot path made cheaper (issue 13): pooled randomness for ULIDs,
 * and the store's in-place read (peek) the rules engine uses per event instead of a deep copy.
 */
import t from 'tap';
import { decodeTime, isValid } from 'ulid';
import { monotonicUlidFactory, pooledPrng, ulidFactory } from '../common/ids.js';
import { MemoryStore } from '../hub/store/index.js';

t.test('pooledPrng: fractions k/256 in [0, 1), every byte value, roughly uniform', async (t) => {
  const prng = pooledPrng(1024);
  const buckets = new Array<number>(256).fill(0);
  const N = 256 * 400;
  for (let i = 0; i < N; i++) {
    const x = prng();
    if (!(x >= 0 && x < 1) || !Number.isInteger(x * 256)) { t.fail(`not a byte fraction: ${x}`); return; }
    buckets[x * 256]!++;
  }
  // Expected 400 per bucket; a fair source stays well inside ±40% (≈8 standard deviations).
  t.ok(buckets.every((b) => b > 240 && b < 560), `buckets between ${Math.min(...buckets)} and ${Math.max(...buckets)}`);
  // Refills: a pool of 1,024 bytes gave 102,400 draws that are not a repeating 1 KiB cycle.
  const a = Array.from({ length: 1024 }, prng);
  const b = Array.from({ length: 1024 }, prng);
  t.not(a.join(), b.join(), 'each refill draws fresh bytes');
});

t.test('ulidFactory: valid, unique ULIDs with the given time; factories do not share state', async (t) => {
  const id = ulidFactory();
  const other = ulidFactory();
  const seen = new Set<string>();
  const at = Date.UTC(2026, 0, 2, 3, 4, 5);
  for (let i = 0; i < 50_000; i++) seen.add(id(at));
  t.equal(seen.size, 50_000, '50,000 ids in the same millisecond, all distinct');
  const one = id(at);
  t.ok(isValid(one), 'a valid ULID');
  t.equal(decodeTime(one), at, 'the time part is the given time');
  t.not(other(at), id(at), 'two generators give different ids');
  t.ok(isValid(id()), 'without a time: now');
  t.ok(Math.abs(decodeTime(id()) - Date.now()) < 5_000);
});

t.test('monotonicUlidFactory: strictly increasing, also within one millisecond', async (t) => {
  const next = monotonicUlidFactory();
  let prev = '';
  let increasing = 0;
  const at = Date.now();
  for (let i = 0; i < 10_000; i++) {
    const cur = next(at);
    if (cur > prev) increasing++;
    prev = cur;
  }
  t.equal(increasing, 10_000, '10,000 ids in one millisecond, each greater than the last');
  t.ok(next() > prev, 'later time: greater');
});

t.test('Store.peek: the stored document itself, deep-frozen, no copy; bad ids refused like get', async (t) => {
  const store = new MemoryStore();
  await store.put('agents', { id: 'a1', tenant: 'default', labels: { env: 'prod' }, revoked: false });
  const a = store.peek<{ id: string; tenant: string; labels: Record<string, string>; revoked: boolean }>('agents', 'a1')!;
  t.equal(a.tenant, 'default');
  t.equal(store.peek('agents', 'a1'), a, 'the same object each time (nothing copied)');
  t.throws(() => { (a as { tenant: string }).tenant = 'other'; }, 'top level frozen');
  t.throws(() => { a.labels.env = 'dev'; }, 'nested objects frozen');
  t.equal((await store.get<typeof a>('agents', 'a1'))!.tenant, 'default', 'the stored document is unchanged');
  t.equal(store.peek('agents', 'nope'), undefined);
  await t.rejects(store.get('agents', ''), 'get refuses an empty id');
  t.throws(() => store.peek('agents', ''), 'peek refuses it too');
  await store.put('agents', { id: 'a1', tenant: 'second', labels: {}, revoked: true });
  t.equal(store.peek<typeof a>('agents', 'a1')!.tenant, 'second', 'a put is seen by the next peek');
  t.equal(a.tenant, 'default', 'a document peeked earlier is not changed under its reader');
});
