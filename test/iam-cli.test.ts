/** The IAM commands through the real `trellis` binary against a real hub. */
import t from 'tap';
import { join } from 'node:path';
import { runCli } from './helpers/cli.js';
import { startHub, tempDir, ADMIN_PASSWORD, type TestHub } from './helpers/hub.js';


/** No password or API key from the outer environment leaks into a test's command. */
function trellis(args: string[], env: Record<string, string> = {}, input?: string): Promise<{ code: number; out: string; err: string }> {
  return runCli(args, { TRELLIS_PASSWORD: '', TRELLIS_API_KEY: '', ...env }, input);
}

async function loggedIn(h: TestHub, user = 'admin', password = ADMIN_PASSWORD): Promise<{ home: string } & AsyncDisposable> {
  const home = await tempDir();
  const r = await trellis(['login', '--hub', h.adminAddr, '--user', user, '--ca', join(h.dataDir, 'ca.pem')], { TRELLIS_HOME: home.path, TRELLIS_PASSWORD: password });
  if (r.code !== 0) throw new Error(`login as ${user} failed: ${r.err}`);
  return { home: home.path, [Symbol.asyncDispose]: () => home[Symbol.asyncDispose]() };
}

t.test('users create takes the password from TRELLIS_PASSWORD or stdin, never an argument; the user can log in', async (t) => {
  await using h = await startHub();
  await using admin = await loggedIn(h);
  const env = { TRELLIS_HOME: admin.home };
  const r = await trellis(['users', 'create', 'alice', '--role', 'user', '--tenant-member', 'default'], { ...env, TRELLIS_PASSWORD: 'alice-password-123' });
  t.equal(r.code, 0, r.err);
  t.match(r.out, /user alice created \(roles: user; tenants: default\)/);
  const shown = JSON.parse((await trellis(['users', 'show', 'alice', '--json'], env)).out);
  t.same([shown.username, shown.roles, shown.effectiveRoles], ['alice', ['user'], ['user']]);
  await using alice = await loggedIn(h, 'alice', 'alice-password-123');
  t.match((await trellis(['whoami'], { TRELLIS_HOME: alice.home })).out, /^alice \(roles: user/, 'alice logs in with that password');

  const noPw = await trellis(['users', 'create', 'bob'], env);
  t.equal(noPw.code, 1);
  t.match(noPw.err, /--password-stdin or set TRELLIS_PASSWORD/, 'without a terminal it says where the password may come from');
  const piped = await trellis(['users', 'create', 'carol', '--password-stdin'], env, 'carol-password-123\n');
  t.equal(piped.code, 0, piped.err);
  await using carol = await loggedIn(h, 'carol', 'carol-password-123');
  t.ok(carol.home, 'carol logs in with the piped password (the newline is not part of it)');
  const short = await trellis(['users', 'create', 'dave'], { ...env, TRELLIS_PASSWORD: 'short' });
  t.equal(short.code, 1);
  t.match(short.err, /at least 12 characters \(TRELLIS_E_INVALID_ARGUMENT\)/);
  const list = await trellis(['users', 'list'], env);
  t.match(list.out, /^USER\s+STATE/);
  t.match(list.out, /\nalice\s+active\s+local\s+user\s+default/);
});

t.test('apikeys create prints the key once on stdout and warns on stderr; the key works as its owner', async (t) => {
  await using h = await startHub();
  await using admin = await loggedIn(h);
  const env = { TRELLIS_HOME: admin.home };
  const r = await trellis(['apikeys', 'create', '--name', 'ci'], env);
  t.equal(r.code, 0, r.err);
  const key = r.out.trim();
  t.match(r.out, /^tak1_[0-9a-f]{16}_[A-Za-z0-9_-]{43}\n$/, 'stdout is the key and nothing else');
  t.match(r.err, /only time it is shown/);
  t.notOk(r.err.includes(key), 'stderr does not repeat the key');
  const list = await trellis(['apikeys', 'list'], env);
  t.notOk(list.out.includes(key.split('_').slice(2).join('_')), 'the list does not show it again');
  t.match(list.out, new RegExp(`${key.split('_')[1]}\\s+admin\\s+ci\\s+enabled`));
  t.match((await trellis(['whoami'], { ...env, TRELLIS_API_KEY: key })).out, /^admin \(/, 'TRELLIS_API_KEY acts as the owner');
  t.equal((await trellis(['apikeys', 'disable', key.split('_')[1]!], env)).code, 0);
  const refused = await trellis(['whoami'], { ...env, TRELLIS_API_KEY: key });
  t.equal(refused.code, 1);
  t.match(refused.err, /TRELLIS_E_UNAUTHENTICATED/);
});

t.test('roles grant with an unknown permission exits 1 with a clear message; a scoped grant works', async (t) => {
  await using h = await startHub();
  await using admin = await loggedIn(h);
  const env = { TRELLIS_HOME: admin.home };
  t.equal((await trellis(['roles', 'create', 'ops', '--grant', 'agents:list', '--grant', 'actions:execute@pack:web'], env)).code, 0);
  const bad = await trellis(['roles', 'grant', 'ops', 'agents:fly'], env);
  t.equal(bad.code, 1);
  t.match(bad.err, /^trellis: unknown permission "agents:fly": see `trellis roles --help` or the README's permission table \(TRELLIS_E_INVALID_ARGUMENT\)\n$/);
  const both = await trellis(['roles', 'grant', 'ops', 'agents:run', '--pack', 'web', '--action', 'web.restart'], env);
  t.equal(both.code, 1);
  t.match(both.err, /give one scope/);
  t.equal((await trellis(['roles', 'grant', 'ops', 'actions:execute', '--action', 'db.restart'], env)).code, 0);
  const shown = JSON.parse((await trellis(['roles', 'show', 'ops', '--json'], env)).out);
  t.same(shown.grants, [
    { permission: 'agents:list', scope: '' }, { permission: 'actions:execute', scope: 'pack:web' }, { permission: 'actions:execute', scope: 'action:db.restart' },
  ]);
  const help = await trellis(['roles', '--help'], env);
  t.match(help.out, /agents:run\s+run ad-hoc commands on agents/, '`roles --help` lists the permissions');
  const builtin = await trellis(['roles', 'grant', 'user', 'agents:revoke'], env);
  t.equal(builtin.code, 1);
  t.match(builtin.err, /built-in role/);
});
