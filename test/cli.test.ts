import t from 'tap';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { runCli } from './helpers/cli.js';
import { startHub, tempDir, ADMIN_PASSWORD } from './helpers/hub.js';


const trellis = runCli;

t.test('trellis --help lists the commands; a bad command exits 2', async (t) => {
  const r = await trellis(['--help']);
  t.equal(r.code, 0);
  for (const c of ['hub', 'agent', 'login', 'tokens', 'agents', 'certs', 'run']) t.match(r.out, new RegExp(`\\n  ${c}\\b`), `help lists ${c}`);
  const bad = await trellis(['frobnicate']);
  t.equal(bad.code, 2);
  t.match(bad.err, /unknown command/);
  const missing = await trellis(['agent', 'enroll', '--hub', 'x:1']);
  t.equal(missing.code, 2);
  t.match(missing.err, /--token/);
});

t.test('login pins the CA by file or fingerprint and stores a 0600 profile; a wrong pin sends nothing', async (t) => {
  await using h = await startHub();
  await using home = await tempDir();
  const env = { TRELLIS_HOME: home.path, TRELLIS_PASSWORD: ADMIN_PASSWORD };
  const fp = h.hub.components.pki.caFingerprint;

  const logins = () => h.logLines.filter((l) => l.includes('AdminAuth/Login')).length;
  const before = logins();
  const wrong = await trellis(['login', '--hub', h.adminAddr, '--user', 'admin', '--ca-fingerprint', 'ab'.repeat(32)], env);
  t.equal(wrong.code, 1);
  t.match(wrong.err, /TRELLIS_E_CA_PIN_MISMATCH/);
  t.equal(logins(), before, 'no login request reached the hub');

  const noTty = await trellis(['login', '--hub', h.adminAddr, '--user', 'admin'], env);
  t.equal(noTty.code, 1);
  t.match(noTty.err, new RegExp(`--ca-fingerprint ${fp}`), 'without a terminal it says how to pin');

  const ok = await trellis(['login', '--hub', h.adminAddr, '--user', 'admin', '--ca-fingerprint', fp], env);
  t.equal(ok.code, 0, ok.err);
  const profile = join(home.path, 'profile.json');
  t.equal(statSync(profile).mode & 0o777, 0o600);
  t.notOk(readFileSync(profile, 'utf8').includes(ADMIN_PASSWORD), 'the password is not stored');

  const who = await trellis(['whoami'], env);
  t.match(who.out, /^admin \(roles: admin/);

  const bad = await trellis(['login', '--hub', h.adminAddr, '--user', 'admin', '--ca', join(h.dataDir, 'ca.pem')], { ...env, TRELLIS_PASSWORD: 'wrong-password-here' });
  t.equal(bad.code, 1);
  t.match(bad.err, /wrong user name or password \(TRELLIS_E_UNAUTHENTICATED\)/);

  const out = await trellis(['logout'], env);
  t.equal(out.code, 0);
  const after = await trellis(['agents', 'list'], env);
  t.equal(after.code, 1);
  t.match(after.err, /TRELLIS_E_UNAUTHENTICATED/);
});

t.test('tokens create prints the token on stdout and the enroll command; list and revoke work', async (t) => {
  await using h = await startHub();
  await using home = await tempDir();
  const env = { TRELLIS_HOME: home.path, TRELLIS_PASSWORD: ADMIN_PASSWORD };
  t.equal((await trellis(['login', '--hub', h.adminAddr, '--user', 'admin', '--ca', join(h.dataDir, 'ca.pem')], env)).code, 0);
  await h.hub.components.iam.createTenant('blue', '');
  const r = await trellis(['tokens', 'create', '--tenant', 'blue', '--uses', '3', '--ttl', '1h', '--label', 'role=web'], env);
  t.equal(r.code, 0, r.err);
  t.match(r.out.trim(), /^tj1\.[0-9a-f]{16}\.[A-Za-z0-9_-]{43}\.[0-9a-f]{64}$/);
  t.match(r.err, /trellis agent enroll --hub .* --token tj1\./);
  const id = r.out.trim().split('.')[1]!;
  t.notMatch((await trellis(['tokens', 'list'], env)).out, id, 'the profile tenant (default) does not see tenant blue\'s token');
  const list = await trellis(['tokens', 'list', '--tenant', 'blue'], env);
  t.match(list.out, new RegExp(`${id}\\s+blue\\s+0/3\\s+active`));
  t.equal((await trellis(['tokens', 'revoke', id, '--tenant', 'blue'], env)).code, 0);
  t.notMatch((await trellis(['tokens', 'list', '--tenant', 'blue'], env)).out, id, 'a revoked token leaves the default list');
  t.match((await trellis(['tokens', 'list', '--all', '--tenant', '*'], env)).out, new RegExp(`${id}.*revoked`));
  const bad = await trellis(['tokens', 'create', '--ttl', 'soon'], env);
  t.equal(bad.code, 1);
  t.match(bad.err, /bad --ttl "soon"/);
});
