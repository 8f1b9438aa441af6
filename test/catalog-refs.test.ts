/**
 * Issue 12, catalog and references (second half, see catalog.test.ts): references between
 * rules and actions checked at install, remove and test; counters that tell the truth (edge
 * rules reported by agents, refused webhook calls by reason).
 */
import t, { type Test } from 'tap';
import { cp, writeFile } from 'node:fs/promises';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { runCli } from './helpers/cli.js';
import https from 'node:https';
import { ADMIN_PASSWORD, startHub, tempDir, callError, login, waitFor, type TestHub } from './helpers/hub.js';
import { install } from './helpers/admin.js';
import { signWebhook } from '../hub/webhooks/index.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import { compileCriteria, parseRule } from '../common/rules/index.js';
import { compileUserRegex, pythonDollar } from '../common/regex.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';
import { DEMO, PW, clientsAs, installPack, postWebhook, cliLogin, pf, opsPack, webPack } from './helpers/catalog.js';

t.test('references: a pack rule calling an action that is not installed is refused at install; packs remove refuses while rules outside use its actions (--force disables them, saying which); rules test warns', async (t) => {
  await using h = await startHub();
  const c = h.hub.components;
  await c.iam.createRole('packer', '', [{ permission: 'packs:install', scope: '' }, { permission: 'actions:execute', scope: '' }, { permission: 'rules:write', scope: '' }, { permission: 'rules:read', scope: '' }, { permission: 'packs:list', scope: '' }]);
  await c.auth.createUser({ username: 'pat', password: PW, roles: ['packer'], tenants: ['default'] });
  const pat = await clientsAs(t, h, 'pat', 'default');

  // ops is not installed: web's rule would call nothing.
  const refused = await callError(installPack(pat, webPack()));
  t.equal(refused?.code, 'TRELLIS_E_PACK_INVALID');
  t.match(refused?.message, /rules\/page\.yaml:3: action\.ref: action "ops\.page" is not installed in this tenant/);
  t.equal(c.packs.get('default', 'web'), undefined, 'nothing installed');
  t.same(c.rules.list('default').map((r) => r.def.ref), []);

  await installPack(pat, opsPack());
  t.equal((await installPack(pat, webPack())).name, 'web', 'installs once ops is there');
  const env = await cliLogin(t, h);
  await writeFile(join(h.dir, 'mine.yaml'), 'name: mine\ntrigger: webhook.y\naction: { ref: ops.log }\ntarget: { selector: { role: db } }\n');
  const created = await runCli(['rules', 'create', join(h.dir, 'mine.yaml')], env);
  t.equal(created.code, 0, created.err);

  // A new version of ops that drops an action still called is refused.
  const drop = await callError(installPack(pat, opsPack('2.0.0', ['page'])));
  t.equal(drop?.code, 'TRELLIS_E_IN_USE');
  t.match(drop?.message, /pack ops 2\.0\.0 drops 1 action that enabled rules outside it still call: mine \(calls ops\.log\)/);
  t.equal(c.packs.get('default', 'ops')?.version, '1.0.0');

  const rm = await runCli(['packs', 'remove', 'ops'], env);
  t.equal(rm.code, 1);
  t.match(rm.err, /pack ops is used by 2 enabled rules outside it: mine \(calls ops\.log\), web\.page \(pack web, calls ops\.page\); disable or delete them first, or pass --force to disable them \(TRELLIS_E_IN_USE\)/);
  t.ok(c.packs.get('default', 'ops'), 'still installed');

  // rules test: a rule whose action is missing is tested, with a warning.
  await writeFile(join(h.dir, 'ghost.yaml'), 'name: ghost\ntrigger: webhook.z\naction: { ref: gone.away }\ntarget: { selector: { role: db } }\n');
  await writeFile(join(h.dir, 'ev.json'), '{"a": 1}');
  const tested = await runCli(['rules', 'test', join(h.dir, 'ghost.yaml'), join(h.dir, 'ev.json')], env);
  t.equal(tested.code, 0, tested.err);
  t.match(tested.out, /^MATCH/);
  t.match(tested.err, /warning: action gone\.away is not installed in tenant default: the rule would run nothing/);
  const testedOk = await runCli(['rules', 'test', 'mine', join(h.dir, 'ev.json')], env);
  t.equal(testedOk.err, '', 'no warning when the action is installed');

  // --force disables other people's rules: it needs rules:write, as `rules disable` does.
  await c.iam.createRole('installer', '', [{ permission: 'packs:install', scope: '' }, { permission: 'actions:execute', scope: '' }, { permission: 'packs:list', scope: '' }]);
  await c.auth.createUser({ username: 'ivy', password: PW, roles: ['installer'], tenants: ['default'] });
  const ivy = await clientsAs(t, h, 'ivy', 'default');
  const noRight = await callError(call<T.RemovePackRequest, T.RemovePackResponse__Output>(ivy, ivy.packs, ivy.packs.RemovePack, { name: 'ops', force: true }));
  t.equal(noRight?.code, 'TRELLIS_E_PERMISSION_DENIED', 'packs remove --force without rules:write');
  t.match(noRight?.message, /lacks the permission rules:write/);
  t.ok(c.packs.get('default', 'ops'), 'still installed');
  t.same(c.rules.list('default').map((r) => [r.def.ref, r.def.enabled]), [['mine', true], ['web.page', true]], 'no rule disabled');

  const forced = await runCli(['packs', 'remove', 'ops', '--force'], env);
  t.equal(forced.code, 0, forced.err);
  t.equal(forced.out, 'disabled 2 rules that called its actions: mine, web.page\nremoved pack ops\n');
  t.equal(c.packs.get('default', 'ops'), undefined);
  t.same(c.rules.list('default').map((r) => [r.def.ref, r.def.enabled]), [['mine', false], ['web.page', false]]);
  const audit = h.logLines.filter((l) => l.includes('rules that called its actions disabled'));
  t.equal(audit.length, 1);

  // Enabling a rule whose action is gone is refused; the rule cannot "fire" into nothing.
  const en = await runCli(['rules', 'enable', 'mine'], env);
  t.equal(en.code, 1);
  t.match(en.err, /rule mine: action ops\.log is not installed in tenant default: install its pack first/);
});

