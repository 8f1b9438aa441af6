/**
 * `trellis hub init` in its three PKI modes (generated CA; operator CA with key, here an
 * intermediate under an operator root; operator CA without key plus an operator hub
 * certificate), the admin password rules, and the CLI front end. Real files in temp dirs, real
 * hubs on loopback, openssl as an outside judge of the certificates.
 */
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ADMIN_PASSWORD, callError, captureLogger, startHub, tempDir, waitFor } from './helpers/hub.js';
import { initHub, type InitOptions } from '../hub/init.js';
import { Hub } from '../hub/hub.js';
import { adminClients, call } from '../cli/client.js';
import {
  certInfo, createCA, fingerprintSha256, generateKey, issueCertificate, keyMatchesCert, loadPrivateKey, splitPemBundle, verifyIssuedBy,
  type KeyType,
} from '../certs/index.js';
import { describeKey } from '../certs/keys.js';
import { fetchServedChain } from '../common/tlsprobe.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const DAY = 86_400_000;
const TD = 'trellis.local';
const TEST_CONFIG = { agentPort: 0, adminPort: 0, webPort: 0, bind: '127.0.0.1' };
const NAMES = ['localhost', '127.0.0.1'];
const ROOT = fileURLToPath(new URL('../..', import.meta.url)); // dist/test -> package root
const inDays = (n: number): Date => new Date(Date.now() + n * DAY);

function openssl(...args: string[]): { ok: boolean; out: string } {
  const r = spawnSync('openssl', args, { encoding: 'utf8' });
  return { ok: r.status === 0, out: `${r.stdout}${r.stderr}` };
}

const mode = (p: string): number => statSync(p).mode & 0o777;
const read = (p: string): string => readFileSync(p, 'utf8');

