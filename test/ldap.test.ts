import t from 'tap';
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startHub, tempDir, waitFor, callError, ADMIN_PASSWORD, type TestHub, login } from './helpers/hub.js';
import { startSlapd, slapdMissing, USERS, type Slapd } from './helpers/slapd.js';
import { adminClients, call } from '../cli/client.js';
import { hubPaths } from '../hub/paths.js';
import { LdapBackend, escapeFilterValue, type LdapBackendOptions } from '../hub/auth/ldap.js';
import { buildBackends } from '../hub/auth/factory.js';
import { validateConfig, type HubConfigInput } from '../hub/config.js';
import { createCA, generateKey, issueCertificate } from '../certs/index.js';
import { silentLogger } from '../common/log.js';
import type { Store } from '../hub/store/index.js';
import type { UserDoc } from '../hub/auth/users.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';
import { needs } from './helpers/needs.js';

// Skipped only where slapd is not installed; CI installs it (.ci/run), so there it must run.
const missing = slapdMissing();

type Backends = NonNullable<NonNullable<HubConfigInput['auth']>['backends']>;

/** The hub's LDAP backend entry for `s`, its bind password in a 0600 file under `dir`. */
async function ldapEntry(s: Slapd, dir: string, extra: Record<string, unknown> = {}): Promise<Backends[number]> {
  const bindPasswordFile = join(dir, 'ldap-bind.pw');
  await writeFile(bindPasswordFile, s.bindPassword + '\n', { mode: 0o600 });
  return { type: 'ldap', url: s.url, bindDn: s.bindDn, bindPasswordFile, userBase: s.userBase, groupBase: s.groupBase, timeoutMs: 2000, ...extra } as Backends[number];
}

async function hubWith(backends: Backends): Promise<TestHub> {
  return startHub({ config: { auth: { backends } } });
}


function backendOptions(s: Slapd, o: Partial<LdapBackendOptions> = {}): LdapBackendOptions {
  return {
    name: 'ldap', url: s.url, startTls: false, bindDn: s.bindDn, bindPassword: s.bindPassword, userBase: s.userBase, userFilter: '(uid={username})',
    groupBase: s.groupBase, groupFilter: '(|(member={dn})(memberUid={username}))', groupNameAttribute: 'cn', timeoutMs: 2000, ...o,
  };
}

const BAD_LOGIN = { code: 'TRELLIS_E_UNAUTHENTICATED', grpcCode: 16, message: 'wrong user name or password' };

t.test('an LDAP user logs in; the hub keeps a record with no password hash and never stores the password', needs(t, missing), async (t) => {
  await using s = await startSlapd();
  await using dir = await tempDir();
  await using h = await hubWith([await ldapEntry(s, dir.path), { type: 'local' }]);
  const r = await login(h, 'alice', USERS.alice);
  t.equal(r.username, 'alice');
  const u = await h.hub.components.store.get<UserDoc>('users', 'alice');
  t.equal(u?.source, 'ldap', 'the user record names its backend');
  t.equal(u?.passwordHash, '', 'no password hash for a directory user');
  const c = adminClients(h.adminAddr, h.caPem, r.token);
  t.teardown(() => c.close());
  const me = await call<T.WhoAmIRequest, T.WhoAmIResponse__Output>(c, c.auth, c.auth.WhoAmI, {});
  t.equal(me.username, 'alice');
  t.same(me.roles, [], 'no roles of her own');
  // A second login reuses the record.
  await login(h, 'alice', USERS.alice);
  t.equal((await h.hub.components.auth.users()).filter((x) => x.username === 'alice').length, 1);
  await h.stop();
  const state = readFileSync(hubPaths(h.dataDir).store, 'utf8');
  t.match(state, /"alice"/, 'the state file was read');
  t.notOk(state.includes(USERS.alice), "the state file does not contain alice's password");
  const everything = [state, readFileSync(hubPaths(h.dataDir).config, 'utf8'), ...h.logLines].join('\n');
  t.notOk(everything.includes(USERS.alice), "nor does hub.json or the log");
  t.notOk(everything.includes(s.bindPassword), 'the bind password is in none of them either');
});

