/**
 * Automation end to end: a pack installed over the admin API, sensors and edge rules pushed to
 * a real agent, hub rules matched on the event path, executions recorded — with the hub stopped,
 * restarted and flooded.
 */
import t from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { startHub, waitFor, callError, login } from './helpers/hub.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import { openSealed, sealAad, loadPrivateKey } from '../certs/index.js';
import { agentPaths } from '../agent/identity.js';
import type { Agent } from '../agent/agent.js';
import { file, unaryT, install, getRule, createRule, listExecutions, setSecretViaApi as setSecret, readLines, walk } from './helpers/admin.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';
import { FINAL_STATUSES, type ExecutionStatus } from '../common/automation/types.js';

/** A pack whose `mark` action appends MSG (and TOKEN, from env) to OUT. */
function opsPack(dir: string): T.PackFile[] {
  return [
    file('pack.yaml', 'name: ops\nversion: 1.0.0\ndescription: test pack\n'),
    file('actions/mark.yaml', [
      'name: mark', 'description: append a line to a file', 'runner: command',
      'command: ["/bin/sh", "-c", "printf \'%s|%s\\\\n\' \\"$MSG\\" \\"$TOKEN\\" >> \\"$OUT\\""]',
      'parameters:', '  msg: { type: string, required: true }', '  out: { type: string, required: true }', '  token: { type: string, secret: true }',
      'env:', '  MSG: "{{ msg }}"', '  OUT: "{{ out }}"', '  TOKEN: "{{ token }}"', 'timeout: 10s', '',
    ].join('\n')),
    // A sensor: a file appearing is a core.file event on every agent.
    file('sensors/flag.yaml', `name: flag\ndescription: a flag file\ntype: file\ninterval: 1s\nconfig: { path: ${JSON.stringify(join(dir, 'flag'))} }\n`),
    // An edge rule: the flag file created → mark, locally, with a secret from the datastore.
    file('rules/on_flag.yaml', [
      'name: on_flag', 'trigger: core.file',
      'criteria:', '  trigger.payload.change: { type: equals, pattern: created }',
      'action:', '  ref: ops.mark', '  parameters:', `    msg: "flag {{ trigger.payload.path }}"`, `    out: ${JSON.stringify(join(dir, 'edge.out'))}`, '    token: "{{ secret.edge_token }}"',
      'target: local', '',
    ].join('\n')),
  ];
}

t.test('a sensor event fires an edge rule that remediates with the hub stopped; the run reaches history afterwards', async (t) => {
  const h = await startHub();
  t.teardown(() => h.close());
  const secret = `edge-${Math.random().toString(36).slice(2)}-token`;
  await setSecret(h, 'edge_token', secret);
  await install(h, opsPack(h.dir));
  const agent = await h.agent();
  await waitFor(() => agent.edge.ruleNames.includes('ops.on_flag') && agent.sensors.status().length === 1, 10_000, 'edge config with the rule and the sensor');

  // The saved config holds the value sealed, never in clear, in a 0600 file.
  const cfgPath = agent.edge.path;
  const cfg = readFileSync(cfgPath, 'utf8');
  t.notOk(cfg.includes(secret), 'edge-config.json does not hold the secret in clear');
  t.equal((await import('node:fs')).statSync(cfgPath).mode & 0o777, 0o600, 'edge-config.json is 0600');

  await h.stop();
  await waitFor(() => agent.channel.state === 'connecting', 5000, 'agent notices the hub is gone');
  writeFileSync(join(h.dir, 'flag'), 'up');
  const out = join(h.dir, 'edge.out');
  await waitFor(() => readLines(out).length === 1, 10_000, 'edge action ran with the hub down');
  t.same(readLines(out), [`flag ${join(h.dir, 'flag')}|${secret}`], 'the action got its parameters and the opened secret (by env)');

  await h.restart();
  await waitFor(async () => (await listExecutions(h, { rule: 'ops.on_flag' })).executions.length === 1, 15_000, 'edge execution recorded');
  const [x] = (await listExecutions(h, { rule: 'ops.on_flag' })).executions;
  t.equal(x!.status, 'succeeded');
  t.ok(x!.edge, 'marked as an edge execution');
  t.equal(x!.action, 'ops.mark');
  t.notOk(Buffer.from(x!.parametersJson).toString().includes(secret), 'history keeps the reference, not the value');
  t.match(Buffer.from(x!.parametersJson).toString(), /\{\{ secret\.edge_token \}\}/);
  for (const line of h.logLines) if (line.includes(secret)) t.fail(`secret in a hub log line: ${line.slice(0, 200)}`);
  const agentLines = h.agentLogLines();
  t.ok(agentLines.some((l) => l.includes('edge rule fired')), 'the agent logged the edge run (to its real log file)');
  for (const line of agentLines) if (line.includes(secret)) t.fail(`secret in an agent log line: ${line.slice(0, 200)}`);
  // The planted value is in clear in no file of the hub's or the agent's data directory
  // (state, history, audit, outbox, edge config), in any encoding the masker knows.
  const forms = [secret, Buffer.from(secret).toString('base64').replace(/=+$/, ''), Buffer.from(secret).toString('hex')];
  const agentDir = cfgPath.replace(/\/edge-config\.json$/, '');
  let scanned = 0;
  for (const root of [h.dataDir, agentDir]) {
    for (const f of walk(root)) {
      scanned++;
      const text = readFileSync(f).toString('latin1');
      for (const v of forms) if (text.includes(v)) t.fail(`secret found in ${f}`);
    }
  }
  t.ok(scanned > 10, `scanned ${scanned} files of the hub and agent data directories`);
});

