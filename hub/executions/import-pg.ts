/**
 * `trellis hub migrate --from-data DIR`: the execution history of a lowdb hub (DATA/executions,
 * hub/executions/history.ts) copied into PostgreSQL's trellis_executions / trellis_output, so a
 * hub moved to PostgreSQL keeps its history. Rows are inserted in batches and never replace what
 * the database holds (same id, or an idempotency key already taken: kept as it is), so running
 * it twice copies nothing twice. Executions not finished keep their status with no owner: the hub
 * their agent attaches to takes them over (hub/executions/cluster.ts).
 */
import { createReadStream, existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import type pg from 'pg';
import type { ExecutionRecord } from './types.js';
import { OUT_PREFIX } from './history.js';

const BATCH = 500;
const STATE_RE = /^\d{12}\.jsonl$/;
const OUT_RE = /^\d{12}\.out\.jsonl$/;

export interface ImportResult { executions: number; outputChunks: number }

/** The lines of a file, read as a stream (a segment may be large: never held whole). */
async function* linesOf(path: string): AsyncGenerator<string> {
  const rl = createInterface({ input: createReadStream(path, { encoding: 'utf8' }), crlfDelay: Infinity });
  try {
    for await (const line of rl) if (line) yield line;
  } finally {
    rl.close();
  }
}

type StateLine = { k?: string; r?: ExecutionRecord; dk?: string; to?: number };

/** Every well-formed state line of the segments, in order, numbered. */
async function* stateLines(dir: string, names: string[]): AsyncGenerator<{ n: number; l: StateLine & { r: ExecutionRecord } }> {
  let n = 0;
  for (const name of names) {
    for await (const line of linesOf(join(dir, name))) {
      if (line.startsWith(OUT_PREFIX)) continue; // output kept inline (read by the output pass)
      let l: StateLine;
      try { l = JSON.parse(line) as StateLine; } catch { continue; } // a torn line from a crash
      if (l.k !== 's' || !l.r || typeof l.r.id !== 'string') continue;
      yield { n: n++, l: l as StateLine & { r: ExecutionRecord } };
    }
  }
}

/**
 * Copies the history in `dir` into the database on `client`; counts what was inserted. Memory is
 * bounded by the number of executions (an id and a line number each), not their size: a first
 * pass finds the last state line of every id (the one that wins), a second inserts those lines in
 * batches; output chunks are streamed in batches.
 */
export async function importHistory(client: pg.ClientBase, dir: string): Promise<ImportResult> {
  if (!existsSync(dir)) return { executions: 0, outputChunks: 0 };
  const names = (await readdir(dir)).sort();
  const stateNames = names.filter((x) => STATE_RE.test(x));
  // Pass 1: the winning line of each id, with the idempotency key and timeout an earlier line gave.
  const last = new Map<string, { n: number; dk?: string; to?: number }>();
  for await (const { n, l } of stateLines(dir, stateNames)) {
    const prev = last.get(l.r.id);
    last.set(l.r.id, { n, dk: l.dk ?? prev?.dk, to: l.to ?? prev?.to });
  }
  let executions = 0;
  let batch: { r: ExecutionRecord; dk?: string; to?: number }[] = [];
  const insert = async () => {
    if (!batch.length) return;
    const v = batch;
    batch = [];
    const r = await client.query(
      `INSERT INTO trellis_executions (id, tenant, agent, action, status, rule, requested_ms, record, dedup_key, timeout_ms)
       SELECT u.id, u.tenant, u.agent, u.action, u.status, u.rule, u.rq, u.rec::json, u.dk, u.tmo
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::text[], $9::text[], $10::bigint[])
         AS u(id, tenant, agent, action, status, rule, rq, rec, dk, tmo)
       ON CONFLICT DO NOTHING`,
      [v.map((x) => x.r.id), v.map((x) => x.r.tenant), v.map((x) => x.r.agentId), v.map((x) => x.r.action), v.map((x) => x.r.status), v.map((x) => x.r.rule ?? ''),
        v.map((x) => x.r.requestedMs), v.map((x) => JSON.stringify(x.r)), v.map((x) => x.dk ?? null), v.map((x) => x.to ?? 0)],
    );
    executions += r.rowCount ?? 0;
  };
  // Pass 2: the winning lines only.
  for await (const { n, l } of stateLines(dir, stateNames)) {
    const w = last.get(l.r.id);
    if (!w || w.n !== n) continue;
    batch.push({ r: l.r, dk: w.dk, to: w.to });
    if (batch.length >= BATCH) await insert();
  }
  await insert();
  let outputChunks = 0;
  let chunk: { id: string; o: number; s: number; d: Buffer }[] = [];
  const write = async () => {
    if (!chunk.length) return;
    const r = await client.query(
      `INSERT INTO trellis_output (id, off, stream, data) SELECT * FROM unnest($1::text[], $2::bigint[], $3::smallint[], $4::bytea[]) ON CONFLICT DO NOTHING`,
      [chunk.map((x) => x.id), chunk.map((x) => x.o), chunk.map((x) => x.s), chunk.map((x) => x.d)]);
    outputChunks += r.rowCount ?? 0;
    chunk = [];
  };
  // Output lines: in the output files, and the first bytes of each execution's in the state files.
  for (const n of names.filter((x) => OUT_RE.test(x) || STATE_RE.test(x))) {
    for await (const line of linesOf(join(dir, n))) {
      if (!line.startsWith(OUT_PREFIX)) continue; // a state line: read by the passes above
      try {
        const l = JSON.parse(line) as { k?: string; id?: string; s?: number; o?: number; d?: string };
        if (l.k !== 'o' || typeof l.id !== 'string' || !last.has(l.id) || typeof l.d !== 'string') continue;
        chunk.push({ id: l.id, o: Number(l.o) || 0, s: l.s === 1 ? 1 : 0, d: Buffer.from(l.d, 'base64') });
      } catch { continue; } // a torn line
      if (chunk.length >= BATCH) await write();
    }
  }
  await write();
  return { executions, outputChunks };
}
