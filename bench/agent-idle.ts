/**
 * agent_idle_rss_mb, agent_idle_cpu_pct: the footprint of one idle agent, as it runs on every
 * managed server. A real `node --max-semi-space-size=1 bin/trellis.js agent run --data DIR` child
 * process with MALLOC_ARENA_MAX=2: the argv and environment of the systemd unit `agent install`
 * writes (common/service/unit.ts execStart, serviceEnv), enrolled to the bench's child hub, no
 * sensors, no actions. Once it has logged `connected to the hub` it settles (settleMs), then for
 * measureMs: CPU is utime+stime from /proc/PID/stat over the window, RSS the mean of VmRSS
 * samples from /proc/PID/status taken every second, wakeups the main thread's voluntary context
 * switches over the window (how often its event loop woke up), per minute.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { execStart, serviceEnv } from '../common/service/unit.js';
import { note, processCpuMs, sleep } from './lib.js';

export interface AgentIdleResult {
  rssMb: number;
  cpuPct: number;
  /** Main-thread voluntary context switches per minute (event-loop wake-ups). */
  wakeupsPerMin: number;
  /** Threads of the process at the end of the window. */
  threads: number;
}

/** A field of /proc/PID/status, e.g. VmRSS (kB) or voluntary_ctxt_switches. */
export function procStatusField(pid: number, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(m[1]);
}

/** `plain`: `node bin/trellis.js agent run` without the unit's node flags and environment (for comparison). */
export async function benchAgentIdle(o: { root: string; dataDir: string; settleMs?: number; measureMs?: number; nodeArgs?: string[]; plain?: boolean }): Promise<AgentIdleResult> {
  // V8's memory reducer shrinks the heap some 10-50 s after start-up (later on a loaded machine):
  // settle past it, so the figure is the agent's steady state (servers run agents for months).
  const settleMs = o.settleMs ?? 45_000;
  const measureMs = o.measureMs ?? 20_000;
  const bin = join(o.root, 'bin', 'trellis.js');
  const argv = o.plain ? [process.execPath, bin, 'agent', 'run', '--data', o.dataDir] : execStart({ kind: 'agent', node: process.execPath, bin, data: o.dataDir });
  argv.splice(1, 0, ...(o.nodeArgs ?? []));
  const env = o.plain ? {} : serviceEnv('agent');
  const proc = spawn(argv[0]!, argv.slice(1), {
    cwd: o.root, env: { ...process.env, ...env, TRELLIS_LOG_LEVEL: 'info' }, stdio: ['ignore', 'ignore', 'pipe'],
  });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  let errText = '';
  try {
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`the agent did not connect within 30 s: ${errText.trim().slice(-400)}`)), 30_000);
      proc.stderr!.on('data', (c: Buffer) => {
        if (errText.length < 20_000) errText += c.toString('utf8');
        if (errText.includes('connected to the hub')) { clearTimeout(t); resolve(); }
      });
      proc.once('exit', (code) => { clearTimeout(t); reject(new Error(`the agent exited (code ${code}): ${errText.trim().slice(-400)}`)); });
    });
    const pid = proc.pid!;
    const rssAtConnect = procStatusField(pid, 'VmRSS') / 1024;
    await sleep(settleMs);
    const cpu0 = processCpuMs(pid);
    const wake0 = procStatusField(pid, 'voluntary_ctxt_switches');
    const t0 = performance.now();
    const rss: number[] = [];
    while (performance.now() - t0 < measureMs) {
      rss.push(procStatusField(pid, 'VmRSS'));
      await sleep(1000);
    }
    const ms = performance.now() - t0;
    const cpu = processCpuMs(pid) - cpu0;
    const wakes = procStatusField(pid, 'voluntary_ctxt_switches') - wake0;
    const threads = procStatusField(pid, 'Threads');
    const anonMb = procStatusField(pid, 'RssAnon') / 1024;
    const fileMb = procStatusField(pid, 'RssFile') / 1024;
    if (proc.exitCode !== null) throw new Error(`the agent exited during the measurement: ${errText.trim().slice(-400)}`);
    const r: AgentIdleResult = {
      rssMb: rss.reduce((a, b) => a + b, 0) / rss.length / 1024,
      cpuPct: (cpu * 100) / ms,
      wakeupsPerMin: (wakes * 60_000) / ms,
      threads,
    };
    note(`agent idle: \`${argv.slice(1).join(' ')}\` (${Object.entries(env).map(([k, v]) => `${k}=${v}`).join(' ')})`);
    note(`agent idle: pid ${pid}, ${Math.round(ms)} ms window after ${settleMs} ms settling; RSS at connect ${rssAtConnect.toFixed(1)} MB, then mean ${r.rssMb.toFixed(1)} MB `
      + `(min ${(Math.min(...rss) / 1024).toFixed(1)}, max ${(Math.max(...rss) / 1024).toFixed(1)}), CPU ${Math.round(cpu)} ms = ${r.cpuPct.toFixed(2)}% of a core, `
      + `main-thread wake-ups ${r.wakeupsPerMin.toFixed(0)}/min, ${threads} threads; at the end RssAnon ${anonMb.toFixed(1)} MB, RssFile ${fileMb.toFixed(1)} MB (mostly the node binary's pages)`);
    return r;
  } finally {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
    const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  }
}
