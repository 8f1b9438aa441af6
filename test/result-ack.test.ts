/**
 * Action results are acknowledged: the hub answers a result with a ResultAck once it is in the
 * history on disk, and the agent keeps every result it sent until then and sends it again on its
 * next stream. Without this a hub killed between receiving a result and writing it lost it (the
 * soak counted thousands) and the execution ended `abandoned` although it had run.
 *
 * The agent side runs against a stand-in hub: a real gRPC server over real mTLS on loopback that
 * speaks AgentChannel but decides itself when (and whether) to acknowledge.
 */
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import { startHub, waitFor } from './helpers/hub.js';
import { createRule, file, install } from './helpers/admin.js';
import { v1 } from '../common/proto.js';
import { CLIENT_OPTIONS } from '../common/grpc-options.js';
import { HubChannel } from '../agent/channel.js';
import { standInHub } from './helpers/standin-hub.js';
import { agentPaths } from '../agent/identity.js';
import { readFile } from 'node:fs/promises';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

/** tap's subtest type. */
type Test = Parameters<Parameters<typeof t.test>[0]>[0];

/** A stand-in hub (test/helpers/standin-hub.ts) and an agent channel to it. */
async function standInChannel(t: Test) {
  const hub = await standInHub(t);
  const { streams } = hub;
  const channel = new HubChannel({
    target: `127.0.0.1:${hub.port}`,
    credentials: () => ({ caPem: hub.caPem, keyPem: hub.keyPem, certPem: hub.certPem }),
    hello: () => ({ facts: { hostname: 'h' }, labels: {} }),
    onAction: () => undefined, onCancel: () => undefined,
    log: pino({ level: 'silent' }), maxBackoffMs: 200,
  });
  t.teardown(() => channel.close());
  return { streams, channel };
}

const result = (id: string): T.AgentMessage => ({ result: { executionId: id, status: 'succeeded', exitCode: 0, error: '', startedMs: 1, finishedMs: 2 } });
const resultIds = (msgs: T.AgentMessage__Output[]) => msgs.filter((m) => m.result).map((m) => m.result!.executionId);

t.test('the agent sends an unacknowledged result again on its next stream, and an acknowledged one never again', async (t) => {
  const { streams, channel } = await standInChannel(t);
  channel.start();
  await waitFor(() => channel.state === 'ready', 10_000);
  channel.send(result('ex-1'));
  channel.send(result('ex-2'));
  await waitFor(() => resultIds(streams[0]!.msgs).length === 2, 10_000);
  t.equal(channel.unackedResultCount, 2, 'both kept until the hub acknowledges them');
  streams[0]!.call.write({ resultAck: { executionIds: ['ex-1'] } });
  await waitFor(() => channel.unackedResultCount === 1, 10_000);

  // The hub "dies" before it wrote ex-2: the stream ends; the agent reconnects by itself.
  streams[0]!.call.end();
  await waitFor(() => streams.length === 2 && streams[1]!.msgs.some((m) => m.hello), 15_000);
  await waitFor(() => resultIds(streams[1]!.msgs).length >= 1, 10_000);
  t.same(resultIds(streams[1]!.msgs), ['ex-2'], 'only the unacknowledged result goes again');

  streams[1]!.call.write({ resultAck: { executionIds: ['ex-2'] } });
  await waitFor(() => channel.unackedResultCount === 0, 10_000);
  streams[1]!.call.end();
  await waitFor(() => streams.length === 3 && streams[2]!.msgs.some((m) => m.hello), 15_000);
  channel.send(result('ex-3')); // a marker: anything re-sent would have gone before it
  await waitFor(() => resultIds(streams[2]!.msgs).length >= 1, 10_000);
  t.same(resultIds(streams[2]!.msgs), ['ex-3'], 'acknowledged results are not sent again');
});

t.test('a result produced while disconnected goes out once on the next stream', async (t) => {
  const { streams, channel } = await standInChannel(t);
  channel.start();
  await waitFor(() => channel.state === 'ready', 10_000);
  streams[0]!.call.end();
  await waitFor(() => channel.state !== 'ready', 10_000).catch(() => undefined);
  channel.send(result('while-down'));
  await waitFor(() => streams.length >= 2 && resultIds(streams.at(-1)!.msgs).length >= 1, 15_000);
  const all = streams.flatMap((s) => resultIds(s.msgs));
  t.same(all, ['while-down'], 'sent exactly once');
});