t.test('directory groups map onto Trellis groups: ops gets observer, devs gets nothing', needs(t, missing), async (t) => {
  await using s = await startSlapd();
  await using dir = await tempDir();
  await using h = await hubWith([await ldapEntry(s, dir.path), { type: 'local' }]);
  const iam = h.hub.components.iam;
  await iam.createGroup('operators', 'mapped from LDAP ops', ['ops']);
  await iam.setRoleAssignment('observer', { group: 'operators' }, true);
  await iam.setTenantMembership('default', { group: 'operators' }, true);

  const alice = adminClients(h.adminAddr, h.caPem, (await login(h, 'alice', USERS.alice)).token);
  t.teardown(() => alice.close());
  t.same((await iam.group('operators')).members, ['alice'], 'alice joined the mapped group at login');
  const me = await call<T.WhoAmIRequest, T.WhoAmIResponse__Output>(alice, alice.auth, alice.auth.WhoAmI, {});
  t.ok(me.roles.includes('observer'), `alice's roles include observer (${me.roles.join(',')})`);
  t.equal(await callError(call(alice, alice.agents, alice.agents.ListAgents, {})), undefined, 'alice may list agents');
  const denied = await callError(call(alice, alice.agents, alice.agents.RevokeAgent, { id: 'no-such-agent', reason: 'test' }));
  t.equal(denied?.code, 'TRELLIS_E_PERMISSION_DENIED', 'but not revoke one');

  const bob = adminClients(h.adminAddr, h.caPem, (await login(h, 'bob', USERS.bob)).token);
  t.teardown(() => bob.close());
  const bobMe = await call<T.WhoAmIRequest, T.WhoAmIResponse__Output>(bob, bob.auth, bob.auth.WhoAmI, {});
  t.same(bobMe.roles, [], 'bob (devs) has no roles');
  t.notOk((await iam.group('operators')).members.includes('bob'));
  const bobDenied = await callError(call(bob, bob.agents, bob.agents.ListAgents, {}));
  t.equal(bobDenied?.code, 'TRELLIS_E_PERMISSION_DENIED', 'bob may not list agents');
});

t.test('wrong password, unknown LDAP user and empty password are refused with the same message', needs(t, missing), async (t) => {
  await using s = await startSlapd();
  await using dir = await tempDir();
  await using h = await hubWith([await ldapEntry(s, dir.path), { type: 'local' }]);
  t.match(await callError(login(h, 'alice', 'not-alice-password')), BAD_LOGIN, 'wrong password');
  t.match(await callError(login(h, 'carol', 'carol-password-1')), BAD_LOGIN, 'unknown user');
  t.match(await callError(login(h, 'alice', '')), BAD_LOGIN, 'empty password');
  t.equal(await h.hub.components.store.get('users', 'carol'), undefined, 'no record for an unknown user');
  // The backend refuses an empty password itself, before any bind (never an unauthenticated bind).
  t.same(await new LdapBackend(backendOptions(s)).authenticate('alice', ''), { kind: 'bad-password' });
  t.same(await new LdapBackend(backendOptions(s, { url: 'ldap://127.0.0.1:1' })).authenticate('alice', ''), { kind: 'bad-password' }, 'without touching the network');
});

t.test('LDAP filter injection: special characters never act as wildcards', needs(t, missing), async (t) => {
  await using s = await startSlapd();
  await using dir = await tempDir();
  await using h = await hubWith([await ldapEntry(s, dir.path), { type: 'local' }]);
  for (const name of ['*', 'alice)(uid=*', 'al*', '*)(|(uid=*']) {
    t.match(await callError(login(h, name, USERS.alice)), BAD_LOGIN, `"${name}" is refused`);
  }
  t.equal(escapeFilterValue('a*b(c)d\\e\0'), 'a\\2ab\\28c\\29d\\5ce\\00');
  // The backend escapes on its own too, whatever the caller let through.
  const b = new LdapBackend(backendOptions(s));
  t.match(await b.authenticate('alice', USERS.alice), { kind: 'ok', username: 'alice', groups: ['ops'] }, 'control: alice herself');
  for (const name of ['al*', '*', 'alice)(uid=*', '*)(|(uid=*', 'ali\\2a']) {
    t.same(await b.authenticate(name, USERS.alice), { kind: 'unknown-user' }, `"${name}" matches no entry`);
  }
  // A filter that matches more than one entry is no login at all.
  const loose = new LdapBackend(backendOptions(s, { userFilter: '(|(uid={username})(uid=bob))' }));
  t.same(await loose.authenticate('alice', USERS.alice), { kind: 'unknown-user' }, 'an ambiguous match');
});

