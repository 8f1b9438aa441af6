/**
 * The hub certificate's lifecycle on a real hub (loopback, real TLS, the real CLI):
 * - `trellis certs issue-hub` issues a certificate from the internal CA and serves it at once
 *   (a new TLS connection sees the new serial; a connected agent stays connected); `--name` puts
 *   the names in subjectAltName and is validated; without administration (a certs:replace grant is not enough) → PERMISSION_DENIED; a
 *   hub without its CA key → FAILED_PRECONDITION (TRELLIS_E_CA_NO_KEY);
 * - `certs replace` with a leaf alone serves leaf + CA chain (enrollment and login pinning keep
 *   working); a chain holding a certificate outside the hub CA chain, or a foreign chain, is refused;
 * - the hub renews its own certificate at 2/3 of its life (a 3 s certificate), no agent dropped;
 * - `certs show` and the hub log warn of a certificate that expires within 30 days.
 */
import t, { type Test } from 'tap';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { startHub, waitFor, ADMIN_PASSWORD, type TestHub } from './helpers/hub.js';
import { unaryT } from './helpers/admin.js';
import { runCli } from './helpers/cli.js';
import { fetchServedChain, pinnedBundle } from '../common/tlsprobe.js';
import { certInfo, createCA, fingerprintSha256, generateKey, issueCertificate } from '../certs/index.js';
import { hubPaths } from '../hub/paths.js';
import { silenceIpServernameWarning } from '../common/warnings.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

silenceIpServernameWarning();

const servedSerial = async (h: TestHub) => certInfo((await fetchServedChain('127.0.0.1', Number(h.adminAddr.split(':')[1])))[0]!).serialHex;
const servedAgentPortSerial = async (h: TestHub) => certInfo((await fetchServedChain('127.0.0.1', Number(h.agentAddr.split(':')[1])))[0]!).serialHex;

async function cliHub(t: Test): Promise<{ h: TestHub; cli: (args: string[]) => ReturnType<typeof runCli> }> {
  const h = await startHub();
  t.teardown(() => h.close());
  const caFile = join(h.dir, 'ca-bundle.pem');
  await writeFile(caFile, h.caPem);
  const env = { TRELLIS_HOME: join(h.dir, 'home'), TRELLIS_PASSWORD: ADMIN_PASSWORD };
  const l = await runCli(['login', '--hub', h.adminAddr, '--user', 'admin', '--ca', caFile], env);
  if (l.code !== 0) throw new Error(`login failed: ${l.err}`);
  return { h, cli: (args) => runCli(args, env) };
}

t.test('certs issue-hub serves a new certificate at once; a connected agent stays connected; --name sets the SAN', async (t) => {
  const { h, cli } = await cliHub(t);
  const agent = await h.agent();
  const before = await servedSerial(h);
  const r = await cli(['certs', 'issue-hub']);
  t.equal(r.code, 0, `issue-hub exits 0: ${r.err}`);
  t.match(r.out, /hub certificate issued: serial ([0-9a-f]+)/);
  const after = await servedSerial(h);
  t.not(after, before, 'a new TLS connection on the admin port sees a new serial');
  t.equal(await servedAgentPortSerial(h), after, 'and on the agent port');
  t.ok(r.out.includes(after), 'the printed serial is the one served');
  const leaf = certInfo((await fetchServedChain('127.0.0.1', Number(h.adminAddr.split(':')[1])))[0]!);
  t.same([...leaf.dnsNames, ...leaf.ipAddresses].sort(), ['127.0.0.1', 'localhost'], 'default: the configured names');
  t.equal(leaf.keyType.startsWith('ec'), true, 'key type follows the (EC) CA');
  t.equal(agent.channel.state, 'ready', 'the connected agent is still connected');
  t.equal(agent.channel.stats.connects, 1, 'and never reconnected');

  const n = await cli(['certs', 'issue-hub', '--name', 'localhost,127.0.0.1', '--name', 'hub.example.test', '--ttl', '90d']);
  t.equal(n.code, 0, `issue-hub --name exits 0: ${n.err}`);
  const leaf2 = certInfo((await fetchServedChain('127.0.0.1', Number(h.adminAddr.split(':')[1])))[0]!);
  t.ok(leaf2.dnsNames.includes('hub.example.test'), `--name is in the SAN: ${leaf2.dnsNames}`);
  const life = leaf2.notAfter.getTime() - Date.now();
  t.ok(life > 89 * 86_400_000 && life <= 90 * 86_400_000 + 60_000, '--ttl 90d');
  t.equal(agent.channel.stats.connects, 1, 'the agent is still on its first connection');

  const bad = await cli(['certs', 'issue-hub', '--name', 'localhost,127.0.0.1,bad name!']);
  t.equal(bad.code, 1, 'a bad name is refused');
  t.match(bad.err, /bad hub name "bad name!"/);
  const missing = await cli(['certs', 'issue-hub', '--name', 'other.example.test']);
  t.equal(missing.code, 1, 'names that leave out a configured name are refused');
  t.match(missing.err, /leave out configured hub name\(s\) localhost, 127\.0\.0\.1/);
  t.equal(certInfo((await fetchServedChain('127.0.0.1', Number(h.adminAddr.split(':')[1])))[0]!).serialHex, leaf2.serialHex, 'refusals changed nothing');
});

