/**
 * "Every change and every refused call is audited", proven by walking every mutating path:
 * each admin-port method the authorization table marks as a mutation (called for real, with an
 * empty request: whether it succeeds or is refused, it must leave a record), enrollment done
 * and refused, the agent port (TLS handshake refused, stream refused, renewal done and
 * refused) and the web port (webhook POST accepted and refused). The join token secret never
 * reaches the audit log.
 */
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import * as https from 'node:https';
import { readFile } from 'node:fs/promises';
import { startHub, callError, type TestHub } from './helpers/hub.js';
import { serviceDefinitions, v1 } from '../common/proto.js';
import { CLIENT_OPTIONS } from '../common/grpc-options.js';
import { METHOD_TABLE, isMutation } from '../hub/authz/index.js';
import { TLS_METHOD } from '../hub/grpc/agent-tls-audit.js';
import { createCSR, generateKey } from '../certs/index.js';
import { agentPaths } from '../agent/identity.js';
import { signWebhook } from '../hub/webhooks/index.js';
import { MemoryAudit, type AuditRecord } from '../hub/audit/index.js';
import { RefusalThrottle } from '../hub/audit/throttle.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

/** Calls one method with an empty request (unary or server stream) and waits for its end. */
function callEmpty(h: TestHub, def: grpc.MethodDefinition<unknown, unknown>, md: grpc.Metadata): Promise<grpc.ServiceError | undefined> {
  const client = new grpc.Client(h.adminAddr, grpc.credentials.createSsl(Buffer.from(h.caPem)), CLIENT_OPTIONS);
  const opts = { deadline: Date.now() + 30_000 };
  const end = (e?: grpc.ServiceError | null) => { client.close(); return e ?? undefined; };
  if (def.responseStream) {
    return new Promise((resolve) => {
      const s = client.makeServerStreamRequest(def.path, def.requestSerialize, def.responseDeserialize, {}, md, opts);
      s.on('data', () => undefined);
      s.on('error', (e: grpc.ServiceError) => resolve(end(e)));
      s.on('end', () => resolve(end()));
    });
  }
  return new Promise((resolve) => client.makeUnaryRequest(def.path, def.requestSerialize, def.responseDeserialize, {}, md, opts, (e) => resolve(end(e))));
}

function post(h: TestHub, path: string, body: string, headers: Record<string, string> = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: '127.0.0.1', port: h.hub.webPort, path, method: 'POST', ca: h.caPem, servername: 'localhost', agent: false,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers },
    }, (res) => { res.resume().on('end', () => resolve(res.statusCode ?? 0)); });
    req.on('error', reject);
    req.end(body);
  });
}

type ChannelClient = grpc.Client & {
  Connect(md: grpc.Metadata, opts: grpc.CallOptions): grpc.ClientDuplexStream<T.AgentMessage, T.HubMessage__Output>;
  Renew(req: T.RenewRequest, md: grpc.Metadata, opts: grpc.CallOptions, cb: (e: grpc.ServiceError | null) => void): void;
};

