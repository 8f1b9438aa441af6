/**
 * Snapshots of a hub on PostgreSQL (issue 14 §4): the snapshot carries the execution history
 * (rows of trellis_executions / trellis_output as file-history segments, read in one REPEATABLE
 * READ transaction, in pages) and the audit table; `snapshots restore F --data DIR --store URL`
 * loads documents, history and audit into a NEW database, keys and hub.json into DIR, and a hub
 * runs on it: the agent reconnects with its certificate, `kv get --decrypt` works, the old
 * executions and their output are there, `trellis audit` lists the old records. Refused: a wrong
 * passphrase (the database untouched, DIR not made) and a non-empty database without --force.
 */
import t from 'tap';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ulid } from 'ulid';
import pg from 'pg';
import { ADMIN_PASSWORD, login, startHub, waitFor } from './helpers/hub.js';
import { needs } from './helpers/needs.js';
import { postgresMissing, startPostgres } from './helpers/postgres.js';
import { runCli } from './helpers/cli.js';
import { runCommand } from './helpers/admin.js';
import { Agent } from '../agent/agent.js';
import { fileAgentLogger } from './helpers/hub.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import { hubPaths } from '../hub/paths.js';
import { exportHistory } from '../hub/executions/export-pg.js';
import { migrateDatabase, withDatabase, type PostgresStore } from '../hub/store/postgres/index.js';
import { importHistory } from '../hub/executions/import-pg.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const PASSPHRASE = 'postgres snapshot passphrase 42';
const noPassword = (url: string) => url.replace(/:[^:@/]*@/, '@');

async function rows(url: string, sql: string): Promise<Array<Record<string, unknown>>> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try { return (await c.query(sql)).rows; } finally { await c.end(); }
}

