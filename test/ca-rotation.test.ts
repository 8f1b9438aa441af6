/**
 * CA rotation in phases (issue 11 §5): start → agents renew → commit, or rollback, with real
 * hubs, real agents (agent/agent.ts over mTLS gRPC) and real files.
 */
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import * as https from 'node:https';
import { readFileSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { startHub, waitFor, login, callError, fileAgentLogger, tempDir, ADMIN_PASSWORD, type TestHub } from './helpers/hub.js';
import { startCli, runCli, type CliProcess } from './helpers/cli.js';
import { initHub } from '../hub/init.js';
import { freePorts } from '../bench/lib.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import { v1 } from '../common/proto.js';
import { CLIENT_OPTIONS } from '../common/grpc-options.js';
import { createCA, fingerprintSha256, splitPemBundle, certInfo, issueCertificate, generateKey, verifyIssuedBy } from '../certs/index.js';
import { agentPaths } from '../agent/identity.js';
import { parseJoinToken } from '../common/jointoken.js';
import { Agent } from '../agent/agent.js';
import { hubPaths } from '../hub/paths.js';
import { HubPki, issueHubCertificate } from '../hub/pki/index.js';
import { loadPrivateKey } from '../certs/index.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

type Status = T.CaRotationStatus__Output;

const rot = {
  start: (a: AdminClients, r: Partial<T.RotateStartRequest> = {}) => call<T.RotateStartRequest, Status>(a, a.ca, a.ca.RotateStart, { windowMs: 2_000, ...r }, 60_000),
  status: (a: AdminClients) => call<T.GetRotationRequest, Status>(a, a.ca, a.ca.GetRotation, {}),
  commit: (a: AdminClients, force = false) => call<T.RotateCommitRequest, Status>(a, a.ca, a.ca.RotateCommit, { force }, 60_000),
  rollback: (a: AdminClients) => call<T.RotateRollbackRequest, Status>(a, a.ca, a.ca.RotateRollback, {}, 60_000),
};

/** An admin client of the logged-in admin that trusts `caPem` (a fresh channel, so a fresh handshake). */
function adminWith(h: TestHub, caPem: string): AdminClients {
  const token = h.admin.metadata.get('authorization')[0] as string;
  return adminClients(h.adminAddr, caPem, token.replace(/^Bearer /, ''), '*');
}

function webVersion(h: TestHub, caPem: string): Promise<{ caFingerprint: string }> {
  return new Promise((resolve, reject) => {
    https.get({ host: '127.0.0.1', port: h.hub.webPort, path: '/version', ca: caPem, servername: 'localhost' }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve(JSON.parse(body)));
    }).on('error', reject);
  });
}

/** Counts events at the hub by payload key (agent index:n), across hub restarts. */
function eventCounter(): { seen: Set<string>; attach(h: TestHub): void } {
  const seen = new Set<string>();
  return {
    seen,
    attach(h) {
      h.hub.components.events.subscribe((batch) => {
        for (const e of batch) {
          if (e.type !== 'core.rotation') continue;
          const p = JSON.parse(e.payload.toString('utf8')) as { a: number; n: number };
          seen.add(`${p.a}:${p.n}`);
        }
      });
    },
  };
}

