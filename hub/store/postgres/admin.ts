/**
 * One-off operations on the database outside a running store: `trellis hub migrate`, the checks
 * of `hub init --store`, and `hub migrate --from-data` (copying a lowdb hub's state in).
 */
import pg from 'pg';
import { TrellisError } from '../../../common/errors.js';
import { COLLECTIONS, type Doc } from '../types.js';
import { poolConfig, storeError, type PostgresConnectOptions } from './connection.js';
import { countDocuments, migrate, type MigrateResult } from './migrations.js';
import { NOTIFY_CHANNEL, dbId } from './store.js';

/** Runs `fn` on one connection (errors as Trellis errors, the password never in them). */
export async function withDatabase<T>(o: PostgresConnectOptions, fn: (c: pg.Client, where: string) => Promise<T>): Promise<T> {
  const config = poolConfig(o);
  const client = new pg.Client(config);
  client.on('error', () => undefined);
  try {
    await client.connect();
    return await fn(client, config.where);
  } catch (e) {
    throw storeError(e, config.where);
  } finally {
    await client.end().catch(() => undefined);
  }
}

export function migrateDatabase(o: PostgresConnectOptions): Promise<MigrateResult & { where: string }> {
  return withDatabase(o, async (c, where) => ({ ...(await migrate(c)), where }));
}

/** Migrates, then refuses a database that already holds state (`hub init` starts a new hub). */
export function prepareEmptyDatabase(o: PostgresConnectOptions): Promise<void> {
  return withDatabase(o, async (c, where) => {
    await migrate(c);
    const n = await countDocuments(c);
    if (n > 0) {
      throw new TrellisError('TRELLIS_E_ALREADY_EXISTS', `the database ${where} already holds a hub's state (${n} documents): give \`hub init --store\` an empty database (\`createdb\`); nothing was changed there`);
    }
  });
}

export interface CopyResult {
  where: string;
  /** Documents copied, per collection. */
  counts: Record<string, number>;
  /** Documents that were in the database before and were replaced (with --force). */
  replaced: number;
}

/**
 * Copies every document (in listing order) into the database in one transaction; refuses a
 * non-empty database unless `force`, which empties it first. Running hubs on the database reload.
 */
export function copyDocuments(o: PostgresConnectOptions, docs: Map<string, Doc[]>, force: boolean): Promise<CopyResult> {
  return withDatabase(o, async (c, where) => {
    await migrate(c);
    await c.query('BEGIN');
    try {
      const r = await copyDocumentsIn(c, where, docs, force);
      await c.query('COMMIT');
      return r;
    } catch (e) {
      await c.query('ROLLBACK').catch(() => undefined);
      throw e;
    }
  });
}

/**
 * The copy of {@link copyDocuments} inside a transaction the caller opened on `c` (and commits:
 * `snapshots restore --store` loads documents, history and audit in one).
 */
export async function copyDocumentsIn(c: pg.ClientBase, where: string, docs: Map<string, Doc[]>, force: boolean): Promise<CopyResult> {
  const counts: Record<string, number> = {};
  // Nobody writes while the copy runs (the documents' locks are per document: take the table's).
  await c.query('LOCK TABLE trellis_docs IN EXCLUSIVE MODE');
  const before = await countDocuments(c);
  if (before > 0 && !force) {
    throw new TrellisError('TRELLIS_E_ALREADY_EXISTS', `the database ${where} already holds ${before} documents: pass --force to replace them with the copy (nothing was changed)`);
  }
  await c.query('DELETE FROM trellis_docs');
  for (const col of COLLECTIONS) {
    const list = docs.get(col) ?? [];
    counts[col] = list.length;
    for (let i = 0; i < list.length; i += 500) {
      const chunk = list.slice(i, i + 500);
      await c.query(
        `INSERT INTO trellis_docs (collection, id, doc, version, seq)
         SELECT $1, d.id, d.doc::json, nextval('trellis_doc_version'), nextval('trellis_doc_seq')
           FROM (SELECT * FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS u(id, doc, n) ORDER BY u.n) AS d`,
        [col, chunk.map((d) => dbId(d.id)), chunk.map((d) => JSON.stringify(d))],
      );
    }
    await c.query('SELECT pg_notify($1, $2)', [NOTIFY_CHANNEL, JSON.stringify({ c: col })]);
  }
  return { where, counts, replaced: before };
}
