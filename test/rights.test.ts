/**
 * Rights behind references, rules and packs (issue 10: findings 5, 6, 8, 14 and part of 18):
 * real hub, real agent, real users logged in over the admin port.
 * - using a secret in text the caller chooses needs secrets:use (or kv:decrypt); kv:read is not enough;
 * - one parser (findRefs) finds references, so filters and nesting do not hide one;
 * - installing a pack needs what the pack uses; its rules act as the installer;
 * - rules stop firing when their author loses what they need; edge rules leave the agents;
 * - role assignment stays inside the assigner's tenants; another user's --private key is invisible to kv set;
 * - rules (hub and edge) never see --private keys.
 */
import t, { type Test } from 'tap';
import * as grpc from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startHub, waitFor, login, callError, ADMIN_PASSWORD, type TestHub } from './helpers/hub.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import type { Grant } from '../hub/authz/index.js';
import { kvId, kvAad } from '../hub/kv/index.js';
import { file, unaryT as adminCall, install, getRule, readLines } from './helpers/admin.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';
import { FINAL_STATUSES, type ExecutionStatus } from '../common/automation/types.js';

const PW = 'rights-test-password-1';

/** Pack `ops`: `echo` prints MSG (env), `obj` takes an object, `usesecret` reads a secret in its own env. */
function opsPack(extra: T.PackFile[] = []): T.PackFile[] {
  return [
    file('pack.yaml', 'name: ops\nversion: 1.0.0\ndescription: rights test pack\n'),
    file('actions/echo.yaml', [
      'name: echo', 'runner: command', 'command: ["sh", "-c", "echo \\"msg=$MSG\\"; [ -n \\"$OUT\\" ] && echo \\"$MSG\\" >> \\"$OUT\\"; true"]', 'timeout: 20s',
      'parameters:', '  msg: { type: string, required: true }', '  out: { type: string, default: "" }',
      'env:', '  MSG: "{{ msg }}"', '  OUT: "{{ out }}"', '',
    ].join('\n')),
    file('actions/obj.yaml', ['name: obj', 'runner: command', 'command: ["sh", "-c", "echo \\"$O\\""]', 'timeout: 20s',
      'parameters:', '  o: { type: object, required: true }', 'env:', '  O: "{{ o | json }}"', ''].join('\n')),
    file('actions/usesecret.yaml', ['name: usesecret', 'runner: command', 'command: ["sh", "-c", "echo \\"len=${#TOKEN}\\""]', 'timeout: 20s',
      'env:', '  TOKEN: "{{ secret.s }}"', ''].join('\n')),
    ...extra,
  ];
}

interface Streamed { states: T.ExecutionInfo__Output[]; stdout: string; error?: grpc.ServiceError }
function collect(stream: grpc.ClientReadableStream<T.ExecutionUpdate__Output>): Promise<Streamed> {
  const r: Streamed = { states: [], stdout: '' };
  return new Promise((resolve) => {
    stream.on('data', (u: T.ExecutionUpdate__Output) => {
      if (u.state) r.states.push(u.state);
      if (u.output && u.output.stream !== 'STDERR') r.stdout += Buffer.from(u.output.data).toString();
    });
    let done = false;
    const settle = (e?: grpc.ServiceError) => { if (!done) { done = true; r.error = e; resolve(r); } };
    stream.on('error', settle);
    stream.on('end', () => settle());
  });
}
const runAction = (c: AdminClients, agentId: string, action: string, parameters: Record<string, string>) =>
  collect(c.executions.RunAction({ follow: true, selector: {}, agentId, action, parameters }, c.metadata) as grpc.ClientReadableStream<T.ExecutionUpdate__Output>);
const rerun = (c: AdminClients, id: string) =>
  collect(c.executions.RerunExecution({ id, follow: true }, c.metadata) as grpc.ClientReadableStream<T.ExecutionUpdate__Output>);

