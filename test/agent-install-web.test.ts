/**
 * Installing an agent from the hub's web port, as an operator would: `trellis tokens create
 * --install-command` prints a one-liner, run here for real with sh and curl against a hub on
 * loopback, into temp prefixes (--detach, a unique service and user). The CA is pinned from the
 * token before anything is downloaded; a bundle that does not match its SHA-256 is refused.
 */
import t, { type Test } from 'tap';
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { appendFileSync, chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import * as https from 'node:https';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parse } from 'yaml';
import { TRELLIS_BIN, runCli } from './helpers/cli.js';
import { ADMIN_PASSWORD, captureLogger, startHub, waitFor, type TestHub } from './helpers/hub.js';
import { AgentDist } from '../hub/web/agentdist.js';
import { getAgent } from './helpers/admin.js';
import { installCommand } from '../common/install-command.js';
import { createCA, fingerprintSha256, generateKey, issueCertificate } from '../certs/index.js';
import { needs } from './helpers/needs.js';
import { AGENT_NODE_FLAGS } from '../common/service/unit.js';

const isRoot = process.getuid?.() === 0;
const ROOT = dirname(dirname(TRELLIS_BIN));
const missing = isRoot ? undefined : 'needs root (useradd, /etc/systemd/system)';

interface Names { service: string; user: string; data: string; unit: string; prefix: string; bindir: string }
function names(t: Test): Names {
  const id = randomBytes(4).toString('hex');
  const service = `trellis-w-${id}`;
  const base = mkdtempSync(join(tmpdir(), 'trellis-web-install-'));
  chmodSync(base, 0o755); // the service user must reach PREFIX (as under /opt)
  const n = { service, user: `trw-${id}`, data: `/var/lib/${service}`, unit: `/etc/systemd/system/${service}.service`, prefix: join(base, 'opt'), bindir: join(base, 'bin') };
  t.teardown(async () => {
    await runCli(['agent', 'uninstall', '--service', n.service, '--data', n.data, '--purge']);
    rmSync(n.unit, { force: true });
    rmSync(n.data, { recursive: true, force: true });
    try { execFileSync('userdel', [n.user], { stdio: 'ignore' }); } catch { /* not there */ }
    rmSync(base, { recursive: true, force: true });
  });
  return n;
}

function get(h: TestHub, path: string): Promise<{ status: number; headers: Record<string, unknown>; body: Buffer }> {
  return new Promise((resolve, reject) => {
    https.get({ host: '127.0.0.1', port: h.hub.webPort, path, ca: h.caPem, servername: 'localhost' }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c)).on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) })).on('error', reject);
    }).on('error', reject);
  });
}

/** Runs `sh -c LINE` (as an operator pastes it) with the test's prefixes in the environment. */
function sh(line: string, n: Names): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    const c = spawn('sh', ['-c', line], { env: { PATH: process.env.PATH, HOME: '/root', TRELLIS_PREFIX: n.prefix, TRELLIS_BIN_DIR: n.bindir }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    c.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    c.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    c.on('close', (code) => resolve({ code: code ?? -1, out, err }));
  });
}

const web = (h: TestHub) => `https://127.0.0.1:${h.hub.webPort}`;

function nothingInstalled(t: Test, n: Names): void {
  t.notOk(existsSync(n.prefix) && readdirSync(n.prefix).some((e) => e.startsWith('trellis-')), 'nothing unpacked');
  t.notOk(existsSync(join(n.bindir, 'trellis')), 'no trellis link');
  t.notOk(existsSync(n.unit), 'no unit');
  t.notOk(existsSync(n.data), 'no data dir');
}

