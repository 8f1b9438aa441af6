/** Filesystem usage of a path via statfs; percent computed as df does (used / (used + avail)). */
import { statfs } from 'node:fs/promises';
import { parseSensorConfig } from '../../common/sensors/index.js';
import { pct, type Sensor } from './types.js';

export const disk: Sensor = {
  kind: 'disk',
  create(ctx) {
    const c = parseSensorConfig('disk', ctx.config);
    return {
      async poll() {
        const s = await statfs(c.path);
        const totalBytes = s.blocks * s.bsize;
        const usedBytes = (s.blocks - s.bfree) * s.bsize;
        const freeBytes = s.bavail * s.bsize;
        const percent = pct(usedBytes, usedBytes + freeBytes);
        if (c.emit === 'above' && percent < (c.threshold ?? 0)) return [];
        return [{ payload: { path: c.path, percent, usedBytes, totalBytes, freeBytes } }];
      },
    };
  },
};
