/**
 * `trellis snapshots restore FILE --data DIR --store postgres://…`: a snapshot (of a hub on
 * PostgreSQL or on lowdb) restored into a new data directory that keeps the key files and
 * hub.json, and an EMPTY database that receives the documents, the execution history and the
 * audit log.
 *
 * Order, so that nothing is written to either unless the whole snapshot authenticates:
 * 1. the database is only read (are the tables there, are they empty, does a hub run on it?): a
 *    non-empty one is refused before the file is decrypted, unless `force`; one a hub runs on
 *    (a heartbeat in the hubs registry within the last minute), force or not;
 * 2. the snapshot is restored into a temp directory as for `--data` alone (./restore.ts): a wrong
 *    passphrase or a damaged file stops here, the database untouched;
 * 3. then, in ONE transaction, the database is migrated and loaded with the same functions as
 *    `hub migrate --from-data` (copyDocumentsIn, importHistory, importAuditSegments); with
 *    `force` what it held is deleted first, in the same transaction;
 * 4. the temp directory drops state.json and the history and audit files (they are in the
 *    database now), hub.json is pointed at the database (its password, if any, in
 *    DIR/store-password, 0600, never in hub.json), and the directory is moved into place.
 * A crash before the commit leaves the database as it was; between the commit and the move
 * (a rename), the database is loaded and DIR missing: run the restore again with --force.
 */
import { existsSync, readFileSync } from 'node:fs';
import { rm, unlink } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type pg from 'pg';
import { TrellisError } from '../../common/errors.js';
import { atomicWriteFile } from '../../common/fsutil.js';
import { validateConfig } from '../config.js';
import { hubPaths } from '../paths.js';
import { splitStorePassword } from '../init.js';
import { readStoreFile } from '../store/index.js';
import { copyDocumentsIn, migrate, withDatabase, type CopyResult } from '../store/postgres/index.js';
import { importHistory, type ImportResult } from '../executions/import-pg.js';
import { importAuditSegments } from '../audit/postgres.js';
import { restoreSnapshot, type RestoreResult } from './restore.js';

export interface RestoreToDatabaseOptions {
  file: string;
  /** The new hub data directory (key files, hub.json). */
  dataDir: string;
  passphrase: string;
  /** postgres://USER@HOST[:PORT]/DB; a password in it goes to DATA/store-password. */
  storeUrl: string;
  /** The password when not in the URL (TRELLIS_STORE_PASSWORD). */
  storePassword?: string;
  /** Replace what the database (and a non-empty data directory) holds. */
  force?: boolean;
  /** See RestoreOptions.heldBy (tests). */
  heldBy?: (dataDir: string) => string | undefined;
}

export interface RestoreToDatabaseResult extends RestoreResult {
  database: string;
  copied: CopyResult;
  history: ImportResult;
  auditRecords: number;
}

/** Rows in the tables a restore fills; absent tables (a new database) count as empty. */
async function contentOf(c: pg.ClientBase): Promise<{ documents: number; executions: number; audit: number }> {
  const count = async (table: string) => {
    const there = await c.query<{ t: string | null }>('SELECT to_regclass($1)::text AS t', [table]);
    if (!there.rows[0]?.t) return 0;
    const r = await c.query<{ n: string }>(`SELECT count(*) AS n FROM ${table}`);
    return Number(r.rows[0]!.n);
  };
  return { documents: await count('trellis_docs'), executions: await count('trellis_executions'), audit: await count('trellis_audit') };
}

/** A hub that recorded a heartbeat within this long is taken as running (registry default: every 5 s, stale after 20 s). */
const LIVE_WITHIN_MS = 60_000;

/** Names of hubs whose heartbeat in the hubs registry is recent: running on this database. */
async function liveHubs(c: pg.ClientBase): Promise<string[]> {
  const there = await c.query<{ t: string | null }>("SELECT to_regclass('trellis_docs')::text AS t");
  if (!there.rows[0]?.t) return [];
  const r = await c.query<{ doc: string }>("SELECT doc::text AS doc FROM trellis_docs WHERE collection = 'hubs'");
  const now = Date.now();
  return r.rows.map((x) => JSON.parse(x.doc) as { name?: string; id?: string; lastHeartbeatMs?: number })
    .filter((h) => typeof h.lastHeartbeatMs === 'number' && now - h.lastHeartbeatMs < LIVE_WITHIN_MS)
    .map((h) => String(h.name ?? h.id ?? '?').slice(0, 128));
}

function describe(n: { documents: number; executions: number; audit: number }): string {
  return `${n.documents} documents, ${n.executions} executions, ${n.audit} audit records`;
}

