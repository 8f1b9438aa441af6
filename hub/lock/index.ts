/**
 * The hub data directory lock: one process that writes hub state (`hub run`, `hub init`, a
 * migration) holds DATA/hub.lock; a second one refuses to start and names the holder.
 *
 * Why a lock file and not fcntl/flock: Node has no portable advisory-lock call, and a native
 * addon would be a build step on every install. So the lock is a file created with O_EXCL
 * (`wx`) holding `{ pid, host, startedAtMs, procStart }`. A kill -9 cannot leave it stuck: a
 * later process on the same host finds the holder dead (no such pid, or a pid reused by another
 * process: `procStart` is the holder's start time from /proc/PID/stat, which a reused pid does
 * not share) and takes the lock over.
 *
 * The takeover is race-free: two processes that both see a stale lock first race for
 * DATA/hub.lock.break (O_EXCL); only the winner re-reads the lock, checks it is still the same
 * stale holder, removes it and creates its own with O_EXCL (the loser retries from the start and
 * then finds the winner's live lock). A breaker left by a process killed mid-takeover (a window
 * of a few syscalls) is itself judged by its holder's liveness.
 *
 * A lock written on another host (a data dir on shared storage) is never taken over: the hub
 * cannot see that process, so the message says to remove the file by hand once it is sure.
 */
import { openSync, writeSync, closeSync, fsyncSync, readFileSync, unlinkSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { TrellisError } from '../../common/errors.js';

export const LOCK_FILE = 'hub.lock';

/** Who holds a data directory. */
export interface LockHolder {
  pid: number;
  host: string;
  startedAtMs: number;
  /** The process's start time in clock ticks since boot (Linux /proc/PID/stat field 22); '' elsewhere. */
  procStart: string;
  /** What the holder is doing: "hub run", "hub init", "hub migrate". */
  purpose: string;
}

/** A held lock: release() removes the file if it is still ours (idempotent). */
export interface DataDirLock {
  readonly path: string;
  readonly holder: LockHolder;
  release(): void;
}

/** State and start time (clock ticks since boot) of a process from /proc, or undefined when unreadable. */
function procStat(pid: number): { state: string; start: string } | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // comm (field 2) may hold spaces and parentheses: fields after the last ')' are fixed.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { state: rest[0] ?? '', start: rest[19] ?? '' }; // field 3 (state) at index 0, field 22 (starttime) at 19
  } catch {
    return undefined;
  }
}
const procStartOf = (pid: number) => procStat(pid)?.start ?? '';

/** alive | dead | unknown (another host: we cannot tell). */
function liveness(h: LockHolder): 'alive' | 'dead' | 'unknown' {
  if (h.host !== hostname()) return 'unknown';
  if (!Number.isInteger(h.pid) || h.pid <= 0) return 'dead';
  try {
    process.kill(h.pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ESRCH') return 'dead';
    // EPERM: a process of another user has that pid; judged by its start time below.
  }
  const st = procStat(h.pid);
  if (st && (st.state === 'Z' || st.state === 'X')) return 'dead'; // killed, not reaped yet by its parent
  if (h.procStart && st?.start && st.start !== h.procStart) return 'dead'; // the pid was reused
  return 'alive';
}

function readHolder(path: string): LockHolder | undefined {
  let text: string;
  try { text = readFileSync(path, 'utf8'); } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  try {
    const v = JSON.parse(text) as Partial<LockHolder>;
    return { pid: Number(v.pid), host: String(v.host ?? ''), startedAtMs: Number(v.startedAtMs ?? 0), procStart: String(v.procStart ?? ''), purpose: String(v.purpose ?? '') };
  } catch {
    // A torn write (killed between create and write): the file is older than any live holder's
    // write, so treat it as a dead holder on this host.
    return { pid: 0, host: hostname(), startedAtMs: 0, procStart: '', purpose: '' };
  }
}

/** Creates `path` with O_EXCL holding `h`; false when it exists. */
function createExclusive(path: string, h: LockHolder): boolean {
  let fd: number;
  try { fd = openSync(path, 'wx', 0o600); } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw new TrellisError('TRELLIS_E_CONFIG', `cannot create the data directory lock ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { cause: e });
  }
  try {
    writeSync(fd, JSON.stringify(h) + '\n');
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return true;
}

const same = (a: LockHolder, b: LockHolder) => a.pid === b.pid && a.host === b.host && a.startedAtMs === b.startedAtMs && a.procStart === b.procStart;

export function describeHolder(h: LockHolder): string {
  const when = h.startedAtMs ? new Date(h.startedAtMs).toISOString() : 'an unknown time';
  return `${h.purpose ? `"${h.purpose}" ` : ''}pid ${h.pid} on ${h.host || 'an unknown host'}, started ${when}`;
}

/**
 * Takes the lock of `dataDir` (which must exist) for `purpose`, or throws TRELLIS_E_LOCKED
 * naming the holder. Sync on purpose: a few syscalls, before anything else touches the dir.
 */
export function lockDataDir(dataDir: string, purpose: string): DataDirLock {
  const path = join(dataDir, LOCK_FILE);
  const breaker = `${path}.break`;
  const me: LockHolder = { pid: process.pid, host: hostname(), startedAtMs: Date.now(), procStart: procStartOf(process.pid), purpose };
  for (let attempt = 0; attempt < 20; attempt++) {
    if (createExclusive(path, me)) return held(path, me);
    const holder = readHolder(path);
    if (!holder) continue; // released between our create and read: try again
    const state = liveness(holder);
    if (state === 'alive' && holder.pid === process.pid && holder.host === me.host) {
      throw new TrellisError('TRELLIS_E_LOCKED', `the hub data directory ${dataDir} is already in use by this process (${describeHolder(holder)}); close that hub first`);
    }
    if (state === 'alive') {
      throw new TrellisError('TRELLIS_E_LOCKED', `the hub data directory ${dataDir} is in use by ${describeHolder(holder)}; stop that process first (its lock is ${path})`);
    }
    if (state === 'unknown') {
      throw new TrellisError('TRELLIS_E_LOCKED', `the hub data directory ${dataDir} is locked by ${describeHolder(holder)}, another host; this hub cannot check that process: once you are sure it is gone, remove ${path}`);
    }
    // A dead holder: race for the breaker, then replace the lock if it is still the same one.
    if (!createExclusive(breaker, me)) {
      const b = readHolder(breaker);
      if (b && liveness(b) === 'dead') { try { unlinkSync(breaker); } catch { /* another process removed it */ } }
      continue;
    }
    try {
      const again = readHolder(path);
      if (again && same(again, holder)) {
        try { unlinkSync(path); } catch { /* gone already */ }
        if (createExclusive(path, me)) return held(path, me, holder);
      }
    } finally {
      try { unlinkSync(breaker); } catch { /* ignore */ }
    }
  }
  throw new TrellisError('TRELLIS_E_LOCKED', `could not take the lock of the hub data directory ${dataDir} (${path}): other processes keep taking it`);
}

function held(path: string, me: LockHolder, tookOverFrom?: LockHolder): DataDirLock & { tookOverFrom?: LockHolder } {
  let released = false;
  return {
    path, holder: me, tookOverFrom,
    release() {
      if (released) return;
      released = true;
      const h = readHolder(path);
      if (h && same(h, me)) { try { unlinkSync(path); } catch { /* ignore */ } }
    },
  };
}
