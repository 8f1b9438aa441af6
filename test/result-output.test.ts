/**
 * A quick action's output rides with its result (hub feature "result_output"): one message up
 * instead of one per chunk plus one. Only to a hub that lists the feature in its Welcome; an
 * older hub gets the first protocol (output messages, then a bare result), also for a result
 * held from a hub that had the feature and sent again after a reconnect. Output past the bounds
 * (RESULT_OUTPUT_MAX_BYTES, the hold: STARTED_HOLD_MS, or the agent's outputHoldMs) goes in messages of its own, in order.
 * Real agent, real mTLS gRPC against a stand-in hub that records what the agent sends.
 */
import t from 'tap';
import { STARTED_HOLD_MS } from '../agent/agent.js';
import { RESULT_OUTPUT, RESULT_OUTPUT_MAX_BYTES } from '../common/features.js';
import { tempDir, waitFor } from './helpers/hub.js';
import { agentFor, commandAction, standInHub } from './helpers/standin-hub.js';

t.test('output with the result to a hub that takes it; the first protocol to one that does not', async (t) => {
  // What the stand-in hub lists in its next Welcome.
  let features: string[] = [RESULT_OUTPUT];
  const hub = await standInHub(t, { features: () => features });
  const msgs = () => hub.streams.flatMap((x) => x.msgs);
  await using d = await tempDir();
  // Held long enough that a loaded machine cannot make a quick action outlast the hold.
  const HOLD_MS = 1000;
  const agent = await agentFor(t, hub, d.path, { outputHoldMs: HOLD_MS });
  await waitFor(() => agent.channel.state === 'ready' && hub.streams.length > 0, 10_000, 'welcomed');
  const stream = () => hub.streams.at(-1)!.call;
  const action = commandAction;
  const of = (id: string) => msgs().filter((m) => (m.started ?? m.output ?? m.result)?.executionId === id);
  const kinds = (id: string) => of(id).map((m) => m.msg);
  /** Every output chunk of an execution as the hub would take it: output messages and the result's, in arrival order. */
  const text = (id: string) => of(id).flatMap((m) => (m.output ? [m.output] : m.result?.output ?? [])).map((o) => o.data.toString()).join('');
  const seqs = (id: string) => of(id).flatMap((m) => (m.output ? [m.output] : m.result?.output ?? [])).map((o) => Number(o.seq));
  const run = async (id: string, argv: string[]) => {
    stream().write(action(id, argv));
    await waitFor(() => kinds(id).includes('result'), 10_000, `${id}: result`);
    await new Promise((r) => setTimeout(r, STARTED_HOLD_MS * 3)); // a started report held would come by then
  };

  await run('quick', ['sh', '-c', 'echo out; echo err >&2']);
  t.same(kinds('quick'), ['result'], 'a quick action with output: one message, its result');
  const r = of('quick')[0]!.result!;
  t.same(r.output.map((o) => [o.stream, o.data.toString()]).sort(), [['STDERR', 'err\n'], ['STDOUT', 'out\n']], 'carrying both streams');
  t.equal(r.status, 'succeeded');

  await run('slow', ['sh', '-c', `echo first; sleep ${(HOLD_MS * 3) / 1000}; echo second`]);
  t.same(kinds('slow'), ['output', 'result'], 'output held longer than the hold goes on its own, before the result');
  t.equal(text('slow'), 'first\nsecond\n');
  t.same(seqs('slow'), [1, 2], 'in order');

  const big = RESULT_OUTPUT_MAX_BYTES * 3;
  await run('big', ['sh', '-c', `head -c ${big} /dev/zero | tr '\\0' x`]);
  t.ok(kinds('big').filter((k) => k === 'output').length >= 1, 'output over the bound goes in output messages');
  t.equal(text('big'), 'x'.repeat(big), 'all of it, once, in order');
  t.same(seqs('big'), [...seqs('big')].sort((a, b) => a - b));
  t.ok(of('big').every((m) => !m.result || m.result.output.reduce((n, o) => n + o.data.length, 0) <= RESULT_OUTPUT_MAX_BYTES), 'a result carries at most RESULT_OUTPUT_MAX_BYTES');

  // An older hub (no features): the first protocol.
  features = [];
  const before = hub.streams.length;
  const resentOld = of('quick').length;
  stream().end();
  await waitFor(() => hub.streams.length > before && hub.streams.at(-1)!.msgs.some((m) => m.hello) && agent.channel.state === 'ready', 10_000, 'reconnected to the older hub');
  await waitFor(() => of('quick').length >= resentOld + 3, 10_000, 'the unacknowledged result sent again');
  await run('old', ['sh', '-c', 'echo out']);
  t.same(kinds('old'), ['output', 'result'], 'to an older hub: output, then the result');
  t.same(of('old').at(-1)!.result!.output, [], 'the result carries no output');
  t.equal(text('old'), 'out\n');
  // The results the first hub never acknowledged were sent again: their output first, then bare.
  const again = of('quick').slice(resentOld);
  t.same(again.map((m) => m.msg), ['output', 'output', 'result'], 'an unacknowledged result held with output, resent to an older hub: output messages, then the result');
  t.same(again.at(-1)!.result!.output, []);
});
