/**
 * Snapshots end to end: a real hub process (`trellis hub run`), a real agent, the real CLI.
 * create → download → wipe the data dir → `snapshots restore` → `hub run` again: the agent
 * reconnects with its certificate (same CA), a secret still decrypts (same master key), history
 * and audit are intact; a wrong passphrase, a tampered file and a running hub are refused with
 * nothing written. Then the admin-only API (negative tests for users), audit records without the
 * passphrase, file modes, and a snapshot taken while rules fire that restores consistently.
 */
import t from 'tap';
import { chmodSync, existsSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ulid } from 'ulid';
import * as grpc from '@grpc/grpc-js';
import { ADMIN_PASSWORD, fileAgentLogger, login, startHub, tempDir, waitFor } from './helpers/hub.js';
import { runCli } from './helpers/cli.js';
import { runHub, stopHub } from './helpers/hub-process.js';
import { createRule, file, install, markAction, readLines, runCommand } from './helpers/admin.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import { initHub } from '../hub/init.js';
import { enroll } from '../agent/enroll.js';
import { Agent } from '../agent/agent.js';
import { freePorts } from '../bench/lib.js';
import { fromGrpcError, grpcCodeOf } from '../common/grpc-errors.js';
import { hubPaths } from '../hub/paths.js';
import { readSnapshotFiles, restoreSnapshot } from '../hub/snapshots/restore.js';
import { LowdbStore } from '../hub/store/index.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const PASSPHRASE = 'snapshot passphrase for the tests 42';


const listExecs = (c: AdminClients) => call<T.ListExecutionsRequest, T.ListExecutionsResponse__Output>(c, c.executions, c.executions.ListExecutions, { limit: 1000 });

