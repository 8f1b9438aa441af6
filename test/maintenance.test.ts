/**
 * Maintenance mode end to end (hub/maintenance, AdminMaintenance, `trellis maintenance`): a real
 * hub, a real agent running real child processes. While on: non-admin calls (and enrollment) are
 * refused with TRELLIS_E_MAINTENANCE, user runs refused, rule firings suppressed, a running action
 * completes, events still flow; only administrators may toggle; the mode survives a restart; on/off
 * are audited.
 */
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { join } from 'node:path';
import { startHub, waitFor, callError, login } from './helpers/hub.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import { enroll } from '../agent/enroll.js';
import { file, install, createRule, getRule, readLines } from './helpers/admin.js';
import { cliLogin } from './helpers/catalog.js';
import { runCli } from './helpers/cli.js';
import { fromGrpcError } from '../common/grpc-errors.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const PW = 'a-long-enough-password-1';

/** `mark` appends MSG to OUT; `slowmark` waits SECONDS, then appends. */
function pack(): T.PackFile[] {
  return [
    file('pack.yaml', 'name: ops\nversion: 1.0.0\ndescription: maintenance test pack\n'),
    file('actions/mark.yaml', [
      'name: mark', 'runner: command', 'command: ["/bin/sh", "-c", "echo \\"$MSG\\" >> \\"$OUT\\""]',
      'parameters:', '  msg: { type: string, required: true }', '  out: { type: string, required: true }',
      'env:', '  MSG: "{{ msg }}"', '  OUT: "{{ out }}"', 'timeout: 30s', '',
    ].join('\n')),
    file('actions/slowmark.yaml', [
      'name: slowmark', 'runner: command', 'command: ["/bin/sh", "-c", "sleep \\"$SECONDS_\\"; echo done >> \\"$OUT\\""]',
      'parameters:', '  seconds: { type: integer, default: 3 }', '  out: { type: string, required: true }',
      'env:', '  SECONDS_: "{{ seconds }}"', '  OUT: "{{ out }}"', 'timeout: 60s', '',
    ].join('\n')),
  ];
}

const setMaintenance = (c: AdminClients, on: boolean, message = '') =>
  call<T.SetMaintenanceRequest, T.MaintenanceStatus__Output>(c, c.maintenance, c.maintenance.SetMaintenance, { on, message });
const getMaintenance = (c: AdminClients) => call<T.GetMaintenanceRequest, T.MaintenanceStatus__Output>(c, c.maintenance, c.maintenance.GetMaintenance, {});
const listAgents = (c: AdminClients) => call<T.ListAgentsRequest, T.ListAgentsResponse__Output>(c, c.agents, c.agents.ListAgents, {});

/** RunAction without follow: the executions it created (or the error). */
function runAction(c: AdminClients, action: string, agentId: string, parameters: Record<string, string>): Promise<T.ExecutionInfo__Output[]> {
  return new Promise((resolve, reject) => {
    const out: T.ExecutionInfo__Output[] = [];
    const s = c.executions.RunAction({ action, agentId, parameters, follow: false, selector: {} }, c.metadata);
    s.on('data', (u: T.ExecutionUpdate__Output) => { if (u.state) out.push(u.state); });
    s.on('error', (e: grpc.ServiceError) => reject(fromGrpcError(e)));
    s.on('end', () => resolve(out));
  });
}

/** `trellis run` as the API sees it: the first error of the stream, or undefined. */
function runCommand(c: AdminClients, agentId: string, argv: string[]): Promise<grpc.ServiceError | undefined> {
  return new Promise((resolve) => {
    const s = c.runs.Run({ agentId, argv, timeoutMs: 10_000, selector: {}, env: {} }, c.metadata);
    s.on('data', () => undefined);
    s.on('error', (e: grpc.ServiceError) => resolve(e));
    s.on('end', () => resolve(undefined));
  });
}

