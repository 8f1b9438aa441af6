/**
 * Packs: `trellis packs install DIR|TARBALL [--force]`, `packs list`, `packs show NAME`,
 * `packs remove NAME`. A pack is validated here before it is sent (the hub validates it again),
 * so a mistake shows at once with its file, line and field.
 */
import type { Command } from 'commander';
import { formatDuration } from '../../common/duration.js';
import { TrellisError, isTrellisError } from '../../common/errors.js';
import type { ActionDef, PackDef, RuleDef, SensorDef } from '../../common/automation/types.js';
import { call, withClients } from '../client.js';
import { when, print, addOutputOptions, output, outputOne } from '../format.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

/** The hub's default maxMessageBytes (hub/config.ts), which bounds an install request. */
const HUB_MESSAGE_DEFAULT = 4 * 1024 * 1024;

const plural = (n: number, w: string) => `${n} ${w}${n === 1 ? '' : 's'}`;

type Shown = PackDef & { files?: { path: string; size: number; mode: number }[]; sources?: Record<string, string> };

/** "  (actions/restart.yaml)": the file an action, sensor or rule came from, when the hub kept it. */
const fileOf = (def: Shown, ref: string) => (def.sources?.[ref] ? `  (${def.sources[ref]})` : '');

function paramLines(a: ActionDef): string[] {
  const rows = Object.entries(a.parameters).map(([n, p]) => [
    n, p.type, p.required ? 'required' : 'optional', p.secret ? 'secret' : '',
    p.default !== undefined ? `default ${JSON.stringify(p.default)}` : '',
    p.enum ? `one of ${p.enum.map((v) => JSON.stringify(v)).join(', ')}` : '', p.description ?? '',
  ].filter((c, i) => i < 3 || c !== ''));
  return rows.map((r) => `      ${r.join('  ')}`);
}

function actionLine(a: ActionDef): string {
  const what = a.runner === 'command' ? (a.shell ? `sh -c ${JSON.stringify(a.command?.[0] ?? '')}` : (a.command ?? []).join(' '))
    : a.runner === 'script' ? [a.script?.path ?? '', ...(a.args ?? [])].join(' ')
      : `${a.http?.method ?? ''} ${a.http?.url ?? ''}`;
  return `  ${a.ref}  [${a.runner}, timeout ${formatDuration(a.timeoutMs)}${a.runAs ? `, as ${a.runAs}` : ''}]  ${a.description}\n    ${what}`;
}

const where = (on: SensorDef['on'] | undefined) => (on?.agent ? `agent ${on.agent}` : on?.selector ? `agents ${Object.entries(on.selector).map(([k, v]) => `${k}=${v}`).join(',')}` : 'every agent');

function ruleLine(r: RuleDef): string {
  const target = r.target.kind === 'local' ? `locally (${where(r.on)})` : r.target.kind === 'agent' ? `on agent ${r.target.agent}` : `on ${r.target.expr ?? Object.entries(r.target.selector).map(([k, v]) => `${k}=${v}`).join(',')}`;
  return `  ${r.ref}  ${r.enabled ? '' : '(disabled) '}${r.trigger}${r.criteria.length ? ` + ${plural(r.criteria.length, 'criterion')}` : ''} → ${r.action.ref} ${target}${r.description ? `  ${r.description}` : ''}`;
}

/** The human view of `packs show`. */
export function formatPack(info: T.PackInfo__Output, def: Shown): string {
  const out = [
    `pack ${info.name} ${info.version} (tenant ${info.tenant}), installed ${when(info.installedMs)} by ${info.installedBy}`,
  ];
  if (info.description) out.push(`  ${info.description}`);
  out.push('', `actions (${def.actions.length}):`);
  for (const a of def.actions) {
    out.push(actionLine(a).replace('\n', `${fileOf(def, a.ref)}\n`));
    const params = paramLines(a);
    if (params.length) out.push('    parameters:', ...params);
  }
  out.push('', `sensors (${def.sensors.length}):`);
  for (const s of def.sensors) out.push(`  ${s.ref}  [${s.kind}, every ${formatDuration(s.intervalMs)}, trigger ${s.trigger}, on ${where(s.on)}]  ${s.description}${fileOf(def, s.ref)}`);
  out.push('', `rules (${def.rules.length}):`);
  for (const r of def.rules) out.push(`${ruleLine(r)}${fileOf(def, r.ref)}`);
  if (def.files?.length) {
    out.push('', `files (${def.files.length}):`);
    for (const f of def.files) out.push(`  ${(f.mode & 0o777).toString(8).padStart(4, '0')}  ${String(f.size).padStart(8)}  ${f.path}`);
  }
  return out.join('\n');
}

