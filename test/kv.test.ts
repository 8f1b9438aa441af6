/**
 * The datastore and secrets (hub/kv, AdminKv): plain and secret values, ciphertext unless
 * decrypted with kv:decrypt (audited), tenant / user / private visibility, AAD binding, tamper,
 * TTL, size limits, no clear secret in any hub file or log line, key rotation under load, and a
 * hub killed with SIGKILL in the middle of a rotation.
 */
import t, { type Test } from 'tap';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ADMIN_PASSWORD, startHub, tempDir, captureLogger, waitFor, type TestHub } from './helpers/hub.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import { initHub } from '../hub/init.js';
import { Hub } from '../hub/hub.js';
import { kvId, type KvDoc } from '../hub/kv/index.js';
import { keysDir } from '../hub/secrets/keyring.js';
import { rotationPauseFromEnv } from '../hub/kv/test-hooks.js';
import { startChildHub } from '../bench/lib.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const PW = 'a-long-enough-password-1';
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

async function codeOf(p: Promise<unknown>): Promise<string> {
  try { await p; return 'OK'; } catch (e) { return (e as { code?: string }).code ?? String(e); }
}
async function errOf(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  try { await p; return { code: 'OK', message: '' }; } catch (e) { return { code: (e as { code?: string }).code ?? '?', message: (e as Error).message }; }
}

async function clientsFor(t: Test, addr: string, caPem: string, username: string, tenant: string, password = PW): Promise<AdminClients> {
  const anon = adminClients(addr, caPem);
  const r = await call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username, password }).finally(() => anon.close());
  const c = adminClients(addr, caPem, r.token, tenant);
  t.teardown(() => c.close());
  return c;
}

const set = (c: AdminClients, req: Partial<T.KvSetRequest>) => call<T.KvSetRequest, T.KvEntry__Output>(c, c.kv, c.kv.Set, { key: '', value: '', secret: false, ttlMs: 0, scope: '', private: false, ...req });
const get = (c: AdminClients, key: string, o: Partial<T.KvGetRequest> = {}) => call<T.KvGetRequest, T.KvEntry__Output>(c, c.kv, c.kv.Get, { key, scope: '', decrypt: false, ...o });
const list = async (c: AdminClients, prefix = '') => (await call<T.KvListRequest, T.KvListResponse__Output>(c, c.kv, c.kv.List, { prefix })).entries;
const del = (c: AdminClients, key: string, scope = '') => call<T.KvDeleteRequest, T.KvDeleteResponse__Output>(c, c.kv, c.kv.Delete, { key, scope });

function rotate(c: AdminClients, onData?: (p: T.RotateProgress__Output) => void): Promise<T.RotateProgress__Output[]> {
  return new Promise((resolve, reject) => {
    const seen: T.RotateProgress__Output[] = [];
    const s = c.kv.RotateKey({}, c.metadata);
    s.on('data', (p: T.RotateProgress__Output) => { seen.push(p); onData?.(p); });
    s.on('error', reject);
    s.on('end', () => resolve(seen));
  });
}

interface World { h: TestHub; a: AdminClients; r: AdminClients; r2: AdminClients; b: AdminClients }

async function world(t: Test): Promise<World> {
  const h = await startHub();
  t.teardown(() => h.close());
  for (const name of ['red', 'blue']) await call(h.admin, h.admin.tenants, h.admin.tenants.CreateTenant, { name, description: '' });
  for (const [username, tenant] of [['r', 'red'], ['r2', 'red'], ['b', 'blue']] as const) {
    await call(h.admin, h.admin.users, h.admin.users.CreateUser, { username, password: PW, roles: ['user'], tenants: [tenant] });
  }
  return {
    h, a: await clientsFor(t, h.adminAddr, h.caPem, 'admin', 'red', ADMIN_PASSWORD),
    r: await clientsFor(t, h.adminAddr, h.caPem, 'r', 'red'), r2: await clientsFor(t, h.adminAddr, h.caPem, 'r2', 'red'), b: await clientsFor(t, h.adminAddr, h.caPem, 'b', 'blue'),
  };
}

