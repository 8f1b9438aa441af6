/**
 * Malformed protobuf on either hub port is bad input (INVALID_ARGUMENT, TRELLIS_E_INVALID_ARGUMENT),
 * never INTERNAL, and costs nothing after the answer: no pre-auth slot kept, no agent left
 * attached. Found by the fuzzer (bench/fuzz): grpc-js answers an undecodable body with INTERNAL
 * "Error deserializing request". Real hub, real TLS/mTLS, raw bytes through an identity serializer.
 */
import t, { type Test } from 'tap';
import * as grpc from '@grpc/grpc-js';
import { startHub, type TestHub } from './helpers/hub.js';
import { secureChannel } from '../common/grpc-tls.js';
import { CODE_KEY } from '../common/grpc-errors.js';
import { call } from '../cli/client.js';
import { issueSimIdentities } from '../bench/simagent.js';
import { encode, loadRoot } from '../bench/fuzz/gen.js';
import { helloMessage } from '../bench/fuzz/examples.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const id = (b: Buffer) => b;
/**
 * A field tag with its value cut off: every request type's decoder fails on it (protobufjs is lenient
 * about a length prefix longer than the rest, so a truncated string would still decode).
 */
const GARBAGE = Buffer.from([0x08]);

interface Got { code: number; details: string; trellisCode?: string }
function unary(client: grpc.Client, path: string, body: Buffer, md = new grpc.Metadata()): Promise<Got> {
  return new Promise((resolve) => client.makeUnaryRequest<Buffer, Buffer>(path, id, id, body, md, { deadline: Date.now() + 20_000 }, (err) => {
    const e = err as grpc.ServiceError | null;
    resolve(e ? { code: e.code, details: e.details, trellisCode: e.metadata?.get(CODE_KEY)?.[0] as string | undefined } : { code: 0, details: '' });
  }));
}

async function hubWithClient(t: Test): Promise<{ h: TestHub; client: grpc.Client; token: string }> {
  const h = await startHub();
  t.teardown(() => h.close());
  const s = secureChannel(h.adminAddr, h.caPem);
  const client = new grpc.Client(h.adminAddr, s.creds, s.options);
  t.teardown(() => client.close());
  const token = (h.admin.metadata.get('authorization')[0] as string).replace(/^Bearer /, '');
  return { h, client, token };
}

t.test('an undecodable request body is INVALID_ARGUMENT on the admin port, with and without credentials', async (t) => {
  const { client, token } = await hubWithClient(t);
  const authed = new grpc.Metadata();
  authed.set('authorization', `Bearer ${token}`);
  for (const [path, md] of [['/trellis.v1.AdminKv/Set', authed], ['/trellis.v1.AdminKv/Set', new grpc.Metadata()], ['/trellis.v1.AdminAuth/Login', new grpc.Metadata()],
    ['/trellis.v1.Version/GetVersion', new grpc.Metadata()], ['/trellis.v1.AdminAudit/ListAudit', authed]] as const) {
    const r = path.endsWith('ListAudit')
      ? await new Promise<Got>((resolve) => {
        const s = client.makeServerStreamRequest<Buffer, Buffer>(path, id, id, GARBAGE, md, {});
        s.on('data', () => undefined);
        s.on('error', () => undefined);
        s.on('status', (st: grpc.StatusObject) => resolve({ code: st.code, details: st.details, trellisCode: st.metadata.get(CODE_KEY)[0] as string | undefined }));
      })
      : await unary(client, path, GARBAGE, md);
    t.equal(r.code, grpc.status.INVALID_ARGUMENT, `${path} (${md.get('authorization').length ? 'authenticated' : 'no credentials'}): INVALID_ARGUMENT, got ${r.code} ${r.details}`);
    t.equal(r.trellisCode, 'TRELLIS_E_INVALID_ARGUMENT', 'with the stable error code');
    t.match(r.details, /malformed .* not a valid protobuf message/, 'an actionable message');
    t.notMatch(r.details, /\x08/, 'the bytes are not echoed');
  }
});

