/**
 * Named contexts and CI credentials, with the real CLI against a real hub:
 * - `login --context prod`, `context list|use|delete`; logging in again needs only the password
 *   (hub and CA remembered) and revokes the token it replaces (the hub refuses the old one);
 *   `context delete` revokes the context's token; profile.json of earlier releases is context `default`.
 * - TRELLIS_HUB + TRELLIS_CA or TRELLIS_CA_FINGERPRINT + TRELLIS_API_KEY work without any login;
 *   a wrong fingerprint is refused before the key is sent; missing pieces are clear errors.
 */
import t from 'tap';
import { readFileSync, existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ADMIN_PASSWORD, startHub, tempDir } from './helpers/hub.js';
import { runCli } from './helpers/cli.js';
import { adminClients, call } from '../cli/client.js';
import { currentContext, writeProfile } from '../cli/profile.js';
import { fingerprintSha256 } from '../certs/index.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

async function whoami(addr: string, caPem: string, token: string): Promise<string> {
  const c = adminClients(addr, caPem, token);
  try {
    return (await call<T.WhoAmIRequest, T.WhoAmIResponse__Output>(c, c.auth, c.auth.WhoAmI, {}, 10_000)).username;
  } catch (e) { return (e as { code: string }).code; } finally { c.close(); }
}

const tokenOf = (home: string, ctx: string) => (JSON.parse(readFileSync(ctx === 'default' ? join(home, 'profile.json') : join(home, 'contexts', `${ctx}.json`), 'utf8')) as { token: string }).token;

t.test('contexts: login --context, list, use, re-login with only the password revokes the old token, delete revokes too', async (t) => {
  await using h = await startHub();
  await using dir = await tempDir();
  const home = join(dir.path, 'home');
  const caFile = join(dir.path, 'ca.pem');
  await writeFile(caFile, h.caPem);
  const env = { TRELLIS_HOME: home, TRELLIS_PASSWORD: ADMIN_PASSWORD };

  t.equal((await runCli(['login', '--hub', h.adminAddr, '--user', 'admin', '--ca', caFile], env)).code, 0, 'login to the default context');
  const prod = await runCli(['login', '--context', 'prod', '--hub', h.adminAddr, '--user', 'admin', '--ca', caFile], env);
  t.equal(prod.code, 0, `login --context prod: ${prod.err}`);
  t.match(prod.out, /context prod/);
  const list = await runCli(['context', 'list'], env);
  t.match(list.out, /^\s+default\s+127\.0\.0\.1:\d+\s+admin/m, 'default listed');
  t.match(list.out, /^\*\s+prod\s+127\.0\.0\.1:\d+\s+admin/m, 'prod listed and current');
  const json = JSON.parse((await runCli(['context', 'list', '--json'], env)).out) as Array<{ name: string; current: boolean; loggedIn: boolean }>;
  t.same(json.map((c) => [c.name, c.current, c.loggedIn]), [['default', false, true], ['prod', true, true]]);

  // Again, password only: hub, user and CA come from the context; the replaced token is revoked at the hub.
  const old = tokenOf(home, 'prod');
  t.equal(await whoami(h.adminAddr, h.caPem, old), 'admin', 'the first token works');
  const again = await runCli(['login'], env);
  t.equal(again.code, 0, `re-login with only the password: ${again.err}`);
  t.match(again.out, /logged in to 127\.0\.0\.1:\d+ as admin .*context prod/);
  const fresh = tokenOf(home, 'prod');
  t.not(fresh, old, 'a new token');
  t.equal(await whoami(h.adminAddr, h.caPem, old), 'TRELLIS_E_UNAUTHENTICATED', 'the hub refuses the replaced token');
  t.equal(await whoami(h.adminAddr, h.caPem, fresh), 'admin', 'the new one works');
  t.equal(await whoami(h.adminAddr, h.caPem, tokenOf(home, 'default')), 'admin', 'the other context\'s token is untouched');

  // A wrong password changes nothing.
  const bad = await runCli(['login'], { ...env, TRELLIS_PASSWORD: 'wrong-password-here' });
  t.equal(bad.code, 1);
  t.equal(tokenOf(home, 'prod'), fresh, 'a failed login keeps the token');

  // use / TRELLIS_CONTEXT / unknown names.
  t.equal((await runCli(['context', 'use', 'default'], env)).code, 0);
  t.match((await runCli(['context', 'list'], env)).out, /^\*\s+default/m, 'default is current');
  t.equal((await runCli(['whoami'], { ...env, TRELLIS_CONTEXT: 'prod' })).code, 0, 'TRELLIS_CONTEXT picks one for a command');
  const nope = await runCli(['context', 'use', 'staging'], env);
  t.equal(nope.code, 1);
  t.match(nope.err, /no context staging.*TRELLIS_E_NOT_FOUND/);
  const badName = await runCli(['login', '--context', '../x', '--hub', h.adminAddr, '--user', 'admin', '--ca', caFile], env);
  t.match(badName.err, /bad context name.*TRELLIS_E_INVALID_ARGUMENT/, 'a context name cannot be a path');

  // delete revokes the context's token.
  const del = await runCli(['context', 'delete', 'prod'], env);
  t.equal(del.code, 0, del.err);
  t.notOk(existsSync(join(home, 'contexts', 'prod.json')), 'forgotten');
  t.equal(await whoami(h.adminAddr, h.caPem, fresh), 'TRELLIS_E_UNAUTHENTICATED', 'its token was revoked at the hub');
  t.notMatch((await runCli(['context', 'list'], env)).out, /prod/);
});

