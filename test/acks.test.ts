/**
 * hub/grpc/acks.ts: when an agent stream's event batches (in both modes) and results are acknowledged.
 * The wire side (a real hub, a raw stream with and without the feature) is in test/channel.test.ts.
 */
import t from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { EventAcks, ResultAcks, RESULT_ACK_DELAY_MS, RESULT_ACK_IDS } from '../hub/grpc/acks.js';
import { EVENT_ACK_BATCHES, EVENT_ACK_DELAY_MS } from '../common/features.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => { resolve = r; });
  return { promise, resolve };
}

function acks(through: boolean): { a: EventAcks; sent: T.EventAck[]; counted: number[] } {
  const sent: T.EventAck[] = [], counted: number[] = [];
  return { a: new EventAcks(through, (ack) => sent.push(ack), (n) => counted.push(n)), sent, counted };
}

const flushMicrotasks = () => new Promise<void>((r) => setImmediate(r));

t.test('first protocol: every batch gets its own ack when it settles, in the order they settle', async (t) => {
  const { a, sent, counted } = acks(false);
  const d1 = deferred(), d2 = deferred();
  a.add(1, 3, 0, [], d1.promise);
  a.add(2, 2, 1, ['x.y'], d2.promise);
  a.add(3, 1, 0, []); // nothing to wait for: at once
  t.same(sent.map((s) => s.seq), [3]);
  d2.resolve(); await flushMicrotasks();
  t.same(sent.map((s) => s.seq), [3, 2], 'batch 2 settled before batch 1: acknowledged alone');
  t.same(sent[1], { seq: 2, refused: 1, refusedTypes: ['x.y'] });
  d1.resolve(); await flushMicrotasks();
  t.same(sent.map((s) => s.seq), [3, 2, 1]);
  t.same(counted, [1, 2, 3]);
});

t.test('through: an ack covers only batches whose every predecessor settled', async (t) => {
  const { a, sent } = acks(true);
  const d1 = deferred(), d2 = deferred();
  a.add(1, 1, 0, [], d1.promise);
  a.add(2, 1, 0, [], d2.promise);
  a.add(3, 1, 0, []);
  d2.resolve(); await flushMicrotasks();
  await sleep(EVENT_ACK_DELAY_MS * 4);
  t.same(sent, [], 'batches 2 and 3 settled, batch 1 not: nothing acknowledged');
  d1.resolve(); await flushMicrotasks();
  t.same(sent, [], 'fewer than EVENT_ACK_BATCHES: not at once');
  await sleep(EVENT_ACK_DELAY_MS * 4);
  t.same(sent, [{ seq: 3, refused: 0, refusedTypes: [] }], 'one ack through batch 3, within the delay');
});

t.test('through: EVENT_ACK_BATCHES settled batches are acknowledged at once, with their counts summed', async (t) => {
  const { a, sent, counted } = acks(true);
  for (let i = 1; i <= EVENT_ACK_BATCHES; i++) a.add(i, 2, i === 2 ? 1 : 0, i === 2 ? ['a.b'] : []);
  t.equal(sent.length, 1, 'no timer waited for');
  t.same(sent[0], { seq: EVENT_ACK_BATCHES, refused: 1, refusedTypes: ['a.b'] });
  t.same(counted, [2 * EVENT_ACK_BATCHES]);
  a.add(EVENT_ACK_BATCHES + 1, 1, 0, []);
  await sleep(EVENT_ACK_DELAY_MS * 4);
  t.same(sent.map((s) => s.seq), [EVENT_ACK_BATCHES, EVENT_ACK_BATCHES + 1], 'the rest goes on the timer');
});

t.test('through: at most 8 refused types are named, each once', async (t) => {
  const { a, sent } = acks(true);
  for (let i = 1; i <= 6; i++) a.add(i, 3, 3, [`t${i}`, `t${i + 1}`, 'same']);
  await sleep(EVENT_ACK_DELAY_MS * 4);
  t.equal(sent.length, 1);
  t.equal(sent[0]!.refused, 18);
  t.equal(sent[0]!.refusedTypes!.length, 8);
  t.equal(new Set(sent[0]!.refusedTypes).size, 8, 'no type twice');
});

t.test('after close nothing is sent, in either mode', async (t) => {
  for (const through of [false, true]) {
    const { a, sent, counted } = acks(through);
    const d = deferred();
    a.add(1, 1, 0, [], d.promise);
    a.add(2, 1, 0, []);
    a.close();
    d.resolve(); await flushMicrotasks();
    await sleep(EVENT_ACK_DELAY_MS * 4);
    t.same(sent, through ? [] : [{ seq: 2, refused: 0, refusedTypes: [] }], `through=${through}: only what went before close`);
    t.equal(counted.length, sent.length);
  }
});

t.test('results: each id waits for its own write; ids on disk share one ack, within the delay or at RESULT_ACK_IDS', async (t) => {
  const sent: string[][] = [];
  const r = new ResultAcks((ids) => sent.push(ids));
  const w1 = deferred(), w2 = deferred();
  r.add('a', w1.promise);
  r.add('b', w2.promise); // recorded while the write covering 'a' is in flight: a later write
  w1.resolve(); await flushMicrotasks();
  await sleep(RESULT_ACK_DELAY_MS * 4);
  t.same(sent, [['a']], "'b' is not acknowledged by the write that took 'a'");
  w2.resolve(); await flushMicrotasks();
  t.same(sent, [['a']], 'not at once');
  await sleep(RESULT_ACK_DELAY_MS * 4);
  t.same(sent, [['a'], ['b']]);
  const w = deferred();
  for (let i = 0; i < RESULT_ACK_IDS; i++) r.add(`id${i}`, w.promise);
  w.resolve(); await flushMicrotasks();
  t.equal(sent.length, 3, 'a full ack goes at once');
  t.equal(sent[2]!.length, RESULT_ACK_IDS);
  r.add('late', Promise.resolve());
  r.close();
  await sleep(RESULT_ACK_DELAY_MS * 4);
  t.equal(sent.length, 3, 'nothing after close');
});