function runCmd(c: AdminClients, req: Partial<T.RunRequest>): Promise<{ out: string; finished?: T.RunFinished__Output; error?: grpc.ServiceError }> {
  return new Promise((resolve) => {
    let out = '';
    let finished: T.RunFinished__Output | undefined;
    const s = c.runs.Run({ timeoutMs: 20_000, ...req }, c.metadata);
    s.on('data', (u: T.RunUpdate__Output) => { if (u.output && u.output.stream !== 'STDERR') out += String(u.output.data); if (u.finished) finished = u.finished; });
    s.on('error', (error: grpc.ServiceError) => resolve({ out, finished, error }));
    s.on('end', () => resolve({ out, finished }));
  });
}

async function user(h: TestHub, t: Test, name: string, grants: Array<string | [string, string]>, tenants = ['default']): Promise<AdminClients> {
  const c = h.hub.components;
  const g: Grant[] = grants.map((x) => (typeof x === 'string' ? { permission: x, scope: '' } : { permission: x[0], scope: x[1] }));
  await c.iam.createRole(`role-${name}`, '', g);
  await c.auth.createUser({ username: name, password: PW, roles: [`role-${name}`], tenants });
  const client = adminClients(h.adminAddr, h.caPem, (await login(h, name, PW)).token, tenants[0]);
  t.teardown(() => client.close());
  return client;
}

const kvSet = (h: TestHub, who: { username: string; isAdmin: boolean }, key: string, value: string, o: { secret?: boolean; private?: boolean } = {}) =>
  h.hub.components.kv.set('default', who, { key, value, ...o });
const ADMIN = { username: 'admin', isAdmin: true };

