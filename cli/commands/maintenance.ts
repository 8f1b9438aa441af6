/** `trellis maintenance on|off|status`: maintenance mode of the hub (hub/maintenance). */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { TrellisError } from '../../common/errors.js';
import { call, withClients } from '../client.js';
import { ago, clean, when, addOutputOptions, outputOne } from '../format.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

const HELP = `
While maintenance mode is on:
  - only platform administrators may call the admin API; every other call (and agent enrollment)
    is refused with TRELLIS_E_MAINTENANCE (gRPC UNAVAILABLE) and your --message;
  - no new execution starts: \`trellis run\`, \`actions run\` and re-runs are refused, rule firings are
    suppressed (counted, reason "maintenance"); executions already running finish;
  - agents stay connected; their events are still accepted, stored and streamed (they are not replayed
    later as a storm).
The mode survives a hub restart. Turning it on or off is audited. Administrators only.`;

function render(s: T.MaintenanceStatus__Output, wide: boolean): string {
  const lines = [
    `maintenance: ${s.on ? 'ON' : 'off'}${Number(s.sinceMs) ? ` since ${when(Number(s.sinceMs))} (${ago(Number(s.sinceMs))})` : ''}${s.by ? ` by ${clean(s.by)}` : ''}`,
    ...(s.on && s.message ? [`message:     ${clean(s.message)}`] : []),
    `refused:     ${s.refusedCalls} call(s), ${s.refusedExecutions} execution(s), ${s.refusedRuleFirings} rule firing(s) (since this hub started)`,
    `running:     ${s.runningCount} execution(s) not finished yet`,
  ];
  const shown = wide ? s.running : s.running.slice(0, 20);
  for (const r of shown) lines.push(`  ${r.id}  ${r.status.padEnd(9)}  ${clean(r.action)}  agent ${clean(r.agentId)}  tenant ${clean(r.tenant)}  by ${clean(r.requestedBy)}  ${ago(Number(r.requestedMs))}`);
  if (Number(s.runningCount) > shown.length) lines.push(`  ... and ${Number(s.runningCount) - shown.length} more${wide ? '' : ' (-o wide lists up to 1000)'}`);
  return lines.join('\n');
}

function messageOf(o: { message?: string; messageFile?: string }): string {
  if (o.message !== undefined && o.messageFile !== undefined) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'give --message or --message-file, not both');
  let m = o.message ?? '';
  if (o.messageFile !== undefined) {
    try { m = readFileSync(o.messageFile, 'utf8').trim(); } catch (e) { throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `cannot read --message-file ${o.messageFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`); }
  }
  if (m.length > 500) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'the maintenance message is at most 500 characters');
  return m;
}

export function addMaintenanceCommands(program: Command): void {
  const m = program.command('maintenance').description('maintenance mode: only administrators may call the hub and no new executions start (on|off|status)')
    .addHelpText('after', HELP);
  addOutputOptions(m.command('on').description('turn maintenance mode on (again: replaces the message)')
    .option('--message <text>', 'what refused callers read, e.g. "database upgrade until 14:00 UTC" (at most 500 characters)')
    .option('--message-file <file>', 'read the message from a file'))
    .action((o) => withClients(async (c) => {
      const s = await call<T.SetMaintenanceRequest, T.MaintenanceStatus__Output>(c, c.maintenance, c.maintenance.SetMaintenance, { on: true, message: messageOf(o) });
      await outputOne(o, s, (wide) => `${render(s, wide)}\nTurn it off with \`trellis maintenance off\`.`);
    }));
  addOutputOptions(m.command('off').description('turn maintenance mode off: calls and executions are accepted again'))
    .action((o) => withClients(async (c) => {
      const s = await call<T.SetMaintenanceRequest, T.MaintenanceStatus__Output>(c, c.maintenance, c.maintenance.SetMaintenance, { on: false, message: '' });
      await outputOne(o, s, (wide) => render(s, wide));
    }));
  addOutputOptions(m.command('status').description('on or off, since when and by whom, the message, executions still running, refusals counted'), 'every running execution (up to 1000)')
    .action((o) => withClients(async (c) => {
      const s = await call<T.GetMaintenanceRequest, T.MaintenanceStatus__Output>(c, c.maintenance, c.maintenance.GetMaintenance, {});
      await outputOne(o, s, (wide) => render(s, wide));
    }));
}
