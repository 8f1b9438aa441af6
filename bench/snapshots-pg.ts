/**
 * `npm run bench:snapshots-pg [-- N]`: the execution history of a hub on PostgreSQL, N executions
 * (default 100,000) with one 480-byte output chunk each, written out as snapshot segments
 * (hub/executions/export-pg.ts: one REPEATABLE READ transaction, paged) and loaded into a new
 * database as `snapshots restore --store` does (hub/executions/import-pg.ts). Prints
 *   pg_history_export_ms, pg_history_export_rss_growth_mb, pg_history_import_ms,
 *   pg_history_import_rss_growth_mb
 * on a throwaway PostgreSQL (test/helpers/postgres.ts). RSS sampled every 20 ms in this process.
 */
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startPostgres } from '../test/helpers/postgres.js';
import { PostgresStore, migrateDatabase, withDatabase } from '../hub/store/postgres/index.js';
import { exportHistory } from '../hub/executions/export-pg.js';
import { importHistory } from '../hub/executions/import-pg.js';

const N = Number(process.argv[2] ?? 100_000);

async function measured<R>(fn: () => Promise<R>): Promise<{ r: R; ms: number; growthMb: number }> {
  const base = process.memoryUsage().rss;
  let peak = base;
  const iv = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss); }, 20);
  const t0 = performance.now();
  try {
    const r = await fn();
    return { r, ms: Math.round(performance.now() - t0), growthMb: Math.round((Math.max(peak, process.memoryUsage().rss) - base) / 2 ** 20) };
  } finally {
    clearInterval(iv);
  }
}

const server = await startPostgres();
const dir = await mkdtemp(join(tmpdir(), 'trellis-bench-snappg-'));
try {
  const url = await server.createDatabase('src');
  await migrateDatabase({ url });
  await withDatabase({ url }, async (c) => {
    await c.query(`INSERT INTO trellis_executions (id, tenant, agent, action, status, rule, requested_ms, record, owner_hub)
      SELECT lpad(g::text, 26, '0'), 'default', 'agent-1', 'core.command', 'succeeded', '', 1700000000000 + g,
        json_build_object('id', lpad(g::text, 26, '0'), 'tenant', 'default', 'agentId', 'agent-1', 'action', 'core.command', 'status', 'succeeded',
          'requestedMs', 1700000000000 + g, 'parameters', json_build_object('argv', json_build_array('echo', repeat('x', 200)))), 'bench'
      FROM generate_series(1, $1::int) g`, [N]);
    await c.query(`INSERT INTO trellis_output (id, off, stream, data)
      SELECT lpad(g::text, 26, '0'), 0, 0, convert_to(repeat('output line ', 40), 'UTF8') FROM generate_series(1, $1::int) g`, [N]);
  });
  const store = await PostgresStore.open({ url });
  const ex = await measured(() => exportHistory(store, dir));
  await store.close();
  let bytes = 0;
  for (const f of await readdir(dir)) bytes += (await stat(join(dir, f))).size;
  const target = await server.createDatabase('dst');
  await migrateDatabase({ url: target });
  const im = await measured(() => withDatabase({ url: target }, (c) => importHistory(c, dir)));
  console.log(`# ${ex.r.executions} executions, ${ex.r.outputChunks} output chunks, ${ex.r.segments.length} segment files, ${(bytes / 2 ** 20).toFixed(1)} MiB; imported ${im.r.executions} / ${im.r.outputChunks}`);
  console.log(`pg_history_export_ms: ${ex.ms} ms`);
  console.log(`pg_history_export_rss_growth_mb: ${ex.growthMb} MB`);
  console.log(`pg_history_import_ms: ${im.ms} ms`);
  console.log(`pg_history_import_rss_growth_mb: ${im.growthMb} MB`);
} finally {
  await rm(dir, { recursive: true, force: true });
  await server.close();
}