t.test('using a secret in a command or parameters one chooses needs secrets:use; kv:read is not enough; filters and nesting hide no reference', async (t) => {
  await using h = await startHub();
  const agent = await h.agent();
  const agentId = agent.agentId!;
  const secret = 'planted-rights-secret-4242';
  await kvSet(h, ADMIN, 's', secret, { secret: true });
  await kvSet(h, ADMIN, 'plain', 'plain-value');
  await install(h, opsPack());
  const base = ['agents:run', 'agents:list', 'executions:read', 'executions:cancel', 'actions:execute'];
  const reader = await user(h, t, 'reader', [...base, 'kv:read']);
  const user5 = await user(h, t, 'decrypter', [...base, 'kv:read', 'kv:decrypt']);
  const noKv = await user(h, t, 'nokv', base);

  // 5: trellis run --env with a secret, with kv:read only.
  const r1 = await runCmd(reader, { agentId, argv: ['sh', '-c', 'echo "$P" | rev'], env: { P: '{{ secret.s }}' } });
  t.equal(r1.error?.code, grpc.status.PERMISSION_DENIED, 'run --env P={{ secret.s }} with kv:read only: PERMISSION_DENIED');
  t.match(r1.error?.details, /secrets:use/, 'the refusal names the permission');
  t.notOk(r1.out.includes(secret.split('').reverse().join('')), 'nothing ran');
  const r2 = await runCmd(reader, { agentId, argv: ['sh', '-c', 'echo "$P" | rev'], env: { P: 'x{{ kv.s | string }}' } });
  t.equal(r2.error?.code, grpc.status.PERMISSION_DENIED, 'a kv reference to a key that is a secret counts as a secret');
  const r3 = await runCmd(reader, { agentId, argv: ['sh', '-c', 'echo "$P"'], env: { P: '{{ kv.plain }}' } });
  t.equal(r3.finished?.status, 'succeeded', 'a plain kv value with kv:read works');
  t.equal(r3.out, 'plain-value\n');

  // 5: a PACK.ACTION parameter.
  const a1 = await runAction(reader, agentId, 'ops.echo', { msg: '{{ secret.s }}' });
  t.equal(a1.error?.code, grpc.status.PERMISSION_DENIED, 'run ops.echo msg={{ secret.s }} with kv:read only: PERMISSION_DENIED');
  t.equal(a1.states.length, 0, 'no execution was made');
  // An action whose own text reads the secret (its installer's) keeps working for someone without it.
  const own = await runAction(reader, agentId, 'ops.usesecret', {});
  t.equal(own.states.at(-1)?.status, 'succeeded', 'a pack action that reads a secret in its own text runs for a caller without secrets:use');
  t.equal(own.stdout, `len=${secret.length}\n`);

  // 6: one parser: filters, spacing and nesting do not hide a reference from the check.
  for (const [label, params] of [
    ['{{ kv.x | string }}', { msg: '{{ kv.plain | string }}' }],
    ['{{kv.x|upper}}', { msg: '{{kv.plain|upper}}' }],
    ['a reference inside a nested object', { o: '{"a": {"b": ["{{ kv.plain | lower }}"]}}' }],
  ] as const) {
    const action = 'o' in params ? 'ops.obj' : 'ops.echo';
    const r = await runAction(noKv, agentId, action, params as Record<string, string>);
    t.equal(r.error?.code, grpc.status.PERMISSION_DENIED, `${label} without kv:read: PERMISSION_DENIED`);
  }
  const envFilter = await runCmd(noKv, { agentId, argv: ['true'], env: { P: '{{ kv.plain | string }}' } });
  t.equal(envFilter.error?.code, grpc.status.PERMISSION_DENIED, 'run --env with a filtered reference without kv:read: PERMISSION_DENIED');

  // With kv:decrypt (or secrets:use) it works, masked, and the audit log names the key.
  const ok = await runCmd(user5, { agentId, argv: ['sh', '-c', 'echo "$P"'], env: { P: '{{ secret.s }}' } });
  t.equal(ok.finished?.status, 'succeeded', 'with kv:decrypt the run works');
  t.notOk(ok.out.includes(secret), 'the value is masked in the output');
  const userUse = await user(h, t, 'secretuser', [...base, 'kv:read', 'secrets:use']);
  const ok2 = await runAction(userUse, agentId, 'ops.echo', { msg: '{{ secret.s }}' });
  t.equal(ok2.states.at(-1)?.status, 'succeeded', 'with secrets:use a secret parameter works');
  const id = ok2.states.at(-1)!.id;

  // 5: a re-run resolves the references again, as the caller.
  const re1 = await rerun(reader, id);
  t.equal(re1.error?.code, grpc.status.PERMISSION_DENIED, 'a re-run of an execution that used a secret, by a caller with kv:read only: PERMISSION_DENIED');
  const re2 = await rerun(user5, id);
  t.equal(re2.states.at(-1)?.status, 'succeeded', 'the same re-run with kv:decrypt works');

  await h.hub.components.audit.flush();
  const audit = await h.hub.components.audit.query({ limit: 1000 });
  const used = audit.filter((a) => a.result === 'ok' && /secrets used: s\b/.test(a.detail));
  t.ok(used.some((a) => a.actor === 'decrypter' && a.method.endsWith('AdminRuns/Run')), 'the run that used a secret is audited with the key name');
  t.ok(used.some((a) => a.actor === 'secretuser' && a.method.endsWith('RunAction')), 'the action run too');
  t.ok(used.some((a) => a.actor === 'decrypter' && a.method.endsWith('RerunExecution')), 'and the re-run');
  t.ok(used.some((a) => a.actor === 'reader' && a.method.endsWith('RunAction')), 'a pack action reading its own secret is audited too');
  t.notOk(JSON.stringify(audit).includes(secret), 'no audit record holds the value');
  t.notOk(h.logLines.join('\n').includes(secret), 'no hub log line holds the value');
});