t.test('directory down: LDAP logins fail with a logged backend error and the local admin still logs in', needs(t, missing), async (t) => {
  const s = await startSlapd();
  t.teardown(() => s.stop());
  await using dir = await tempDir();
  await using h = await hubWith([await ldapEntry(s, dir.path), { type: 'local' }]);
  await login(h, 'alice', USERS.alice);
  await s.stop();
  const started = Date.now();
  t.match(await callError(login(h, 'alice', USERS.alice)), BAD_LOGIN, 'alice is refused');
  t.ok(Date.now() - started < 5000, 'promptly');
  await waitFor(() => h.logLines.some((l) => l.includes('login backend error') && l.includes('"backend":"ldap"') && l.includes('ECONNREFUSED')), 2000, 'a logged backend error');
  const r = await login(h, 'admin', ADMIN_PASSWORD);
  t.equal(r.username, 'admin', 'the local admin still logs in');
  t.notOk(h.logLines.join('\n').includes(s.bindPassword), 'the bind password is not logged');
  t.notOk(h.logLines.join('\n').includes(USERS.alice), "nor alice's password");

  // A directory that was never there (a closed port): the hub starts, the admin logs in.
  await using h2 = await hubWith([await ldapEntry(s, dir.path, { url: 'ldap://127.0.0.1:1' }), { type: 'local' }]);
  t.match(await callError(login(h2, 'alice', USERS.alice)), BAD_LOGIN);
  t.equal((await login(h2, 'admin', ADMIN_PASSWORD)).username, 'admin');
});

t.test('TLS to the directory: ldaps and StartTLS with the configured CA work; another CA is unavailable', needs(t, missing), async (t) => {
  const ca = createCA({ commonName: 'LDAP test CA' });
  const other = createCA({ commonName: 'some other CA' });
  const k = generateKey();
  const certPem = issueCertificate({
    issuerCertPem: ca.certPem, issuerKey: ca.key, subjectPublicKey: k.publicKey, subject: { commonName: '127.0.0.1' },
    ipAddresses: ['127.0.0.1'], dnsNames: ['localhost'], usage: 'server', notAfter: new Date(Date.now() + 86_400_000),
  });
  await using s = await startSlapd({ tls: { certPem, keyPem: k.privateKeyPem } });
  await using dir = await tempDir();
  await writeFile(join(dir.path, 'ca.pem'), ca.certPem);
  await writeFile(join(dir.path, 'other-ca.pem'), other.certPem);

  await using h = await hubWith([await ldapEntry(s, dir.path, { url: s.tlsUrl, caFile: join(dir.path, 'ca.pem') }), { type: 'local' }]);
  t.equal((await login(h, 'alice', USERS.alice)).username, 'alice', 'alice logs in over ldaps://');

  await using h2 = await hubWith([await ldapEntry(s, dir.path, { url: s.tlsUrl, caFile: join(dir.path, 'other-ca.pem') }), { type: 'local' }]);
  t.match(await callError(login(h2, 'alice', USERS.alice)), BAD_LOGIN, 'refused with a CA that did not issue the directory certificate');
  await waitFor(() => h2.logLines.some((l) => l.includes('login backend error') && /verify|certificate/.test(l)), 2000, 'a logged TLS error');
  t.equal((await login(h2, 'admin', ADMIN_PASSWORD)).username, 'admin', 'the local admin still logs in');

  const startTls = new LdapBackend(backendOptions(s, { startTls: true, caPem: ca.certPem }));
  t.match(await startTls.authenticate('alice', USERS.alice), { kind: 'ok', groups: ['ops'] }, 'StartTLS with the right CA');
  const wrong = new LdapBackend(backendOptions(s, { startTls: true, caPem: other.certPem }));
  t.match(await wrong.authenticate('alice', USERS.alice), { kind: 'unavailable', message: /certificate/ }, 'StartTLS with another CA');
  const noTls = new LdapBackend(backendOptions(s, { url: s.tlsUrl! }));
  t.match(await noTls.authenticate('alice', USERS.alice), { kind: 'unavailable' }, 'the system CAs do not trust a test CA');
});

