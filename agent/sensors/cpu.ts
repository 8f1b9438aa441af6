/** CPU busy percent from os.cpus() tick deltas between polls (no child processes, no /proc). */
import { cpus, loadavg } from 'node:os';
import { parseSensorConfig } from '../../common/sensors/index.js';
import { pct, type Sensor } from './types.js';

/** Below this window the tick counters (10 ms granularity) are too coarse to report. */
const MIN_WINDOW_MS = 100;

function sample(): { busy: number; total: number; atMs: number } {
  let busy = 0;
  let total = 0;
  for (const c of cpus()) {
    const t = c.times;
    const all = t.user + t.nice + t.sys + t.idle + t.irq;
    total += all;
    busy += all - t.idle;
  }
  return { busy, total, atMs: Date.now() };
}

export const cpu: Sensor = {
  kind: 'cpu',
  create(ctx) {
    const c = parseSensorConfig('cpu', ctx.config);
    let prev = sample();
    return {
      async poll() {
        const now = sample();
        if (now.atMs - prev.atMs < MIN_WINDOW_MS || now.total <= prev.total) return [];
        const percent = pct(now.busy - prev.busy, now.total - prev.total);
        prev = now;
        if (c.emit === 'above' && percent < (c.threshold ?? 0)) return [];
        const [load1, load5, load15] = loadavg();
        return [{ payload: { percent, load1, load5, load15, cpus: cpus().length } }];
      },
    };
  },
};
