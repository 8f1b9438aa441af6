/**
 * Connection failures in plain language, each with its stable code, against real listeners on
 * loopback: hub down (a port that refuses), the agent port given to the CLI and to enroll, the
 * admin port given to an agent (it stops, it does not loop on UNIMPLEMENTED), a CA file that is
 * not the hub's, a hub certificate that does not name the address dialed, a name that does not
 * resolve, and a TCP listener that never answers. No gRPC/OpenSSL text reaches the user unless
 * --debug; nothing is sent (the join token stays unused, no login reaches the hub).
 */
import t from 'tap';
import * as net from 'node:net';
import { readFile, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { ADMIN_PASSWORD, captureLogger, startHub, tempDir } from './helpers/hub.js';
import { Hub } from '../hub/hub.js';
import { runCli, startCli } from './helpers/cli.js';
import { initHub } from '../hub/init.js';
import { adminClients, call, explainTlsFailure } from '../cli/client.js';

/** Text that must never reach the user without --debug. */
const RAW = /No connection established|Last error|ECONNREFUSED|ENOTFOUND|SSL routines|alert number|openssl|Deadline exceeded|UNIMPLEMENTED|Name resolution failed|cert's list/i;

async function refusingPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

t.test('the CLI names the cause of a failed connection with a stable code; raw transport text only with --debug', async (t) => {
  await using h = await startHub();
  await using home = await tempDir();
  const env = { TRELLIS_HOME: join(home.path, 'home'), TRELLIS_PASSWORD: ADMIN_PASSWORD };
  const caFile = join(home.path, 'ca.pem');
  await writeFile(caFile, h.caPem);
  const login = (hub: string, ca = caFile, extra: string[] = []) => runCli(['login', '--hub', hub, '--user', 'admin', '--ca', ca, ...extra], env);
  const loginsSeen = () => h.logLines.filter((l) => l.includes('AdminAuth/Login')).length;
  const before = loginsSeen();

  const port = await refusingPort();
  const down = await login(`127.0.0.1:${port}`);
  t.equal(down.code, 1);
  t.match(down.err, new RegExp(`cannot reach the hub at 127\\.0\\.0\\.1:${port} \\(connection refused\\): is \`trellis hub run\` running there.*TRELLIS_E_UNAVAILABLE`), `hub down: ${down.err.trim()}`);
  t.notMatch(down.err, RAW, 'no raw transport text');
  const downDebug = await login(`127.0.0.1:${port}`, caFile, ['--debug']);
  t.match(downDebug.err, /caused by: .*ECONNREFUSED/, '--debug shows the transport error');

  const agentPort = await login(h.agentAddr);
  t.equal(agentPort.code, 1);
  t.match(agentPort.err, /is the hub's agent port .*admin port.*TRELLIS_E_WRONG_PORT/, `agent port given to the CLI: ${agentPort.err.trim()}`);
  t.notMatch(agentPort.err, RAW, 'no raw OpenSSL text');

  await using other = await tempDir();
  const otherHub = await initHub({ dataDir: join(other.path, 'hub'), names: ['localhost', '127.0.0.1'], adminPassword: ADMIN_PASSWORD, config: { bind: '127.0.0.1' } });
  const wrongCa = await login(h.adminAddr, otherHub.paths.caCert);
  t.equal(wrongCa.code, 1);
  t.match(wrongCa.err, /presents a certificate from CA sha256 [0-9a-f]{64} which the CA file .*ca\.pem does not hold.*nothing was sent.*TRELLIS_E_CA_MISMATCH/, `wrong CA file: ${wrongCa.err.trim()}`);
  t.notMatch(wrongCa.err, /cannot reach/, 'not reported as "cannot reach"');
  t.notMatch(wrongCa.err, RAW);

  const dns = await login('nosuch.invalid:7444');
  t.equal(dns.code, 1);
  t.match(dns.err, /cannot resolve "nosuch\.invalid" \(DNS lookup failed\).*TRELLIS_E_DNS/, `DNS: ${dns.err.trim()}`);
  t.notMatch(dns.err, RAW);

  t.equal(loginsSeen(), before, 'no login reached the hub');

  // The same hub by its admin address works, and a profile pointed at a hub that went down says so.
  const ok = await login(h.adminAddr);
  t.equal(ok.code, 0, `login on the admin port works: ${ok.err}`);

  // enroll against the agent port: refused with the cause, before the token is sent.
  const token = await h.token();
  const enroll = await runCli(['agent', 'enroll', '--hub', h.agentAddr, '--token', token, '--data', join(home.path, 'agent')], env);
  t.equal(enroll.code, 1);
  t.match(enroll.err, /is the hub's agent port .*TRELLIS_E_WRONG_PORT/, `enroll against the agent port: ${enroll.err.trim()}`);
  t.notMatch(enroll.err, RAW);
  t.notMatch(enroll.err, token.slice(-16), 'the token is not echoed');
});

t.test('a hub certificate that lacks the address dialed: the error lists its names and the fix', async (t) => {
  await using home = await tempDir();
  const dataDir = join(home.path, 'hub');
  await initHub({ dataDir, names: ['localhost'], adminPassword: ADMIN_PASSWORD, config: { agentPort: 0, adminPort: 0, webPort: 0, bind: '127.0.0.1' } });
  const hub = await Hub.start({ dataDir, log: captureLogger().log });
  t.teardown(() => hub.close(500));
  const caFile = join(home.path, 'ca.pem');
  await writeFile(caFile, hub.components.pki.trustBundle.join(''));
  const env = { TRELLIS_HOME: join(home.path, 'home'), TRELLIS_PASSWORD: ADMIN_PASSWORD };
  const r = await runCli(['login', '--hub', `127.0.0.1:${hub.adminPort}`, '--user', 'admin', '--ca', caFile], env);
  t.equal(r.code, 1);
  t.match(r.err, /does not name "127\.0\.0\.1", the address dialed \(it names: localhost\).*trellis certs issue-hub --name localhost,127\.0\.0\.1.*TRELLIS_E_CERT_NAME/, `name missing: ${r.err.trim()}`);
  t.notMatch(r.err, RAW);
  t.notMatch(r.err, /DEP0123|DeprecationWarning/, 'no deprecation warning');
});

t.test('an agent pointed at the admin port stops with a clear message instead of retrying', async (t) => {
  await using h = await startHub();
  const { dataDir } = await h.enroll();
  const run = startCli(['agent', 'run', '--data', dataDir, '--hub', h.adminAddr]);
  t.teardown(() => { run.child.kill('SIGKILL'); });
  const timer = setTimeout(() => run.child.kill('SIGKILL'), 60_000);
  const code = await run.done;
  clearTimeout(timer);
  t.equal(code, 3, 'agent run exits 3 (not killed by the timeout)');
  t.match(run.err(), /answers but does not serve agents: it is most likely the hub's admin port.*agent port/, `says why: ${run.err().trim()}`);
  t.match(run.out() + run.err(), /TRELLIS_E_WRONG_PORT/, 'with the code');
  t.notMatch(run.err(), RAW, 'no raw gRPC text on stderr');
});

t.test('a listener that never answers: a timeout, said plainly', async (t) => {
  await using h = await startHub();
  const sockets: net.Socket[] = [];
  const silent = net.createServer((s) => { sockets.push(s); s.on('error', () => undefined); });
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
  t.teardown(() => { for (const s of sockets) s.destroy(); silent.close(); });
  const addr = `127.0.0.1:${(silent.address() as net.AddressInfo).port}`;
  const c = adminClients(addr, h.caPem);
  const err = await call(c, c.version, c.version.GetVersion, {}, 2_000).then(() => undefined, (e: unknown) => e);
  c.close();
  t.ok(err, 'the call fails');
  const why = await explainTlsFailure(err, addr, h.caPem, 'your profile') as { code?: string; message?: string };
  t.equal(why.code, 'TRELLIS_E_TIMEOUT');
  t.match(why.message, new RegExp(`no answer from ${addr.replace(/\./g, '\\.')} within \\d+ s: the host may be down or a firewall may drop the traffic`));
  t.notMatch(why.message!, RAW);
});

t.test('a hub addressed by IP: login, a command and agent run print no deprecation warning (DEP0123)', async (t) => {
  await using h = await startHub();
  await using home = await tempDir();
  const caFile = join(home.path, 'ca.pem');
  await writeFile(caFile, h.caPem);
  const env = { TRELLIS_HOME: join(home.path, 'home'), TRELLIS_PASSWORD: ADMIN_PASSWORD };
  t.match(h.adminAddr, /^127\.0\.0\.1:/, 'the hub is dialed by IP');
  const login = await runCli(['login', '--hub', h.adminAddr, '--user', 'admin', '--ca', caFile], env);
  t.equal(login.code, 0, `login by IP: ${login.err}`);
  const who = await runCli(['whoami'], env);
  t.equal(who.code, 0, `whoami: ${who.err}`);
  t.notMatch(login.err + who.err, /DEP0123|DeprecationWarning|Warning:/, 'no warning from the CLI');
  const { dataDir } = await h.enroll();
  const run = startCli(['agent', 'run', '--data', dataDir, '--hub', h.agentAddr], env);
  t.teardown(() => { run.child.kill('SIGKILL'); });
  const deadline = Date.now() + 30_000;
  while (!(run.out() + run.err()).includes('connected to the hub') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
  t.match(run.out() + run.err(), /connected to the hub/, 'the agent connects by IP (the certificate is still checked against the IP)');
  run.child.kill('SIGTERM');
  await run.done;
  t.notMatch(run.err(), /DEP0123|DeprecationWarning/, 'no warning from the agent');
});

t.test('npm ci prints no install-script notice: every locked package with an install script is reviewed in allowScripts', async (t) => {
  const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
  const pkg = JSON.parse(await readFile(join(root, 'package.json'), 'utf8')) as { allowScripts?: Record<string, boolean> };
  const lock = JSON.parse(await readFile(join(root, 'package-lock.json'), 'utf8')) as { packages: Record<string, { hasInstallScript?: boolean; version?: string }> };
  const withScripts = Object.entries(lock.packages).filter(([path, p]) => path && p.hasInstallScript).map(([path, p]) => `${path.replace(/^.*node_modules\//, '')}@${p.version}`);
  t.ok(withScripts.length > 0, `packages with install scripts: ${withScripts.join(', ')}`);
  for (const id of withScripts) {
    const name = id.replace(/@[^@]+$/, '');
    const decided = Object.keys(pkg.allowScripts ?? {}).some((k) => k === name || k === id);
    t.ok(decided, `${id} is approved or denied in package.json allowScripts`);
  }
});