t.test('a changed secret reaches the agent sealed; a blob sealed for agent A does not open with agent B\'s key', async (t) => {
  const h = await startHub();
  t.teardown(() => h.close());
  await setSecret(h, 'edge_token', 'first-value-1');
  await install(h, opsPack(h.dir));
  const a = await h.agent();
  const b = await h.agent();
  await waitFor(() => a.edge.ruleNames.length === 1 && b.edge.ruleNames.length === 1, 10_000, 'both agents configured');
  const v1 = a.edge.version;
  await setSecret(h, 'edge_token', 'second-value-2');
  await waitFor(() => a.edge.version !== v1 && b.edge.version !== v1, 5000, 'new config pushed to every agent using the secret');
  const cfgA = JSON.parse(readFileSync(a.edge.path, 'utf8')) as { agentId: string; tenant: string; sealedSecrets: Record<string, string> };
  const blob = cfgA.sealedSecrets['secret:edge_token']!;
  const aad = sealAad(cfgA.agentId, 'secret', `${cfgA.tenant}/secret:edge_token`);
  const keyA = loadPrivateKey(readFileSync(agentPaths(a.edge.path.replace(/\/edge-config\.json$/, '')).key, 'utf8'));
  t.equal(openSealed(blob, keyA, aad).toString(), 'second-value-2', 'agent A opens its own blob');
  const keyB = loadPrivateKey(readFileSync(agentPaths(b.edge.path.replace(/\/edge-config\.json$/, '')).key, 'utf8'));
  t.throws(() => openSealed(blob, keyB, aad), 'agent B cannot open agent A\'s blob');
  const tampered = blob.slice(0, -4) + (blob.endsWith('AAAA') ? 'BBBB' : 'AAAA');
  t.throws(() => openSealed(tampered, keyA, aad), 'a tampered blob does not open');
});

t.test('hub rules: run on the emitting agent, rate limit stops storms, no duplicate executions after the hub was down under load', async (t) => {
  const h = await startHub();
  t.teardown(() => h.close());
  await install(h, opsPack(h.dir));
  const agent: Agent = await h.agent();
  const out = join(h.dir, 'hub.out');
  await createRule(h, {
    name: 'on-job', trigger: 'core.job', criteria: { 'trigger.payload.n': { type: 'gte', pattern: 0 } },
    action: { ref: 'ops.mark', parameters: { msg: 'job {{ trigger.payload.n }}', out } },
  });
  const storm = await createRule(h, {
    name: 'everything', trigger: 'core.storm', action: { ref: 'ops.mark', parameters: { msg: 'storm', out: join(h.dir, 'storm.out') } }, rate_limit: { count: 2, per: '1m' },
  });
  t.equal(storm.target, 'agent {{ trigger.agent }}', 'default target: the agent that sent the event');

  agent.publishEvent('core.job', { n: 0 });
  await waitFor(() => readLines(out).length === 1, 10_000, 'hub rule ran the action on the agent');
  t.same(readLines(out), ['job 0|']);

  for (let i = 0; i < 10; i++) agent.publishEvent('core.storm', { i });
  await waitFor(async () => (await getRule(h, 'everything')).matched === 10, 10_000, 'storm matched');
  const info = await getRule(h, 'everything');
  t.equal(info.fired, 2, 'a rule that matches everything fires only within its rate limit');
  t.equal(info.suppressed, 8, 'the rest is counted as suppressed');

  // Hub down while events keep coming: all are delivered later, each runs exactly once.
  await h.stop();
  for (let n = 1; n <= 40; n++) agent.publishEvent('core.job', { n });
  await h.restart();
  await waitFor(() => readLines(out).length >= 41, 30_000, '40 queued events ran');
  // Whatever the hub requested (a duplicate too) has finished before the lines are counted.
  await waitFor(async () => (await listExecutions(h, { rule: 'on-job' })).executions.every((x) => FINAL_STATUSES.has(x.status as ExecutionStatus)), 30_000, 'every execution of on-job finished');
  const lines = readLines(out);
  t.equal(lines.length, 41, 'no event lost, no execution duplicated');
  t.equal(new Set(lines).size, 41, 'every line distinct');
  const hist = (await listExecutions(h, { rule: 'on-job' })).executions;
  t.equal(hist.length, 41, 'history has one execution per event');
  t.equal(new Set(hist.map((x) => x.triggerEventId)).size, 41, 'each from its own event');
});

