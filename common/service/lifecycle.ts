/**
 * Starting and stopping a unit this code wrote: through systemd where it runs (PID 1), else, with
 * --detach, the unit's ExecStart as the service user in the background (pid in DATA/NAME.pid,
 * output in DATA/NAME.log, NAME = agent or hub).
 */
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { atomicWriteFile } from '../fsutil.js';
import * as sys from './system.js';
import { serviceEnv, type ServiceKind } from './unit.js';

export const pidFile = (data: string, kind: ServiceKind) => join(data, `${kind}.pid`);
export const logFile = (data: string, kind: ServiceKind) => join(data, `${kind}.log`);

/** The detached daemon of `data`, if one runs (pid file, alive, and its argv names `data`). */
export function detachedPid(data: string, kind: ServiceKind): number | undefined {
  let n: number;
  try { n = Number(readFileSync(pidFile(data, kind), 'utf8').trim()); } catch { return undefined; }
  return Number.isSafeInteger(n) && n > 1 && sys.processAlive(n) && sys.isAgentProcess(n, data) ? n : undefined;
}

export interface StartOptions {
  kind: ServiceKind;
  service: string;
  data: string;
  /** The unit was written or changed by this run. */
  unitChanged: boolean;
  noStart: boolean;
  detach: boolean;
  argv: string[];
  user: { name: string; uid: number; gid: number };
  /** Called after files were written in DATA as root (to hand them to the user). */
  fixOwnership: () => void;
}

export interface StartResult { started: 'systemd' | 'detached' | 'no'; systemd: boolean; actions: string[]; hint?: string }

export async function startService(o: StartOptions): Promise<StartResult> {
  const unit = `${o.service}.service`;
  const systemd = sys.systemdRunning();
  const actions: string[] = [];
  if (systemd) {
    if (o.unitChanged) await sys.systemctl('daemon-reload');
    if (o.noStart) return { started: 'no', systemd, actions, hint: `start it with: systemctl enable --now ${o.service}` };
    const enabled = await sys.systemctlState('is-enabled', unit);
    const active = await sys.systemctlState('is-active', unit);
    if (enabled !== 'enabled' || active !== 'active') {
      await sys.systemctl('enable', '--now', unit);
      actions.push('enabled and started the service');
    } else if (o.unitChanged) {
      await sys.systemctl('restart', unit);
      actions.push('restarted the service');
    }
    return { started: 'systemd', systemd, actions };
  }
  if (o.detach && !o.noStart) {
    const running = detachedPid(o.data, o.kind);
    if (running !== undefined && o.unitChanged) {
      await sys.stopProcess(running);
      actions.push(`stopped the detached ${o.kind} (pid ${running}) to start the new unit`);
    }
    if (running === undefined || o.unitChanged) {
      const log = logFile(o.data, o.kind);
      const pid = sys.spawnDetached(o.argv, { uid: o.user.uid, gid: o.user.gid, cwd: o.data, home: o.data, logFile: log, env: serviceEnv(o.kind) });
      await atomicWriteFile(pidFile(o.data, o.kind), `${pid}\n`, { mode: 0o600 });
      o.fixOwnership();
      actions.push(`started the ${o.kind} detached (pid ${pid}, log ${log})`);
    }
    return { started: 'detached', systemd, actions };
  }
  const hint = o.noStart
    ? `start it with: systemctl enable --now ${o.service}`
    : `systemd is not running here: the unit is written and checked; start it with \`systemctl enable --now ${o.service}\` where systemd runs, ` +
      `or run \`trellis ${o.kind} install\` again with --detach (or run as ${o.user.name}: ${o.argv.join(' ')})`;
  return { started: 'no', systemd, actions, hint };
}

/** Stops the service (systemd: disable --now) or the detached daemon of DATA; returns what it did. */
export async function stopService(o: { kind: ServiceKind; service: string; data: string; hasUnit: boolean }): Promise<string[]> {
  const actions: string[] = [];
  const unit = `${o.service}.service`;
  if (sys.systemdRunning() && o.hasUnit) {
    const active = await sys.systemctlState('is-active', unit);
    const enabled = await sys.systemctlState('is-enabled', unit);
    if (active === 'active' || active === 'activating' || enabled === 'enabled') {
      await sys.systemctl('disable', '--now', unit);
      actions.push('stopped and disabled the service');
    }
  }
  const pid = detachedPid(o.data, o.kind);
  if (pid !== undefined) {
    await sys.stopProcess(pid);
    actions.push(`stopped the detached ${o.kind} (pid ${pid})`);
    rmSync(pidFile(o.data, o.kind), { force: true });
  }
  return actions;
}
