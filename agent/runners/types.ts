/**
 * The runner interface: what every action runner (command, script, http) receives and returns.
 * A runner is one async function over a RunContext; the dispatcher (./index.ts) owns the
 * timeout, cancellation, the output cap and the final report, so runners stay small.
 */
import type { ActionRequest__Output } from '../../common/proto-gen/trellis/v1/ActionRequest.js';
import type { Logger } from '../../common/log.js';
import type { HttpPool } from './http-pool.js';

export type RunStatus = 'succeeded' | 'failed' | 'timeout' | 'canceled' | 'error';

/** The final report of one run. exitCode is -1 when there is none (the run never started). */
export interface RunResult { status: RunStatus; exitCode: number; error: string; startedMs: number; finishedMs: number }

/** What a runner decides; the dispatcher adds the times. */
export type Outcome = Omit<RunResult, 'startedMs' | 'finishedMs'>;

export interface RunSink {
  output(stream: 'STDOUT' | 'STDERR', data: Buffer): void;
  /** Called once when the work has started: the process spawned (its pid) or the HTTP request sent (pid 0). */
  started?(pid: number): void;
  /** Called exactly once, always asynchronously (never from inside runAction itself). */
  done(r: RunResult): void;
}

export interface RunningAction { cancel(): void }

/** An action request as decoded from the wire; fields added after the first release may be absent. */
export type RunRequest = Omit<ActionRequest__Output, 'stdin' | 'sealedMask'> & Partial<Pick<ActionRequest__Output, 'stdin' | 'sealedMask'>>;

/** Values opened from the request's sealed fields: in memory only, for this run only. */
export interface RunInputs {
  /** Extra environment (opened sealed_env); overrides request env of the same name. */
  env?: Record<string, string>;
  /** The process's stdin (opened sealed_stdin); overrides the request's plain stdin. */
  stdin?: Buffer;
  /** Extra HTTP headers (opened sealed_headers); override plain headers of the same name. */
  headers?: Record<string, string>;
  log?: Logger;
  /** Keep-alive connections for the http runner (the agent's pool); without it, one connection per run. */
  http?: HttpPool;
}

/**
 * What stops a run: aborted once, with reason 'timeout' or 'canceled'; its listeners are called
 * at once, in order, on abort. The part of AbortSignal runners use, as three fields: an
 * AbortController with one listener added and removed cost ~5.4 µs per action (measured on this
 * machine), on every action an agent runs; this costs ~0.1 µs.
 */
export class StopSignal {
  aborted = false;
  reason: 'timeout' | 'canceled' | undefined;
  private listeners: Array<() => void> = [];

  /** Stops the run (a second call does nothing). A listener that throws does not keep the others from being called; the first error is thrown after. */
  abort(reason: 'timeout' | 'canceled'): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    const fns = this.listeners;
    this.listeners = [];
    let first: unknown;
    for (const fn of fns) {
      try { fn(); } catch (err) { first ??= err; }
    }
    if (first !== undefined) throw first;
  }

  /** Calls `fn` on abort (once: a signal aborts once). Added after the abort: never called (as with AbortSignal). */
  addEventListener(_type: 'abort', fn: () => void, _opts?: { once?: boolean }): void {
    if (!this.aborted) this.listeners.push(fn);
  }

  removeEventListener(_type: 'abort', fn: () => void): void {
    const i = this.listeners.indexOf(fn);
    if (i >= 0) this.listeners.splice(i, 1);
  }
}

export interface RunContext {
  req: RunRequest;
  /** Aborted with reason 'timeout' or 'canceled' (see stopReason). */
  signal: StopSignal;
  /** The effective timeout (request value, or the default). */
  timeoutMs: number;
  /** Output, capped for the whole run; returns false once the cap is reached (the data was dropped). */
  output(stream: 'STDOUT' | 'STDERR', data: Buffer): boolean;
  /** Reports the start (forwarded to the sink once). */
  started(pid: number): void;
  env: Record<string, string>;
  /** stdin data, if any (plain or opened). */
  stdin?: Buffer;
  headers: Record<string, string>;
  log?: Logger;
  http?: HttpPool;
}

export type RunnerFn = (ctx: RunContext) => Promise<Outcome>;

/** Why the run was stopped, if it was. */
export function stopReason(signal: StopSignal): 'timeout' | 'canceled' | undefined {
  if (!signal.aborted) return undefined;
  return signal.reason === 'timeout' ? 'timeout' : 'canceled';
}

/** The outcome of a run stopped by timeout or cancel; `what` says what was stopped. */
export function stoppedOutcome(ctx: RunContext, exitCode: number, what: string): Outcome {
  return stopReason(ctx.signal) === 'timeout'
    ? { status: 'timeout', exitCode, error: `timed out after ${ctx.timeoutMs} ms; ${what}` }
    : { status: 'canceled', exitCode, error: 'canceled' };
}

/** A run that could not start, with a message naming the field at fault. */
export function errorOutcome(error: string, exitCode = -1): Outcome {
  return { status: 'error', exitCode, error };
}
