/** Memory in use: total minus MemAvailable (/proc/meminfo on Linux, os.freemem() elsewhere). */
import { readFile } from 'node:fs/promises';
import { freemem, totalmem } from 'node:os';
import { parseSensorConfig } from '../../common/sensors/index.js';
import { pct, type Sensor } from './types.js';

async function memInfo(): Promise<{ totalBytes: number; availableBytes: number }> {
  if (process.platform === 'linux') {
    try {
      const text = await readFile('/proc/meminfo', 'utf8');
      const kb = (key: string) => {
        const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text);
        return m ? Number(m[1]) * 1024 : undefined;
      };
      const total = kb('MemTotal');
      const available = kb('MemAvailable');
      if (total !== undefined && available !== undefined) return { totalBytes: total, availableBytes: available };
    } catch { /* fall through to os */ }
  }
  return { totalBytes: totalmem(), availableBytes: freemem() };
}

export const memory: Sensor = {
  kind: 'memory',
  create(ctx) {
    const c = parseSensorConfig('memory', ctx.config);
    return {
      async poll() {
        const { totalBytes, availableBytes } = await memInfo();
        const usedBytes = Math.max(0, totalBytes - availableBytes);
        const percent = pct(usedBytes, totalBytes);
        if (c.emit === 'above' && percent < (c.threshold ?? 0)) return [];
        return [{ payload: { percent, usedBytes, totalBytes, availableBytes } }];
      },
    };
  },
};