t.test('rules API: validation, permissions, tenants, test', async (t) => {
  const h = await startHub();
  t.teardown(() => h.close());
  await install(h, opsPack(h.dir));
  const bad = await callError(createRule(h, { name: 'backref', trigger: 'x.y', criteria: { 'trigger.payload.a': { type: 'regex', pattern: '(a)\\1' } }, action: { ref: 'ops.mark', parameters: { msg: 'm', out: '/tmp/x' } } }));
  t.equal((bad as unknown as grpc.ServiceError)?.code, grpc.status.INVALID_ARGUMENT, 'a regex the linear-time engine cannot run is refused when the rule is saved');
  t.match(bad?.message, /backreference/, 'naming the feature');
  const noAction = await callError(createRule(h, { name: 'noaction', trigger: 'x.y', action: { ref: 'ops.missing', parameters: {} } }));
  t.match(noAction?.message, /no such action/);
  const badOp = await callError(createRule(h, { name: 'badop', trigger: 'x.y', criteria: { 'trigger.payload.a': { type: 'frobnicate', pattern: 1 } }, action: { ref: 'ops.mark', parameters: {} } }));
  t.equal((badOp as unknown as grpc.ServiceError)?.code, grpc.status.INVALID_ARGUMENT, 'unknown operator refused');

  await createRule(h, { name: 'hot', trigger: 'cpu.high', criteria: { 'trigger.payload.percent': { type: 'gt', pattern: 90 } }, action: { ref: 'ops.mark', parameters: { msg: 'cpu {{ trigger.payload.percent }}', out: '/tmp/never' } } });
  const yes = await unaryT<T.TestRuleRequest, T.TestRuleResponse__Output>(h, h.admin.rules, h.admin.rules.TestRule, { name: 'hot', definition: '', eventJson: Buffer.from(JSON.stringify({ percent: 95 })) });
  t.ok(yes.matched);
  t.same(JSON.parse(Buffer.from(yes.parametersJson).toString()), { msg: 'cpu 95', out: '/tmp/never' }, 'rendered parameters');
  const no = await unaryT<T.TestRuleRequest, T.TestRuleResponse__Output>(h, h.admin.rules, h.admin.rules.TestRule, { name: 'hot', definition: '', eventJson: Buffer.from(JSON.stringify({ type: 'cpu.high', payload: { percent: 50 } })) });
  t.notOk(no.matched);
  t.ok(no.reasons.length > 0, 'explains why not');

  const dis = await unaryT<T.SetRuleEnabledRequest, T.RuleInfo__Output>(h, h.admin.rules, h.admin.rules.SetRuleEnabled, { name: 'ops.on_flag', enabled: false });
  t.notOk(dis.enabled, 'a pack rule can be disabled');
  const del = await callError(unaryT(h, h.admin.rules, h.admin.rules.DeleteRule, { name: 'ops.on_flag' }));
  t.equal((del as unknown as grpc.ServiceError)?.code, grpc.status.INVALID_ARGUMENT, 'a pack rule is not deleted on its own');

  // Another tenant does not see the rule.
  await h.hub.components.iam.createTenant('other', '');
  const md = h.admin.metadata.clone();
  md.set('x-trellis-tenant', 'other');
  const other = await new Promise<grpc.ServiceError | null>((resolve) => h.admin.rules.GetRule({ name: 'hot' }, md, (e) => resolve(e)));
  t.equal(other?.code, grpc.status.NOT_FOUND, 'another tenant\'s rule is NOT_FOUND');
});