t.test('counters: edge rules report matched/fired/suppressed to the hub in heartbeats (rules list shows them; an agent restart loses nothing, a repeated report adds nothing, a report for a rule not sent to the agent is ignored)', async (t) => {
  await using h = await startHub({ config: { heartbeatInterval: '1s' } });
  const out = join(h.dir, 'edge.out');
  await install(h, [
    pf('pack.yaml', 'name: ops\nversion: 1.0.0\ndescription: ops\n'),
    pf('actions/mark.yaml', 'name: mark\ndescription: mark\nrunner: command\ncommand: ["/bin/sh", "-c", "echo x >> \\"$OUT\\""]\nenv: { OUT: ' + JSON.stringify(out) + ' }\ntimeout: 10s\n'),
    pf('rules/tick.yaml', 'name: tick\ntrigger: core.tick\naction: { ref: ops.mark }\ntarget: local\nrate_limit: { count: 2, per: 1h }\n'),
  ]);
  const dataDir = (await h.enroll()).dataDir;
  let agent = await h.agent({ dataDir });
  await waitFor(() => agent.edge.ruleNames.includes('ops.tick'), 10_000, 'edge rule on the agent');
  for (let i = 0; i < 5; i++) agent.publishEvent('core.tick', { i });
  const live = () => h.hub.components.rules.get('default', 'ops.tick').stats;
  await waitFor(() => live().matched === 5, 15_000, 'the hub has the edge counters');
  t.same([live().matched, live().fired, live().suppressed], [5, 2, 3]);

  const env = await cliLogin(t, h);
  const ls = await runCli(['rules', 'list'], env);
  t.match(ls.out, /\nops\.tick\s+yes\s+core\.tick\s+ops\.mark\s+local\s+5\s+2\s+3\s+admin/, 'rules list shows the edge counters');

  // The agent restarts (new boot): its counters start at 0 there, the hub keeps adding.
  await agent.close();
  agent = await h.agent({ dataDir });
  await waitFor(() => agent.edge.ruleNames.includes('ops.tick'), 10_000, 'edge rule after restart');
  agent.publishEvent('core.tick', { i: 5 });
  await waitFor(() => live().matched === 6, 15_000, 'one more match after the agent restarted');
  t.same([live().matched, live().fired, live().suppressed], [6, 3, 3], 'nothing lost across the agent restart');
  await agent.close();

  // Reports are agent data: the same report twice adds nothing; rules the hub did not send that agent count nothing.
  const rules = h.hub.components.rules;
  const agentId = (await h.enroll()).agentId;
  const sentTo = (ref: string) => ref === 'ops.tick';
  t.equal(rules.edgeCounts('default', agentId, 'boot-1', [{ rule: 'ops.tick', matched: 10, fired: 1, suppressed: 9 }], sentTo), 1);
  t.equal(rules.edgeCounts('default', agentId, 'boot-1', [{ rule: 'ops.tick', matched: 10, fired: 1, suppressed: 9 }], sentTo), 1);
  t.same([live().matched, live().fired, live().suppressed], [16, 4, 12], 'a repeated report adds nothing');
  t.equal(rules.edgeCounts('default', agentId, 'boot-1', [{ rule: 'ops.tick', matched: 11, fired: 1, suppressed: 10 }], () => false), 0, 'not sent to this agent: ignored');
  t.equal(rules.edgeCounts('other', agentId, 'boot-1', [{ rule: 'ops.tick', matched: 99, fired: 99, suppressed: 0 }], sentTo), 0, 'another tenant\'s rule: ignored');
  t.equal(rules.edgeCounts('default', agentId, 'boot-1', [{ rule: 'ops.tick', matched: -5, fired: Number.NaN, suppressed: 2 ** 50 }], sentTo), 1);
  t.same([live().matched, live().fired, live().suppressed], [16, 4, 12 + 2 ** 48 - 9], 'garbage counts as 0, huge values are capped');
});

