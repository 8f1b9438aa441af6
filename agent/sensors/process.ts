/**
 * Whether a process runs, found by name, by a regex on its command line, or by a pid file.
 * On Linux it scans /proc/<pid>/cmdline (one small read per process, no child process); elsewhere
 * it falls back to `ps -axo pid=,args=`. Zombies and kernel threads (empty cmdline) never match.
 * Emits once at start and whenever presence changes.
 */
import { execFile } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { promisify } from 'node:util';
import { compileUserRegex } from '../../common/regex.js';
import { parseSensorConfig } from '../../common/sensors/index.js';
import type { Sensor } from './types.js';

const execFileP = promisify(execFile);
/** Reads in flight while scanning /proc. */
const SCAN_CONCURRENCY = 32;
const MAX_PID_FILE_BYTES = 64;

interface Proc { pid: number; argv: string[]; comm?: string }

async function readProc(pid: number, wantComm: (argv: string[]) => boolean): Promise<Proc | undefined> {
  try {
    const raw = await readFile(`/proc/${pid}/cmdline`);
    if (raw.length === 0) return undefined;
    const argv = raw.toString('utf8').replace(/\0+$/, '').split('\0');
    const comm = wantComm(argv) ? (await readFile(`/proc/${pid}/comm`, 'utf8')).trim() : undefined;
    return { pid, argv, comm };
  } catch {
    return undefined; // exited while we looked, or not ours to read
  }
}

/** Every process with a command line, with `keep` applied as early as possible. */
async function listProcesses(keep: (p: Proc) => boolean, wantComm: (argv: string[]) => boolean, signal: AbortSignal): Promise<number[]> {
  const found: number[] = [];
  let hasProc = true;
  let entries: string[] = [];
  try { entries = await readdir('/proc'); } catch { hasProc = false; }
  if (hasProc && entries.includes('self')) {
    const pids = entries.filter((e) => /^\d+$/.test(e)).map(Number);
    for (let i = 0; i < pids.length && !signal.aborted; i += SCAN_CONCURRENCY) {
      const batch = await Promise.all(pids.slice(i, i + SCAN_CONCURRENCY).map((pid) => readProc(pid, wantComm)));
      for (const p of batch) if (p && keep(p)) found.push(p.pid);
    }
    return found;
  }
  // No procfs (macOS, BSD): one `ps` per poll. Command lines come space-joined, so argv is approximate.
  const { stdout } = await execFileP('ps', ['-axo', 'pid=,args='], { maxBuffer: 16 * 1024 * 1024, signal });
  for (const line of stdout.split('\n')) {
    const m = /^\s*(\d+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const p: Proc = { pid: Number(m[1]), argv: m[2]!.split(' ') };
    if (keep(p)) found.push(p.pid);
  }
  return found;
}

function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (err) { return (err as NodeJS.ErrnoException).code === 'EPERM'; }
}

async function pidFromFile(path: string): Promise<number[]> {
  let text: string;
  try { text = (await readFile(path)).subarray(0, MAX_PID_FILE_BYTES).toString('utf8').trim(); } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  if (!/^\d{1,10}$/.test(text)) return [];
  const pid = Number(text);
  return pid > 0 && alive(pid) ? [pid] : [];
}

export const processSensor: Sensor = {
  kind: 'process',
  create(ctx) {
    const c = parseSensorConfig('process', ctx.config);
    const label = c.name ?? c.pattern ?? c.pidFile ?? '';
    const re = c.pattern !== undefined ? compileUserRegex(c.pattern) : undefined; // linear time (RE2)
    const name = c.name;
    // comm (at most 15 bytes) is read only when argv[0] did not match and the name could be one.
    const commFits = name !== undefined && Buffer.byteLength(name) <= 15;
    const wantComm = (argv: string[]) => commFits && basename(argv[0] ?? '') !== name;
    const keep = (p: Proc): boolean => {
      if (p.pid === process.pid) return false;
      if (re) return re.test(p.argv.join(' '));
      return basename(p.argv[0] ?? '') === name || p.comm === name;
    };
    let last: boolean | undefined;
    return {
      async poll() {
        const pids = c.pidFile !== undefined ? await pidFromFile(c.pidFile) : await listProcesses(keep, wantComm, ctx.signal);
        pids.sort((a, b) => a - b);
        const present = pids.length > 0;
        if (present === last) return [];
        last = present;
        return [{ payload: { name: label, present, pids, count: pids.length } }];
      },
    };
  },
};