t.test('installing a pack needs what the pack uses; its rules act as the installer', async (t) => {
  await using h = await startHub();
  await kvSet(h, ADMIN, 's', 'pack-secret-1', { secret: true });
  const only = await user(h, t, 'installer', ['packs:install', 'packs:list']);
  const inst = (c: AdminClients, files: T.PackFile[]) => callError(call<T.InstallPackRequest, T.PackInfo__Output>(c, c.packs, c.packs.InstallPack, { files, force: true }));
  const plainPack = [file('pack.yaml', 'name: ops\nversion: 1.0.0\n'), file('actions/noop.yaml', 'name: noop\nrunner: command\ncommand: ["true"]\ntimeout: 5s\n')];
  t.equal((await inst(only, plainPack))?.code, 'TRELLIS_E_PERMISSION_DENIED', 'packs:install alone: refused (actions:execute on the pack)');

  const packer = await user(h, t, 'packer', ['packs:install', ['actions:execute', 'pack:ops'], 'kv:read', 'rules:read']);
  t.equal(await inst(packer, plainPack), undefined, 'with actions:execute on the pack: installed');
  const e1 = await inst(packer, opsPack());
  t.equal(e1?.code, 'TRELLIS_E_PERMISSION_DENIED', 'an action reading a secret needs secrets:use');
  t.match(e1?.message, /secrets:use/);
  const withRule = [...plainPack, file('rules/r.yaml', 'name: r\ntrigger: test.x\naction:\n  ref: ops.noop\n  parameters: {}\ntarget: { agent: nobody }\n'),
    file('rules/other.yaml', 'name: other\ntrigger: test.x\naction:\n  ref: util.noop\n  parameters: {}\ntarget: { agent: nobody }\n')];
  // util.noop exists (installed by another user): the packer may not call it without actions:execute there.
  const utilOwner = await user(h, t, 'utilowner', ['packs:install', ['actions:execute', 'pack:util']]);
  const eu = await inst(utilOwner, [file('pack.yaml', 'name: util\nversion: 1.0.0\n'), file('actions/noop.yaml', 'name: noop\nrunner: command\ncommand: ["true"]\ntimeout: 5s\n')]);
  t.equal(eu, undefined, `pack util installed by its owner: ${eu?.message}`);
  const e2 = await inst(packer, withRule);
  t.equal(e2?.code, 'TRELLIS_E_PERMISSION_DENIED', 'a rule calling another pack\'s action needs actions:execute there');
  const sensorPack = [...plainPack, file('sensors/cmd.yaml', 'name: cmd\ntype: command\ninterval: 60s\nconfig: { argv: ["id"] }\n')];
  const e3 = await inst(packer, sensorPack);
  t.equal(e3?.code, 'TRELLIS_E_PERMISSION_DENIED', 'a command sensor needs agents:run');
  t.match(e3?.message, /agents:run/);

  const rules = [...plainPack, file('rules/r.yaml', 'name: r\ntrigger: test.x\naction:\n  ref: ops.noop\n  parameters: {}\ntarget: { agent: nobody }\n')];
  t.equal(await inst(packer, rules), undefined, 'a pack whose rules call its own actions: installed');
  const info = await call<T.GetRuleRequest, T.RuleInfo__Output>(packer, packer.rules, packer.rules.GetRule, { name: 'ops.r' });
  t.equal(info.author, 'packer', 'a pack rule acts for its installer');
  t.equal(info.blocked, '', 'and fires while the installer has the rights');
  await h.hub.components.auth.setActive('packer', false);
  await waitFor(async () => (await getRule(h, 'ops.r')).blocked !== '', 5000, 'pack rule blocked');
  t.match((await getRule(h, 'ops.r')).blocked, /deactivated/, 'the installer deactivated: the pack rule is blocked, with the reason');
});

