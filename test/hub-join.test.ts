/**
 * Keys in a cluster (issue 14 §3): `trellis hub init --join postgres://… --from DIR|SNAPSHOT`
 * makes a new hub's data directory with the cluster's CA and master key taken from a hub's data
 * directory or a snapshot (never from the database, which holds only their fingerprints), its own
 * certificate for its names, files 0600 in a 0700 directory, and no password in hub.json. Refused:
 * a wrong passphrase, a data directory of another cluster (other CA, or other master key), a
 * non-empty target, an empty database. A hub whose CA or master key is not the cluster's refuses
 * to start on the cluster's database.
 */
import t from 'tap';
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync, cpSync } from 'node:fs';
import { basename, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { ADMIN_PASSWORD, captureLogger, startHub, tempDir } from './helpers/hub.js';
import { needs } from './helpers/needs.js';
import { postgresMissing, startPostgres } from './helpers/postgres.js';
import { runCli } from './helpers/cli.js';
import { joinHub } from '../hub/join.js';
import { initHub } from '../hub/init.js';
import { Hub } from '../hub/hub.js';
import { hubPaths } from '../hub/paths.js';
import { migrateDatabase } from '../hub/store/postgres/index.js';
import { certInfo, fingerprintSha256, splitPemBundle, verifyIssuedBy } from '../certs/index.js';
import { adminClients, call } from '../cli/client.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const PASSPHRASE = 'join-passphrase-long-enough';
const code = (p: Promise<unknown>) => p.then(() => 'resolved', (e: { code?: string }) => e.code ?? String(e));
const noPassword = (url: string) => url.replace(/:[^:@/]*@/, '@');
const PORTS = { agentPort: 0, adminPort: 0, webPort: 0, bind: '127.0.0.1' };

/** Every file under `dir` with its mode (relative path → mode). */
function modes(dir: string, rel = ''): Map<string, number> {
  const out = new Map<string, number>();
  for (const f of readdirSync(join(dir, rel))) {
    const p = join(rel, f);
    const st = statSync(join(dir, p));
    out.set(p, st.mode & 0o777);
    if (st.isDirectory()) for (const [k, v] of modes(dir, p)) out.set(k, v);
  }
  return out;
}

void t.test('hub init --join', needs(t, postgresMissing()), async (t) => {
  const server = await startPostgres();
  t.teardown(() => server.close());
  const url = await server.createDatabase('join');
  const a = await startHub({ init: { storeUrl: url } });
  t.teardown(() => a.close());
  const aPaths = hubPaths(a.dataDir);
  // A sealed value on A, to open on the joined hubs.
  const adminA = adminClients(a.adminAddr, a.caPem, (await call<T.LoginRequest, T.LoginResponse__Output>(a.admin, a.admin.auth, a.admin.auth.Login, { username: 'admin', password: ADMIN_PASSWORD })).token, 'default');
  t.teardown(() => adminA.close());
  await call(adminA, adminA.kv, adminA.kv.Set, { key: 'sealed', value: 'opens-on-every-hub', secret: true, ttlMs: 0, scope: 'tenant', private: false });

  void t.test('from a data directory: the cluster\'s keys, its own certificate, 0600 files in a 0700 directory, no password in hub.json; the hub runs and opens sealed values', async (t) => {
    await using d = await tempDir();
    const B = join(d.path, 'hub-b');
    const r = await joinHub({ dataDir: B, names: ['hub-b.example', '127.0.0.1'], storeUrl: noPassword(url), storePassword: server.password, from: a.dataDir, config: PORTS });
    t.equal(r.caFingerprint, fingerprintSha256(splitPemBundle(readFileSync(aPaths.caCert, 'utf8'))[0]!), 'the cluster\'s CA');
    t.ok(r.canIssue, 'with its key');
    t.same(r.masterKeyVersions, [1]);
    t.equal(statSync(B).mode & 0o777, 0o700, 'the directory is 0700');
    for (const [f, m] of modes(B)) t.equal(m, statSync(join(B, f)).isDirectory() ? 0o700 : 0o600, `${f} is ${m.toString(8)}`);
    t.same(readFileSync(join(B, 'keys', 'master-1.key')), readFileSync(join(aPaths.dir, 'keys', 'master-1.key')), 'the master key is A\'s');
    t.same(readFileSync(join(B, 'ca-key.pem'), 'utf8').length > 0, true);
    const hubJson = readFileSync(join(B, 'hub.json'), 'utf8');
    t.notOk(hubJson.includes(server.password), 'no database password in hub.json');
    t.same(JSON.parse(hubJson).store, { kind: 'postgres', url: noPassword(url), passwordFile: join(B, 'store-password') });
    t.same(JSON.parse(hubJson).names, ['hub-b.example', '127.0.0.1']);
    t.equal(readFileSync(join(B, 'store-password'), 'utf8'), server.password);
    const leaf = splitPemBundle(readFileSync(join(B, 'hub.pem'), 'utf8'));
    t.ok(verifyIssuedBy(leaf[0]!, splitPemBundle(readFileSync(aPaths.caCert, 'utf8'))[0]!), 'B\'s certificate is issued by the cluster\'s CA');
    t.not(leaf[0], splitPemBundle(readFileSync(aPaths.hubCert, 'utf8'))[0], 'and is B\'s own');
    t.match(certInfo(leaf[0]!).dnsNames, ['hub-b.example']);
    t.notOk(readdirSync(d.path).some((f) => f.startsWith('.hub-b.join-')), 'no temporary directory left');

    await using b = await startHub({ dataDir: B });
    const adminB = adminClients(b.adminAddr, b.caPem, (await call<T.LoginRequest, T.LoginResponse__Output>(b.admin, b.admin.auth, b.admin.auth.Login, { username: 'admin', password: ADMIN_PASSWORD })).token, 'default');
    t.teardown(() => adminB.close());
    const got = await call<T.KvGetRequest, T.KvEntry__Output>(adminB, adminB.kv, adminB.kv.Get, { key: 'sealed', scope: 'tenant', decrypt: true });
    t.equal(got.value, 'opens-on-every-hub', 'A\'s sealed value opens on B');
    t.notOk(b.logLines.some((l) => l.includes(server.password)), 'no password in B\'s log');
  });

  void t.test('from a snapshot with its passphrase; a wrong passphrase is refused and writes nothing', async (t) => {
    const info = await call<T.CreateSnapshotRequest, T.SnapshotInfo__Output>(a.admin, a.admin.snapshots, a.admin.snapshots.CreateSnapshot, { passphrase: PASSPHRASE, note: 'join' }, 120_000);
    const file = join(aPaths.snapshots, `${info.id}.tsnap`);
    await using d = await tempDir();
    const bad = join(d.path, 'bad');
    t.equal(await code(joinHub({ dataDir: bad, names: ['localhost'], storeUrl: url, from: file, passphrase: 'not-the-passphrase-at-all' })), 'TRELLIS_E_SNAPSHOT_INVALID', 'wrong passphrase');
    t.notOk(existsSync(bad), 'nothing written');
    t.equal(await code(joinHub({ dataDir: bad, names: ['localhost'], storeUrl: url, from: file })), 'TRELLIS_E_INVALID_ARGUMENT', 'no passphrase for a snapshot');

    const C = join(d.path, 'hub-c');
    const r = await joinHub({ dataDir: C, names: ['localhost', '127.0.0.1'], storeUrl: url, from: file, passphrase: PASSPHRASE, config: PORTS });
    t.equal(r.source, 'snapshot');
    t.same(readFileSync(join(C, 'keys', 'master-1.key')), readFileSync(join(aPaths.dir, 'keys', 'master-1.key')), 'the master key from the snapshot');
    t.notOk(readFileSync(join(C, 'hub.json'), 'utf8').includes(server.password), 'the password from the URL went to store-password, not hub.json');
    await using c = await startHub({ dataDir: C });
    t.ok(c.hub.state === 'running', 'the hub made from the snapshot runs on the cluster');
  });

  void t.test('refused: another cluster\'s CA, another master key, a non-empty target, an empty database; nothing is written', async (t) => {
    await using d = await tempDir();
    const other = join(d.path, 'other');
    await initHub({ dataDir: other, names: ['localhost'], adminPassword: ADMIN_PASSWORD });
    const target = join(d.path, 'target');
    const e1 = await joinHub({ dataDir: target, names: ['localhost'], storeUrl: url, from: other }).catch((e: Error & { code?: string }) => e);
    t.equal((e1 as { code?: string }).code, 'TRELLIS_E_CONFIG', 'a data directory of another cluster (another CA)');
    t.match((e1 as Error).message, /its CA \(sha256:[0-9a-f]{16}…\) is not the cluster's/);
    t.notOk(existsSync(target), 'nothing written');

    // A's CA, but a master key of its own.
    const forged = join(d.path, 'forged');
    cpSync(a.dataDir, forged, { recursive: true, filter: (src) => basename(src) !== 'hub.lock' && basename(src) !== 'snapshots' });
    writeFileSync(join(forged, 'keys', 'master-1.key'), randomBytes(32), { mode: 0o600 });
    const e2 = await joinHub({ dataDir: target, names: ['localhost'], storeUrl: url, from: forged }).catch((e: Error & { code?: string }) => e);
    t.equal((e2 as { code?: string }).code, 'TRELLIS_E_CONFIG', 'another master key');
    t.match((e2 as Error).message, /master key version 1 is not the cluster's/);
    t.notOk(existsSync(target));

    mkdirSync(target);
    writeFileSync(join(target, 'something'), 'x');
    t.equal(await code(joinHub({ dataDir: target, names: ['localhost'], storeUrl: url, from: a.dataDir })), 'TRELLIS_E_ALREADY_EXISTS', 'a non-empty target');
    t.same(readdirSync(target), ['something'], 'left as it was');

    const empty = await server.createDatabase('empty');
    const e3 = await joinHub({ dataDir: join(d.path, 'e'), names: ['localhost'], storeUrl: empty, from: a.dataDir }).catch((e: Error & { code?: string }) => e);
    t.equal((e3 as { code?: string }).code, 'TRELLIS_E_CONFIG', 'an unmigrated database');
    t.match((e3 as Error).message, /schema version 0.*hub migrate/);
    await migrateDatabase({ url: empty });
    const e4 = await joinHub({ dataDir: join(d.path, 'e'), names: ['localhost'], storeUrl: empty, from: a.dataDir }).catch((e: Error & { code?: string }) => e);
    t.equal((e4 as { code?: string }).code, 'TRELLIS_E_CONFIG', 'a migrated database without a cluster');
    t.match((e4 as Error).message, /holds no hub yet/);
    t.notOk(existsSync(join(d.path, 'e')));
  });

  void t.test('a hub whose CA or master key is not the cluster\'s refuses to start on its database', async (t) => {
    await using d = await tempDir();
    // A hub of its own (other CA), pointed at the cluster's database.
    const other = join(d.path, 'other');
    await initHub({ dataDir: other, names: ['localhost'], adminPassword: ADMIN_PASSWORD, config: PORTS });
    const cfg = JSON.parse(readFileSync(join(other, 'hub.json'), 'utf8'));
    writeFileSync(join(other, 'hub.json'), JSON.stringify({ ...cfg, store: { kind: 'postgres', url } }), { mode: 0o600 });
    const e1 = await Hub.start({ dataDir: other, log: captureLogger().log }).catch((e: Error & { code?: string }) => e);
    t.equal((e1 as { code?: string }).code, 'TRELLIS_E_CONFIG', 'another CA: refused');
    t.match((e1 as Error).message, /does not hold the keys of the cluster.*hub init --join/);
    t.notOk((e1 as Error).message.includes(server.password), 'no password in the message');

    // A's files with another master key.
    const forged = join(d.path, 'forged');
    cpSync(a.dataDir, forged, { recursive: true, filter: (src) => !['hub.lock', 'snapshots', 'audit', 'executions'].includes(basename(src)) });
    writeFileSync(join(forged, 'keys', 'master-1.key'), randomBytes(32), { mode: 0o600 });
    const e2 = await Hub.start({ dataDir: forged, log: captureLogger().log }).catch((e: Error & { code?: string }) => e);
    t.equal((e2 as { code?: string }).code, 'TRELLIS_E_CONFIG', 'another master key: refused');
    t.match((e2 as Error).message, /master key version 1/);
  });

  void t.test('the CLI: hub init --join (password from TRELLIS_STORE_PASSWORD), --help, flags that do not go with it', async (t) => {
    await using d = await tempDir();
    const D = join(d.path, 'hub-d');
    const help = await runCli(['hub', 'init', '--help']);
    t.match(help.out, /--join <url>/);
    t.match(help.out, /--from <dir-or-snapshot>/);
    const mixed = await runCli(['hub', 'init', '--data', D, '--name', 'localhost', '--join', noPassword(url), '--from', a.dataDir, '--ca-cert', aPaths.caCert], { TRELLIS_STORE_PASSWORD: server.password });
    t.not(mixed.code, 0);
    t.match(mixed.err, /--ca-cert: not with --join/);
    const half = await runCli(['hub', 'init', '--data', D, '--name', 'localhost', '--join', noPassword(url)]);
    t.not(half.code, 0);
    t.match(half.err, /--join URL and --from/);
    const ok = await runCli(['hub', 'init', '--data', D, '--name', 'localhost', '--join', noPassword(url), '--from', a.dataDir], { TRELLIS_STORE_PASSWORD: server.password });
    t.equal(ok.code, 0, ok.err);
    t.match(ok.out, /joins the cluster on trellis@127\.0\.0\.1:\d+\/join_/);
    t.notOk(ok.out.includes(server.password) || ok.err.includes(server.password), 'the password is not printed');
    t.equal(readFileSync(join(D, 'store-password'), 'utf8'), server.password);
  });
});
