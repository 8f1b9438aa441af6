/**
 * The PostgreSQL store beyond the contract (test/store.test.ts runs the contract on it): two
 * stores on one database (as two hubs), a database restart under a running store, schema
 * versions, the password kept out of errors, and `hub migrate --from-data`.
 */
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import pg from 'pg';
import { LowdbStore, PostgresStore, type Doc } from '../hub/store/index.js';
import { MIGRATIONS, migrate, migrateDatabase, redactUrl, SCHEMA_VERSION } from '../hub/store/postgres/index.js';
import { hubMigrate } from '../hub/migrate.js';
import { createCA, generateKey, issueCertificate } from '../certs/index.js';
import { needs } from './helpers/needs.js';
import { postgresMissing, startPostgres, type Postgres } from './helpers/postgres.js';

interface Counter extends Doc { n: number }

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` every 20 ms for up to `ms`; true when it held. */
async function eventually(cond: () => boolean | Promise<boolean>, ms = 10_000): Promise<boolean> {
  const end = Date.now() + ms;
  for (;;) {
    try { if (await cond()) return true; } catch { /* not yet */ }
    if (Date.now() > end) return false;
    await sleep(20);
  }
}

async function sql(url: string, text: string, params: unknown[] = []): Promise<pg.QueryResult> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try { return await c.query(text, params); } finally { await c.end(); }
}

void t.test('PostgreSQL store', needs(t, postgresMissing()), async (t) => {
  const server: Postgres = await startPostgres();
  t.teardown(() => server.close());

  async function migrated(): Promise<string> {
    const url = await server.createDatabase();
    await migrateDatabase({ url });
    return url;
  }
  async function open(t: Test, url: string, extra: Partial<Parameters<typeof PostgresStore.open>[0]> = {}): Promise<PostgresStore> {
    const s = await PostgresStore.open({ url, ...extra });
    t.teardown(() => s.close());
    return s;
  }

  void t.test("two stores on one database: one's change reaches the other's cache within a second", async (t) => {
    const url = await migrated();
    const a = await open(t, url);
    const b = await open(t, url);
    await a.put('users', { id: 'alice', name: 'Alice' });
    let start = Date.now();
    t.ok(await eventually(() => b.peek('users', 'alice') !== undefined, 1000), 'an insert reaches b');
    t.ok(Date.now() - start < 1000, `seen by b after ${Date.now() - start} ms`);
    t.same(await b.get('users', 'alice'), { id: 'alice', name: 'Alice' });

    await a.update('users', 'alice', (cur) => ({ ...cur!, name: 'Alice B.' }));
    t.ok(await eventually(() => b.peek<Doc & { name: string }>('users', 'alice')?.name === 'Alice B.', 1000), 'an update reaches b');
    start = Date.now();
    await b.delete('users', 'alice');
    t.ok(await eventually(() => a.peek('users', 'alice') === undefined, 1000), `a delete on b reaches a (${Date.now() - start} ms)`);

    // Listing order is insertion order on both sides, whoever inserted.
    await a.insert('kv', { id: 'k1' });
    await b.insert('kv', { id: 'k2' });
    await a.insert('kv', { id: 'k3' });
    t.ok(await eventually(async () => (await b.count('kv')) === 3 && (await a.count('kv')) === 3, 2000));
    t.same((await a.list('kv')).map((d) => d.id), ['k1', 'k2', 'k3']);
    t.same((await b.list('kv')).map((d) => d.id), ['k1', 'k2', 'k3']);
  });

  void t.test('ids with NUL, a backslash or an unpaired surrogate are kept apart and read back exactly, here and on another store', async (t) => {
    const url = await migrated();
    const a = await open(t, url);
    const b = await open(t, url);
    const ids = ['tenant\u0000key', 'tenant\\u0000key', 'back\\slash', 'lone\uD800', 'lone\\uD800', 'pair\uD83D\uDE00', 'tenant\u0000user\u0000k'];
    for (const id of ids) await a.insert('kv', { id, v: id });
    t.equal(await a.count('kv'), ids.length, 'no two ids collide');
    await a.update<Doc & { v: string }>('kv', ids[0]!, (cur) => ({ ...cur!, v: 'updated' }));
    t.ok(await eventually(async () => (await b.count('kv')) === ids.length && b.peek<Doc & { v: string }>('kv', ids[0]!)?.v === 'updated', 2000), 'b sees them all');
    const reopened = await open(t, url);
    t.same((await reopened.list('kv')).map((d) => d.id), ids, 'a reopened store lists the same ids in order');
    t.equal(await b.delete('kv', ids[1]!), true);
    t.ok(await eventually(() => a.peek('kv', ids[1]!) === undefined && a.peek('kv', ids[0]!) !== undefined, 2000), 'deleting one leaves its look-alike');
    // An id too long for a notification (8000 bytes) makes the other stores reload the collection.
    const long = 'é'.repeat(4500);
    await a.put('kv', { id: long });
    t.ok(await eventually(() => b.peek('kv', long) !== undefined, 2000), 'a document with a 9,000-byte id reaches b');
    await a.delete('kv', long);
    t.ok(await eventually(() => b.peek('kv', long) === undefined, 2000), 'and so does its delete');
  });

  void t.test('update is atomic across stores: 2 × 50 concurrent increments end at exactly 100', async (t) => {
    const url = await migrated();
    const a = await open(t, url);
    const b = await open(t, url);
    let calls = 0;
    const inc = (s: PostgresStore) => s.update<Counter>('meta', 'counter', (cur) => { calls++; return { id: 'counter', n: (cur?.n ?? 0) + 1 }; });
    await Promise.all(Array.from({ length: 50 }, () => [inc(a), inc(b)]).flat());
    t.equal(calls, 100, 'each update function ran exactly once (no retries: writers of a document queue on its lock)');
    t.equal((await sql(url, `SELECT doc->>'n' AS n FROM trellis_docs WHERE id = 'counter'`)).rows[0].n, '100');
    t.ok(await eventually(() => a.peek<Counter>('meta', 'counter')?.n === 100 && b.peek<Counter>('meta', 'counter')?.n === 100, 2000), 'both caches end at 100');
    // insert is refused on one store for an id the other inserted.
    await a.insert('kv', { id: 'once' });
    await t.rejects(b.insert('kv', { id: 'once', other: true }), { code: 'TRELLIS_E_ALREADY_EXISTS' });
  });

  void t.test('a forged notification cannot put anything into the cache', async (t) => {
    const url = await migrated();
    const a = await open(t, url);
    const b = await open(t, url);
    await sql(url, `SELECT pg_notify('trellis_store', $1)`, [JSON.stringify({ c: 'users', i: 'mallory', v: '9999999999' })]);
    await sql(url, `SELECT pg_notify('trellis_store', $1)`, ['{"c":"users","i":"x","doc":{"id":"x","roles":["admin"]}}']);
    await sql(url, `SELECT pg_notify('trellis_store', 'not json')`);
    await sleep(300);
    t.equal(b.peek('users', 'mallory'), undefined, 'a notification of a document that is not in the table adds nothing');
    t.equal(b.peek('users', 'x'), undefined, 'a document inside a notification is ignored');
    t.equal(b.state, 'ready', 'the listener is still up');
    // ...and does not hide a real document written after it.
    await a.put('users', { id: 'mallory', real: true });
    t.ok(await eventually(() => b.peek('users', 'mallory') !== undefined, 1000), 'the real write still arrives');
  });

  void t.test('a database restart under a running store: calls fail with TRELLIS_E_UNAVAILABLE while it is down, then work again', async (t) => {
    const url = await migrated();
    const states: string[] = [];
    const a = await open(t, url, { maxReconnectDelayMs: 500, onStateChange: (s) => states.push(s) });
    const b = await open(t, url, { maxReconnectDelayMs: 500 });
    await a.put('kv', { id: 'before' });
    await server.stop();
    try {
      t.ok(await eventually(() => a.state === 'stale', 5000), 'the store notices the lost connection');
      await t.rejects(a.get('kv', 'before'), { code: 'TRELLIS_E_UNAVAILABLE', message: /unreachable/ }, 'reads fail while down');
      await t.rejects(a.put('kv', { id: 'during' }), { code: 'TRELLIS_E_UNAVAILABLE' }, 'writes fail while down');
      await t.rejects(a.update('kv', 'before', (d) => d), { code: 'TRELLIS_E_UNAVAILABLE' });
      t.same(a.peek('kv', 'before'), { id: 'before' }, 'peek answers from the cache meanwhile');
    } finally {
      await server.start();
    }
    t.ok(await eventually(() => a.state === 'ready' && b.state === 'ready', 15_000), 'both stores reconnect');
    await a.put('kv', { id: 'after' });
    t.same(await a.get('kv', 'after'), { id: 'after' });
    t.equal(await a.get('kv', 'during'), undefined, 'the failed write was not done');
    t.ok(await eventually(() => b.peek('kv', 'after') !== undefined, 2000), 'changes flow between the stores again');
    t.same(states, ['ready', 'stale', 'ready'], 'ready at open, stale while down, ready again');
  });

  void t.test('a change made while a store was disconnected is in its cache once it is back', async (t) => {
    const url = await migrated();
    const a = await open(t, url, { maxReconnectDelayMs: 300 });
    await a.put('kv', { id: 'x', v: 1 });
    // Cut a's LISTEN connection only (the database stays up) and change x meanwhile.
    // A raw UPDATE sends no notification: only the reload can bring it. The listener is cut again
    // after the update, so some reload surely runs after it even if the first reconnect was quick.
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    t.teardown(() => c.end());
    const cut = `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND (query = 'LISTEN trellis_store' OR query = 'SELECT 1')`;
    await c.query(cut);
    await c.query(`UPDATE trellis_docs SET doc = '{"id":"x","v":2}', version = nextval('trellis_doc_version') WHERE id = 'x'`);
    await c.query(cut);
    t.ok(await eventually(() => (a.peek<Doc & { v: number }>('kv', 'x')?.v === 2), 10_000), 'reloaded after reconnecting');
  });

  void t.test('schema versions: an un-migrated database and a newer schema are refused; migrate is idempotent and safe to run twice at once', async (t) => {
    const bare = await server.createDatabase('bare');
    await t.rejects(PostgresStore.open({ url: bare }), { code: 'TRELLIS_E_CONFIG', message: /schema version 0.*trellis hub migrate/ });

    const r = await Promise.all([migrateDatabase({ url: bare }), migrateDatabase({ url: bare })]);
    t.same(r.map((x) => x.applied.length).sort(), [0, MIGRATIONS.length], 'one applied every migration, the other none');
    t.equal((await migrateDatabase({ url: bare })).applied.length, 0, 'a third run changes nothing');
    const s = await PostgresStore.open({ url: bare });
    await s.close();

    await sql(bare, `INSERT INTO schema_migrations (version, name) VALUES ($1, 'from the future')`, [SCHEMA_VERSION + 1]);
    await t.rejects(PostgresStore.open({ url: bare }), { code: 'TRELLIS_E_CONFIG', message: /newer than this hub knows/ });
    await t.rejects(migrateDatabase({ url: bare }), { code: 'TRELLIS_E_CONFIG', message: /newer/ }, 'migrate refuses to touch a newer schema');
  });

  void t.test('a failed login names the user and the database, never the password', async (t) => {
    const secret = 'S3cret-not-the-password';
    const url = `postgres://trellis:${secret}@127.0.0.1:${server.port}/postgres`;
    const err = await PostgresStore.open({ url }).then(() => undefined, (e: Error & { code: string }) => e);
    t.match(err, { code: 'TRELLIS_E_CONFIG', message: /trellis@127\.0\.0\.1.*refused the login/ });
    t.notMatch(String(err?.message) + String(err?.stack), secret, 'the password is not in the error');
    t.notMatch(redactUrl(url), secret);
    const down = `postgres://trellis:${secret}@127.0.0.1:1/postgres`;
    const err2 = await PostgresStore.open({ url: down, connectTimeoutMs: 2000 }).then(() => undefined, (e: Error & { code: string }) => e);
    t.match(err2, { code: 'TRELLIS_E_UNAVAILABLE' });
    t.notMatch(String(err2?.message), secret);
  });

  void t.test('hub migrate --from-data copies a lowdb hub, in order, and refuses a non-empty database without --force', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'trellis-from-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const low = await LowdbStore.open({ path: join(dir, 'state.json') });
    for (const id of ['b', '10', 'a']) await low.insert('kv', { id, v: id });
    await low.put('users', { id: 'admin', roles: ['admin'], nested: { x: [1, 2] } });
    await low.close();
    await writeFile(join(dir, 'hub.json'), JSON.stringify({ names: ['hub.test'] }), { mode: 0o600 });

    const url = await server.createDatabase('from');
    const r = await hubMigrate({ fromData: dir, storeUrl: url });
    t.equal(r.copied?.counts.kv, 3);
    t.equal(r.copied?.counts.users, 1);
    const s = await open(t, url);
    t.same((await s.list('kv')).map((d) => d.id), ['b', '10', 'a'], 'listing order survives the copy');
    t.same(await s.get('users', 'admin'), { id: 'admin', roles: ['admin'], nested: { x: [1, 2] } });

    const hubJson = JSON.parse(await readFile(join(dir, 'hub.json'), 'utf8')) as { store: { kind: string; url: string; passwordFile: string } };
    t.equal(hubJson.store.kind, 'postgres', 'hub.json now names the database');
    t.notMatch(hubJson.store.url, server.password, 'without the password');
    t.equal(await readFile(hubJson.store.passwordFile, 'utf8'), server.password, 'which is in store-password');
    t.equal((await stat(hubJson.store.passwordFile)).mode & 0o777, 0o600);
    t.ok(existsSync(join(dir, 'state.json.migrated')) && !existsSync(join(dir, 'state.json')), 'state.json is renamed');

    // A second copy into the now non-empty database is refused, and changes nothing.
    const again = await mkdtemp(join(tmpdir(), 'trellis-from-'));
    t.teardown(() => rm(again, { recursive: true, force: true }));
    const low2 = await LowdbStore.open({ path: join(again, 'state.json') });
    await low2.put('kv', { id: 'other' });
    await low2.close();
    await t.rejects(hubMigrate({ fromData: again, storeUrl: url }), { code: 'TRELLIS_E_ALREADY_EXISTS', message: /--force/ });
    t.equal(await s.count('kv'), 3);
    const forced = await hubMigrate({ fromData: again, storeUrl: url, force: true });
    t.equal(forced.copied?.replaced, 4);
    t.ok(await eventually(async () => (await s.list('kv')).map((d) => d.id).join() === 'other', 2000), 'a running store reloads after a forced copy');
    t.equal(await s.count('users'), 0);
  });
});