t.test('a rule stops firing when its author loses what it needs; the reason shows; edge rules leave the agents', async (t) => {
  await using h = await startHub();
  const agent = await h.agent();
  await install(h, opsPack());
  const c = h.hub.components;
  await c.iam.createRole('rule-author', '', ['rules:write', 'rules:read', 'actions:execute', 'kv:read'].map((permission) => ({ permission, scope: '' })));
  for (const u of ['ann', 'bob', 'cid', 'dan']) await c.auth.createUser({ username: u, password: PW, roles: ['rule-author'], tenants: ['default'] });
  const out = (n: string) => join(h.dir, `${n}.out`);
  const ruleFor = async (author: string, name: string, target: object = {}) => {
    const cl = adminClients(h.adminAddr, h.caPem, (await login(h, author, author === 'admin' ? ADMIN_PASSWORD : PW)).token, 'default');
    try {
      await call<T.CreateRuleRequest, T.RuleInfo__Output>(cl, cl.rules, cl.rules.CreateRule, {
        definition: JSON.stringify({ name, trigger: 'core.test_fire', action: { ref: 'ops.echo', parameters: { msg: '{{ trigger.payload.n }}', out: out(name) } }, ...target }), replace: false, source: 't',
      });
    } finally { cl.close(); }
  };
  await ruleFor('admin', 'control');
  await ruleFor('ann', 'by-ann');
  await ruleFor('bob', 'by-bob');
  await ruleFor('cid', 'by-cid');
  let n = 0;
  const fire = async () => {
    const k = ++n;
    agent.publishEvent('core.test_fire', { n: k });
    await waitFor(() => readLines(out('control')).includes(String(k)), 15_000, `control rule ran for event ${k}`);
    return k;
  };
  const k1 = await fire();
  for (const r of ['by-ann', 'by-bob', 'by-cid']) await waitFor(() => readLines(out(r)).includes(String(k1)), 15_000, `${r} ran while its author had the rights`);

  await c.auth.setActive('ann', false); // deactivated
  await c.iam.setTenantMembership('default', { user: 'bob' }, false); // out of the tenant
  await c.iam.updateRoleGrants('rule-author', (g) => g.filter((x) => x.permission !== 'actions:execute')); // loses the right (cid; ann and bob too)
  const k2 = await fire();
  // The control rule ran for k2; a blocked rule fires in the same event pass, so a short settle suffices.
  await new Promise((r) => setTimeout(r, 500));
  for (const r of ['by-ann', 'by-bob', 'by-cid']) t.notOk(readLines(out(r)).includes(String(k2)), `${r}: the next matching event after the change fires nothing`);
  t.match((await getRule(h, 'by-ann')).blocked, /ann is deactivated or deleted/, 'reason: deactivated');
  t.match((await getRule(h, 'by-bob')).blocked, /no longer a member of tenant default/, 'reason: out of the tenant');
  t.match((await getRule(h, 'by-cid')).blocked, /cid lacks actions:execute on ops\.echo/, 'reason: the permission lost');
  const list = await adminCall<T.ListRulesRequest, T.ListRulesResponse__Output>(h, h.admin.rules, h.admin.rules.ListRules, { pack: '', trigger: '' });
  t.ok(list.rules.find((r) => r.name === 'by-cid')?.blocked, 'rules list carries the reason');
  t.equal(list.rules.find((r) => r.name === 'control')?.blocked, '', 'the administrator\'s rule is not blocked');

  // Rights back: the rule fires again.
  await c.iam.updateRoleGrants('rule-author', (g) => [...g, { permission: 'actions:execute', scope: '' }]);
  await waitFor(async () => (await getRule(h, 'by-cid')).blocked === '', 5000, 'cid unblocked');
  const k3 = await fire();
  await waitFor(() => readLines(out('by-cid')).includes(String(k3)), 15_000, 'by-cid fires again');
  t.notOk(readLines(out('by-ann')).includes(String(k3)), 'by-ann stays blocked while ann is deactivated');

  // An edge rule: its author deleted → it is taken off the agents.
  await ruleFor('dan', 'edge-dan', { target: 'local' });
  await waitFor(() => agent.edge.ruleNames.includes('edge-dan'), 10_000, 'edge rule streamed to the agent');
  await c.auth.deleteUser('dan');
  await waitFor(() => !agent.edge.ruleNames.includes('edge-dan'), 10_000, 'edge rule taken off the agent after its author was deleted');
  t.match((await getRule(h, 'edge-dan')).blocked, /dan is deactivated or deleted/);
});

