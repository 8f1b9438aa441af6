/**
 * What `trellis agent install` asks of the host: systemd, system users, and processes run as the
 * service user. Every external command runs by absolute argv (no shell), with a timeout.
 */
import { execFile, spawn } from 'node:child_process';
import { constants as fsConstants, existsSync, fstatSync, openSync, closeSync, readdirSync, readFileSync, realpathSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TrellisError } from '../errors.js';
import { checkUnitPath, type ServiceKind } from './unit.js';

/**
 * This installation: the node binary and bin/trellis.js as absolute real paths (what ExecStart
 * runs), and the daemon's main module (what the service user must be able to load).
 */
export function installation(kind: ServiceKind): { node: string; bin: string; agentModule: string } {
  const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..'); // dist/common/service → the package
  return {
    node: checkUnitPath(realpathSync(process.execPath), 'the node binary path'),
    bin: checkUnitPath(realpathSync(join(root, 'bin', 'trellis.js')), 'the trellis installation path'),
    agentModule: realpathSync(join(root, 'dist', kind, `${kind}.js`)),
  };
}

export interface CmdResult { code: number; out: string; err: string; missing?: boolean }

const PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** Runs a command to its end (never throws; `missing` when the program is not installed). */
export function runCmd(cmd: string, args: string[], o: { timeoutMs?: number; uid?: number; gid?: number } = {}): Promise<CmdResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: o.timeoutMs ?? 60_000, maxBuffer: 1024 * 1024, env: { PATH, LANG: 'C' }, uid: o.uid, gid: o.gid, cwd: '/' }, (err, stdout, stderr) => {
      if (!err) return resolve({ code: 0, out: stdout, err: stderr });
      const e = err as Error & { code?: string | number | null; killed?: boolean };
      if (e.code === 'ENOENT') return resolve({ code: 127, out: '', err: `${cmd}: not found`, missing: true });
      resolve({ code: typeof e.code === 'number' ? e.code : 1, out: stdout, err: stderr || (e.killed ? `${cmd} timed out` : e.message) });
    });
  });
}

/** systemd's own test (sd_booted(3)): it is the running init when /run/systemd/system exists. */
export function systemdRunning(): boolean {
  return existsSync('/run/systemd/system');
}

/** `systemctl ARGS`, failing with a clear error. */
export async function systemctl(...args: string[]): Promise<string> {
  const r = await runCmd('systemctl', args);
  if (r.code !== 0) throw new TrellisError('TRELLIS_E_INTERNAL', `systemctl ${args.join(' ')} failed: ${(r.err || r.out).trim().split('\n')[0]}`);
  return r.out;
}

/** `systemctl is-active|is-enabled NAME` (their answer even when non-zero). */
export async function systemctlState(what: 'is-active' | 'is-enabled', unit: string): Promise<string> {
  const r = await runCmd('systemctl', [what, unit]);
  return (r.out.trim().split('\n')[0] || (r.missing ? 'unknown' : r.err.trim().split('\n')[0]) || 'unknown');
}

/**
 * `systemd-analyze verify UNIT` when installed: it exits 0 even on some warnings (an unknown
 * Restart= value), so any line it prints is a failure too. Undefined = not installed.
 */
export async function verifyUnit(file: string): Promise<{ ok: boolean; output: string } | undefined> {
  const r = await runCmd('systemd-analyze', ['verify', file]);
  if (r.missing) return undefined;
  const output = (r.out + r.err).trim();
  return { ok: r.code === 0 && output === '', output };
}

/** Creates a system user with no home and no login shell (and its own group). */
export async function createSystemUser(name: string): Promise<void> {
  const shell = existsSync('/usr/sbin/nologin') ? '/usr/sbin/nologin' : '/sbin/nologin';
  const r = await runCmd('useradd', ['--system', '--no-create-home', '--home-dir', '/nonexistent', '--shell', shell, '--user-group', name]);
  if (r.missing) throw new TrellisError('TRELLIS_E_CONFIG', 'useradd is not installed: create the user yourself and pass --user NAME');
  if (r.code !== 0) throw new TrellisError('TRELLIS_E_INTERNAL', `useradd ${name} failed: ${r.err.trim().split('\n')[0]}`);
}

/** A file's text, or undefined when it does not exist (other errors throw). */
export function readText(path: string): string | undefined {
  try { return readFileSync(path, 'utf8'); } catch (e) { if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined; throw e; }
}

/** The other units in `unitDir` that run as `user` (`User=` line), so it is not deleted under them. */
export function unitsRunningAs(user: string, unitDir: string, exceptUnit: string): string[] {
  let names: string[];
  try { names = readdirSync(unitDir); } catch { return []; }
  const line = new RegExp(`^\\s*User\\s*=\\s*${user.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\s*$`, 'm');
  return names.filter((n) => n.endsWith('.service') && join(unitDir, n) !== exceptUnit).filter((n) => {
    try { return line.test(readFileSync(join(unitDir, n), 'utf8')); } catch { return false; }
  });
}

export async function deleteUser(name: string): Promise<void> {
  const r = await runCmd('userdel', [name]);
  if (r.code !== 0 && r.code !== 6 /* no such user */) throw new TrellisError('TRELLIS_E_INTERNAL', `userdel ${name} failed: ${r.err.trim().split('\n')[0]}`);
}