t.test('20 agents through start → renew → hub restart → commit while events flow: no stream lost for good, no event lost', async (t) => {
  await using h = await startHub();
  const oldFp = h.hub.components.pki.caFingerprint;
  const N = 20;
  const agents: Agent[] = [];
  for (let i = 0; i < N; i++) agents.push(await h.agent());
  const closedForGood: string[] = [];
  for (const a of agents) a.channel.on('state', (s: string) => { if (s === 'closed') closedForGood.push(a.agentId ?? '?'); });
  const counter = eventCounter();
  counter.attach(h);
  const published = new Set<string>();
  let n = 0;
  const pump = setInterval(() => {
    n++;
    agents.forEach((a, i) => { a.publishEvent('core.rotation', { a: i, n }); published.add(`${i}:${n}`); });
  }, 100);
  t.teardown(() => clearInterval(pump));

  const started = await rot.start(h.admin, { windowMs: 3_000 });
  t.equal(started.phase, 'started');
  const newFp = started.nextCa!.fingerprintSha256;
  t.not(newFp, oldFp, 'a new CA');
  t.same(started.trustBundle.map((c) => fingerprintSha256(c)).sort(), [oldFp, newFp].sort(), 'the trust bundle is old+new');
  t.equal(started.hubCertIssuerFingerprint, oldFp, 'the hub keeps serving its old-CA certificate until commit');
  t.equal((statSync(hubPaths(h.dataDir).caNextKey).mode & 0o777), 0o600, 'the new CA key is stored 0600');
  // Every connected agent got the bundle at once.
  await waitFor(() => agents.every((a) => splitPemBundle(a.certificate.caPem).length === 2), 10_000, 'bundle pushed to every agent');

  // Hub restart mid-rotation: the phase survives; agents reconnect and still renew.
  await h.restart();
  counter.attach(h);
  const afterRestart = await rot.status(h.admin);
  t.equal(afterRestart.phase, 'started', 'the rotation survives a hub restart');
  t.equal(afterRestart.nextCa!.fingerprintSha256, newFp, 'with the same new CA');

  await waitFor(async () => (await rot.status(h.admin)).agentsOnNewCa === N, 60_000, 'every agent renewed from the new CA and connected with it').catch(async (e) => {
    const st = await rot.status(h.admin);
    console.error('still lagging:', JSON.stringify(st.lagging), agents.map((a) => a.channel.state).join(','));
    for (const l of st.lagging) console.error(JSON.stringify(await h.hub.components.agents.get(l.id)).slice(0, 600));
    // Why a channel gave up (a refusal it took as final), with the serial it held.
    for (const a of agents.filter((x) => x.channel.state === 'closed')) {
      const why = await Promise.race([a.channel.closedPromise, new Promise((r) => setTimeout(r, 100, 'still open'))]);
      console.error('closed channel:', a.agentId, 'holding', a.certificate.serial, 'because', String((why as Error | undefined)?.message ?? why), (why as { code?: string } | undefined)?.code ?? '');
    }
    console.error(h.agentLogLines().filter((l) => !/connected to the hub|event/.test(l)).slice(-40).join('\n'));
    throw e;
  });
  for (const a of agents) t.ok(verifyIssuedBy(a.certificate.certPem, started.nextCa!.pem), 'agent certificate from the new CA');
  const mid = await rot.status(h.admin);
  t.equal(mid.agentsOnOldCa, 0);
  t.equal(mid.lagging.length, 0);

  const committed = await rot.commit(h.admin);
  t.equal(committed.phase, 'idle');
  t.equal(committed.currentCa!.fingerprintSha256, newFp, 'the new CA is the CA');
  t.equal(committed.hubCertIssuerFingerprint, newFp, 'the hub certificate is issued by the new CA');
  t.same(committed.trustBundle.map((c) => fingerprintSha256(c)), [newFp], 'the old CA left the bundle');
  t.equal(h.hub.components.pki.caFingerprint, newFp);
  t.equal(fingerprintSha256(splitPemBundle(readFileSync(hubPaths(h.dataDir).caCert, 'utf8'))[0]!), newFp, 'ca.pem holds the new CA');
  await waitFor(() => agents.every((a) => splitPemBundle(a.certificate.caPem).length === 1), 10_000, 'new-only bundle pushed');

  // Events keep flowing for a while after commit, then everything sent must be at the hub.
  await new Promise((r) => setTimeout(r, 1_000));
  clearInterval(pump);
  await waitFor(() => agents.every((a) => a.channel.backlog === 0), 60_000, 'every outbox drained');
  const lost = [...published].filter((k) => !counter.seen.has(k));
  t.equal(lost.length, 0, `0 events lost (${published.size} published)`);
  t.same(closedForGood, [], '0 streams lost for good');
  t.ok(agents.every((a) => a.channel.state === 'ready'), 'every agent is connected');

  // After commit: /version and new tokens carry the new fingerprint; the old CA no longer verifies the hub.
  const newPem = committed.currentCa!.pem;
  t.equal((await webVersion(h, newPem)).caFingerprint, newFp, '/version carries the new fingerprint');
  const tok = await h.token();
  t.equal(parseJoinToken(tok).caFingerprint, newFp, 'new join tokens pin the new CA');
  const oldOnly = adminWith(h, started.currentCa!.pem);
  const e = await callError(rot.status(oldOnly));
  oldOnly.close();
  t.ok(e, 'a client that trusts only the old CA cannot verify the hub any more');
  const fresh = adminWith(h, newPem);
  t.equal((await rot.status(fresh)).phase, 'idle', 'a client with the new CA can');
  fresh.close();

  const audit = await h.hub.components.audit.query({ methodContains: 'AdminCa/' });
  t.ok(audit.some((r) => r.method.endsWith('AdminCa/RotateStart') && r.result === 'ok'), 'start audited');
  t.ok(audit.some((r) => r.method.endsWith('AdminCa/RotateCommit') && r.result === 'ok'), 'commit audited');
  t.ok(h.logLines.some((l) => l.includes('CA rotation committed')), 'commit logged');
});

