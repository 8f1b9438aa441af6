/**
 * store_pg_propagation_p99_ms: a put on one PostgreSQL store until a second store on the same
 * database holds it in its cache (what another hub waits for), 200 puts one after another.
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

/** A put on one store until another store on the same database holds it (LISTEN/NOTIFY, then a fetch). */
async function propagationP99(a: Store, b: Store): Promise<number> {
  const ms: number[] = [];
  for (let i = 0; i < 200; i++) {
    const id = `prop-${i}`;
    const t0 = performance.now();
    await a.put('kv', { id, i });
    while (b.peek('kv', id) === undefined) {
      if (performance.now() - t0 > 10_000) throw new Error(`${id} did not reach the second store within 10 s`);
      await new Promise((r) => setTimeout(r, 1));
    }
    ms.push(performance.now() - t0);
  }
  return percentile(ms, 99);
}

export async function benchStore(): Promise<{ pgP99: number; lowdbP99: number; propagationP99: number }> {
  const missing = postgresMissing();
  if (missing) throw new Error(missing);
  const dir = await mkdtemp(join(tmpdir(), 'trellis-bench-store-'));
  const server = await startPostgres();
  try {
    const url = await server.createDatabase('bench');
    await migrateDatabase({ url });
    const pg = await openStore({ kind: 'postgres', url });
    const other = await openStore({ kind: 'postgres', url });
    let pgP99: number;
    let propagation: number;
    try {
      pgP99 = await updateP99(pg);
      propagation = await propagationP99(pg, other);
    } finally {
      await pg.close();
      await other.close();
    }
    const low = await openStore({ kind: 'lowdb', path: join(dir, 'state.json') });
    let lowdbP99: number;
    try { lowdbP99 = await updateP99(low); } finally { await low.close(); }
    note(`store: ${UPDATES} updates, ${CONCURRENCY} in flight, ${DOCS} documents: PostgreSQL p99 ${pgP99.toFixed(1)} ms, lowdb p99 ${lowdbP99.toFixed(1)} ms; put → other store p99 ${propagation.toFixed(1)} ms`);
    return { pgP99, lowdbP99, propagationP99: propagation };
  } finally {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  }
}