t.test('maintenance mode: non-admins refused, runs and rule firings refused, a running action finishes, restart keeps it', async (t) => {
  const h = await startHub();
  t.teardown(() => h.close());
  await install(h, pack());
  await h.hub.components.auth.createUser({ username: 'uma', password: PW, roles: ['user'], tenants: ['default'] });
  const uma = adminClients(h.adminAddr, h.caPem, (await login(h, 'uma', PW)).token, 'default');
  t.teardown(() => uma.close());
  const agent = await h.agent();
  const out = join(h.dir, 'rule.out');
  const slowOut = join(h.dir, 'slow.out');
  await createRule(h, { name: 'on-job', trigger: 'core.job', action: { ref: 'ops.mark', parameters: { msg: 'job {{ trigger.payload.n }}', out } } });

  // Negative: only platform administrators may toggle or read the mode.
  for (const [what, p] of [['SetMaintenance', setMaintenance(uma, true, 'mine')], ['GetMaintenance', getMaintenance(uma)]] as const) {
    const e = await callError(p);
    t.equal(e?.grpcCode, grpc.status.PERMISSION_DENIED, `${what} as a user: PERMISSION_DENIED`);
  }
  t.equal((await getMaintenance(h.admin)).on, false, 'the user changed nothing');

  // A long action is running when the mode goes on.
  const [slow] = await runAction(h.admin, 'ops.slowmark', agent.agentId!, { seconds: '3', out: slowOut });
  await waitFor(async () => (await h.hub.components.executions.get('*', slow!.id)).status === 'running', 15_000, 'slowmark running');
  const token = await h.token();

  const on = await setMaintenance(h.admin, true, 'database upgrade until 14:00 UTC\n\u0007');
  t.equal(on.on, true);
  t.equal(on.by, 'admin');
  t.equal(on.message, 'database upgrade until 14:00 UTC', 'control characters are dropped from the message');
  t.ok(on.running.some((r) => r.id === slow!.id), 'status lists the running execution');

  // Non-admin calls: UNAVAILABLE, TRELLIS_E_MAINTENANCE, with the operator's message.
  const refused = await callError(listAgents(uma));
  t.equal(refused?.grpcCode, grpc.status.UNAVAILABLE, 'a user call is UNAVAILABLE');
  t.equal(refused?.code, 'TRELLIS_E_MAINTENANCE');
  t.match(refused?.message, /maintenance mode since .*database upgrade until 14:00 UTC/);
  const whoami = await callError(call<T.WhoAmIRequest, T.WhoAmIResponse__Output>(uma, uma.auth, uma.auth.WhoAmI, {}));
  t.equal(whoami?.code, 'TRELLIS_E_MAINTENANCE', 'even WhoAmI');
  const enrolled = await enroll({ hub: h.adminAddr, token, dataDir: join(h.dir, 'late-agent') }).catch((e: unknown) => e);
  t.equal((enrolled as { code?: string }).code, 'TRELLIS_E_MAINTENANCE', 'a new agent cannot enroll');
  t.ok((await listAgents(h.admin)).agents.length >= 1, 'an administrator still works');

  // New executions are refused, for administrators too; the agent stays connected.
  const userRun = await callError(runAction(h.admin, 'ops.mark', agent.agentId!, { msg: 'x', out }));
  t.equal(userRun?.code, 'TRELLIS_E_MAINTENANCE', 'RunAction refused');
  t.equal(userRun?.grpcCode, grpc.status.UNAVAILABLE);
  const cmd = await runCommand(h.admin, agent.agentId!, ['/bin/true']);
  t.equal(cmd?.code, grpc.status.UNAVAILABLE, '`trellis run` refused');
  t.equal(cmd?.metadata.get('trellis-error-code')[0], 'TRELLIS_E_MAINTENANCE');

  // Events still flow and match; the firing is suppressed (counted), nothing runs.
  agent.publishEvent('core.job', { n: 1 });
  await waitFor(async () => (await getRule(h, 'on-job')).matched === 1, 10_000, 'event matched the rule');
  const rule = await getRule(h, 'on-job');
  t.equal(rule.fired, 0, 'the rule did not fire');
  t.equal(rule.suppressed, 1, 'it is counted as suppressed');

  // The action that was running finishes.
  await waitFor(async () => (await h.hub.components.executions.get('*', slow!.id)).status === 'succeeded', 20_000, 'slowmark finished');
  t.same(readLines(slowOut), ['done'], 'the running action completed');
  t.equal(agent.channel.state, 'ready', 'the agent stayed connected');
  const st = await getMaintenance(h.admin);
  t.equal(st.runningCount, 0, 'nothing runs any more');
  t.ok(st.refusedCalls >= 3, `refused calls counted (${st.refusedCalls})`);
  t.equal(st.refusedExecutions, 2, 'refused runs counted');
  t.equal(st.refusedRuleFirings, 1, 'refused rule firings counted');
  t.same(readLines(out), [], 'no rule action ran');

  // The mode survives a restart.
  await h.restart();
  const after = await getMaintenance(h.admin);
  t.equal(after.on, true, 'still on after a restart');
  t.equal(after.message, 'database upgrade until 14:00 UTC');
  t.equal(Number(after.sinceMs), Number(on.sinceMs), 'since is kept');
  t.equal((await callError(listAgents(uma)))?.code, 'TRELLIS_E_MAINTENANCE', 'users are still refused');

  const off = await setMaintenance(h.admin, false);
  t.equal(off.on, false);
  t.ok((await listAgents(uma)).agents.length >= 0, 'users work again');
  await waitFor(() => agent.channel.state === 'ready', 15_000, 'agent back after the restart');
  agent.publishEvent('core.job', { n: 2 });
  await waitFor(() => readLines(out).length === 1, 15_000, 'the rule fires again');
  t.same(readLines(out), ['job 2']);

  const audit = await h.hub.components.audit.query({ methodContains: 'AdminMaintenance/SetMaintenance', limit: 100 });
  const mine = audit.filter((r) => r.actor === 'admin' && r.result === 'ok');
  t.same(mine.map((r) => r.detail), ['on: database upgrade until 14:00 UTC', 'off'], 'on and off are audited with the message');
  t.ok(audit.some((r) => r.actor === 'uma' && r.result === 'denied'), 'the user\'s attempt is audited as denied');
});

