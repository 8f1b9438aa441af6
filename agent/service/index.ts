/**
 * `trellis agent install | uninstall | status`: the agent as a systemd service on a managed host
 * (the contract other tools call over SSH is in the CLI's --help; keep it, only add to it).
 *
 * install, in this order, so that bad input changes nothing and a failed enrollment leaves
 * nothing behind: check every value (root, names, paths, the token's form) → check that the
 * service user can run node and this installation → create the system user → the data
 * directory (0700, owned by the user) → enroll (the token goes to the hub only; it is never
 * written anywhere, and never reaches the long-lived agent) → the unit (0644) → `systemd-analyze
 * verify` → daemon-reload, enable --now; where systemd is not running, `--detach` starts the
 * unit's ExecStart as the service user instead. Run again with the same options, it changes
 * nothing and says so (the token is then not needed).
 */
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { TrellisError, errorMessage } from '../../common/errors.js';
import { atomicWriteFile } from '../../common/fsutil.js';
import { parseJoinToken } from '../../common/jointoken.js';
import { formatHostPort, parseHostPort } from '../../common/grpc-options.js';
import { certInfo } from '../../certs/index.js';
import { fetchServedChain, pinnedBundle } from '../../common/tlsprobe.js';
import { agentPaths, readState } from '../identity.js';
import { lookupUser, type UserInfo } from '../runners/users.js';
import { checkDataDir, checkServiceName, checkUnitPath, checkUserName, execStart, parseUnitMeta, renderUnit, type UnitMeta } from '../../common/service/unit.js';
import * as sys from '../../common/service/system.js';
import { detachedPid, startService, stopService } from '../../common/service/lifecycle.js';
import { pendingEvents } from './outbox-depth.js';

export const UNIT_DIR = '/etc/systemd/system';
/** uid/gid used to check a user that does not exist yet: it gets only the "other" permission bits, as a new system user does. */
const NOBODY = 65534;

export interface InstallOptions {
  hub: string;
  /** Read only when the host is not enrolled yet. */
  token: () => Promise<string>;
  service?: string;
  data?: string;
  user?: string;
  labels?: Record<string, string>;
  readWrite?: string[];
  noStart?: boolean;
  detach?: boolean;
  /** Progress lines (stderr in the CLI). */
  say?: (line: string) => void;
}

export interface InstallResult {
  service: string; unit: string; data: string; user: string; agentId: string; tenant: string;
  changed: boolean; started: 'systemd' | 'detached' | 'no'; systemd: boolean;
  /** What was done, one short phrase each (empty: nothing changed). */
  actions: string[];
  /** How to start the agent, when nothing started it. */
  hint?: string;
}

function requireRoot(what: string): void {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
    throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `trellis agent ${what} must run as root (it manages a system user, ${UNIT_DIR} and systemd): use sudo`);
  }
}

export const unitFile = (service: string) => join(UNIT_DIR, `${service}.service`);

/** Owner and modes of everything in DATA: directories 0700, files 0600, all the service user's. */
function secureTree(dir: string, uid: number, gid: number): boolean {
  let changed = false;
  const visit = (p: string): void => {
    const st = lstatSync(p);
    if (st.isSymbolicLink()) return;
    const want = st.isDirectory() ? 0o700 : 0o600;
    if ((st.mode & 0o7777) !== want) { chmodSync(p, want); changed = true; }
    if (st.uid !== uid || st.gid !== gid) { chownSync(p, uid, gid); changed = true; }
    if (st.isDirectory()) for (const e of readdirSync(p)) visit(join(p, e));
  };
  visit(dir);
  return changed;
}