function walk(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...walk(p)); else out.push(p);
  }
  return out;
}

t.test('plain and secret values: set, get, list, delete; ciphertext unless decrypted; decrypt audited; user role cannot decrypt', async (t) => {
  const { h, a, r } = await world(t);
  const plain = await set(a, { key: 'app/url', value: 'https://example.test' });
  t.equal(plain.secret, false);
  t.equal((await get(r, 'app/url')).value, 'https://example.test', 'a tenant member reads a plain value');
  const s = await set(a, { key: 'app/db-password', value: 'hunter2-very-secret', secret: true });
  t.match(s.value, /^v1:/, 'set answers with the ciphertext');
  t.equal(s.keyVersion, 1);
  const ct = await get(a, 'app/db-password');
  t.not(ct.value, 'hunter2-very-secret', 'get without decrypt returns ciphertext');
  t.match(ct.value, /^v1:[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+$/);
  t.equal(ct.decrypted, false);
  const clear = await get(a, 'app/db-password', { decrypt: true });
  t.equal(clear.value, 'hunter2-very-secret');
  t.equal(clear.decrypted, true);
  await h.hub.components.audit.flush();
  const recs = await h.hub.components.audit.query({ methodContains: 'AdminKv/Get', limit: 100 });
  t.ok(recs.some((x) => x.actor === 'admin' && x.result === 'ok' && x.detail === 'decrypt' && x.target === 'kv:red/tenant/app/db-password'), 'the decrypting read is audited');
  // Plain read of a secret: not a decrypt, not audited as one.
  t.equal((await get(r, 'app/db-password')).value, ct.value, 'a user without kv:decrypt reads the ciphertext');
  const denied = await errOf(get(r, 'app/db-password', { decrypt: true }));
  t.equal(denied.code, 'TRELLIS_E_PERMISSION_DENIED', 'built-in user lacks kv:decrypt');
  t.match(denied.message, /kv:decrypt/);
  await h.hub.components.audit.flush();
  const recs2 = await h.hub.components.audit.query({ methodContains: 'AdminKv/Get', actor: 'r', limit: 100 });
  t.ok(recs2.some((x) => x.result === 'denied'), 'the refused decrypt is audited');
  const keys = (await list(r, 'app/')).map((e) => [e.key, e.secret, e.value]);
  t.same(keys, [['app/db-password', true, ''], ['app/url', false, 'https://example.test']], 'list: secrets without value');
  await del(r, 'app/url');
  t.equal(await codeOf(get(a, 'app/url')), 'TRELLIS_E_NOT_FOUND');
  t.equal(await codeOf(del(a, 'app/url')), 'TRELLIS_E_NOT_FOUND');
  // Overwrite secret → plain and back.
  await set(a, { key: 'app/db-password', value: 'plain-now' });
  t.equal((await get(r, 'app/db-password')).value, 'plain-now');
});

t.test('tenants, user scope and private keys', async (t) => {
  const { a, r, r2, b } = await world(t);
  await set(r, { key: 'shared', value: 'red-value' });
  t.equal(await codeOf(get(b, 'shared')), 'TRELLIS_E_NOT_FOUND', 'another tenant does not see the key');
  t.same(await list(b), [], 'nor lists it');
  t.equal(await codeOf(del(b, 'shared')), 'TRELLIS_E_NOT_FOUND');
  await set(b, { key: 'shared', value: 'blue-value' });
  t.equal((await get(r, 'shared')).value, 'red-value', 'same key name per tenant is separate');
  t.equal((await get(b, 'shared')).value, 'blue-value');

  await set(r, { key: 'mine', value: 'r-only', scope: 'user' });
  t.equal((await get(r, 'mine', { scope: 'user' })).value, 'r-only');
  t.equal(await codeOf(get(r2, 'mine', { scope: 'user' })), 'TRELLIS_E_NOT_FOUND', 'user scope: another user of the tenant cannot see it');
  t.equal(await codeOf(get(r, 'mine')), 'TRELLIS_E_NOT_FOUND', 'not in tenant scope');
  t.notOk((await list(r2)).some((e) => e.key === 'mine'));
  t.ok((await list(r)).some((e) => e.key === 'mine' && e.scope === 'user'));

  await set(r, { key: 'priv', value: 'p', private: true });
  t.equal((await get(r, 'priv')).value, 'p', 'the creator sees a private key');
  t.equal((await get(a, 'priv')).value, 'p', 'an admin sees it');
  t.equal(await codeOf(get(r2, 'priv')), 'TRELLIS_E_NOT_FOUND', 'another member does not');
  t.notOk((await list(r2)).some((e) => e.key === 'priv'));
  t.equal(await codeOf(del(r2, 'priv')), 'TRELLIS_E_NOT_FOUND', 'nor deletes it');
  // Another member's set of the same name writes the shared key: no refusal that would reveal the private one, no overwrite.
  t.equal(await codeOf(set(r2, { key: 'priv', value: 'overwrite' })), 'OK', 'another member\'s set is not refused (it would reveal the key)');
  t.equal((await get(r, 'priv')).value, 'p', 'nor overwrites it');
  t.equal((await get(r2, 'priv')).value, 'overwrite', 'it wrote the shared key of that name');
  t.equal(await codeOf(del(r2, 'priv')), 'OK', 'and deletes only that');
  t.equal((await get(r, 'priv')).value, 'p');
  t.equal(await codeOf(set(r, { key: 'x', value: 'y', scope: 'user', private: true })), 'TRELLIS_E_INVALID_ARGUMENT');
  t.equal(await codeOf(set(r, { key: 'x', value: 'y', scope: 'global' })), 'TRELLIS_E_INVALID_ARGUMENT');
});

t.test('limits, TTL, moved and tampered ciphertexts', async (t) => {
  const { h, a, b } = await world(t);
  const long = await errOf(set(a, { key: 'k'.repeat(257), value: 'v' }));
  t.equal(long.code, 'TRELLIS_E_INVALID_ARGUMENT');
  t.match(long.message, /257 characters: the limit is 256/);
  t.equal(await codeOf(set(a, { key: 'k'.repeat(256), value: 'v' })), 'OK', '256 characters is fine');
  t.match((await errOf(set(a, { key: 'bad key!', value: 'v' }))).message, /only A-Z a-z 0-9/);
  t.match((await errOf(set(a, { key: '', value: 'v' }))).message, /name a key/);
  const big = await errOf(set(a, { key: 'big', value: 'x'.repeat(64 * 1024 + 1), secret: true }));
  t.equal(big.code, 'TRELLIS_E_INVALID_ARGUMENT');
  t.match(big.message, /65537 bytes: the limit is 65536 bytes/);
  t.equal(await codeOf(set(a, { key: 'big', value: 'x'.repeat(64 * 1024) })), 'OK', '64 KiB exactly is fine');

  const short = await set(a, { key: 'short', value: 'gone-soon', ttlMs: 800, secret: true });
  await set(a, { key: 'long', value: 'stays', ttlMs: 600_000 });
  const shortExpires = Number(short.expiresAtMs);
  t.ok(shortExpires > Date.now() - 800 && shortExpires <= Date.now() + 800, 'set answers with the expiry (now + 800 ms)');
  if (Date.now() < shortExpires) t.equal((await get(a, 'short', { decrypt: true })).value, 'gone-soon', 'readable before its expiry');
  await waitFor(() => Date.now() > shortExpires, 5_000, 'the expiry of short');
  t.equal(await codeOf(get(a, 'short')), 'TRELLIS_E_NOT_FOUND', 'expired: not returned');
  t.notOk((await list(a)).some((e) => e.key === 'short'), 'nor listed');
  t.ok((await list(a)).some((e) => e.key === 'long' && e.expiresAtMs > Date.now()));
  const short2 = await set(a, { key: 'short2', value: 'x', ttlMs: 50 });
  t.ok(await h.hub.components.store.get('kv', kvId('red', 'tenant', '', 'short2')), 'short2 is in the store until swept');
  await waitFor(() => Date.now() > Number(short2.expiresAtMs), 5_000, 'the expiry of short2');
  await h.hub.components.kv.sweep();
  t.equal(await h.hub.components.store.get('kv', kvId('red', 'tenant', '', 'short2')), undefined, 'swept from the store');

  const store = h.hub.components.store;
  await set(a, { key: 'src', value: 'moved-secret', secret: true });
  const src = (await store.get<KvDoc>('kv', kvId('red', 'tenant', '', 'src')))!;
  // Onto another key name in the same tenant.
  await set(a, { key: 'dst', value: 'placeholder', secret: true });
  const dstId = kvId('red', 'tenant', '', 'dst');
  await store.update<KvDoc>('kv', dstId, (d) => ({ ...d!, value: src.value }));
  const moved = await errOf(get(a, 'dst', { decrypt: true }));
  t.equal(moved.code, 'TRELLIS_E_INVALID_ARGUMENT', 'a ciphertext moved to another key does not open');
  t.match(moved.message, /tampered with or moved/);
  // Onto the same key name in another tenant.
  const b2 = await clientsFor(t, h.adminAddr, h.caPem, 'admin', 'blue', ADMIN_PASSWORD);
  await set(b2, { key: 'src', value: 'placeholder', secret: true });
  await store.update<KvDoc>('kv', kvId('blue', 'tenant', '', 'src'), (d) => ({ ...d!, value: src.value }));
  t.equal(await codeOf(get(b2, 'src', { decrypt: true })), 'TRELLIS_E_INVALID_ARGUMENT', 'nor in another tenant');
  void b;
  // Tampered: flip one byte of the ciphertext body; an unknown version; garbage.
  const [v, iv, body] = src.value.split(':');
  const raw = Buffer.from(body!, 'base64');
  raw[0] = raw[0]! ^ 1;
  for (const bad of [`${v}:${iv}:${raw.toString('base64')}`, `v99:${iv}:${body}`, 'not-a-ciphertext', `${v}:${iv}:AAAA`]) {
    await store.update<KvDoc>('kv', src.id, (d) => ({ ...d!, value: bad }));
    const e = await errOf(get(a, 'src', { decrypt: true }));
    t.equal(e.code, 'TRELLIS_E_INVALID_ARGUMENT', `tampered (${bad.slice(0, 12)}…) fails cleanly`);
  }
  t.equal((await get(a, 'long')).value, 'stays', 'the hub keeps serving');
  await h.hub.components.audit.flush();
  const recs = await h.hub.components.audit.query({ methodContains: 'AdminKv/Get', limit: 100 });
  t.ok(recs.some((x) => x.result === 'invalid' && /decrypt failed/.test(x.detail)), 'a failed decrypt is audited too');
});

t.test('a planted secret is in no hub file and no log line', async (t) => {
  const { h, a } = await world(t);
  const planted = 'PLANTED-s3cr3t-7f1c9e2b';
  await set(a, { key: 'planted', value: planted, secret: true });
  t.equal((await get(a, 'planted', { decrypt: true })).value, planted);
  await rotate(a);
  t.equal((await get(a, 'planted', { decrypt: true })).value, planted);
  await h.hub.components.store.flush();
  await h.hub.components.audit.flush();
  const files = walk(h.dataDir);
  t.ok(files.some((f) => f.includes('audit')), 'the audit log is among the files walked');
  for (const f of files) t.notOk(readFileSync(f).includes(planted), `not in ${f.slice(h.dataDir.length)}`);
  t.notOk(h.logLines.some((l) => l.includes(planted)), 'not in any log line');
  const kd = keysDir(h.dataDir);
  t.equal(statSync(kd).mode & 0o777, 0o700);
  for (const f of readdirSync(kd)) t.equal(statSync(join(kd, f)).mode & 0o777, 0o600, `${f} is 0600`);
});

t.test('rotation under concurrent reads and writes loses nothing, fails no read, and drops the old key', async (t) => {
  const { h, a } = await world(t);
  const kv = h.hub.components.kv;
  const who = { username: 'admin', isAdmin: true };
  const N = 2000;
  for (let i = 0; i < N; i += 200) {
    await Promise.all(Array.from({ length: Math.min(200, N - i) }, (_, j) => kv.set('red', who, { key: `s/${i + j}`, value: `value-${i + j}`, secret: true })));
  }
  const expected = new Map<string, string>();
  for (let i = 0; i < N; i++) expected.set(`s/${i}`, `value-${i}`);
  let stop = false;
  let reads = 0, writes = 0;
  const failures: string[] = [];
  const loop = async (n: number) => {
    let i = n;
    while (!stop) {
      i++;
      // Loops 0 and 1 only read; loops 2 and 3 also write, each to its own keys (so the expected value is known).
      const write = n >= 2 && i % 3 === 0;
      const k = write ? `s/${((i * 7919) % (N / 4)) * 4 + n}` : `s/${(i * 7919) % N}`;
      try {
        if (write) {
          const v = `value-${k}-w${n}-${i}`;
          expected.set(k, v);
          await kv.set('red', who, { key: k, value: v, secret: true });
          writes++;
        } else {
          const got = (await kv.get('red', who, k, { decrypt: true })).value;
          if (!got.startsWith('value-')) failures.push(`${k}: ${got}`);
          reads++;
          await new Promise((r) => setImmediate(r)); // in-process reads never wait on I/O: let the event loop turn
        }
      } catch (e) { failures.push(`${k}: ${(e as Error).message}`); }
    }
  };
  const loops = [0, 1, 2, 3].map((n) => loop(n));
  const progress = await rotate(a);
  stop = true;
  await Promise.all(loops);
  t.same(failures, [], 'no read or write failed');
  t.ok(reads > 0 && writes > 0, `${reads} reads and ${writes} writes ran during the rotation`);
  t.ok(progress.length >= 2, `${progress.length} progress messages`);
  const last = progress[progress.length - 1]!;
  t.equal(last.finished, true);
  t.equal(last.keyVersion, 2);
  t.ok(last.total >= 1 && last.done === last.total, `re-encrypted ${last.done}/${last.total}`);
  t.same(readdirSync(keysDir(h.dataDir)).sort(), ['master-2.key'], 'the old key file is gone');
  const wrong: string[] = [];
  for (const [k, v] of expected) {
    const got = await kv.get('red', who, k, { decrypt: true });
    if (got.value !== v) wrong.push(`${k}: wrong value`);
    else if (!got.doc.value.startsWith('v2:')) wrong.push(`${k}: still under an old key`);
  }
  t.same(wrong.slice(0, 5), [], `all ${expected.size} values read back under key v2`);
  // Rotate again (nothing concurrent): v3 only.
  await rotate(a);
  t.same(readdirSync(keysDir(h.dataDir)).sort(), ['master-3.key']);
  t.equal((await get(a, 's/5', { decrypt: true })).value, expected.get('s/5'));
  const notAdmin = await clientsFor(t, h.adminAddr, h.caPem, 'r', 'red');
  t.equal(await codeOf(rotate(notAdmin).catch((e) => { throw Object.assign(e, { code: e.details?.includes('not an administrator') ? 'DENIED' : e.code }); })), 'DENIED', 'rotate-key is admin-only');
});

t.test('a hub killed with SIGKILL during rotation keeps every value readable and finishes the rotation', async (t) => {
  await using tmp = await tempDir('trellis-kv-kill-');
  const dataDir = join(tmp.path, 'hub');
  await initHub({ dataDir, names: ['localhost', '127.0.0.1'], adminPassword: ADMIN_PASSWORD, config: { bind: '127.0.0.1' } });
  const N = 5000;
  {
    const { log } = captureLogger('warn');
    const hub = await Hub.start({ dataDir, log, flags: { agentPort: 0, adminPort: 0, webPort: 0 } });
    const who = { username: 'admin', isAdmin: true };
    for (let i = 0; i < N; i += 500) {
      await Promise.all(Array.from({ length: 500 }, (_, j) => hub.components.kv.set('default', who, { key: `k/${i + j}`, value: `secret-${i + j}`, secret: true })));
    }
    await hub.close(1000);
  }
  // The test hook (hub/kv/test-hooks.ts) stops the rotation once PAUSE values are re-encrypted
  // and durable: the kill lands mid-rotation every time, with both key versions in use.
  const PAUSE = 1000;
  const saved = { hooks: process.env.TRELLIS_TEST_HOOKS, pause: process.env.TRELLIS_TEST_PAUSE_ROTATION_AFTER };
  process.env.TRELLIS_TEST_HOOKS = '1';
  process.env.TRELLIS_TEST_PAUSE_ROTATION_AFTER = String(PAUSE);
  let child: Awaited<ReturnType<typeof startChildHub>>;
  try {
    child = await startChildHub(ROOT, dataDir, []);
  } finally {
    // The in-process hub started below must not see the hook.
    if (saved.hooks === undefined) delete process.env.TRELLIS_TEST_HOOKS; else process.env.TRELLIS_TEST_HOOKS = saved.hooks;
    if (saved.pause === undefined) delete process.env.TRELLIS_TEST_PAUSE_ROTATION_AFTER; else process.env.TRELLIS_TEST_PAUSE_ROTATION_AFTER = saved.pause;
  }
  t.teardown(() => child.stop(1000));
  let stderr = '';
  child.proc.stderr!.on('data', (d: Buffer) => { stderr += d.toString('utf8'); });
  const caPem = readFileSync(join(dataDir, 'ca.pem'), 'utf8');
  const c = await clientsFor(t, `127.0.0.1:${child.adminPort}`, caPem, 'admin', 'default', ADMIN_PASSWORD);
  const progress: T.RotateProgress__Output[] = [];
  const s = c.kv.RotateKey({}, c.metadata);
  s.on('data', (p: T.RotateProgress__Output) => progress.push(p));
  s.on('error', () => undefined); // the stream dies with the hub
  await waitFor(() => /key rotation paused by a test hook/.test(stderr) && progress.some((p) => p.done === PAUSE), 60_000, 'the rotation to pause mid-way');
  const keysAtKill = readdirSync(keysDir(dataDir)).sort();
  const stateAtKill = readFileSync(join(dataDir, 'state.json'), 'utf8');
  child.proc.kill('SIGKILL');
  await child.exited;
  t.equal(child.proc.signalCode, 'SIGKILL', 'the hub died of SIGKILL');
  t.match(progress.at(-1), { done: PAUSE, total: N, finished: false }, 'killed after the rotation reported PAUSE of N values done');
  const v1 = (stateAtKill.match(/"v1:/g) ?? []).length, v2 = (stateAtKill.match(/"v2:/g) ?? []).length;
  t.equal(v2, PAUSE, `at the kill ${PAUSE} values were already under the new key v2`);
  t.equal(v1, N - PAUSE, `and ${N - PAUSE} still under the old key v1: the kill landed mid-rotation`);
  t.same(keysAtKill, ['master-1.key', 'master-2.key'], 'both key versions on disk at the kill');
  t.same(readdirSync(keysDir(dataDir)).sort(), ['master-1.key', 'master-2.key'], 'and after it');
  const stateAfterKill = readFileSync(join(dataDir, 'state.json'), 'utf8');
  t.equal((stateAfterKill.match(/"v2:/g) ?? []).length, PAUSE, 'nothing more was re-encrypted after the pause');

  const { log } = captureLogger('warn');
  const hub = await Hub.start({ dataDir, log, flags: { agentPort: 0, adminPort: 0, webPort: 0 } });
  t.teardown(() => hub.close(1000));
  const who = { username: 'admin', isAdmin: true };
  let bad = 0;
  for (let i = 0; i < N; i++) {
    try {
      if ((await hub.components.kv.get('default', who, `k/${i}`, { decrypt: true })).value !== `secret-${i}`) bad++;
    } catch { bad++; }
  }
  t.equal(bad, 0, `all ${N} values read back after the restart`);
  await waitFor(() => hub.components.kv.keyring.versions().length === 1 && !hub.components.kv.rotating, 30_000, 'resumed rotation');
  t.same(readdirSync(keysDir(dataDir)).sort(), ['master-2.key'], 'the rotation completed at start: only the newest key remains');
  const docs = await hub.components.store.list<KvDoc>('kv');
  t.equal(docs.filter((d) => !d.value.startsWith('v2:')).length, 0, 'every value is under v2');
});

t.test('the rotation pause hook is read only with TRELLIS_TEST_HOOKS=1 and a positive count', async (t) => {
  t.equal(rotationPauseFromEnv({ TRELLIS_TEST_HOOKS: '1', TRELLIS_TEST_PAUSE_ROTATION_AFTER: '500' }), 500);
  t.equal(rotationPauseFromEnv({ TRELLIS_TEST_PAUSE_ROTATION_AFTER: '500' }), undefined, 'without the test flag: no pause');
  t.equal(rotationPauseFromEnv({ TRELLIS_TEST_HOOKS: 'true', TRELLIS_TEST_PAUSE_ROTATION_AFTER: '500' }), undefined, 'the flag is exactly 1');
  for (const bad of ['0', '-1', 'x', '1e3', ' 5', '']) t.equal(rotationPauseFromEnv({ TRELLIS_TEST_HOOKS: '1', TRELLIS_TEST_PAUSE_ROTATION_AFTER: bad }), undefined, `"${bad}": no pause`);
});

t.test('master key: supplied at init (raw, hex, base64), refused when malformed, created at start for an older data dir', async (t) => {
  await using tmp = await tempDir('trellis-kv-init-');
  const { writeFileSync, rmSync, existsSync } = await import('node:fs');
  const key = Buffer.alloc(32, 7);
  const init = (name: string, file?: string) => initHub({ dataDir: join(tmp.path, name), names: ['localhost'], adminPassword: ADMIN_PASSWORD, masterKeyFile: file });
  for (const [name, content] of [['raw', key], ['hex', key.toString('hex') + '\n'], ['b64', key.toString('base64')]] as const) {
    const f = join(tmp.path, `${name}.key`);
    writeFileSync(f, content);
    await init(name, f);
    t.same(readFileSync(join(keysDir(join(tmp.path, name)), 'master-1.key')), key, `${name} key copied as version 1`);
  }
  writeFileSync(join(tmp.path, 'short.key'), Buffer.alloc(16));
  const e = await errOf(init('short', join(tmp.path, 'short.key')));
  t.equal(e.code, 'TRELLIS_E_INVALID_ARGUMENT');
  t.match(e.message, /32 bytes/);
  t.notOk(existsSync(join(tmp.path, 'short', 'hub.json')), 'nothing was written');
  t.equal((await errOf(init('missing', join(tmp.path, 'nope.key')))).code, 'TRELLIS_E_INVALID_ARGUMENT');
  await init('random');
  const rnd = readFileSync(join(keysDir(join(tmp.path, 'random')), 'master-1.key'));
  t.equal(rnd.length, 32);
  t.notSame(rnd, key);
  // An older data dir: no keys/ at all.
  const old = join(tmp.path, 'raw');
  rmSync(keysDir(old), { recursive: true });
  const { log } = captureLogger('warn');
  const hub = await Hub.start({ dataDir: old, log, flags: { agentPort: 0, adminPort: 0, webPort: 0, bind: '127.0.0.1' } });
  t.teardown(() => hub.close(1000));
  t.same(hub.components.kv.keyring.versions(), [1]);
  t.equal(statSync(join(keysDir(old), 'master-1.key')).mode & 0o777, 0o600);
  const d = await hub.components.kv.set('default', { username: 'admin', isAdmin: true }, { key: 'x', value: 'y', secret: true });
  t.equal((await hub.components.kv.open(d)), 'y');
});
