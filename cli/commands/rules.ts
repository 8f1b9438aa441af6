/**
 * `trellis rules create|list|show|enable|disable|delete|test`. A rule is a YAML (or JSON) file;
 * pack rules come with their pack and can only be enabled or disabled here.
 */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { TrellisError } from '../../common/errors.js';
import { call, withClients } from '../client.js';
import { readStdin } from '../prompt.js';
import { when, print, printErr, addOutputOptions, formatOf, output, outputOne, printDocument, type OutputOptions } from '../format.js';
import type { RuleDef } from '../../common/automation/types.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

const MAX_FILE = 64 * 1024;

async function readInput(file: string, what: string): Promise<Buffer> {
  if (file === '-') return Buffer.from(await readStdin(MAX_FILE));
  let b: Buffer;
  try { b = readFileSync(file); } catch (e) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `cannot read ${what} ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (b.length > MAX_FILE) throw new TrellisError('TRELLIS_E_TOO_LARGE', `${file} is ${b.length} bytes: at most ${MAX_FILE}`);
  return b;
}

function showRule(r: T.RuleInfo__Output): string {
  const def = JSON.parse(Buffer.from(r.definitionJson).toString('utf8') || '{}') as Record<string, unknown>;
  return [
    `name:        ${r.name}${r.pack ? `  (pack ${r.pack})` : ''}`,
    `enabled:     ${r.enabled}${r.blocked ? `, but BLOCKED: ${r.blocked}` : ''}`,
    `author:      ${r.author || '-'} (the rule acts with this user's current rights)`,
    `trigger:     ${r.trigger}`,
    `action:      ${r.action}`,
    `target:      ${r.target}`,
    `counters:    matched ${r.matched}, fired ${r.fired}, suppressed ${r.suppressed} (since the hub started)`,
    `created:     ${r.createdMs ? when(r.createdMs) : '-'} by ${r.createdBy || '-'}`,
    `definition:  ${JSON.stringify(def, null, 2).replace(/\n/g, '\n             ')}`,
  ].join('\n');
}