/** Runs `node bin/trellis.js ...` with stdin closed (no terminal, so no prompts). */
function cli(args: string[], env: Record<string, string | undefined> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const e: NodeJS.ProcessEnv = { ...process.env };
  for (const k of Object.keys(e)) if (k.startsWith('TRELLIS_')) delete e[k];
  for (const [k, v] of Object.entries(env)) if (v !== undefined) e[k] = v;
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [join(ROOT, 'bin', 'trellis.js'), ...args], { cwd: ROOT, env: e, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    p.stdout.on('data', (d) => { stdout += d; });
    p.stderr.on('data', (d) => { stderr += d; });
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const initArgs = (dataDir: string) => ['hub', 'init', '--data', dataDir, '--name', NAMES.join(','), '--bind', '127.0.0.1', '--agent-port', '0', '--admin-port', '0', '--web-port', '0'];

function baseInit(dataDir: string, o: Partial<InitOptions> = {}): InitOptions {
  return { dataDir, names: NAMES, adminPassword: ADMIN_PASSWORD, config: TEST_CONFIG, ...o };
}

/** An operator PKI: a root, an intermediate under it, files for both. */
function operatorPki(dir: string) {
  const root = createCA({ commonName: 'Operator Root CA' });
  const ik = generateKey('ec-p256');
  const intermediate = issueCertificate({
    issuerCertPem: root.certPem, issuerKey: root.key, subjectPublicKey: ik.publicKey, subject: { commonName: 'Operator Issuing CA', organization: 'Ops' },
    usage: 'ca', pathLength: 0, notAfter: inDays(1825),
  });
  const files = {
    root: join(dir, 'root.pem'), rootKey: join(dir, 'root-key.pem'), intermediate: join(dir, 'intermediate.pem'),
    chain: join(dir, 'ca-chain.pem'), intermediateKey: join(dir, 'intermediate-key.pem'), wrongOrder: join(dir, 'wrong-order.pem'),
  };
  writeFileSync(files.root, root.certPem);
  writeFileSync(files.rootKey, root.keyPem);
  writeFileSync(files.intermediate, intermediate);
  writeFileSync(files.chain, intermediate + root.certPem);
  writeFileSync(files.wrongOrder, root.certPem + intermediate);
  writeFileSync(files.intermediateKey, ik.privateKeyPem, { mode: 0o600 });
  return { root, intermediate, intermediateKey: ik, files };
}

/** A certificate issued by `ca`, written with its key into `dir` as NAME.pem / NAME-key.pem. */
function issueTo(dir: string, name: string, ca: { certPem: string; key: ReturnType<typeof createCA>['key'] }, o: { usage: 'server' | 'client'; dnsNames?: string[]; ipAddresses?: string[]; uris?: string[] }) {
  const k = generateKey('ec-p256');
  const certPem = issueCertificate({
    issuerCertPem: ca.certPem, issuerKey: ca.key, subjectPublicKey: k.publicKey, subject: { commonName: name }, notAfter: inDays(90), ...o,
  });
  const cert = join(dir, `${name}.pem`), key = join(dir, `${name}-key.pem`);
  writeFileSync(cert, certPem);
  writeFileSync(key, k.privateKeyPem, { mode: 0o600 });
  return { cert, key, certPem };
}

t.test('mode 1, generated CA: a 10-year CA, a hub certificate naming every --name, keys 0600 in a 0700 dir', async (t) => {
  await using tmp = await tempDir();
  const dataDir = join(tmp.path, 'hub');
  const names = ['hub.example.test', 'alt.example.test,10.1.2.3', 'localhost', '127.0.0.1', '::1'];
  const r = await initHub(baseInit(dataDir, { names }));
  t.equal(r.mode, 'generated-ca');
  t.equal(r.generatedPassword, undefined, 'no password generated when one was given');

  t.equal(mode(dataDir), 0o700, 'data dir 0700');
  t.equal(mode(join(dataDir, 'ca-key.pem')), 0o600, 'ca-key.pem 0600');
  t.equal(mode(join(dataDir, 'hub-key.pem')), 0o600, 'hub-key.pem 0600');
  t.equal(mode(join(dataDir, 'state.json')), 0o600, 'state.json 0600');

  const caPem = read(join(dataDir, 'ca.pem'));
  t.equal(splitPemBundle(caPem).length, 1);
  t.equal(r.caFingerprint, fingerprintSha256(caPem));
  const ca = certInfo(caPem);
  t.ok(ca.isCA);
  t.equal(ca.keyType, 'ec-p256', 'default CA key type');
  const life = ca.notAfter.getTime() - ca.notBefore.getTime();
  t.ok(life >= 3650 * DAY && life <= 3650 * DAY + 10 * 60_000, `CA valid 10 years (${(life / DAY).toFixed(2)} d)`);
  t.ok(keyMatchesCert(loadPrivateKey(read(join(dataDir, 'ca-key.pem'))), caPem), 'ca-key.pem is the CA key');

  const [leaf, ...rest] = splitPemBundle(read(join(dataDir, 'hub.pem')));
  t.same(rest, [splitPemBundle(caPem)[0]], 'hub.pem is the leaf then the CA');
  const hub = certInfo(leaf!);
  t.same([...hub.dnsNames].sort(), ['alt.example.test', 'hub.example.test', 'localhost']);
  t.same([...hub.ipAddresses].sort(), ['10.1.2.3', '127.0.0.1', '::1']);
  t.same(hub.extKeyUsage, ['serverAuth']);
  t.ok(keyMatchesCert(loadPrivateKey(read(join(dataDir, 'hub-key.pem'))), leaf!));
  const v = openssl('verify', '-CAfile', join(dataDir, 'ca.pem'), '-purpose', 'sslserver', join(dataDir, 'hub.pem'));
  t.ok(v.ok, `openssl accepts the hub certificate: ${v.out}`);

  const cfg = JSON.parse(read(join(dataDir, 'hub.json')));
  t.same(cfg.names, ['hub.example.test', 'alt.example.test', '10.1.2.3', 'localhost', '127.0.0.1', '::1']);

  // Negative: no names at all.
  const err = await callError(initHub(baseInit(join(tmp.path, 'none'), { names: [' , '] })));
  t.equal(err?.code, 'TRELLIS_E_INVALID_ARGUMENT');
  t.match(err?.message, /at least one --name/);
  t.notOk(existsSync(join(tmp.path, 'none', 'hub.json')));
});

t.test('mode 1: --ca-key-type ec-p384 and rsa-3072 make a CA of that key type', async (t) => {
  await using tmp = await tempDir();
  for (const kt of ['ec-p384', 'rsa-3072'] as KeyType[]) {
    const dataDir = join(tmp.path, kt);
    await initHub(baseInit(dataDir, { caKeyType: kt }));
    const caPem = read(join(dataDir, 'ca.pem'));
    t.equal(certInfo(caPem).keyType, kt, `${kt}: CA certificate key`);
    t.equal(describeKey(loadPrivateKey(read(join(dataDir, 'ca-key.pem')))), kt, `${kt}: ca-key.pem`);
    const leaf = splitPemBundle(read(join(dataDir, 'hub.pem')))[0]!;
    t.ok(verifyIssuedBy(leaf, caPem), `${kt}: hub certificate signed by the CA`);
    t.ok(openssl('verify', '-CAfile', join(dataDir, 'ca.pem'), join(dataDir, 'hub.pem')).ok, `${kt}: openssl accepts it`);
  }
  // The CLI refuses key types it does not offer.
  const bad = await cli([...initArgs(join(tmp.path, 'bad')), '--ca-key-type', 'rsa-2048'], { TRELLIS_ADMIN_PASSWORD: ADMIN_PASSWORD });
  t.equal(bad.code, 1);
  t.match(bad.stderr, /--ca-key-type must be one of ec-p256, ec-p384, rsa-3072, rsa-4096 \(TRELLIS_E_INVALID_ARGUMENT\)/);
  t.notOk(existsSync(join(tmp.path, 'bad', 'hub.json')));
});

t.test('`trellis hub init` on the CLI prints the CA fingerprint, keeps a given password unprinted, and the hub it makes runs', async (t) => {
  await using tmp = await tempDir();
  const dataDir = join(tmp.path, 'hub');
  const r = await cli(initArgs(dataDir), { TRELLIS_ADMIN_PASSWORD: ADMIN_PASSWORD });
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, `hub initialised in ${dataDir} (generated-ca)`);
  t.match(r.stdout, `CA fingerprint: sha256:${fingerprintSha256(read(join(dataDir, 'ca.pem')))}`);
  t.match(r.stdout, 'admin user: admin');
  t.notMatch(r.stdout, /admin password/);
  t.notOk(r.stdout.includes(ADMIN_PASSWORD) || r.stderr.includes(ADMIN_PASSWORD), 'the given password is not echoed');
  await using h = await startHub({ dataDir });
  const agent = await h.agent();
  t.equal(agent.channel.state, 'ready', 'an agent enrolls and connects');
});

t.test('with no password given, one is generated, printed once, stored only as a hash, and logging in with it works', async (t) => {
  await using tmp = await tempDir();
  const dataDir = join(tmp.path, 'hub');
  const r = await cli(initArgs(dataDir));
  t.equal(r.code, 0, r.stderr);
  const m = /admin password \(shown once, store it now\): (\S+)/.exec(r.stdout);
  t.ok(m, 'a generated password is printed');
  const password = m![1]!;
  t.ok(password.length >= 12);
  t.equal(r.stdout.split(password).length - 1, 1, 'printed exactly once');
  t.notOk(r.stderr.includes(password));

  const state = read(join(dataDir, 'state.json'));
  t.notOk(state.includes(password), 'state.json does not hold the password in clear');
  t.match(state, /scrypt\$/, 'it holds a scrypt hash');

  const { log } = captureLogger();
  const hub = await Hub.start({ dataDir, log });
  t.teardown(() => hub.close(1000));
  const caPem = hub.components.pki.trustBundle.join('');
  const admin = adminClients(`127.0.0.1:${hub.adminPort}`, caPem);
  t.teardown(() => admin.close());
  const login = (pw: string) => call<T.LoginRequest, T.LoginResponse__Output>(admin, admin.auth, admin.auth.Login, { username: 'admin', password: pw });
  const ok = await login(password);
  t.equal(ok.username, 'admin');
  t.match(ok.token, /^tls1_/);
  const bad = await callError(login(password.slice(0, -1) + (password.endsWith('x') ? 'y' : 'x')));
  t.equal(bad?.code, 'TRELLIS_E_UNAUTHENTICATED');
  t.equal(bad?.grpcCode, grpc.status.UNAUTHENTICATED);
});

t.test('an admin password under 12 characters fails clearly and changes nothing', async (t) => {
  await using tmp = await tempDir();
  const dataDir = join(tmp.path, 'hub');
  const r = await cli(initArgs(dataDir), { TRELLIS_ADMIN_PASSWORD: 'short-pw' });
  t.equal(r.code, 1);
  t.match(r.stderr, /at least 12 characters.*\(TRELLIS_E_INVALID_ARGUMENT\)/);
  t.notOk(existsSync(join(dataDir, 'hub.json')), 'no hub made');
  t.notOk(existsSync(join(dataDir, 'ca-key.pem')), 'no CA key left behind');

  // A valid one works afterwards.
  const ok = await cli(initArgs(dataDir), { TRELLIS_ADMIN_PASSWORD: ADMIN_PASSWORD });
  t.equal(ok.code, 0, ok.stderr);

  // --force with a bad password must not wreck the hub that is there.
  const caBefore = read(join(dataDir, 'ca.pem'));
  const forced = await callError(initHub(baseInit(dataDir, { force: true, adminPassword: 'short-pw' })));
  t.equal(forced?.code, 'TRELLIS_E_INVALID_ARGUMENT');
  t.match(forced?.message, /at least 12 characters/);
  t.equal(read(join(dataDir, 'ca.pem')), caBefore, 'CA unchanged');
  t.ok(existsSync(join(dataDir, 'ca-key.pem')), 'CA key kept');
  await using h = await startHub({ dataDir }); // logs in with the original password
  t.ok(h.hub.components.pki.canIssue);
  t.ok((await h.enroll()).agentId, 'the hub still enrolls');
});

t.test('init refuses an existing hub without --force; --force starts over with a new CA', async (t) => {
  await using tmp = await tempDir();
  const dataDir = join(tmp.path, 'hub');
  const first = await initHub(baseInit(dataDir));
  const caBefore = read(join(dataDir, 'ca.pem'));
  const err = await callError(initHub(baseInit(dataDir, { adminPassword: 'another-password-2' })));
  t.equal(err?.code, 'TRELLIS_E_ALREADY_EXISTS');
  t.match(err?.message, /already holds a hub .* pass --force/);
  t.equal(read(join(dataDir, 'ca.pem')), caBefore, 'CA untouched');

  const again = await initHub(baseInit(dataDir, { force: true, adminPassword: 'another-password-2' }));
  t.not(again.caFingerprint, first.caFingerprint, 'a new CA');
  t.equal(again.caFingerprint, fingerprintSha256(read(join(dataDir, 'ca.pem'))));
  const { log } = captureLogger();
  const hub = await Hub.start({ dataDir, log });
  t.teardown(() => hub.close(1000));
  const admin = adminClients(`127.0.0.1:${hub.adminPort}`, hub.components.pki.trustBundle.join(''));
  t.teardown(() => admin.close());
  const login = (pw: string) => call<T.LoginRequest, T.LoginResponse__Output>(admin, admin.auth, admin.auth.Login, { username: 'admin', password: pw });
  t.equal((await login('another-password-2')).username, 'admin', 'the new password works');
  t.equal((await callError(login(ADMIN_PASSWORD)))?.code, 'TRELLIS_E_UNAUTHENTICATED', 'the old one does not');
});

t.test('mode 2, operator intermediate CA with key: hub cert from the intermediate, chain served, agents enroll and connect', async (t) => {
  await using tmp = await tempDir();
  const op = operatorPki(tmp.path);
  const dataDir = join(tmp.path, 'hub');
  const r = await initHub(baseInit(dataDir, { caCertFile: op.files.chain, caKeyFile: op.files.intermediateKey }));
  t.equal(r.mode, 'supplied-ca');
  t.equal(r.caFingerprint, fingerprintSha256(op.intermediate), 'the issuing CA is the intermediate');
  t.same(splitPemBundle(read(join(dataDir, 'ca.pem'))), [op.intermediate, op.root.certPem]);
  t.equal(mode(join(dataDir, 'ca-key.pem')), 0o600);

  const hubChain = splitPemBundle(read(join(dataDir, 'hub.pem')));
  t.same(hubChain.slice(1), [op.intermediate, op.root.certPem], 'hub.pem carries the chain up to the root');
  t.ok(verifyIssuedBy(hubChain[0]!, op.intermediate), 'hub certificate issued by the intermediate');
  t.notOk(verifyIssuedBy(hubChain[0]!, op.root.certPem), 'not by the root');
  t.ok(openssl('verify', '-CAfile', op.files.root, '-untrusted', op.files.intermediate, join(dataDir, 'hub.pem')).ok);

  await using h = await startHub({ dataDir });
  const served = await fetchServedChain('127.0.0.1', h.hub.adminPort, 5000);
  t.same(served.slice(1), [op.intermediate, op.root.certPem], 'the hub serves leaf, intermediate, root');
  t.equal(served[0], hubChain[0]);

  const { dataDir: agentDir, agentId } = await h.enroll();
  const agentPem = join(agentDir, 'agent.pem');
  t.ok(verifyIssuedBy(read(agentPem), op.intermediate), 'agent certificate issued by the intermediate');
  const v = openssl('verify', '-CAfile', op.files.root, '-untrusted', op.files.intermediate, agentPem);
  t.ok(v.ok, `openssl accepts the agent certificate under the operator root: ${v.out}`);
  t.notOk(openssl('verify', '-CAfile', op.files.root, agentPem).ok, 'and needs the intermediate to do so');
  t.same(splitPemBundle(read(join(agentDir, 'ca.pem'))), [op.intermediate, op.root.certPem], 'the agent trusts the whole chain');

  const agent = await h.agent({ dataDir: agentDir });
  t.equal(agent.channel.state, 'ready', 'the agent connects');
  const list = await call<T.ListAgentsRequest, T.ListAgentsResponse__Output>(h.admin, h.admin.agents, h.admin.agents.ListAgents, {});
  t.same(list.agents.map((a) => [a.id, a.status]), [[agentId, 'online']]);
});

t.test('mode 2 refuses a chain in the wrong order and a key that is not the issuing CA\'s', async (t) => {
  await using tmp = await tempDir();
  const op = operatorPki(tmp.path);
  const order = await callError(initHub(baseInit(join(tmp.path, 'a'), { caCertFile: op.files.wrongOrder, caKeyFile: op.files.rootKey })));
  t.equal(order?.code, 'TRELLIS_E_INVALID_ARGUMENT');
  t.match(order?.message, /did not issue certificate 1; list the issuing CA first, then its parents/);
  const key = await callError(initHub(baseInit(join(tmp.path, 'b'), { caCertFile: op.files.chain, caKeyFile: op.files.rootKey })));
  t.equal(key?.code, 'TRELLIS_E_INVALID_ARGUMENT');
  t.match(key?.message, /is not the key of the first certificate/);
  const keyOnly = await callError(initHub(baseInit(join(tmp.path, 'c'), { caKeyFile: op.files.intermediateKey })));
  t.match(keyOnly?.message, /--ca-key needs --ca-cert/);
  for (const d of ['a', 'b', 'c']) t.notOk(existsSync(join(tmp.path, d, 'hub.json')), `nothing made in ${d}`);
});

t.test('mode 3, operator CA without key: init checks the hub certificate chains to the CA and covers every name', async (t) => {
  await using tmp = await tempDir();
  const op = createCA({ commonName: 'Operator CA' });
  writeFileSync(join(tmp.path, 'op-ca.pem'), op.certPem);
  const caCertFile = join(tmp.path, 'op-ca.pem');
  const good = issueTo(tmp.path, 'hub-good', op, { usage: 'server', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
  const noIp = issueTo(tmp.path, 'hub-no-ip', op, { usage: 'server', dnsNames: ['localhost'] });
  const other = createCA({ commonName: 'Someone Else CA' });
  const foreign = issueTo(tmp.path, 'hub-foreign', other, { usage: 'server', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });

  const missing = await callError(initHub(baseInit(join(tmp.path, 'a'), { caCertFile, hubCertFile: noIp.cert, hubKeyFile: noIp.key })));
  t.equal(missing?.code, 'TRELLIS_E_CERT_INVALID');
  t.match(missing?.message, /subjectAltName lacks 127\.0\.0\.1/, 'names the missing name');
  t.notMatch(missing?.message, /localhost/, 'and only that one');

  const chain = await callError(initHub(baseInit(join(tmp.path, 'b'), { caCertFile, hubCertFile: foreign.cert, hubKeyFile: foreign.key })));
  t.equal(chain?.code, 'TRELLIS_E_CERT_INVALID');
  t.match(chain?.message, /does not chain to the hub CA/);

  const noHubCert = await callError(initHub(baseInit(join(tmp.path, 'c'), { caCertFile })));
  t.equal(noHubCert?.code, 'TRELLIS_E_INVALID_ARGUMENT');
  t.match(noHubCert?.message, /no --ca-key the hub cannot issue its own certificate: also give --hub-cert and --hub-key/);

  const wrongKey = await callError(initHub(baseInit(join(tmp.path, 'd'), { caCertFile, hubCertFile: good.cert, hubKeyFile: noIp.key })));
  t.equal(wrongKey?.code, 'TRELLIS_E_CERT_INVALID');
  t.match(wrongKey?.message, /key does not match/);
  for (const d of ['a', 'b', 'c', 'd']) t.notOk(existsSync(join(tmp.path, d, 'hub.json')), `nothing made in ${d}`);

  // The CLI says the same for a missing --hub-cert.
  const viaCli = await cli([...initArgs(join(tmp.path, 'e')), '--ca-cert', caCertFile], { TRELLIS_ADMIN_PASSWORD: ADMIN_PASSWORD });
  t.equal(viaCli.code, 1);
  t.match(viaCli.stderr, /also give --hub-cert and --hub-key signed by that CA \(TRELLIS_E_INVALID_ARGUMENT\)/);

  const dataDir = join(tmp.path, 'hub');
  const r = await initHub(baseInit(dataDir, { caCertFile, hubCertFile: good.cert, hubKeyFile: good.key }));
  t.equal(r.mode, 'supplied-ca-no-key');
  t.equal(r.caFingerprint, fingerprintSha256(op.certPem));
  t.notOk(existsSync(join(dataDir, 'ca-key.pem')), 'no CA key in the data dir');
  t.same(splitPemBundle(read(join(dataDir, 'hub.pem'))), [good.certPem, op.certPem], 'the operator certificate, then the CA');
  t.equal(mode(join(dataDir, 'hub-key.pem')), 0o600);
});

t.test('mode 3: Enroll answers FAILED_PRECONDITION, and an agent with an operator-issued certificate connects', async (t) => {
  await using tmp = await tempDir();
  const op = createCA({ commonName: 'Operator CA' });
  const caCertFile = join(tmp.path, 'op-ca.pem');
  writeFileSync(caCertFile, op.certPem);
  const hubCert = issueTo(tmp.path, 'hub', op, { usage: 'server', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
  const dataDir = join(tmp.path, 'hub-data');
  await initHub(baseInit(dataDir, { caCertFile, hubCertFile: hubCert.cert, hubKeyFile: hubCert.key }));
  await using h = await startHub({ dataDir });
  t.equal(h.hub.components.pki.canIssue, false);

  const token = await h.token();
  const err = await callError(h.enroll({ token }));
  t.equal(err?.code, 'TRELLIS_E_CA_NO_KEY', String(err?.message));
  t.equal(err?.grpcCode, grpc.status.FAILED_PRECONDITION);
  t.match(err?.message, /operator-supplied CA and no CA key, so it cannot enroll agents: issue the agent a certificate with your CA/);
  const info = (await call<T.ListJoinTokensRequest, T.ListJoinTokensResponse__Output>(h.admin, h.admin.tokens, h.admin.tokens.ListJoinTokens, { includeInactive: true })).tokens;
  t.equal(info.find((x) => x.id === token.split('.')[1])?.used, 0, 'the token is not used');

  const opAgent = issueTo(tmp.path, 'op-1', op, { usage: 'client', uris: [`spiffe://${TD}/tenant/default/agent/op-1`] });
  const agent = await h.agent({ dataDir: join(tmp.path, 'op-1-data'), certFile: opAgent.cert, keyFile: opAgent.key, caFile: caCertFile, hub: h.agentAddr });
  t.equal(agent.channel.state, 'ready', 'the operator-issued agent connects');
  const listed = async () => (await call<T.ListAgentsRequest, T.ListAgentsResponse__Output>(h.admin, h.admin.agents, h.admin.agents.ListAgents, {})).agents;
  await waitFor(async () => (await listed()).some((a) => a.id === 'op-1' && a.status === 'online'), 5000, 'op-1 online');
  const a = (await listed()).find((x) => x.id === 'op-1')!;
  t.equal(a.tenant, 'default');
  t.equal(a.spiffeId, `spiffe://${TD}/tenant/default/agent/op-1`);

  // Negative: a certificate from the same CA naming another trust domain is refused for good.
  const stranger = issueTo(tmp.path, 'op-2', op, { usage: 'client', uris: ['spiffe://other.example/tenant/default/agent/op-2'] });
  const refused = await h.agent({ dataDir: join(tmp.path, 'op-2-data'), certFile: stranger.cert, keyFile: stranger.key, caFile: caCertFile, hub: h.agentAddr });
  t.equal(refused.channel.state, 'closed');
  const why = await refused.channel.closedPromise;
  t.equal((why as { code?: string } | undefined)?.code, 'TRELLIS_E_PERMISSION_DENIED');
  t.match(why?.message, /carries no agent identity/);
  t.notOk((await listed()).some((x) => x.id === 'op-2'), 'op-2 is not registered');
});