t.test('create → download → wipe → restore → hub run: the agent reconnects, a secret decrypts, history and audit are intact', async (t) => {
  await using tmp = await tempDir('trellis-snap-');
  const dataDir = join(tmp.path, 'hub');
  const ports = await freePorts(3);
  await initHub({ dataDir, names: ['localhost', '127.0.0.1'], adminPassword: ADMIN_PASSWORD, config: { bind: '127.0.0.1' } });
  let hub = await runHub(dataDir, ports, { logLevel: 'info' });
  t.teardown(() => stopHub(hub));
  const adminAddr = `127.0.0.1:${ports[1]}`;
  const caPem = readFileSync(join(dataDir, 'ca.pem'), 'utf8');
  const caFile = join(tmp.path, 'ca.pem');
  writeFileSync(caFile, caPem);
  const token = (await login({ adminAddr, caPem }, 'admin', ADMIN_PASSWORD)).token;
  const admin = adminClients(adminAddr, caPem, token, 'default');
  t.teardown(() => admin.close());
  const key = (await call<T.CreateApiKeyRequest, T.CreateApiKeyResponse__Output>(admin, admin.apikeys, admin.apikeys.CreateApiKey, { name: 'backup' })).key;
  const env = { TRELLIS_HUB: adminAddr, TRELLIS_CA: caFile, TRELLIS_API_KEY: key, TRELLIS_HOME: tmp.path };

  // An agent, a secret, a command in the history.
  const join_ = (await call<T.CreateJoinTokenRequest, T.CreateJoinTokenResponse__Output>(admin, admin.tokens, admin.tokens.CreateJoinToken, { tenant: 'default', uses: 1, ttlMs: 600_000 })).token;
  const agentDir = join(tmp.path, 'agent');
  const { agentId } = await enroll({ hub: adminAddr, token: join_, dataDir: agentDir });
  const agent = await Agent.start({ dataDir: agentDir, log: fileAgentLogger(agentDir).log, maxBackoffMs: 1000 });
  t.teardown(() => agent.close());
  await waitFor(() => agent.channel.state === 'ready', 20_000, 'agent ready');
  const secret = `s3cret-${ulid()}`;
  await call(admin, admin.kv, admin.kv.Set, { key: 'db_password', value: secret, secret: true, ttlMs: 0, scope: 'tenant', private: false });
  t.equal(await runCommand(admin, agentId, ['echo', 'before-snapshot']), 'before-snapshot\n');

  // The passphrase file must be private.
  const passFile = join(tmp.path, 'pass');
  writeFileSync(passFile, PASSPHRASE + '\n', { mode: 0o644 });
  chmodSync(passFile, 0o644);
  const open = await runCli(['snapshots', 'create', '--passphrase-file', passFile], env);
  t.equal(open.code, 1, 'a passphrase file others can read is refused');
  t.match(open.err, /accessible to group or others \(mode 0644\).*chmod 600/);
  t.notMatch(open.err + open.out, PASSPHRASE);
  const noTty = await runCli(['snapshots', 'create'], env);
  t.equal(noTty.code, 1, 'no passphrase and no terminal: refused (never an unencrypted snapshot)');
  t.match(noTty.err, /no passphrase: pass --passphrase-file/);
  chmodSync(passFile, 0o600);

  const created = await runCli(['snapshots', 'create', '--passphrase-file', passFile, '--note', 'nightly', '--json'], env);
  t.equal(created.code, 0, created.err);
  const info = JSON.parse(created.out) as { id: string; sizeBytes: string | number; sha256: string; documents: number };
  t.match(info.id, /^[0-9a-z]{26}$/);
  t.ok(info.documents > 5, 'store documents carried');
  const list = await runCli(['snapshots', 'list', '--json'], env);
  t.equal(list.code, 0, list.err);
  const listed = JSON.parse(list.out) as Array<{ id: string; createdBy: string; note: string }>;
  t.same(listed.map((s) => [s.id, s.createdBy, s.note]), [[info.id, 'admin', 'nightly']], 'list: id, by whom, note');
  const table = await runCli(['snapshots', 'list'], env);
  t.match(table.out, new RegExp(`${info.id}\\s+.*admin\\s+nightly`));

  const snapFile = join(tmp.path, 'hub.tsnap');
  const dl = await runCli(['snapshots', 'download', info.id, '--out', snapFile], env);
  t.equal(dl.code, 0, dl.err);
  t.equal(statSync(snapFile).mode & 0o777, 0o600, 'downloaded as 0600');
  t.equal(statSync(snapFile).size, Number(info.sizeBytes));
  const tooSmall = await runCli(['snapshots', 'download', info.id, '--out', join(tmp.path, 'x.tsnap'), '--max-size', '1k'], env);
  t.equal(tooSmall.code, 1);
  t.match(tooSmall.err, /over --max-size/);
  t.notOk(existsSync(join(tmp.path, 'x.tsnap')), 'nothing kept');
  const snapDir = hubPaths(dataDir).snapshots;
  t.equal(statSync(snapDir).mode & 0o777, 0o700);
  for (const f of readdirSync(snapDir)) t.equal(statSync(join(snapDir, f)).mode & 0o777, 0o600, `${f} is 0600`);
  t.notOk(readFileSync(join(snapDir, `${info.id}.tsnap`)).includes(Buffer.from(secret)), 'no secret in clear in the snapshot');
  t.notOk(readFileSync(join(snapDir, `${info.id}.tsnap`)).includes(Buffer.from('BEGIN')), 'no PEM key in clear');

  // After the snapshot: not in the restored hub.
  t.equal(await runCommand(admin, agentId, ['echo', 'after-snapshot']), 'after-snapshot\n');

  await stopHub(hub);
  await waitFor(() => agent.channel.state !== 'ready', 20_000, 'agent noticed the hub is gone');
  rmSync(dataDir, { recursive: true, force: true });

  // Refusals first: each leaves the data dir absent.
  const wrong = join(tmp.path, 'wrong');
  writeFileSync(wrong, 'a different passphrase entirely', { mode: 0o600 });
  const bad = await runCli(['snapshots', 'restore', snapFile, '--data', dataDir, '--passphrase-file', wrong]);
  t.equal(bad.code, 1);
  t.match(bad.err, /wrong passphrase.*TRELLIS_E_SNAPSHOT_INVALID/);
  t.notOk(existsSync(dataDir), 'wrong passphrase: nothing written');
  const bytes = readFileSync(snapFile);
  for (const at of [20, Math.floor(bytes.length / 2), bytes.length - 1]) {
    const tampered = Buffer.from(bytes);
    tampered[at]! ^= 0x40;
    const tf = join(tmp.path, `tampered-${at}.tsnap`);
    writeFileSync(tf, tampered);
    const r = await runCli(['snapshots', 'restore', tf, '--data', dataDir, '--passphrase-file', passFile]);
    t.equal(r.code, 1, `a byte changed at ${at}: refused`);
    t.match(r.err, /TRELLIS_E_SNAPSHOT_INVALID/);
    t.notOk(existsSync(dataDir), `byte ${at}: nothing written`);
  }
  const cut = join(tmp.path, 'cut.tsnap');
  writeFileSync(cut, bytes.subarray(0, bytes.length - 100));
  const rc = await runCli(['snapshots', 'restore', cut, '--data', dataDir, '--passphrase-file', passFile]);
  t.match(rc.err, /truncated|failed authentication/);
  t.notOk(existsSync(dataDir), 'truncated: nothing written');
  t.same(readdirSync(tmp.path).filter((f) => f.startsWith('.')), [], 'no temp directory left behind');

  const restored = await runCli(['snapshots', 'restore', snapFile, '--data', dataDir, '--passphrase-file', passFile, '--json']);
  t.equal(restored.code, 0, restored.err);
  const rj = JSON.parse(restored.out) as { documents: number; segments: number; keyVersions: number[] };
  t.equal(rj.documents, info.documents);
  t.same(rj.keyVersions, [1]);
  t.equal(statSync(dataDir).mode & 0o777, 0o700, 'data dir 0700');
  for (const f of ['ca-key.pem', 'hub-key.pem', 'keys/master-1.key', 'state.json']) t.equal(statSync(join(dataDir, f)).mode & 0o777, 0o600, `${f} 0600`);

  hub = await runHub(dataDir, ports, { logLevel: 'info' });
  await waitFor(() => agent.channel.state === 'ready', 30_000, 'the agent reconnected with its certificate');
  // The API key and login session were restored too: the same clients work.
  t.equal(await runCommand(admin, agentId, ['echo', 'after-restore']), 'after-restore\n', 'the agent runs commands from the restored hub');
  const got = await call<T.KvGetRequest, T.KvEntry__Output>(admin, admin.kv, admin.kv.Get, { key: 'db_password', scope: 'tenant', decrypt: true });
  t.equal(got.value, secret, 'the secret decrypts (same master key)');
  const kvCli = await runCli(['kv', 'get', 'db_password', '--decrypt'], { ...env, TRELLIS_TENANT: 'default' });
  t.equal(kvCli.out.trim(), secret, '`kv get --decrypt` works');
  const execs = (await listExecs(admin)).executions;
  const outputs = await Promise.all(execs.map(async (e) => Buffer.from((await call<T.GetExecutionRequest, T.ExecutionInfo__Output>(admin, admin.executions, admin.executions.GetExecution, { id: e.id })).output).toString()));
  t.ok(outputs.includes('before-snapshot\n'), 'the execution before the snapshot is in the history, with its output');
  t.notOk(outputs.includes('after-snapshot\n'), 'the one after the snapshot is not');
  const audit: T.AuditRecord__Output[] = [];
  await new Promise<void>((resolve, reject) => {
    const s = admin.audit.ListAudit({ limit: 1000 }, admin.metadata);
    s.on('data', (r: T.AuditRecord__Output) => audit.push(r));
    s.on('error', reject);
    s.on('end', resolve);
  });
  t.ok(audit.some((r) => r.method.endsWith('AdminKv/Set') && r.target.includes('db_password')), 'the audit log before the snapshot is intact');

  // A running hub holds the data dir: restore refuses, --force or not.
  const busy = await runCli(['snapshots', 'restore', snapFile, '--data', dataDir, '--passphrase-file', passFile, '--force']);
  t.equal(busy.code, 1);
  t.match(busy.err, /in use by "hub run" pid \d+.*stop that process first.*TRELLIS_E_LOCKED/, 'the data-dir lock names the running hub');
  t.ok(existsSync(join(dataDir, 'hub.lock')), 'and the running hub\'s lock is left alone');
  await stopHub(hub);
  const full = await runCli(['snapshots', 'restore', snapFile, '--data', dataDir, '--passphrase-file', passFile]);
  t.equal(full.code, 1);
  t.match(full.err, /is not empty.*--force.*TRELLIS_E_ALREADY_EXISTS/);
  const forced = await runCli(['snapshots', 'restore', snapFile, '--data', dataDir, '--passphrase-file', '-', '--force'], {}, `${PASSPHRASE}\n`);
  t.equal(forced.code, 0, forced.err);
  t.match(forced.out, /former content replaced/, 'the passphrase from standard input; --force replaces a stopped hub\'s data dir');
  t.match(forced.out, /repeat agent and API key revocations/, 'and says what a restore takes back');
});

