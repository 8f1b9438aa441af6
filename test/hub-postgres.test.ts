/**
 * A real hub on a PostgreSQL store (`hub init --store URL`): admin login, datastore, packs and
 * rules work, everything survives a restart, nothing of the state is in the data directory, and
 * the database password is in no log line, hub.json or error.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { PostgresStore } from '../hub/store/index.js';
import { initHub } from '../hub/init.js';
import { Hub } from '../hub/hub.js';
import { loadHubConfig } from '../hub/config.js';
import { ADMIN_PASSWORD, captureLogger, login, startHub, tempDir } from './helpers/hub.js';
import { createRule, file, getRule, install, markAction, unaryT } from './helpers/admin.js';
import { needs } from './helpers/needs.js';
import { postgresMissing, startPostgres } from './helpers/postgres.js';
import { runCli } from './helpers/cli.js';
import { SCHEMA_VERSION } from '../hub/store/postgres/index.js';
import { hubMigrate } from '../hub/migrate.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

void t.test('hub on PostgreSQL', needs(t, postgresMissing()), async (t) => {
  const server = await startPostgres();
  t.teardown(() => server.close());

  void t.test('admin login, kv and rules on a PostgreSQL hub, and all of it after a restart', async (t) => {
    const url = await server.createDatabase('hub');
    await using h = await startHub({ init: { storeUrl: url } });
    t.ok(h.hub.components.store instanceof PostgresStore, 'the hub runs on the PostgreSQL store');
    t.notOk(existsSync(join(h.dataDir, 'state.json')), 'no state.json in the data directory');
    const hubJson = readFileSync(join(h.dataDir, 'hub.json'), 'utf8');
    t.notMatch(hubJson, server.password, 'hub.json does not hold the database password');
    t.match(JSON.parse(hubJson).store, { kind: 'postgres', passwordFile: join(h.dataDir, 'store-password') });

    await unaryT(h, h.admin.kv, h.admin.kv.Set, { key: 'plain', value: 'v1', secret: false, ttlMs: 0, scope: 'tenant', private: false });
    await unaryT(h, h.admin.kv, h.admin.kv.Set, { key: 'token', value: 'sealed-value-1', secret: true, ttlMs: 0, scope: 'tenant', private: false });
    await install(h, [file('pack.yaml', 'name: ops\nversion: 1.0.0\ndescription: test pack\n'), markAction('append a line')]);
    await createRule(h, { name: 'on-job', trigger: 'core.job', action: { ref: 'ops.mark', parameters: { msg: 'job', out: join(h.dir, 'out') } } });

    await h.restart();
    const again = await login(h, 'admin', ADMIN_PASSWORD);
    t.ok(again.token, 'the admin logs in after the restart');
    const plain = await unaryT<T.KvGetRequest, T.KvEntry__Output>(h, h.admin.kv, h.admin.kv.Get, { key: 'plain', scope: 'tenant', decrypt: false });
    t.equal(plain.value, 'v1');
    const secret = await unaryT<T.KvGetRequest, T.KvEntry__Output>(h, h.admin.kv, h.admin.kv.Get, { key: 'token', scope: 'tenant', decrypt: true });
    t.equal(secret.value, 'sealed-value-1', 'a secret opens after the restart');
    t.equal((await getRule(h, 'on-job')).name, 'on-job', 'the rule is still there');
    t.notOk(h.logLines.some((l) => l.includes(server.password)), 'the database password is in no log line');
  });

  void t.test('a lowdb hub moved with hub migrate --from-data runs on PostgreSQL with its users, secrets and rules', async (t) => {
    await using h = await startHub();
    await unaryT(h, h.admin.kv, h.admin.kv.Set, { key: 'token', value: 'moved-secret-1', secret: true, ttlMs: 0, scope: 'tenant', private: false });
    await install(h, [file('pack.yaml', 'name: ops\nversion: 1.0.0\ndescription: test pack\n'), markAction('append a line')]);
    await createRule(h, { name: 'moved-rule', trigger: 'core.job', action: { ref: 'ops.mark', parameters: { msg: 'job', out: join(h.dir, 'out') } } });
    const url = await server.createDatabase('moved');
    const busy = await hubMigrate({ fromData: h.dataDir, storeUrl: url }).catch((e: Error & { code?: string }) => e);
    t.equal((busy as { code?: string }).code, 'TRELLIS_E_LOCKED', 'a running hub\'s data directory is not copied (it would go on writing state.json)');
    t.notOk(existsSync(join(h.dataDir, 'state.json.migrated')), 'and nothing was changed');
    await h.stop();
    const r = await hubMigrate({ fromData: h.dataDir, storeUrl: url });
    t.ok((r.copied?.counts.users ?? 0) >= 1 && r.copied?.counts.rules === 1 && r.copied?.counts.kv === 1, `copied ${JSON.stringify(r.copied?.counts)}`);
    await h.restart();
    t.ok(h.hub.components.store instanceof PostgresStore, 'the hub now runs on PostgreSQL');
    t.ok((await login(h, 'admin', ADMIN_PASSWORD)).token, 'the admin logs in');
    const secret = await unaryT<T.KvGetRequest, T.KvEntry__Output>(h, h.admin.kv, h.admin.kv.Get, { key: 'token', scope: 'tenant', decrypt: true });
    t.equal(secret.value, 'moved-secret-1', 'a sealed value opens (the master key stayed in the data directory)');
    t.equal((await getRule(h, 'moved-rule')).name, 'moved-rule');
  });

  void t.test('the CLI: hub init --store with TRELLIS_STORE_PASSWORD, hub migrate (idempotent), neither prints the password', async (t) => {
    const url = await server.createDatabase('cli');
    const noPw = url.replace(/:[^:@/]*@/, '@');
    await using d = await tempDir();
    const dataDir = join(d.path, 'hub');
    const env = { TRELLIS_STORE_PASSWORD: server.password, TRELLIS_ADMIN_PASSWORD: ADMIN_PASSWORD };
    const init = await runCli(['hub', 'init', '--data', dataDir, '--name', 'localhost', '--store', noPw], env);
    t.equal(init.code, 0, init.err);
    t.equal(readFileSync(join(dataDir, 'store-password'), 'utf8'), server.password, 'the password went to store-password');
    const again = await runCli(['hub', 'migrate', '--data', dataDir]);
    t.equal(again.code, 0, again.err);
    t.match(again.out, new RegExp(`schema version ${SCHEMA_VERSION}: nothing to do`));
    const direct = await runCli(['hub', 'migrate', '--store', url]);
    t.equal(direct.code, 0, direct.err);
    for (const r of [init, again, direct]) t.notOk((r.out + r.err).includes(server.password), 'no password in the output');
    const lowdbHub = join(d.path, 'low');
    t.equal((await runCli(['hub', 'init', '--data', lowdbHub, '--name', 'localhost'], env)).code, 0);
    const refused = await runCli(['hub', 'migrate', '--data', lowdbHub]);
    t.not(refused.code, 0);
    t.match(refused.err, /state\.json.*--from-data/);
    const help = await runCli(['hub', 'migrate', '--help']);
    t.match(help.out, /--from-data <dir>/);
  });

  void t.test('hub init --store refuses a database that already holds a hub, and writes nothing', async (t) => {
    const url = await server.createDatabase('taken');
    await using first = await tempDir();
    await initHub({ dataDir: first.path, names: ['localhost'], adminPassword: ADMIN_PASSWORD, storeUrl: url });
    await using second = await tempDir();
    await t.rejects(initHub({ dataDir: join(second.path, 'hub'), names: ['localhost'], adminPassword: ADMIN_PASSWORD, storeUrl: url }), { code: 'TRELLIS_E_ALREADY_EXISTS', message: /already holds a hub's state/ });
    t.notOk(existsSync(join(second.path, 'hub')), 'no data directory was made');
  });

  void t.test('a hub on an un-migrated database refuses to start and says to run migrate; a wrong password is not echoed', async (t) => {
    const url = await server.createDatabase('hub');
    await using d = await tempDir();
    await initHub({ dataDir: d.path, names: ['localhost'], adminPassword: ADMIN_PASSWORD, storeUrl: url, config: { agentPort: 0, adminPort: 0, webPort: 0, bind: '127.0.0.1' } });
    const { log, lines } = captureLogger();
    // Point it at an empty database: not migrated.
    const bare = await server.createDatabase('bare');
    const cfgPath = join(d.path, 'hub.json');
    const cfg = JSON.parse(readFileSync(cfgPath, 'utf8'));
    const { writeFileSync } = await import('node:fs');
    writeFileSync(cfgPath, JSON.stringify({ ...cfg, store: { ...cfg.store, url: bare.replace(/:[^:@/]*@/, '@') } }));
    await t.rejects(Hub.start({ dataDir: d.path, log }), { code: 'TRELLIS_E_CONFIG', message: /trellis hub migrate/ });

    // A wrong password in the password file: refused, and neither password is in the message or the log.
    writeFileSync(cfgPath, JSON.stringify(cfg));
    writeFileSync(cfg.store.passwordFile, 'wrong-password-zz9', { mode: 0o600 });
    const err = await Hub.start({ dataDir: d.path, log }).then(() => undefined, (e: Error & { code: string }) => e);
    t.match(err, { code: 'TRELLIS_E_CONFIG', message: /refused the login/ });
    t.notMatch(err?.message ?? '', 'wrong-password-zz9');
    t.notMatch(err?.message ?? '', server.password);
    t.notOk(lines.some((l) => l.includes('wrong-password-zz9') || l.includes(server.password)), 'no password in the log');
    t.equal(loadHubConfig(d.path).store.kind, 'postgres');
  });
});
