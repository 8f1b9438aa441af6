/**
 * Action runners: the table of implementations and the dispatcher that runs one action.
 * The dispatcher owns what every runner shares: the timeout, cancellation (a StopSignal the
 * runner watches), the 8 MiB output cap, the single `started` and `done` reports, and turning an
 * exception into status 'error'. Adding a runner is one file and one line in RUNNERS.
 */
import { errorMessage } from '../../common/errors.js';
import { runCommand } from './command.js';
import { runHttp } from './http.js';
import { runScript } from './script.js';
import { errorOutcome, StopSignal, type Outcome, type RunContext, type RunInputs, type RunnerFn, type RunningAction, type RunRequest, type RunSink } from './types.js';

export * from './types.js';
export { resolveRunAs, lookupUser, type UserInfo, type RunAs } from './users.js';
export { SCRIPT_DIR_PREFIX, MAX_SCRIPT_BYTES } from './script.js';
export { KILL_GRACE_MS } from './process.js';
export { HttpPool } from './http-pool.js';

export const RUNNERS = {
  command: runCommand,
  script: runScript,
  http: runHttp,
} as const satisfies Record<string, RunnerFn>;

export type RunnerName = keyof typeof RUNNERS;

export const MAX_OUTPUT_BYTES = 8 * 1024 * 1024;
export const DEFAULT_TIMEOUT_MS = 30_000;
/** setTimeout's limit; longer timeouts are clamped to it (about 24.8 days). */
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

function runnerOf(name: string): RunnerFn | undefined {
  const n = name || 'command';
  return Object.hasOwn(RUNNERS, n) ? RUNNERS[n as RunnerName] : undefined;
}

/**
 * Runs one action with the runner it names (runner '' means command). Returns at once; the
 * sink gets `started` once the work began, output chunks (at most MAX_OUTPUT_BYTES in all, then
 * one truncation note), and exactly one `done`, always asynchronously.
 */
export function runAction(req: RunRequest, sink: RunSink, inputs: RunInputs = {}): RunningAction {
  const startedMs = Date.now();
  const timeoutMs = req.timeoutMs > 0 ? Math.min(req.timeoutMs, MAX_TIMEOUT_MS) : DEFAULT_TIMEOUT_MS;
  const stop = new StopSignal();
  const timer = setTimeout(() => stop.abort('timeout'), timeoutMs);
  let sent = 0;
  let truncated = false;
  let startedSent = false;
  let finished = false;
  const stdin = inputs.stdin ?? (req.stdin && req.stdin.length > 0 ? req.stdin : undefined);
  const ctx: RunContext = {
    req, signal: stop, timeoutMs, env: inputs.env ?? {}, headers: inputs.headers ?? {}, stdin, log: inputs.log, http: inputs.http,
    output(stream, data) {
      if (finished || truncated) return false;
      const part = data.subarray(0, MAX_OUTPUT_BYTES - sent);
      sent += part.length;
      if (part.length > 0) sink.output(stream, part);
      if (part.length === data.length) return true;
      truncated = true;
      sink.output('STDERR', Buffer.from(`\n[trellis: output truncated at ${MAX_OUTPUT_BYTES} bytes]\n`));
      return false;
    },
    started(pid) {
      if (startedSent || finished) return;
      startedSent = true;
      sink.started?.(pid);
    },
  };
  const finish = (o: Outcome) => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    sink.done({ ...o, startedMs, finishedMs: Date.now() });
  };
  const run = runnerOf(req.runner);
  void (async (): Promise<Outcome> => {
    await Promise.resolve(); // done is never reported before runAction returns
    if (!run) return errorOutcome(`runner: '${req.runner.slice(0, 32)}' is not one of ${Object.keys(RUNNERS).join(', ')}`);
    return run(ctx);
  })().then(finish, (err: unknown) => finish(errorOutcome(errorMessage(err))));
  return { cancel: () => { if (!finished) stop.abort('canceled'); } };
}