t.test('counters: webhooks list shows refused calls by reason (calls to unknown names are not counted)', async (t) => {
  await using h = await startHub();
  const env = await cliLogin(t, h);
  const created = JSON.parse((await runCli(['webhooks', 'create', 'deploy', '--json'], env)).out) as { secret: string };
  const body = '{"ok":true}';
  const nowS = () => Math.floor(Date.now() / 1000);
  const sig = (t0: number, secret = created.secret) => signWebhook(secret, body, t0);
  t.equal((await postWebhook(h, '/webhooks/deploy', body, { 'x-trellis-signature': sig(nowS()) })).status, 202);
  t.equal((await postWebhook(h, '/webhooks/deploy', body, { 'x-trellis-signature': sig(nowS(), 'wrong-secret') })).status, 401);
  t.equal((await postWebhook(h, '/webhooks/deploy', body, { 'x-trellis-signature': sig(nowS(), 'wrong-secret-2') })).status, 401);
  t.equal((await postWebhook(h, '/webhooks/deploy', body, { 'x-trellis-signature': sig(nowS() - 3600) })).status, 401);
  t.equal((await postWebhook(h, '/webhooks/deploy', body, { 'content-type': 'text/plain' })).status, 415);
  t.equal((await postWebhook(h, '/webhooks/deploy', body, { 'x-api-key': 'tak1_not-a-real-key' })).status, 401);
  t.equal((await postWebhook(h, '/webhooks/nope', body, { 'x-trellis-signature': sig(nowS()) })).status, 401);

  const ls = await runCli(['webhooks', 'list'], env);
  t.equal(ls.code, 0, ls.err);
  t.match(ls.out, /^NAME\s+TENANT\s+TRIGGER\s+RECEIVED\s+LAST\s+REFUSED\s+CREATED BY/);
  t.match(ls.out, /\ndeploy\s+default\s+webhook\.deploy\s+1\s+\S+\s+5 \(bad-signature 2, api-key 1, content-type 1, stale 1\)\s+admin/);
  const j = JSON.parse((await runCli(['webhooks', 'list', '--json'], env)).out) as Array<{ name: string; refused: Record<string, number> }>;
  t.same(j.map((w) => w.name), ['deploy'], 'the unknown name left no counter');
  t.same(j[0]!.refused, { 'bad-signature': 2, 'api-key': 1, 'content-type': 1, stale: 1 });
});