t.test('the module backend: a custom module authenticates, maps groups, and a broken one is unavailable', async (t) => {
  await using dir = await tempDir();
  const good = join(dir.path, 'carol.mjs');
  await writeFile(good, `export async function authenticate(username, password) {
  if (username !== 'carol') return { ok: false, reason: 'unknown-user' };
  return password === 'carol-password-1' ? { ok: true, groups: ['ops'] } : { ok: false, reason: 'bad-password' };
}\n`);
  const broken = join(dir.path, 'broken.mjs');
  await writeFile(broken, `export async function authenticate(username, password) { throw new Error('the directory exploded while checking ' + password); }\n`);
  const slow = join(dir.path, 'slow.mjs');
  await writeFile(slow, `export function authenticate() { return new Promise(() => {}); }\n`);

  await t.test('carol logs in and gets the groups the module names', async (t) => {
    await using h = await hubWith([{ type: 'module', path: good }, { type: 'local' }]);
    await h.hub.components.iam.createGroup('operators', '', ['ops']);
    await h.hub.components.iam.setRoleAssignment('observer', { group: 'operators' }, true);
    const r = await login(h, 'carol', 'carol-password-1');
    t.equal(r.username, 'carol');
    const u = await h.hub.components.store.get<UserDoc>('users', 'carol');
    t.match(u, { source: 'module', passwordHash: '' });
    const c = adminClients(h.adminAddr, h.caPem, r.token);
    t.teardown(() => c.close());
    t.ok((await call<T.WhoAmIRequest, T.WhoAmIResponse__Output>(c, c.auth, c.auth.WhoAmI, {})).roles.includes('observer'));
    t.match(await callError(login(h, 'carol', 'carol-password-2')), BAD_LOGIN, 'a wrong password is refused');
    t.match(await callError(login(h, 'dave', 'carol-password-1')), BAD_LOGIN, 'an unknown user is refused');
    t.equal((await login(h, 'admin', ADMIN_PASSWORD)).username, 'admin', 'local users still log in after the module says unknown-user');
  });

  for (const [what, path] of [['throws', broken], ['never answers', slow]] as const) {
    await t.test(`a module that ${what} is unavailable and the local admin still logs in`, async (t) => {
      await using h = await hubWith([{ type: 'module', path, timeoutMs: 300 }, { type: 'local' }]);
      t.match(await callError(login(h, 'carol', 'carol-password-1')), BAD_LOGIN);
      await waitFor(() => h.logLines.some((l) => l.includes('login backend error') && l.includes('"backend":"module"')), 2000, 'a logged backend error');
      t.notOk(h.logLines.join('\n').includes('carol-password-1'), 'the password is scrubbed from the module error');
      t.equal((await login(h, 'admin', ADMIN_PASSWORD)).username, 'admin');
    });
  }
});

t.test('a directory user cannot take over a local account of the same name', async (t) => {
  await using dir = await tempDir();
  const mod = join(dir.path, 'admin.mjs');
  await writeFile(mod, `export async function authenticate(u, p) { return p === 'directory-admin-pw' ? { ok: true, groups: [] } : { ok: false }; }\n`);
  await using h = await hubWith([{ type: 'module', path: mod }, { type: 'local' }]);
  t.match(await callError(login(h, 'admin', 'directory-admin-pw')), BAD_LOGIN, "the module's admin is not the local admin");
  t.ok(h.logLines.some((l) => l.includes('who is a local user')), 'the refusal is logged');
  t.equal((await login(h, 'admin', ADMIN_PASSWORD)).username, 'admin');
});

t.test('LDAP config: the bind password never sits in hub.json, its file must be private and non-empty', async (t) => {
  const base = { type: 'ldap', url: 'ldap://127.0.0.1:1', bindDn: 'cn=x', userBase: 'dc=x' };
  t.throws(() => validateConfig({ names: ['h'], auth: { backends: [{ ...base, bindPassword: 'secret' }] } }, 'x'), { code: 'TRELLIS_E_CONFIG', message: /bindPassword/ });
  t.throws(() => validateConfig({ names: ['h'], auth: { backends: [base] } }, 'x'), { message: /bindPasswordFile or bindPasswordEnv/ });
  t.throws(() => validateConfig({ names: ['h'], auth: { backends: [{ ...base, bindPasswordEnv: 'X', url: 'http://x' }] } }, 'x'), { message: /url/ });
  t.throws(() => validateConfig({ names: ['h'], auth: { backends: [{ ...base, bindPasswordEnv: 'X', url: 'ldaps://x', startTls: true }] } }, 'x'), { message: /startTls/ });
  await using dir = await tempDir();
  const pw = join(dir.path, 'pw');
  const build = (extra: object, env: NodeJS.ProcessEnv = {}) =>
    buildBackends(validateConfig({ names: ['h'], auth: { backends: [{ ...base, ...extra }] } }, 'x').auth.backends, { store: {} as Store, log: silentLogger(), env });
  await writeFile(pw, 'secret\n', { mode: 0o644 });
  t.throws(() => build({ bindPasswordFile: pw }), { code: 'TRELLIS_E_CONFIG', message: /readable by others.*chmod 600/ });
  await writeFile(join(dir.path, 'empty'), '\n', { mode: 0o600 });
  t.throws(() => build({ bindPasswordFile: join(dir.path, 'empty') }), { message: /empty bind password/ });
  t.throws(() => build({ bindPasswordFile: join(dir.path, 'nope') }), { message: /cannot read.*ENOENT/ });
  t.throws(() => build({ bindPasswordEnv: 'LDAP_PW' }), { message: /empty bind password.*LDAP_PW/ });
  t.equal(build({ bindPasswordEnv: 'LDAP_PW' }, { LDAP_PW: 'secret' })[0]!.name, 'ldap');
});