t.test('issue-hub is for administrators only (a certs:replace grant is not enough); a hub without its CA key answers FAILED_PRECONDITION', async (t) => {
  const h = await startHub();
  t.teardown(() => h.close());
  const PW = 'observer-password-1';
  // A role holding certs:replace at platform scope is still not platform administration: the hub
  // certificate serves every tenant.
  await unaryT(h, h.admin.roles, h.admin.roles.CreateRole, { name: 'certops', description: '', grants: [{ permission: 'certs:replace', scope: '' }] });
  await unaryT(h, h.admin.users, h.admin.users.CreateUser, { username: 'obs', password: PW, roles: ['observer', 'certops'], tenants: ['default'] });
  const caFile = join(h.dir, 'ca-bundle.pem');
  await writeFile(caFile, h.caPem);
  const env = { TRELLIS_HOME: join(h.dir, 'home-obs'), TRELLIS_PASSWORD: PW };
  t.equal((await runCli(['login', '--hub', h.adminAddr, '--user', 'obs', '--ca', caFile], env)).code, 0);
  const before = await servedSerial(h);
  const denied = await runCli(['certs', 'issue-hub'], env);
  t.equal(denied.code, 1, 'refused');
  t.match(denied.err, /permission|denied/i, `PERMISSION_DENIED: ${denied.err.trim()}`);
  t.equal(await servedSerial(h), before, 'nothing changed');

  // A hub without its CA key.
  await h.stop();
  await rm(hubPaths(h.dataDir).caKey);
  await h.restart();
  t.equal(h.hub.components.pki.canIssue, false);
  const err = await new Promise<grpc.ServiceError | undefined>((resolve) => h.admin.certs.IssueHubCertificate({ names: [], ttlMs: 0 }, h.admin.metadata, (e: grpc.ServiceError | null) => resolve(e ?? undefined)));
  t.equal(err?.code, grpc.status.FAILED_PRECONDITION, 'FAILED_PRECONDITION');
  t.match(err?.details, /no CA key/, `a clear message: ${err?.details}`);
  t.match(err?.metadata.get('trellis-error-code')?.[0] ?? err?.details, /TRELLIS_E_CA_NO_KEY|no CA key/);
});

