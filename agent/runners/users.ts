/**
 * run_as: resolving a local user and deciding whether the agent may run as them.
 * Root agents switch to any existing user (uid, gid; supplementary groups are dropped by the
 * spawn); an agent running as anyone else may only "switch" to itself: it never silently runs
 * an action as its own user when another one was asked for.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { TrellisError } from '../../common/errors.js';

export interface UserInfo { name: string; uid: number; gid: number; home: string; shell: string }

/** Who an action runs as: the user, and whether the spawn must set uid/gid. */
export interface RunAs { user: UserInfo; switchIds: boolean }

/** POSIX-ish portable user names (useradd's default), plus a trailing $ for machine accounts. */
const USER_NAME = /^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$/;
const GETENT_TIMEOUT_MS = 5_000;

const bad = (msg: string): TrellisError => new TrellisError('TRELLIS_E_INVALID_ARGUMENT', msg);

function parsePasswdLine(line: string, name: string): UserInfo | undefined {
  const f = line.replace(/\r?\n$/, '').split(':');
  if (f.length < 7 || f[0] !== name) return undefined;
  const uid = Number(f[2]);
  const gid = Number(f[3]);
  if (!Number.isSafeInteger(uid) || !Number.isSafeInteger(gid) || uid < 0 || gid < 0 || f[2] === '' || f[3] === '') return undefined;
  return { name, uid, gid, home: f[5] ?? '', shell: f[6] ?? '' };
}

/** Looks a user up with `getent passwd` (NSS: files, LDAP, ...), or /etc/passwd when getent is missing. */
export async function lookupUser(name: string): Promise<UserInfo | undefined> {
  if (!USER_NAME.test(name)) throw bad(`run_as: '${name.slice(0, 64)}' is not a valid user name`);
  const viaGetent = await new Promise<{ out?: string; missing?: boolean; notFound?: boolean; error?: string }>((resolve) => {
    execFile('getent', ['passwd', '--', name], { timeout: GETENT_TIMEOUT_MS, maxBuffer: 64 * 1024, env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } }, (err, stdout) => {
      if (!err) return resolve({ out: stdout });
      const e = err as Error & { code?: string | number | null; killed?: boolean };
      if (e.code === 'ENOENT') return resolve({ missing: true });
      if (e.code === 2) return resolve({ notFound: true }); // getent: key not found
      resolve({ error: e.killed ? `getent timed out after ${GETENT_TIMEOUT_MS} ms` : e.message });
    });
  });
  if (viaGetent.notFound) return undefined;
  if (viaGetent.error) throw new TrellisError('TRELLIS_E_INTERNAL', `run_as: cannot look up user '${name}': ${viaGetent.error}`);
  if (viaGetent.out !== undefined) return parsePasswdLine(viaGetent.out.split('\n')[0] ?? '', name);
  const passwd = await readFile('/etc/passwd', 'utf8').catch(() => '');
  for (const line of passwd.split('\n')) {
    const u = parsePasswdLine(line, name);
    if (u) return u;
  }
  return undefined;
}

function agentUserName(): string {
  try { return userInfo().username; } catch { return `uid ${process.getuid?.() ?? '?'}`; }
}

/**
 * Resolves run_as for a run: undefined when empty (run as the agent). Throws
 * TRELLIS_E_INVALID_ARGUMENT "no such user" or "the agent runs as X and cannot switch to Y".
 */
export async function resolveRunAs(runAs: string): Promise<RunAs | undefined> {
  if (!runAs) return undefined;
  if (typeof process.getuid !== 'function') throw bad('run_as is not supported on this platform');
  const user = await lookupUser(runAs);
  if (!user) throw bad(`run_as: no such user '${runAs}'`);
  const me = process.getuid();
  if (me === 0) return { user, switchIds: user.uid !== 0 || (process.getgid?.() ?? 0) !== user.gid };
  if (user.uid === me) return { user, switchIds: false };
  throw bad(`run_as: the agent runs as ${agentUserName()} and cannot switch to ${runAs} (run the agent as root to use run_as)`);
}
