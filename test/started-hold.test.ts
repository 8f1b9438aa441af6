/**
 * The agent holds an action's `started` report for STARTED_HOLD_MS: an action whose output or
 * result comes first sends none (two messages for a quick action, not three), one that runs
 * longer still reports its start, before its result. Real agent (agent/agent.ts), real mTLS gRPC
 * against a stand-in hub that records what the agent sends.
 */
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { v1 } from '../common/proto.js';
import { createCA, generateKey, issueCertificate } from '../certs/index.js';
import { Agent, STARTED_HOLD_MS } from '../agent/agent.js';
import { tempDir, waitFor } from './helpers/hub.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

type Stream = grpc.ServerDuplexStream<T.AgentMessage__Output, T.HubMessage>;

t.test('a quick action sends no started report; a longer one reports its start before its result', async (t) => {
  const ca = createCA({ commonName: 'started-hold test CA' });
  const sk = generateKey('ec-p256');
  const serverCert = issueCertificate({ issuerCertPem: ca.certPem, issuerKey: ca.key, subjectPublicKey: sk.publicKey, subject: { commonName: 'hub' }, ipAddresses: ['127.0.0.1'], usage: 'server', notAfter: new Date(Date.now() + 3_600_000) });
  const ck = generateKey('ec-p256');
  const clientCert = issueCertificate({ issuerCertPem: ca.certPem, issuerKey: ca.key, subjectPublicKey: ck.publicKey, subject: { commonName: 'agent' }, uris: ['spiffe://trellis.local/tenant/default/agent/a1'], usage: 'client', notAfter: new Date(Date.now() + 3_600_000) });
  const msgs: T.AgentMessage__Output[] = [];
  let stream: Stream | undefined;
  const server = new grpc.Server();
  server.addService(v1.AgentChannel.service, {
    Connect: (call: Stream) => {
      stream = call;
      call.on('data', (m: T.AgentMessage__Output) => {
        msgs.push(m);
        if (m.hello) call.write({ welcome: { agentId: 'a1', tenant: 'default', heartbeatIntervalMs: 60_000, caBundle: [] } });
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
  const of = (id: string) => msgs.filter((m) => (m.started ?? m.output ?? m.result)?.executionId === id).map((m) => m.msg);

  stream!.write(action('quick', ['true']));
  await waitFor(() => of('quick').includes('result'), 10_000, 'quick result');
  await new Promise((r) => setTimeout(r, STARTED_HOLD_MS * 3));
  t.same(of('quick'), ['result'], 'a quick action: its result only, no started report');

  stream!.write(action('talks', ['echo', 'hello']));
  await waitFor(() => of('talks').includes('result'), 10_000, 'talks result');
  await new Promise((r) => setTimeout(r, STARTED_HOLD_MS * 3));
  t.notOk(of('talks').includes('started'), 'output came first: no started report');
  t.ok(of('talks').includes('output'));

  const slowMs = STARTED_HOLD_MS * 10;
  stream!.write(action('slow', ['sleep', String(slowMs / 1000)]));
  await waitFor(() => of('slow').includes('result'), 10_000, 'slow result');
  t.same(of('slow'), ['started', 'result'], 'a longer action reports its start, before its result');
  const started = msgs.find((m) => m.started?.executionId === 'slow')!.started!;
  t.ok(Number(started.pid) > 0, 'with the pid');
});