t.test('offline agents: before commit one reconnects and renews; commit refused while one lags, --force names it; after commit it gets a clear re-enroll error', async (t) => {
  await using h = await startHub();
  const early = await h.agent();
  const lateA = await h.agent();
  const lateB = await h.agent();
  const dirA = agentPaths(join(h.dir, 'agent-2')).dir;
  const dirB = agentPaths(join(h.dir, 'agent-3')).dir;
  const idB = lateB.agentId!;
  await lateA.close();
  await lateB.close();
  const oldToken = await h.token(); // made before the rotation, never used

  const s = await rot.start(h.admin, { windowMs: 1_000 });
  await waitFor(async () => (await rot.status(h.admin)).agentsOnNewCa === 1, 30_000, 'the connected agent renewed');
  t.equal(splitPemBundle(readFileSync(agentPaths(dirA).ca, 'utf8')).length, 1, 'offline agent A trusts only the old CA');

  // (a) offline for the whole rotation so far, it reconnects before commit: connects, gets the bundle, renews.
  const a = await h.agent({ dataDir: dirA });
  t.equal(a.channel.state, 'ready', 'agent A connects before commit with only the old CA');
  await waitFor(() => verifyIssuedBy(a.certificate.certPem, s.nextCa!.pem), 30_000, 'agent A renewed from the new CA');
  t.equal(splitPemBundle(a.certificate.caPem).length, 2, 'and keeps the old+new bundle');
  await waitFor(async () => (await rot.status(h.admin)).agentsOnNewCa === 2, 30_000, 'agent A connected with its new certificate');

  // B is still offline but active (seen within the active window): commit is refused and names it.
  const refused = await callError(rot.commit(h.admin));
  t.equal(refused?.code, 'TRELLIS_E_ROTATION', 'commit refused while an active agent lags');
  t.match(refused?.message, new RegExp(`1 active agent\\(s\\) still hold a certificate from the old CA: ${idB}`), 'naming the agent');
  t.match(refused?.message, /--force/);
  const st = await rot.status(h.admin);
  t.equal(st.agentsOnOldCa, 1);
  t.same(st.lagging.map((x) => x.id), [idB], 'status lists the lagging agent');

  const forced = await rot.commit(h.admin, true);
  t.equal(forced.leftBehindCount, 1, '--force commits');
  t.same(forced.leftBehind.map((x) => x.id), [idB], 'and names the agent left behind');
  const audit = await h.hub.components.audit.query({ methodContains: 'AdminCa/RotateCommit' });
  t.ok(audit.some((r) => r.result === 'ok' && r.detail.includes(idB)), 'the forced commit is audited with the agent left behind');

  // (b) B comes back after commit: a clear error naming the cause and the fix, not an opaque TLS retry.
  const logB = fileAgentLogger(dirB);
  const b = await Agent.start({ dataDir: dirB, log: logB.log, maxBackoffMs: 1000 });
  const diagnosis = await new Promise<Error>((resolve) => {
    b.channel.once('diagnosis', resolve);
  });
  t.match(diagnosis.message, /CA was rotated/, 'the cause');
  t.match(diagnosis.message, /trellis agent enroll --hub .* --force/, 'the fix');
  t.equal((diagnosis as { code?: string }).code, 'TRELLIS_E_CA_ROTATED');
  await b.close();
  t.ok(readFileSync(logB.path, 'utf8').split('\n').some((l) => l.includes('TRELLIS_E_CA_ROTATED') && l.includes('re-enroll')), 'in the agent log');
  t.not(b.channel.state, 'ready', 'it never connected');

  // An old-CA client certificate is refused at the handshake even by a client that trusts the new CA.
  const idFiles = agentPaths(dirB);
  const c = new v1.AgentChannel(h.agentAddr, grpc.credentials.createSsl(Buffer.from(forced.currentCa!.pem), readFileSync(idFiles.key), readFileSync(idFiles.cert)), CLIENT_OPTIONS) as unknown as grpc.Client & { Connect(): grpc.ClientDuplexStream<T.AgentMessage, T.HubMessage__Output> };
  const outcome = await new Promise<string>((resolve) => {
    const st2 = c.Connect();
    st2.on('data', (m: T.HubMessage__Output) => { if (m.welcome) resolve('welcomed'); });
    st2.on('error', (e: grpc.ServiceError) => resolve(`error ${e.code}`));
    st2.write({ hello: { facts: { hostname: 'old' }, labels: {} } });
  });
  c.close();
  t.equal(outcome, `error ${grpc.status.UNAVAILABLE}`, 'an old-CA client certificate is refused at the TLS handshake after commit');

  // An unused join token from before the commit pins the old CA: enrollment fails with a clear message.
  const e = await callError(h.enroll({ token: oldToken }));
  t.equal(e?.code, 'TRELLIS_E_CA_PIN_MISMATCH');
  t.match(e?.message, /CA was rotated .* create a new one/, 'saying the CA may have been rotated and what to do');
  t.equal(early.channel.state, 'ready', 'the agent that followed the rotation is still connected');
});

