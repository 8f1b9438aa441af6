/**
 * Enrollment end to end: a join token plus a CSR becomes an agent certificate, over real TLS
 * and gRPC on loopback, with real files. Every refusal is checked for its stable code, its gRPC
 * status and an actionable message, and for leaving the hub running and the token untouched.
 */
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { spawnSync } from 'node:child_process';
import { randomBytes, createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startHub, tempDir, callError, waitFor, type TestHub } from './helpers/hub.js';
import { call } from '../cli/client.js';
import { enroll } from '../agent/enroll.js';
import { certInfo, createCA, createCSR, fingerprintSha256, generateKey, keyMatchesCert, loadPrivateKey } from '../certs/index.js';
import { v1 } from '../common/proto.js';
import { CLIENT_OPTIONS } from '../common/grpc-options.js';
import { fromGrpcError } from '../common/grpc-errors.js';
import type { EnrollmentClient } from '../common/proto-gen/trellis/v1/Enrollment.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const DAY = 86_400_000;
const TD = 'trellis.local';

function openssl(...args: string[]): { ok: boolean; out: string } {
  const r = spawnSync('openssl', args, { encoding: 'utf8' });
  return { ok: r.status === 0, out: `${r.stdout}${r.stderr}` };
}

/** A raw Enrollment client on the hub's admin port (server TLS, no client certificate). */
function enrollmentClient(h: TestHub, extra: Record<string, number> = {}): EnrollmentClient {
  return new v1.Enrollment(h.adminAddr, grpc.credentials.createSsl(Buffer.from(h.caPem)), { ...CLIENT_OPTIONS, ...extra }) as unknown as EnrollmentClient;
}

function rawEnroll(c: EnrollmentClient, req: T.EnrollRequest): Promise<T.EnrollResponse__Output> {
  return new Promise((resolve, reject) => {
    c.Enroll(req, { deadline: Date.now() + 15_000 }, (err, r) => (err ? reject(fromGrpcError(err)) : resolve(r!)));
  });
}

function csrPem(o: { dnsNames?: string[]; uris?: string[]; commonName?: string } = {}): { csr: string; key: ReturnType<typeof generateKey> } {
  const key = generateKey('ec-p256');
  return { csr: createCSR({ privateKey: key.privateKey, subject: { commonName: o.commonName ?? 'test-host' }, dnsNames: o.dnsNames, uris: o.uris }), key };
}

function pemBody(pem: string): string {
  return pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, '');
}

function derOf(pem: string): Buffer { return Buffer.from(pemBody(pem), 'base64'); }
function pemOf(label: string, der: Buffer): string {
  return `-----BEGIN ${label}-----\n${der.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n$/, '')}\n-----END ${label}-----\n`;
}

async function tokens(h: TestHub): Promise<T.JoinTokenInfo__Output[]> {
  const r = await call<T.ListJoinTokensRequest, T.ListJoinTokensResponse__Output>(h.admin, h.admin.tokens, h.admin.tokens.ListJoinTokens, { includeInactive: true });
  return r.tokens;
}

async function tokenInfo(h: TestHub, token: string): Promise<T.JoinTokenInfo__Output> {
  const id = token.split('.')[1];
  const info = (await tokens(h)).find((x) => x.id === id);
  if (!info) throw new Error(`no token ${id}`);
  return info;
}

async function listAgents(h: TestHub): Promise<T.AgentInfo__Output[]> {
  return (await call<T.ListAgentsRequest, T.ListAgentsResponse__Output>(h.admin, h.admin.agents, h.admin.agents.ListAgents, {})).agents;
}

function filesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...filesUnder(p));
    else if (e.isFile()) out.push(p);
  }
  return out;
}