export async function installAgent(o: InstallOptions): Promise<InstallResult> {
  const say = o.say ?? (() => undefined);
  // 1. Every value, before anything changes.
  requireRoot('install');
  const service = checkServiceName(o.service ?? 'trellis-agent');
  const data = checkDataDir(o.data ?? `/var/lib/${service}`);
  const userName = checkUserName(o.user ?? 'trellis-agent');
  const readWrite = (o.readWrite ?? []).map((p) => checkUnitPath(p, '--read-write'));
  const { host, port } = parseHostPort(o.hub, 7444);
  const hub = formatHostPort(host, port);
  const inst = sys.installation('agent');
  const unit = unitFile(service);
  const paths = agentPaths(data);
  const oldUnit = sys.readText(unit);
  const oldMeta = oldUnit !== undefined ? parseUnitMeta(oldUnit) : undefined;
  if (oldUnit !== undefined && !oldMeta) throw new TrellisError('TRELLIS_E_ALREADY_EXISTS', `${unit} exists and was not written by trellis agent install: choose another --service`);
  if (oldMeta && oldMeta.data !== data) throw new TrellisError('TRELLIS_E_ALREADY_EXISTS', `service ${service} is installed with --data ${oldMeta.data}: run \`trellis agent uninstall --service ${service}\` first, or pass --data ${oldMeta.data}`);
  const enrolled = existsSync(paths.state);
  if (enrolled) {
    const st = readState(paths);
    if (st.enrollHub && st.enrollHub !== hub) {
      throw new TrellisError('TRELLIS_E_ALREADY_ENROLLED', `${data} is enrolled with the hub at ${st.enrollHub}, not ${hub}: uninstall with --purge first to enroll anew`);
    }
  }
  // The token is read (and its form checked) only when this host still has to enroll.
  const token = enrolled ? undefined : await o.token();
  if (!enrolled) {
    if (!token) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'a join token is needed: --token-file FILE, --token-file - (stdin), TRELLIS_JOIN_TOKEN or --token');
    parseJoinToken(token);
  }
  const existing = await lookupUser(userName);
  if (existing && existing.uid === 0 && userName !== 'root') throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `--user ${userName} has uid 0: pass --user root to run the agent as root`);
  // 2. The service user must be able to run this installation (an install under /root fails here).
  if (userName !== 'root') {
    let parent = dirname(data);
    while (!existsSync(parent)) parent = dirname(parent);
    await sys.checkRunnableAs({ uid: existing?.uid ?? NOBODY, gid: existing?.gid ?? NOBODY, who: userName, dataParent: parent, ...inst });
  }

  if (!enrolled) {
    // The hub must present the CA pinned in the token before anything changes here (enroll checks it again).
    const pin = parseJoinToken(token!).caFingerprint;
    if (!pinnedBundle(await fetchServedChain(host, port), pin)) {
      throw new TrellisError('TRELLIS_E_CA_PIN_MISMATCH', `the hub at ${hub} does not present the CA pinned in the join token (sha256 ${pin.slice(0, 16)}…); nothing was changed and the token was not sent. Check --hub, or that the token came from this hub`);
    }
  }

  const actions: string[] = [];
  // Recorded in the unit so that `uninstall --purge` removes only a user this command created.
  let createdUser = oldMeta?.user === userName && oldMeta.createdUser;
  let createdData = false;
  let user: UserInfo | undefined = existing;
  const rollback = async (): Promise<void> => {
    if (createdData) rmSync(data, { recursive: true, force: true });
    if (actions.includes(`created user ${userName}`)) await sys.deleteUser(userName).catch(() => undefined);
  };
  try {
    // 3. The user.
    if (!user) {
      await sys.createSystemUser(userName);
      user = await lookupUser(userName);
      if (!user) throw new TrellisError('TRELLIS_E_INTERNAL', `useradd ${userName} succeeded but the user cannot be looked up`);
      createdUser = true;
      actions.push(`created user ${userName}`);
      say(`created system user ${userName} (uid ${user.uid}, no login shell, no home)`);
    }
    // 4. The data directory.
    if (!existsSync(data)) {
      mkdirSync(dirname(data), { recursive: true, mode: 0o755 });
      mkdirSync(data, { mode: 0o700 });
      createdData = true;
      actions.push(`created ${data}`);
    } else if (!statSync(data).isDirectory()) {
      throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `--data ${data} exists and is not a directory`);
    }
    // 5. Enroll (as root, here; the files are handed to the user right after).
    if (!enrolled) {
      const { enroll } = await import('../enroll.js');
      const r = await enroll({ hub, token: token!, dataDir: data, labels: o.labels });
      actions.push(`enrolled as agent ${r.agentId}`);
      say(`enrolled as agent ${r.agentId} (tenant ${r.tenant}), certificate valid until ${r.notAfter.toISOString()}`);
    }
    if (secureTree(data, user.uid, user.gid) && !createdData && enrolled) actions.push(`fixed owner and modes in ${data}`);
  } catch (e) {
    await rollback();
    throw e;
  }
  const state = readState(paths);

  // 6. The unit.
  const meta: UnitMeta = { service, data, user: userName, createdUser };
  const text = renderUnit({ ...meta, node: inst.node, bin: inst.bin, readWrite });
  const unitChanged = oldUnit !== text;
  if (unitChanged) {
    await atomicWriteFile(unit, text, { mode: 0o644 });
    actions.push(oldUnit === undefined ? `wrote ${unit}` : `updated ${unit}`);
  }
  const verified = await sys.verifyUnit(unit);
  if (verified && !verified.ok) {
    throw new TrellisError('TRELLIS_E_CONFIG', `systemd-analyze verify ${unit} failed: ${verified.output.split('\n').slice(0, 3).join('; ')}`);
  }

  // 7. Start.
  const st = await startService({
    kind: 'agent', service, data, unitChanged, noStart: !!o.noStart, detach: !!o.detach, argv: execStart({ node: inst.node, bin: inst.bin, data }),
    user: { name: userName, uid: user.uid, gid: user.gid }, fixOwnership: () => secureTree(data, user.uid, user.gid),
  });
  actions.push(...st.actions);
  const { started, systemd, hint } = st;
  return { service, unit, data, user: userName, agentId: state.agentId, tenant: state.tenant, changed: actions.length > 0, started, systemd, actions, hint };
}

