/**
 * How many events wait in an agent's outbox, read without opening it (the agent may be running:
 * nothing is locked, truncated or written). Events after the saved cursor; the cursor is saved
 * lazily, so this may count a few already acknowledged ones.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { listSegments } from '../outbox/files.js';
import { checkFrame } from '../outbox/record.js';

export function pendingEvents(dir: string): number {
  if (!existsSync(dir)) return 0;
  let cursor = { segment: 0, offset: 0 };
  try {
    const c = JSON.parse(readFileSync(join(dir, 'cursor.json'), 'utf8')) as { segment?: unknown; offset?: unknown };
    if (Number.isSafeInteger(c.segment) && Number.isSafeInteger(c.offset)) cursor = { segment: c.segment as number, offset: c.offset as number };
  } catch { /* no cursor yet: everything is pending */ }
  let n = 0;
  for (const seg of listSegments(dir)) {
    if (seg.id < cursor.segment) continue;
    let buf: Buffer;
    try { buf = readFileSync(seg.path); } catch { continue; } // deleted meanwhile: acknowledged
    for (let off = 0; ;) {
      const frame = checkFrame(buf, off, buf.length);
      if (!frame) break; // the end, or a frame being written right now
      for (const r of frame.records) if (seg.id > cursor.segment || r >= cursor.offset) n++;
      off += frame.length;
    }
  }
  return n;
}
