import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { spawn } from 'node:child_process';
import { appendFileSync, readdirSync, readFileSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startCli } from './helpers/cli.js';
import { startHub, tempDir, waitFor, callError, type TestHub } from './helpers/hub.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import { writeProfile } from '../cli/profile.js';
import { AuditLog, redactCredentials, type AuditEntry, type AuditRecord } from '../hub/audit/index.js';
import { hubPaths } from '../hub/paths.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const S = '/trellis.v1';

function bearerOf(c: AdminClients): string {
  return String(c.metadata.get('authorization')[0]).replace(/^Bearer /, '');
}

function auditDir(h: TestHub): string { return hubPaths(h.dataDir).audit; }

/** Every byte of every audit segment. */
function auditBytes(dir: string): string {
  return readdirSync(dir).filter((f) => f.endsWith('.jsonl')).sort().map((f) => readFileSync(join(dir, f), 'utf8')).join('');
}

async function loginAs(h: TestHub, username: string, password: string, tenant?: string): Promise<AdminClients> {
  const anon = adminClients(h.adminAddr, h.caPem);
  try {
    const r = await call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username, password });
    return adminClients(h.adminAddr, h.caPem, r.token, tenant);
  } finally { anon.close(); }
}

/** Collects a ListAudit stream; `done` settles with the status code when it ends. */
function listAudit(c: AdminClients, req: T.ListAuditRequest) {
  const got: T.AuditRecord__Output[] = [];
  const stream = c.audit.ListAudit(req, c.metadata);
  stream.on('data', (r: T.AuditRecord__Output) => got.push(r));
  const done = new Promise<number>((resolve) => stream.on('status', (s: grpc.StatusObject) => resolve(s.code)));
  stream.on('error', () => undefined);
  return { got, stream, done };
}

const entry = (i: number, over: Partial<AuditEntry> = {}): AuditEntry => ({
  timeMs: Date.now(), actor: 'alice', tenant: 'default', method: `${S}.AdminRoles/CreateRole`, target: `role:r${i}`, result: 'ok',
  sourceAddress: '127.0.0.1:1', detail: '', ...over,
});

