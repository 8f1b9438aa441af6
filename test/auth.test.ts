import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startHub, tempDir, callError, ADMIN_PASSWORD, type TestHub, login } from './helpers/hub.js';
import { adminClients, call } from '../cli/client.js';
import { loadHubConfig, validateConfig } from '../hub/config.js';
import type { UserDoc } from '../hub/auth/users.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const DAVE = 'dave-password-1';
const BAD_LOGIN = { code: 'TRELLIS_E_UNAUTHENTICATED', message: 'wrong user name or password' };
const LOCKED = (name: string) => new RegExp(`this account is locked for [0-9dhms]+ from your address; log in from another address, or an administrator can run .trellis users unlock ${name}.`);


const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('five failed logins lock the account: even the right password is refused until an unlock or the lock expires', async (t) => {
  await using h = await startHub({ config: { auth: { lockout: { maxFailures: 5, window: '15m', duration: '2s' } } } });
  const auth = h.hub.components.auth;
  await auth.createUser({ username: 'dave', password: DAVE, roles: [] });
  for (let i = 1; i <= 5; i++) t.match(await callError(login(h, 'dave', `wrong-password-${i}`)), BAD_LOGIN, `failure ${i}`);
  const locked = await callError(login(h, 'dave', DAVE));
  t.match(locked, { code: 'TRELLIS_E_UNAUTHENTICATED', message: LOCKED('dave') }, 'the 6th attempt, with the right password, is refused and says how to unlock');
  t.match(locked?.message, /too many failed logins/);

  await auth.unlock('dave');
  t.equal((await login(h, 'dave', DAVE)).username, 'dave', 'an administrator unlocked it');

  for (let i = 1; i <= 5; i++) await callError(login(h, 'dave', `wrong-password-${i}`));
  t.match(await callError(login(h, 'dave', DAVE)), { message: LOCKED('dave') }, 'locked again');
  const until = auth.lockoutSummary('dave').lockedUntil;
  t.ok(until > Date.now() && until <= Date.now() + 2000, 'for the configured 2s');
  await sleep(until - Date.now() + 50);
  t.equal((await login(h, 'dave', DAVE)).username, 'dave', 'the lock expired by itself');
  t.equal(auth.lockoutSummary('dave').failures, 0, 'and a good login clears the failures');
});

t.test('failed logins are counted inside the window only', async (t) => {
  await using h = await startHub({ config: { auth: { lockout: { maxFailures: 3, window: '1s', duration: '15m' } } } });
  await h.hub.components.auth.createUser({ username: 'dave', password: DAVE, roles: [] });
  for (let i = 0; i < 2; i++) await callError(login(h, 'dave', 'wrong-password-x'));
  await sleep(1100);
  t.match(await callError(login(h, 'dave', 'wrong-password-x')), BAD_LOGIN, 'the old failures fell out of the window');
  t.equal((await login(h, 'dave', DAVE)).username, 'dave', 'so one more failure did not lock');
});

t.test('a missing user gets the same answers as a wrong password, lock-out included (no user enumeration)', async (t) => {
  await using h = await startHub({ config: { auth: { lockout: { maxFailures: 5, window: '15m', duration: '15m' } } } });
  await h.hub.components.auth.createUser({ username: 'dave', password: DAVE, roles: [] });
  for (let i = 1; i <= 5; i++) {
    const real = await callError(login(h, 'dave', `wrong-password-${i}`));
    const ghost = await callError(login(h, 'ghost', `wrong-password-${i}`));
    t.equal(ghost?.message, real?.message, `failure ${i}: same message`);
    t.equal(ghost?.code, real?.code);
  }
  const real = await callError(login(h, 'dave', DAVE));
  const ghost = await callError(login(h, 'ghost', DAVE));
  t.match(ghost, { code: 'TRELLIS_E_UNAUTHENTICATED', message: LOCKED('ghost') }, 'the missing user is "locked" too');
  const same = (m?: string) => m?.replace(/locked for [0-9dhms]+/, 'locked for N').replace('ghost', 'dave');
  t.equal(same(ghost?.message), same(real?.message), 'with the very same message');
  t.equal(await h.hub.components.store.get('users', 'ghost'), undefined, 'and no record was made for it');
});