t.test('rollback: agents that renewed from the new CA keep working and renew back; the abandoned CA is then dropped', async (t) => {
  await using h = await startHub();
  const oldFp = h.hub.components.pki.caFingerprint;
  const agents = [await h.agent(), await h.agent(), await h.agent()];
  const closed: string[] = [];
  for (const a of agents) a.channel.on('state', (s: string) => { if (s === 'closed') closed.push(a.agentId!); });
  const s = await rot.start(h.admin, { windowMs: 1_000 });
  await waitFor(async () => (await rot.status(h.admin)).agentsOnNewCa === 3, 30_000, 'all renewed from the new CA');
  // One enrolled during the rotation: a new-CA certificate from the start.
  const during = await h.agent();
  t.ok(verifyIssuedBy(during.certificate.certPem, s.nextCa!.pem), 'an enrollment during the rotation gets a new-CA certificate');
  agents.push(during);
  during.channel.on('state', (st: string) => { if (st === 'closed') closed.push(during.agentId!); });

  const rb = await rot.rollback(h.admin);
  t.equal(rb.phase, 'idle');
  t.equal(rb.currentCa!.fingerprintSha256, oldFp, 'back to the old CA');
  t.equal(rb.retiredCa?.fingerprintSha256, s.nextCa!.fingerprintSha256, 'the abandoned CA stays trusted for its agents');
  t.same(rb.trustBundle.map((c) => fingerprintSha256(c)), [oldFp], 'the bundle is the old CA alone');
  t.notOk(existsSync(hubPaths(h.dataDir).caNextKey), 'the abandoned CA key is gone');

  await waitFor(() => agents.every((a) => verifyIssuedBy(a.certificate.certPem, s.currentCa!.pem)), 30_000, 'every agent renewed back from the old CA');
  await waitFor(() => agents.every((a) => a.channel.state === 'ready'), 10_000, 'connected');
  await h.hub.components.rotation.checkRetired();
  const after = await rot.status(h.admin);
  t.equal(after.retiredCa, null, 'the abandoned CA is dropped once no agent holds its certificate');
  t.same(closed, [], 'no agent was dropped');
  // And a new rotation can start again.
  t.equal((await rot.start(h.admin)).phase, 'started');
  t.equal((await rot.rollback(h.admin)).phase, 'idle');
});