t.test('mutations and refusals are audited with actor, tenant, method, target, result, source and time; reads are not; no secret reaches the files', async (t) => {
  await using h = await startHub();
  const t0 = Date.now();
  const planted = 'planted-Password-4711-xyz';
  const adminToken = bearerOf(h.admin);
  const admin = adminClients(h.adminAddr, h.caPem, adminToken, 'default');
  t.teardown(() => admin.close());

  const tok = await call<T.CreateJoinTokenRequest, T.CreateJoinTokenResponse__Output>(admin, admin.tokens, admin.tokens.CreateJoinToken, { tenant: 'default', uses: 1, ttlMs: 600_000 });
  const { agentId } = await h.enroll();
  await call(admin, admin.agents, admin.agents.RevokeAgent, { id: agentId, reason: 'audit test' });
  await call(admin, admin.agents, admin.agents.ListAgents, {});

  const anon = adminClients(h.adminAddr, h.caPem);
  t.teardown(() => anon.close());
  t.equal((await callError(call(anon, anon.auth, anon.auth.Login, { username: 'admin', password: planted })))?.code, 'TRELLIS_E_UNAUTHENTICATED');

  await h.hub.components.auth.createUser({ username: 'nobody', password: 'nobody-password-1', roles: [] });
  const nobody = await loginAs(h, 'nobody', 'nobody-password-1', 'default');
  t.teardown(() => nobody.close());
  t.equal((await callError(call(nobody, nobody.tokens, nobody.tokens.CreateJoinToken, { tenant: 'default', uses: 1 })))?.code, 'TRELLIS_E_PERMISSION_DENIED');

  const garbage = adminClients(h.adminAddr, h.caPem, 'garbage-token-not-real');
  t.teardown(() => garbage.close());
  t.equal((await callError(call(garbage, garbage.agents, garbage.agents.ListAgents, {})))?.code, 'TRELLIS_E_UNAUTHENTICATED');

  const all = await h.hub.components.audit.query({ limit: 10_000 });
  const find = (method: string, result: string) => all.filter((r) => r.method === `${S}.${method}` && r.result === result);
  const checkCommon = (r: AuditRecord | undefined, what: string) => {
    t.ok(r, `${what} is recorded`);
    if (!r) return;
    t.match(r.id, /^[0-9a-hjkmnp-tv-z]{26}$/, `${what}: lower-case ULID id`);
    t.ok(r.timeMs >= t0 - 1000 && r.timeMs <= Date.now(), `${what}: time`);
    t.match(r.sourceAddress, /127\.0\.0\.1:\d+/, `${what}: source address`);
  };

  const created = find('AdminJoinTokens/CreateJoinToken', 'ok').find((r) => r.tenant === 'default');
  checkCommon(created, 'CreateJoinToken');
  t.match(created, { actor: 'admin', tenant: 'default', target: 'tenant:default', detail: '' });

  const revoked = find('AdminAgents/RevokeAgent', 'ok')[0];
  checkCommon(revoked, 'RevokeAgent');
  t.match(revoked, { actor: 'admin', tenant: 'default', target: `agent:${agentId}` });

  const failed = find('AdminAuth/Login', 'unauthenticated')[0];
  checkCommon(failed, 'failed login');
  t.match(failed, { actor: '-', detail: /wrong user name or password/ });

  const denied = find('AdminJoinTokens/CreateJoinToken', 'denied')[0];
  checkCommon(denied, 'PERMISSION_DENIED call');
  t.match(denied, { actor: 'nobody', detail: /nobody lacks the permission tokens:create/ });

  const unauth = find('AdminAgents/ListAgents', 'unauthenticated')[0];
  checkCommon(unauth, 'UNAUTHENTICATED call');
  t.equal(unauth?.actor, '-');

  t.equal(find('AdminAgents/ListAgents', 'ok').length, 0, 'a successful read (ListAgents) is not recorded');
  const ids = all.map((r) => r.id);
  t.same(ids, [...ids].sort(), 'ids are in time order');

  const files = auditBytes(auditDir(h));
  t.ok(files.includes('RevokeAgent'), 'the records are on disk');
  t.notOk(files.includes(planted), 'the planted password is in no audit file');
  t.notOk(files.includes(adminToken), 'the admin login token is in no audit file');
  t.notOk(files.includes(tok.token.split('.')[2]!), 'the join token secret is in no audit file');
  t.notOk(/tls1_[A-Za-z0-9]{8}/.test(files), 'no login-token-shaped text at all');

  t.equal(statSync(auditDir(h)).mode & 0o777, 0o700, 'audit dir 0700');
  for (const f of readdirSync(auditDir(h))) {
    t.match(f, /^\d{12}\.jsonl$/, `${f}: zero-padded sequence name`);
    t.equal(statSync(join(auditDir(h), f)).mode & 0o777, 0o600, `${f} is 0600`);
  }
});

t.test('token-shaped text in target and detail is redacted before it is written', async (t) => {
  t.equal(redactCredentials('x tls1_AbC-123_def y'), 'x tls1_[REDACTED] y');
  t.equal(redactCredentials(`k=tak1_${'a'.repeat(16)}_${'S'.repeat(43)}`), `k=tak1_${'a'.repeat(16)}_[REDACTED]`);
  t.equal(redactCredentials(`tj1.${'b'.repeat(16)}.${'s'.repeat(43)}.${'c'.repeat(64)}!`), `tj1.${'b'.repeat(16)}.[REDACTED]!`);
  await using dir = await tempDir();
  const log = await AuditLog.open({ dir: dir.path });
  log.record(entry(1, { target: 'token:tls1_secretsecret', detail: `bad key tak1_${'0'.repeat(16)}_${'Z'.repeat(43)}` }));
  await log.close();
  const text = auditBytes(dir.path);
  t.notOk(text.includes('secretsecret'));
  t.notOk(text.includes('Z'.repeat(43)));
  t.match(text, /tak1_0{16}_\[REDACTED\]/, 'the key id stays for the investigator');
});