/**
 * Proves that `uid:gid` can run the agent from this installation: node starts, and the agent's
 * code and dependencies load (the whole module graph of agent/agent.js), as that user.
 */
export async function checkRunnableAs(o: { uid: number; gid: number; node: string; bin: string; agentModule: string; who: string; dataParent: string }): Promise<void> {
  const reach = await runCmd(o.node, ['-e', 'require("node:fs").accessSync(process.argv[1],require("node:fs").constants.X_OK)', o.dataParent], { uid: o.uid, gid: o.gid });
  if (reach.code !== 0 && !reach.missing) {
    throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `the service user ${o.who} cannot reach ${o.dataParent} (the data directory's parent): choose a --data under a directory every user can enter, e.g. /var/lib`);
  }
  const script = 'const fs=require("node:fs");fs.accessSync(process.argv[1],fs.constants.R_OK);' +
    'import(require("node:url").pathToFileURL(process.argv[2]).href).then(()=>process.exit(0),(e)=>{process.stderr.write(String(e&&e.message));process.exit(1)})';
  const r = await runCmd(o.node, ['-e', script, o.bin, o.agentModule], { uid: o.uid, gid: o.gid, timeoutMs: 60_000 });
  if (r.code !== 0) {
    const why = r.missing || /EACCES/.test(r.err) || r.code === 126 ? 'permission denied' : r.err.trim().split('\n')[0];
    throw new TrellisError('TRELLIS_E_PERMISSION_DENIED',
      `the service user ${o.who} cannot run ${o.node} ${o.bin} (${why}): install trellis where every user can read it (e.g. /opt/trellis, mode 0755), not under /root or a private directory`);
  }
}

/** True when `pid` is alive and its argv is the agent of `data`. */
export function isAgentProcess(pid: number, data: string): boolean {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    const i = argv.indexOf('--data');
    return argv.includes('run') && i >= 0 && argv[i + 1] === data;
  } catch {
    return false;
  }
}

/**
 * Starts `argv` as uid:gid in a new session (setsid), detached, with a minimal environment
 * (nothing of ours, in particular no join token), stdout and stderr appended to `logFile`.
 */
export function spawnDetached(argv: string[], o: { uid: number; gid: number; logFile: string; cwd: string; home: string; env?: Record<string, string> }): number {
  // The log is in DATA, which the service user owns: opened as root, it must not follow a symlink
  // (or a hard link) the user planted there to make root create or append to a file elsewhere.
  const { O_WRONLY, O_APPEND, O_CREAT, O_NOFOLLOW } = fsConstants;
  let fd: number;
  try {
    fd = openSync(o.logFile, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW, 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ELOOP') throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `${o.logFile} is a symbolic link: remove it (the service user must not choose where root writes)`);
    throw e;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.nlink !== 1) throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `${o.logFile} is not a plain file with one link: remove it (the service user must not choose where root writes)`);
    const child = spawn(argv[0]!, argv.slice(1), {
      detached: true, uid: o.uid, gid: o.gid, cwd: o.cwd, stdio: ['ignore', fd, fd],
      env: { ...o.env, PATH, LANG: 'C.UTF-8', HOME: o.home },
    });
    if (child.pid === undefined) throw new TrellisError('TRELLIS_E_INTERNAL', `cannot start ${argv[0]}`);
    child.unref();
    return child.pid;
  } finally {
    closeSync(fd);
  }
}

/** Alive and not a zombie (a detached agent's parent is gone, and init may reap it late). */
export function processAlive(pid: number): boolean {
  try { process.kill(pid, 0); } catch (e) { return (e as NodeJS.ErrnoException).code === 'EPERM'; }
  try { return !/^\d+ \(.*\) Z/s.test(readFileSync(`/proc/${pid}/stat`, 'utf8')); } catch { return true; }
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
export async function stopProcess(pid: number, graceMs = 10_000): Promise<void> {
  const alive = () => processAlive(pid);
  try { process.kill(pid, 'SIGTERM'); } catch { return; }
  const end = Date.now() + graceMs;
  while (alive() && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
  if (alive()) {
    try { process.kill(pid, 'SIGKILL'); } catch { return; }
    while (alive()) await new Promise((r) => setTimeout(r, 20));
  }
}

/** A local user by name (`getent passwd`: files, LDAP, ...), or undefined. */
export async function lookupUser(name: string): Promise<{ name: string; uid: number; gid: number; home: string } | undefined> {
  const r = await runCmd('getent', ['passwd', '--', name], { timeoutMs: 5_000 });
  if (r.code === 2) return undefined;
  if (r.code !== 0) throw new TrellisError('TRELLIS_E_INTERNAL', `cannot look up user ${name}: ${r.err.trim().split('\n')[0]}`);
  const f = r.out.split('\n')[0]!.split(':');
  const uid = Number(f[2]), gid = Number(f[3]);
  if (f[0] !== name || !Number.isSafeInteger(uid) || !Number.isSafeInteger(gid)) return undefined;
  return { name, uid, gid, home: f[5] ?? '' };
}