t.test('every mutating path of every port leaves an audit record, whatever its result', async (t) => {
  await using h = await startHub();
  const audit = h.hub.components.audit;
  const recordsOf = async (pred: (r: AuditRecord) => boolean) => (await audit.query({ limit: 10_000 })).filter(pred);

  // Agent fixtures first (the walk below rotates keys and logs the session out).
  const token = await h.token({ uses: 2 });
  const enrolled = await h.enroll({ token });
  const refusedEnroll = await callError(h.enroll({ token, labels: { tier: 'db' } }));
  t.equal(refusedEnroll?.code, 'TRELLIS_E_INVALID_ARGUMENT', 'an enrollment refused (label not allowed)');
  const tmd = h.admin.metadata.clone();
  tmd.set('x-trellis-tenant', 'default');
  const hook = await new Promise<T.CreateWebhookResponse__Output>((resolve, reject) =>
    h.admin.webhooks.CreateWebhook({ name: 'walk', description: '' }, tmd, (e: grpc.ServiceError | null, r?: T.CreateWebhookResponse__Output) => (e ? reject(e) : resolve(r!))));

  // 1. The admin port: every mutating method in the table, called with an empty request.
  const md = tmd;
  const methods = serviceDefinitions().flatMap(({ definition }) => Object.values(definition))
    .filter((d) => METHOD_TABLE[d.path]?.kind !== 'agent-cert' && isMutation(d.path))
    .sort((a, b) => Number(a.path.endsWith('/Logout')) - Number(b.path.endsWith('/Logout'))); // Logout last: it ends the session
  t.ok(methods.length >= 40, `${methods.length} mutating admin-port methods`);
  const missing: string[] = [];
  for (const def of methods) {
    await callEmpty(h, def as grpc.MethodDefinition<unknown, unknown>, md);
    if ((await recordsOf((r) => r.method === def.path)).length === 0) missing.push(def.path);
  }
  t.same(missing, [], 'every mutating admin-port method left a record');

  // 2. Enrollment, done and refused, never with the token's secret.
  const enrolls = await recordsOf((r) => r.method.endsWith('/Enroll'));
  t.ok(enrolls.some((r) => r.result === 'ok' && r.target.includes(enrolled.agentId)), 'the enrollment done, naming the agent');
  t.ok(enrolls.some((r) => r.result === 'invalid' && /"tier"/.test(r.detail)), 'the enrollment refused, with the reason');
  const secretPart = token.split('.')[2]!; // tj1.<id>.<secret>.<ca-sha256>
  t.notOk((await recordsOf(() => true)).some((r) => JSON.stringify(r).includes(secretPart)), 'no record holds the join token secret');

  // 3. The agent port.
  const p = agentPaths(enrolled.dataDir);
  const [caPem, keyPem, certPem] = await Promise.all([readFile(p.ca, 'utf8'), readFile(p.key, 'utf8'), readFile(p.cert, 'utf8')]);
  const mtls = new v1.AgentChannel(h.agentAddr, grpc.credentials.createSsl(Buffer.from(caPem), Buffer.from(keyPem), Buffer.from(certPem)), CLIENT_OPTIONS) as unknown as ChannelClient;
  const csr = createCSR({ privateKey: generateKey('ec-p256').privateKey, subject: { commonName: 'x' } });
  const renew = () => new Promise<grpc.ServiceError | null>((resolve) => mtls.Renew({ csr }, new grpc.Metadata(), { deadline: Date.now() + 15_000 }, (e) => resolve(e)));
  t.equal(await renew(), null, 'a renewal done');
  const bad = await new Promise<grpc.ServiceError | null>((resolve) => mtls.Renew({ csr: 'not a csr' }, new grpc.Metadata(), { deadline: Date.now() + 15_000 }, (e) => resolve(e)));
  t.equal(bad?.code, grpc.status.INVALID_ARGUMENT, 'a renewal refused (bad CSR)');
  const conn = mtls.Connect(new grpc.Metadata(), { deadline: Date.now() + 15_000 });
  const connErr = await new Promise<grpc.ServiceError>((resolve) => { conn.on('error', resolve); conn.on('data', () => undefined); conn.write({ hello: { facts: { hostname: 'x' }, labels: {} } }); });
  t.equal(connErr.code, grpc.status.PERMISSION_DENIED, 'a stream refused (its certificate was replaced by the renewal)');
  mtls.close();
  const noCert = new v1.AgentChannel(h.agentAddr, grpc.credentials.createSsl(Buffer.from(caPem)), CLIENT_OPTIONS) as unknown as ChannelClient;
  const hs = noCert.Connect(new grpc.Metadata(), { deadline: Date.now() + 15_000 });
  await new Promise((resolve) => { hs.on('error', resolve); hs.on('data', () => undefined); hs.write({ hello: { labels: {} } }); });
  noCert.close();

  const agentPort = await recordsOf((r) => r.method.includes('AgentChannel') || r.method === TLS_METHOD);
  t.ok(agentPort.some((r) => r.method.endsWith('/Renew') && r.result === 'ok' && r.actor === `agent:${enrolled.agentId}`), 'the renewal done');
  t.ok(agentPort.some((r) => r.method.endsWith('/Renew') && r.result === 'invalid'), 'the renewal refused');
  t.ok(agentPort.some((r) => r.method.endsWith('/Connect') && r.result === 'unauthenticated' && r.actor === `agent:${enrolled.agentId}`), 'the stream refused');
  t.ok(agentPort.some((r) => r.method === TLS_METHOD && r.result === 'unauthenticated'), 'the TLS handshake without a client certificate');

  // 4. The web port.
  const body = '{"a":1}';
  t.equal(await post(h, '/webhooks/walk', body, { 'x-trellis-signature': signWebhook(hook.secret, body, Math.floor(Date.now() / 1000)) }), 202, 'a webhook accepted');
  t.equal(await post(h, '/webhooks/walk', body, { 'x-trellis-signature': 't=1,v1=00' }), 401, 'a webhook refused');
  const web = await recordsOf((r) => r.method === 'POST /webhooks');
  t.ok(web.some((r) => r.result === 'ok'), 'the accepted POST');
  t.ok(web.some((r) => r.result === 'unauthenticated'), 'the refused POST');
});