t.test('trellis maintenance on|status|off on the command line', async (t) => {
  const h = await startHub();
  t.teardown(() => h.close());
  const env = await cliLogin(t, h);
  const on = await runCli(['maintenance', 'on', '--message', 'kernel patching'], env);
  t.equal(on.code, 0, on.err);
  t.match(on.out, /maintenance: ON since .* by admin/);
  t.match(on.out, /message: +kernel patching/);
  const st = await runCli(['maintenance', 'status', '--json'], env);
  t.equal(st.code, 0, st.err);
  const doc = JSON.parse(st.out) as { on: boolean; message: string; by: string; since: string; runningCount: number };
  t.equal(doc.on, true);
  t.equal(doc.message, 'kernel patching');
  t.match(doc.since, /^\d{4}-\d\d-\d\dT/, 'times in RFC 3339');
  t.equal(doc.runningCount, 0);
  const tooLong = await runCli(['maintenance', 'on', '--message', 'x'.repeat(501)], env);
  t.not(tooLong.code, 0, 'a message over 500 characters is refused');
  t.match(tooLong.err, /at most 500 characters/);
  const off = await runCli(['maintenance', 'off'], env);
  t.equal(off.code, 0, off.err);
  t.match(off.out, /maintenance: off/);
  const help = await runCli(['maintenance', '--help'], env);
  t.match(help.out, /TRELLIS_E_MAINTENANCE/);
  t.match(help.out, /on \[options\]/);
});

t.test('the mode lives in the store: another Maintenance on the same store sees it after reload()', async (t) => {
  const { openStore } = await import('../hub/store/index.js');
  const { Maintenance } = await import('../hub/maintenance/index.js');
  const store = await openStore({ kind: 'memory' });
  t.teardown(() => store.close());
  const a = await Maintenance.open(store);
  const b = await Maintenance.open(store);
  const heard: boolean[] = [];
  b.onChange((s) => heard.push(s.on));
  await a.set(true, 'admin', 'x');
  t.equal(b.on, false, 'not before reload');
  t.equal((await b.reload()).on, true, 'after reload');
  t.same(heard, [true], 'listeners hear the change once');
  await b.reload();
  t.same(heard, [true], 'no change, no event');
  t.throws(() => b.checkCall(false), { code: 'TRELLIS_E_MAINTENANCE' });
  t.doesNotThrow(() => b.checkCall(true), 'administrators pass');
  await t.rejects(a.set(true, 'admin', 'y'.repeat(501)), { code: 'TRELLIS_E_TOO_LARGE' });
  t.equal((await Maintenance.open(store)).status().message, 'x', 'a refused change changed nothing');
});