t.test('a token pinned to another CA: the one-liner and install.sh download nothing and install nothing', needs(t, missing), async (t) => {
  await using h = await startHub();
  const n = names(t);
  const good = await h.token();
  const wrong = good.replace(/[0-9a-f]{64}$/, createHash('sha256').update('another CA').digest('hex'));
  const line = installCommand({ token: wrong, hub: h.adminAddr, web: web(h), args: ['--detach', '--service', n.service, '--user', n.user] });
  const r = await sh(line, n);
  t.not(r.code, 0);
  t.match(r.err, 'the hub does not present the pinned CA; nothing installed');
  nothingInstalled(t, n);
  // install.sh itself, fetched by an operator who skipped the one-liner's check: it checks the pin too.
  const script = (await get(h, '/agent/install.sh')).body.toString();
  const r2 = await new Promise<{ code: number; err: string }>((resolve) => {
    const c = spawn('sh', ['-s', '--', '--detach', '--service', n.service], {
      env: { PATH: process.env.PATH, TRELLIS_JOIN_TOKEN: wrong, TRELLIS_HUB: h.adminAddr, TRELLIS_WEB: web(h), TRELLIS_PREFIX: n.prefix, TRELLIS_BIN_DIR: n.bindir },
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    let err = '';
    c.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    c.on('close', (code) => resolve({ code: code ?? -1, err }));
    c.stdin.end(script);
  });
  t.not(r2.code, 0);
  t.match(r2.err, 'does not present the CA pinned in the join token: nothing was downloaded or installed');
  nothingInstalled(t, n);
  t.notOk(existsSync(join(h.dataDir, 'agent-bundle')), 'the hub never built (nobody downloaded) the bundle');
});

t.test('an impostor that serves the pinned CA followed by its own CA is not trusted: the one-liner and install.sh trust only the pinned certificate', needs(t, missing), async (t) => {
  await using h = await startHub();
  const n = names(t);
  const token = await h.token();
  // The impostor knows the hub's public CA certificate (anyone can fetch it) and puts it first, its
  // own CA second, and serves everything else with a certificate from its own CA.
  const evil = createCA({ commonName: 'Impostor CA' });
  const leafKey = generateKey('ec-p256');
  const leaf = issueCertificate({ issuerCertPem: evil.certPem, issuerKey: evil.key, subjectPublicKey: leafKey.publicKey, subject: { commonName: 'localhost' }, dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], usage: 'server', notAfter: new Date(Date.now() + 86_400_000) });
  const marker = join(mkdtempSync(join(tmpdir(), 'trellis-impostor-')), 'ran');
  t.teardown(() => rmSync(dirname(marker), { recursive: true, force: true }));
  const served: string[] = [];
  const srv = https.createServer({ cert: leaf + evil.certPem, key: leafKey.privateKeyPem }, (req, res) => {
    served.push(req.url ?? '');
    if (req.url === '/agent/ca.pem') res.end(h.caPem + evil.certPem);
    else if (req.url === '/agent/install.sh') res.end(`#!/bin/sh\ntouch ${marker}\n`);
    else { res.statusCode = 404; res.end(); }
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => srv.close(() => r())));
  const impostor = `https://127.0.0.1:${(srv.address() as { port: number }).port}`;

  const line = installCommand({ token, hub: h.adminAddr, web: impostor, args: ['--detach', '--service', n.service, '--user', n.user] });
  const r = await sh(line, n);
  t.not(r.code, 0, 'the one-liner fails');
  t.notOk(existsSync(marker), `the impostor's install.sh never ran: ${r.err.trim().slice(0, 300)}`);
  t.notOk(served.includes('/agent/install.sh') && existsSync(marker), 'no script from the impostor ran');

  // install.sh itself (from the real hub), pointed at the impostor: the bundle is never fetched from it.
  const script = (await get(h, '/agent/install.sh')).body.toString();
  served.length = 0;
  const r2 = await new Promise<{ code: number; err: string }>((resolve) => {
    const c = spawn('sh', ['-s', '--', '--detach', '--service', n.service], {
      env: { PATH: process.env.PATH, TRELLIS_JOIN_TOKEN: token, TRELLIS_HUB: h.adminAddr, TRELLIS_WEB: impostor, TRELLIS_PREFIX: n.prefix, TRELLIS_BIN_DIR: n.bindir },
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    let err = '';
    c.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    c.on('close', (code) => resolve({ code: code ?? -1, err }));
    c.stdin.end(script);
  });
  t.not(r2.code, 0, 'install.sh fails');
  t.notOk(served.some((u) => u.startsWith('/agent/bundle')), `nothing but ca.pem was accepted from the impostor (${served.join(', ')}): ${r2.err.trim().slice(0, 300)}`);
  nothingInstalled(t, n);
});

t.test('tokens create --install-command: the one-liner installs a running agent from the hub; --cloud-init holds the same command; a bundle not matching its SHA-256 is refused', needs(t, missing), async (t) => {
  await using h = await startHub();
  const n = names(t);

  // The files, unauthenticated.
  const ca = await get(h, '/agent/ca.pem');
  t.equal(ca.status, 200);
  t.equal(fingerprintSha256(ca.body.toString()), h.hub.components.pki.caFingerprint, '/agent/ca.pem is the CA tokens pin');
  const script = await get(h, '/agent/install.sh');
  t.equal(script.status, 200);
  t.same(script.body, readFileSync(join(ROOT, 'bin', 'trellis-agent-install.sh')), 'install.sh is the static file, byte for byte');
  const sum = await get(h, '/agent/bundle.tgz.sha256');
  t.equal(sum.status, 200);
  t.match(sum.body.toString(), /^[0-9a-f]{64} {2}bundle\.tgz\n$/, 'sha256sum -c format');
  const bundle = await get(h, '/agent/bundle.tgz');
  t.equal(bundle.status, 200);
  t.equal(Number(bundle.headers['content-length']), bundle.body.length, 'Content-Length');
  t.equal(createHash('sha256').update(bundle.body).digest('hex'), sum.body.toString().slice(0, 64), 'the bundle matches its SHA-256');
  t.equal((await get(h, '/agent/nothing')).status, 404);

  // An operator: logs in, asks for the one-liner.
  const home = mkdtempSync(join(tmpdir(), 'trellis-web-home-'));
  t.teardown(() => rmSync(home, { recursive: true, force: true }));
  const env = { TRELLIS_HOME: home, TRELLIS_PASSWORD: ADMIN_PASSWORD };
  const login = await runCli(['login', '--hub', h.adminAddr, '--user', 'admin', '--ca', join(h.dataDir, 'ca.pem')], env);
  t.equal(login.code, 0, login.err);
  const created = await runCli(['tokens', 'create', '--label', 'role=web', '--install-command',
    '--install-arg=--detach', '--install-arg=--service', `--install-arg=${n.service}`, '--install-arg=--user', `--install-arg=${n.user}`], env);
  t.equal(created.code, 0, created.err);
  const line = created.out.trim();
  const token = /TRELLIS_JOIN_TOKEN=(tj1\.[^ ]+)/.exec(line)?.[1];
  t.ok(token, 'the token is in an environment variable');
  t.equal(line, installCommand({ token: token!, hub: h.adminAddr, web: web(h), args: ['--detach', '--service', n.service, '--user', n.user] }), 'with the hub\'s web address filled in');
  t.match(line, h.hub.components.pki.caFingerprint, 'and the CA fingerprint');

  const t0 = Date.now();
  const r = await sh(line, n);
  t.equal(r.code, 0, r.err);
  t.comment(`one-liner to installed agent: ${((Date.now() - t0) / 1000).toFixed(1)} s (bundle already built)`);
  t.match(r.err, /bundle sha256:[0-9a-f]{64} verified/);
  const top = readdirSync(n.prefix).filter((e) => e.startsWith('trellis-'));
  t.equal(top.length, 1, `unpacked into ${n.prefix}`);
  t.equal(readlinkSync(join(n.bindir, 'trellis')), join(n.prefix, top[0]!, 'bin', 'trellis'), 'bin/trellis linked');
  const unit = readFileSync(n.unit, 'utf8');
  t.match(unit, `ExecStart=${execFileSync('realpath', [execFileSync('sh', ['-c', 'command -v node'], { encoding: 'utf8' }).trim()], { encoding: 'utf8' }).trim()} ${AGENT_NODE_FLAGS.join(' ')} ${join(n.prefix, top[0]!, 'bin', 'trellis.js')} agent run --data ${n.data}`, 'the unit runs the installed bundle');
  const pid = Number(readFileSync(join(n.data, 'agent.pid'), 'utf8'));
  const uid = Number(execFileSync('id', ['-u', n.user], { encoding: 'utf8' }));
  t.equal(Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]), uid, 'the agent runs as the created user');
  const agentId = (JSON.parse(readFileSync(join(n.data, 'agent.json'), 'utf8')) as { agentId: string }).agentId;
  await waitFor(async () => (await getAgent(h, agentId)).online, 60_000, 'agent online');
  t.same((await getAgent(h, agentId)).labels, { role: 'web' });

  // The same one-liner again (its token is used up): nothing changes, the token is not needed.
  const again = await sh(line, n);
  t.equal(again.code, 0, again.err);
  t.match(again.err, 'already holds this bundle');
  t.match(again.out, /^already installed, nothing changed/);
  t.equal(Number(readFileSync(join(n.data, 'agent.pid'), 'utf8')), pid, 'the same agent process');

  // cloud-init: YAML whose runcmd is the same one-liner (with its own token).
  const ci = await runCli(['tokens', 'create', '--ttl', '2h', '--cloud-init', '--install-arg=--label', '--install-arg=zone=a'], env);
  t.equal(ci.code, 0, ci.err);
  t.match(ci.out, /^#cloud-config\n/);
  const doc = parse(ci.out) as { runcmd: string[] };
  const ciToken = /TRELLIS_JOIN_TOKEN=(tj1\.[^ ]+)/.exec(doc.runcmd[0]!)?.[1];
  t.equal(doc.runcmd.length, 1);
  t.equal(doc.runcmd[0], installCommand({ token: ciToken!, hub: h.adminAddr, web: web(h), args: ['--label', 'zone=a'] }), 'runcmd holds the same command');
  const exclusive = await runCli(['tokens', 'create', '--cloud-init', '--install-command'], env);
  t.match(exclusive.err, /exclude each other/);

  // A bundle that does not match its SHA-256 (damaged on the hub after it was built): refused.
  const cached = readdirSync(join(h.dataDir, 'agent-bundle')).find((f) => f.endsWith('.tgz'))!;
  appendFileSync(join(h.dataDir, 'agent-bundle', cached), 'tampered');
  const n2 = names(t);
  const line2 = installCommand({ token: await h.token(), hub: h.adminAddr, web: web(h), args: ['--detach', '--service', n2.service, '--user', n2.user] });
  const r2 = await sh(line2, n2);
  t.not(r2.code, 0);
  t.match(r2.err, /bundle\.tgz does not match its SHA-256 .*refused, nothing installed/);
  nothingInstalled(t, n2);
});

t.test('the hub builds the bundle once (single-flight), reuses its checked cache after a restart and rebuilds a damaged one', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'trellis-agentdist-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  let builds = 0;
  const build = async (out: string) => {
    builds++;
    await new Promise((r) => setTimeout(r, 50));
    const body = Buffer.from(`bundle ${builds}`);
    writeFileSync(out, body);
    const sha256 = createHash('sha256').update(body).digest('hex');
    writeFileSync(`${out}.sha256`, `${sha256}  x\n`);
    return { sha256 };
  };
  const { log } = captureLogger();
  const opts = { dir: join(dir, 'agent-bundle'), ca: () => ({ chain: [], fingerprint: '' }), log, build };
  const a = new AgentDist(opts);
  const all = await Promise.all(Array.from({ length: 5 }, () => a.bundle()));
  t.equal(builds, 1, 'five concurrent requests, one build');
  t.equal(new Set(all.map((b) => b.sha256)).size, 1);
  t.equal(statSync(opts.dir).mode & 0o777, 0o700, 'cache dir 0700');
  const b = await new AgentDist(opts).bundle();
  t.equal(builds, 1, 'after a restart the cached bundle is reused');
  t.equal(b.sha256, all[0]!.sha256);
  appendFileSync(b.file, 'damaged');
  const c = await new AgentDist(opts).bundle();
  t.equal(builds, 2, 'a cached bundle not matching its SHA-256 is rebuilt');
  t.equal(c.sha256, createHash('sha256').update(readFileSync(c.file)).digest('hex'));
  let failing = true;
  let attempts = 0;
  const failingBuild = async (out: string) => { attempts++; if (failing) throw new Error('no space left'); return build(out); };
  // Unauthenticated requests cannot make the hub rebuild in a loop: within retryAfterMs a failure is answered as is.
  const slow = new AgentDist({ ...opts, dir: join(dir, 'slow'), build: failingBuild, retryAfterMs: 60_000 });
  await t.rejects(slow.bundle(), /no space left/);
  await t.rejects(slow.bundle(), /no space left/);
  t.equal(attempts, 1, 'a second request right after a failed build does not build again');
  const d = new AgentDist({ ...opts, dir: join(dir, 'other'), build: failingBuild, retryAfterMs: 0 });
  await t.rejects(d.bundle(), /no space left/);
  failing = false;
  t.ok((await d.bundle()).sha256, 'a failed build is retried by the next request');
});