t.test('an operator-supplied CA: checked, stored like the current one, committed', async (t) => {
  await using h = await startHub();
  const agent = await h.agent();
  const ca = createCA({ commonName: 'Operator CA 2027', keyType: 'ec-p384' });
  const leafKey = generateKey('ec-p256');
  const leaf = issueCertificate({ issuerCertPem: ca.certPem, issuerKey: ca.key, subjectPublicKey: leafKey.publicKey, subject: { commonName: 'x' }, usage: 'server', dnsNames: ['x'], notAfter: new Date(Date.now() + 86_400_000) });
  const expired = createCA({ commonName: 'Old CA', now: new Date(Date.now() - 3 * 86_400_000), validityDays: 1 });
  const other = createCA({ commonName: 'Other' });
  const bad: Array<[string, Partial<T.RotateStartRequest>, RegExp]> = [
    ['not a CA', { caCertificate: leaf, caPrivateKey: leafKey.privateKeyPem }, /not a CA/],
    ['key does not match', { caCertificate: ca.certPem, caPrivateKey: other.keyPem }, /does not match/],
    ['expired', { caCertificate: expired.certPem, caPrivateKey: expired.keyPem }, /expired/],
    ['garbage', { caCertificate: 'hello', caPrivateKey: ca.keyPem }, /no PEM certificate|not PEM/],
    ['cert without key', { caCertificate: ca.certPem }, /go together/],
    ['the current CA', { caCertificate: h.caPem, caPrivateKey: readFileSync(hubPaths(h.dataDir).caKey, 'utf8') }, /current CA/],
    ['bad key type', { keyType: 'rsa-1024' }, /--ca-key-type must be one of/],
  ];
  for (const [what, req, re] of bad) {
    const e = await callError(rot.start(h.admin, req));
    t.equal(e?.code, 'TRELLIS_E_INVALID_ARGUMENT', `refused: ${what}`);
    t.match(e?.message, re, `message for ${what}`);
  }
  t.equal((await rot.status(h.admin)).phase, 'idle', 'nothing started by a refused request');
  t.notOk(existsSync(hubPaths(h.dataDir).caNextKey), 'no key stored by a refused request');

  const s = await rot.start(h.admin, { caCertificate: ca.certPem, caPrivateKey: ca.keyPem, windowMs: 1_000 });
  t.equal(s.nextCa!.fingerprintSha256, fingerprintSha256(ca.certPem), 'the supplied CA is the new CA');
  const again = await callError(rot.start(h.admin));
  t.equal(again?.code, 'TRELLIS_E_ROTATION', 'a second start is refused while one runs');
  await waitFor(() => verifyIssuedBy(agent.certificate.certPem, ca.certPem), 30_000, 'agent renewed from the supplied CA');
  await waitFor(async () => (await rot.status(h.admin)).agentsOnNewCa === 1, 10_000, 'status counts it');
  const c = await rot.commit(h.admin);
  t.equal(c.currentCa!.keyType, 'ec-p384');
  const p = hubPaths(h.dataDir);
  t.equal(readFileSync(p.caCert, 'utf8'), ca.certPem, 'ca.pem is the supplied CA');
  t.equal(statSync(p.caKey).mode & 0o777, 0o600, 'its key is 0600 like before');
  t.equal(certInfo(splitPemBundle(readFileSync(p.hubCert, 'utf8'))[0]!).issuer, certInfo(ca.certPem).subject, 'hub.pem is issued by it');
  await waitFor(() => agent.channel.state === 'ready', 10_000);
});