t.test('audit files are only ever appended: they grow and earlier bytes never change', async (t) => {
  await using h = await startHub();
  await h.hub.components.audit.flush();
  const seg = () => readdirSync(auditDir(h)).sort().at(-1)!;
  const before = readFileSync(join(auditDir(h), seg()));
  t.ok(before.length > 0, 'the helper\'s login is already recorded');
  for (let i = 0; i < 3; i++) {
    await h.token();
    await h.hub.components.audit.flush();
    const now = readFileSync(join(auditDir(h), seg()));
    t.ok(now.length > before.length, `grew after mutation ${i + 1}`);
    t.ok(now.subarray(0, before.length).equals(before), 'the earlier bytes are unchanged');
  }
  // And across a restart: the same segment is appended to.
  const beforeRestart = readFileSync(join(auditDir(h), seg()));
  const name = seg();
  await h.restart();
  await h.token();
  await h.hub.components.audit.flush();
  t.equal(seg(), name, 'a clean segment is reused after restart');
  t.ok(readFileSync(join(auditDir(h), name)).subarray(0, beforeRestart.length).equals(beforeRestart), 'earlier bytes unchanged after restart');
});

t.test('ListAudit sends the history, then with follow streams new records until cancelled; the follower is removed', async (t) => {
  await using h = await startHub();
  await h.token({ description: 'before' });
  const s = listAudit(h.admin, { follow: true, methodContains: 'joinToken', limit: 10 });
  await waitFor(() => s.got.length >= 1, 5000, 'the history');
  t.equal(s.got[0]!.method, `${S}.AdminJoinTokens/CreateJoinToken`, 'the history holds the earlier record (method filter is case-insensitive)');
  t.equal(h.hub.components.audit.followerCount, 1);
  await h.token({ description: 'after' });
  await call(h.admin, h.admin.agents, h.admin.agents.ListAgents, {}); // not recorded
  await waitFor(() => s.got.length >= 2, 5000, 'the live record');
  t.equal(s.got[1]!.method, `${S}.AdminJoinTokens/CreateJoinToken`);
  t.ok(s.got[1]!.id > s.got[0]!.id, 'the live record is newer');
  t.ok(s.got[1]!.timeMs > 0 && s.got[1]!.actor === 'admin');
  s.stream.cancel();
  t.equal(await s.done, grpc.status.CANCELLED);
  await waitFor(() => h.hub.components.audit.followerCount === 0, 5000, 'the follower to be removed');
  t.equal(s.got.length, 2, 'exactly the two matching records');

  // Without follow the call ends after the history; limit keeps the most recent.
  for (let i = 0; i < 3; i++) await h.token();
  const once = listAudit(h.admin, { limit: 2, methodContains: 'CreateJoinToken' });
  t.equal(await once.done, grpc.status.OK);
  t.equal(once.got.length, 2);
  const all = await h.hub.components.audit.query({ methodContains: 'CreateJoinToken' });
  t.same(once.got.map((r) => r.id), all.slice(-2).map((r) => r.id), 'the two most recent, oldest first');
  const byActor = listAudit(h.admin, { actor: 'nobody-here' });
  t.equal(await byActor.done, grpc.status.OK);
  t.equal(byActor.got.length, 0);
});

t.test('a follower does not hold the hub open at close', async (t) => {
  await using h = await startHub();
  const s = listAudit(h.admin, { follow: true });
  await waitFor(() => h.hub.components.audit.followerCount === 1, 5000, 'the follower');
  const t0 = Date.now();
  await h.stop();
  t.ok(Date.now() - t0 < 900, `closed in ${Date.now() - t0} ms, before the force timeout`);
  t.equal(await s.done, grpc.status.OK, 'the stream ended normally');
});

t.test('ListAudit needs an administrator: a user with no roles or the user role gets PERMISSION_DENIED', async (t) => {
  await using h = await startHub();
  await h.hub.components.auth.createUser({ username: 'nobody', password: 'nobody-password-1', roles: [] });
  await h.hub.components.auth.createUser({ username: 'worker', password: 'worker-password-1', roles: ['user'] });
  for (const [user, pw] of [['nobody', 'nobody-password-1'], ['worker', 'worker-password-1']] as const) {
    const c = await loginAs(h, user, pw);
    const s = listAudit(c, { follow: true });
    t.equal(await s.done, grpc.status.PERMISSION_DENIED, `${user}: PERMISSION_DENIED`);
    t.equal(s.got.length, 0, `${user}: nothing sent`);
    c.close();
  }
  const recorded = await h.hub.components.audit.query({ methodContains: 'ListAudit' });
  t.same(recorded.map((r) => [r.actor, r.result]), [['nobody', 'denied'], ['worker', 'denied']], 'the refusals are audited');
  t.equal(h.hub.components.audit.followerCount, 0);
});