t.test('certs replace: a leaf alone is completed with the CA chain (enrollment and login pinning work); foreign chains are refused', async (t) => {
  const { h, cli } = await cliHub(t);
  const pki = h.hub.components.pki;
  const k = generateKey('ec-p256');
  const leaf = issueCertificate({
    issuerCertPem: pki.caCertPem, issuerKey: pki.caKey!, subjectPublicKey: k.publicKey, subject: { commonName: 'localhost' },
    dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], usage: 'server', notAfter: new Date(Date.now() + 20 * 86_400_000),
  });
  const leafFile = join(h.dir, 'leaf.pem'), keyFile = join(h.dir, 'leaf.key');
  await writeFile(leafFile, leaf);
  await writeFile(keyFile, k.privateKeyPem);
  const r = await cli(['certs', 'replace', '--hub-cert', leafFile, '--hub-key', keyFile]);
  t.equal(r.code, 0, `leaf-only replace accepted: ${r.err}`);
  const served = await fetchServedChain('127.0.0.1', Number(h.adminAddr.split(':')[1]));
  t.equal(fingerprintSha256(served[0]!), fingerprintSha256(leaf), 'the new leaf is served');
  t.ok(pinnedBundle(served, pki.caFingerprint), 'the served chain holds the hub CA (pinning finds it)');

  // Enrollment pins the CA from the join token; a fresh login pins by fingerprint.
  const enrolled = await h.enroll();
  t.ok(enrolled.agentId, 'enrollment (CA pinned from the join token) works');
  const a = await h.agent({ dataDir: enrolled.dataDir });
  t.equal(a.channel.state, 'ready', 'the new agent connects');
  const env2 = { TRELLIS_HOME: join(h.dir, 'home-pin'), TRELLIS_PASSWORD: ADMIN_PASSWORD };
  const pinLogin = await runCli(['login', '--hub', h.adminAddr, '--user', 'admin', '--ca-fingerprint', pki.caFingerprint], env2);
  t.equal(pinLogin.code, 0, `login pinned by fingerprint works: ${pinLogin.err}`);
  t.match(await readFileText(hubPaths(h.dataDir).hubCert), /BEGIN CERTIFICATE[\s\S]*BEGIN CERTIFICATE/, 'the persisted hub.pem holds the chain');

  // Our leaf followed by a certificate that is not in the hub CA chain: refused, naming it.
  const foreign = createCA({ commonName: 'Foreign CA', keyType: 'ec-p256' });
  await writeFile(join(h.dir, 'mixed.pem'), leaf + foreign.certPem);
  const mixed = await cli(['certs', 'replace', '--hub-cert', join(h.dir, 'mixed.pem'), '--hub-key', keyFile]);
  t.equal(mixed.code, 1, 'a chain leading to another CA is refused');
  t.match(mixed.err, /certificate 2 in the chain \(.*Foreign CA.*\) is not part of the hub CA chain agents trust/);

  // A foreign leaf and its foreign CA.
  const fk = generateKey('ec-p256');
  const fleaf = issueCertificate({
    issuerCertPem: foreign.certPem, issuerKey: foreign.key, subjectPublicKey: fk.publicKey, subject: { commonName: 'localhost' },
    dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], usage: 'server', notAfter: new Date(Date.now() + 86_400_000),
  });
  await writeFile(join(h.dir, 'f.pem'), fleaf + foreign.certPem);
  await writeFile(join(h.dir, 'f.key'), fk.privateKeyPem);
  const f = await cli(['certs', 'replace', '--hub-cert', join(h.dir, 'f.pem'), '--hub-key', join(h.dir, 'f.key')]);
  t.equal(f.code, 1, 'a foreign chain is refused');
  t.match(f.err, /not part of the hub CA chain|does not chain to the hub CA/);
  await writeFile(join(h.dir, 'f.pem'), fleaf);
  const f2 = await cli(['certs', 'replace', '--hub-cert', join(h.dir, 'f.pem'), '--hub-key', join(h.dir, 'f.key')]);
  t.equal(f2.code, 1, 'a foreign leaf alone is refused');
  t.match(f2.err, /does not chain to the hub CA/);
  t.equal(fingerprintSha256((await fetchServedChain('127.0.0.1', Number(h.adminAddr.split(':')[1])))[0]!), fingerprintSha256(leaf), 'the refusals changed nothing');

  // This leaf expires within 30 days: certs show warns, and so does the hub log at start.
  const show = await cli(['certs', 'show']);
  t.equal(show.code, 0);
  t.match(show.out, /^WARNING: the hub certificate \(serial [0-9a-f]+\) expires in 20 day\(s\)/m, 'certs show warns');
  t.notMatch(show.out, /WARNING: the CA certificate/, 'the CA (10 years) is not flagged');
  const before = h.logLines.length;
  await h.restart();
  await waitFor(() => h.logLines.slice(before).some((l) => /hub certificate [0-9a-f]+ expires on .*in 20 day/.test(l)), 5000, 'expiry warning in the log at start');
  t.ok(h.logLines.slice(before).some((l) => /hub certificate [0-9a-f]+ expires on .*in 20 day/.test(l)), 'the hub log warns at start');
});

t.test('no warning for a certificate far from expiry', async (t) => {
  const { h, cli } = await cliHub(t);
  const show = await cli(['certs', 'show']);
  t.equal(show.code, 0);
  t.notMatch(show.out, /WARNING/);
  t.notOk(h.logLines.some((l) => /expires on/.test(l)), 'no warning in the log');
});

