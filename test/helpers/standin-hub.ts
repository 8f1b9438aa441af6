/**
 * A stand-in hub for agent-side tests: a real gRPC server over real mTLS on loopback that speaks
 * AgentChannel, records every stream with the messages it received, welcomes each hello (with the
 * features `features()` lists at that moment) and answers nothing else by itself; the test
 * decides what to send, acknowledge or cut. Its own CA issues the server and the agent
 * certificates.
 */
import * as grpc from '@grpc/grpc-js';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { v1 } from '../../common/proto.js';
import { createCA, generateKey, issueCertificate } from '../../certs/index.js';
import { Agent } from '../../agent/agent.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

type Stream = grpc.ServerDuplexStream<T.AgentMessage__Output, T.HubMessage>;
interface Teardown { teardown(fn: () => unknown): void }

export interface StandInHub {
  port: number;
  caPem: string;
  /** The agent's certificate (SPIFFE id of agent a1 in tenant default) and key. */
  certPem: string;
  keyPem: string;
  /** Every stream, oldest first, with the messages it received. */
  streams: { call: Stream; msgs: T.AgentMessage__Output[] }[];
}

export async function standInHub(t: Teardown, o: { features?: () => string[] } = {}): Promise<StandInHub> {
  const ca = createCA({ commonName: 'stand-in hub test CA' });
  const sk = generateKey('ec-p256');
  const serverCert = issueCertificate({ issuerCertPem: ca.certPem, issuerKey: ca.key, subjectPublicKey: sk.publicKey, subject: { commonName: 'hub' }, ipAddresses: ['127.0.0.1'], usage: 'server', notAfter: new Date(Date.now() + 3_600_000) });
  const ck = generateKey('ec-p256');
  const certPem = issueCertificate({ issuerCertPem: ca.certPem, issuerKey: ca.key, subjectPublicKey: ck.publicKey, subject: { commonName: 'agent' }, uris: ['spiffe://trellis.local/tenant/default/agent/a1'], usage: 'client', notAfter: new Date(Date.now() + 3_600_000) });
  const streams: StandInHub['streams'] = [];
  const server = new grpc.Server();
  server.addService(v1.AgentChannel.service, {
    Connect: (call: Stream) => {
      const s = { call, msgs: [] as T.AgentMessage__Output[] };
      streams.push(s);
      call.on('data', (m: T.AgentMessage__Output) => {
        s.msgs.push(m);
        if (m.hello) call.write({ welcome: { agentId: 'a1', tenant: 'default', heartbeatIntervalMs: 60_000, caBundle: [], features: o.features?.() ?? [] } });
      });
      call.on('error', () => undefined);
    },
    Renew: (_c: unknown, cb: grpc.sendUnaryData<T.RenewResponse>) => cb({ code: grpc.status.UNIMPLEMENTED, details: 'no' }),
  });
  const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0',
    grpc.ServerCredentials.createSsl(Buffer.from(ca.certPem), [{ private_key: Buffer.from(sk.privateKeyPem), cert_chain: Buffer.from(serverCert) }], true),
    (e, p) => (e ? rej(e) : res(p))));
  t.teardown(() => server.forceShutdown());
  return { port, caPem: ca.certPem, certPem, keyPem: ck.privateKeyPem, streams };
}

/** A real agent (agent/agent.ts) with the stand-in's certificate, its files in `dir`; closed at teardown. */
export async function agentFor(t: Teardown, hub: StandInHub, dir: string, o: { outputHoldMs?: number } = {}): Promise<Agent> {
  const files = { certFile: join(dir, 'cert.pem'), keyFile: join(dir, 'key.pem'), caFile: join(dir, 'ca.pem') };
  writeFileSync(files.certFile, hub.certPem, { mode: 0o600 });
  writeFileSync(files.keyFile, hub.keyPem, { mode: 0o600 });
  writeFileSync(files.caFile, hub.caPem, { mode: 0o600 });
  const agent = await Agent.start({ dataDir: join(dir, 'data'), ...files, hub: `127.0.0.1:${hub.port}`, log: pino({ level: 'silent' }), maxBackoffMs: 200, ...o });
  t.teardown(() => agent.close());
  return agent;
}

/** An ActionRequest for the command runner. */
export const commandAction = (executionId: string, argv: string[]): T.HubMessage => ({ action: {
  executionId, action: 'test.run', argv, env: {}, cwd: '', timeoutMs: 10_000, sealedEnv: {}, runner: 'command', runAs: '', script: Buffer.alloc(0), scriptName: '', sealedStdin: '',
} });
