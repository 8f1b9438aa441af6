/**
 * The audit log in PostgreSQL (issue 14 §1): hubs on one database share one append-only table.
 * A call audited on hub A is listed on hub B; `ListAudit --follow` on B sees A's records live;
 * retention deletes rows by age and beyond the byte budget (maxSegments × maxSegmentBytes);
 * batches are one INSERT each; a database outage queues the records and they are written when
 * it is back; token-shaped text is redacted before it reaches the table, and no planted secret is
 * in any row.
 */
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { cpSync, readFileSync, readdirSync } from 'node:fs';
import { restoreSnapshot } from '../hub/snapshots/restore.js';
import { hubPaths } from '../hub/paths.js';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { ADMIN_PASSWORD, login, startHub, waitFor, type TestHub } from './helpers/hub.js';
import { needs } from './helpers/needs.js';
import { postgresMissing, startPostgres } from './helpers/postgres.js';
import { PgAuditLog } from '../hub/audit/postgres.js';
import { PostgresStore, migrateDatabase } from '../hub/store/postgres/index.js';
import { LocalBus } from '../hub/cluster/bus.js';
import { hubMigrate } from '../hub/migrate.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import type { AuditEntry } from '../hub/audit/index.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const S = '/trellis.v1';

function listAudit(c: AdminClients, req: T.ListAuditRequest) {
  const got: T.AuditRecord__Output[] = [];
  const stream = c.audit.ListAudit(req, c.metadata);
  stream.on('data', (r: T.AuditRecord__Output) => got.push(r));
  const done = new Promise<number>((resolve) => stream.on('status', (s: grpc.StatusObject) => resolve(s.code)));
  stream.on('error', () => undefined);
  return { got, stream, done };
}

/** Sets a datastore key in the default tenant through hub `h` (an audited mutation). */
async function kvSet(h: TestHub, key: string, value: string, secret = false): Promise<void> {
  const c = adminClients(h.adminAddr, h.caPem, (await login(h, 'admin', ADMIN_PASSWORD)).token, 'default');
  try {
    await call(c, c.kv, c.kv.Set, { key, value, secret, ttlMs: 0, scope: 'tenant', private: false });
  } finally { c.close(); }
}

const entry = (over: Partial<AuditEntry> = {}): AuditEntry => ({
  timeMs: Date.now(), actor: 'alice', tenant: 'default', method: `${S}.AdminRoles/CreateRole`, target: 'role:r', result: 'ok', sourceAddress: '127.0.0.1:1', detail: '', ...over,
});

/** Hub B's data directory: hub A's files and keys (the cluster's CA and master key), none of its history. */
function copyHub(from: string, to: string): void {
  cpSync(from, to, { recursive: true, filter: (src) => !['hub.lock', 'audit', 'executions', 'snapshots'].includes(basename(src)) || src === from });
}

