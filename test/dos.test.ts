/**
 * Unauthenticated exhaustion of the admin port (issue 10, finding 9) and lock-out per source
 * address (finding 13), against real hubs over real TLS/gRPC on loopback. Other source addresses
 * come from a TCP relay bound to 127.0.0.x (test/helpers/proxy.ts).
 */
import t, { type Test } from 'tap';
import * as http2 from 'node:http2';
import { randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { startHub, callError, login, ADMIN_PASSWORD, type TestHub } from './helpers/hub.js';
import { sourceProxy } from './helpers/proxy.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import { CLIENT_OPTIONS } from '../common/grpc-options.js';
import { v1 } from '../common/proto.js';
import { sourceKey } from '../hub/auth/source.js';
import { LockoutTable } from '../hub/auth/lockout.js';
import { LoginLimiter } from '../hub/auth/limiter.js';
import { KdfPool } from '../hub/auth/kdf.js';
import { inlineKdf } from '../hub/auth/passwords.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

/** An admin client that writes in the default tenant (the helper's reads across all tenants). */
async function writer(t: Test, h: TestHub): Promise<AdminClients> {
  const c = adminClients(h.adminAddr, h.caPem, (await login(h, 'admin', ADMIN_PASSWORD)).token, 'default');
  t.teardown(() => c.close());
  return c;
}

const kvSet = (c: AdminClients, i: number) =>
  call<T.KvSetRequest, T.KvEntry__Output>(c, c.kv, c.kv.Set, { key: `dos/k${i % 5}`, value: `v${i}`, secret: false, ttlMs: 0, scope: 'tenant', private: false });

/**
 * Runs `clients` loops of wrong-password Logins for `admin` (each through its own address when
 * `addrs` is given) while `during` runs; returns what the flood got back and how long each took.
 */
async function flood<R>(h: TestHub, o: { clients: number; addrs?: string[] }, during: (outcomes: Map<string, number[]>) => Promise<R>): Promise<{ result: R; outcomes: Map<string, number[]> }> {
  const clients = Array.from({ length: o.clients }, (_, i) => adminClients(o.addrs?.[i] ?? h.adminAddr, h.caPem));
  const outcomes = new Map<string, number[]>();
  let stop = false;
  const loops = clients.map(async (c) => {
    while (!stop) {
      const t0 = performance.now();
      const err = await callError(call<T.LoginRequest, T.LoginResponse__Output>(c, c.auth, c.auth.Login, { username: 'admin', password: randomBytes(12).toString('base64url') }, 60_000));
      const k = err?.code ?? 'OK';
      if (!outcomes.has(k)) outcomes.set(k, []);
      outcomes.get(k)!.push(performance.now() - t0);
    }
  });
  try {
    await new Promise((r) => setTimeout(r, 500)); // the flood is on
    return { result: await during(outcomes), outcomes };
  } finally {
    stop = true;
    await Promise.all(loops);
    for (const c of clients) c.close();
  }
}

async function kvSetTimes(c: AdminClients, n: number): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await kvSet(c, i);
    times.push(performance.now() - t0);
  }
  return times;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