t.test('role assignment stays inside the assigner\'s tenants', async (t) => {
  await using h = await startHub();
  const c = h.hub.components;
  await c.iam.createTenant('red', '');
  await c.iam.createTenant('blue', '');
  await c.iam.createRole('lister', '', [{ permission: 'agents:list', scope: '' }]);
  const redAdmin = await user(h, t, 'redboss', ['roles:assign', 'agents:list'], ['red']);
  await c.auth.createUser({ username: 'redu', password: PW, roles: [], tenants: ['red'] });
  await c.auth.createUser({ username: 'blueu', password: PW, roles: [], tenants: ['blue'] });
  await c.auth.createUser({ username: 'both', password: PW, roles: [], tenants: ['red', 'blue'] });
  await c.iam.createGroup('mixed', '');
  await c.iam.setGroupMember('mixed', 'redu', true);
  await c.iam.setGroupMember('mixed', 'blueu', true);
  const assign = (m: { user?: string; group?: string }) => callError(call<T.AssignRoleRequest, T.RoleInfo__Output>(redAdmin, redAdmin.roles, redAdmin.roles.AssignRole, { role: 'lister', user: m.user ?? '', group: m.group ?? '' }));
  t.equal(await assign({ user: 'redu' }), undefined, 'a user of the assigner\'s own tenant: assigned');
  const e1 = await assign({ user: 'blueu' });
  t.equal(e1?.code, 'TRELLIS_E_PERMISSION_DENIED', 'a user of another tenant: refused');
  t.notOk(/tenant blue|blue\b/.test(e1?.message ?? ''), 'the refusal does not name the other tenant');
  t.equal((await assign({ user: 'both' }))?.code, 'TRELLIS_E_PERMISSION_DENIED', 'a user also in another tenant: refused');
  t.equal((await assign({ group: 'mixed' }))?.code, 'TRELLIS_E_PERMISSION_DENIED', 'a group with a member of another tenant: refused');
  t.equal((await callError(call<T.AssignRoleRequest, T.RoleInfo__Output>(redAdmin, redAdmin.roles, redAdmin.roles.AssignRole, { role: 'admin', user: 'redu', group: '' })))?.code,
    'TRELLIS_E_PERMISSION_DENIED', 'a role with more than the assigner holds: refused (as before)');
  const u = await c.auth.user('blueu');
  t.same(u.roles, [], 'the other tenant\'s user got nothing');
});