t.test('an enrolled agent gets a 0600 key, a 7-day clientAuth certificate naming its SPIFFE id, and openssl accepts the chain', async (t) => {
  await using h = await startHub();
  const { dataDir, agentId } = await h.enroll();

  for (const f of ['agent-key.pem', 'agent.pem', 'ca.pem', 'agent.json']) t.ok(existsSync(join(dataDir, f)), `${f} written`);
  t.equal(statSync(join(dataDir, 'agent-key.pem')).mode & 0o777, 0o600, 'key file is 0600');
  t.equal(statSync(dataDir).mode & 0o777, 0o700, 'agent data dir is 0700');

  const certPem = readFileSync(join(dataDir, 'agent.pem'), 'utf8');
  const keyPem = readFileSync(join(dataDir, 'agent-key.pem'), 'utf8');
  t.ok(keyMatchesCert(loadPrivateKey(keyPem), certPem), 'the certificate is for the key made on the agent');
  const info = certInfo(certPem);
  t.same(info.uris, [`spiffe://${TD}/tenant/default/agent/${agentId}`]);
  t.same(info.dnsNames, []);
  t.same(info.ipAddresses, []);
  t.same(info.extKeyUsage, ['clientAuth']);
  t.equal(info.isCA, false);
  const left = info.notAfter.getTime() - Date.now();
  t.ok(left > 7 * DAY - 10 * 60_000 && left <= 7 * DAY, `about 7 days left (${(left / DAY).toFixed(3)} d)`);

  const state = JSON.parse(readFileSync(join(dataDir, 'agent.json'), 'utf8'));
  t.equal(state.agentId, agentId);
  t.equal(state.tenant, 'default');
  t.equal(state.hub, `127.0.0.1:${h.hub.agentPort}`, 'agent.json points at the agent port');

  const v = openssl('verify', '-CAfile', join(dataDir, 'ca.pem'), join(dataDir, 'agent.pem'));
  t.ok(v.ok, `openssl verify accepts it: ${v.out}`);
  // Negative: the same certificate does not verify under some other CA.
  await using tmp = await tempDir();
  const other = createCA({ commonName: 'Other CA' });
  writeFileSync(join(tmp.path, 'other.pem'), other.certPem);
  t.notOk(openssl('verify', '-CAfile', join(tmp.path, 'other.pem'), join(dataDir, 'agent.pem')).ok, 'openssl rejects it under another CA');

  // The private key never reaches the hub: not in any file of its data dir, not in its logs.
  await h.stop(); // flushes the store
  const body = pemBody(keyPem);
  const lines = keyPem.split('\n').filter((l) => l.length >= 40 && !l.startsWith('-----'));
  t.ok(lines.length > 0);
  const hubFiles = filesUnder(h.dataDir);
  t.ok(hubFiles.some((f) => f.endsWith('state.json')), 'the hub store is among the files searched');
  for (const f of hubFiles) {
    const text = readFileSync(f, 'latin1');
    const flat = text.replace(/\\n|\s/g, '');
    t.notOk(flat.includes(body) || lines.some((l) => text.includes(l)), `agent key not in ${f}`);
  }
  t.notOk(h.logLines.some((l) => lines.some((k) => l.includes(k))), 'agent key not in hub logs');
  // The search would find it: the agent's own key file does contain it.
  t.ok(readFileSync(join(dataDir, 'agent-key.pem'), 'latin1').includes(lines[0]!));
});

t.test('the hub decides the names: SANs and CN asked for in the CSR are ignored', async (t) => {
  await using h = await startHub();
  const token = await h.token();
  const { csr, key } = csrPem({ commonName: 'hub', dnsNames: ['evil.example.com', 'localhost'], uris: [`spiffe://${TD}/tenant/admin/agent/root`] });
  const c = enrollmentClient(h);
  t.teardown(() => c.close());
  const r = await rawEnroll(c, { token, csr, hostname: 'evil.example.com', labels: {} });
  const info = certInfo(r.certificate);
  t.ok(keyMatchesCert(key.privateKey, r.certificate));
  t.same(info.uris, [`spiffe://${TD}/tenant/default/agent/${r.agentId}`], 'only the hub-chosen URI SAN');
  t.same(info.dnsNames, [], 'no DNS SAN from the CSR');
  t.same(info.ipAddresses, []);
  t.match(info.subject, `CN=${r.agentId}`);
  t.notMatch(info.subject, /CN=hub/);
  t.equal(r.spiffeId, `spiffe://${TD}/tenant/default/agent/${r.agentId}`);
  t.equal(r.tenant, 'default');
});