t.test('a wrong-password Login flood from one address is refused fast, and kv set keeps working during it', async (t) => {
  await using h = await startHub({ config: { auth: { limits: { failuresPerAddress: 10, failureWindow: '5m' } } } });
  const w = await writer(t, h);
  await kvSetTimes(w, 3); // warm-up
  // kv sets until the limiter has taken over (the address used its 10 failures), 30 s at most.
  const { result: times, outcomes } = await flood(h, { clients: 16 }, async (seen) => {
    const times: number[] = [];
    const end = Date.now() + 30_000;
    const failures = () => (seen.get('TRELLIS_E_UNAUTHENTICATED')?.length ?? 0);
    while (Date.now() < end && (times.length < 10 || failures() < 10 || (seen.get('TRELLIS_E_RATE_LIMITED')?.length ?? 0) < 16)) times.push(...await kvSetTimes(w, 1));
    return times;
  });
  const limited = outcomes.get('TRELLIS_E_RATE_LIMITED') ?? [];
  const wrong = outcomes.get('TRELLIS_E_UNAUTHENTICATED') ?? [];
  t.ok(limited.length > 0, `the limiter refused logins (${limited.length} refused, ${wrong.length} passwords checked)`);
  t.ok(wrong.length <= 10 + 2, `at most the per-address failure budget (and those in flight) got an answer other than "rate limited" (${wrong.length})`);
  t.ok(median(limited) < 2500, `a refusal costs no KDF: it comes after the 1 s refusal delay (median ${median(limited).toFixed(0)} ms)`);
  t.ok(Math.max(...times) < 2000, `every kv set during the flood took < 2 s (max ${Math.max(...times).toFixed(0)} ms)`);
  const err = await callError(login(h, 'admin', ADMIN_PASSWORD));
  t.match(err, { code: 'TRELLIS_E_RATE_LIMITED', message: /too many failed logins from your address: retry in/ }, 'this address is refused, even with the right password');
  t.equal(err?.grpcCode, grpc.status.RESOURCE_EXHAUSTED);
  // Audited through the one refusal throttle (hub/audit/throttle.ts): identical refusals once, the rest counted.
  const audited = (await h.hub.components.audit.query({ methodContains: 'AdminAuth/Login', limit: 10_000 })).filter((r) => /too many failed logins from your address/.test(r.detail));
  t.ok(audited.length >= 1, `rate-limited logins are audited (${audited.length} records)`);
  t.ok(audited.every((r) => r.actor === '-' && r.result === 'denied' && r.target === 'user:admin'), 'with the account tried, as denied');
  t.ok(audited.length <= 3, `not one record per refused call (${audited.length} records for ${limited.length + 1} refusals)`);
  const deniedLogins = (await h.hub.components.audit.query({ methodContains: 'AdminAuth/Login', limit: 10_000 })).filter((r) => r.result === 'denied');
  t.ok(h.hub.components.refusalAudit.suppressed >= limited.length + 1 - deniedLogins.length, 'the others are counted by the throttle');
  await h.stop(); // flushes the refusal summary
  t.ok(h.logLines.some((l) => l.includes('calls refused by a rate limit')), 'refusals are summarized in the log');
  t.ok(h.logLines.filter((l) => l.includes('login failed')).length <= 10 + 16, 'not one log line per refused call');
});

t.test('a Login flood from 16 addresses (the per-address limit does not help) does not stall disk writes', async (t) => {
  await using h = await startHub({ config: { auth: { limits: { failuresPerAddress: 1000 } } } });
  const proxies = await Promise.all(Array.from({ length: 16 }, (_, i) => sourceProxy({ host: '127.0.0.1', port: Number(h.adminAddr.split(':')[1]) }, `127.0.0.${10 + i}`)));
  t.teardown(async () => { for (const p of proxies) await p.close(); });
  const w = await writer(t, h);
  await kvSetTimes(w, 3);
  const { result: times, outcomes } = await flood(h, { clients: 16, addrs: proxies.map((p) => p.addr) }, () => kvSetTimes(w, 10));
  const checked = outcomes.get('TRELLIS_E_UNAUTHENTICATED')?.length ?? 0;
  t.ok(checked > 0, `passwords were checked during the flood (${checked})`);
  t.ok((outcomes.get('TRELLIS_E_RATE_LIMITED')?.length ?? 0) > 0, 'logins past the concurrent limit were refused at once');
  t.ok(Math.max(...times) < 2000, `every kv set during the flood took < 2 s (max ${Math.max(...times).toFixed(0)} ms)`);
});

