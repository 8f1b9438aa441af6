/**
 * Executions in a cluster (issue 14 §2): two hubs on one throwaway PostgreSQL, a real agent on
 * hub A. A run requested on hub B runs on the agent on A, streams its output back on B, and its
 * record and output read the same from either hub (history lives in the database); `executions
 * follow` on B follows it live; a cancel through B reaches the process on A; the same
 * idempotency key requested on both hubs at once is one execution, run once (the UNIQUE index
 * decides); a literal secret parameter cannot be sent across hubs; `hub migrate --from-data`
 * copies a lowdb hub's execution history into the database.
 */
import t from 'tap';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import pg from 'pg';
import { startHub, waitFor, type TestHub } from './helpers/hub.js';
import { file, install, markAction, readLines, getExecution, unaryT } from './helpers/admin.js';
import { copyHubForJoin, postgresMissing, startPostgres } from './helpers/postgres.js';
import { needs } from './helpers/needs.js';
import { hubMigrate } from '../hub/migrate.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

interface Ran { started?: T.RunStarted__Output; finished?: T.RunFinished__Output; out: string; error?: Error }

function run(h: TestHub, agentId: string, argv: string[], onStarted?: (s: T.RunStarted__Output) => void): Promise<Ran> {
  const s = h.admin.runs.Run({ agentId, argv, timeoutMs: 60_000, env: {}, cwd: '', selector: {} }, h.admin.metadata) as grpc.ClientReadableStream<T.RunUpdate__Output>;
  const r: Ran = { out: '' };
  return new Promise((resolve) => {
    s.on('data', (u: T.RunUpdate__Output) => {
      if (u.started) { r.started = u.started; onStarted?.(u.started); }
      if (u.output) r.out += Buffer.from(u.output.data).toString();
      if (u.finished) r.finished = u.finished;
    });
    s.on('error', (e: Error) => { r.error = e; resolve(r); });
    s.on('end', () => resolve(r));
  });
}

function follow(h: TestHub, id: string): Promise<{ out: string; last?: T.ExecutionInfo__Output }> {
  const s = h.admin.executions.FollowExecution({ id }, h.admin.metadata) as grpc.ClientReadableStream<T.ExecutionUpdate__Output>;
  const r: { out: string; last?: T.ExecutionInfo__Output } = { out: '' };
  return new Promise((resolve, reject) => {
    s.on('data', (u: T.ExecutionUpdate__Output) => {
      if (u.state) r.last = u.state;
      if (u.output) r.out += Buffer.from(u.output.data).toString();
    });
    s.on('error', reject);
    s.on('end', () => resolve(r));
  });
}