void t.test('snapshot of a PostgreSQL hub → restore into a new database and data dir → the hub runs on it', needs(t, postgresMissing()), async (t) => {
  const server = await startPostgres();
  t.teardown(() => server.close());
  const urlA = await server.createDatabase('snapa');
  const a = await startHub({ init: { storeUrl: urlA } });
  t.teardown(() => a.close());
  const tmp = mkdtempSync(join(a.dir, 'pgsnap-'));
  const adminA = adminClients(a.adminAddr, a.caPem, (await login(a, 'admin', ADMIN_PASSWORD)).token, 'default');
  t.teardown(() => adminA.close());

  // An agent, a secret, executions with output, audit records (the kv set, the key creation).
  const { dataDir: agentDir, agentId } = await a.enroll();
  let agent = await a.agent({ dataDir: agentDir });
  const secret = `s3cret-${ulid()}`;
  await call(adminA, adminA.kv, adminA.kv.Set, { key: 'db_password', value: secret, secret: true, ttlMs: 0, scope: 'tenant', private: false });
  const key = (await call<T.CreateApiKeyRequest, T.CreateApiKeyResponse__Output>(a.admin, a.admin.apikeys, a.admin.apikeys.CreateApiKey, { name: 'backup' })).key;
  for (let i = 0; i < 3; i++) t.equal(await runCommand(a.admin, agentId, ['echo', `before-snapshot-${i}`]), `before-snapshot-${i}\n`);
  const execs = (await call<T.ListExecutionsRequest, T.ListExecutionsResponse__Output>(a.admin, a.admin.executions, a.admin.executions.ListExecutions, { limit: 100 })).executions;
  t.equal(execs.length, 3);

  // The export alone: one segment pair per execution here (perSegment 1), every row and chunk once.
  await a.hub.components.executions.durable();
  const exp = join(tmp, 'export');
  mkdirSync(exp, { mode: 0o700 });
  const r = await exportHistory(a.hub.components.store as unknown as PostgresStore, exp, { perSegment: 1 });
  t.equal(r.executions, 3);
  t.ok(r.outputChunks >= 3, 'output chunks exported');
  t.same(readdirSync(exp).sort(), ['000000000001.jsonl', '000000000001.out.jsonl', '000000000002.jsonl', '000000000002.out.jsonl', '000000000003.jsonl', '000000000003.out.jsonl']);
  for (const f of readdirSync(exp)) t.equal(statSync(join(exp, f)).mode & 0o777, 0o600, `${f} 0600`);
  const outs = readdirSync(exp).filter((f) => f.endsWith('.out.jsonl')).map((f) => readFileSync(join(exp, f), 'utf8'));
  const text = outs.flatMap((o) => o.split('\n').filter(Boolean).map((l) => Buffer.from((JSON.parse(l) as { d: string }).d, 'base64').toString())).join('');
  for (let i = 0; i < 3; i++) t.match(text, `before-snapshot-${i}`, `the output of run ${i}`);

  const info = await call<T.CreateSnapshotRequest, T.SnapshotInfo__Output>(a.admin, a.admin.snapshots, a.admin.snapshots.CreateSnapshot, { passphrase: PASSPHRASE, note: 'pg' }, 120_000);
  t.equal(readdirSync(hubPaths(a.dataDir).snapshots).filter((f) => f.startsWith('.')).length, 0, 'no export files left');
  const snapFile = join(hubPaths(a.dataDir).snapshots, `${info.id}.tsnap`);
  t.notOk(readFileSync(snapFile).includes(Buffer.from(secret)), 'no secret in clear');
  t.equal(await runCommand(a.admin, agentId, ['echo', 'after-snapshot']), 'after-snapshot\n');
  await agent.close();
  await a.stop();

  const passFile = join(tmp, 'pass');
  writeFileSync(passFile, PASSPHRASE + '\n', { mode: 0o600 });
  const wrongFile = join(tmp, 'wrong');
  writeFileSync(wrongFile, 'a different passphrase entirely\n', { mode: 0o600 });
  const urlB = await server.createDatabase('snapb');
  const dirB = join(tmp, 'hub-b');
  const env = { TRELLIS_STORE_PASSWORD: server.password };

  // Wrong passphrase: refused, nothing in the database (not even the schema), no directory.
  const bad = await runCli(['snapshots', 'restore', snapFile, '--data', dirB, '--store', noPassword(urlB), '--passphrase-file', wrongFile], env);
  t.equal(bad.code, 1);
  t.match(bad.err, /TRELLIS_E_SNAPSHOT_INVALID/);
  t.notOk(existsSync(dirB), 'no data directory made');
  t.same(await rows(urlB, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"), [], 'the database untouched: no table');
  // A tampered file: the same.
  const bytes = readFileSync(snapFile);
  bytes[Math.floor(bytes.length / 2)]! ^= 0x40;
  const tampered = join(tmp, 'tampered.tsnap');
  writeFileSync(tampered, bytes);
  const tam = await runCli(['snapshots', 'restore', tampered, '--data', dirB, '--store', noPassword(urlB), '--passphrase-file', passFile], env);
  t.equal(tam.code, 1);
  t.match(tam.err, /TRELLIS_E_SNAPSHOT_INVALID/);
  t.same(await rows(urlB, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"), [], 'tampered: the database untouched');

  const ok = await runCli(['snapshots', 'restore', snapFile, '--data', dirB, '--store', noPassword(urlB), '--passphrase-file', passFile, '--json'], env);
  t.equal(ok.code, 0, ok.err);
  const rj = JSON.parse(ok.out) as { executions: number; outputChunks: number; auditRecords: number; documents: number };
  t.equal(rj.executions, 3, 'the three executions before the snapshot');
  t.ok(rj.outputChunks >= 3);
  t.ok(rj.auditRecords > 0, 'audit records loaded');
  t.equal(Number((await rows(urlB, 'SELECT count(*) AS n FROM trellis_executions'))[0]!.n), 3);
  const hubJson = readFileSync(join(dirB, 'hub.json'), 'utf8');
  t.notMatch(hubJson, server.password, 'no password in hub.json');
  t.match(hubJson, new RegExp(`/${new URL(urlB).pathname.slice(1)}"`), 'hub.json names the new database');
  t.equal(statSync(join(dirB, 'store-password')).mode & 0o777, 0o600, 'the password in store-password, 0600');
  t.notOk(existsSync(join(dirB, 'state.json')), 'no state.json');
  t.notOk(existsSync(hubPaths(dirB).executions), 'no history files: it is in the database');
  t.ok(existsSync(join(dirB, 'keys', 'master-1.key')) && existsSync(join(dirB, 'ca-key.pem')), 'the keys');

  // The database is not empty now: refused without --force, nothing added.
  const dirC = join(tmp, 'hub-c');
  const full = await runCli(['snapshots', 'restore', snapFile, '--data', dirC, '--store', noPassword(urlB), '--passphrase-file', passFile], env);
  t.equal(full.code, 1);
  t.match(full.err, /is not empty.*--force.*TRELLIS_E_ALREADY_EXISTS/);
  t.notMatch(full.err, server.password);
  t.notOk(existsSync(dirC));
  const forced = await runCli(['snapshots', 'restore', snapFile, '--data', dirC, '--store', noPassword(urlB), '--passphrase-file', passFile, '--force'], env);
  t.equal(forced.code, 0, forced.err);
  t.equal(Number((await rows(urlB, 'SELECT count(*) AS n FROM trellis_executions'))[0]!.n), 3, '--force replaces: nothing twice');

  // The hub runs on the restored database.
  const b = await startHub({ dataDir: dirC });
  t.teardown(() => b.close());
  agent = await Agent.start({ dataDir: agentDir, log: fileAgentLogger(agentDir).log, maxBackoffMs: 1000, hub: b.agentAddr });
  t.teardown(() => agent.close());
  await waitFor(() => agent.channel.state === 'ready', 30_000, 'the agent reconnected with its certificate');
  const caFile = join(tmp, 'ca.pem');
  writeFileSync(caFile, b.caPem);
  const cli = { TRELLIS_HUB: b.adminAddr, TRELLIS_CA: caFile, TRELLIS_API_KEY: key, TRELLIS_HOME: tmp, TRELLIS_TENANT: 'default' };
  const kv = await runCli(['kv', 'get', 'db_password', '--decrypt'], cli);
  t.equal(kv.code, 0, kv.err);
  t.equal(kv.out.trim(), secret, '`kv get --decrypt` works (same master key)');
  const list = await runCli(['executions', 'list', '--json'], cli);
  t.equal(list.code, 0, list.err);
  const listed = JSON.parse(list.out) as Array<{ id: string }>;
  t.same(listed.map((e) => e.id).sort(), execs.map((e) => e.id).sort(), 'the executions before the snapshot, not the one after');
  for (const e of execs) {
    const shown = await runCli(['executions', 'show', e.id], cli);
    t.equal(shown.code, 0, shown.err);
    t.match(shown.out, /before-snapshot-\d/, `execution ${e.id} with its output`);
  }
  const audit = await runCli(['audit', '--json', '--limit', '1000'], cli);
  t.equal(audit.code, 0, audit.err);
  t.match(audit.out, /db_password/, '`trellis audit` lists the records from before the snapshot');
  t.equal(await runCommand(b.admin, agentId, ['echo', 'after-restore']), 'after-restore\n', 'the agent runs commands from the restored hub');

  // A hub runs on the database: refused even with --force, nothing changed.
  const dirD = join(tmp, 'hub-d');
  const busy = await runCli(['snapshots', 'restore', snapFile, '--data', dirD, '--store', noPassword(urlB), '--passphrase-file', passFile, '--force'], env);
  t.equal(busy.code, 1);
  t.match(busy.err, /hubs are running on the database.*stop them.*TRELLIS_E_IN_USE/);
  t.notOk(existsSync(dirD));
  t.equal(Number((await rows(urlB, 'SELECT count(*) AS n FROM trellis_executions'))[0]!.n), 4, 'the running hub\'s history untouched (3 restored + 1 new)');
});

void t.test('importHistory streams segments: the last state line of an id wins (keeping an earlier idempotency key), torn lines and output of unknown ids are skipped, output is read from state and output files, a second run copies nothing', needs(t, postgresMissing()), async (t) => {
  const server = await startPostgres();
  t.teardown(() => server.close());
  const url = await server.createDatabase('imp');
  await migrateDatabase({ url });
  const dir = mkdtempSync(join(tmpdir(), 'trellis-imp-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const rec = (id: string, status: string) => ({ id, tenant: 'default', agentId: 'agent-1', action: 'core.command', status, rule: '', requestedMs: 1, parameters: {} });
  const id1 = '01j0imp0000000000000000001', id2 = '01j0imp0000000000000000002';
  writeFileSync(join(dir, '000000000001.jsonl'), [
    JSON.stringify({ k: 's', r: rec(id1, 'running'), dk: 'key-1', to: 5000 }),
    JSON.stringify({ k: 's', r: rec(id2, 'running') }),
    '{"k":"s","r":{"id":"torn',
  ].join('\n') + '\n');
  // Output within an execution's first bytes is kept in the state file (hub/executions/history.ts).
  writeFileSync(join(dir, '000000000002.jsonl'), [
    JSON.stringify({ k: 'o', id: id2, s: 0, o: 0, d: Buffer.from('inline').toString('base64') }),
    JSON.stringify({ k: 's', r: rec(id1, 'succeeded') }),
  ].join('\n') + '\n');
  writeFileSync(join(dir, '000000000001.out.jsonl'), [
    JSON.stringify({ k: 'o', id: id1, s: 0, o: 0, d: Buffer.from('one ').toString('base64') }),
    JSON.stringify({ k: 'o', id: 'unknown-id', s: 0, o: 0, d: Buffer.from('nobody').toString('base64') }),
  ].join('\n') + '\n');
  writeFileSync(join(dir, '000000000002.out.jsonl'), JSON.stringify({ k: 'o', id: id1, s: 1, o: 4, d: Buffer.from('two').toString('base64') }) + '\n');
  const r = await withDatabase({ url }, (c) => importHistory(c, dir));
  t.same(r, { executions: 2, outputChunks: 3 });
  const got = await rows(url, 'SELECT id, status, dedup_key, timeout_ms, record::text AS record FROM trellis_executions ORDER BY id');
  t.same(got.map((x) => [x.id, x.status, x.dedup_key, Number(x.timeout_ms)]), [[id1, 'succeeded', 'key-1', 5000], [id2, 'running', null, 0]]);
  t.equal((JSON.parse(got[0]!.record as string) as { status: string }).status, 'succeeded', 'the record of the last line');
  t.same((await rows(url, 'SELECT id, off, stream FROM trellis_output ORDER BY id, off')).map((x) => [x.id, Number(x.off), x.stream]), [[id1, 0, 0], [id1, 4, 1], [id2, 0, 0]], 'output from both files; an inline line is not an execution');
  t.same(await withDatabase({ url }, (c) => importHistory(c, dir)), { executions: 0, outputChunks: 0 }, 'a second run copies nothing');
});