t.test('pre-auth messages are bounded before they are buffered; authenticated calls keep the full limit', async (t) => {
  await using h = await startHub();
  const creds = grpc.credentials.createSsl(Buffer.from(h.caPem));
  const big = { ...CLIENT_OPTIONS, 'grpc.max_send_message_length': 8 * 1024 * 1024 };
  const auth = new v1.AdminAuth(h.adminAddr, creds, big);
  const packs = new v1.AdminPacks(h.adminAddr, creds, big);
  t.teardown(() => { auth.close(); packs.close(); });
  const unary = (fn: (cb: (err: grpc.ServiceError | null) => void) => void) => new Promise<grpc.ServiceError | null>((r) => fn((err) => r(err)));

  const mib = 'x'.repeat(1024 * 1024);
  const loginErr = await unary((cb) => auth.Login({ username: 'admin', password: mib }, cb));
  t.equal(loginErr?.code, grpc.status.RESOURCE_EXHAUSTED, `a 1 MiB Login is refused from its length prefix: ${loginErr?.details}`);
  const md = new grpc.Metadata();
  md.set('authorization', 'Bearer tls1_not-a-real-token');
  const files = [{ path: 'pack.yaml', content: Buffer.alloc(1024 * 1024, 0x20), mode: 0o644 }];
  const bogus = await unary((cb) => packs.InstallPack({ files, force: false }, md, cb));
  t.equal(bogus?.code, grpc.status.RESOURCE_EXHAUSTED, 'a 1 MiB InstallPack with a bad token is refused before its body is read');
  const none = await unary((cb) => packs.InstallPack({ files, force: false }, cb));
  t.equal(none?.code, grpc.status.RESOURCE_EXHAUSTED, 'and so is one with no token');

  // The hub is up, and a logged-in admin still sends a pack near the 4 MiB limit.
  t.equal((await login(h, 'admin', ADMIN_PASSWORD)).username, 'admin', 'the hub still answers');
  const doc = Buffer.alloc(1_000_000, 0x61); // four files of 1 MB each (a pack file is at most 1 MiB)
  const pack = [
    { path: 'pack.yaml', content: Buffer.from('name: bigpack\nversion: 1.0.0\n'), mode: 0o644 },
    ...['README.md', 'LICENSE', 'CHANGELOG.md', 'NOTICE'].map((path) => ({ path, content: doc, mode: 0o644 })),
  ];
  const authed = new grpc.Metadata();
  authed.merge((await writer(t, h)).metadata);
  const installed = await unary((cb) => packs.InstallPack({ files: pack, force: false }, authed, cb));
  t.equal(installed, null, `a logged-in admin installs a 4 MB pack (${installed?.details ?? 'installed'})`);
});

t.test('unauthenticated calls in progress are bounded per address, and a slow sender is cut', async (t) => {
  await using h = await startHub({ config: { preAuth: { maxCallsPerAddress: 3, requestTimeout: '1s' } } });
  const session = http2.connect(`https://${h.adminAddr}`, { ca: h.caPem, servername: 'localhost' });
  t.teardown(() => session.close());
  // Streams that send their headers and never their body hold a slot each.
  const open = (path = '/trellis.v1.AdminAuth/Login') => {
    const s = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers' }, { endStream: false });
    const done = new Promise<{ status?: string; ms: number }>((resolve) => {
      const t0 = performance.now();
      let status: string | undefined;
      const end = () => { resolve({ status, ms: performance.now() - t0 }); s.close(); };
      const on = (hd: http2.IncomingHttpHeaders) => { status ??= hd['grpc-status'] as string | undefined; if (status !== undefined) end(); };
      s.on('response', on);
      s.on('trailers', on);
      s.on('close', end);
      s.on('error', () => undefined);
      s.resume();
    });
    return { s, done };
  };
  const held = [open(), open(), open()];
  await new Promise((r) => setTimeout(r, 300));
  const fourth = await open().done;
  t.equal(fourth.status, String(grpc.status.RESOURCE_EXHAUSTED), 'a 4th unauthenticated call from the same address is refused at once');
  const version = await callError(call<T.GetVersionRequest, T.VersionInfo__Output>(h.admin, h.admin.version, h.admin.version.GetVersion, {}));
  t.equal(version?.code, 'TRELLIS_E_RATE_LIMITED', 'an open call from the same address too');
  const gated = (await h.hub.components.audit.query({ limit: 1000 })).filter((r) => r.detail.includes('too many unauthenticated calls in progress'));
  t.ok(gated.some((r) => r.method === '/trellis.v1.AdminAuth/Login' && r.actor === '-' && r.result === 'denied'), 'the pre-auth refusal is audited (through the refusal throttle)');
  t.ok(gated.some((r) => r.method === '/trellis.v1.Version/GetVersion'), 'each refused method');
  const agents = await call<T.ListAgentsRequest, T.ListAgentsResponse__Output>(h.admin, h.admin.agents, h.admin.agents.ListAgents, {});
  t.ok(agents, 'a logged-in call from the same address is not affected (its credential is verified first)');
  const cut = await Promise.all(held.map((x) => x.done));
  for (const c of cut) t.equal(c.status, String(grpc.status.DEADLINE_EXCEEDED), `a call that never sent its request was cut after ${c.ms.toFixed(0)} ms`);
  t.equal(h.hub.components.config.preAuth.maxCallsPerAddress, 3);
  const after = await open('/trellis.v1.Version/GetVersion');
  after.s.end(Buffer.from([0, 0, 0, 0, 0])); // an empty GetVersionRequest
  t.equal((await after.done).status, '0', 'slots are given back: a new call is served');
});