t.test('ten concurrent enrollments with a one-use token give exactly one certificate', async (t) => {
  await using h = await startHub();
  const token = await h.token({ uses: 1 });
  const results = await Promise.allSettled(Array.from({ length: 10 }, () => h.enroll({ token })));
  const ok = results.filter((r) => r.status === 'fulfilled');
  const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => r.reason as Error & { code?: string; grpcCode?: number });
  t.equal(ok.length, 1, 'one enrollment succeeded');
  t.equal(failed.length, 9);
  for (const e of failed) {
    t.equal(e.code, 'TRELLIS_E_TOKEN_USED_UP', e.message);
    t.equal(e.grpcCode, grpc.status.UNAUTHENTICATED);
    t.match(e.message, /used 1 of 1 times; create a new one with `trellis tokens create`/);
  }
  t.equal((await listAgents(h)).length, 1, 'one agent registered');
  t.equal((await tokenInfo(h, token)).used, 1);
});

t.test('a 3-use token enrolls exactly three agents out of six concurrent tries', async (t) => {
  await using h = await startHub();
  const token = await h.token({ uses: 3 });
  const results = await Promise.allSettled(Array.from({ length: 6 }, () => h.enroll({ token })));
  const ok = results.filter((r) => r.status === 'fulfilled') as PromiseFulfilledResult<{ agentId: string }>[];
  t.equal(ok.length, 3);
  t.equal(new Set(ok.map((r) => r.value.agentId)).size, 3, 'three distinct agents');
  for (const r of results) if (r.status === 'rejected') t.equal((r.reason as { code?: string }).code, 'TRELLIS_E_TOKEN_USED_UP');
  t.equal((await listAgents(h)).length, 3);
  const info = await tokenInfo(h, token);
  t.equal(info.used, 3);
  t.equal(info.uses, 3);
});

