/**
 * Runs argv (no shell) every interval in its own process group with a minimal environment,
 * kills the group on timeout or stop, and reports the exit code and capped output.
 */
import { spawn } from 'node:child_process';
import { constants as osConstants } from 'node:os';
import { COMMAND_OUTPUT_CAP_BYTES, parseSensorConfig } from '../../common/sensors/index.js';
import type { Sensor } from './types.js';

/** Environment passed through from the agent; nothing else (the agent's env may hold secrets). */
const PASS_ENV = ['PATH', 'HOME', 'LANG', 'LC_ALL', 'TZ', 'USER', 'LOGNAME', 'TMPDIR'];

/** After a kill, how long to wait for the output pipes to close before closing them ourselves. */
const PIPE_GRACE_MS = 1_000;

interface RunOutcome { exitCode: number; stdout: string; stderr: string; error?: string }

function capture(): { push(b: Buffer): void; text(): string } {
  const parts: Buffer[] = [];
  let len = 0;
  return {
    push(b) {
      if (len >= COMMAND_OUTPUT_CAP_BYTES) return;
      const part = b.subarray(0, COMMAND_OUTPUT_CAP_BYTES - len);
      parts.push(part);
      len += part.length;
    },
    text: () => Buffer.concat(parts, len).toString('utf8'),
  };
}

function run(argv: string[], timeoutMs: number, signal: AbortSignal): Promise<RunOutcome> {
  return new Promise((resolve) => {
    const env: Record<string, string> = {};
    for (const k of PASS_ENV) if (process.env[k] !== undefined) env[k] = process.env[k]!;
    const out = capture();
    const err = capture();
    let why: 'timeout' | 'stopped' | undefined;
    const child = spawn(argv[0]!, argv.slice(1), { env, detached: true, stdio: ['ignore', 'pipe', 'pipe'], shell: false });
    const killGroup = () => {
      if (child.pid === undefined) return;
      try { process.kill(-child.pid, 'SIGKILL'); } catch { /* already gone */ }
    };
    const stop = (reason: 'timeout' | 'stopped') => {
      why ??= reason;
      killGroup();
      // A descendant that left the group could hold the pipes open: stop waiting for them.
      setTimeout(() => { child.stdout?.destroy(); child.stderr?.destroy(); }, PIPE_GRACE_MS).unref();
    };
    const timer = setTimeout(() => stop('timeout'), timeoutMs);
    const onAbort = () => stop('stopped');
    signal.addEventListener('abort', onAbort, { once: true });
    child.stdout!.on('data', (b: Buffer) => out.push(b));
    child.stderr!.on('data', (b: Buffer) => err.push(b));
    let settled = false;
    const settle = (r: RunOutcome) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      resolve(r);
    };
    child.on('error', (e: NodeJS.ErrnoException) => {
      // A failed spawn may or may not be followed by 'close'; settle now either way.
      const error = e.code === 'ENOENT' ? `command not found: ${argv[0]}` : `cannot start ${argv[0]}: ${e.message}`;
      if (child.pid === undefined) settle({ exitCode: -1, stdout: '', stderr: '', error });
    });
    child.on('close', (code, sig) => {
      if (why) killGroup(); // nothing it started outlives it
      const base = { stdout: out.text(), stderr: err.text() };
      if (why === 'timeout') settle({ exitCode: -1, ...base, error: `timed out after ${timeoutMs} ms; the process group was killed` });
      else if (why === 'stopped') settle({ exitCode: -1, ...base, error: 'stopped' });
      else if (code === null) settle({ exitCode: 128 + (sig ? (osConstants.signals[sig] ?? 0) : 0), ...base, error: `killed by ${sig}` });
      else settle({ exitCode: code, ...base });
    });
  });
}

export const command: Sensor = {
  kind: 'command',
  create(ctx) {
    const c = parseSensorConfig('command', ctx.config);
    let lastKey: string | undefined;
    return {
      async poll() {
        const r = await run(c.argv, c.timeout, ctx.signal);
        if (ctx.signal.aborted) return [];
        const key = JSON.stringify([r.exitCode, r.stdout, r.stderr, r.error ?? '']);
        const changed = key !== lastKey;
        lastKey = key;
        const emit = c.emit === 'always' || (c.emit === 'change' && changed) || (c.emit === 'nonzero' && r.exitCode !== 0);
        if (!emit) return [];
        return [{ payload: { argv: c.argv, ...r } }];
      },
    };
  },
};