t.test('failing logins for admin from one address does not lock the admin out of another (over the admin port)', async (t) => {
  await using h = await startHub();
  await using attacker = await sourceProxy({ host: '127.0.0.1', port: Number(h.adminAddr.split(':')[1]) }, '127.0.0.2');
  const via = { adminAddr: attacker.addr, caPem: h.caPem };
  for (let i = 1; i <= 5; i++) t.match(await callError(login(via, 'admin', `wrong-password-${i}`)), { code: 'TRELLIS_E_UNAUTHENTICATED', message: 'wrong user name or password' }, `failure ${i} from 127.0.0.2`);
  t.match(await callError(login(via, 'admin', ADMIN_PASSWORD)), { code: 'TRELLIS_E_UNAUTHENTICATED', message: /locked for .* from your address/ }, 'admin is locked at 127.0.0.2, even with the right password');
  t.equal((await login(h, 'admin', ADMIN_PASSWORD)).username, 'admin', 'the real admin logs in from 127.0.0.1');
  const info = await call<T.GetUserRequest, T.UserInfo__Output>(h.admin, h.admin.users, h.admin.users.GetUser, { username: 'admin' });
  t.ok(Number(info.lockedUntilMs) > Date.now(), '`users show admin` says it is locked (from some address)');
  await call<T.UnlockUserRequest, T.UserInfo__Output>(h.admin, h.admin.users, h.admin.users.UnlockUser, { username: 'admin' });
  t.equal((await login(via, 'admin', ADMIN_PASSWORD)).username, 'admin', 'an unlock clears the lock-out at 127.0.0.2 too');
});

t.test('lock-out is per (name, source address): five failures from A, the user logs in from B', async (t) => {
  await using h = await startHub();
  const auth = h.hub.components.auth;
  await auth.createUser({ username: 'dave', password: 'dave-password-1', roles: [] });
  const A = '203.0.113.7:40000';
  const B = '198.51.100.9:40000';
  for (let i = 0; i < 5; i++) await t.rejects(auth.login('dave', `wrong-${i}-password`, { source: A }), { code: 'TRELLIS_E_UNAUTHENTICATED', message: 'wrong user name or password' });
  await t.rejects(auth.login('dave', 'dave-password-1', { source: `203.0.113.7:40001` }), { message: /locked for .* from your address/ }, 'locked at A (whatever the port)');
  t.equal((await auth.login('dave', 'dave-password-1', { source: B })).user.username, 'dave', 'B logs in');
  t.match(auth.lockoutSummary('dave'), { failures: 5, lockedSources: 1 });
  // IPv6: a /64 is one source.
  for (let i = 0; i < 5; i++) await t.rejects(auth.login('dave', `wrong-${i}-password`, { source: `[2001:db8:1:2::${i + 1}]:5000` }));
  await t.rejects(auth.login('dave', 'dave-password-1', { source: '[2001:db8:1:2:ffff::9]:1' }), { message: /locked/ }, 'another address in the same /64 is locked too');
  t.equal((await auth.login('dave', 'dave-password-1', { source: '[2001:db8:1:3::1]:1' })).user.username, 'dave', 'another /64 is not');
});

