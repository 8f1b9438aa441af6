/**
 * The per-agent de-duplication window (hub/events/recent-ids.ts): ids kept as 128-bit hashes in
 * typed arrays. It must answer exactly as a window of the last N ids kept as strings would,
 * through growth and wrap-around, and tell apart ids that differ in one character anywhere.
 */
import t from 'tap';
import { RecentIds, murmur128 } from '../hub/events/recent-ids.js';
import { mulberry32 } from '../bench/prng.js';

/** The reference: the last `cap` ids as strings. */
class Reference {
  private readonly set = new Set<string>();
  private readonly order: string[] = [];
  constructor(private readonly cap: number) {}
  add(id: string): boolean {
    if (this.set.has(id)) return false;
    this.set.add(id);
    this.order.push(id);
    if (this.order.length > this.cap) this.set.delete(this.order.shift()!);
    return true;
  }
}

t.test('answers as the last-N window of strings would: re-sends inside the window are duplicates, older ones are new again', async (t) => {
  for (const cap of [1, 2, 7, 64, 65, 500, 3000]) {
    const rnd = mulberry32(cap);
    const w = new RecentIds(cap);
    const ref = new Reference(cap);
    const sent: string[] = [];
    let mismatches = 0, dups = 0;
    for (let i = 0; i < 20_000; i++) {
      // Mostly fresh ids; a re-send from recently (inside the window) or from long ago (outside it).
      const r = rnd();
      const id = r < 0.7 || sent.length === 0 ? `01J${Math.floor(rnd() * 1e9).toString(36)}-${i}` : sent[Math.max(0, sent.length - 1 - Math.floor(rnd() * cap * 2))]!;
      sent.push(id);
      const a = w.add(id), b = ref.add(id);
      if (a !== b) mismatches++;
      if (!b) dups++;
    }
    t.equal(mismatches, 0, `capacity ${cap}: every answer as the reference's (${dups} duplicates among 20,000)`);
    t.ok(w.length <= cap, `capacity ${cap}: at most ${cap} remembered`);
  }
});

t.test('ids differing in one character, in length, or only past the first block are different; the same text is a duplicate', async (t) => {
  const w = new RecentIds(100_000);
  const base = 'abcdefghijklmnopqrstuvwxyz0123456789-ABCDEFGHIJKLMNOPQRSTUVWXYZ_';
  t.ok(w.add(base));
  t.notOk(w.add(String(base)), 'the same id again');
  let distinct = 0;
  for (let i = 0; i < base.length; i++) {
    if (w.add(base.slice(0, i) + '!' + base.slice(i + 1))) distinct++;
  }
  t.equal(distinct, base.length, 'a change at any position is a new id');
  t.ok(w.add(base.slice(0, -1)), 'a prefix is a new id');
  t.ok(w.add('a'), 'one character');
  t.ok(w.add('a\u0000'), 'a trailing NUL is not the padding of an odd length');
  t.ok(w.add('\u00e9t\u00e9-\u{1F600}'), 'non-ASCII');
  t.notOk(w.add('\u00e9t\u00e9-\u{1F600}'), 'non-ASCII again');
});

t.test('murmur128 is the 128-bit mix of all code units (lanes differ, every lane changes with one bit)', async (t) => {
  const a = new Int32Array(4), b = new Int32Array(4);
  murmur128('event-0001', a);
  murmur128('event-0000', b);
  t.equal(new Set(a).size, 4, 'four different lanes');
  t.ok([0, 1, 2, 3].every((i) => a[i] !== b[i]), 'one bit of input changes every lane');
  murmur128('event-0001', b);
  t.same([...a], [...b], 'deterministic');
});

t.test('capacity must be a positive integer', async (t) => {
  t.throws(() => new RecentIds(0));
  t.throws(() => new RecentIds(1.5));
});

t.test('hash flooding: ids an agent chose to share their hash\'s low bits under one seed do not chain under the window\'s own seed', async (t) => {
  // An agent that knew the seed would pick ids whose first lane falls in one index slot (the
  // table of a 64-id window has 128 slots): every lookup would then walk all of them.
  const h = new Int32Array(4);
  const crafted: string[] = [];
  for (let i = 0; crafted.length < 60; i++) {
    const id = `evt-${i}`;
    murmur128(id, h, 0);
    if ((h[0]! & 127) === 0) crafted.push(id);
  }
  const known = new RecentIds(64, 0);
  for (const id of crafted) t.equal(known.add(id), true);
  t.ok(known.longestProbeRun >= 60, `with the seed the ids were chosen for, one probe run of ${known.longestProbeRun} slots (the attack works there)`);
  const own = new RecentIds(64); // the hub's: a random seed per window
  for (const id of crafted) t.equal(own.add(id), true);
  t.ok(own.longestProbeRun < 30, `with the window's own random seed the longest probe run is ${own.longestProbeRun} slots`);
  t.equal(own.add(crafted[0]!), false, 'and duplicates are still found');
  const a = new Int32Array(4), b = new Int32Array(4);
  murmur128('event-0001', a, 1);
  murmur128('event-0001', b, 2);
  t.not(a[0], b[0], 'the seed changes the hash');
});