export interface UninstallOptions { service?: string; data?: string; purge?: boolean; say?: (line: string) => void }
export interface UninstallResult { service: string; unit: string; data: string; changed: boolean; actions: string[] }

export async function uninstallAgent(o: UninstallOptions): Promise<UninstallResult> {
  const say = o.say ?? (() => undefined);
  requireRoot('uninstall');
  const service = checkServiceName(o.service ?? 'trellis-agent');
  const unit = unitFile(service);
  const text = sys.readText(unit);
  const meta = text !== undefined ? parseUnitMeta(text) : undefined;
  if (text !== undefined && !meta) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${unit} was not written by trellis agent install: remove it yourself`);
  const data = checkDataDir(o.data ?? meta?.data ?? `/var/lib/${service}`);
  const actions = await stopService({ kind: 'agent', service, data, hasUnit: text !== undefined });
  if (text !== undefined) {
    rmSync(unit, { force: true });
    actions.push(`removed ${unit}`);
    if (sys.systemdRunning()) await sys.systemctl('daemon-reload');
  }
  if (o.purge) {
    if (existsSync(data)) {
      if (!existsSync(agentPaths(data).state) && !(meta && meta.data === data) && readdirSync(data).length > 0) {
        throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${data} does not look like an agent data directory (no agent.json): not removed`);
      }
      rmSync(data, { recursive: true, force: true });
      actions.push(`removed ${data}`);
    }
    if (meta?.createdUser && meta.user !== 'root' && (await lookupUser(meta.user))) {
      const others = sys.unitsRunningAs(meta.user, UNIT_DIR, unit);
      if (others.length > 0) {
        actions.push(`kept user ${meta.user}: ${others.join(', ')} still run${others.length === 1 ? 's' : ''} as it`);
      } else {
        await sys.deleteUser(meta.user);
        actions.push(`removed user ${meta.user}`);
      }
    }
  }
  for (const a of actions) say(a);
  return { service, unit, data, changed: actions.length > 0, actions };
}

export interface StatusOptions { service?: string; data?: string }
export interface StatusResult {
  service: string; unit: string; installed: boolean; data: string; user?: string;
  /** systemd: is-active's answer; else "running (pid N)" for a detached agent, or "not running". */
  state: string; enabled?: string; systemd: boolean; pid?: number;
  hub?: string; agentId?: string; tenant?: string; certNotAfter?: string; outboxDepth?: number;
  error?: string;
}

export async function agentStatus(o: StatusOptions): Promise<StatusResult> {
  const service = checkServiceName(o.service ?? 'trellis-agent');
  const unit = unitFile(service);
  const text = sys.readText(unit);
  const meta = text !== undefined ? parseUnitMeta(text) : undefined;
  const data = checkDataDir(o.data ?? meta?.data ?? `/var/lib/${service}`);
  const systemd = sys.systemdRunning();
  const r: StatusResult = { service, unit, installed: text !== undefined, data, user: meta?.user, state: 'not running', systemd };
  const pid = detachedPid(data, 'agent');
  if (systemd && text !== undefined) {
    r.state = await sys.systemctlState('is-active', `${service}.service`);
    r.enabled = await sys.systemctlState('is-enabled', `${service}.service`);
  } else if (pid !== undefined) {
    r.state = 'running (detached)';
    r.pid = pid;
  }
  const paths = agentPaths(data);
  try {
    if (existsSync(paths.state)) {
      const st = readState(paths);
      Object.assign(r, { hub: st.hub, agentId: st.agentId, tenant: st.tenant });
      if (existsSync(paths.cert)) r.certNotAfter = certInfo(readFileSync(paths.cert, 'utf8')).notAfter.toISOString();
      r.outboxDepth = pendingEvents(join(data, 'outbox'));
    } else if (!r.installed) {
      r.error = `not installed: no ${unit} and no agent in ${data}`;
    } else {
      r.error = `${data} is not enrolled`;
    }
  } catch (e) {
    r.error = errorMessage(e);
  }
  return r;
}
