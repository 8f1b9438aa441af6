/**
 * One file, polled: emits created / modified / deleted. A change is a different mtime, size or
 * inode (a `touch` counts); sha256 is hashed only when one of those changed, never on an idle poll.
 * Only regular files are hashed (a directory or device gets sha256 '').
 * The state found at start is the baseline and emits nothing.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { parseSensorConfig } from '../../common/sensors/index.js';
import type { Sensor } from './types.js';

interface Seen { exists: boolean; size: number; mtimeMs: number; ino: number; regular: boolean }

async function look(path: string): Promise<Seen> {
  try {
    const s = await stat(path);
    return { exists: true, size: s.size, mtimeMs: s.mtimeMs, ino: s.ino, regular: s.isFile() };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { exists: false, size: 0, mtimeMs: 0, ino: 0, regular: false };
    throw err;
  }
}

async function sha256(path: string, signal: AbortSignal): Promise<string> {
  const h = createHash('sha256');
  await pipeline(createReadStream(path), h, { signal });
  return h.digest('hex');
}

export const file: Sensor = {
  kind: 'file',
  create(ctx) {
    const c = parseSensorConfig('file', ctx.config);
    let last: Seen | undefined;
    return {
      async poll() {
        const now = await look(c.path);
        const before = last;
        if (!before) { last = now; return []; }
        if (now.exists === before.exists && (!now.exists || (now.size === before.size && now.mtimeMs === before.mtimeMs && now.ino === before.ino))) return [];
        const change = !now.exists ? 'deleted' : before.exists ? 'modified' : 'created';
        let hash = '';
        if (now.regular && now.size <= c.maxHashBytes) {
          try { hash = await sha256(c.path, ctx.signal); } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err; // deleted while hashing: next poll reports it
          }
        }
        last = now; // only now: a failed hash is retried, not lost
        return [{ payload: { path: c.path, exists: now.exists, change, size: now.size, mtimeMs: now.mtimeMs, sha256: hash } }];
      },
    };
  },
};