void t.test('TLS to the database: verify-full checks the CA and the name; require encrypts; a plain server is refused', needs(t, postgresMissing()), async (t) => {
  const ca = createCA({ commonName: 'db test CA' });
  const key = generateKey('ec-p256');
  const certPem = issueCertificate({
    issuerCertPem: ca.certPem, issuerKey: ca.key, subjectPublicKey: key.publicKey, subject: { commonName: 'db.test' },
    dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], usage: 'server', notAfter: new Date(Date.now() + 86_400_000),
  });
  const server = await startPostgres({ tls: { certPem, keyPem: key.privateKeyPem } });
  t.teardown(() => server.close());
  const url = await server.createDatabase('tls');
  await migrateDatabase({ url });

  const s = await PostgresStore.open({ url, ssl: { mode: 'verify-full', ca: ca.certPem }, poolSize: 2 });
  t.teardown(() => s.close());
  await s.put('kv', { id: 'over-tls' });
  const ssl = await sql(url, `SELECT bool_and(s.ssl) AS all_tls, count(*) AS n FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'trellis-hub'`);
  t.equal(ssl.rows[0].all_tls, true, 'every connection of the store is TLS');
  t.ok(Number(ssl.rows[0].n) >= 2, 'the LISTEN connection and the pool');

  const other = createCA({ commonName: 'another CA' });
  await t.rejects(PostgresStore.open({ url, ssl: { mode: 'verify-full', ca: other.certPem } }), { code: 'TRELLIS_E_CONFIG', message: /TLS to the state database .* failed.*store\.ssl/ }, 'a server certificate from another CA is refused');
  const byName = url.replace('127.0.0.1', 'localhost');
  const named = await PostgresStore.open({ url: byName, ssl: { mode: 'verify-full', ca: ca.certPem } });
  await named.close();
  const wrongName = createCA({ commonName: 'db test CA 2' });
  const wrongKey = generateKey('ec-p256');
  const wrongCert = issueCertificate({
    issuerCertPem: wrongName.certPem, issuerKey: wrongName.key, subjectPublicKey: wrongKey.publicKey, subject: { commonName: 'elsewhere' },
    dnsNames: ['elsewhere.test'], usage: 'server', notAfter: new Date(Date.now() + 86_400_000),
  });
  const misnamed = await startPostgres({ tls: { certPem: wrongCert, keyPem: wrongKey.privateKeyPem } });
  t.teardown(() => misnamed.close());
  await t.rejects(PostgresStore.open({ url: misnamed.url(), ssl: { mode: 'verify-full', ca: wrongName.certPem } }), { code: 'TRELLIS_E_CONFIG', message: /TLS/ }, 'a certificate that does not name the host is refused');
  const req = await migrateDatabase({ url: misnamed.url(), ssl: { mode: 'require' } });
  t.ok(req.applied.length > 0, 'mode require encrypts without checking the certificate');

  const plain = await startPostgres();
  t.teardown(() => plain.close());
  await t.rejects(PostgresStore.open({ url: plain.url(), ssl: { mode: 'require' } }), { code: 'TRELLIS_E_CONFIG', message: /TLS/ }, 'a server without TLS is refused when TLS is asked for');
});