t.test('bad join tokens are refused UNAUTHENTICATED with a code and a next step, and the hub keeps enrolling', async (t) => {
  await using h = await startHub();
  await using tmp = await tempDir();
  const fp = fingerprintSha256(h.caPem);
  let n = 0;
  const attempt = async (token: string) => {
    const dataDir = join(tmp.path, `a${++n}`);
    const err = await callError(enroll({ hub: h.adminAddr, token, dataDir }));
    t.notOk(existsSync(join(dataDir, 'agent.json')), 'nothing written on refusal');
    return err;
  };
  const expectRefused = (err: Awaited<ReturnType<typeof callError>>, code: string, msg: RegExp) => {
    t.equal(err?.code, code, String(err?.message));
    t.equal(err?.grpcCode, grpc.status.UNAUTHENTICATED);
    t.match(err?.message, msg);
  };
  const stillEnrolls = async () => {
    t.equal(h.hub.state, 'running');
    t.ok((await h.enroll()).agentId, 'a later enrollment works');
  };

  await t.test('expired', async (t) => {
    const r = await call<T.CreateJoinTokenRequest, T.CreateJoinTokenResponse__Output>(h.admin, h.admin.tokens, h.admin.tokens.CreateJoinToken, { tenant: 'default', uses: 1, ttlMs: 1000 });
    t.ok(r.info!.expiresAtMs > Date.now() - 1000);
    await waitFor(() => Date.now() > r.info!.expiresAtMs + 5, 5000, 'token expiry');
    expectRefused(await attempt(r.token), 'TRELLIS_E_TOKEN_EXPIRED', /expired .* ago; create a new one with `trellis tokens create`/);
    await stillEnrolls();
  });

  await t.test('used up', async (t) => {
    const token = await h.token({ uses: 1 });
    t.ok((await h.enroll({ token })).agentId, 'the first use works');
    expectRefused(await attempt(token), 'TRELLIS_E_TOKEN_USED_UP', /used 1 of 1 times; create a new one/);
    await stillEnrolls();
  });

  await t.test('revoked', async (t) => {
    const token = await h.token({ uses: 5 });
    await call<T.RevokeJoinTokenRequest, T.RevokeJoinTokenResponse__Output>(h.admin, h.admin.tokens, h.admin.tokens.RevokeJoinToken, { id: token.split('.')[1] });
    expectRefused(await attempt(token), 'TRELLIS_E_TOKEN_INVALID', /was revoked; create a new one with `trellis tokens create`/);
    t.equal((await tokenInfo(h, token)).used, 0);
    await stillEnrolls();
  });

  await t.test('malformed (sent straight to the hub, since the agent refuses to parse it)', async (t) => {
    const local = await attempt('tj1.not-a-token');
    t.equal(local?.code, 'TRELLIS_E_TOKEN_INVALID', 'the agent refuses it locally');
    const c = enrollmentClient(h);
    t.teardown(() => c.close());
    for (const bad of ['tj1.not-a-token', '', `tj1.${'g'.repeat(16)}.${'A'.repeat(43)}.${fp}`, (await h.token()) + 'x']) {
      const err = await callError(rawEnroll(c, { token: bad, csr: csrPem().csr, hostname: 'h', labels: {} }));
      expectRefused(err, 'TRELLIS_E_TOKEN_INVALID', /malformed join token: expected tj1\.<id>\.<secret>\.<ca-sha256>/);
    }
    await stillEnrolls();
  });

  await t.test('unknown id', async (t) => {
    const real = await h.token();
    const [, , secret] = real.split('.');
    const err = await attempt(`tj1.${randomBytes(8).toString('hex')}.${secret}.${fp}`);
    expectRefused(err, 'TRELLIS_E_TOKEN_INVALID', /not recognised by this hub: check you copied all of it, or create a new one/);
    t.equal((await tokenInfo(h, real)).used, 0);
    await stillEnrolls();
  });

  await t.test('right id, wrong secret', async (t) => {
    const real = await h.token();
    const [, id] = real.split('.');
    const err = await attempt(`tj1.${id}.${randomBytes(32).toString('base64url')}.${fp}`);
    expectRefused(err, 'TRELLIS_E_TOKEN_INVALID', /not recognised by this hub/);
    t.notMatch(err?.message, id!, 'the answer does not confirm the id exists');
    t.equal((await tokenInfo(h, real)).used, 0, 'a wrong secret does not use the token');
    t.ok((await h.enroll({ token: real })).agentId, 'the real token still works');
  });
});