t.test('negatives: commit or rollback without a rotation; a caller who is not an administrator is refused', async (t) => {
  await using h = await startHub();
  for (const [what, p] of [['commit', rot.commit(h.admin)], ['rollback', rot.rollback(h.admin)]] as const) {
    const e = await callError(p);
    t.equal(e?.code, 'TRELLIS_E_ROTATION', `${what} without a rotation is refused`);
    t.match(e?.message, /no CA rotation is under way/);
  }
  // An observer who also holds certs:replace at platform scope: still not platform administration.
  await call(h.admin, h.admin.roles, h.admin.roles.CreateRole, { name: 'certops', description: '', grants: [{ permission: 'certs:replace', scope: '' }] });
  await call(h.admin, h.admin.users, h.admin.users.CreateUser, { username: 'obs', password: 'observer-password-1', roles: ['observer', 'certops'], tenants: ['default'] });
  const l = await login(h, 'obs', 'observer-password-1');
  const obs = adminClients(h.adminAddr, h.caPem, l.token);
  t.teardown(() => obs.close());
  t.equal((await rot.status(obs)).phase, 'idle', 'certs:read may see the status');
  for (const [what, p] of [['start', rot.start(obs)], ['commit', rot.commit(obs, true)], ['rollback', rot.rollback(obs)]] as const) {
    const e = await callError(p);
    t.equal(e?.code, 'TRELLIS_E_PERMISSION_DENIED', `${what} is platform administration`);
  }
  t.equal((await rot.status(h.admin)).phase, 'idle', 'nothing started');
  const denied = await h.hub.components.audit.query({ methodContains: 'AdminCa/RotateStart' });
  t.ok(denied.some((r) => r.result === 'denied' && r.actor === 'obs'), 'the refusal is audited');
});

t.test('a commit cut short (crash between the file replacements) is finished at the next start', async (t) => {
  await using h = await startHub();
  const s = await rot.start(h.admin, { windowMs: 1_000 });
  await h.stop();
  // What a kill -9 in the middle of commit leaves: hub-next*.pem written, phase `committing`, and
  // ca-key.pem already replaced while ca.pem is still the old CA (they no longer match).
  const p = hubPaths(h.dataDir);
  const pki = HubPki.load(p, ['localhost', '127.0.0.1']);
  const nextKeyPem = readFileSync(p.caNextKey, 'utf8');
  const id = issueHubCertificate(pki, ['localhost', '127.0.0.1'], 86_400_000, new Date(), { chain: [s.nextCa!.pem], key: loadPrivateKey(nextKeyPem) });
  writeFileSync(p.hubNextCert, id.certChainPem);
  writeFileSync(p.hubNextKey, id.keyPem, { mode: 0o600 });
  const state = JSON.parse(readFileSync(p.caRotation, 'utf8')) as Record<string, unknown>;
  writeFileSync(p.caRotation, JSON.stringify({ ...state, phase: 'committing', lastEvent: 'committed by admin' }));
  writeFileSync(p.caKey, nextKeyPem, { mode: 0o600 });
  await h.restart();
  t.equal(h.hub.components.pki.caFingerprint, s.nextCa!.fingerprintSha256, 'the hub started with the new CA');
  t.ok(h.logLines.some((l) => l.includes('commit cut short was finished')), 'and said so');
  t.notOk(existsSync(p.caNextKey) || existsSync(p.hubNextCert) || existsSync(p.hubNextKey), 'leftovers removed');
  const fresh = adminWith(h, s.nextCa!.pem);
  t.teardown(() => fresh.close());
  const st = await rot.status(fresh);
  t.equal(st.phase, 'idle');
  t.equal(st.hubCertIssuerFingerprint, s.nextCa!.fingerprintSha256);
});

