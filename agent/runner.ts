/**
 * Runs an action's argv directly (no shell) in its own process group, streams stdout and
 * stderr in chunks, and kills the whole group on timeout or cancel.
 */
import { spawn } from 'node:child_process';
import { constants as osConstants } from 'node:os';
import type { ActionRequest__Output } from '../common/proto-gen/trellis/v1/ActionRequest.js';

export type RunStatus = 'succeeded' | 'failed' | 'timeout' | 'canceled' | 'error';
export interface RunResult { status: RunStatus; exitCode: number; error: string; startedMs: number; finishedMs: number }
export interface RunSink {
  output(stream: 'STDOUT' | 'STDERR', data: Buffer): void;
  done(r: RunResult): void;
}

/** Environment variables passed through from the agent; everything else comes from the request. */
const PASS_ENV = ['PATH', 'HOME', 'LANG', 'LC_ALL', 'TZ', 'USER', 'LOGNAME', 'SHELL', 'TMPDIR'];
export const MAX_OUTPUT_BYTES = 8 * 1024 * 1024;
const KILL_GRACE_MS = 2_000;

export interface RunningAction { cancel(): void }

export function runAction(req: ActionRequest__Output, sink: RunSink): RunningAction {
  const startedMs = Date.now();
  const env: Record<string, string> = {};
  for (const k of PASS_ENV) if (process.env[k] !== undefined) env[k] = process.env[k]!;
  Object.assign(env, req.env);
  let finished = false;
  let reason: 'timeout' | 'canceled' | undefined;
  let killTimer: NodeJS.Timeout | undefined;
  const finish = (r: Omit<RunResult, 'startedMs' | 'finishedMs'>) => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    clearTimeout(killTimer);
    sink.done({ ...r, startedMs, finishedMs: Date.now() });
  };

  const child = spawn(req.argv[0]!, req.argv.slice(1), {
    cwd: req.cwd || undefined, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'], shell: false,
  });
  const killGroup = (signal: NodeJS.Signals) => {
    if (child.pid === undefined) return;
    try { process.kill(-child.pid, signal); } catch { /* already gone */ }
  };
  const stop = (why: 'timeout' | 'canceled') => {
    if (finished || reason) return;
    reason = why;
    killGroup('SIGTERM');
    killTimer = setTimeout(() => killGroup('SIGKILL'), KILL_GRACE_MS);
  };
  const timer = setTimeout(() => stop('timeout'), req.timeoutMs > 0 ? req.timeoutMs : 30_000);

  let sent = 0;
  let truncated = false;
  const pipe = (stream: 'STDOUT' | 'STDERR') => (chunk: Buffer) => {
    if (sent >= MAX_OUTPUT_BYTES) {
      if (!truncated) { truncated = true; sink.output('STDERR', Buffer.from(`\n[trellis: output truncated at ${MAX_OUTPUT_BYTES} bytes]\n`)); }
      return;
    }
    const part = chunk.subarray(0, MAX_OUTPUT_BYTES - sent);
    sent += part.length;
    sink.output(stream, part);
  };
  child.stdout!.on('data', pipe('STDOUT'));
  child.stderr!.on('data', pipe('STDERR'));
  child.on('error', (err: NodeJS.ErrnoException) => {
    const notFound = err.code === 'ENOENT';
    finish({ status: 'error', exitCode: notFound ? 127 : 126, error: notFound ? `command not found: ${req.argv[0]}` : `cannot start ${req.argv[0]}: ${err.message}` });
  });
  child.on('close', (code, signal) => {
    // The direct child is gone; make sure nothing it started outlives it after a stop.
    if (reason) killGroup('SIGKILL');
    const exitCode = code ?? 128 + signalNumber(signal);
    if (reason === 'timeout') finish({ status: 'timeout', exitCode, error: `timed out after ${req.timeoutMs} ms; the process group was killed` });
    else if (reason === 'canceled') finish({ status: 'canceled', exitCode, error: 'canceled' });
    else finish({ status: exitCode === 0 ? 'succeeded' : 'failed', exitCode, error: signal ? `killed by ${signal}` : '' });
  });
  return { cancel: () => stop('canceled') };
}

function signalNumber(signal: NodeJS.Signals | null): number {
  return signal ? (osConstants.signals[signal] ?? 0) : 0;
}