t.test('kv set by another user neither reveals nor overwrites a --private key', async (t) => {
  await using h = await startHub();
  const alice = await user(h, t, 'alice', ['kv:read', 'kv:write', 'kv:decrypt']);
  const bob = await user(h, t, 'bob', ['kv:read', 'kv:write', 'kv:decrypt']);
  const set = (c: AdminClients, key: string, value: string, priv = false) =>
    call<T.KvSetRequest, T.KvEntry__Output>(c, c.kv, c.kv.Set, { key, value, secret: true, ttlMs: 0, scope: 'tenant', private: priv });
  const get = (c: AdminClients, key: string) => call<T.KvGetRequest, T.KvEntry__Output>(c, c.kv, c.kv.Get, { key, scope: '', decrypt: true });
  await set(alice, 'db-pass', 'alice-private-value', true);
  const onPrivate = await callError(set(bob, 'db-pass', 'bob-value'));
  t.equal(onPrivate, undefined, 'bob\'s set of a name alice holds privately is not refused');
  const fresh = await set(bob, 'never-used', 'bob-value');
  const same = await set(bob, 'db-pass', 'bob-value');
  const shape = (e: T.KvEntry__Output) => ({ ...e, key: '', value: '', updatedAtMs: 0, keyVersion: 0 });
  t.same(shape(same), shape(fresh), 'and answers exactly as for a name nobody uses');
  t.equal((await get(alice, 'db-pass')).value, 'alice-private-value', 'alice\'s private value is not overwritten');
  t.equal((await get(bob, 'db-pass')).value, 'bob-value', 'bob reads the shared key he wrote');
  const list = await call<T.KvListRequest, T.KvListResponse__Output>(bob, bob.kv, bob.kv.List, { prefix: '' });
  t.notOk(list.entries.some((e) => e.private), 'bob\'s list shows no private key of alice');
  const del = await callError(call<T.KvDeleteRequest, T.KvDeleteResponse__Output>(bob, bob.kv, bob.kv.Delete, { key: 'db-pass', scope: '' }));
  t.equal(del, undefined, 'bob deletes only the shared key');
  t.equal((await get(alice, 'db-pass')).value, 'alice-private-value', 'alice\'s key is still there');
  t.equal((await callError(get(bob, 'db-pass')))?.code, 'TRELLIS_E_NOT_FOUND', 'for bob, the name is free again: NOT_FOUND, as for any unused name');

  // A private key written before private keys had their creator's name space is moved at start.
  const c = h.hub.components;
  const now = Date.now();
  const legacyId = kvId('default', 'tenant', '', 'old-priv');
  await c.store.put('kv', { id: legacyId, tenant: 'default', scope: 'tenant', owner: '', key: 'old-priv', secret: true, value: c.kv.keyring.encrypt('old-private-value', kvAad({ tenant: 'default', scope: 'tenant', owner: '', key: 'old-priv' })), createdBy: 'alice', private: true, expiresAt: 0, createdAt: now, updatedAt: now });
  await h.restart();
  t.equal(await h.hub.components.store.get('kv', legacyId), undefined, 'the old private key left the shared name space');
  const alice2 = adminClients(h.adminAddr, h.caPem, (await login(h, 'alice', PW)).token, 'default');
  const bob2 = adminClients(h.adminAddr, h.caPem, (await login(h, 'bob', PW)).token, 'default');
  t.teardown(() => { alice2.close(); bob2.close(); });
  t.equal(await callError(set(bob2, 'old-priv', 'bob-value')), undefined, 'another user\'s set of its name is not refused');
  t.equal((await get(alice2, 'old-priv')).value, 'old-private-value', 'and its creator still reads it (secret re-encrypted for its new place)');
});

t.test('rules, hub and edge, never see --private keys', async (t) => {
  await using h = await startHub();
  const agent = await h.agent();
  const value = 'private-value-never-for-rules';
  await kvSet(h, ADMIN, 'pk', value, { private: true });
  await kvSet(h, ADMIN, 'pub', 'public-value');
  await install(h, opsPack());
  const create = (def: object) => adminCall<T.CreateRuleRequest, T.RuleInfo__Output>(h, h.admin.rules, h.admin.rules.CreateRule, { definition: JSON.stringify(def), replace: true, source: 't' });
  const out = join(h.dir, 'hub.out');
  await create({ name: 'hub-private', trigger: 'core.test_pk', action: { ref: 'ops.echo', parameters: { msg: '{{ kv.pk }}', out } } });
  await create({ name: 'hub-public', trigger: 'core.test_pk', action: { ref: 'ops.echo', parameters: { msg: '{{ kv.pub }}', out } } });
  await create({ name: 'edge-private', trigger: 'core.test_pk', target: 'local', action: { ref: 'ops.echo', parameters: { msg: 'edge {{ kv.pk }}', out } } });
  await waitFor(() => agent.edge.ruleNames.includes('edge-private'), 10_000, 'edge rule on the agent');
  const cfg = JSON.parse(readFileSync(agent.edge.path, 'utf8')) as { sealedSecrets: Record<string, string> };
  t.notOk('kv:pk' in cfg.sealedSecrets, 'the agent is sent no value for a --private key');
  agent.publishEvent('core.test_pk', { x: 1 });
  await waitFor(() => readLines(out).includes('public-value'), 15_000, 'the rule with a shared key ran');
  const list = (rule: string) => adminCall<T.ListExecutionsRequest, T.ListExecutionsResponse__Output>(h, h.admin.executions, h.admin.executions.ListExecutions, { limit: 100, rule } as T.ListExecutionsRequest);
  await waitFor(async () => { const x = (await list('edge-private')).executions; return x.length > 0 && x.every((e) => FINAL_STATUSES.has(e.status as ExecutionStatus)); }, 15_000, 'edge run reported, finished');
  t.notOk(readLines(out).some((l) => l.includes(value)), 'no action received the private value');
  t.equal((await list('hub-private')).executions.length, 0, 'the hub rule could not request a run: the private key does not exist for it');
  t.not((await list('edge-private')).executions[0]?.status, 'succeeded', 'the edge run did not get the value either');
  t.notOk(h.logLines.join('\n').includes(value), 'the value is in no hub log line');
});