/** A newly enrolled agent's raw stream on `h`, welcomed; every hub message lands in `got`. */
async function welcomedStream(t: Test, h: Awaited<ReturnType<typeof startHub>>): Promise<{ call: grpc.ClientDuplexStream<T.AgentMessage, T.HubMessage__Output>; got: T.HubMessage__Output[] }> {
  const { dataDir } = await h.enroll();
  const p = agentPaths(dataDir);
  const [caPem, keyPem, certPem] = await Promise.all([readFile(p.ca, 'utf8'), readFile(p.key, 'utf8'), readFile(p.cert, 'utf8')]);
  const client = new v1.AgentChannel(h.agentAddr, grpc.credentials.createSsl(Buffer.from(caPem), Buffer.from(keyPem), Buffer.from(certPem)), { ...CLIENT_OPTIONS }) as unknown as grpc.Client & {
    Connect(md: grpc.Metadata, o: grpc.CallOptions): grpc.ClientDuplexStream<T.AgentMessage, T.HubMessage__Output>;
  };
  t.teardown(() => client.close());
  const call = client.Connect(new grpc.Metadata(), {});
  t.teardown(() => call.cancel());
  call.on('error', () => undefined);
  const got: T.HubMessage__Output[] = [];
  call.on('data', (m: T.HubMessage__Output) => got.push(m));
  call.write({ hello: { facts: { hostname: 'raw' }, labels: {} } });
  await waitFor(() => got.some((m) => m.welcome), 10_000);
  return { call, got };
}

t.test('the real hub acknowledges a result once it is on disk, also for an execution it does not know', async (t) => {
  const h = await startHub();
  t.teardown(() => h.close());
  const { call, got } = await welcomedStream(t, h);
  call.write(result('01unknownexecution'));
  await waitFor(() => got.some((m) => m.resultAck), 10_000);
  t.same(got.find((m) => m.resultAck)!.resultAck!.executionIds, ['01unknownexecution'], 'acknowledged by id');
  call.write({ result: { executionId: 'x'.repeat(200), status: 'succeeded', exitCode: 0, error: '', startedMs: 1, finishedMs: 2 } });
  call.write(result('marker'));
  await waitFor(() => got.filter((m) => m.resultAck).length >= 2, 10_000);
  t.same(got.filter((m) => m.resultAck).map((m) => m.resultAck!.executionIds[0]), ['01unknownexecution', 'marker'], 'an oversized id is not echoed back');
});

t.test('results that arrive together share one acknowledgement; every id is acknowledged once', async (t) => {
  const h = await startHub({ config: { executions: { perAgentConcurrency: 100 } } });
  t.teardown(() => h.close());
  await install(h, [file('pack.yaml', 'name: ra\nversion: 1.0.0\ndescription: result acks\n'),
    file('actions/noop.yaml', 'name: noop\ndescription: nothing\nrunner: command\ncommand: ["true", "{{ t }}"]\nparameters:\n  t: { type: string, default: "" }\n')]);
  await createRule(h, { name: 'ra-fire', trigger: 'core.ra', action: { ref: 'ra.noop', parameters: { t: '{{ trigger.id }}' } }, target: { agent: '{{ trigger.agent }}' } });
  const { call, got } = await welcomedStream(t, h);
  const N = 100;
  call.write({ events: { seq: 1, events: Array.from({ length: N }, (_, i) => ({ id: `ra-${i}`, type: 'core.ra', payloadJson: Buffer.from('{}'), timeMs: Date.now() })) } });
  await waitFor(() => got.filter((m) => m.action).length >= N, 30_000, 'actions');
  const ids = got.filter((m) => m.action).map((m) => m.action!.executionId);
  for (const id of ids) call.write(result(id));
  const acked = () => got.filter((m) => m.resultAck).flatMap((m) => m.resultAck!.executionIds);
  await waitFor(() => acked().length >= N, 30_000, 'acks');
  await new Promise((r) => setTimeout(r, 200));
  t.same([...acked()].sort(), [...ids].sort(), 'every result acknowledged exactly once');
  const acks = got.filter((m) => m.resultAck).length;
  t.ok(acks < N, `${N} results acknowledged in ${acks} messages (results recorded during one history flush share its ack)`);
});
