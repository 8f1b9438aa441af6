/**
 * `trellis hub install | uninstall`: the hub as a systemd service, the same way `agent install`
 * does it (common/service): a system user (default trellis-hub) owning the data directory made
 * by `trellis hub init`, a hardened unit running `trellis hub run --data DIR` (ReadWritePaths is
 * the data directory only), started by systemd, or with --detach where systemd is not running.
 * Uninstall stops it and removes the unit; the data directory (CA, keys, state) and the user
 * are kept: remove them yourself if you mean it.
 */
import { chmodSync, chownSync, existsSync, lstatSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { TrellisError } from '../../common/errors.js';
import { atomicWriteFile } from '../../common/fsutil.js';
import { checkDataDir, checkServiceName, checkUserName, execStart, parseUnitMeta, renderUnit } from '../../common/service/unit.js';
import * as sys from '../../common/service/system.js';
import { startService, stopService } from '../../common/service/lifecycle.js';
import { hubPaths } from '../paths.js';

const UNIT_DIR = '/etc/systemd/system';
const NOBODY = 65534;

export interface HubInstallOptions { data: string; service?: string; user?: string; noStart?: boolean; detach?: boolean }
export interface HubInstallResult {
  service: string; unit: string; data: string; user: string; changed: boolean; started: 'systemd' | 'detached' | 'no'; systemd: boolean; actions: string[]; hint?: string;
}

function requireRoot(what: string): void {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
    throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `trellis hub ${what} must run as root (it manages a system user, ${UNIT_DIR} and systemd): use sudo`);
  }
}


/** Hands DATA to the service user (modes are the hub's own: keys and state 0600); DATA itself 0700. */
function chownTree(dir: string, uid: number, gid: number): boolean {
  let changed = false;
  const visit = (p: string): void => {
    const st = lstatSync(p);
    // DATA is the service user's: a symlink it planted must not make root chown its target.
    if (st.isSymbolicLink()) return;
    if (st.uid !== uid || st.gid !== gid) { chownSync(p, uid, gid); changed = true; }
    if (st.isDirectory()) for (const e of readdirSync(p)) visit(join(p, e));
  };
  visit(dir);
  if ((lstatSync(dir).mode & 0o777) !== 0o700) { chmodSync(dir, 0o700); changed = true; }
  return changed;
}

export async function installHub(o: HubInstallOptions): Promise<HubInstallResult> {
  requireRoot('install');
  const service = checkServiceName(o.service ?? 'trellis-hub');
  const data = checkDataDir(o.data);
  const userName = checkUserName(o.user ?? 'trellis-hub');
  const paths = hubPaths(data);
  if (!existsSync(paths.caCert) || !existsSync(paths.hubCert)) {
    throw new TrellisError('TRELLIS_E_CONFIG', `${data} is not a hub data directory: run \`trellis hub init --data ${data} --name HOST\` first`);
  }
  const inst = sys.installation('hub');
  const unit = join(UNIT_DIR, `${service}.service`);
  const oldUnit = sys.readText(unit);
  const oldMeta = oldUnit !== undefined ? parseUnitMeta(oldUnit, 'hub') : undefined;
  if (oldUnit !== undefined && !oldMeta) throw new TrellisError('TRELLIS_E_ALREADY_EXISTS', `${unit} exists and was not written by trellis hub install: choose another --service`);
  if (oldMeta && oldMeta.data !== data) throw new TrellisError('TRELLIS_E_ALREADY_EXISTS', `service ${service} runs the hub in ${oldMeta.data}: run \`trellis hub uninstall --service ${service}\` first`);
  const existing = await sys.lookupUser(userName);
  if (existing && existing.uid === 0 && userName !== 'root') throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `--user ${userName} has uid 0: pass --user root to run the hub as root`);
  if (userName !== 'root') {
    await sys.checkRunnableAs({ uid: existing?.uid ?? NOBODY, gid: existing?.gid ?? NOBODY, who: userName, dataParent: dirname(data), ...inst });
  }
  const actions: string[] = [];
  let user = existing;
  let createdUser = oldMeta?.user === userName && oldMeta.createdUser;
  if (!user) {
    await sys.createSystemUser(userName);
    user = await sys.lookupUser(userName);
    if (!user) throw new TrellisError('TRELLIS_E_INTERNAL', `useradd ${userName} succeeded but the user cannot be looked up`);
    createdUser = true;
    actions.push(`created user ${userName}`);
  }
  const u = user;
  if (chownTree(data, u.uid, u.gid)) actions.push(`gave ${data} to ${userName} (0700)`);
  const text = renderUnit({ kind: 'hub', service, data, user: userName, createdUser, node: inst.node, bin: inst.bin, readWrite: [] });
  const unitChanged = oldUnit !== text;
  if (unitChanged) {
    await atomicWriteFile(unit, text, { mode: 0o644 });
    actions.push(oldUnit === undefined ? `wrote ${unit}` : `updated ${unit}`);
  }
  const verified = await sys.verifyUnit(unit);
  if (verified && !verified.ok) throw new TrellisError('TRELLIS_E_CONFIG', `systemd-analyze verify ${unit} failed: ${verified.output.split('\n').slice(0, 3).join('; ')}`);
  const st = await startService({
    kind: 'hub', service, data, unitChanged, noStart: !!o.noStart, detach: !!o.detach, argv: execStart({ kind: 'hub', node: inst.node, bin: inst.bin, data }),
    user: { name: userName, uid: u.uid, gid: u.gid }, fixOwnership: () => chownTree(data, u.uid, u.gid),
  });
  actions.push(...st.actions);
  return { service, unit, data, user: userName, changed: actions.length > 0, started: st.started, systemd: st.systemd, actions, hint: st.hint };
}

export async function uninstallHub(o: { service?: string; data?: string }): Promise<{ service: string; unit: string; data?: string; changed: boolean; actions: string[] }> {
  requireRoot('uninstall');
  const service = checkServiceName(o.service ?? 'trellis-hub');
  const unit = join(UNIT_DIR, `${service}.service`);
  const text = sys.readText(unit);
  const meta = text !== undefined ? parseUnitMeta(text, 'hub') : undefined;
  if (text !== undefined && !meta) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${unit} was not written by trellis hub install: remove it yourself`);
  const data = o.data ? checkDataDir(o.data) : meta?.data;
  const actions = data ? await stopService({ kind: 'hub', service, data, hasUnit: text !== undefined }) : [];
  if (text !== undefined) {
    rmSync(unit, { force: true });
    actions.push(`removed ${unit} (kept ${data} and user ${meta?.user})`);
    if (sys.systemdRunning()) await sys.systemctl('daemon-reload');
  }
  return { service, unit, data, changed: actions.length > 0, actions };
}