t.test('a flood of refusals cannot fill the audit log: identical ones are counted, distinct ones are bounded', async (t) => {
  await using h = await startHub();
  const audit = h.hub.components.audit;
  const anon = new v1.Enrollment(h.adminAddr, grpc.credentials.createSsl(Buffer.from(h.caPem)), CLIENT_OPTIONS) as unknown as grpc.Client & {
    Enroll(req: T.EnrollRequest, md: grpc.Metadata, opts: grpc.CallOptions, cb: (e: grpc.ServiceError | null) => void): void;
  };
  const bad = `tj1.0123456789abcdef.${'A'.repeat(43)}.${'0'.repeat(64)}`;
  for (let i = 0; i < 200; i++) {
    await new Promise((resolve) => anon.Enroll({ token: bad, csr: 'x', hostname: 'h', labels: {} }, new grpc.Metadata(), { deadline: Date.now() + 15_000 }, resolve));
  }
  anon.close();
  const written = (await audit.query({ methodContains: 'Enrollment/Enroll', limit: 1000 })).filter((r) => r.result === 'unauthenticated');
  t.equal(written.length, 1, '200 identical refused enrollments from one address: one record');
  t.equal(h.hub.components.refusalAudit.suppressed, 199, 'the other 199 are counted');
  h.hub.components.refusalAudit.sweep(true);
  const summary = (await audit.query({ methodContains: 'Enrollment/Enroll', limit: 1000 })).filter((r) => r.result === 'unauthenticated');
  t.equal(summary.length, 2, 'and written as one summary when the window ends');
  t.match(summary[1]!.detail, /^199 more like this in 60s, not recorded one by one: join token not recognised/);
  t.notOk(JSON.stringify(summary).includes('A'.repeat(43)), 'never with the token secret');

  // Distinct refusals (say, from 10,000 addresses) are bounded by the throttle's key table.
  const sink = new MemoryAudit();
  const th = new RefusalThrottle(sink, { maxKeys: 50 });
  t.teardown(() => th.close());
  for (let i = 0; i < 10_000; i++) {
    th.record({ timeMs: Date.now(), actor: '-', tenant: '', method: TLS_METHOD, target: '', result: 'unauthenticated', sourceAddress: `ipv4:10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}:4000`, detail: 'TLS handshake refused' });
  }
  t.equal(sink.entries.length, 51, '10,000 refusals from distinct addresses: at most maxKeys + 1 records per window');
  th.record({ timeMs: Date.now(), actor: 'admin', tenant: '', method: 'x', target: '', result: 'ok', sourceAddress: '', detail: '' });
  t.equal(sink.entries.length, 52, 'successes are never throttled');

  // One /64 is one source (sourceKey, as the limits count it): an attacker rotating through the
  // addresses of its /64 takes one key, and the summary names the /64.
  const sink6 = new MemoryAudit();
  const th6 = new RefusalThrottle(sink6, { maxKeys: 50 });
  t.teardown(() => th6.close());
  for (let i = 0; i < 1000; i++) {
    th6.record({ timeMs: Date.now(), actor: '-', tenant: '', method: TLS_METHOD, target: '', result: 'unauthenticated', sourceAddress: `[2001:db8:1:2::${(i + 1).toString(16)}]:4000`, detail: 'TLS handshake refused' });
  }
  th6.record({ timeMs: Date.now(), actor: '-', tenant: '', method: TLS_METHOD, target: '', result: 'unauthenticated', sourceAddress: '[2001:db8:1:3::1]:4000', detail: 'TLS handshake refused' });
  t.equal(sink6.entries.length, 2, '1,000 refusals from one /64: one record; another /64 keeps its own');
  th6.sweep(true);
  t.equal(sink6.entries.length, 3, 'plus one summary');
  t.match(sink6.entries[2], { sourceAddress: '2001:db8:1:2::/64', detail: /^999 more like this in 60s/ }, 'the summary names the /64 the suppressed ones came from');
});
