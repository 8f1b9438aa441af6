/** Runs `node dist/bench/soak/main.js ARGS` (what `npm run soak -- ARGS` runs) and parses its figures. */
import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const MAIN = fileURLToPath(new URL('../../bench/soak/main.js', import.meta.url));
export const CHECKS = ['soak_events_lost', 'soak_events_duplicated', 'soak_executions_duplicated', 'soak_executions_lost', 'soak_state_files_torn', 'soak_acked_writes_lost'];

export function runSoak(args: string[]): Promise<{ code: number | null; out: string; err: string; figures: Map<string, number> }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
    p.stderr.setEncoding('utf8').on('data', (d: string) => { err += d; });
    p.once('exit', (code) => {
      const figures = new Map<string, number>();
      for (const m of out.matchAll(/^([a-z_0-9]+): (-?[0-9.]+) \S+$/gm)) figures.set(m[1]!, Number(m[2]));
      // A failed run keeps its temporary directory for a post-mortem; a test does not need it.
      const kept = /\[soak\] kept (\S+)/.exec(err)?.[1];
      if (kept && !args.includes('--keep') && /trellis-soak-/.test(kept)) rmSync(kept, { recursive: true, force: true });
      resolve({ code, out, err, figures });
    });
  });
}
