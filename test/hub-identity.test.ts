/**
 * Clients check who the hub is, not only which CA signed it: `trellis agent enroll`, `trellis
 * agent run` and `trellis login` (the real CLI) refuse
 * - a real hub whose certificate does not name the address dialed (certificate for `localhost`
 *   only, dialed as 127.0.0.1; the same commands succeed dialed as `localhost`), and
 * - a server presenting an agent certificate from the hub's own CA (a real enrolled agent's, and
 *   one that even names localhost and 127.0.0.1: client-only usage) — an agent cannot pose as
 *   the hub to its peers.
 * Each refusal is a clear error, and nothing is sent: the join token is not consumed, no login is
 * attempted, the impostor receives no application byte.
 */
import t, { type Test } from 'tap';
import * as tls from 'node:tls';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initHub } from '../hub/init.js';
import { Hub } from '../hub/hub.js';
import { captureLogger, waitFor, ADMIN_PASSWORD } from './helpers/hub.js';
import { runCli, startCli } from './helpers/cli.js';
import { agentPaths } from '../agent/identity.js';
import { generateKey, issueCertificate } from '../certs/index.js';
import { silenceIpServernameWarning } from '../common/warnings.js';

silenceIpServernameWarning();

interface NamedHub { hub: Hub; dir: string; caFile: string; caPem: string; logLines: string[] }

/** A real hub whose certificate names `localhost` only (no IP address). */
async function localhostOnlyHub(t: Test): Promise<NamedHub> {
  const dir = await mkdtemp(join(tmpdir(), 'trellis-ident-'));
  const dataDir = join(dir, 'hub');
  await initHub({ dataDir, names: ['localhost'], adminPassword: ADMIN_PASSWORD, config: { agentPort: 0, adminPort: 0, webPort: 0, bind: '127.0.0.1' } });
  const { log, lines } = captureLogger();
  const hub = await Hub.start({ dataDir, log });
  t.teardown(async () => { await hub.close(500); await rm(dir, { recursive: true, force: true }); });
  const caPem = hub.components.pki.trustBundle.join('');
  const caFile = join(dir, 'ca.pem');
  await writeFile(caFile, caPem);
  return { hub, dir, caFile, caPem, logLines: lines };
}

async function token(h: NamedHub): Promise<{ token: string; id: string }> {
  const r = await h.hub.components.tokens.create({ tenant: 'default', uses: 1, ttlMs: 600_000, createdBy: 'admin' });
  return { token: r.token, id: r.doc.id };
}

const tokenUsed = async (h: NamedHub, id: string) => (await h.hub.components.store.get<{ id: string; used: number }>('joinTokens', id))?.used;

/** A TLS server (h2) with the given identity; counts application bytes received. */
async function impostor(t: Test, certChainPem: string, keyPem: string): Promise<{ port: number; bytes: () => number; handshakes: () => number }> {
  let bytes = 0, handshakes = 0;
  const server = tls.createServer({ cert: certChainPem, key: keyPem, ALPNProtocols: ['h2'] }, (s) => {
    handshakes++;
    s.on('data', (d: Buffer) => { bytes += d.length; });
    s.on('error', () => undefined);
  });
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => { server.close(() => r()); }));
  return { port: (server.address() as { port: number }).port, bytes: () => bytes, handshakes: () => handshakes };
}

const REFUSED = /the hub's certificate was refused, nothing was sent/;
const NAME_ERR = /(does not name \\?"127\.0\.0\.1\\?", the address dialed|Hostname\/IP does not match|ERR_TLS_CERT_ALTNAME_INVALID|does not match certificate's altnames|IP: 127\.0\.0\.1 is not in the cert's list)/i;