export async function restoreSnapshotToDatabase(o: RestoreToDatabaseOptions): Promise<RestoreToDatabaseResult> {
  const dataDir = resolve(o.dataDir);
  const pgStore = splitStorePassword(o.storeUrl, dataDir, o.storePassword);
  const target = { url: pgStore.url, password: pgStore.password };
  // 1. Read only: refuse a database that holds anything, before the snapshot is even opened.
  const { before, where, live } = await withDatabase(target, async (c, w) => ({ before: await contentOf(c), where: w, live: await liveHubs(c) }));
  // Replacing the content under running hubs would leave them with state that is not theirs: refused, --force or not.
  if (live.length) {
    throw new TrellisError('TRELLIS_E_IN_USE', `hubs are running on the database ${where} (${live.slice(0, 5).join(', ')}: a heartbeat in the last ${LIVE_WITHIN_MS / 1000}s): stop them before restoring into it; nothing was changed`);
  }
  const full = before.documents + before.executions + before.audit > 0;
  if (full && !o.force) {
    throw new TrellisError('TRELLIS_E_ALREADY_EXISTS', `the database ${where} is not empty (${describe(before)}): restore into a new database (\`createdb\`), or pass --force to replace its content; nothing was changed`);
  }
  let loaded: Omit<RestoreToDatabaseResult, keyof RestoreResult> | undefined;
  const r = await restoreSnapshot({
    file: o.file, dataDir, passphrase: o.passphrase, force: o.force, heldBy: o.heldBy,
    beforeMove: async (tmp) => {
      const paths = hubPaths(tmp);
      // 3. Everything the snapshot authenticated goes into the database in one transaction.
      const docs = await readStoreFile(paths.store);
      loaded = await withDatabase(target, async (c, database) => {
        await migrate(c);
        await c.query('BEGIN');
        try {
          const running = await liveHubs(c);
          if (running.length) throw new TrellisError('TRELLIS_E_IN_USE', `hubs started on the database ${database} while the snapshot was read (${running.slice(0, 5).join(', ')}): stop them; nothing was changed`);
          const now = await contentOf(c);
          if (now.documents + now.executions + now.audit > 0) {
            if (!o.force) throw new TrellisError('TRELLIS_E_ALREADY_EXISTS', `the database ${database} was filled while the snapshot was read (${describe(now)}): nothing was changed; is a hub running on it?`);
            // Replaced: the history and audit of what was there go with its documents.
            await c.query('LOCK TABLE trellis_executions, trellis_output, trellis_audit IN EXCLUSIVE MODE');
            await c.query('DELETE FROM trellis_output');
            await c.query('DELETE FROM trellis_executions');
            await c.query('DELETE FROM trellis_audit');
          }
          const copied = await copyDocumentsIn(c, database, docs, !!o.force);
          const history = await importHistory(c, paths.executions);
          const auditRecords = await importAuditSegments({ query: (sql, params) => c.query(sql, params) }, paths.audit, 'restored');
          // 4. The directory, before the commit: a failure here still rolls the database back.
          await pointAtDatabase(tmp, pgStore);
          await c.query('COMMIT');
          return { database, copied, history, auditRecords };
        } catch (e) {
          await c.query('ROLLBACK').catch(() => undefined);
          throw e;
        }
      });
    },
  });
  return { ...r, ...loaded! };
}

/**
 * In the temp directory that becomes the data directory: hub.json's store names the database (other store
 * settings kept, such as TLS), its password in DATA/store-password; state.json and the history and
 * audit files, now in the database, are removed.
 */
async function pointAtDatabase(tmp: string, pg: { url: string; password?: string; passwordFile: string }): Promise<void> {
  const paths = hubPaths(tmp);
  const file = JSON.parse(readFileSync(paths.config, 'utf8')) as Record<string, unknown>;
  const prev = (file.store ?? {}) as Record<string, unknown>;
  const { passwordFile: _old, url: _oldUrl, kind: _kind, path: _path, ...rest } = prev;
  file.store = { ...(prev.kind === 'postgres' ? rest : {}), kind: 'postgres', url: pg.url, ...(pg.password !== undefined ? { passwordFile: pg.passwordFile } : {}) };
  validateConfig(file, paths.config);
  if (pg.password !== undefined) await atomicWriteFile(join(tmp, 'store-password'), pg.password, { mode: 0o600 });
  await atomicWriteFile(paths.config, JSON.stringify(file, null, 2) + '\n', { mode: 0o600 });
  if (existsSync(paths.store)) await unlink(paths.store);
  await rm(paths.executions, { recursive: true, force: true });
  await rm(paths.audit, { recursive: true, force: true });
}