t.test('the hub renews its own certificate at 2/3 of its life; no agent is dropped', async (t) => {
  const { h, cli } = await cliHub(t);
  const agent = await h.agent();
  const r = await cli(['certs', 'issue-hub', '--ttl', '3s', '--name', 'localhost,127.0.0.1,renew.example.test']);
  t.equal(r.code, 0, `a 3 s hub certificate: ${r.err}`);
  const first = await servedSerial(h);
  const t0 = Date.now();
  await waitFor(async () => (await servedSerial(h)) !== first, 20_000, 'a renewed certificate is served');
  t.not(await servedSerial(h), first, `renewed after ${Date.now() - t0} ms`);
  const renewed = certInfo((await fetchServedChain('127.0.0.1', Number(h.adminAddr.split(':')[1])))[0]!);
  t.ok(renewed.dnsNames.includes('renew.example.test'), 'the renewed certificate keeps the names');
  const life = renewed.notAfter.getTime() - renewed.notBefore.getTime();
  t.ok(life >= 2000 && life <= 5000, `and the lifetime (${life} ms)`);
  t.ok(h.logLines.some((l) => l.includes('hub certificate renewed from the internal CA')), 'logged');
  const recs = await auditRecords(h);
  t.ok(recs.some((e) => e.method === 'hub/RenewHubCertificate' && e.result === 'ok' && e.actor === 'hub'), 'audited');
  t.ok(recs.some((e) => e.method.endsWith('AdminCerts/IssueHubCertificate') && e.result === 'ok' && e.actor === 'admin'), 'issue-hub audited');
  t.equal(agent.channel.state, 'ready', 'the agent is still connected');
  t.equal(agent.channel.stats.connects, 1, 'on its first connection');
  // Stop renewing this fast before the teardown: a long-lived certificate again.
  t.equal((await cli(['certs', 'issue-hub'])).code, 0);
});

async function readFileText(p: string): Promise<string> {
  return (await import('node:fs/promises')).readFile(p, 'utf8');
}

async function auditRecords(h: TestHub): Promise<T.AuditRecord__Output[]> {
  const out: T.AuditRecord__Output[] = [];
  const s = h.admin.audit.ListAudit({ limit: 1000 }, h.admin.metadata);
  await new Promise<void>((resolve, reject) => {
    s.on('data', (r: T.AuditRecord__Output) => out.push(r));
    s.on('error', reject);
    s.on('end', () => resolve());
  });
  return out;
}

t.test('a hub without its CA key does not try to renew its own certificate during a CA rotation with a supplied CA (the next CA never signs the hub certificate before commit)', async (t) => {
  const { initHub } = await import('../hub/init.js');
  const { HubPki, issueHubCertificate } = await import('../hub/pki/index.js');
  const { HubCertLifecycle } = await import('../hub/pki/lifecycle.js');
  const { mkdtemp } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const dataDir = await mkdtemp(join(tmpdir(), 'trellis-lc-'));
  t.teardown(() => rm(dataDir, { recursive: true, force: true }));
  await initHub({ dataDir, names: ['localhost'], adminPassword: ADMIN_PASSWORD, config: { bind: '127.0.0.1' } });
  const p = hubPaths(dataDir);
  // A hub certificate due for renewal at once, then the CA key goes away (an operator-held CA).
  const short = issueHubCertificate(HubPki.load(p, ['localhost']), ['localhost'], 3_000);
  await writeFile(p.hubCert, short.certChainPem);
  await writeFile(p.hubKey, short.keyPem, { mode: 0o600 });
  await rm(p.caKey);
  const pki = HubPki.load(p, ['localhost']);
  const next = createCA({ commonName: 'next CA' });
  pki.setRotation({ next: { chain: [next.certPem], key: next.key } });
  t.ok(pki.canIssue, 'agent certificates come from the supplied next CA');
  const logged: string[] = [], audited: string[] = [];
  const log = { warn: () => undefined, info: () => undefined, error: (_o: unknown, m: string) => { logged.push(m); } };
  const lc = new HubCertLifecycle(pki, log as never, { record: (r: { method: string }) => { audited.push(r.method); } } as never);
  lc.start();
  t.teardown(() => lc.close());
  await new Promise((r) => setTimeout(r, 3_500));
  t.same(logged, [], 'no failed renewal logged');
  t.same(audited, [], 'and none audited');
  t.equal(pki.hubIdentity.certChainPem, short.certChainPem, 'the served certificate is unchanged');
});
