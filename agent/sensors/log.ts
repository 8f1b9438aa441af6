/**
 * Tails a log file: one event per new line matching the pattern. It keeps the file open and
 * reads only bytes past its offset; it follows rotation by rename (a new inode at the path: the
 * old file is read to its end first) and truncation in place (size below the offset: restart at
 * 0; like `tail -F`, a truncation refilled past the old offset between two polls goes unseen).
 * Each poll examines at most maxLinesPerPoll lines and MAX_BYTES_PER_POLL bytes; the rest waits
 * for the next poll. Lines longer than maxLineBytes are cut. The pattern runs on RE2 (linear time,
 * common/regex.ts) over the first 64 KiB of a line.
 */
import { open, stat, type FileHandle } from 'node:fs/promises';
import { compileUserRegex } from '../../common/regex.js';
import { parseSensorConfig } from '../../common/sensors/index.js';
import type { Reading, Sensor } from './types.js';

const READ_CHUNK = 64 * 1024;
export const MAX_BYTES_PER_POLL = 4 * 1024 * 1024;
const NL = 0x0a;

interface Budget { lines: number; bytes: number }

export const log: Sensor = {
  kind: 'log',
  create(ctx) {
    const c = parseSensorConfig('log', ctx.config);
    const re = compileUserRegex(c.pattern); // linear time; sees the first 64 KiB of a line
    const buf = Buffer.allocUnsafe(READ_CHUNK);
    let fh: FileHandle | undefined;
    let ino = 0;
    let dev = 0;
    let offset = 0;
    let started = false;
    let partial: Buffer[] = [];
    let partialLen = 0;

    const openAt = async (fromEnd: boolean): Promise<boolean> => {
      let h: FileHandle;
      try { h = await open(c.path, 'r'); } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
        throw err;
      }
      try {
        const s = await h.stat();
        ino = s.ino; dev = s.dev;
        offset = fromEnd ? s.size : 0;
      } catch (err) { await h.close().catch(() => {}); throw err; }
      fh = h;
      partial = []; partialLen = 0;
      return true;
    };

    const append = (chunk: Buffer) => {
      const room = c.maxLineBytes - partialLen;
      if (room <= 0 || chunk.length === 0) return;
      const part = Buffer.from(chunk.subarray(0, room)); // copy: buf is reused
      partial.push(part);
      partialLen += part.length;
    };

    const endLine = (out: Reading[]) => {
      let line = Buffer.concat(partial, partialLen).toString('utf8');
      partial = []; partialLen = 0;
      if (line.endsWith('\r')) line = line.slice(0, -1);
      const m = re.exec(line);
      if (m) out.push({ payload: { path: c.path, line, match: m.match, groups: m.groups } });
    };

    /** Reads new bytes of the open file; true when it stopped on the budget (more to read). */
    const drain = async (out: Reading[], budget: Budget): Promise<boolean> => {
      for (;;) {
        if (budget.lines <= 0 || budget.bytes <= 0) return true;
        const { bytesRead } = await fh!.read(buf, 0, Math.min(READ_CHUNK, budget.bytes), offset);
        if (bytesRead === 0) return false;
        const view = buf.subarray(0, bytesRead);
        let i = 0;
        while (i < bytesRead) {
          const nl = view.indexOf(NL, i);
          if (nl === -1) { append(view.subarray(i)); i = bytesRead; break; }
          append(view.subarray(i, nl));
          endLine(out);
          i = nl + 1;
          if (--budget.lines <= 0) break;
        }
        offset += i;
        budget.bytes -= i;
      }
    };

    return {
      async poll() {
        const out: Reading[] = [];
        const budget: Budget = { lines: c.maxLinesPerPoll, bytes: MAX_BYTES_PER_POLL };
        const first = !started;
        started = true;
        if (!fh && !(await openAt(first && c.fromEnd))) return out;
        if ((await fh!.stat()).size < offset) {
          ctx.log.info({ path: c.path }, 'log file truncated; reading from its start');
          offset = 0; partial = []; partialLen = 0;
        }
        if (await drain(out, budget)) return out;
        let now;
        try { now = await stat(c.path); } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') return out; // rotated away, new file not there yet
          throw err;
        }
        if (now.ino !== ino || now.dev !== dev) {
          if (partialLen > 0) endLine(out); // the old file's last line had no newline
          await fh!.close().catch(() => {});
          fh = undefined;
          ctx.log.info({ path: c.path }, 'log file rotated; following the new file');
          if (await openAt(false)) await drain(out, budget);
        }
        return out;
      },
      async close() {
        const h = fh;
        fh = undefined;
        await h?.close().catch(() => {});
      },
    };
  },
};
