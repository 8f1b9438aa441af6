/**
 * The action catalog: `trellis actions list [--pack P]` and `trellis actions show PACK.ACTION`
 * (parameters with their types, defaults and whether required; runner; pack; what running it
 * needs and how). Built-in actions (`core.command`, what `trellis run -- CMD` runs) are listed too.
 */
import type { Command } from 'commander';
import { formatDuration } from '../../common/duration.js';
import { call, withClients } from '../client.js';
import { table, print, addOutputOptions, formatOf, printDocument, type OutputOptions } from '../format.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

const fromJson = (b: Buffer | Uint8Array): unknown => (b.length ? JSON.parse(Buffer.from(b).toString('utf8')) : undefined);

/** The plain (JSON/YAML) form of an action. */
export function actionValue(a: T.ActionInfo__Output): Record<string, unknown> {
  const def = fromJson(a.definitionJson);
  return {
    ref: a.ref, pack: a.pack, name: a.name, description: a.description, runner: a.runner, builtin: a.builtin,
    ...(a.tenant ? { tenant: a.tenant } : {}), ...(a.file ? { file: a.file } : {}),
    timeoutMs: Number(a.timeoutMs), ...(a.runAs ? { runAs: a.runAs } : {}),
    parameters: Object.fromEntries(a.parameters.map((p) => [p.name, {
      type: p.type, required: p.required, ...(p.defaultJson.length ? { default: fromJson(p.defaultJson) } : {}),
      ...(p.enumJson.length ? { enum: fromJson(p.enumJson) } : {}), ...(p.description ? { description: p.description } : {}), ...(p.secret ? { secret: true } : {}),
    }])),
    permission: a.permission, howToRun: a.howToRun, ...(def ? { definition: def } : {}),
  };
}

function paramCell(p: T.ActionParameter__Output): string {
  const d = p.defaultJson.length ? `=${Buffer.from(p.defaultJson).toString('utf8')}` : '';
  return `${p.name}${p.required && !d ? '*' : ''}${d}`;
}

/** The human view of `actions show`. */
export function formatAction(a: T.ActionInfo__Output): string {
  const out = [
    `action:      ${a.ref}${a.builtin ? '  (built in)' : ''}`,
    `pack:        ${a.pack}${a.tenant ? ` (tenant ${a.tenant})` : ''}${a.file ? `, file ${a.file}` : ''}`,
    `runner:      ${a.runner}, timeout ${formatDuration(Number(a.timeoutMs))}${a.runAs ? `, as ${a.runAs}` : ''}`,
    `description: ${a.description || '-'}`,
    `needs:       ${a.permission}`,
    `run it:      ${a.howToRun}`,
  ];
  if (a.parameters.length === 0) out.push('parameters:  none');
  else {
    out.push('parameters:');
    out.push(table(a.parameters.map((p) => [
      `  ${p.name}`, p.type, p.required ? 'yes' : 'no', p.defaultJson.length ? Buffer.from(p.defaultJson).toString('utf8') : '-',
      [p.secret ? '(secret)' : '', p.enumJson.length ? `one of ${(fromJson(p.enumJson) as unknown[]).map((v) => JSON.stringify(v)).join(', ')}` : '', p.description].filter(Boolean).join('  '),
    ]), ['  NAME', 'TYPE', 'REQUIRED', 'DEFAULT', 'DESCRIPTION']));
  }
  return out.join('\n');
}

export function addActionCommands(program: Command): void {
  const actions = program.command('actions').description('the action catalog: every action of the tenant\'s packs and the built-in ones (core.command)');

  addOutputOptions(actions.command('list')
    .description('list actions: ref, runner, parameters (* required, =default), description; built-in actions first (needs packs:list)')
    .option('--pack <pack>', 'only this pack\'s actions (core: the built-in ones)'))
    .addHelpText('after', '\n-o wide adds the tenant, the timeout and the pack file; -o json|yaml prints every field.')
    .action(async (o: OutputOptions & { pack?: string }) => {
      const mode = formatOf(o);
      const r = await withClients((c) => call<T.ListActionsRequest, T.ListActionsResponse__Output>(c, c.packs, c.packs.ListActions, { pack: o.pack ?? '' }));
      if (mode === 'json' || mode === 'yaml') return printDocument(mode, r.actions.map(actionValue));
      const wide = mode === 'wide';
      print(table(r.actions.map((a) => [
        a.ref, ...(wide ? [a.tenant || '-'] : []), a.runner, ...(wide ? [formatDuration(Number(a.timeoutMs)), a.file || (a.builtin ? '(built in)' : '-')] : []),
        a.parameters.map(paramCell).join(' ') || '-', a.description,
      ]), ['REF', ...(wide ? ['TENANT'] : []), 'RUNNER', ...(wide ? ['TIMEOUT', 'FILE'] : []), 'PARAMETERS', 'DESCRIPTION']));
    });

  addOutputOptions(actions.command('show')
    .description('show one action: parameters with type, required and default, runner, pack, the permission it needs and how to run it (needs packs:list)')
    .argument('<ref>', 'PACK.ACTION, or core.command'))
    .action(async (ref: string, o: OutputOptions) => {
      const mode = formatOf(o);
      const a = await withClients((c) => call<T.GetActionRequest, T.ActionInfo__Output>(c, c.packs, c.packs.GetAction, { ref }));
      if (mode === 'json' || mode === 'yaml') return printDocument(mode, actionValue(a));
      print(formatAction(a));
    });
}
