/**
 * Certificate renewal (issue 10, finding 17): Renew is rate-limited per agent, a renewal makes
 * the agent's older certificates invalid for new connections (CRL, reason superseded) without
 * cutting the live stream, and the registry and the CRL stay bounded over many renewals.
 */
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { readFile } from 'node:fs/promises';
import { startHub, waitFor, type TestHub } from './helpers/hub.js';
import { call } from '../cli/client.js';
import { v1 } from '../common/proto.js';
import { CLIENT_OPTIONS } from '../common/grpc-options.js';
import { CODE_KEY } from '../common/grpc-errors.js';
import { createCSR, generateKey, normalizeSerial, certInfo } from '../certs/index.js';
import { agentPaths } from '../agent/identity.js';
import { renewalTime, DEFAULT_RENEW_AT } from '../agent/renew-schedule.js';
import { openStore } from '../hub/store/index.js';
import { AgentRegistry, type AgentDoc } from '../hub/agents/index.js';
import type { ChannelState } from '../agent/channel.js';
import { SUPERSEDED_STREAM_GRACE_MS } from '../hub/grpc/agent-channel.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

interface Ident { caPem: string; keyPem: string; certPem: string }

async function agentIdent(dataDir: string): Promise<Ident> {
  const p = agentPaths(dataDir);
  return { caPem: await readFile(p.ca, 'utf8'), keyPem: await readFile(p.key, 'utf8'), certPem: await readFile(p.cert, 'utf8') };
}

type ChannelClient = grpc.Client & {
  Connect(md: grpc.Metadata, opts: grpc.CallOptions): grpc.ClientDuplexStream<T.AgentMessage, T.HubMessage__Output>;
  Renew(req: T.RenewRequest, md: grpc.Metadata, opts: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: T.RenewResponse__Output) => void): void;
};

function client(h: TestHub, id: Ident): ChannelClient {
  return new v1.AgentChannel(h.agentAddr, grpc.credentials.createSsl(Buffer.from(id.caPem), Buffer.from(id.keyPem), Buffer.from(id.certPem)), CLIENT_OPTIONS) as unknown as ChannelClient;
}

/** One Renew call with a fresh key; the error (or undefined) and the new identity. */
async function renewWith(h: TestHub, id: Ident): Promise<{ err?: grpc.ServiceError; ident?: Ident }> {
  const c = client(h, id);
  const key = generateKey('ec-p256');
  try {
    const r = await new Promise<T.RenewResponse__Output>((resolve, reject) =>
      c.Renew({ csr: createCSR({ privateKey: key.privateKey, subject: { commonName: 'x' } }) }, new grpc.Metadata(), { deadline: Date.now() + 15_000 }, (e, res) => (e ? reject(e) : resolve(res!))));
    return { ident: { caPem: id.caPem, keyPem: key.privateKeyPem, certPem: r.certificate } };
  } catch (e) {
    return { err: e as grpc.ServiceError };
  } finally {
    c.close();
  }
}

/** Opens a stream and resolves with its welcome or its error. */
async function connectWith(h: TestHub, id: Ident): Promise<{ welcome?: T.Welcome__Output; err?: grpc.ServiceError; stream: grpc.ClientDuplexStream<T.AgentMessage, T.HubMessage__Output>; close(): void }> {
  const c = client(h, id);
  const s = c.Connect(new grpc.Metadata(), { deadline: Date.now() + 30_000 });
  const r = await new Promise<{ welcome?: T.Welcome__Output; err?: grpc.ServiceError }>((resolve) => {
    s.on('data', (m: T.HubMessage__Output) => { if (m.welcome) resolve({ welcome: m.welcome }); });
    s.on('error', (e: grpc.ServiceError) => resolve({ err: e }));
    s.write({ hello: { facts: { hostname: 'raw' }, labels: {} } });
  });
  return { ...r, stream: s, close: () => { s.cancel(); c.close(); } };
}

const codeOf = (e?: grpc.ServiceError) => e?.metadata?.get(CODE_KEY)?.[0];

