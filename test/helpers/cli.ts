/** The real `trellis` binary in a child process, for CLI tests. */
import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** bin/trellis.js of this checkout (tests run from dist/test). */
export const TRELLIS_BIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'bin', 'trellis.js');

export interface CliProcess {
  child: ChildProcess;
  /** Resolves with the exit code (-1 when killed by a signal). */
  done: Promise<number>;
  out(): string;
  err(): string;
}

/** Starts `trellis ARGS` with the test's environment plus `env`; `input` is written to its stdin. */
export function startCli(args: string[], env: Record<string, string> = {}, input?: string): CliProcess {
  const c = spawn(process.execPath, [TRELLIS_BIN, ...args], { env: { ...process.env, ...env }, stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
  let out = '', err = '';
  c.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  c.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  if (input !== undefined) c.stdin!.end(input);
  const done = new Promise<number>((resolve) => c.on('close', (code) => resolve(code ?? -1)));
  return { child: c, done, out: () => out, err: () => err };
}

/** Runs `trellis ARGS` to the end. */
export async function runCli(args: string[], env: Record<string, string> = {}, input?: string): Promise<{ code: number; out: string; err: string }> {
  const p = startCli(args, env, input);
  const code = await p.done;
  return { code, out: p.out(), err: p.err() };
}

/** Runs any program to the end (npm, npx, node scripts…), its output collected; a spawn error lands in `err`. */
export function runProgram(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    const c = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    c.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    c.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    c.on('error', (e) => { err += String(e); });
    c.on('close', (code) => resolve({ code: code ?? -1, out, err }));
  });
}
