/**
 * Executions end to end (hub/executions, AdminExecutions, `trellis run PACK.ACTION`): a real hub,
 * real agents running real child processes, a real pack installed in the hub. Lifecycle as a
 * follower sees it, per-agent concurrency, cancel, timeout, abandoned executions, history that
 * survives a restart with retention by count and age, idempotency across a restart, permissions
 * at the action's scope, tenant isolation, and a planted secret that reaches no file, log or output.
 */
import t, { type Test } from 'tap';
import { RESULT_OUTPUT_MAX_CHUNKS } from '../common/features.js';
import * as grpc from '@grpc/grpc-js';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ADMIN_PASSWORD, startHub, tempDir, waitFor, login, type TestHub } from './helpers/hub.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import { writeProfile } from '../cli/profile.js';
import { CODE_KEY } from '../common/grpc-errors.js';
import type { ActionDef } from '../common/automation/types.js';
import type { ExecutionRecord } from '../hub/executions/index.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const PW = 'a-long-enough-password-1';
const BIN = fileURLToPath(new URL('../../bin/trellis.js', import.meta.url));
const enc = (s: string) => Buffer.from(s, 'utf8');

/** The pack every test installs: plain output and exit codes, a sleeper that records its grandchild, a short timeout, a secret in env. */
const DEMO = [
  { path: 'pack.yaml', content: enc('name: demo\nversion: 1.0.0\ndescription: test actions\n'), mode: 0o644 },
  {
    path: 'actions/echo.yaml', mode: 0o644, content: enc(`name: echo
runner: command
command: ['sh', '-c', 'echo "$1"; echo "err-$1" >&2; exit "$2"', 'sh', '{{ msg }}', '{{ code }}']
timeout: 60s
parameters:
  msg: { type: string, required: true }
  code: { type: integer, default: 0 }
`),
  },
  {
    path: 'actions/sleep.yaml', mode: 0o644, content: enc(`name: sleep
runner: command
command: ['sh', '-c', 'echo started; sleep "$1" & echo $! > "$2"; wait', 'sh', '{{ seconds }}', '{{ pidfile }}']
timeout: 120s
parameters:
  seconds: { type: integer, default: 30 }
  pidfile: { type: string, default: /dev/null }
`),
  },
  {
    path: 'actions/slow.yaml', mode: 0o644, content: enc(`name: slow
runner: command
command: ['sleep', '30']
timeout: 1s
`),
  },
  {
    path: 'actions/secret.yaml', mode: 0o644, content: enc(`name: secret
runner: command
command: ['sh', '-c', 'echo "token=$TOKEN"']
timeout: 60s
env:
  TOKEN: '{{ token }}'
  PIN: '{{ pin }}'
parameters:
  token: { type: string, secret: true, required: true }
  pin: { type: integer, secret: true }
`),
  },
];
const OTHER = [
  { path: 'pack.yaml', content: enc('name: other\nversion: 1.0.0\n'), mode: 0o644 },
  { path: 'actions/noop.yaml', content: enc('name: noop\nrunner: command\ncommand: [\'true\']\ntimeout: 60s\n'), mode: 0o644 },
];

async function install(h: TestHub, tenant = 'default'): Promise<void> {
  await h.hub.components.packs.install(tenant, DEMO, { by: 'test' });
  await h.hub.components.packs.install(tenant, OTHER, { by: 'test' });
}

const action = (h: TestHub, ref: string, tenant = 'default'): ActionDef => h.hub.components.packs.action(tenant, ref)!;

async function clientsFor(t: Test, h: TestHub, username: string, tenant: string, password = PW): Promise<AdminClients> {
  const r = await login(h, username, password);
  const c = adminClients(h.adminAddr, h.caPem, r.token, tenant);
  t.teardown(() => c.close());
  return c;
}

interface Streamed { states: T.ExecutionInfo__Output[]; stdout: string; stderr: string; error?: grpc.ServiceError }

function collect(stream: grpc.ClientReadableStream<T.ExecutionUpdate__Output>, onState?: (i: T.ExecutionInfo__Output) => void): Promise<Streamed> {
  const r: Streamed = { states: [], stdout: '', stderr: '' };
  return new Promise((resolve) => {
    stream.on('data', (u: T.ExecutionUpdate__Output) => {
      if (u.state) { r.states.push(u.state); onState?.(u.state); }
      if (u.output) { if (u.output.stream === 'STDERR') r.stderr += Buffer.from(u.output.data).toString(); else r.stdout += Buffer.from(u.output.data).toString(); }
    });
    let settled = false;
    const settle = (e?: grpc.ServiceError) => { if (!settled) { settled = true; r.error = e; resolve(r); } };
    stream.on('error', settle);
    stream.on('end', () => settle());
  });
}

const runAction = (c: AdminClients, req: Partial<T.RunActionRequest>, onState?: (i: T.ExecutionInfo__Output) => void) =>
  collect(c.executions.RunAction({ follow: true, selector: {}, parameters: {}, ...req }, c.metadata) as grpc.ClientReadableStream<T.ExecutionUpdate__Output>, onState);