t.test('a renew flood is refused with RESOURCE_EXHAUSTED after the per-agent limit, and audited', async (t) => {
  await using h = await startHub({ config: { agentRenewLimit: { max: 3, window: '1h' } } });
  const { dataDir, agentId } = await h.enroll();
  const id = await agentIdent(dataDir);
  // The same (pre-renewal) certificate may retry while no renewed certificate has connected.
  for (let i = 0; i < 3; i++) t.equal((await renewWith(h, id)).err, undefined, `renewal ${i + 1} of 3 is allowed`);
  const over = await renewWith(h, id);
  t.equal(over.err?.code, grpc.status.RESOURCE_EXHAUSTED, 'the 4th renewal in the hour: RESOURCE_EXHAUSTED');
  t.equal(codeOf(over.err), 'TRELLIS_E_RATE_LIMITED');
  t.match(over.err?.details, /renewed its certificate 3 times in the last 1h \(limit 3\); the next renewal is allowed in/, 'a clear message');
  for (let i = 0; i < 20; i++) await renewWith(h, id);
  const recs = await h.hub.components.audit.query({ methodContains: 'AgentChannel/Renew' });
  t.equal(recs.filter((r) => r.result === 'ok').length, 3, 'each renewal done is audited');
  const refused = recs.filter((r) => r.result === 'denied');
  t.equal(refused.length, 1, '21 identical refusals from one address write one record (throttled)');
  t.equal(refused[0]!.actor, `agent:${agentId}`);
  t.match(refused[0]!.detail, /limit 3/);
  t.equal(h.hub.components.refusalAudit.suppressed, 20, 'the rest are counted for the summary');
});

t.test('during a CA rotation an old-CA certificate moves to the new CA once without counting, but cannot then renew without limit', async (t) => {
  await using h = await startHub({ config: { agentRenewLimit: { max: 3, window: '1h' } } });
  const { dataDir } = await h.enroll();
  const old = await agentIdent(dataDir);
  await call<T.RotateStartRequest, T.CaRotationStatus__Output>(h.admin, h.admin.ca, h.admin.ca.RotateStart, { windowMs: 3_600_000 }, 60_000);
  // The renewal the rotation asks for is free; retries with the old certificate (a lost answer) count.
  for (let i = 0; i < 4; i++) t.equal((await renewWith(h, old)).err, undefined, `renewal ${i + 1} with the old-CA certificate is allowed`);
  const over = await renewWith(h, old);
  t.equal(codeOf(over.err), 'TRELLIS_E_RATE_LIMITED', 'the 5th is refused: the old-CA certificate is rate-limited like any other');
});