t.test('malformed unauthenticated calls do not keep pre-auth slots', async (t) => {
  const { h, client } = await hubWithClient(t);
  // More than maxCallsPerAddress (16): a leaked slot per call would refuse the later ones.
  for (let i = 0; i < 40; i++) {
    const r = await unary(client, '/trellis.v1.AdminAuth/Login', GARBAGE);
    if (r.code !== grpc.status.INVALID_ARGUMENT) { t.fail(`call ${i}: ${r.code} ${r.details}`); return; }
  }
  const version = await call<T.GetVersionRequest, T.VersionInfo__Output>(h.admin, h.admin.version, h.admin.version.GetVersion, {});
  t.ok(version.version, 'a well-formed call still goes through');
});

t.test('a malformed AgentChannel frame ends the stream with INVALID_ARGUMENT and detaches the agent', async (t) => {
  const { h } = await hubWithClient(t);
  const [ident] = issueSimIdentities({ hubDir: h.dataDir, names: ['localhost', '127.0.0.1'], trustDomain: h.hub.components.config.trustDomain, n: 1 });
  const s = secureChannel(h.agentAddr, h.caPem, ident!.keyPem, ident!.certPem);
  const agent = new grpc.Client(h.agentAddr, s.creds, s.options);
  t.teardown(() => agent.close());
  const msgType = loadRoot().lookupType('trellis.v1.AgentMessage');
  const stream = agent.makeBidiStreamRequest<Buffer, Buffer>('/trellis.v1.AgentChannel/Connect', id, id, new grpc.Metadata(), {});
  let welcomed = false;
  const status = new Promise<grpc.StatusObject>((resolve) => {
    stream.on('error', () => undefined);
    stream.on('status', resolve);
  });
  await new Promise<void>((resolve) => {
    stream.once('data', () => { welcomed = true; resolve(); });
    stream.write(encode(msgType, helloMessage()));
  });
  t.ok(welcomed, 'welcomed after a real hello');
  t.ok(h.hub.components.agents.link(ident!.agentId), 'attached');
  stream.write(GARBAGE);
  const st = await status;
  t.equal(st.code, grpc.status.INVALID_ARGUMENT, `stream ended with INVALID_ARGUMENT (${st.details})`);
  t.equal(st.metadata.get(CODE_KEY)[0], 'TRELLIS_E_INVALID_ARGUMENT');
  t.match(st.details, /malformed AgentMessage frame/);
  t.notOk(h.hub.components.agents.link(ident!.agentId), 'the agent is no longer attached');
  // Renew on the agent port: unary, answered by the interceptor.
  const renew = await unary(agent, '/trellis.v1.AgentChannel/Renew', GARBAGE);
  t.equal(renew.code, grpc.status.INVALID_ARGUMENT, `Renew with garbage: INVALID_ARGUMENT (${renew.details})`);
});

t.test('an error quoting a huge input is cut: the caller gets its status and the connection lives', async (t) => {
  const { h, client, token } = await hubWithClient(t);
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${token}`);
  const type = loadRoot().lookupType('trellis.v1.CreateJoinTokenRequest');
  // An authenticated caller may send 4 MiB; the hub answers "no tenant <name>".
  for (const [what, name] of [['ASCII', 'x'.repeat(110_000)], ['non-ASCII (percent-encoded)', 'é€'.repeat(20_000)]] as const) {
    const started = Date.now();
    const slow = unary(client, '/trellis.v1.AdminJoinTokens/CreateJoinToken', encode(type, { tenant: name, uses: 1 }), md);
    // Another call in flight on the same HTTP/2 connection must not be dropped with it.
    const other = unary(client, '/trellis.v1.Version/GetVersion', Buffer.alloc(0));
    const r = await slow;
    t.equal(r.code, grpc.status.NOT_FOUND, `${what}: NOT_FOUND, got ${r.code} ${r.details.slice(0, 100)} after ${Date.now() - started} ms`);
    t.ok(r.details.length <= 4096, `the message is cut (${r.details.length} characters)`);
    t.match(r.details, /more characters cut; the hub log has the whole message\)$/, 'and says so');
    t.equal((await other).code, grpc.status.OK, 'the call beside it succeeded');
  }
  const v = await unary(client, '/trellis.v1.Version/GetVersion', Buffer.alloc(0));
  t.equal(v.code, grpc.status.OK, 'the channel still works');
  void h;
});