const trellis = (args: string[], env: Record<string, string>) => startCli(args, env);

t.test('`trellis audit` prints one line per record, filters, JSON lines, and follows until interrupted', async (t) => {
  await using h = await startHub();
  await using home = await tempDir();
  const env = { TRELLIS_HOME: home.path };
  await writeProfile({ hub: h.adminAddr, caPem: h.caPem, username: 'admin', token: bearerOf(h.admin), expiresAtMs: Date.now() + 3_600_000, tenant: 'default' }, env);
  const tok = await call<T.CreateJoinTokenRequest, T.CreateJoinTokenResponse__Output>(h.admin, h.admin.tokens, h.admin.tokens.CreateJoinToken, { tenant: 'default', uses: 1 });

  const r = trellis(['audit', '--since', '1h'], env);
  t.equal(await r.done, 0, r.err());
  const lines = r.out().trim().split('\n');
  const line = lines.find((l) => l.includes(' CreateJoinToken '));
  t.ok(line, 'the CreateJoinToken record is printed');
  const cols = line!.split('  ');
  t.match(cols[0], /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, 'time');
  t.same(cols.slice(1, 6), ['admin', '*', 'CreateJoinToken', 'tenant:default', 'ok'], 'actor, tenant, method, target, result');
  t.match(cols[6], /127\.0\.0\.1:\d+/, 'source');
  t.equal(cols[7], '-', 'empty detail shows as -');
  t.notOk(r.out().includes(tok.token.split('.')[2]!), 'no token secret printed');

  const j = trellis(['audit', '--json', '--method', 'CreateJoinToken', '--actor', 'admin', '--limit', '1'], env);
  t.equal(await j.done, 0, j.err());
  const recs = j.out().trim().split('\n').map((l) => JSON.parse(l) as T.AuditRecord__Output);
  t.equal(recs.length, 1);
  t.match(recs[0], { actor: 'admin', method: `${S}.AdminJoinTokens/CreateJoinToken`, result: 'ok' });

  const bad = trellis(['audit', '--limit', '0'], env);
  t.equal(await bad.done, 2, 'a bad --limit is a usage error');

  const f = trellis(['audit', '--follow', '--method', 'RevokeJoinToken'], env);
  await waitFor(() => h.hub.components.audit.followerCount === 1, 10_000, 'the CLI follower');
  await call(h.admin, h.admin.tokens, h.admin.tokens.RevokeJoinToken, { id: tok.info!.id });
  await waitFor(() => f.out().includes('RevokeJoinToken'), 5000, 'the followed record');
  t.match(f.out(), new RegExp(`RevokeJoinToken  token:${tok.info!.id}  ok`));
  f.child.kill('SIGINT');
  t.equal(await f.done, 0, 'Ctrl-C ends --follow with exit 0');
  await waitFor(() => h.hub.components.audit.followerCount === 0, 5000, 'the follower to be removed');
});

t.test('segments rotate at maxSegmentBytes; retention keeps maxSegments and drops segments past maxAgeMs', async (t) => {
  await using dir = await tempDir();
  // An old segment from long ago: dropped at start.
  writeFileSync(join(dir.path, '000000000001.jsonl'), JSON.stringify({ id: '0'.repeat(26), ...entry(0) }) + '\n', { mode: 0o600 });
  const old = new Date(Date.now() - 100 * 86_400_000);
  utimesSync(join(dir.path, '000000000001.jsonl'), old, old);
  const log = await AuditLog.open({ dir: dir.path, maxSegmentBytes: 1000, maxSegments: 3, maxAgeMs: 30 * 86_400_000, flushIntervalMs: 5 });
  t.same(readdirSync(dir.path), ['000000000002.jsonl'], 'the 100-day-old segment is gone; a new one started');
  for (let i = 1; i <= 60; i++) {
    log.record(entry(i));
    if (i % 5 === 0) await log.flush();
  }
  await log.flush();
  const names = readdirSync(dir.path).sort();
  t.equal(names.length, 3, `at most 3 segments: ${names.join(' ')}`);
  t.ok(Number(names[0]!.slice(0, 12)) > 3, 'the oldest were removed');
  for (const n of names.slice(0, -1)) t.ok(statSync(join(dir.path, n)).size >= 1000 && statSync(join(dir.path, n)).size < 1000 + 5 * 300, `${n} rotated just past the size`);
  const recs = await log.query({ limit: 10_000 });
  t.equal(recs.at(-1)!.target, 'role:r60', 'the newest record is kept');
  t.same(recs.map((r) => r.target), recs.map((r) => r.target).sort((a, b) => Number(a.slice(6)) - Number(b.slice(6))), 'in order');
  t.ok(recs.length < 60, `older records are gone (${recs.length} kept)`);
  const last5 = await log.query({ limit: 5 });
  t.same(last5.map((r) => r.target), ['role:r56', 'role:r57', 'role:r58', 'role:r59', 'role:r60'], 'limit: the most recent, oldest first');
  t.same((await log.query({ sinceMs: Date.now() + 60_000 })).length, 0, 'sinceMs in the future: nothing');
  await log.close();
});