t.test('only administrators create, list, download and delete snapshots; every mutation is audited without the passphrase', async (t) => {
  await using h = await startHub();
  await call(h.admin, h.admin.users, h.admin.users.CreateUser, { username: 'opal', password: 'a-long-enough-password-1', roles: ['user'], tenants: ['default'] });
  const u = adminClients(h.adminAddr, h.caPem, (await login(h, 'opal', 'a-long-enough-password-1')).token);
  t.teardown(() => u.close());
  const info = await call<T.CreateSnapshotRequest, T.SnapshotInfo__Output>(h.admin, h.admin.snapshots, h.admin.snapshots.CreateSnapshot, { passphrase: PASSPHRASE, note: 'n' }, 120_000);

  const download = (c: AdminClients, id: string) => new Promise<number>((resolve, reject) => {
    let n = 0;
    const s = c.snapshots.DownloadSnapshot({ id }, c.metadata);
    s.on('data', (m: T.SnapshotChunk__Output) => { n += m.data.length; });
    s.on('error', (e: grpc.ServiceError) => reject(fromGrpcError(e)));
    s.on('end', () => resolve(n));
  });
  const denied = async (what: string, p: Promise<unknown>) => t.equal(grpcCodeOf(await p.then(() => undefined, (e: unknown) => e)), grpc.status.PERMISSION_DENIED, `${what}: PERMISSION_DENIED for a user`);
  await denied('create', call(u, u.snapshots, u.snapshots.CreateSnapshot, { passphrase: PASSPHRASE, note: '' }));
  await denied('list', call(u, u.snapshots, u.snapshots.ListSnapshots, {}));
  await denied('download', download(u, info.id));
  await denied('delete', call(u, u.snapshots, u.snapshots.DeleteSnapshot, { id: info.id }));
  t.equal((await call<T.ListSnapshotsRequest, T.ListSnapshotsResponse__Output>(h.admin, h.admin.snapshots, h.admin.snapshots.ListSnapshots, {})).snapshots.length, 1, 'still there');
  t.equal(await download(h.admin, info.id), Number(info.sizeBytes), 'an administrator downloads it whole');

  const code = async (p: Promise<unknown>) => ((await p.then(() => undefined, (e: unknown) => e)) as { code?: string } | undefined)?.code;
  t.equal(await code(call(h.admin, h.admin.snapshots, h.admin.snapshots.CreateSnapshot, { passphrase: 'short', note: '' })), 'TRELLIS_E_INVALID_ARGUMENT', 'a short passphrase is refused');
  t.equal(await code(call(h.admin, h.admin.snapshots, h.admin.snapshots.DeleteSnapshot, { id: '../../hub' })), 'TRELLIS_E_INVALID_ARGUMENT', 'an id that is a path is refused');
  t.equal(await code(download(h.admin, '../state.json')), 'TRELLIS_E_INVALID_ARGUMENT');
  t.equal(await code(call(h.admin, h.admin.snapshots, h.admin.snapshots.DeleteSnapshot, { id: ulid().toLowerCase() })), 'TRELLIS_E_NOT_FOUND');

  // The keys a new hub of a cluster needs, read from the snapshot (authenticated whole first).
  const { files } = await readSnapshotFiles({ file: join(hubPaths(h.dataDir).snapshots, `${info.id}.tsnap`), passphrase: PASSPHRASE, want: (n) => n === 'ca-key.pem' || n.startsWith('keys/') });
  t.same([...files.keys()].sort(), ['ca-key.pem', 'keys/master-1.key']);
  t.ok(files.get('ca-key.pem')!.equals(readFileSync(hubPaths(h.dataDir).caKey)), 'the CA key');
  t.ok(files.get('keys/master-1.key')!.equals(readFileSync(join(h.dataDir, 'keys', 'master-1.key'))), 'the master key');
  t.equal(await code(readSnapshotFiles({ file: join(hubPaths(h.dataDir).snapshots, `${info.id}.tsnap`), passphrase: 'not the passphrase at all' })), 'TRELLIS_E_SNAPSHOT_INVALID');

  await call(h.admin, h.admin.snapshots, h.admin.snapshots.DeleteSnapshot, { id: info.id });
  t.same(readdirSync(hubPaths(h.dataDir).snapshots), [], 'both files gone');
  await h.hub.components.audit.flush();
  const records = await h.hub.components.audit.query({ methodContains: 'AdminSnapshots', limit: 100 });
  const ok = (m: string) => records.filter((r) => r.method.endsWith(m) && r.result === 'ok' && r.target === `snapshot:${info.id}`);
  t.equal(ok('CreateSnapshot').length, 1, 'create audited with the snapshot id');
  t.equal(ok('DeleteSnapshot').length, 1, 'delete audited');
  t.equal(ok('DownloadSnapshot').length, 1, 'download audited');
  t.ok(records.filter((r) => r.actor === 'opal').length >= 3, 'refused calls audited too');
  const everything = JSON.stringify(records) + h.logLines.join('\n') + readdirSync(join(h.dataDir, 'audit')).map((f) => readFileSync(join(h.dataDir, 'audit', f), 'utf8')).join('');
  t.notMatch(everything, PASSPHRASE, 'the passphrase is in no audit record or log line');
  t.notMatch(everything, 'short"', 'nor the refused one');
});