export function addRuleCommands(program: Command): void {
  const rules = program.command('rules').description('rules: a trigger type and criteria that run an action, on the hub or at the edge (target: local)');

  rules.command('create')
    .description('create a rule from a YAML or JSON file (`-` reads standard input)')
    .argument('<file>', 'the rule file')
    .option('--replace', 'replace a rule of the same name')
    .addHelpText('after', `
Example rule file:
  name: restart-nginx
  trigger: core.process
  criteria:
    trigger.payload.name: { type: equals, pattern: nginx }
    trigger.payload.present: { type: equals, pattern: false }
  action:
    ref: web.restart
    parameters: { service: "{{ trigger.payload.name }}" }
  target: local            # or {agent: ID} / {selector: {role: web}}; default: the agent that sent the event
  cooldown: 30s
  rate_limit: { count: 10, per: 1m }`)
    .action(async (file: string, o) => {
      const text = (await readInput(file, 'rule file')).toString('utf8');
      const r = await withClients((c) => call<T.CreateRuleRequest, T.RuleInfo__Output>(c, c.rules, c.rules.CreateRule, { definition: text, replace: !!o.replace, source: file === '-' ? 'stdin' : file }));
      print(`rule ${r.name} saved (${r.enabled ? 'enabled' : 'disabled'}; ${r.trigger} → ${r.action} on ${r.target})`);
    });

  addOutputOptions(rules.command('list')
    .description('list rules; ENABLED "blocked": enabled, but its author no longer holds what it needs (deactivated or deleted, out of the tenant, or a permission lost), so it does not fire; AUTHOR: whose rights it acts with; MATCHED/FIRED/SUPPRESSED since the hub started: hub rules counted on the hub, edge rules (target local) summed from what each agent reports in its heartbeats')
    .option('--pack <pack>', 'only rules of this pack')
    .option('--trigger <type>', 'only rules for this trigger type'), 'pack, created')
    .action(async (o) => {
      const r = await withClients((c) => call<T.ListRulesRequest, T.ListRulesResponse__Output>(c, c.rules, c.rules.ListRules, { pack: o.pack ?? '', trigger: o.trigger ?? '' }));
      await output(o, r.rules, [
        { header: 'NAME', cell: (x) => x.name }, { header: 'PACK', cell: (x) => x.pack || '-', wide: true }, { header: 'ENABLED', cell: (x) => (x.enabled ? (x.blocked ? 'blocked' : 'yes') : 'no') },
        { header: 'TRIGGER', cell: (x) => x.trigger }, { header: 'ACTION', cell: (x) => x.action }, { header: 'TARGET', cell: (x) => x.target },
        { header: 'MATCHED', cell: (x) => String(x.matched) }, { header: 'FIRED', cell: (x) => String(x.fired) }, { header: 'SUPPRESSED', cell: (x) => String(x.suppressed) },
        { header: 'AUTHOR', cell: (x) => x.author || '-' }, { header: 'CREATED', cell: (x) => when(x.createdMs), wide: true },
      ], { data: r.rules.map((x) => ({ ...x, definitionJson: undefined, definition: JSON.parse(Buffer.from(x.definitionJson).toString() || '{}') })) });
      if (formatOf(o) === 'json' || formatOf(o) === 'yaml') return;
      const blocked = r.rules.filter((x) => x.enabled && x.blocked);
      for (const x of blocked) print(`blocked: ${x.name}: ${x.blocked}`);
    });

  addOutputOptions(rules.command('show')
    .description('show a rule; -o yaml prints its rule file, which `trellis rules create FILE --replace` reads back unchanged')
    .argument('<name>', 'rule name, or pack.rule'))
    .addHelpText('after', `
  -o yaml   the rule file (name, trigger, criteria, action, target, cooldown, …) after a comment
            header with its state; edit it and save it back:
              trellis rules show restart-nginx -o yaml > r.yaml && trellis rules create r.yaml --replace
            (a pack rule names its pack: it goes back into the pack's rules/ folder)
  -o json   the whole record (counters, author, state), with the rule file under "file" (--json: the same)`)
    .action(async (name: string, o: OutputOptions) => {
      const mode = formatOf(o);
      const r = await withClients((c) => call<T.GetRuleRequest, T.RuleInfo__Output>(c, c.rules, c.rules.GetRule, { name }));
      if (mode === 'table' || mode === 'wide') return print(showRule(r));
      const { ruleFileOf } = await import('../../common/rules/schema.js');
      const def = JSON.parse(Buffer.from(r.definitionJson).toString() || '{}') as RuleDef;
      if (mode === 'json') return printDocument('json', { ...r, definitionJson: undefined, definition: def, file: ruleFileOf(def) });
      const { stringify } = await import('yaml');
      print([
        `# rule ${r.name} in tenant ${r.tenant}${r.pack ? ` (pack ${r.pack}: edit the pack's rules/ file)` : ''}; author ${r.author || '-'}`,
        `# counters since the hub started: matched ${r.matched}, fired ${r.fired}, suppressed ${r.suppressed}${r.blocked ? `; BLOCKED: ${r.blocked}` : ''}`,
        stringify(ruleFileOf(def), { lineWidth: 0 }),
      ].join('\n'));
    });

  for (const [cmd, enabled] of [['enable', true], ['disable', false]] as const) {
    rules.command(cmd)
      .description(`${cmd} a rule (pack rules too)`)
      .argument('<name>')
      .action(async (name: string) => {
        const r = await withClients((c) => call<T.SetRuleEnabledRequest, T.RuleInfo__Output>(c, c.rules, c.rules.SetRuleEnabled, { name, enabled }));
        print(`rule ${r.name} ${r.enabled ? 'enabled' : 'disabled'}`);
      });
  }

  rules.command('delete')
    .description('delete a rule (pack rules go with their pack: disable them instead)')
    .argument('<name>')
    .action(async (name: string) => {
      await withClients((c) => call<T.DeleteRuleRequest, T.DeleteRuleResponse__Output>(c, c.rules, c.rules.DeleteRule, { name }));
      print(`deleted rule ${name}`);
    });

  rules.command('test')
    .description('does RULE match EVENT.json, and what would run where? (changes nothing; warns on stderr when its action is not installed)')
    .argument('<rule>', 'a rule name, or a rule file (YAML/JSON)')
    .argument('<event>', 'event JSON file: {"type": ..., "payload": {...}, "agent": ...} or just the payload; `-` reads stdin')
    .option('--json', 'JSON')
    .action(async (rule: string, event: string, o) => {
      let definition = '';
      let name = rule;
      if (/\.(ya?ml|json)$/i.test(rule)) { definition = (await readInput(rule, 'rule file')).toString('utf8'); name = ''; }
      const eventJson = await readInput(event, 'event file');
      const r = await withClients((c) => call<T.TestRuleRequest, T.TestRuleResponse__Output>(c, c.rules, c.rules.TestRule, { name, definition, eventJson }));
      const params = JSON.parse(Buffer.from(r.parametersJson).toString('utf8') || '{}');
      if (o.json) return print(JSON.stringify({ matched: r.matched, reasons: r.reasons, action: r.action, parameters: params, target: r.target, agents: r.agents, warnings: r.warnings }, null, 2));
      for (const w of r.warnings) printErr(`warning: ${w}`);
      print([
        r.matched ? 'MATCH' : 'NO MATCH',
        ...r.reasons.map((x) => `  ${x}`),
        ...(r.matched ? [`would run: ${r.action} ${JSON.stringify(params)}`, `on: ${r.target}${r.agents.length ? ` → ${r.agents.join(', ')}` : r.target === 'local' ? ' (the agent that emitted the event)' : ' (no online agent now)'}`] : []),
      ].join('\n'));
      if (!r.matched) process.exitCode = 1;
    });
}
