/**
 * The agent holds an action's `started` report for STARTED_HOLD_MS: an action whose output or
 * result comes first sends none (two messages for a quick action, not three), one that runs
 * longer still reports its start, before its result. Real agent (agent/agent.ts), real mTLS gRPC
 * against a stand-in hub that records what the agent sends.
 */
import t from 'tap';
import { STARTED_HOLD_MS } from '../agent/agent.js';
import { tempDir, waitFor } from './helpers/hub.js';
import { agentFor, commandAction, standInHub } from './helpers/standin-hub.js';

t.test('a quick action sends no started report; a longer one reports its start before its result', async (t) => {
  const hub = await standInHub(t);
  const msgs = () => hub.streams.flatMap((x) => x.msgs);
  await using d = await tempDir();
  const agent = await agentFor(t, hub, d.path);
  await waitFor(() => agent.channel.state === 'ready' && hub.streams.length > 0, 10_000, 'welcomed');
  const stream = hub.streams[0]!.call;
  const action = commandAction;
  const of = (id: string) => msgs().filter((m) => (m.started ?? m.output ?? m.result)?.executionId === id).map((m) => m.msg);

  stream.write(action('quick', ['true']));
  await waitFor(() => of('quick').includes('result'), 10_000, 'quick result');
  await new Promise((r) => setTimeout(r, STARTED_HOLD_MS * 3));
  t.same(of('quick'), ['result'], 'a quick action: its result only, no started report');

  stream.write(action('talks', ['echo', 'hello']));
  await waitFor(() => of('talks').includes('result'), 10_000, 'talks result');
  await new Promise((r) => setTimeout(r, STARTED_HOLD_MS * 3));
  t.notOk(of('talks').includes('started'), 'output came first: no started report');
  t.ok(of('talks').includes('output'));

  const slowMs = STARTED_HOLD_MS * 10;
  stream.write(action('slow', ['sleep', String(slowMs / 1000)]));
  await waitFor(() => of('slow').includes('result'), 10_000, 'slow result');
  t.same(of('slow'), ['started', 'result'], 'a longer action reports its start, before its result');
  const started = msgs().find((m) => m.started?.executionId === 'slow')!.started!;
  t.ok(Number(started.pid) > 0, 'with the pid');
});