t.test('a snapshot taken while rules fire restores consistently: every execution names a stored rule and agent', async (t) => {
  await using h = await startHub();
  await install(h, [file('pack.yaml', 'name: ops\nversion: 1.0.0\ndescription: test pack\n'), markAction('append a line')]);
  const agent = await h.agent();
  const out = join(h.dir, 'flow.out');
  let stop = false;
  let fired = 0;
  // Rules are created one after another; each fires at once on an event for it.
  const flow = (async () => {
    for (let i = 0; !stop; i++) {
      await createRule(h, { name: `flow-${i}`, trigger: `core.flow${i}`, action: { ref: 'ops.mark', parameters: { msg: `flow ${i}`, out } } });
      h.hub.components.events.publish([{ id: ulid(), type: `core.flow${i}`, payload: Buffer.from('{}'), timeMs: Date.now(), agentId: agent.agentId!, tenant: 'default' }]);
      fired++;
    }
  })();
  await waitFor(() => readLines(out).length >= 3, 30_000, 'rules firing');
  const info = await call<T.CreateSnapshotRequest, T.SnapshotInfo__Output>(h.admin, h.admin.snapshots, h.admin.snapshots.CreateSnapshot, { passphrase: PASSPHRASE, note: '' }, 120_000);
  await waitFor(() => readLines(out).length >= fired - 1, 5_000, 'a few more after the snapshot').catch(() => undefined);
  stop = true;
  await flow;

  await using tmp = await tempDir('trellis-snap-restore-');
  const restored = join(tmp.path, 'hub');
  await restoreSnapshot({ file: join(hubPaths(h.dataDir).snapshots, `${info.id}.tsnap`), dataDir: restored, passphrase: PASSPHRASE });
  const store = await LowdbStore.open({ path: hubPaths(restored).store });
  const rules = new Set((await store.list('rules')).map((d) => d.id));
  const agents = new Set((await store.list('agents')).map((d) => d.id));
  await store.close();
  const lines = readdirSync(hubPaths(restored).executions).filter((f) => /^\d{12}\.jsonl$/.test(f))
    .flatMap((f) => readFileSync(join(hubPaths(restored).executions, f), 'utf8').split('\n').filter(Boolean))
    .map((l) => JSON.parse(l) as { r: { id: string; rule: string; agentId: string; tenant: string } });
  const ruled = lines.filter((l) => l.r.rule);
  t.ok(ruled.length >= 3, `executions from rules in the snapshot (${ruled.length} lines; ${fired} rules fired in all)`);
  const orphans = ruled.filter((l) => !rules.has(`${l.r.tenant}/${l.r.rule}`));
  t.same(orphans.map((l) => l.r.rule), [], 'every execution names a rule the restored store holds');
  t.same(lines.filter((l) => !agents.has(l.r.agentId)).map((l) => l.r.agentId), [], 'and an agent it holds');
  t.ok(rules.size < fired + 1, 'the flow went on after the snapshot (the restored store is a point in time)');
});