t.test('a profile.json written by an earlier release is context `default`', async (t) => {
  await using h = await startHub();
  await using dir = await tempDir();
  const env = { TRELLIS_HOME: dir.path };
  const l = await call<T.LoginRequest, T.LoginResponse__Output>(h.admin, h.admin.auth, h.admin.auth.Login, { username: 'admin', password: ADMIN_PASSWORD });
  await writeFile(join(dir.path, 'profile.json'), JSON.stringify({ hub: h.adminAddr, caPem: h.caPem, username: 'admin', token: l.token, expiresAtMs: Number(l.expiresAtMs), tenant: 'default' }), { mode: 0o600 });
  t.match((await runCli(['context', 'list'], env)).out, /^\*\s+default\s+127\.0\.0\.1/m);
  t.equal((await runCli(['whoami'], env)).code, 0, 'commands use it');
  t.equal((await runCli(['login'], { ...env, TRELLIS_PASSWORD: ADMIN_PASSWORD })).code, 0, 're-login with only the password');
  t.equal(await whoami(h.adminAddr, h.caPem, l.token), 'TRELLIS_E_UNAUTHENTICATED', 'the old token was revoked');
  await writeProfile({ hub: h.adminAddr, caPem: h.caPem, username: 'admin', token: 'x', expiresAtMs: 1, tenant: 'default' }, env);
  t.ok(existsSync(join(dir.path, 'profile.json')), 'writeProfile still writes profile.json for the default context');
});

t.test('CI without a profile: TRELLIS_HUB, TRELLIS_CA or TRELLIS_CA_FINGERPRINT, TRELLIS_API_KEY', async (t) => {
  await using h = await startHub();
  await using dir = await tempDir();
  const caFile = join(dir.path, 'ca.pem');
  await writeFile(caFile, h.caPem);
  const k = await call<T.CreateApiKeyRequest, T.CreateApiKeyResponse__Output>(h.admin, h.admin.apikeys, h.admin.apikeys.CreateApiKey, { name: 'ci' });
  const base = { TRELLIS_HOME: join(dir.path, 'empty-home'), TRELLIS_API_KEY: k.key };

  const withFile = await runCli(['whoami'], { ...base, TRELLIS_HUB: h.adminAddr, TRELLIS_CA: caFile });
  t.equal(withFile.code, 0, `TRELLIS_CA file: ${withFile.err}`);
  t.match(withFile.out, /^admin /);
  const fp = fingerprintSha256(h.caPem);
  const withFp = await runCli(['agents', 'list'], { ...base, TRELLIS_HUB: h.adminAddr, TRELLIS_CA_FINGERPRINT: fp });
  t.equal(withFp.code, 0, `TRELLIS_CA_FINGERPRINT: ${withFp.err}`);
  t.notOk(existsSync(base.TRELLIS_HOME), 'nothing written');

  const seen = () => h.logLines.filter((l) => l.includes('AdminAuth/WhoAmI')).length;
  const before = seen();
  const wrong = await runCli(['whoami'], { ...base, TRELLIS_HUB: h.adminAddr, TRELLIS_CA_FINGERPRINT: 'ab'.repeat(32) });
  t.equal(wrong.code, 1);
  t.match(wrong.err, /does not present a CA with fingerprint .*nothing was sent.*TRELLIS_E_CA_PIN_MISMATCH/, `wrong fingerprint: ${wrong.err.trim()}`);
  t.notMatch(wrong.err, k.key.slice(-12), 'the key is not echoed');
  t.equal(seen(), before, 'no request reached the hub: the key was not sent');

  const noHub = await runCli(['whoami'], base);
  t.equal(noHub.code, 1);
  t.match(noHub.err, /TRELLIS_API_KEY is set but no hub is known: set TRELLIS_HUB=HOST:7444.*TRELLIS_E_CONFIG/, `missing TRELLIS_HUB: ${noHub.err.trim()}`);
  const noCa = await runCli(['whoami'], { ...base, TRELLIS_HUB: h.adminAddr });
  t.match(noCa.err, /TRELLIS_HUB is set without a CA to trust: set TRELLIS_CA=.*TRELLIS_CA_FINGERPRINT.*TRELLIS_E_CONFIG/);
  const noKey = await runCli(['whoami'], { TRELLIS_HOME: base.TRELLIS_HOME, TRELLIS_HUB: h.adminAddr, TRELLIS_CA: caFile });
  t.match(noKey.err, /TRELLIS_HUB is set but TRELLIS_API_KEY is not.*TRELLIS_E_CONFIG/);
  const wrongCa = await runCli(['whoami'], { ...base, TRELLIS_HUB: h.adminAddr, TRELLIS_CA: join(dir.path, 'missing.pem') });
  t.match(wrongCa.err, /cannot read TRELLIS_CA .*missing\.pem: ENOENT/);
});

t.test('a current-context file naming no valid context is an error, not a silent switch to `default`', async (t) => {
  await using dir = await tempDir();
  const env = { TRELLIS_HOME: dir.path };
  t.equal(currentContext(env), 'default', 'no file: default');
  await writeFile(join(dir.path, 'current-context'), 'prod\n');
  t.equal(currentContext(env), 'prod');
  await writeFile(join(dir.path, 'current-context'), '../prod\n');
  t.throws(() => currentContext(env), { code: 'TRELLIS_E_CONFIG', message: /current-context names no valid context: pick one with `trellis context use NAME`/ });
  t.equal(currentContext({ ...env, TRELLIS_CONTEXT: 'ci' }), 'ci', 'TRELLIS_CONTEXT does not read the file');
});
