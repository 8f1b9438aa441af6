/**
 * Spawning one action process: argv without a shell, in its own process group (so a timeout or
 * cancel kills everything it started: SIGTERM, then SIGKILL after a grace), optionally as
 * another user, with stdin written then closed, and stdout/stderr streamed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { stat } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import type { RunAs } from './users.js';
import { errorOutcome, stopReason, stoppedOutcome, type Outcome, type RunContext } from './types.js';

/** Environment variables passed through from the agent; everything else comes from the request. */
const PASS_ENV = ['PATH', 'HOME', 'LANG', 'LC_ALL', 'TZ', 'USER', 'LOGNAME', 'SHELL', 'TMPDIR'];
export const KILL_GRACE_MS = 2_000;
/** Exec of a just-written script can race another fork holding its write fd: retry a few times. */
const ETXTBSY_RETRIES = 5;

export interface ProcessSpec {
  file: string;
  args: string[];
  /** '' = the agent's cwd, or the user's home (else /) with run_as. */
  cwd: string;
  runAs?: RunAs;
}

/** Agent pass-through vars, then the run_as user's identity, then the request env, then secrets. */
export function processEnv(ctx: RunContext, runAs?: RunAs): Record<string, string> {
  const env: Record<string, string> = {};
  for (const k of PASS_ENV) if (process.env[k] !== undefined) env[k] = process.env[k]!;
  if (runAs) {
    Object.assign(env, { HOME: runAs.user.home || '/', USER: runAs.user.name, LOGNAME: runAs.user.name });
    if (runAs.user.shell) env.SHELL = runAs.user.shell;
  }
  Object.assign(env, ctx.req.env, ctx.env);
  return env;
}

async function isDir(p: string): Promise<boolean> {
  return stat(p).then((s) => s.isDirectory(), () => false);
}

async function workDir(spec: ProcessSpec): Promise<string | Outcome | undefined> {
  if (spec.cwd) {
    if (spec.cwd.includes('\0')) return errorOutcome('cwd: contains a NUL byte');
    return (await isDir(spec.cwd)) ? spec.cwd : errorOutcome(`cwd: ${spec.cwd} is not an existing directory`);
  }
  if (!spec.runAs) return undefined;
  const home = spec.runAs.user.home;
  return home && (await isDir(home)) ? home : '/';
}

function checkStrings(spec: ProcessSpec, env: Record<string, string>): string {
  if (spec.file.length === 0) return 'argv[0]: the command is empty';
  const i = spec.args.findIndex((a) => a.includes('\0'));
  if (spec.file.includes('\0') || i >= 0) return `argv: an argument contains a NUL byte`;
  for (const [k, v] of Object.entries(env)) {
    if (k.length === 0 || k.includes('=') || k.includes('\0')) return `env: '${k.slice(0, 64).replace(/\0/g, '\\0')}' is not a valid variable name`;
    if (v.includes('\0')) return `env ${k}: the value contains a NUL byte`;
  }
  return '';
}

/** Runs the process to completion (or until the run is stopped) and reports how it ended. */
export async function runProcess(ctx: RunContext, spec: ProcessSpec): Promise<Outcome> {
  const env = processEnv(ctx, spec.runAs);
  const invalid = checkStrings(spec, env);
  if (invalid) return errorOutcome(invalid);
  const cwd = await workDir(spec);
  if (typeof cwd === 'object') return cwd;
  let child: ChildProcess | undefined;
  for (let attempt = 0; ; attempt++) {
    if (ctx.signal.aborted) return stoppedOutcome(ctx, -1, 'the action had not started yet');
    try {
      child = spawn(spec.file, spec.args, {
        cwd, env, detached: true, shell: false, windowsHide: true,
        stdio: [ctx.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
        ...(spec.runAs?.switchIds ? { uid: spec.runAs.user.uid, gid: spec.runAs.user.gid } : {}),
      });
      break;
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (e.code === 'ETXTBSY' && attempt < ETXTBSY_RETRIES) { await sleep(20 * (attempt + 1)); continue; }
      return errorOutcome(`cannot start ${spec.file}: ${e.message}`, 126);
    }
  }
  return supervise(ctx, child, spec.file);
}

function supervise(ctx: RunContext, child: ChildProcess, file: string): Promise<Outcome> {
  return new Promise((resolve) => {
    let killTimer: NodeJS.Timeout | undefined;
    let settled = false;
    const killGroup = (signal: NodeJS.Signals) => {
      if (child.pid === undefined) return;
      try { process.kill(-child.pid, signal); } catch { /* the group is gone */ }
    };
    const onAbort = () => {
      killGroup('SIGTERM');
      killTimer = setTimeout(() => killGroup('SIGKILL'), KILL_GRACE_MS);
    };
    const settle = (o: Outcome) => {
      if (settled) return;
      settled = true;
      ctx.signal.removeEventListener('abort', onAbort);
      clearTimeout(killTimer);
      resolve(o);
    };
    ctx.signal.addEventListener('abort', onAbort, { once: true });
    if (ctx.signal.aborted) onAbort();
    child.once('spawn', () => { if (child.pid !== undefined) ctx.started(child.pid); });
    if (child.stdin) {
      // A process that exits without reading its stdin makes the write fail with EPIPE: not an error of the run.
      child.stdin.on('error', () => {});
      child.stdin.end(ctx.stdin);
    }
    child.stdout!.on('data', (d: Buffer) => { ctx.output('STDOUT', d); });
    child.stderr!.on('data', (d: Buffer) => { ctx.output('STDERR', d); });
    child.on('error', (err: NodeJS.ErrnoException) => {
      // Only spawn failures (no pid: the process never ran) end the run here; 'close' reports the rest.
      if (child.pid !== undefined) return;
      const notFound = err.code === 'ENOENT';
      settle(errorOutcome(notFound ? `command not found: ${file}` : `cannot start ${file}: ${err.message}`, notFound ? 127 : 126));
    });
    child.on('close', (code, signal) => {
      // The direct child is gone; make sure nothing it started outlives a stop.
      if (stopReason(ctx.signal)) killGroup('SIGKILL');
      const exitCode = code ?? 128 + signalNumber(signal);
      if (stopReason(ctx.signal)) settle(stoppedOutcome(ctx, exitCode, 'the process group was killed'));
      else settle({ status: exitCode === 0 ? 'succeeded' : 'failed', exitCode, error: signal ? `killed by ${signal}` : '' });
    });
  });
}

function signalNumber(signal: NodeJS.Signals | null): number {
  return signal ? (osConstants.signals[signal] ?? 0) : 0;
}