export function addPackCommands(program: Command): void {
  const packs = program.command('packs').description('packs: folders of actions, sensors and rules (pack.yaml, actions/, sensors/, rules/, scripts/)');

  packs.command('install')
    .description('validate a pack directory or tarball (.tar, .tar.gz, .tgz) here, then install it in the tenant')
    .argument('<source>', 'a pack directory or a tarball')
    .option('--force', 'replace an installed pack of the same name')
    .action(async (source: string, o: { force?: boolean }) => {
      // Loaded here: yaml and tar would slow the start of every other command.
      const { loadPack, readPackSource } = await import('../../common/packs/index.js');
      const files = await readPackSource(source);
      const pack = loadPack(files); // the hub checks again; this shows mistakes before sending
      const req: T.InstallPackRequest = { files: files.map((f) => ({ path: f.path, content: f.content, mode: f.mode })), force: !!o.force };
      const info = await withClients((c) => call<T.InstallPackRequest, T.PackInfo__Output>(c, c.packs, c.packs.InstallPack, req, 120_000)).catch((e: unknown) => {
        if (!isTrellisError(e, 'TRELLIS_E_TOO_LARGE') || !/larger than max/i.test((e as Error).message)) throw e;
        const bytes = files.reduce((n, f) => n + f.content.length, 0);
        throw new TrellisError('TRELLIS_E_TOO_LARGE', `the pack (${bytes} bytes of files) is over the hub's message limit (hub config maxMessageBytes, 4 MiB by default): make the pack smaller or raise the limit`, { cause: e });
      });
      print(`installed pack ${info.name} ${info.version} in tenant ${info.tenant}: ${plural(pack.actions.length, 'action')}, ${plural(pack.sensors.length, 'sensor')}, ${plural(pack.rules.length, 'rule')}`);
    });

  packs.command('validate')
    .description('check a pack directory or tarball offline: the same checks as `packs install` makes before sending (files, limits, every field with file:line), no hub and no login needed')
    .argument('<source>', 'a pack directory or a tarball (.tar, .tar.gz, .tgz)')
    .addHelpText('after', `
Exits 0 when the pack is valid, 1 with every problem (up to 20) as file:line: field: message
(TRELLIS_E_PACK_INVALID). What only the hub can know is checked at install: that actions of
other packs its rules call are installed, and that you hold the rights the pack needs.`)
    .action(async (source: string) => {
      const { loadPack, readPackSource } = await import('../../common/packs/index.js');
      const files = await readPackSource(source);
      const pack = loadPack(files);
      print(`pack ${pack.name} ${pack.version} is valid: ${plural(pack.actions.length, 'action')}, ${plural(pack.sensors.length, 'sensor')}, ${plural(pack.rules.length, 'rule')}, ${plural(files.length, 'file')}`);
      for (const r of pack.rules) {
        if (!r.action.ref.startsWith(`${pack.name}.`)) print(`note: rule ${r.ref} (${pack.sources[r.ref] ?? ''}) calls ${r.action.ref} of another pack: the hub refuses the install unless it is installed in the tenant`);
      }
      const bytes = files.reduce((n, f) => n + f.content.length, 0);
      if (bytes > HUB_MESSAGE_DEFAULT) print(`note: the files are ${bytes} bytes: over the hub's default message limit (maxMessageBytes, 4 MiB); the hub must raise it to accept the pack`);
    });

  addOutputOptions(packs.command('list')
    .description('list installed packs'), 'tenant always')
    .action(async (o) => {
      const r = await withClients((c) => call<T.ListPacksRequest, T.ListPacksResponse__Output>(c, c.packs, c.packs.ListPacks, {}));
      const tenants = new Set(r.packs.map((p) => p.tenant)).size > 1;
      await output(o, r.packs, [
        { header: 'TENANT', cell: (p) => p.tenant, wide: !tenants }, { header: 'NAME', cell: (p) => p.name }, { header: 'VERSION', cell: (p) => p.version },
        { header: 'ACTIONS', cell: (p) => String(p.actions.length) }, { header: 'SENSORS', cell: (p) => String(p.sensors.length) }, { header: 'RULES', cell: (p) => String(p.rules.length) },
        { header: 'INSTALLED', cell: (p) => when(p.installedMs) }, { header: 'BY', cell: (p) => p.installedBy }, { header: 'DESCRIPTION', cell: (p) => p.description },
      ], { data: r.packs.map(({ definitionJson: _d, ...p }) => p) });
    });

  const packShow = packs.command('show')
    .description('show a pack: actions with their parameters, sensors and rules, each with the file it came from, and every file')
    .argument('<name>');
  addOutputOptions(packShow)
    .action(async (name: string, o) => {
      const info = await withClients((c) => call<T.GetPackRequest, T.PackInfo__Output>(c, c.packs, c.packs.GetPack, { name }));
      const def = JSON.parse(info.definitionJson.toString('utf8')) as Shown;
      const { definitionJson: _d, ...rest } = info;
      await outputOne(o, { ...rest, definition: def }, () => formatPack(info, def));
    });

  packs.command('remove')
    .description('remove an installed pack (its actions, sensors and rules go with it); refused while enabled rules outside it call its actions (TRELLIS_E_IN_USE, naming them)')
    .argument('<name>')
    .option('--force', 'disable the enabled rules outside the pack that call its actions, and say which (needs rules:write too)')
    .action(async (name: string, o: { force?: boolean }) => {
      const r = await withClients((c) => call<T.RemovePackRequest, T.RemovePackResponse__Output>(c, c.packs, c.packs.RemovePack, { name, force: !!o.force }));
      if (r.disabledRules.length > 0) print(`disabled ${plural(r.disabledRules.length, 'rule')} that called its actions: ${r.disabledRules.join(', ')}`);
      print(`removed pack ${name}`);
    });
}
