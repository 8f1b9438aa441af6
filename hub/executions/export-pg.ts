/**
 * The execution history of a PostgreSQL hub (trellis_executions / trellis_output) written out as
 * file-history segments (hub/executions/history.ts's line format), for a snapshot: a restore
 * brings them back as files (`--data`) or into another database (`--store`,
 * hub/executions/import-pg.ts), and a lowdb hub reads them as its own history.
 *
 * Consistency: everything is read in ONE read-only REPEATABLE READ transaction, so the segments
 * hold the tables as they were at its first read (an execution's state and its output agree).
 * Memory: rows are read in pages by key (executions by id, output by (id, off)), and written as
 * they come; nothing is held beyond a page. Each segment holds up to `perSegment` executions (in
 * id, i.e. time, order) and, in its `.out.jsonl`, their output.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { ExecDb } from './history-pg.js';

export interface ExportHistoryResult { segments: string[]; executions: number; outputChunks: number }

const PAGE = 1000;
const OUT_PAGE = 500;
const DEFAULT_PER_SEGMENT = 10_000;
const seqName = (seq: number, out: boolean) => `${String(seq).padStart(12, '0')}${out ? '.out' : ''}.jsonl`;

async function create(dir: string, name: string): Promise<FileHandle> {
  const fh = await open(join(dir, name), 'wx', 0o600);
  await fh.chmod(0o600);
  return fh;
}

async function writeAll(fh: FileHandle, text: string): Promise<void> {
  if (text) await fh.write(text);
}

/** Writes the whole history into `dir` (which must exist) as segments 000000000001… */
export async function exportHistory(db: ExecDb, dir: string, o: { perSegment?: number } = {}): Promise<ExportHistoryResult> {
  const perSegment = Math.max(1, o.perSegment ?? DEFAULT_PER_SEGMENT);
  return db.transaction(async (c) => {
    await c.query('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY');
    const res: ExportHistoryResult = { segments: [], executions: 0, outputChunks: 0 };
    let after = '';
    let seq = 0;
    for (;;) {
      // One segment: up to perSegment executions, then their output.
      let first: string | undefined, last: string | undefined, inSegment = 0;
      let fh: FileHandle | undefined;
      try {
        while (inSegment < perSegment) {
          const r = await c.query<{ id: string; record: string; dedup_key: string | null; timeout_ms: string }>(
            'SELECT id, record::text AS record, dedup_key, timeout_ms FROM trellis_executions WHERE id > $1 ORDER BY id LIMIT $2',
            [after, Math.min(PAGE, perSegment - inSegment)]);
          if (r.rows.length === 0) break;
          if (!fh) { seq++; fh = await create(dir, seqName(seq, false)); res.segments.push(seqName(seq, false)); }
          // The record is JSON text as written: spliced in as it is (never parsed and re-encoded).
          await writeAll(fh, r.rows.map((x) => {
            const to = Number(x.timeout_ms);
            return `{"k":"s","r":${x.record}${x.dedup_key !== null ? `,"dk":${JSON.stringify(x.dedup_key)}` : ''}${to > 0 ? `,"to":${to}` : ''}}\n`;
          }).join(''));
          first ??= r.rows[0]!.id;
          last = r.rows.at(-1)!.id;
          after = last;
          inSegment += r.rows.length;
          res.executions += r.rows.length;
        }
        if (fh) await fh.sync();
      } finally {
        await fh?.close();
      }
      if (!fh || first === undefined || last === undefined) break;
      const out = await create(dir, seqName(seq, true));
      res.segments.push(seqName(seq, true));
      try {
        let id = first, off = -1;
        for (;;) {
          const r = await c.query<{ id: string; off: string; stream: number; data: Buffer }>(
            `SELECT id, off, stream, data FROM trellis_output
             WHERE (id, off) > ($1, $2) AND id <= $3 ORDER BY id, off LIMIT $4`, [id, off, last, OUT_PAGE]);
          if (r.rows.length === 0) break;
          await writeAll(out, r.rows.map((x) => JSON.stringify({ k: 'o', id: x.id, s: x.stream === 1 ? 1 : 0, o: Number(x.off), d: x.data.toString('base64') }) + '\n').join(''));
          res.outputChunks += r.rows.length;
          id = r.rows.at(-1)!.id;
          off = Number(r.rows.at(-1)!.off);
        }
        await out.sync();
      } finally {
        await out.close();
      }
      if (inSegment < perSegment) break;
    }
    return res;
  });
}