t.test('a torn last line is skipped on read; after reopen the log goes on in a new segment and never rewrites the torn one', async (t) => {
  await using dir = await tempDir();
  let log = await AuditLog.open({ dir: dir.path });
  for (let i = 1; i <= 3; i++) log.record(entry(i));
  await log.close();
  const seg = join(dir.path, readdirSync(dir.path)[0]!);
  appendFileSync(seg, '{"id":"01torn","timeMs":17');
  const torn = readFileSync(seg);
  log = await AuditLog.open({ dir: dir.path });
  t.same((await log.query()).map((r) => r.target), ['role:r1', 'role:r2', 'role:r3'], 'the torn line is skipped');
  log.record(entry(4));
  log.record(entry(5));
  t.same((await log.query()).map((r) => r.target), ['role:r1', 'role:r2', 'role:r3', 'role:r4', 'role:r5'], 'new records are readable');
  t.equal(readdirSync(dir.path).length, 2, 'a new segment started');
  t.ok(readFileSync(seg).equals(torn), 'the torn segment is untouched');
  await log.close();
});

t.test('kill -9 while writing loses at most the unflushed batch and corrupts no earlier line', async (t) => {
  await using dir = await tempDir();
  const mod = join(dirname(fileURLToPath(import.meta.url)), '..', 'hub', 'audit', 'index.js');
  const script = `
    const { AuditLog } = await import(${JSON.stringify(mod)});
    const log = await AuditLog.open({ dir: ${JSON.stringify(dir.path)}, flushIntervalMs: 5, maxSegmentBytes: 64 * 1024, maxSegments: 10_000 });
    let i = 0;
    for (;;) {
      for (let k = 0; k < 50; k++) { i++; log.record({ timeMs: Date.now(), actor: 'a', tenant: 't', method: 'm', target: 'n' + i, result: 'ok', sourceAddress: 's', detail: 'x'.repeat(100) }); }
      await log.flush();
      process.stdout.write('flushed ' + i + '\\n');
      for (let k = 0; k < 25; k++) { i++; log.record({ timeMs: Date.now(), actor: 'a', tenant: 't', method: 'm', target: 'n' + i, result: 'ok', sourceAddress: 's', detail: 'x'.repeat(100) }); }
      await new Promise((r) => setImmediate(r));
    }`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  await waitFor(() => (out.match(/flushed/g)?.length ?? 0) >= 40, 20_000, 'the writer to make progress');
  child.kill('SIGKILL');
  await new Promise((r) => child.on('close', r));
  const flushed = Math.max(...[...out.matchAll(/flushed (\d+)/g)].map((m) => Number(m[1])));
  let bad = 0;
  const targets: number[] = [];
  for (const f of readdirSync(dir.path).sort()) {
    const lines = readFileSync(join(dir.path, f), 'utf8').split('\n');
    lines.forEach((l, i) => {
      if (!l) return;
      try { targets.push(Number((JSON.parse(l) as AuditRecord).target.slice(1))); } catch { bad++; t.equal(i, lines.length - 1, `only a last line may be torn (${f})`); }
    });
  }
  t.ok(bad <= 1, `${bad} torn line(s)`);
  t.same(targets.slice(0, flushed), Array.from({ length: flushed }, (_, i) => i + 1), `every one of the ${flushed} flushed records is there, in order`);
  const log = await AuditLog.open({ dir: dir.path });
  t.ok((await log.query({ limit: 10_000 })).length >= Math.min(flushed, 10_000) - 1, 'the reopened log reads them');
  await log.close();
});
