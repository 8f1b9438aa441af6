/**
 * Issue 12, catalog and references: `trellis actions list|show`, `packs validate` offline,
 * `rules show -o yaml` round trip and `packs show` file names, StackStorm criteria parity.
 * References and counters: catalog-refs.test.ts.
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

t.test('trellis actions list|show: parameters with type, required and default, runner, pack, file; core.command built in; packs:list needed; tenant scope', async (t) => {
  await using h = await startHub();
  const env = await cliLogin(t, h);
  const inst = await runCli(['packs', 'install', DEMO, '--force'], env);
  t.equal(inst.code, 0, inst.err);

  const ls = await runCli(['actions', 'list'], env);
  t.equal(ls.code, 0, ls.err);
  const lines = ls.out.trim().split('\n');
  t.match(lines[0], /^REF\s+RUNNER\s+PARAMETERS\s+DESCRIPTION$/);
  t.match(lines[1], /^core\.command\s+command\s+argv\* env cwd timeout="30s"\s+run a command/, 'the built-in action first');
  t.match(ls.out, /\ndemo\.restart\s+command\s+service="nginx"\s+Restart a systemd service/);
  t.match(ls.out, /\ndemo\.cleanup\s+script\s/);

  const only = await runCli(['actions', 'list', '--pack', 'core'], env);
  t.equal(only.out.trim().split('\n').length, 2, 'only the built-in action');

  const show = await runCli(['actions', 'show', 'demo.restart'], env);
  t.equal(show.code, 0, show.err);
  t.match(show.out, /action: +demo\.restart\n/);
  t.match(show.out, /pack: +demo \(tenant default\), file actions\/restart\.yaml/);
  t.match(show.out, /runner: +command, timeout 2m, as root/);
  t.match(show.out, /needs: +actions:execute@action:demo\.restart/);
  t.match(show.out, /run it: +trellis run demo\.restart \[service=…\] \(--agent ID \| --selector k=v\)/);
  t.match(show.out, /service\s+string\s+yes\s+"nginx"\s+one of "nginx", "apache2", "haproxy"  The unit to restart/);

  const y = await runCli(['actions', 'show', 'demo.restart', '-o', 'yaml'], env);
  t.equal(y.code, 0, y.err);
  const v = parseYaml(y.out) as { ref: string; runner: string; pack: string; file: string; parameters: Record<string, { type: string; required: boolean; default?: unknown; enum?: unknown[] }>; definition: { command: string[] } };
  t.same([v.ref, v.runner, v.pack, v.file], ['demo.restart', 'command', 'demo', 'actions/restart.yaml']);
  t.same(v.parameters.service, { type: 'string', required: true, default: 'nginx', enum: ['nginx', 'apache2', 'haproxy'], description: 'The unit to restart' });
  t.same(v.definition.command, ['systemctl', 'restart', '{{ service }}']);
  const j = JSON.parse((await runCli(['actions', 'list', '--json'], env)).out) as Array<{ ref: string; builtin: boolean }>;
  t.same(j.map((a) => a.ref), ['core.command', 'demo.cleanup', 'demo.notify', 'demo.restart']);
  t.equal(j[0]!.builtin, true);

  const core = await runCli(['actions', 'show', 'core.command'], env);
  t.match(core.out, /\(built in\)/);
  t.match(core.out, /needs: +agents:run/);
  t.match(core.out, /argv\s+array\s+yes\s+-/);

  const missing = await runCli(['actions', 'show', 'demo.nope'], env);
  t.equal(missing.code, 1);
  t.match(missing.err, /no action "demo\.nope" in tenant default: install its pack .*trellis actions list.*\(TRELLIS_E_NOT_FOUND\)/);

  // Negative: no packs:list, no catalog. Another tenant's actions do not exist.
  const c = h.hub.components;
  await c.iam.createTenant('red', '');
  await c.iam.createRole('nothing', '', []);
  await c.auth.createUser({ username: 'nobody', password: PW, roles: ['nothing'], tenants: ['default'] });
  await c.auth.createUser({ username: 'reader', password: PW, roles: ['observer'], tenants: ['red'] });
  const nobody = await clientsAs(t, h, 'nobody', 'default');
  t.equal((await callError(call(nobody, nobody.packs, nobody.packs.ListActions, { pack: '' })))?.code, 'TRELLIS_E_PERMISSION_DENIED');
  t.equal((await callError(call(nobody, nobody.packs, nobody.packs.GetAction, { ref: 'demo.restart' })))?.code, 'TRELLIS_E_PERMISSION_DENIED');
  const reader = await clientsAs(t, h, 'reader', 'red');
  const theirs = await call<T.ListActionsRequest, T.ListActionsResponse__Output>(reader, reader.packs, reader.packs.ListActions, { pack: '' });
  t.same(theirs.actions.map((a) => a.ref), ['core.command'], 'tenant red sees no action of default');
  t.equal((await callError(call(reader, reader.packs, reader.packs.GetAction, { ref: 'demo.restart' })))?.code, 'TRELLIS_E_NOT_FOUND');
});

t.test('trellis packs validate DIR|TARBALL: offline (no hub, no profile), the same checks as install, problems as file:line: field', async (t) => {
  await using home = await tempDir();
  // No profile, and a hub address nobody listens on: validate must not need either.
  const env = { TRELLIS_HOME: home.path, TRELLIS_HUB: '127.0.0.1:1', TRELLIS_API_KEY: '', TRELLIS_TENANT: '' };
  const ok = await runCli(['packs', 'validate', DEMO], env);
  t.equal(ok.code, 0, ok.err);
  t.equal(ok.out.trim(), 'pack demo 1.0.0 is valid: 3 actions, 1 sensor, 1 rule, 8 files');
  t.equal(ok.err, '');

  const tgz = join(home.path, 'demo.tgz');
  const { create } = await import('tar');
  await create({ gzip: true, file: tgz, cwd: dirname(DEMO) }, ['demo']);
  const fromTar = await runCli(['packs', 'validate', tgz], env);
  t.equal(fromTar.code, 0, fromTar.err);
  t.match(fromTar.out, /^pack demo 1\.0\.0 is valid/);

  const bad = join(home.path, 'bad');
  await cp(DEMO, bad, { recursive: true });
  await writeFile(join(bad, 'actions', 'restart.yaml'), 'name: restart\nrunner: command\ncommand: [a]\nparameters:\n  x: { type: text }\n');
  await writeFile(join(bad, 'rules', 'other.yaml'), 'name: other\ntrigger: core.cpu\naction: { ref: demo.missing }\ntarget: local\n');
  await writeFile(join(bad, 'notes.txt'), 'x');
  const refused = await runCli(['packs', 'validate', bad], env);
  t.equal(refused.code, 1);
  t.equal(refused.out, '');
  t.match(refused.err, /pack demo is invalid \(3 problems\)/);
  t.match(refused.err, /actions\/restart\.yaml:5: parameters\.x\.type: expected one of string/);
  t.match(refused.err, /rules\/other\.yaml:3: action\.ref: action "demo\.missing" is not defined in this pack/);
  t.match(refused.err, /notes\.txt: unknown file/);
  t.match(refused.err, /\(TRELLIS_E_PACK_INVALID\)/);

  const cross = join(home.path, 'cross');
  await cp(DEMO, cross, { recursive: true });
  await writeFile(join(cross, 'rules', 'page.yaml'), 'name: page\ntrigger: core.cpu\naction: { ref: ops.page }\ntarget: { selector: { role: web } }\n');
  const noted = await runCli(['packs', 'validate', cross], env);
  t.equal(noted.code, 0, noted.err);
  t.match(noted.out, /note: rule demo\.page \(rules\/page\.yaml\) calls ops\.page of another pack: the hub refuses the install unless it is installed in the tenant/);

  const none = await runCli(['packs', 'validate', join(home.path, 'nope')], env);
  t.equal(none.code, 1);
  t.match(none.err, /nope/);
});


t.test('rules show -o yaml round-trips into rules create --replace; packs show names the file of each action, sensor and rule', async (t) => {
  await using h = await startHub();
  const env = await cliLogin(t, h);
  t.equal((await runCli(['packs', 'install', DEMO], env)).code, 0);
  const rules = [
    ['hub.yaml', [
      'name: rich', 'description: "every field: quotes \' and {{ braces }}"', 'trigger: webhook.deploy',
      'criteria:',
      '  trigger.payload.env: { type: iequals, pattern: PROD }',
      '  trigger.payload.tags: { type: search, condition: any, pattern: { item.name: { type: regex, pattern: "^web-\\\\d+$" } } }',
      'action:', '  ref: demo.restart', '  parameters: { service: "{{ trigger.payload.svc | default(\\"nginx\\") }}" }',
      'target: { selector: { role: web, "k8s.io/zone": a } }', 'cooldown: 5400', 'rate_limit: { count: 10, per: 1500ms }', '',
    ].join('\n')],
    ['edge.yaml', [
      'name: edgy', 'enabled: false', 'trigger: core.disk',
      'criteria:', '  - { path: trigger.payload.percent, type: gte, pattern: 90 }', '  - { path: trigger.payload.percent, type: lt, pattern: 99.5 }',
      'action: { ref: demo.cleanup, parameters: { dir: /var/tmp, days: 3 } }', 'target: local', 'on: { selector: { role: db } }', '',
    ].join('\n')],
    ['plain.yaml', 'name: plain\ntrigger: webhook.x\naction: { ref: demo.notify }\n'],
  ] as const;
  for (const [file, text] of rules) {
    await writeFile(join(h.dir, file), text);
    const r = await runCli(['rules', 'create', join(h.dir, file)], env);
    t.equal(r.code, 0, r.err);
  }
  for (const name of ['rich', 'edgy', 'plain']) {
    const before = JSON.parse((await runCli(['rules', 'show', name, '--json'], env)).out) as { definition: unknown; file: unknown };
    const y = await runCli(['rules', 'show', name, '-o', 'yaml'], env);
    t.equal(y.code, 0, y.err);
    t.match(y.out, new RegExp(`^# rule ${name} in tenant default; author admin\\n# counters since the hub started: matched 0, fired 0, suppressed 0\\nname: ${name}\\n`));
    t.same(parseYaml(y.out), before.file, '-o yaml is the file that --json shows under "file"');
    await writeFile(join(h.dir, `${name}.back.yaml`), y.out);
    const back = await runCli(['rules', 'create', join(h.dir, `${name}.back.yaml`), '--replace'], env);
    t.equal(back.code, 0, back.err);
    const after = JSON.parse((await runCli(['rules', 'show', name, '-o', 'json'], env)).out) as { definition: unknown };
    t.same(after.definition, before.definition, `${name}: the same rule after the round trip`);
  }
  const rich = parseYaml((await runCli(['rules', 'show', 'rich', '-o', 'yaml'], env)).out) as Record<string, unknown>;
  t.same([rich.cooldown, rich.rate_limit], ['1h30m', { count: 10, per: '1500ms' }], 'durations as text, without loss');
  const packRule = await runCli(['rules', 'show', 'demo.disk_full', '-o', 'yaml'], env);
  t.match(packRule.out, /^# rule demo\.disk_full in tenant default \(pack demo: edit the pack's rules\/ file\)/);
  t.match(packRule.out, /\nname: disk_full\npack: demo\n/);
  const bad = await runCli(['rules', 'show', 'plain', '-o', 'xml'], env);
  t.equal(bad.code, 2);
  t.match(bad.err, /xml.*(table|yaml)/);

  const show = await runCli(['packs', 'show', 'demo'], env);
  t.equal(show.code, 0, show.err);
  t.match(show.out, /demo\.restart {2}\[command, timeout 2m, as root\] {2}Restart a systemd service {2}\(actions\/restart\.yaml\)\n/);
  t.match(show.out, /demo\.root_disk {2}\[disk, .*\(sensors\/disk\.yaml\)\n/);
  t.match(show.out, /demo\.disk_full {2}core\.disk .*\(rules\/disk_full\.yaml\)\n/);
  const json = JSON.parse((await runCli(['packs', 'show', 'demo', '--json'], env)).out) as { definition: { sources: Record<string, string> } };
  t.same(json.definition.sources, {
    'demo.cleanup': 'actions/cleanup.yaml', 'demo.notify': 'actions/notify.yaml', 'demo.restart': 'actions/restart.yaml',
    'demo.root_disk': 'sensors/disk.yaml', 'demo.disk_full': 'rules/disk_full.yaml',
  });
});

t.test('criteria parity with StackStorm: search any2any and all2any, an object searched as a one-item list, $ before one trailing newline (linear, on RE2)', async (t) => {
  const ev = (payload: unknown) => ({ id: 'e', type: 'core.x', payload, agent: '', tenant: 'default', timeMs: Date.now() });
  const search = (condition: string, payload: unknown) => compileCriteria([{
    path: 'trigger.payload.items', type: 'search', condition: condition as 'any',
    pattern: { 'item.name': { type: 'equals', pattern: 'web' }, 'item.up': { type: 'equals', pattern: true } },
  }])(ev({ items: payload }));
  const mixed = [{ name: 'web', up: false }, { name: 'db', up: true }]; // each item matches one criterion, none both
  const oneFull = [{ name: 'web', up: true }, { name: 'db', up: false }];
  const noneAtAll = [{ name: 'db', up: false }];
  t.same(['any', 'all', 'any2any', 'all2any'].map((c) => search(c, mixed)), [false, false, true, true], 'items matching one criterion each');
  t.same(['any', 'all', 'any2any', 'all2any'].map((c) => search(c, oneFull)), [true, false, true, false], 'one item matching both, one matching none');
  t.same(['any', 'all', 'any2any', 'all2any'].map((c) => search(c, noneAtAll)), [false, false, false, false], 'no item matches anything');
  t.same(['any', 'all', 'any2any', 'all2any'].map((c) => search(c, [])), [false, true, false, true], 'an empty list: all and all2any hold, as in StackStorm');
  t.same(['any', 'all', 'any2any', 'all2any'].map((c) => search(c, { name: 'web', up: true })), [true, true, true, true], 'an object is a one-item list');
  t.same(['any', 'all', 'any2any', 'all2any'].map((c) => search(c, { name: 'web', up: false })), [false, false, true, true]);
  t.same(['any', 'all'].map((c) => search(c, 'web')), [false, false], 'text cannot be searched');
  t.same(['any', 'any2any'].map((c) => search(c, null)), [false, false]);
  t.throws(() => compileCriteria([{ path: 'trigger.payload.x', type: 'search', condition: 'some' as 'any', pattern: { 'item.a': { type: 'exists' } } }]), /search needs condition: any, all, any2any, all2any/);
  t.throws(() => parseRule({ name: 'r', trigger: 'core.x', criteria: { 'trigger.payload.x': { type: 'search', condition: 'any3any', pattern: {} } }, action: { ref: 'a.b' } }), /condition/);
  t.equal(parseRule({ name: 'r', trigger: 'core.x', criteria: { 'trigger.payload.x': { type: 'search', condition: 'all2any', pattern: { 'item.a': { type: 'exists' } } } }, action: { ref: 'a.b' } }).criteria[0]!.condition, 'all2any', 'a rule file takes the new conditions');

  // $: Python's rule, for regex, iregex and matchregex, on hub and agent alike (common/regex.ts).
  const rx = (type: string, pattern: string, value: string) => compileCriteria([{ path: 'trigger.payload.v', type, pattern }])(ev({ v: value }));
  t.ok(rx('regex', '^ok$', 'ok\n'), 'regex: $ before one trailing newline');
  t.ok(rx('iregex', 'DONE$', 'job done\n'));
  t.ok(rx('matchregex', 'ok$', 'ok\n'));
  t.ok(rx('regex', '^ok$', 'ok'));
  t.notOk(rx('regex', '^ok$', 'ok\n\n'), 'two newlines: no');
  t.notOk(rx('regex', '^ok$', 'ok\nmore'), 'not at a newline in the middle');
  t.ok(rx('regex', '(?m)^ok$', 'ok\nmore'), '(?m): before every newline, as before');
  t.ok(rx('regex', '[$]', 'cost $5'), '$ in a class is a literal');
  t.ok(rx('regex', 'a\\$', 'a$b'), 'an escaped $ is a literal');
  t.ok(rx('regex', '\\Qa$\\E', 'xa$y'), '\\Q…\\E quotes $');
  t.notOk(rx('regex', '\\Qa$\\E', 'xa\n'), '... and it is not an anchor there');
  t.same(compileUserRegex('(?P<word>\\w+)$').exec('hello\n'), { match: ['hello', 'hello'], groups: { word: 'hello' } }, 'captures leave the newline out, as Python does');
  t.equal(pythonDollar('^(a|b)$|c$'), '^(a|b)(?:\\n?\\z)|c(?:\\n?\\z)');
  t.equal(pythonDollar('(?m)^a$'), undefined);
  t.equal(pythonDollar('[$]\\$'), undefined);

  // Still linear: the patterns that backtrack exponentially in V8 stay instant with the rewrite.
  for (const [pattern, input] of [['^(\\w|\\d)+$', `${'1'.repeat(5000)}!`], ['^(a|a)+$', `${'a'.repeat(5000)}!\n`], ['^(a|ab|b)*c$', 'ab'.repeat(5000)]] as const) {
    const start = performance.now();
    t.notOk(compileUserRegex(pattern).test(input), `${pattern} does not match`);
    t.ok(performance.now() - start < 2000, `${pattern} on ${input.length} characters: ${(performance.now() - start).toFixed(1)} ms`);
  }
});
