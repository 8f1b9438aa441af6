/**
 * A quick action's output rides with its result (hub feature "result_output"): one message up
 * instead of one per chunk plus one. Only to a hub that lists the feature in its Welcome; an
 * older hub gets the first protocol (output messages, then a bare result), also for a result
 * held from a hub that had the feature and sent again after a reconnect. Output past the bounds
 * (RESULT_OUTPUT_MAX_BYTES, the hold of STARTED_HOLD_MS) goes in messages of its own, in order.
 * Real agent, real mTLS gRPC against a stand-in hub that records what the agent sends.
 */
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { v1 } from '../common/proto.js';
import { createCA, generateKey, issueCertificate } from '../certs/index.js';
import { Agent, STARTED_HOLD_MS } from '../agent/agent.js';
import { RESULT_OUTPUT, RESULT_OUTPUT_MAX_BYTES } from '../common/features.js';
import { tempDir, waitFor } from './helpers/hub.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

type Stream = grpc.ServerDuplexStream<T.AgentMessage__Output, T.HubMessage>;

t.test('output with the result to a hub that takes it; the first protocol to one that does not', async (t) => {
  const ca = createCA({ commonName: 'result-output test CA' });
  const sk = generateKey('ec-p256');
  const serverCert = issueCertificate({ issuerCertPem: ca.certPem, issuerKey: ca.key, subjectPublicKey: sk.publicKey, subject: { commonName: 'hub' }, ipAddresses: ['127.0.0.1'], usage: 'server', notAfter: new Date(Date.now() + 3_600_000) });
  const ck = generateKey('ec-p256');
  const clientCert = issueCertificate({ issuerCertPem: ca.certPem, issuerKey: ca.key, subjectPublicKey: ck.publicKey, subject: { commonName: 'agent' }, uris: ['spiffe://trellis.local/tenant/default/agent/a1'], usage: 'client', notAfter: new Date(Date.now() + 3_600_000) });
  const msgs: T.AgentMessage__Output[] = [];
  let stream: Stream | undefined;
  let streams = 0;
  // What the stand-in hub lists in its next Welcome.
  let features: string[] = [RESULT_OUTPUT];
  const server = new grpc.Server();
  server.addService(v1.AgentChannel.service, {
    Connect: (call: Stream) => {
      call.on('data', (m: T.AgentMessage__Output) => {
        msgs.push(m);
        if (m.hello) {
          stream = call;
          streams++;
          call.write({ welcome: { agentId: 'a1', tenant: 'default', heartbeatIntervalMs: 60_000, caBundle: [], features } });
        }
      });
      call.on('error', () => undefined);
    },
    Renew: (_c: unknown, cb: grpc.sendUnaryData<T.RenewResponse>) => cb({ code: grpc.status.UNIMPLEMENTED, details: 'no' }),
  });
  const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0',
    grpc.ServerCredentials.createSsl(Buffer.from(ca.certPem), [{ private_key: Buffer.from(sk.privateKeyPem), cert_chain: Buffer.from(serverCert) }], true),
    (e, p) => (e ? rej(e) : res(p))));
  t.teardown(() => server.forceShutdown());
  await using d = await tempDir();
  const files = { certFile: join(d.path, 'cert.pem'), keyFile: join(d.path, 'key.pem'), caFile: join(d.path, 'ca.pem') };
  writeFileSync(files.certFile, clientCert, { mode: 0o600 });
  writeFileSync(files.keyFile, ck.privateKeyPem, { mode: 0o600 });
  writeFileSync(files.caFile, ca.certPem, { mode: 0o600 });
  const agent = await Agent.start({ dataDir: join(d.path, 'data'), ...files, hub: `127.0.0.1:${port}`, log: pino({ level: 'silent' }), maxBackoffMs: 200 });
  t.teardown(() => agent.close());
  await waitFor(() => agent.channel.state === 'ready' && !!stream, 10_000, 'welcomed');
  const action = (executionId: string, argv: string[]): T.HubMessage => ({ action: {
    executionId, action: 'test.run', argv, env: {}, cwd: '', timeoutMs: 10_000, sealedEnv: {}, runner: 'command', runAs: '', script: Buffer.alloc(0), scriptName: '', sealedStdin: '',
  } });
  const of = (id: string) => msgs.filter((m) => (m.started ?? m.output ?? m.result)?.executionId === id);
  const kinds = (id: string) => of(id).map((m) => m.msg);
  /** Every output chunk of an execution as the hub would take it: output messages and the result's, in arrival order. */
  const text = (id: string) => of(id).flatMap((m) => (m.output ? [m.output] : m.result?.output ?? [])).map((o) => o.data.toString()).join('');
  const seqs = (id: string) => of(id).flatMap((m) => (m.output ? [m.output] : m.result?.output ?? [])).map((o) => Number(o.seq));
  const run = async (id: string, argv: string[]) => {
    stream!.write(action(id, argv));
    await waitFor(() => kinds(id).includes('result'), 10_000, `${id}: result`);
    await new Promise((r) => setTimeout(r, STARTED_HOLD_MS * 3)); // nothing held comes later
  };

  await run('quick', ['sh', '-c', 'echo out; echo err >&2']);
  t.same(kinds('quick'), ['result'], 'a quick action with output: one message, its result');
  const r = of('quick')[0]!.result!;
  t.same(r.output.map((o) => [o.stream, o.data.toString()]).sort(), [['STDERR', 'err\n'], ['STDOUT', 'out\n']], 'carrying both streams');
  t.equal(r.status, 'succeeded');

  await run('slow', ['sh', '-c', `echo first; sleep ${(STARTED_HOLD_MS * 6) / 1000}; echo second`]);
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
  const before = streams;
  const resentOld = of('quick').length;
  stream!.end();
  await waitFor(() => streams > before && agent.channel.state === 'ready', 10_000, 'reconnected to the older hub');
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