void t.test('executions across two hubs on one PostgreSQL', needs(t, postgresMissing()), async (t) => {
  const server = await startPostgres();
  t.teardown(() => server.close());
  const url = await server.createDatabase('clexec');
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  t.teardown(() => db.end());
  const cluster = { heartbeatInterval: '1s', staleAfter: '5s' };
  const a = await startHub({ init: { storeUrl: url }, config: { cluster } });
  t.teardown(() => a.close());
  // Hub B: A's keys and settings (copied; none goes through the database), its own hub id and ports.
  const bDir = join(a.dir, 'hub-b');
  mkdirSync(bDir, { mode: 0o700 });
  // What `hub init --join` brings: the key files (keys/ too: the master key) and settings.
  copyHubForJoin(a.dataDir, bDir);
  const b = await startHub({ dataDir: bDir });
  t.teardown(() => b.close());
  const agent = await a.agent();
  const agentId = agent.agentId!;
  t.ok(a.hub.components.agents.link(agentId), 'the agent is attached to hub A');
  t.notOk(b.hub.components.agents.link(agentId), 'and not to hub B');
  await waitFor(() => b.hub.components.agents.isOnline(agentId), 15_000, 'B sees the agent online on A');

  await t.test('a run requested on B runs on the agent on A; output streams back on B; get and list answer on both hubs', async (t) => {
    const r = await run(b, agentId, ['sh', '-c', 'echo out-$0; echo err-$0 >&2', 'cross']);
    t.error(r.error);
    t.equal(r.finished?.status, 'succeeded', r.finished?.error ?? '');
    t.match(r.out, /out-cross/, 'B streamed the output of the run on A');
    const id = r.started!.executionId;
    const owner = await db.query('SELECT owner_hub, status FROM trellis_executions WHERE id = $1', [id]);
    t.equal(owner.rows[0]?.owner_hub, a.hub.bus!.hubId, 'hub A (holding the agent) claimed and ran it');
    for (const [name, h] of [['A', a], ['B', b]] as const) {
      const rec = await getExecution(h, id);
      t.equal(rec.status, 'succeeded', `${name}: status`);
      t.match(rec.output.toString(), /out-cross/, `${name}: stdout`);
      t.match(rec.output.toString(), /err-cross/, `${name}: stderr`);
      const list = await unaryT<T.ListExecutionsRequest, T.ListExecutionsResponse__Output>(h, h.admin.executions, h.admin.executions.ListExecutions, { limit: 10, agentId } as T.ListExecutionsRequest);
      t.ok(list.executions.some((x) => x.id === id && x.status === 'succeeded'), `${name} lists it`);
      const count = await unaryT<T.CountExecutionsRequest, T.CountExecutionsResponse__Output>(h, h.admin.executions, h.admin.executions.CountExecutions, { agentId, sinceMs: Date.now() - 3_600_000 } as T.CountExecutionsRequest);
      t.equal(Number(count.byStatus.succeeded), list.executions.filter((x) => x.status === 'succeeded').length, `${name} counts it, from the table (CountExecutions)`);
      t.equal(Number(count.total), list.executions.length);
    }
    const missing = await getExecution(b, '01jzzzzzzzzzzzzzzzzzzzzzzz').then(() => 'found', (e: { code?: number; details?: string }) => e.details ?? String(e.code));
    t.match(missing, /no execution/, 'an unknown id is NOT_FOUND on B');
  });

  await t.test('executions follow on B follows a run on A as it happens', async (t) => {
    let started!: (id: string) => void;
    const id = new Promise<string>((resolve) => { started = resolve; });
    const r = run(a, agentId, ['sh', '-c', 'echo first; sleep 1.5; echo second'], (s) => started(s.executionId));
    const f = await follow(b, await id);
    t.equal(f.last?.status, 'succeeded');
    t.match(f.out, /first\nsecond/, 'both lines, once each');
    t.equal(f.out.match(/second/g)?.length, 1);
    await r;
  });

  await t.test('a cancel through B stops the process on A', async (t) => {
    let started!: (id: string) => void;
    const idP = new Promise<string>((resolve) => { started = resolve; });
    const r = run(b, agentId, ['sh', '-c', 'echo begun; sleep 60; echo never'], (s) => started(s.executionId));
    const id = await idP;
    await waitFor(async () => (await getExecution(b, id)).status === 'running', 20_000, 'running on A');
    const c = await unaryT<T.CancelExecutionRequest, T.ExecutionInfo__Output>(b, b.admin.executions, b.admin.executions.CancelExecution, { id });
    t.ok(['running', 'canceled'].includes(c.status), `cancel answered ${c.status}`);
    const done = await r;
    t.equal(done.finished?.status, 'canceled', 'the run on B ends canceled');
    t.notMatch(done.out, /never/);
    t.equal((await getExecution(a, id)).status, 'canceled', 'A recorded it');
  });

  await t.test('one idempotency key requested on both hubs at once is one execution, run once', async (t) => {
    await install(a, [file('pack.yaml', 'name: ops\nversion: 1.0.0\ndescription: test pack\n'), markAction('append a line')]);
    const action = a.hub.components.packs.action('default', 'ops.mark')!;
    t.ok(action);
    const out = join(a.dir, 'marks');
    const req = (h: TestHub) => h.hub.components.executions.request({
      tenant: 'default', action, agentIds: [agentId], parameters: { msg: 'once', out }, requestedBy: 'rule:ops.twice', rule: 'ops.twice',
      triggerEventId: 'ev-1', dedupKey: (ag) => `ops.twice|ev-1|${ag}`, kvCaller: { username: 'rule:ops.twice', isAdmin: false },
    });
    for (let round = 0; round < 5; round++) { // concurrent requests: the database picks one
      const key = `ops.twice|ev-r${round}|${agentId}`;
      const reqR = (h: TestHub) => h.hub.components.executions.request({
        tenant: 'default', action, agentIds: [agentId], parameters: { msg: `r${round}`, out }, requestedBy: 'rule:ops.twice', rule: 'ops.twice',
        triggerEventId: `ev-r${round}`, dedupKey: () => key, kvCaller: { username: 'rule:ops.twice', isAdmin: false },
      });
      const [x, y] = await Promise.all([reqR(a), reqR(b)]);
      t.equal(x[0]!.id, y[0]!.id, `round ${round}: both hubs return the same execution`);
      const n = await db.query('SELECT count(*)::int AS n FROM trellis_executions WHERE dedup_key = $1', [key]);
      t.equal(n.rows[0]!.n, 1, `round ${round}: one row`);
    }
    const [first] = await req(a);
    // The event re-delivered to B later (the agent failed over): the earlier execution, not a new run.
    const [again] = await req(b);
    t.equal(again!.id, first!.id, 're-delivered on the other hub: the earlier execution');
    await waitFor(async () => (await getExecution(a, first!.id)).status === 'succeeded', 20_000, 'the marked run');
    await waitFor(async () => readLines(out).length >= 6, 20_000, 'six marks');
    await new Promise((r) => setTimeout(r, 500));
    const lines = readLines(out);
    t.equal(lines.filter((l) => l === 'once').length, 1, 'the action ran once for the re-delivered key');
    for (let round = 0; round < 5; round++) t.equal(lines.filter((l) => l === `r${round}`).length, 1, `round ${round} ran once`);
  });

  await t.test('a literal secret parameter is not sent across hubs (history does not keep it)', async (t) => {
    const spec = { ref: 'ops.secretive', pack: 'ops', name: 'secretive', description: '', runner: 'command' as const, command: ['true'], parameters: { pw: { type: 'string' as const, secret: true } }, timeoutMs: 10_000, env: {} };
    const e = await b.hub.components.executions.request({
      tenant: 'default', action: spec as never, agentIds: [agentId], parameters: { pw: 'literal-secret-value' }, requestedBy: 'admin',
    }).then(() => undefined, (err: Error & { code?: string }) => err);
    t.equal(e?.code, 'TRELLIS_E_INVALID_ARGUMENT');
    t.notMatch(e?.message ?? '', /literal-secret-value/, 'the value is not echoed');
    const n = await db.query(`SELECT count(*)::int AS n FROM trellis_executions WHERE action = 'ops.secretive'`);
    t.equal(n.rows[0]!.n, 0, 'nothing was recorded');
  });

  await t.test('an execution waiting for an agent attached to no hub is canceled in the database; one whose announcement was missed is claimed by the sweep', async (t) => {
    const offline = '01jzzzzzzzzzzzzzzzzzzzzzz0';
    const [w] = await b.hub.components.executions.runCommand({ tenant: 'default', agentIds: [offline], argv: ['true'], env: {}, cwd: '', timeoutMs: 10_000, requestedBy: 'admin' });
    const row = await db.query('SELECT owner_hub, status FROM trellis_executions WHERE id = $1', [w!.id]);
    t.same(row.rows[0], { owner_hub: null, status: 'requested' }, 'no hub holds the agent: no owner');
    const c = await unaryT<T.CancelExecutionRequest, T.ExecutionInfo__Output>(a, a.admin.executions, a.admin.executions.CancelExecution, { id: w!.id });
    t.equal(c.status, 'canceled', 'canceled through A at once, in the database');
    t.match(c.error, /before it was sent/);
    t.equal((await getExecution(b, w!.id)).status, 'canceled', 'B reads it canceled');

    // A row written as another hub would, whose bus message never came: the sweep of the hub holding the agent claims it.
    const id = '01jzzzzzzzzzzzzzzzzzzzzzz1';
    const rec = {
      id, tenant: 'default', action: 'core.command', agentId, status: 'requested', exitCode: 0, error: '', requestedBy: 'admin', rule: '', triggerEventId: '',
      parameters: { argv: ['sh', '-c', 'echo swept'], env: {}, cwd: '', timeoutMs: 10_000 }, requestedMs: Date.now(), startedMs: 0, finishedMs: 0, edge: false, outputBytes: 0, outputTruncated: false,
    };
    await db.query(`INSERT INTO trellis_executions (id, tenant, agent, action, status, requested_ms, record, kv_caller, timeout_ms)
      VALUES ($1, 'default', $2, 'core.command', 'requested', $3, $4::json, '{"username":"admin","isAdmin":true}', 10000)`, [id, agentId, rec.requestedMs, JSON.stringify(rec)]);
    await waitFor(async () => (await getExecution(b, id)).status === 'succeeded', 30_000, 'the swept execution ran');
    t.match((await getExecution(b, id)).output.toString(), /swept/);
    const owner = await db.query('SELECT owner_hub FROM trellis_executions WHERE id = $1', [id]);
    t.equal(owner.rows[0]?.owner_hub, a.hub.bus!.hubId, 'claimed by A');
  });

  await t.test('hub migrate --from-data copies the execution history of a lowdb hub into PostgreSQL', async (t) => {
    const h = await startHub();
    t.teardown(() => h.close());
    const x = h.hub.components.executions;
    const now = Date.now();
    const id = '01j0edge0000000000000000mg';
    const p = {
      executionId: id, rule: 'demo.heal', action: 'demo.echo', triggerEventId: 'ev-mig', parameters: { msg: 'moved' },
      status: 'succeeded' as const, exitCode: 0, error: '', startedMs: now - 10, finishedMs: now, output: 'moved-output\n', outputTruncated: false,
    };
    t.ok(x.recordEdge('agent-mig', 'default', 'e-mig', p, { action: 'demo.echo', createdMs: 0 }), 'an execution in the file history');
    await h.stop();
    const target = await server.createDatabase('migrated');
    const r = await hubMigrate({ fromData: h.dataDir, storeUrl: target });
    t.equal(r.copied?.history?.executions, 1, 'one execution copied');
    t.equal(r.copied?.history?.outputChunks, 1, 'with its output');
    await h.restart();
    const rec = await getExecution(h, id);
    t.equal(rec.status, 'succeeded', 'the moved hub (now on PostgreSQL) reads it');
    t.equal(rec.output.toString(), 'moved-output\n');
  });
});