t.test('after a renewal the pre-renewal certificate cannot connect (nor renew once the new one connected); the live stream is not cut by the renewal', async (t) => {
  await using h = await startHub();
  const { dataDir, agentId } = await h.enroll();
  const old = await agentIdent(dataDir);
  const oldSerial = normalizeSerial(certInfo(old.certPem).serialHex);

  // A live stream on the old certificate survives the renewal itself.
  const live = await connectWith(h, old);
  t.ok(live.welcome, 'stream on the old certificate');
  let liveErr: grpc.ServiceError | undefined;
  live.stream.on('error', (e: grpc.ServiceError) => { liveErr = e; });
  const r1 = await renewWith(h, old);
  t.equal(r1.err, undefined, 'renewed');
  const hbAt = Date.now();
  live.stream.write({ heartbeat: { sentAtMs: hbAt } });
  // The hub read the heartbeat (it marks the agent seen) on the stream of the old certificate.
  const agents = h.hub.components.agents;
  await waitFor(async () => (agents.view((await agents.get(agentId))!).lastSeen ?? 0) >= hbAt, 10_000, 'the hub to read the heartbeat');
  t.equal(liveErr, undefined, 'the live stream on the old certificate is not cut by the renewal');
  t.ok(h.hub.components.agents.link(agentId), 'and the hub still holds it');

  const again = await connectWith(h, old);
  again.close();
  t.equal(again.err?.code, grpc.status.PERMISSION_DENIED, 'a new connection with the pre-renewal certificate is refused');
  t.equal(codeOf(again.err), 'TRELLIS_E_CERT_REVOKED');
  t.match(again.err?.details, /replaced by a renewal/);

  const fresh = await connectWith(h, r1.ident!);
  t.ok(fresh.welcome, 'the renewed certificate connects');
  const retry = await renewWith(h, old);
  t.equal(codeOf(retry.err), 'TRELLIS_E_CERT_REVOKED', 'once the renewed certificate connected, the old one cannot renew either');
  const { entries } = await h.hub.components.agents.revokedEntries();
  t.ok(entries.some((e) => normalizeSerial(e.serialHex) === oldSerial), 'the old serial is in the CRL');
  const crl = await call<T.GetCrlRequest, T.GetCrlResponse__Output>(h.admin, h.admin.certs, h.admin.certs.GetCrl, {});
  t.equal(crl.revoked, 1, 'GetCrl counts it');
  // Whoever still holds a stream on the old certificate is cut once the new one has connected.
  await waitFor(() => liveErr !== undefined, SUPERSEDED_STREAM_GRACE_MS + 10_000, 'the old stream to be retired');
  t.equal(liveErr?.code, grpc.status.ABORTED, `the stream on the replaced certificate ends (ABORTED) about ${SUPERSEDED_STREAM_GRACE_MS / 1000}s after the new one connected`);
  fresh.stream.write({ heartbeat: { sentAtMs: Date.now() } });
  t.equal(normalizeSerial(h.hub.components.agents.link(agentId)!.serial), normalizeSerial(certInfo(r1.ident!.certPem).serialHex), 'the new stream stays');
  fresh.close();
  live.close();

  const recs = await h.hub.components.audit.query({ methodContains: 'AgentChannel' });
  t.ok(recs.some((r) => r.method.endsWith('/Connect') && r.result === 'unauthenticated' && r.actor === `agent:${agentId}` && /replaced by a renewal/.test(r.detail)), 'the refused connection is audited');
  t.ok(recs.some((r) => r.method.endsWith('/Renew') && r.result === 'ok' && r.detail.includes(oldSerial)), 'the renewal is audited with the old and new serial');
});

t.test('a real agent renews twice and keeps its stream; only its newest certificate is valid', async (t) => {
  await using h = await startHub();
  const { dataDir, agentId } = await h.enroll();
  const agent = await h.agent({ dataDir });
  const states: ChannelState[] = [];
  agent.channel.on('state', (s: ChannelState) => states.push(s));
  const first = await agentIdent(dataDir);
  await agent.renew();
  const second = await agentIdent(dataDir);
  await agent.renew();
  t.same(states, [], 'make-before-break: the channel never left ready');
  t.equal(normalizeSerial(h.hub.components.agents.link(agentId)!.serial), normalizeSerial(agent.certificate.serial), 'the live stream uses the newest certificate');
  for (const [name, id] of [['first', first], ['second', second]] as const) {
    const c = await connectWith(h, id);
    c.close();
    t.equal(codeOf(c.err), 'TRELLIS_E_CERT_REVOKED', `the ${name} certificate is refused`);
  }
  const doc = (await h.hub.components.agents.get(agentId))!;
  t.equal(doc.serials.length, 1, 'the agent record keeps one valid serial');
  t.notOk(doc.pendingRenewal, 'the renewal is confirmed by the new connection');
});