void t.test('audit log in PostgreSQL', needs(t, postgresMissing()), async (t) => {
  const server = await startPostgres();
  t.teardown(() => server.close());
  const sql = async (url: string, text: string, params: unknown[] = []) => {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try { return (await c.query(text, params)).rows; } finally { await c.end(); }
  };

  void t.test('a call audited on hub A is listed on hub B, B follows A\'s records live, no secret in any row', async (t) => {
    const url = await server.createDatabase('audit');
    await using a = await startHub({ init: { storeUrl: url } });
    copyHub(a.dataDir, join(a.dir, 'hub-b'));
    await using b = await startHub({ dataDir: join(a.dir, 'hub-b') });
    t.ok(b.hub.components.store instanceof PostgresStore);

    const planted = 'planted-secret-value-4711';
    await kvSet(a, 'on-a', planted, true);
    await kvSet(a, 'tls1_TopSecretTokenText', 'x');
    await a.hub.components.audit.flush(); // A writes its batch within flushInterval (100 ms); the test does not wait for the timer
    const listed = listAudit(b.admin, { methodContains: 'adminkv/set' });
    t.equal(await listed.done, grpc.status.OK);
    t.equal(listed.got.length, 2, 'B lists both of A\'s records');
    t.match(listed.got[0], { actor: 'admin', method: `${S}.AdminKv/Set`, result: 'ok' });
    t.match(listed.got[1]!.target, /tls1_\[REDACTED\]/, 'a token-shaped key is redacted');

    // Follow on B: the history, then A's new records as A writes them.
    const follow = listAudit(b.admin, { follow: true, methodContains: 'AdminKv/Set' });
    await waitFor(() => follow.got.length >= 2, 10_000, 'the history on B');
    await waitFor(() => b.hub.components.audit.followerCount === 1, 5000, 'B\'s follower');
    await kvSet(a, 'live-1', 'v');
    const t0 = Date.now();
    await waitFor(() => follow.got.length >= 3, 15_000, 'A\'s first live record on B');
    t.comment(`audit_follow_cross_hub_ms: ${Date.now() - t0} (A's call answered → B's follower has the record)`);
    await kvSet(a, 'live-2', 'v');
    await waitFor(() => follow.got.length >= 4, 15_000, 'A\'s live records on B');
    t.same(follow.got.slice(2).map((r) => r.target).map((x) => /live-\d/.exec(x)?.[0]), ['live-1', 'live-2'], 'in order, once each');
    // B's own records reach B's follower too, once.
    await kvSet(b, 'on-b', 'v');
    await waitFor(() => follow.got.length >= 5, 10_000, 'B\'s own record');
    await new Promise((r) => setTimeout(r, 500));
    t.equal(follow.got.length, 5, 'no record twice');
    t.equal(new Set(follow.got.map((r) => r.id)).size, 5);
    follow.stream.cancel();
    await follow.done;

    // Both hubs wrote into the one table; nothing secret in it.
    await a.hub.components.audit.flush();
    await b.hub.components.audit.flush();
    const rows = await sql(url, 'SELECT * FROM trellis_audit ORDER BY id');
    t.ok(new Set(rows.map((r: { hub: string }) => r.hub)).size === 2, 'rows of both hubs');
    const text = JSON.stringify(rows);
    t.notOk(text.includes(planted), 'no secret value in the table');
    t.notOk(text.includes('TopSecretTokenText'), 'no token text in the table');
    t.notOk(text.includes(server.password), 'no database password in the table');
    t.same(readFileSync(join(a.dataDir, 'hub.json'), 'utf8').includes(server.password), false);

    // A snapshot carries the table as an audit segment: restored, the log is files again.
    const info = await call<T.CreateSnapshotRequest, T.SnapshotInfo__Output>(a.admin, a.admin.snapshots, a.admin.snapshots.CreateSnapshot, { passphrase: 'audit-snapshot-passphrase', note: '' }, 120_000);
    const restored = join(a.dir, 'restored');
    await restoreSnapshot({ file: join(hubPaths(a.dataDir).snapshots, `${info.id}.tsnap`), dataDir: restored, passphrase: 'audit-snapshot-passphrase' });
    const lines = readFileSync(join(hubPaths(restored).audit, '000000000001.jsonl'), 'utf8');
    t.match(lines, /live-1/, 'A\'s records are in the snapshot');
    t.match(lines, /on-b/, 'and B\'s');
    t.equal(readdirSync(hubPaths(a.dataDir).snapshots).filter((f) => f.startsWith('.audit-')).length, 0, 'no export file left');
  });

  void t.test('retention deletes rows older than maxAge and the oldest beyond the byte budget; the code has no UPDATE of the table', async (t) => {
    const url = await server.createDatabase('retain');
    await migrateDatabase({ url });
    const store = await PostgresStore.open({ url });
    t.teardown(() => store.close());
    const old = await PgAuditLog.open({ db: store, bus: new LocalBus('hub-1'), maxAgeMs: 3_600_000 });
    for (let i = 0; i < 3; i++) old.record(entry({ timeMs: Date.now() - 2 * 3_600_000, target: `old-${i}` }));
    for (let i = 0; i < 2; i++) old.record(entry({ target: `new-${i}` }));
    await old.flush();
    await old.retain();
    t.same((await old.query()).map((r) => r.target), ['new-0', 'new-1'], 'the two-hour-old rows are gone');
    await old.close();

    // A budget of about three records: the newest three stay.
    const size = Buffer.byteLength(JSON.stringify({ ...entry({ target: 'size-0' }), id: '01hzzzzzzzzzzzzzzzzzzzzzzz' })) + 1;
    const small = await PgAuditLog.open({ db: store, bus: new LocalBus('hub-1'), maxBytes: size * 3 + 10 });
    await sql(url, 'DELETE FROM trellis_audit');
    for (let i = 0; i < 10; i++) small.record(entry({ target: `size-${i}` }));
    await small.flush();
    t.equal((await small.query()).length, 10, 'nothing dropped before retention runs');
    await small.retain();
    t.same((await small.query()).map((r) => r.target), ['size-7', 'size-8', 'size-9'], 'the newest rows within the budget stay');
    await small.close();

    const src = readFileSync(join(fileURLToPath(new URL('.', import.meta.url)), '..', 'hub', 'audit', 'postgres.js'), 'utf8');
    t.notMatch(src, /\bUPDATE\s+trellis_audit/i, 'no UPDATE of the audit table');
    t.equal(src.match(/DELETE FROM trellis_audit/g)?.length, 2, 'the only DELETEs are the two of retention');
  });

  void t.test('hub.json audit.retention applies to the table at hub start', async (t) => {
    const url = await server.createDatabase('retainhub');
    await using h = await startHub({ init: { storeUrl: url }, config: { audit: { retention: { maxAge: '1h' } } } });
    await sql(url, `INSERT INTO trellis_audit (id, time_ms, hub, actor, tenant, method, target, result, source_address, detail, bytes)
      VALUES ('00000000000000000000000001', $1, 'x', 'a', '', 'm', 'ancient', 'ok', '', '', 10)`, [Date.now() - 3 * 3_600_000]);
    await h.restart();
    t.same((await h.hub.components.audit.query({ limit: 10_000 })).filter((r) => r.target === 'ancient'), [], 'the three-hour-old row is gone');
  });

  void t.test('hub migrate --from-data copies a lowdb hub\'s audit records into the table', async (t) => {
    await using h = await startHub();
    await kvSet(h, 'before-the-move', 'v');
    await h.stop();
    const url = await server.createDatabase('moved');
    const r = await hubMigrate({ fromData: h.dataDir, storeUrl: url });
    t.ok((r.copied?.auditRecords ?? 0) >= 1, `${r.copied?.auditRecords} audit records copied`);
    await h.restart();
    t.ok(h.hub.components.store instanceof PostgresStore);
    const listed = listAudit(h.admin, { methodContains: 'AdminKv/Set' });
    t.equal(await listed.done, grpc.status.OK);
    t.match(listed.got.map((x) => x.target).join(' '), /before-the-move/, 'the record from before the move is listed from the table');
  });

  void t.test('a database outage queues the records (counted); they are written, once, when it is back', async (t) => {
    const url = await server.createDatabase('outage');
    await migrateDatabase({ url });
    const store = await PostgresStore.open({ url, maxReconnectDelayMs: 200 });
    t.teardown(() => store.close());
    const log = await PgAuditLog.open({ db: store, bus: new LocalBus('hub-1'), flushIntervalMs: 20, maxQueued: 3 });
    log.record(entry({ target: 'before' }));
    await log.flush();
    await server.stop();
    try {
      for (let i = 0; i < 5; i++) log.record(entry({ target: `during-${i}` }));
      const failed = await log.flush().then(() => undefined, (e: Error & { code?: string }) => e);
      t.equal(failed?.code, 'TRELLIS_E_UNAVAILABLE', 'the flush fails while the database is away');
      t.equal(log.queued, 3, 'the records wait, at most maxQueued');
      t.equal(log.dropped, 2, 'the overflow is counted');
    } finally {
      await server.start();
    }
    await waitFor(async () => log.queued === 0, 30_000, 'the queue written after the outage');
    const targets = (await log.query()).map((r) => r.target);
    t.same(targets, ['before', 'during-2', 'during-3', 'during-4'], 'the queued records are in the table, once each');
    await log.close();
  });
});