t.test('an agent pointed at a hub with another CA refuses before sending the token', async (t) => {
  await using a = await startHub();
  await using b = await startHub();
  const fpA = fingerprintSha256(a.caPem);
  const fpB = fingerprintSha256(b.caPem);
  t.not(fpA, fpB);
  // A token valid on hub B, but pinning hub A's CA: if the agent sent it, B would accept and use it.
  const tokenB = await b.token({ uses: 1 });
  const parts = tokenB.split('.');
  t.equal(parts[3], fpB);
  const pinnedToA = [...parts.slice(0, 3), fpA].join('.');
  const before = await tokens(b);
  await using tmp = await tempDir();

  const err = await callError(enroll({ hub: b.adminAddr, token: pinnedToA, dataDir: join(tmp.path, 'x') }));
  t.equal(err?.code, 'TRELLIS_E_CA_PIN_MISMATCH', String(err?.message));
  t.match(err?.message, /does not present the CA pinned in the join token .* the token was not sent/);
  t.same(await tokens(b), before, "hub B's token list is unchanged");
  t.notOk(b.logLines.some((l) => l.includes('Enroll')), 'hub B never saw an Enroll request');
  t.notOk(existsSync(join(tmp.path, 'x', 'agent.json')));
  // A real token of hub A is refused by the same check.
  const errA = await callError(enroll({ hub: b.adminAddr, token: await a.token(), dataDir: join(tmp.path, 'y') }));
  t.equal(errA?.code, 'TRELLIS_E_CA_PIN_MISMATCH');
  t.notOk(b.logLines.some((l) => l.includes('Enroll')));

  // Positive counterpart: the same token with B's own pin enrolls, and then B does log Enroll.
  const r = await enroll({ hub: b.adminAddr, token: tokenB, dataDir: join(tmp.path, 'z') });
  t.ok(r.agentId);
  t.equal((await tokenInfo(b, tokenB)).used, 1);
  await waitFor(() => b.logLines.some((l) => l.includes('Enroll')), 5000, 'Enroll log line');
});

t.test('a bad CSR is refused INVALID_ARGUMENT and does not use the token', async (t) => {
  await using h = await startHub();
  const token = await h.token({ uses: 1 });
  const c = enrollmentClient(h);
  t.teardown(() => c.close());

  // Bad signature: change signed bytes (the CN) after signing.
  const good = csrPem({ commonName: 'aaaaaaaaaaaa' }).csr;
  const der = derOf(good);
  const at = der.indexOf(Buffer.from('aaaaaaaaaaaa'));
  t.ok(at > 0);
  der.write('bbbbbbbbbbbb', at, 'latin1');
  const tampered = pemOf('CERTIFICATE REQUEST', der);
  const garbagePem = pemOf('CERTIFICATE REQUEST', randomBytes(300));
  const oversized = pemOf('CERTIFICATE REQUEST', Buffer.concat([derOf(good), randomBytes(17 * 1024)]));
  t.ok(Buffer.byteLength(oversized) > 16 * 1024);

  const cases: Array<[string, string, RegExp]> = [
    ['bad signature', tampered, /signature does not verify/],
    ['garbage DER in a PEM block', garbagePem, /invalid certificate signing request/],
    ['garbage text', randomBytes(200).toString('base64'), /invalid certificate signing request/],
    ['empty', '', /empty/],
    ['oversized (> 16 KiB)', oversized, /16384|too large|over/],
  ];
  for (const [what, csr, msg] of cases) {
    const err = await callError(rawEnroll(c, { token, csr, hostname: 'h', labels: {} }));
    t.equal(err?.code, 'TRELLIS_E_CSR_INVALID', `${what}: ${err?.message}`);
    t.equal(err?.grpcCode, grpc.status.INVALID_ARGUMENT, what);
    t.match(err?.message, msg, what);
    t.equal((await tokenInfo(h, token)).used, 0, `${what}: token not used`);
  }
  t.equal((await listAgents(h)).length, 0);
  // The one-use token still enrolls a valid request.
  const r = await rawEnroll(c, { token, csr: good, hostname: 'h', labels: {} });
  t.ok(r.agentId);
  t.equal((await tokenInfo(h, token)).used, 1);
});

t.test('a request over 4 MiB is refused RESOURCE_EXHAUSTED and the hub keeps serving', async (t) => {
  await using h = await startHub();
  const token = await h.token();
  // Lift the client's own send limit so the hub is the one that refuses.
  const c = enrollmentClient(h, { 'grpc.max_send_message_length': -1 });
  t.teardown(() => c.close());
  const err = await callError(rawEnroll(c, { token, csr: 'A'.repeat(5 * 1024 * 1024), hostname: 'h', labels: {} }));
  t.equal(err?.grpcCode, grpc.status.RESOURCE_EXHAUSTED, String(err?.message));
  t.equal(err?.code, 'TRELLIS_E_TOO_LARGE');
  t.equal(h.hub.state, 'running');
  t.equal((await tokenInfo(h, token)).used, 0, 'token not used');
  // Same client, same token: a normal request goes through.
  const r = await rawEnroll(c, { token, csr: csrPem().csr, hostname: 'h', labels: {} });
  t.ok(r.agentId);
});