t.test('a {{ kv.x }} that becomes a secret after the rule was saved is not opened for an author without secrets:use (hub and edge)', async (t) => {
  await using h = await startHub();
  const agent = await h.agent();
  await install(h, opsPack());
  const c = h.hub.components;
  await kvSet(h, ADMIN, 'x', 'plain-first');
  await c.iam.createRole('kv-author', '', ['rules:write', 'rules:read', 'actions:execute', 'kv:read'].map((permission) => ({ permission, scope: '' })));
  await c.auth.createUser({ username: 'eve', password: PW, roles: ['kv-author'], tenants: ['default'] });
  const eve = adminClients(h.adminAddr, h.caPem, (await login(h, 'eve', PW)).token, 'default');
  t.teardown(() => eve.close());
  const out = join(h.dir, 'kv.out');
  const create = (def: object) => call<T.CreateRuleRequest, T.RuleInfo__Output>(eve, eve.rules, eve.rules.CreateRule, { definition: JSON.stringify(def), replace: false, source: 't' });
  await create({ name: 'hub-x', trigger: 'core.test_kv', action: { ref: 'ops.echo', parameters: { msg: 'hub {{ kv.x }}', out } } });
  await create({ name: 'edge-x', trigger: 'core.test_edge', target: 'local', action: { ref: 'ops.echo', parameters: { msg: 'edge {{ kv.x }}', out } } });
  const sealed = () => Object.keys((JSON.parse(readFileSync(agent.edge.path, 'utf8')) as { sealedSecrets: Record<string, string> }).sealedSecrets);
  await waitFor(() => agent.edge.ruleNames.includes('edge-x') && sealed().includes('kv:x'), 10_000, 'edge rule with its plain value on the agent');
  agent.publishEvent('core.test_kv', { n: 1 });
  await waitFor(() => readLines(out).includes('hub plain-first'), 15_000, 'the hub rule ran with the plain value');

  const secret = 'now-a-secret-value-77';
  await kvSet(h, ADMIN, 'x', secret, { secret: true });
  await waitFor(() => !sealed().includes('kv:x'), 10_000, 'the value is taken off the agent once it is a secret');
  agent.publishEvent('core.test_kv', { n: 2 });
  agent.publishEvent('core.test_kv_control', { n: 2 });
  await waitFor(async () => (await getRule(h, 'hub-x')).matched >= 2, 10_000, 'second event matched');
  await waitFor(() => h.logLines.some((l) => l.includes('rule fired but its action could not be requested')), 10_000, 'the hub rule\'s refused request');
  t.notOk(readLines(out).some((l) => l.includes(secret)), 'the hub rule did not run with the secret');
  t.notOk(JSON.stringify(await c.executions.list('default', { rule: 'hub-x' })).includes(secret), 'nor is it in history');
  t.ok(h.logLines.some((l) => l.includes('rule fired but its action could not be requested') && l.includes('secrets:use')), 'the refusal is logged, naming the permission');
  t.notOk(h.logLines.join('\n').includes(secret), 'never the value');
});
