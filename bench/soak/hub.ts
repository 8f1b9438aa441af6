/**
 * The soak's hub: `node bin/trellis.js hub run` as a child process on fixed loopback ports (a
 * restart after a kill -9 comes back on the same ports, as a service manager would start it),
 * its RSS and CPU time from /proc.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { sleep } from '../lib.js';
import { HUB_NODE_FLAGS } from '../../common/service/unit.js';

export interface SoakHub {
  proc: ChildProcess;
  pid: number;
  /** spawn → the "agent port N, admin port M" line (both listeners open), ms. */
  startMs: number;
  exited: Promise<void>;
}

export interface HubPorts { agentPort: number; adminPort: number; webPort: number }

const LISTENING = /trellis hub: agent port \d+, admin port \d+/;

/** Starts the hub; rejects if it exits or is not listening within `timeoutMs`. */
export async function startHub(root: string, dataDir: string, ports: HubPorts, log: (line: string) => void, timeoutMs = 60_000): Promise<SoakHub> {
  const args = [...HUB_NODE_FLAGS, 'bin/trellis.js', 'hub', 'run', '--data', dataDir,
    '--agent-port', String(ports.agentPort), '--admin-port', String(ports.adminPort), '--web-port', String(ports.webPort)];
  const t0 = performance.now();
  const proc = spawn(process.execPath, args, { cwd: root, env: { ...process.env, TRELLIS_LOG_LEVEL: 'warn' }, stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  let text = '';
  let startMs = -1;
  let onUp!: () => void;
  const up = new Promise<void>((r) => { onUp = r; });
  const forward = (chunk: Buffer) => {
    const s = chunk.toString('utf8');
    if (startMs < 0) {
      text += s;
      if (LISTENING.test(text)) { startMs = performance.now() - t0; onUp(); }
      if (text.length > 20_000) text = text.slice(-10_000);
    }
    for (const line of s.split('\n')) if (line.trim()) log(line);
  };
  proc.stdout!.on('data', forward);
  proc.stderr!.on('data', forward);
  const outcome = await Promise.race([up.then(() => 'up'), exited.then(() => 'exited'), sleep(timeoutMs).then(() => 'timeout')]);
  if (outcome !== 'up') {
    proc.kill('SIGKILL');
    await exited;
    throw new Error(`the hub ${outcome === 'exited' ? `exited (code ${proc.exitCode})` : `was not listening within ${timeoutMs / 1000} s`}: ${text.trim().slice(-600)}`);
  }
  return { proc, pid: proc.pid!, startMs, exited };
}

export async function killHub(h: SoakHub, signal: NodeJS.Signals, graceMs = 30_000): Promise<void> {
  if (h.proc.exitCode !== null || h.proc.signalCode !== null) return;
  h.proc.kill(signal);
  const t = setTimeout(() => h.proc.kill('SIGKILL'), graceMs);
  await h.exited;
  clearTimeout(t);
}

/** Resident set size of a process, MB (VmRSS of /proc/PID/status). */
export function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(m[1]) / 1024;
}