t.test('a hub certificate that does not name the address dialed is refused by enroll, agent run and login; the same hub dialed by its name is accepted', async (t) => {
  const h = await localhostOnlyHub(t);
  const home = join(h.dir, 'home');
  const env = { TRELLIS_HOME: home, TRELLIS_PASSWORD: ADMIN_PASSWORD };

  // enroll: refused before the token is sent (it stays unused), then accepted by name.
  const tok = await token(h);
  const bad = await runCli(['agent', 'enroll', '--hub', `127.0.0.1:${h.hub.adminPort}`, '--token', tok.token, '--data', join(h.dir, 'a1')], env);
  t.equal(bad.code, 1, 'enroll by IP exits 1');
  t.match(bad.err, REFUSED, 'says the hub certificate was refused');
  t.match(bad.err, NAME_ERR, `and why: ${bad.err.trim().split('\n')[0]}`);
  t.notMatch(bad.err + bad.out, tok.token.slice(-20), 'the token is not echoed');
  t.equal(await tokenUsed(h, tok.id), 0, 'the join token was not used: it never reached the hub');
  const good = await runCli(['agent', 'enroll', '--hub', `localhost:${h.hub.adminPort}`, '--token', tok.token, '--data', join(h.dir, 'a1')], env);
  t.equal(good.code, 0, `the same token enrolls by name: ${good.err}`);

  // agent run: dialing the agent port by IP never gets a stream; by name it does.
  const run = startCli(['agent', 'run', '--data', join(h.dir, 'a1'), '--hub', `127.0.0.1:${h.hub.agentPort}`], env);
  t.teardown(() => { run.child.kill('SIGKILL'); });
  await waitFor(() => NAME_ERR.test(run.err() + run.out()), 20_000, 'agent run reports the name mismatch');
  t.match(run.err() + run.out(), NAME_ERR, 'agent run says why');
  t.equal(h.hub.components.agents.link((await h.hub.components.agents.list({}))[0]!.id), undefined, 'the hub never saw the agent connect');
  run.child.kill('SIGTERM');
  await run.done;

  // login: refused before the password is sent; by name it works.
  const badLogin = await runCli(['login', '--hub', `127.0.0.1:${h.hub.adminPort}`, '--user', 'admin', '--ca', h.caFile], env);
  t.equal(badLogin.code, 1, 'login by IP exits 1');
  t.match(badLogin.err, REFUSED, 'says the hub certificate was refused');
  t.match(badLogin.err, NAME_ERR, `and why: ${badLogin.err.trim().split('\n')[0]}`);
  t.notOk(h.logLines.some((l) => l.includes('AdminAuth/Login')), 'no login reached the hub');
  const goodLogin = await runCli(['login', '--hub', `localhost:${h.hub.adminPort}`, '--user', 'admin', '--ca', h.caFile], env);
  t.equal(goodLogin.code, 0, `login by name works: ${goodLogin.err}`);
});

t.test('an agent certificate from the hub CA presented as the hub is refused by enroll, agent run and login; nothing is sent to it', async (t) => {
  const h = await localhostOnlyHub(t);
  const home = join(h.dir, 'home');
  const env = { TRELLIS_HOME: home, TRELLIS_PASSWORD: ADMIN_PASSWORD };
  // A real agent, enrolled by name.
  const tok = await token(h);
  const dataDir = join(h.dir, 'agent');
  t.equal((await runCli(['agent', 'enroll', '--hub', `localhost:${h.hub.adminPort}`, '--token', tok.token, '--data', dataDir], env)).code, 0);
  const p = agentPaths(dataDir);
  const agentCert = await readFile(p.cert, 'utf8');
  const agentKey = await readFile(p.key, 'utf8');
  // And a client certificate of the same CA that even names this host.
  const pki = h.hub.components.pki;
  const k = generateKey('ec-p256');
  const naming = issueCertificate({
    issuerCertPem: pki.caCertPem, issuerKey: pki.caKey!, subjectPublicKey: k.publicKey, subject: { commonName: 'localhost' },
    dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], usage: 'client', notAfter: new Date(Date.now() + 3_600_000),
  });

  for (const [what, cert, key] of [['the enrolled agent\'s certificate', agentCert, agentKey], ['a client certificate naming localhost', naming, k.privateKeyPem]] as const) {
    await t.test(what, async (t) => {
      const fake = await impostor(t, cert + pki.caCertPem, key);
      const tok2 = await token(h);
      const e = await runCli(['agent', 'enroll', '--hub', `localhost:${fake.port}`, '--token', tok2.token, '--data', join(h.dir, `x-${fake.port}`)], env);
      t.equal(e.code, 1, 'enroll exits 1');
      t.match(e.err, REFUSED, `a clear error: ${e.err.trim().split('\n')[0]}`);
      t.match(e.err, /certificate purpose/, 'naming the reason');

      const l = await runCli(['login', '--hub', `localhost:${fake.port}`, '--user', 'admin', '--ca', h.caFile], env);
      t.equal(l.code, 1, 'login exits 1');
      t.match(l.err, REFUSED, 'login: the same clear error');
      t.match(l.err, /certificate purpose/);

      const run = startCli(['agent', 'run', '--data', dataDir, '--hub', `localhost:${fake.port}`], env);
      t.teardown(() => { run.child.kill('SIGKILL'); });
      await waitFor(() => /certificate purpose/i.test(run.err() + run.out()), 20_000, 'agent run reports the refusal');
      run.child.kill('SIGTERM');
      await run.done;

      t.equal(fake.bytes(), 0, 'the impostor received no application byte (no token, no password, no hello)');
      t.equal(await tokenUsed(h, tok2.id), 0);
    });
  }
});