t.test('a rule never acts with more rights than its author; bad rule input is refused', async (t) => {
  const h = await startHub();
  t.teardown(() => h.close());
  await install(h, opsPack(h.dir));
  const PW = 'rule-author-password-1';
  const role = (name: string, grants: Array<[string, string]>) => unaryT(h, h.admin.roles, h.admin.roles.CreateRole, { name, description: '', grants: grants.map(([permission, scope]) => ({ permission, scope })) });
  await role('rule-writer', [['rules:write', ''], ['rules:read', '']]);
  await role('ops-runner', [['rules:write', ''], ['actions:execute', 'pack:ops']]);
  await unaryT(h, h.admin.users, h.admin.users.CreateUser, { username: 'writer', password: PW, roles: ['rule-writer'], tenants: ['default'] });
  await unaryT(h, h.admin.users, h.admin.users.CreateUser, { username: 'runner', password: PW, roles: ['ops-runner'], tenants: ['default'] });
  const clientFor = async (user: string) => {
    const c = adminClients(h.adminAddr, h.caPem, (await login(h, user, PW)).token, 'default');
    t.teardown(() => c.close());
    return c;
  };
  const create = (c: AdminClients, def: object) => callError(call<T.CreateRuleRequest, T.RuleInfo__Output>(c, c.rules, c.rules.CreateRule, { definition: JSON.stringify(def), replace: false, source: 't' }));
  const rule = (name: string, params: Record<string, string>) => ({ name, trigger: 'x.y', action: { ref: 'ops.mark', parameters: { msg: 'm', out: '/tmp/never', ...params } } });

  const writer = await clientFor('writer');
  t.equal((await create(writer, rule('w1', {})))?.code, 'TRELLIS_E_PERMISSION_DENIED', 'rules:write without actions:execute on the action: refused');
  const runner = await clientFor('runner');
  t.equal(await create(runner, rule('r1', {})), undefined, 'actions:execute on the pack: the rule is saved');
  t.equal((await create(runner, rule('r2', { token: '{{ secret.edge_token }}' })))?.code, 'TRELLIS_E_PERMISSION_DENIED', 'a datastore reference needs kv:read');
  const dis = await callError(call<T.SetRuleEnabledRequest, T.RuleInfo__Output>(writer, writer.rules, writer.rules.SetRuleEnabled, { name: 'r1', enabled: true }));
  t.equal(dis?.code, 'TRELLIS_E_PERMISSION_DENIED', 'enabling a rule is acting for it too');

  const bad = (definition: string) => callError(unaryT(h, h.admin.rules, h.admin.rules.CreateRule, { definition, replace: false, source: 'bad.yaml' }));
  t.match((await bad('name: [unclosed'))?.message, /bad\.yaml:\d+: not valid YAML/, 'YAML syntax error with file and line');
  t.equal(((await bad('x'.repeat(70 * 1024))) as unknown as grpc.ServiceError)?.code, grpc.status.RESOURCE_EXHAUSTED, 'a rule over 64 KiB');
  t.match((await bad(JSON.stringify({ ...rule('extra', {}), surprise: 1 })))?.message, /surprise/, 'an unknown field is named');
  const badEvent = await callError(unaryT(h, h.admin.rules, h.admin.rules.TestRule, { name: 'r1', definition: '', eventJson: Buffer.from('{not json') }));
  t.equal((badEvent as unknown as grpc.ServiceError)?.code, grpc.status.INVALID_ARGUMENT, 'rules test with an event that is not JSON');
});

t.test('an agent gets only the edge rules that select it and only the values they reference; another tenant gets nothing', async (t) => {
  const h = await startHub();
  t.teardown(() => h.close());
  await setSecret(h, 'edge_token', 'used-by-the-rule');
  await setSecret(h, 'unrelated', 'never-sent-anywhere');
  const files = opsPack(h.dir).map((f) => (f.path === 'rules/on_flag.yaml' ? { ...f, content: Buffer.from(`${String(f.content)}on: { selector: { role: web } }\n`) } : f));
  await install(h, files);
  const web = await h.agent({ dataDir: (await h.enroll({ token: await h.token({ labels: { role: 'web' } }) })).dataDir });
  const db = await h.agent({ dataDir: (await h.enroll({ token: await h.token({ labels: { role: 'db' } }) })).dataDir });
  await h.hub.components.iam.createTenant('other', '');
  const other = await h.agent({ dataDir: (await h.enroll({ token: await h.token({ tenant: 'other' }) })).dataDir });
  await waitFor(() => web.edge.ruleNames.length === 1 && db.edge.version !== '' && other.edge.version !== '', 10_000, 'configs pushed');
  const sealed = (a: Agent) => Object.keys((JSON.parse(readFileSync(a.edge.path, 'utf8')) as { sealedSecrets: Record<string, string> }).sealedSecrets);
  t.same(sealed(web), ['secret:edge_token'], 'the selected agent gets exactly the value its rule references');
  t.same(db.edge.ruleNames, [], 'an agent the rule does not select gets no rule');
  t.same(sealed(db), [], '…and no value');
  t.same(db.sensors.status().map((s) => s.name), ['ops.flag'], 'sensors without `on` run on every agent of the tenant');
  t.same(other.edge.ruleNames, [], 'an agent of another tenant gets no rule');
  t.same(sealed(other), [], '…no value');
  t.same(other.sensors.status(), [], '…and no sensor');
});