t.test('state and CRL stay bounded over 2,000 renewals (expired entries drop out; the CRL number only grows)', async (t) => {
  let now = Date.UTC(2026, 0, 1);
  const store = await openStore({ kind: 'memory' });
  const reg = new AgentRegistry(store, { heartbeatTtlMs: 30_000, now: () => now });
  await reg.load();
  const hourMs = 3_600_000;
  const ttl = 6 * hourMs;
  const doc: AgentDoc = {
    id: 'a1', tenant: 'default', hostname: 'h', labels: {}, enrolledAt: now, tokenId: 't', spiffeId: 'spiffe://x/tenant/default/agent/a1',
    certSerial: '01', certExpiresAt: now + ttl, serials: [{ serial: '01', notAfter: now + ttl }], revoked: false,
  };
  await reg.create(doc);
  let prev = '01';
  let lastCrl = reg.currentCrlNumber;
  let maxKept = 0;
  let monotonic = true;
  for (let i = 2; i < 2002; i++) {
    now += (ttl * 2) / 3; // renew at 2/3 of the life, as agents do
    const serial = i.toString(16).padStart(4, '0');
    await reg.recordRenewal('a1', { from: prev, serial, notAfter: now + ttl });
    await reg.confirmSerial('a1', serial);
    if (reg.currentCrlNumber <= lastCrl) monotonic = false;
    lastCrl = reg.currentCrlNumber;
    maxKept = Math.max(maxKept, reg.revocationCount);
    prev = serial;
  }
  t.ok(monotonic, 'the CRL number grows with every change');
  t.ok(maxKept <= 3, `at most ${maxKept} revocations kept at any time (superseded and not yet expired)`);
  t.ok(await store.count('revocations') <= 3, 'the store holds no more than that');
  const a = (await reg.get('a1'))!;
  t.equal(a.serials.length, 1, 'the agent record keeps one serial');
  t.ok(JSON.stringify(a).length < 1000, 'and stays small');
  t.ok(reg.isSerialRevoked('07d0'), 'a recent superseded serial is revoked');
  t.notOk(reg.isSerialRevoked('0002'), 'an old expired one has dropped out of the CRL');
  await store.close();
});

t.test('an agent renews at 2/3 of its certificate life (within 5% of the life), counted from the real certificate dates', async (t) => {
  const LIFE = 15_000;
  await using h = await startHub({ config: { agentCertTtl: LIFE } });
  const { dataDir } = await h.enroll();
  const first = certInfo(await readFile(agentPaths(dataDir).cert, 'utf8'));
  const nb = first.notBefore.getTime(), na = first.notAfter.getTime(), life = na - nb;
  t.ok(life >= LIFE - 1000 && life <= LIFE * 1.1 + 1000, `the certificate lives ${life} ms (agentCertTtl ${LIFE}, notBefore backdated by a tenth of it, X.509 dates in whole seconds)`);
  // The scheduling function, on the real certificate's dates.
  const at = renewalTime(first);
  t.equal(DEFAULT_RENEW_AT, 2 / 3);
  t.equal(at, nb + life * (2 / 3), 'scheduled at notBefore + 2/3 of notBefore..notAfter');
  t.equal(renewalTime(first, DEFAULT_RENEW_AT, nb + 1000), nb + 1000, 'a renewal the hub ordered earlier wins');
  t.equal(renewalTime(first, DEFAULT_RENEW_AT, na + 1000), at, 'an order later than 2/3 changes nothing');

  // The real agent: the renewal comes due at that moment, and then the serial changes.
  const agent = await h.agent({ dataDir });
  await waitFor(() => normalizeSerial(agent.certificate.serial) !== normalizeSerial(first.serialHex), LIFE, 'the agent to renew');
  const lines = h.agentLogLines().map((l) => JSON.parse(l) as { msg: string; time: number; serial?: string; at?: string });
  const scheduled = lines.find((l) => l.msg === 'certificate renewal scheduled' && normalizeSerial(l.serial ?? '') === normalizeSerial(first.serialHex));
  t.ok(scheduled && Math.abs(Date.parse(scheduled.at!) - at) < 1, 'the agent scheduled the renewal of its first certificate at the computed moment (to the ms)');
  const due = lines.find((l) => l.msg === 'certificate renewal due' && normalizeSerial(l.serial ?? '') === normalizeSerial(first.serialHex));
  t.ok(due, 'the renewal came due');
  const off = due!.time - (nb + life * (2 / 3));
  t.ok(Math.abs(off) <= life * 0.05, `the renewal came due ${off} ms from 2/3 of the life (bound ±${Math.round(life * 0.05)} ms)`);
  const renewed = lines.find((l) => l.msg === 'certificate renewed');
  t.ok(renewed && renewed.time >= due!.time && renewed.time - nb <= life * (2 / 3 + 0.05) + 5_000, 'and the new certificate arrived right after');
  const second = certInfo(agent.certificate.certPem);
  t.ok(second.notAfter.getTime() > na, 'the new certificate lives longer than the first');
});