t.test('source keys: port dropped, IPv4-mapped IPv6 as IPv4, IPv6 by /64', async (t) => {
  t.equal(sourceKey('127.0.0.1:5555'), '127.0.0.1');
  t.equal(sourceKey('[::ffff:10.1.2.3]:80'), '10.1.2.3');
  t.equal(sourceKey('::ffff:10.1.2.3'), '10.1.2.3');
  t.equal(sourceKey('[2001:db8:aa:bb:1:2:3:4]:99'), '2001:db8:aa:bb::/64');
  t.equal(sourceKey('[2001:db8::1]:99'), '2001:db8:0:0::/64');
  t.equal(sourceKey('[::1]:99'), '0:0:0:0::/64');
  t.equal(sourceKey('fe80::1%eth0'), 'fe80:0:0:0::/64');
  t.equal(sourceKey(undefined), 'unknown');
  t.equal(sourceKey('ipv4:10.1.2.3:4000'), '10.1.2.3', "grpc-js's scheme prefix dropped");
  t.equal(sourceKey('ipv6:[2001:db8:aa:bb::1]:4000'), '2001:db8:aa:bb::/64');
});

t.test('the lock-out and limiter tables stay bounded; the limiter gives slots back', async (t) => {
  const table = new LockoutTable({ maxFailures: 1, windowMs: 60_000, durationMs: 60_000 }, 100);
  for (let i = 0; i < 1000; i++) table.fail(`u${i}`, 's', 1);
  t.equal(table.summary('u0', 2).lockedSources, 0, 'the oldest entries went first');
  t.equal(table.summary('u999', 2).lockedSources, 1);
  const lim = new LoginLimiter({ concurrent: 2, concurrentPerAddress: 1, failuresPerAddress: 3, failureWindowMs: 1000, refusalDelayMs: 0 });
  const r1 = lim.admit('a', 0);
  t.throws(() => lim.admit('a', 0), { code: 'TRELLIS_E_RATE_LIMITED', message: /in progress/ }, 'one at a time per address');
  const r2 = lim.admit('b', 0);
  t.throws(() => lim.admit('c', 0), { code: 'TRELLIS_E_RATE_LIMITED' }, 'two in all');
  r1(); r1(); r2();
  for (let i = 0; i < 3; i++) lim.failed('a', 10);
  t.throws(() => lim.admit('a', 20), { message: /too many failed logins from your address: retry in 1s/ });
  lim.admit('a', 1011)(); // the failures aged out
});

t.test('the KDF pool gives the same keys as scrypt, refuses past its queue and ends its workers on close', async (t) => {
  const pool = new KdfPool({ workers: 1, maxQueue: 2 });
  const o = { N: 1 << 14, r: 8, p: 1, maxmem: 64 * 1024 * 1024 };
  const salt = randomBytes(16);
  t.same(await pool.kdf('pw', salt, 32, o), await inlineKdf('pw', salt, 32, o));
  const jobs = [pool.kdf('a', salt, 32, o), pool.kdf('b', salt, 32, o), pool.kdf('c', salt, 32, o)];
  await t.rejects(pool.kdf('d', salt, 32, o), { code: 'TRELLIS_E_RATE_LIMITED' }, 'a full queue refuses at once');
  await Promise.all(jobs);
  await pool.close();
  await t.rejects(pool.kdf('e', salt, 32, o), { code: 'TRELLIS_E_SHUTDOWN' });
});
