/**
 * cli_start_ms: how long `trellis version` takes from spawn to exit, median of 10 runs (after
 * one warm-up for the file cache), with an empty TRELLIS_HOME and no TRELLIS_HUB: no hub call,
 * so it measures what the CLI loads before it can answer.
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';

export async function benchCliStart(o: { root: string; tmpRoot: string; runs?: number }): Promise<{ medianMs: number; samples: number[] }> {
  const home = await mkdtemp(join(o.tmpRoot, 'cli-home-'));
  const env: NodeJS.ProcessEnv = { ...process.env, TRELLIS_HOME: home };
  for (const k of ['TRELLIS_HUB', 'TRELLIS_CA', 'TRELLIS_CA_FINGERPRINT', 'TRELLIS_API_KEY', 'TRELLIS_CONTEXT']) delete env[k];
  const bin = join(o.root, 'bin', 'trellis.js');
  const once = (): number => {
    const t = performance.now();
    const r = spawnSync(process.execPath, [bin, 'version'], { env, encoding: 'utf8' });
    const ms = performance.now() - t;
    if (r.status !== 0 || !/^trellis \S+/.test(r.stdout)) throw new Error(`trellis version failed (${r.status}): ${r.stderr.slice(0, 300)}`);
    return ms;
  };
  try {
    once();
    const samples = Array.from({ length: o.runs ?? 10 }, once);
    const s = [...samples].sort((a, b) => a - b);
    const mid = s.length >> 1;
    return { medianMs: s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2, samples };
  } finally {
    await rm(home, { recursive: true, force: true });
  }
}
