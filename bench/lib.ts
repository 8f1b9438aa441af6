/**
 * Helpers for bench/bench.ts: stderr notes, free ports, a child hub process, its CPU time from
 * /proc, and small statistics. Nothing here writes to stdout.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import * as net from 'node:net';
import { HUB_NODE_FLAGS } from '../common/service/unit.js';

/** Progress and notes: stderr only (stdout carries the figures). */
export function note(msg: string): void {
  process.stderr.write(`[bench] ${msg}\n`);
}

/** The integer value of a command-line flag, at least `min`, or an error naming the flag. */
export function intFlag(flag: string, v: string | undefined, min: number): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new Error(`${flag} needs an integer >= ${min} (got ${v ?? 'nothing'})`);
  return n;
}

/** Node flags from an environment variable (TRELLIS_BENCH_HUB_NODE_ARGS, ...), split on spaces. */
export function envArgs(name: string): string[] {
  return (process.env[name] ?? '').split(/\s+/).filter(Boolean);
}

/** An integer knob from the environment (its default when unset), at least `min`, or an error naming it. */
export function envInt(name: string, dflt: number, min: number): number {
  return intFlag(name, process.env[name] ?? String(dflt), min);
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Ports the kernel hands out for port 0, released again (a small race, retried by the caller). */
export async function freePorts(n: number): Promise<number[]> {
  const servers: net.Server[] = [];
  const ports: number[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const s = net.createServer();
      servers.push(s);
      await new Promise<void>((resolve, reject) => { s.once('error', reject); s.listen(0, '127.0.0.1', () => resolve()); });
      ports.push((s.address() as net.AddressInfo).port);
    }
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
  }
  return ports;
}

let clkTck: number | undefined;
export function clockTicksPerSecond(): number {
  if (clkTck === undefined) {
    try { clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100; } catch { clkTck = 100; }
  }
  return clkTck;
}

/** utime + stime in ms from a /proc `stat` file (a process's or a thread's: fields 14 and 15, clock ticks). */
function statCpuMs(path: string): number {
  const stat = readFileSync(path, 'utf8');
  // The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) throw new Error(`cannot parse ${path}`);
  return ((utime + stime) * 1000) / clockTicksPerSecond();
}

/** utime + stime of a process, in ms, from /proc/<pid>/stat. */
export function processCpuMs(pid: number): number {
  return statCpuMs(`/proc/${pid}/stat`);
}

/**
 * CPU time (ms) of a process's main thread and of its other threads together (Linux
 * /proc/PID/task): for a node process the others are V8's workers (the optimizing compiler, GC
 * helpers) and the libuv pool (file writes). A thread gone meanwhile is not counted.
 */
export function threadCpuMs(pid: number): { main: number; other: number } {
  let main = 0, other = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    let ms: number;
    try { ms = statCpuMs(`/proc/${pid}/task/${tid}/stat`); } catch { continue; } // ended meanwhile
    if (Number(tid) === pid) main += ms; else other += ms;
  }
  return { main, other };
}

/**
 * The whole machine's CPU time from /proc/stat (clock ticks, every CPU): all of it and the part
 * stolen by the hypervisor (a virtual CPU ready to run while the host ran something else). A
 * latency figure measured while steal was high says more about the host than about Trellis.
 */
export function machineCpuTicks(): { total: number; steal: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
  // cpu  user nice system idle iowait irq softirq steal guest guest_nice (guest time is inside user)
  const f = line.trim().split(/\s+/).slice(1, 9).map(Number);
  if (!line.startsWith('cpu ') || f.length < 8 || f.some((v) => !Number.isFinite(v))) throw new Error('cannot parse /proc/stat');
  return { total: f.reduce((a, b) => a + b, 0), steal: f[7]! };
}

/** Percent of the machine's CPU time stolen between two machineCpuTicks() readings. */
export function stealPct(a: { total: number; steal: number }, b: { total: number; steal: number }): number {
  const total = b.total - a.total;
  return total > 0 ? (100 * (b.steal - a.steal)) / total : 0;
}

export interface ChildHub {
  proc: ChildProcess;
  pid: number;
  agentPort: number;
  adminPort: number;
  webPort: number;
  /** Resolves when the process has exited. */
  exited: Promise<number | null>;
  /** SIGTERM, then SIGKILL after graceMs. */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Starts `node bin/trellis.js hub run --data DIR` on free loopback ports and resolves once it has
 * printed its listening line (callers then wait for Version). Retries with new ports if the
 * ports were taken in the meantime.
 */
export async function startChildHub(root: string, dataDir: string, extraNodeArgs: string[], attempts = 3): Promise<ChildHub> {
  let lastErr: Error | undefined;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    const [agentPort, adminPort, webPort] = await freePorts(3);
    // The hub's node flags (its unit's, and bin/trellis.js's first line), then the caller's.
    const args = [...HUB_NODE_FLAGS, ...extraNodeArgs, 'bin/trellis.js', 'hub', 'run', '--data', dataDir,
      '--agent-port', String(agentPort), '--admin-port', String(adminPort), '--web-port', String(webPort)];
    const proc = spawn(process.execPath, args, {
      cwd: root,
      env: { ...process.env, TRELLIS_LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
    let errText = '';
    let resolveListening!: () => void;
    const listening = new Promise<void>((r) => { resolveListening = r; });
    const forward = (prefix: string) => (chunk: Buffer) => {
      const text = chunk.toString('utf8');
      if (errText.length < 20_000) errText += text;
      for (const line of text.split('\n')) if (line.trim()) process.stderr.write(`[hub${prefix}] ${line}\n`);
      if (/trellis hub: agent port \d+, admin port \d+/.test(errText)) resolveListening();
    };
    proc.stdout!.on('data', forward(' stdout'));
    proc.stderr!.on('data', forward(''));
    const stop = async (graceMs = 5000) => {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      const t = setTimeout(() => { if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL'); }, graceMs);
      await exited;
      clearTimeout(t);
    };
    const outcome = await Promise.race([
      listening.then(() => 'up' as const),
      exited.then(() => 'exited' as const),
      sleep(20_000).then(() => 'timeout' as const),
    ]);
    if (outcome === 'up') return { proc, pid: proc.pid!, agentPort, adminPort, webPort, exited, stop };
    await stop(1000);
    lastErr = new Error(`child hub ${outcome === 'exited' ? `exited (code ${proc.exitCode})` : 'did not start within 20 s'}: ${errText.trim().slice(-500)}`);
    if (!/cannot listen|EADDRINUSE/.test(errText)) break;
    note(`hub start attempt ${attempt} failed (port taken); retrying with new ports`);
  }
  throw lastErr ?? new Error('child hub did not start');
}

export function mean(xs: number[]): number {
  return xs.reduce((a, b) => a + b, 0) / xs.length;
}

/** Nearest-rank percentile (p in 0..100). */
export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.max(0, Math.ceil((p / 100) * s.length) - 1)]!;
}

/** Runs fn(i) for i in 0..n-1 with at most `concurrency` at once; rejects on the first error. */
export async function pool(n: number, concurrency: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      await fn(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
}