t.test('the CLI: a hub killed -9 mid-rotation keeps its phase; the admin profile follows the bundle; a stale profile and a login with the old CA file get a clear message', async (t) => {
  await using tmp = await tempDir();
  const dataDir = join(tmp.path, 'hub');
  await initHub({ dataDir, names: ['localhost', '127.0.0.1'], adminPassword: ADMIN_PASSWORD, config: { bind: '127.0.0.1' } });
  const oldCaFile = join(tmp.path, 'old-ca.pem');
  writeFileSync(oldCaFile, readFileSync(hubPaths(dataDir).caCert));
  const [agentPort, adminPort, webPort] = await freePorts(3);
  const addr = `127.0.0.1:${adminPort}`;
  let hub: CliProcess | undefined;
  const up = async () => {
    hub = startCli(['hub', 'run', '--data', dataDir, '--agent-port', String(agentPort), '--admin-port', String(adminPort), '--web-port', String(webPort)], { TRELLIS_LOG_LEVEL: 'warn' });
    await waitFor(() => /trellis hub: agent port/.test(hub!.err()), 30_000, 'the hub to listen');
  };
  const kill9 = async () => { hub!.child.kill('SIGKILL'); await hub!.done; };
  t.teardown(async () => { if (hub && hub.child.exitCode === null && hub.child.signalCode === null) await kill9(); });
  await up();
  const env = { TRELLIS_HOME: join(tmp.path, 'home'), TRELLIS_PASSWORD: ADMIN_PASSWORD };
  const stale = { TRELLIS_HOME: join(tmp.path, 'home2'), TRELLIS_PASSWORD: ADMIN_PASSWORD };
  for (const e of [env, stale]) t.equal((await runCli(['login', '--hub', addr, '--user', 'admin', '--ca', oldCaFile], e)).code, 0, 'logged in');
  const profileCas = (e: { TRELLIS_HOME: string }) => splitPemBundle((JSON.parse(readFileSync(join(e.TRELLIS_HOME, 'profile.json'), 'utf8')) as { caPem: string }).caPem).map((c) => fingerprintSha256(c));

  const start = await runCli(['ca', 'rotate', 'start', '--window', '5s'], env);
  t.equal(start.code, 0, start.err);
  t.match(start.out, /CA rotation started: new CA sha256 [0-9a-f]{64}/);
  t.equal(profileCas(env).length, 2, 'the operator\'s profile trusts old+new at once');

  await kill9();
  await up();
  const st = await runCli(['ca', 'rotate', 'status', '--json'], env);
  t.equal(st.code, 0, st.err);
  const s = JSON.parse(st.out) as Status;
  t.equal(s.phase, 'started', 'the phase survives kill -9');
  const human = await runCli(['ca', 'rotate', 'status'], env);
  t.match(human.out, /phase: +started/);
  t.match(human.out, /hub certificate: issued by/);
  t.match(human.out, /agents: +0 active/);

  const commit = await runCli(['ca', 'rotate', 'commit'], env);
  t.equal(commit.code, 0, commit.err);
  t.match(commit.out, /CA rotation committed/);
  t.same(profileCas(env), [s.nextCa!.fingerprintSha256], 'the operator\'s profile now trusts the new CA alone');
  await kill9();
  await up();
  const after = await runCli(['ca', 'rotate', 'status', '--json'], env);
  t.equal(after.code, 0, `the profile works against the restarted hub: ${after.err}`);
  t.equal((JSON.parse(after.out) as Status).currentCa!.fingerprintSha256, s.nextCa!.fingerprintSha256, 'the committed CA survives kill -9');
  const again = await runCli(['ca', 'rotate', 'commit'], env);
  t.equal(again.code, 1);
  t.match(again.err, /no CA rotation is under way.*TRELLIS_E_ROTATION/);

  // A profile not used during the rotation, and a login with the old CA file: the cause and the fix.
  const old = await runCli(['whoami'], stale);
  t.equal(old.code, 1);
  t.match(old.err, /CA was most likely rotated.*trellis login --hub .* --ca NEW_CA\.pem.*TRELLIS_E_CA_ROTATED/);
  const relogin = await runCli(['login', '--hub', addr, '--user', 'admin', '--ca', oldCaFile], stale);
  t.equal(relogin.code, 1);
  t.match(relogin.err, /the CA file .*old-ca\.pem does not hold.*TRELLIS_E_CA_MISMATCH/);
});