const followExecution = (c: AdminClients, id: string) =>
  collect(c.executions.FollowExecution({ id }, c.metadata) as grpc.ClientReadableStream<T.ExecutionUpdate__Output>);
const getExecution = (c: AdminClients, id: string) => call<T.GetExecutionRequest, T.ExecutionInfo__Output>(c, c.executions, c.executions.GetExecution, { id });
const listExecutions = (c: AdminClients, req: Partial<T.ListExecutionsRequest> = {}) =>
  call<T.ListExecutionsRequest, T.ListExecutionsResponse__Output>(c, c.executions, c.executions.ListExecutions, { limit: 0, ...req }).then((r) => r.executions);
const cancelExecution = (c: AdminClients, id: string) => call<T.CancelExecutionRequest, T.ExecutionInfo__Output>(c, c.executions, c.executions.CancelExecution, { id });

async function codeOf(p: Promise<unknown>): Promise<string> {
  try { await p; return 'OK'; } catch (e) { return (e as { code?: string }).code ?? String(e); }
}

/** True once the process no longer runs (a zombie left to a non-reaping init counts as gone). */
function isGone(pid: number): boolean {
  try { process.kill(pid, 0); } catch (e) { return (e as NodeJS.ErrnoException).code === 'ESRCH'; }
  try { return /^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8')); } catch { return true; }
}

async function readPid(file: string): Promise<number> {
  await waitFor(() => existsSync(file) && /^\d+\n/.test(readFileSync(file, 'utf8')), 10_000, `pid in ${file}`);
  return Number(readFileSync(file, 'utf8').trim());
}

function historyFiles(h: TestHub): string[] {
  const dir = join(h.dataDir, 'executions');
  return readdirSync(dir).map((n) => join(dir, n));
}

/** Output lines, sorted: stdout and stderr arrive on separate pipes, so their interleaving is not fixed. */
const lines = (b: Buffer) => b.toString().split('\n').filter(Boolean).sort();

const statusOf = async (h: TestHub, id: string) => (await h.hub.components.executions.get('*', id)).status;

// ---------------------------------------------------------------- one hub, default limits

t.test('executions on one hub with default limits', async (t) => {
  const h = await startHub({ config: { executions: { abandonGrace: '2s', reconnectGrace: '1s' } } });
  t.teardown(() => h.close());
  await install(h);
  const { dataDir, agentId } = await h.enroll();
  await h.agent({ dataDir });
  const admin = await clientsFor(t, h, 'admin', 'default', ADMIN_PASSWORD);

  await t.test('a follower sees requested, scheduled, running and succeeded in that order, with the output and the exit code', async (t) => {
    const r = await runAction(admin, { action: 'demo.echo', agentId, parameters: { msg: 'hello', code: '0' } });
    t.equal(r.error, undefined);
    t.same(r.states.map((s) => s.status), ['requested', 'scheduled', 'running', 'succeeded']);
    t.equal(r.stdout, 'hello\n', 'stdout live on its own stream');
    t.equal(r.stderr, 'err-hello\n', 'stderr on its own stream');
    const last = r.states.at(-1)!;
    t.equal(last.exitCode, 0);
    t.equal(last.action, 'demo.echo');
    t.equal(last.agentId, agentId);
    t.equal(last.requestedBy, 'admin');
    t.ok(Number(last.startedMs) >= Number(last.requestedMs) && Number(last.finishedMs) >= Number(last.startedMs), 'times in order');
    t.same(JSON.parse(last.parametersJson.toString()), { msg: 'hello', code: '0' }, 'parameters as given');

    const failed = await runAction(admin, { action: 'demo.echo', agentId, parameters: { msg: 'x', code: '3' } });
    t.equal(failed.states.at(-1)!.status, 'failed');
    t.equal(failed.states.at(-1)!.exitCode, 3, 'the remote exit code');

    // A late follower gets what exists (record, then stored output) and the end.
    const replay = await followExecution(admin, last.id);
    t.same(replay.states.map((s) => s.status), ['succeeded']);
    t.equal(replay.stdout, 'hello\n');
    const shown = await getExecution(admin, last.id);
    t.same(lines(shown.output), ['err-hello', 'hello'], 'show returns the stored output (stdout and stderr as received)');
    t.equal(shown.outputTruncated, false);
  });

  await t.test('following a running execution replays its output so far, then streams the rest live', async (t) => {
    await using dir = await tempDir();
    const pidFile = join(dir.path, 'pid');
    const run = runAction(admin, { action: 'demo.sleep', agentId, parameters: { seconds: '300', pidfile: pidFile }, follow: false });
    const first = (await run).states[0]!;
    t.ok(['requested', 'scheduled'].includes(first.status), `without follow: one update per execution, the record once requested (${first.status})`);
    const pid = await readPid(pidFile);
    await waitFor(async () => (await statusOf(h, first.id)) === 'running', 5000, 'running');
    const f = followExecution(admin, first.id);
    await waitFor(async () => (await getExecution(admin, first.id)).output.toString() === 'started\n', 5000, 'output stored');
    const canceled = await cancelExecution(admin, first.id);
    t.ok(['running', 'canceled'].includes(canceled.status), `cancel returns the record (${canceled.status})`);
    const r = await f;
    t.equal(r.stdout, 'started\n', 'the output before the follow, once');
    t.same(r.states.map((s) => s.status), ['running', 'canceled'], 'then the end, live');
    await waitFor(() => isGone(pid), 10_000, `grandchild ${pid} gone`);
    t.ok(isGone(pid), 'cancel killed the process group (the backgrounded sleep too)');
  });

  await t.test('an action that overruns its timeout ends with status timeout', async (t) => {
    const started = Date.now();
    const r = await runAction(admin, { action: 'demo.slow', agentId });
    t.equal(r.states.at(-1)!.status, 'timeout');
    t.match(r.states.at(-1)!.error, /timed out/);
    t.ok(Date.now() - started < 15_000, 'ended soon after its 1s timeout');
  });

  await t.test('an execution for an offline agent waits as requested and runs when the agent connects', async (t) => {
    const late = await h.enroll();
    const r = runAction(admin, { action: 'demo.echo', agentId: late.agentId, parameters: { msg: 'late' } });
    await waitFor(async () => (await listExecutions(admin, { agentId: late.agentId })).length === 1, 5000, 'requested');
    const [waiting] = await listExecutions(admin, { agentId: late.agentId });
    t.equal(waiting!.status, 'requested', 'waits for the agent');
    await h.agent({ dataDir: late.dataDir });
    const done = await r;
    t.same(done.states.map((s) => s.status), ['requested', 'scheduled', 'running', 'succeeded']);
    t.equal(done.stdout, 'late\n');
  });

  await t.test('bad requests are refused with codes naming the problem', async (t) => {
    const bad = async (req: Partial<T.RunActionRequest>) => {
      const r = await runAction(admin, req);
      return `${r.error?.metadata.get(CODE_KEY)[0]}: ${r.error?.details}`;
    };
    t.match(await bad({ action: 'demo.echo', agentId, parameters: { nope: '1', msg: 'x' } }), /^TRELLIS_E_INVALID_ARGUMENT: .*nope/);
    t.match(await bad({ action: 'demo.echo', agentId }), /^TRELLIS_E_INVALID_ARGUMENT: .*msg.*required/);
    t.match(await bad({ action: 'demo.echo', agentId, parameters: { msg: 'x', code: 'three' } }), /^TRELLIS_E_INVALID_ARGUMENT: .*code/);
    t.match(await bad({ action: 'demo.missing', agentId }), /^TRELLIS_E_NOT_FOUND: no action demo.missing/);
    t.match(await bad({ action: 'not an action', agentId }), /^TRELLIS_E_INVALID_ARGUMENT/);
    t.match(await bad({ action: 'demo.echo', parameters: { msg: 'x' } }), /^TRELLIS_E_INVALID_ARGUMENT: name a target/);
    t.match(await bad({ action: 'demo.echo', agentId: 'no-such-agent', parameters: { msg: 'x' } }), /^TRELLIS_E_NOT_FOUND/);
    t.match(await bad({ action: 'demo.echo', agentId, parameters: { msg: 'x'.repeat(70_000) } }), /^TRELLIS_E_TOO_LARGE/);
    t.equal(await codeOf(listExecutions(admin, { status: 'sleeping' })), 'TRELLIS_E_INVALID_ARGUMENT');
    t.equal(await codeOf(getExecution(admin, 'nope')), 'TRELLIS_E_NOT_FOUND');
  });

  await t.test('actions:execute is checked at the action\'s scope: a pack grant runs that pack only, no grant runs nothing', async (t) => {
    await call(h.admin, h.admin.roles, h.admin.roles.CreateRole, {
      name: 'demo-runner', description: '', grants: [{ permission: 'actions:execute', scope: 'pack:demo' }, { permission: 'executions:read', scope: '' }],
    });
    await call(h.admin, h.admin.users, h.admin.users.CreateUser, { username: 'pu', password: PW, roles: ['demo-runner'], tenants: ['default'] });
    await call(h.admin, h.admin.users, h.admin.users.CreateUser, { username: 'ob', password: PW, roles: ['observer'], tenants: ['default'] });
    const pu = await clientsFor(t, h, 'pu', 'default');
    const ob = await clientsFor(t, h, 'ob', 'default');

    const denied = await runAction(ob, { action: 'demo.echo', agentId, parameters: { msg: 'x' } });
    t.equal(denied.error?.code, grpc.status.PERMISSION_DENIED, 'no actions:execute: PERMISSION_DENIED');
    t.same(denied.states, [], 'nothing ran');

    const ok = await runAction(pu, { action: 'demo.echo', agentId, parameters: { msg: 'scoped' } });
    t.equal(ok.error, undefined, 'a pack-scoped grant runs an action of that pack');
    t.equal(ok.states.at(-1)!.status, 'succeeded');
    t.equal(ok.stdout, 'scoped\n');

    const other = await runAction(pu, { action: 'other.noop', agentId });
    t.equal(other.error?.code, grpc.status.PERMISSION_DENIED, 'but not an action of another pack');
    t.match(other.error?.details, /actions:execute on action other\.noop/);

    const refs = await runAction(pu, { action: 'demo.echo', agentId, parameters: { msg: '{{ kv.anything }}' } });
    t.equal(refs.error?.code, grpc.status.PERMISSION_DENIED, 'references in parameters need kv:read');
    t.match(refs.error?.details, /kv:read/);

    t.equal(await codeOf(cancelExecution(pu, ok.states[0]!.id)), 'TRELLIS_E_PERMISSION_DENIED', 'cancel needs executions:cancel');
    const rerun = await collect(ob.executions.RerunExecution({ id: ok.states[0]!.id, follow: true }, ob.metadata) as grpc.ClientReadableStream<T.ExecutionUpdate__Output>);
    t.equal(rerun.error?.code, grpc.status.PERMISSION_DENIED, 're-run needs executions:cancel');
  });

  await t.test('another tenant\'s executions do not exist for the caller', async (t) => {
    await call(h.admin, h.admin.tenants, h.admin.tenants.CreateTenant, { name: 'blue', description: '' });
    await call(h.admin, h.admin.users, h.admin.users.CreateUser, { username: 'bu', password: PW, roles: ['user'], tenants: ['blue'] });
    const bu = await clientsFor(t, h, 'bu', 'blue');
    const [mine] = await listExecutions(admin, { action: 'demo.echo', limit: 1 });
    t.ok(mine, 'an execution in tenant default');
    t.equal(await codeOf(getExecution(bu, mine!.id)), 'TRELLIS_E_NOT_FOUND', 'get: NOT_FOUND');
    t.equal(await codeOf(cancelExecution(bu, mine!.id)), 'TRELLIS_E_NOT_FOUND', 'cancel: NOT_FOUND');
    t.equal((await followExecution(bu, mine!.id)).error?.code, grpc.status.NOT_FOUND, 'follow: NOT_FOUND');
    const rerun = await collect(bu.executions.RerunExecution({ id: mine!.id, follow: true }, bu.metadata) as grpc.ClientReadableStream<T.ExecutionUpdate__Output>);
    t.equal(rerun.error?.code, grpc.status.NOT_FOUND, 'rerun: NOT_FOUND');
    t.same(await listExecutions(bu), [], 'list: nothing');
    const run = await runAction(bu, { action: 'demo.echo', agentId, parameters: { msg: 'x' } });
    t.equal(run.error?.code, grpc.status.NOT_FOUND, 'their agent does not exist either');
    t.ok((await listExecutions(h.admin, { limit: 1000 })).some((e) => e.id === mine!.id), 'an administrator reading `*` sees every tenant');
  });

  await t.test('a planted secret reaches the process but no history file, no log line and no execution output', async (t) => {
    const planted = 'planted-secret-Q7x9-zz';
    const literal = 'planted-literal-W4k2-yy';
    await call(admin, admin.kv, admin.kv.Set, { key: 'tok', value: planted, secret: true, ttlMs: 0, scope: '', private: false });
    const ref = await runAction(admin, { action: 'demo.secret', agentId, parameters: { token: '{{ secret.tok }}' } });
    t.equal(ref.states.at(-1)!.status, 'succeeded');
    t.match(ref.stdout, /^token=\S+\n$/, 'the process had a value');
    t.notOk(ref.stdout.includes(planted), 'masked in the live output');
    const lit = await runAction(admin, { action: 'demo.secret', agentId, parameters: { token: literal } });
    t.equal(lit.states.at(-1)!.status, 'succeeded');
    t.notOk(lit.stdout.includes(literal), 'a literal secret parameter is masked too');
    t.same(JSON.parse(lit.states.at(-1)!.parametersJson.toString()), { token: '[REDACTED]' }, 'history keeps no literal secret parameter');
    t.same(JSON.parse(ref.states.at(-1)!.parametersJson.toString()), { token: '{{ secret.tok }}' }, 'and keeps references as given');
    for (const id of [ref.states[0]!.id, lit.states[0]!.id]) {
      const shown = await getExecution(admin, id);
      t.notOk(shown.output.toString().includes(planted) || shown.output.toString().includes(literal), 'not in the stored output');
    }
    await h.hub.components.executions.get('*', ref.states[0]!.id); // flushes history
    for (const f of historyFiles(h)) {
      const text = readFileSync(f, 'utf8');
      t.notOk(text.includes(planted) || text.includes(literal), `not in ${f}`);
      t.notOk(text.includes(Buffer.from(planted).toString('base64').slice(0, 20)), `not base64 in ${f}`);
      t.equal(statSync(f).mode & 0o777, 0o600, `${f} is 0600`);
    }
    t.equal(statSync(join(h.dataDir, 'executions')).mode & 0o777, 0o700, 'the history directory is 0700');
    const typo = 'planted-pin-not-a-number-K8';
    const bad = await runAction(admin, { action: 'demo.secret', agentId, parameters: { token: 'x', pin: typo } });
    t.equal(bad.error?.code, grpc.status.INVALID_ARGUMENT, 'a secret parameter of the wrong type is refused');
    t.match(bad.error?.details, /pin/);
    t.notOk(bad.error?.details.includes(typo), 'without quoting its value back');
    const logs = h.logLines.join('\n');
    t.notOk(logs.includes(typo), 'nor logging it');
    t.notOk(logs.includes(planted) || logs.includes(literal), 'not in the hub log');
    const agentLogs = h.agentLogLines().join('\n');
    t.ok(agentLogs.length > 0, 'the agent logged to its file');
    t.notOk(agentLogs.includes(typo), 'nor in the agent log');
    t.notOk(agentLogs.includes(planted) || agentLogs.includes(literal), 'not in the agent log');
    const rerun = await collect(admin.executions.RerunExecution({ id: lit.states[0]!.id, follow: true }, admin.metadata) as grpc.ClientReadableStream<T.ExecutionUpdate__Output>);
    t.equal(rerun.error?.code, grpc.status.INVALID_ARGUMENT, 'a literal secret is not kept, so that run cannot be re-run');
    const again = await collect(admin.executions.RerunExecution({ id: ref.states[0]!.id, follow: true }, admin.metadata) as grpc.ClientReadableStream<T.ExecutionUpdate__Output>);
    t.equal(again.states.at(-1)?.status, 'succeeded', 'a run with a reference re-runs, resolving it anew');
    t.not(again.states[0]!.id, ref.states[0]!.id, 'as a new execution');
  });

  await t.test('ad-hoc `trellis run -- CMD` runs are executions of core.command, in history', async (t) => {
    const s = h.admin.runs.Run({ agentId, argv: ['echo', 'adhoc'], timeoutMs: 10_000, env: {}, cwd: '', selector: {} }, h.admin.metadata);
    const finished = await new Promise<T.RunFinished__Output>((resolve, reject) => {
      s.on('data', (u: T.RunUpdate__Output) => { if (u.finished) resolve(u.finished); });
      s.on('error', reject);
    });
    t.equal(finished.status, 'succeeded');
    const rec = await getExecution(admin, finished.executionId);
    t.equal(rec.action, 'core.command');
    t.equal(rec.output.toString(), 'adhoc\n');
    t.same(JSON.parse(rec.parametersJson.toString()).argv, ['echo', 'adhoc']);
  });

  await t.test('an edge execution reported by the agent is recorded once, with its output', async (t) => {
    const x = h.hub.components.executions;
    const p = {
      executionId: '01J0EDGE0000000000000000AA'.toLowerCase(), rule: 'demo.heal', action: 'demo.echo', triggerEventId: 'ev1', parameters: { msg: 'edge' },
      status: 'succeeded' as const, exitCode: 0, error: '', startedMs: Date.now() - 10, finishedMs: Date.now(), output: 'edge\n', outputTruncated: false,
    };
    const sent = { action: 'demo.echo', createdMs: 0 }; // what the hub sent the agent for demo.heal
    t.ok(x.recordEdge(agentId, 'default', 'e1', p, sent));
    t.notOk(x.recordEdge(agentId, 'default', 'e1', { ...p, output: 'again\n' }, sent));
    const r = await x.get('default', p.executionId.toLowerCase());
    t.equal(r.edge, true);
    t.equal(r.requestedBy, `agent:${agentId}`);
    t.equal(r.output.toString(), 'edge\n', 'a re-delivered event changes nothing');
    t.equal((await x.list('default', { rule: 'demo.heal' })).length, 1);
  });

  await t.test('the trellis CLI runs PACK.ACTION with parameters, prints output live and exits with the remote exit code', async (t) => {
    await using home = await tempDir();
    const r = await login(h, 'admin', ADMIN_PASSWORD);
    const env = { ...process.env, TRELLIS_HOME: home.path, TRELLIS_API_KEY: '', TRELLIS_TENANT: '' };
    await writeProfile({ hub: h.adminAddr, caPem: h.caPem, username: 'admin', token: r.token, expiresAtMs: r.expiresAtMs, tenant: 'default' }, env);
    const cli = async (args: string[]) => {
      const c = spawn(process.execPath, [BIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '', stderr = '';
      c.stdout.on('data', (d: Buffer) => { stdout += d; });
      c.stderr.on('data', (d: Buffer) => { stderr += d; });
      const code = await new Promise<number | null>((resolve) => c.on('close', resolve));
      return { code, stdout, stderr };
    };
    const run = await cli(['run', 'demo.echo', '--agent', agentId, 'msg=from-cli', 'code=4']);
    t.equal(run.stdout, 'from-cli\n', 'stdout carries the remote stdout');
    t.match(run.stderr, /^err-from-cli\n/, 'stderr the remote stderr, then the status line');
    t.match(run.stderr, /failed .*exit 4/);
    t.equal(run.code, 4, 'the remote exit code');
    const list = await cli(['executions', 'list', '--action', 'demo.echo', '--json', '--limit', '1']);
    t.equal(list.code, 0, list.stderr);
    const [last] = JSON.parse(list.stdout) as { id: string; status: string; parameters: unknown }[];
    t.equal(last!.status, 'failed');
    t.same(last!.parameters, { msg: 'from-cli', code: '4' });
    const show = await cli(['executions', 'show', last!.id]);
    t.equal(show.code, 0, show.stderr);
    t.match(show.stdout, /status: +failed/);
    t.match(show.stdout, /--- output ---\n/);
    t.same(lines(Buffer.from(show.stdout.split('--- output ---\n')[1]!)), ['err-from-cli', 'from-cli']);
  });
});

// ---------------------------------------------------------------- abandoned

t.test('an execution whose agent is killed mid-run is abandoned after the reconnect grace', async (t) => {
  const h = await startHub({ config: { executions: { reconnectGrace: '1s' } } });
  t.teardown(() => h.close());
  await install(h);
  await using dir = await tempDir();
  const { dataDir, agentId } = await h.enroll();
  const child: ChildProcess = spawn(process.execPath, [BIN, 'agent', 'run', '--data', dataDir, '--log-level', 'silent'], { stdio: 'ignore' });
  t.teardown(() => { child.kill('SIGKILL'); });
  await waitFor(() => !!h.hub.components.agents.link(agentId), 15_000, 'the agent process to connect');
  const pidFile = join(dir.path, 'pid');
  const x = h.hub.components.executions;
  const [rec] = await x.request({ tenant: 'default', action: action(h, 'demo.sleep'), agentIds: [agentId], parameters: { seconds: 20, pidfile: pidFile }, requestedBy: 'test' });
  const pid = await readPid(pidFile);
  t.teardown(() => { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } });
  await waitFor(async () => (await statusOf(h, rec!.id)) === 'running', 5000, 'running');
  child.kill('SIGKILL');
  await waitFor(async () => (await statusOf(h, rec!.id)) === 'abandoned', 10_000, 'abandoned');
  const r = await x.get('default', rec!.id);
  t.equal(r.status, 'abandoned');
  t.match(r.error, new RegExp(`agent ${agentId} disconnected while it ran`));
  t.ok(r.finishedMs > 0);
  // `abandoned` is the hub's verdict: a result the agent reports later (from its outbox, after a
  // reconnect) still finishes the execution. Another agent cannot speak for it.
  // It carries output (feature result_output), more chunks than a result may: the first
  // RESULT_OUTPUT_MAX_CHUNKS are kept, in order, and the output is marked truncated.
  // One chunk names another execution: the hub files chunks under the result's execution (the one
  // the agent owns), never where a chunk's own label points.
  const chunk = (i: number) => ({ executionId: i === 3 ? 'another-execution' : rec!.id, stream: 'STDOUT' as const, data: Buffer.from(`c${i};`), seq: i + 1 });
  const late = { executionId: rec!.id, status: 'succeeded', exitCode: 0, error: '', startedMs: r.startedMs, finishedMs: Date.now(), output: Array.from({ length: RESULT_OUTPUT_MAX_CHUNKS + 8 }, (_, i) => chunk(i)) };
  const ranBefore = r.output.toString(); // what the action printed before its agent was killed
  x.onResult('some-other-agent', late);
  t.equal(await statusOf(h, rec!.id), 'abandoned', 'a result from another agent is ignored');
  t.equal((await x.get('default', rec!.id)).output.toString(), ranBefore, 'and so is its output');
  x.onResult(agentId, late);
  t.equal(await statusOf(h, rec!.id), 'succeeded', 'the late result of its own agent replaces abandoned');
  const after = await x.get('default', rec!.id);
  t.equal(after.output.toString(), ranBefore + Array.from({ length: RESULT_OUTPUT_MAX_CHUNKS }, (_, i) => `c${i};`).join(''), 'the output it carried, bounded');
  t.equal(after.outputTruncated, true, 'chunks past the bound make the output truncated');
  await t.rejects(x.get('default', 'another-execution'), { code: 'TRELLIS_E_NOT_FOUND' }, 'a chunk\'s own execution id is not followed');
});

// ---------------------------------------------------------------- concurrency, history, retention, idempotency

t.test('per-agent concurrency, history across restarts, retention and idempotency', async (t) => {
  const h = await startHub({ config: { executions: { perAgentConcurrency: 1, retention: { maxCount: 4 } } } });
  t.teardown(() => h.close());
  await install(h);
  const { dataDir, agentId } = await h.enroll();
  await h.agent({ dataDir });
  const x = () => h.hub.components.executions;
  const run = (msg: string, extra: Partial<Parameters<ReturnType<typeof x>['request']>[0]> = {}) =>
    x().request({ tenant: 'default', action: action(h, 'demo.echo'), agentIds: [agentId], parameters: { msg }, requestedBy: 'test', ...extra });
  const finished = (id: string) => waitFor(async () => ['succeeded', 'failed', 'canceled', 'error', 'timeout', 'abandoned'].includes(await statusOf(h, id)), 10_000, `${id} finished`);

  await t.test('with a limit of 1 the second execution waits requested until the first finishes', async (t) => {
    await using dir = await tempDir();
    const pidFile = join(dir.path, 'pid');
    const seen: string[] = [];
    const unsubscribe = x().subscribe((u) => { if (u.kind === 'state') seen.push(`${u.record.id}:${u.record.status}`); });
    const [first] = await x().request({ tenant: 'default', action: action(h, 'demo.sleep'), agentIds: [agentId], parameters: { seconds: 1, pidfile: pidFile }, requestedBy: 'test' });
    const [second] = await run('second');
    await readPid(pidFile);
    t.equal(await statusOf(h, second!.id), 'requested', 'the second waits while the first runs');
    await finished(second!.id);
    unsubscribe();
    const a = await x().get('default', first!.id);
    const b = await x().get('default', second!.id);
    t.equal(a.status, 'succeeded');
    t.equal(b.status, 'succeeded');
    t.ok(seen.indexOf(`${first!.id}:succeeded`) < seen.indexOf(`${second!.id}:scheduled`), 'sent only once the first had finished');
    t.ok(b.startedMs >= a.finishedMs, 'started after the first finished');
  });

  await t.test('history survives a hub restart, and a dedup key returns the first execution after it', async (t) => {
    const key = (agent: string) => `rule-x|event-1|${agent}`;
    const [one] = await run('dedup', { dedupKey: key, rule: 'rule-x', triggerEventId: 'event-1' });
    await finished(one!.id);
    const [same] = await run('dedup', { dedupKey: key });
    t.equal(same!.id, one!.id, 'same key, same execution');
    await h.restart();
    const back = await x().get('default', one!.id);
    t.equal(back.status, 'succeeded', 'the record survived the restart');
    t.same(lines(back.output), ['dedup', 'err-dedup'], 'with its output');
    t.equal(back.rule, 'rule-x');
    const before = (await x().list('default', { limit: 1000 })).length;
    const [again] = await run('dedup', { dedupKey: key });
    t.equal(again!.id, one!.id, 'the key was rebuilt from history: no second run');
    t.equal((await x().list('default', { limit: 1000 })).length, before, 'nothing new in history');
  });

  await t.test('an execution running across a hub restart is finished by the result its agent reports after reconnecting', async (t) => {
    await waitFor(() => !!h.hub.components.agents.link(agentId), 10_000, 'the agent connected');
    await using dir = await tempDir();
    const pidFile = join(dir.path, 'pid');
    const [rec] = await x().request({ tenant: 'default', action: action(h, 'demo.sleep'), agentIds: [agentId], parameters: { seconds: 2, pidfile: pidFile }, requestedBy: 'test' });
    await readPid(pidFile);
    await waitFor(async () => (await statusOf(h, rec!.id)) === 'running', 5000, 'running');
    await h.restart();
    t.equal(await statusOf(h, rec!.id), 'running', 'still running after the restart (its agent has the reconnect grace)');
    await finished(rec!.id);
    t.equal(await statusOf(h, rec!.id), 'succeeded', 'the agent reported it once it was back');
  });

  await t.test('retention keeps about maxCount executions by dropping whole old segments, and drops segments past maxAge', async (t) => {
    await waitFor(() => !!h.hub.components.agents.link(agentId), 10_000, 'the agent to reconnect after the restart');
    const ids: string[] = [];
    for (let i = 0; i < 12; i++) {
      const [r] = await run(`n${i}`);
      ids.push(r!.id);
      await finished(r!.id);
      await x().get('default', r!.id); // writes the batch: segments rotate at a tenth of maxCount
    }
    // Retention runs beside the writes: the last rotation's may still be under way.
    await waitFor(async () => (await x().list('*', { limit: 1000 })).length <= 4 + 1, 10_000, 'retention after the last rotation');
    const kept = await x().list('*', { limit: 1000 });
    t.ok(kept.length <= 4 + 1, `about maxCount kept (${kept.length})`);
    t.ok(kept.some((r) => r.id === ids.at(-1)), 'the newest is kept');
    t.equal(await codeOf(x().get('default', ids[0]!)), 'TRELLIS_E_NOT_FOUND', 'the oldest is gone');
    const segments = readdirSync(join(h.dataDir, 'executions')).filter((n) => /^\d{12}\.jsonl$/.test(n));
    t.ok(segments.length <= 6, `old segments were deleted (${segments.length} left)`);

    // Age: make every segment look 40 days old; a restart drops all but a fresh one.
    await h.stop();
    const old = new Date(Date.now() - 40 * 86_400_000);
    for (const f of historyFiles(h)) utimesSync(f, old, old);
    await h.restart();
    t.same(await x().list('*', { limit: 1000 }), [], 'segments past maxAge are gone');
  });
});

t.test('retention that drops a segment of thousands forgets every one of them, a slice per turn of the event loop', async (t) => {
  // maxCount 12,000: a segment holds 1,200 executions. History written by hand: segment 1 with
  // 10,801 finished executions, segment 2 (the one the hub appends to) with 1,199 (12,000 in all:
  // nothing dropped at start). One more execution fills segment 2; the rotation's retention drops
  // segment 1 (12,001 > 12,000), and the hub forgets its 10,801 executions in 11 slices of at most
  // 1,000, one per turn of the event loop.
  const h = await startHub({ config: { executions: { retention: { maxCount: 12_000 } } } });
  t.teardown(() => h.close());
  await install(h);
  const { agentId } = await h.enroll();
  await h.stop();
  const dir = join(h.dataDir, 'executions');
  for (const f of historyFiles(h)) rmSync(f);
  const rec = (i: number): ExecutionRecord => ({
    id: `01old${String(i).padStart(21, '0')}`, tenant: 'default', action: 'demo.echo', agentId, status: 'succeeded', exitCode: 0, error: '',
    requestedBy: 'test', rule: '', triggerEventId: '', parameters: { msg: `m${i}` }, requestedMs: 1, startedMs: 2, finishedMs: 3,
    edge: false, outputBytes: 0, outputTruncated: false,
  });
  const segment = (from: number, to: number) => Array.from({ length: to - from }, (_, k) => `${JSON.stringify({ k: 's', r: rec(from + k) })}\n`).join('');
  writeFileSync(join(dir, '000000000001.jsonl'), segment(0, 10_801), { mode: 0o600 });
  writeFileSync(join(dir, '000000000001.out.jsonl'), '', { mode: 0o600 });
  writeFileSync(join(dir, '000000000002.jsonl'), segment(10_801, 12_000), { mode: 0o600 });
  writeFileSync(join(dir, '000000000002.out.jsonl'), '', { mode: 0o600 });
  await h.restart();
  const x = () => h.hub.components.executions;
  const held = () => [...x().statusCounts().values()].reduce((a, b) => a + b, 0);
  t.equal(held(), 12_000, 'every hand-written execution loaded');

  // The 1,200th execution of segment 2 (its agent is offline: it waits, which is enough).
  const [r] = await x().request({ tenant: 'default', action: action(h, 'demo.echo'), agentIds: [agentId], parameters: { msg: 'new' }, requestedBy: 'test' });
  const wrote = x().get('default', r!.id); // writes the batch: the segment is full and rotates
  // What the hub holds, once per turn of the event loop, until retention is done with segment 1.
  const seen = new Set<number>();
  for (const end = Date.now() + 10_000; held() > 1_200 && Date.now() < end;) {
    seen.add(held());
    await new Promise((resolve) => setImmediate(resolve));
  }
  await wrote;
  const between = [...seen].filter((n) => n > 1_200 && n < 12_001).sort((a, b) => b - a);
  t.ok(between.length >= 2 && between.every((n) => (n - 1) % 1_000 === 0),
    `forgotten 1,000 per turn, not all at once (held between turns: ${between.join(', ')})`);
  for (const i of [0, 999, 1000, 1999, 5_500, 9_999, 10_000, 10_800]) {
    t.equal(await codeOf(x().get('default', rec(i).id)), 'TRELLIS_E_NOT_FOUND', `dropped #${i} is forgotten`);
  }
  for (const i of [10_801, 11_999]) t.equal(await codeOf(x().get('default', rec(i).id)), 'OK', `kept #${i} is still there`);
  t.equal(held(), 1_200, 'segment 2 and the new execution are what is left');
  t.notOk(existsSync(join(dir, '000000000001.jsonl')), 'the dropped segment file is deleted');
});

// ---------------------------------------------------------------- unit: the lifecycle without agents

t.test('an execution for an agent that never connects ends with a clear error after maxWait; a cancel while waiting is immediate', async (t) => {
  const h = await startHub({ config: { executions: { maxWait: '1s' } } });
  t.teardown(() => h.close());
  await install(h);
  const { agentId } = await h.enroll();
  const x = h.hub.components.executions;
  const echo = action(h, 'demo.echo');
  const [a] = await x.request({ tenant: 'default', action: echo, agentIds: [agentId], parameters: { msg: 'a' }, requestedBy: 'test' });
  const [b] = await x.request({ tenant: 'default', action: echo, agentIds: [agentId], parameters: { msg: 'b' }, requestedBy: 'test' });
  const c = await x.cancel('default', b!.id);
  t.equal(c.status, 'canceled', 'a waiting execution is canceled at once');
  await waitFor(async () => (await statusOf(h, a!.id)) === 'error', 5000, 'error after maxWait');
  const r: ExecutionRecord = await x.get('default', a!.id);
  t.match(r.error, /did not connect within 1s.*TRELLIS_E_AGENT_OFFLINE/);
});