t.test('re-enrolling an enrolled data dir needs --force, which gives a new agent id', async (t) => {
  await using h = await startHub();
  const first = await h.enroll();
  const token = await h.token({ uses: 1 });
  const err = await callError(h.enroll({ dataDir: first.dataDir, token }));
  t.equal(err?.code, 'TRELLIS_E_ALREADY_ENROLLED');
  t.match(err?.message, /already enrolled .* pass --force/);
  t.equal((await tokenInfo(h, token)).used, 0, 'the refusal did not use the token');
  t.equal(JSON.parse(readFileSync(join(first.dataDir, 'agent.json'), 'utf8')).agentId, first.agentId, 'identity untouched');

  const second = await h.enroll({ dataDir: first.dataDir, token, force: true });
  t.not(second.agentId, first.agentId);
  t.equal(JSON.parse(readFileSync(join(first.dataDir, 'agent.json'), 'utf8')).agentId, second.agentId);
  t.same(certInfo(readFileSync(join(first.dataDir, 'agent.pem'), 'utf8')).uris, [`spiffe://${TD}/tenant/default/agent/${second.agentId}`]);
  const agent = await h.agent({ dataDir: first.dataDir });
  t.equal(agent.channel.state, 'ready', 'the new identity connects');
});

t.test("the token's tenant and labels land on the agent, and token labels win over the agent's", async (t) => {
  await using h = await startHub();
  const token = await h.token({ tenant: 'blue', labels: { role: 'web', zone: 'eu' }, allowLabelKeys: ['role', 'rack'] });
  const { dataDir, agentId } = await h.enroll({ token, labels: { role: 'db', rack: 'r1' } });
  const a = await call<T.GetAgentRequest, T.AgentInfo__Output>(h.admin, h.admin.agents, h.admin.agents.GetAgent, { id: agentId });
  t.equal(a.tenant, 'blue');
  t.same(a.labels, { role: 'web', zone: 'eu', rack: 'r1' });
  t.equal(a.spiffeId, `spiffe://${TD}/tenant/blue/agent/${agentId}`);
  const state = JSON.parse(readFileSync(join(dataDir, 'agent.json'), 'utf8'));
  t.equal(state.tenant, 'blue');
  t.same(state.labels, { role: 'web', zone: 'eu', rack: 'r1' });
  t.same(certInfo(readFileSync(join(dataDir, 'agent.pem'), 'utf8')).uris, [`spiffe://${TD}/tenant/blue/agent/${agentId}`]);
});

t.test('the token carries the CA fingerprint, and the hub stores only a hash of its secret', async (t) => {
  await using h = await startHub();
  const token = await h.token();
  const [prefix, id, secret, fp] = token.split('.');
  t.equal(prefix, 'tj1');
  t.equal(fp, fingerprintSha256(readFileSync(join(h.dataDir, 'ca.pem'), 'utf8')), 'fingerprint of the hub ca.pem');
  t.equal(fp, fingerprintSha256(h.caPem));
  await h.stop(); // flush the store
  const state = readFileSync(join(h.dataDir, 'state.json'), 'utf8');
  t.ok(state.includes(id!), 'the token is in the store');
  t.ok(state.includes(createHash('sha256').update(secret!, 'utf8').digest('hex')), 'as a SHA-256 of its secret');
  t.notOk(state.includes(secret!), 'the secret is not stored');
  t.notOk(h.logLines.some((l) => l.includes(secret!)), 'the secret is not logged');
});
