/**
 * store_pg_update_p99_ms / store_lowdb_update_p99_ms: the latency of `store.update()` (a
 * read-modify-write of one agent-sized document) with 8 in flight at once, over 1,000 documents,
 * on a throwaway PostgreSQL (test/helpers/postgres.ts: fsync off, so this is the store's and
 * the round trips' cost, not the disk's) and on lowdb (coalesced writes, 10 ms window, fsync on).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore, type Doc, type Store } from '../hub/store/index.js';
import { migrateDatabase } from '../hub/store/postgres/index.js';
import { postgresMissing, startPostgres } from '../test/helpers/postgres.js';
import { note, percentile, pool } from './lib.js';

const DOCS = 1_000;
const UPDATES = 2_000;
const CONCURRENCY = 8;

interface AgentDoc extends Doc { n: number; labels: Record<string, string>; pad: string }

async function updateP99(store: Store): Promise<number> {
  for (let i = 0; i < DOCS; i += 100) {
    await Promise.all(Array.from({ length: 100 }, (_, j) => store.put<AgentDoc>('agents', { id: `agent-${i + j}`, n: 0, labels: { env: 'prod', role: 'web' }, pad: 'x'.repeat(600) })));
  }
  const ms: number[] = [];
  await pool(UPDATES, CONCURRENCY, async (i) => {
    const id = `agent-${(i * 7919) % DOCS}`;
    const t0 = performance.now();
    await store.update<AgentDoc>('agents', id, (cur) => ({ ...cur!, n: cur!.n + 1 }));
    ms.push(performance.now() - t0);
  });
  return percentile(ms, 99);
}

export async function benchStore(): Promise<{ pgP99: number; lowdbP99: number }> {
  const missing = postgresMissing();
  if (missing) throw new Error(missing);
  const dir = await mkdtemp(join(tmpdir(), 'trellis-bench-store-'));
  const server = await startPostgres();
  try {
    const url = await server.createDatabase('bench');
    await migrateDatabase({ url });
    const pg = await openStore({ kind: 'postgres', url });
    let pgP99: number;
    try { pgP99 = await updateP99(pg); } finally { await pg.close(); }
    const low = await openStore({ kind: 'lowdb', path: join(dir, 'state.json') });
    let lowdbP99: number;
    try { lowdbP99 = await updateP99(low); } finally { await low.close(); }
    note(`store: ${UPDATES} updates, ${CONCURRENCY} in flight, ${DOCS} documents: PostgreSQL p99 ${pgP99.toFixed(1)} ms, lowdb p99 ${lowdbP99.toFixed(1)} ms`);
    return { pgP99, lowdbP99 };
  } finally {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  }
}
