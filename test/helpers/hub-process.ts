/**
 * `trellis hub run` as a child process on fixed ports (so a restart keeps the address agents
 * dial): for tests that kill the hub with `kill -9`, restart it, or run several hubs.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

export interface HubProc {
  proc: ChildProcess;
  exited: Promise<unknown>;
  /** Everything the hub wrote to stdout and stderr so far. */
  out(): string;
}

/** Starts the hub on `[agentPort, adminPort, webPort]` and resolves once its ports are open. */
export async function runHub(dataDir: string, ports: number[], o: { logLevel?: string; startMs?: number } = {}): Promise<HubProc> {
  const [agentPort, adminPort, webPort] = ports.map(String) as [string, string, string];
  const proc = spawn(process.execPath, ['bin/trellis.js', 'hub', 'run', '--data', dataDir, '--agent-port', agentPort, '--admin-port', adminPort, '--web-port', webPort], {
    cwd: ROOT, env: { ...process.env, TRELLIS_LOG_LEVEL: o.logLevel ?? 'warn' }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise((resolve) => proc.once('exit', resolve));
  let text = '';
  const startMs = o.startMs ?? 90_000;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`hub did not start within ${startMs / 1000} s: ${text.slice(-800)}`)), startMs);
    const onData = (d: Buffer) => {
      text += d.toString('utf8');
      if (/trellis hub: agent port \d+, admin port \d+/.test(text)) { clearTimeout(timer); resolve(); }
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', onData);
    void exited.then(() => { clearTimeout(timer); reject(new Error(`hub exited at start: ${text.slice(-800)}`)); });
  });
  return { proc, exited, out: () => text };
}

/** Stops the hub with `signal` (SIGTERM: a clean stop; SIGKILL: a crash) and waits for its exit. */
export async function stopHub(h: HubProc | undefined, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (!h || h.proc.exitCode !== null || h.proc.signalCode !== null) return;
  h.proc.kill(signal);
  await h.exited;
}