t.test('a login for a missing user takes about as long as a wrong password', async (t) => {
  await using h = await startHub({ config: { auth: { lockout: { maxFailures: 100, window: '15m', duration: '15m' } } } });
  await h.hub.components.auth.createUser({ username: 'dave', password: DAVE, roles: [] });
  const time = async (name: string) => { const s = process.hrtime.bigint(); await callError(login(h, name, 'wrong-password-x')); return Number(process.hrtime.bigint() - s) / 1e6; };
  await time('dave'); await time('ghost'); // warm up (the dummy hash is made on first use)
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const real: number[] = [], ghost: number[] = [];
  for (let i = 0; i < 5; i++) { real.push(await time('dave')); ghost.push(await time(`ghost${i}`)); }
  const ratio = median(ghost) / median(real);
  t.ok(ratio > 0.5 && ratio < 2, `median missing user ${median(ghost).toFixed(1)} ms vs wrong password ${median(real).toFixed(1)} ms (ratio ${ratio.toFixed(2)})`);
});

t.test('auth config: defaults, durations in ms, unknown keys rejected by name', async (t) => {
  const c = validateConfig({ names: ['h'] }, 'x');
  t.same(c.auth, {
    backends: [{ type: 'local' }], lockout: { maxFailures: 5, windowMs: 900_000, durationMs: 900_000 },
    limits: { concurrent: 4, concurrentPerAddress: 2, failuresPerAddress: 20, failureWindowMs: 300_000, refusalDelayMs: 1000 }, kdfWorkers: 1,
  });
  t.same(c.preAuth, { maxMessageBytes: 65_536, maxCalls: 128, maxCallsPerAddress: 16, requestTimeout: 10_000 });
  t.same(validateConfig({ names: ['h'], auth: { lockout: { window: '1m', duration: '30s', maxFailures: 3 } } }, 'x').auth.lockout, { maxFailures: 3, windowMs: 60_000, durationMs: 30_000 });
  t.throws(() => validateConfig({ names: ['h'], auth: { lockout: { maxFailure: 5 } } }, 'x'), { code: 'TRELLIS_E_CONFIG', message: /auth\.lockout.*maxFailure/ });
  t.throws(() => validateConfig({ names: ['h'], auth: { backend: [] } }, 'x'), { message: /auth.*backend\b/ });
  t.throws(() => validateConfig({ names: ['h'], auth: { backends: [{ type: 'local', path: '/x' }] } }, 'x'), { message: /auth\.backends\.0.*path/ });
  t.throws(() => validateConfig({ names: ['h'], auth: { backends: [{ type: 'kerberos' }] } }, 'x'), { message: /auth\.backends\.0\.type/ });
  t.throws(() => validateConfig({ names: ['h'], auth: { backends: [] } }, 'x'), { message: /auth\.backends/ });
  t.throws(() => validateConfig({ names: ['h'], auth: { lockout: { duration: 'forever' } } }, 'x'), { message: /auth\.lockout\.duration.*forever/ });
  t.throws(() => validateConfig({ names: ['h'], auth: { backends: [{ type: 'local' }, { type: 'local' }] } }, 'x'), { message: /unique/ });
  t.throws(() => validateConfig({ names: ['h'], auth: { backends: [{ type: 'module', path: '/x.mjs', name: 'local' }] } }, 'x'), { message: /reserved/ });
  // The same from hub.json, naming the file.
  await using d = await tempDir();
  writeFileSync(join(d.path, 'hub.json'), JSON.stringify({ names: ['h'], auth: { lockout: { maxFailures: 5, windw: '15m' } } }));
  t.throws(() => loadHubConfig(d.path, {}, {}), { code: 'TRELLIS_E_CONFIG', message: /windw.*|hub\.json/ });
  t.throws(() => loadHubConfig(d.path, {}, {}), { message: new RegExp(`${join(d.path, 'hub.json').replace(/[/.]/g, '\\$&')}.*windw`) });
});

t.test('user names are one account whatever the case typed at login; mixed-case names are refused at creation', async (t) => {
  await using h = await startHub();
  const anon = adminClients(h.adminAddr, h.caPem);
  t.teardown(() => anon.close());
  const r = await call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username: 'ADMIN', password: ADMIN_PASSWORD });
  t.equal(r.username, 'admin');
  await t.rejects(h.hub.components.auth.createUser({ username: 'Alice', password: 'alice-password-1', roles: [] }), { code: 'TRELLIS_E_INVALID_ARGUMENT', message: /lowercase/ });
});
