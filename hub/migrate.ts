/**
 * `trellis hub migrate`: brings a PostgreSQL state database to this build's schema, and with
 * `--from-data DIR` moves a lowdb hub's state (DIR/state.json) into it. The move also points
 * DIR/hub.json at the database (a password goes to DIR/store-password, 0600) and renames
 * state.json to state.json.migrated, so `trellis hub run --data DIR` runs on PostgreSQL next.
 * The execution history (DIR/executions) is copied into the database too (hub/executions/import-pg.ts),
 * and the audit log's records into the audit table (its files stay in DIR). CA, keys and master key stay in DIR (files).
 */
import { existsSync, readFileSync } from 'node:fs';
import { rename } from 'node:fs/promises';
import { resolve } from 'node:path';
import { TrellisError } from '../common/errors.js';
import { atomicWriteFile } from '../common/fsutil.js';
import { loadHubConfig, validateConfig, CONFIG_FILE } from './config.js';
import { hubPaths } from './paths.js';
import { lockDataDir } from './lock/index.js';
import { storeOptions } from './store/from-config.js';
import { readStoreFile } from './store/index.js';
import { importHistory, type ImportResult } from './executions/import-pg.js';
import { importAuditSegments } from './audit/postgres.js';
import { copyDocuments, migrateDatabase, withDatabase, redactUrl, type CopyResult, type MigrateResult, type PostgresConnectOptions } from './store/postgres/index.js';

export interface HubMigrateOptions {
  /** A hub data directory whose hub.json names the database (when `storeUrl` is not given). */
  dataDir?: string;
  /** The database; a password in it is used, never printed. */
  storeUrl?: string;
  /** The password, when not in the URL (TRELLIS_STORE_PASSWORD). */
  storePassword?: string;
  /** A lowdb hub data directory to copy into the database (stop that hub first). */
  fromData?: string;
  /** Replace what the database holds with the copy. */
  force?: boolean;
}

export interface HubMigrateResult extends MigrateResult {
  where: string;
  copied?: CopyResult & { configUpdated: string | undefined; history?: ImportResult; auditRecords: number };
}

export async function hubMigrate(o: HubMigrateOptions): Promise<HubMigrateResult> {
  const target = targetOf(o);
  const migrated = await migrateDatabase(target);
  if (!o.fromData) return migrated;

  const paths = hubPaths(o.fromData);
  if (!existsSync(paths.store)) {
    throw new TrellisError('TRELLIS_E_NOT_FOUND', `${paths.store} does not exist: --from-data takes the data directory of a hub that keeps its state in state.json`);
  }
  // The source hub must be stopped (TRELLIS_E_LOCKED names it otherwise): a running hub would go
  // on writing state.json after the copy. The lock is held until hub.json points at the database.
  const lock = lockDataDir(paths.dir, 'hub migrate');
  try {
    return await copyFromData(o, target, migrated, paths);
  } finally {
    lock.release();
  }
}

async function copyFromData(o: HubMigrateOptions, target: PostgresConnectOptions, migrated: HubMigrateResult, paths: ReturnType<typeof hubPaths>): Promise<HubMigrateResult> {
  const docs = await readStoreFile(paths.store);
  const copied = await copyDocuments(target, docs, o.force ?? false);
  const history = await withDatabase(target, (c) => importHistory(c, paths.executions));
  // The audit log moves too: on PostgreSQL the hub reads it from the table (hub/audit/postgres.ts).
  const auditRecords = await withDatabase(target, (c) => importAuditSegments({ query: (sql, params) => c.query(sql, params) }, paths.audit, 'migrated'));

  // Point the source hub at the database, when it still names no other store.
  let configUpdated: string | undefined;
  if (o.storeUrl && existsSync(paths.config)) {
    const file = JSON.parse(readFileSync(paths.config, 'utf8')) as Record<string, unknown>;
    const kind = (file.store as { kind?: string } | undefined)?.kind ?? 'lowdb';
    if (kind === 'lowdb') {
      const u = new URL(o.storeUrl);
      const password = o.storePassword ?? (u.password ? decodeURIComponent(u.password) : undefined);
      u.password = '';
      const passwordFile = resolve(paths.dir, 'store-password');
      if (password !== undefined) await atomicWriteFile(passwordFile, password, { mode: 0o600 });
      file.store = { kind: 'postgres', url: u.toString(), ...(password !== undefined ? { passwordFile } : {}) };
      validateConfig(file, paths.config);
      await atomicWriteFile(paths.config, JSON.stringify(file, null, 2) + '\n', { mode: 0o600 });
      await rename(paths.store, `${paths.store}.migrated`);
      configUpdated = paths.config;
    }
  }
  return { ...migrated, copied: { ...copied, configUpdated, history, auditRecords } };
}

function targetOf(o: HubMigrateOptions): PostgresConnectOptions {
  if (o.storeUrl) {
    if (!/^postgres(ql)?:\/\//i.test(o.storeUrl)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', '--store must be a postgres:// URL');
    return { url: o.storeUrl, password: o.storePassword };
  }
  if (!o.dataDir) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'give --store URL, or --data DIR of a hub whose hub.json names its PostgreSQL store');
  const config = loadHubConfig(o.dataDir);
  const opts = storeOptions(config.store, hubPaths(o.dataDir).store);
  if (opts.kind !== 'postgres') {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `the hub in ${o.dataDir} keeps its state in state.json (store.kind "lowdb" in ${CONFIG_FILE}): nothing to migrate; to move it into PostgreSQL run \`trellis hub migrate --from-data ${o.dataDir} --store postgres://USER@HOST/DB\``);
  }
  return opts;
}

/** What `hub migrate` prints. */
export function describeMigrate(r: HubMigrateResult, url?: string): string {
  const lines = [
    r.applied.length === 0
      ? `the database ${r.where} is at schema version ${r.to}: nothing to do`
      : `the database ${r.where}: schema ${r.from} → ${r.to} (${r.applied.map((m) => `${m.version} ${m.name}`).join(', ')})`,
  ];
  if (r.copied) {
    const total = Object.values(r.copied.counts).reduce((a, b) => a + b, 0);
    lines.push(`copied ${total} documents${r.copied.replaced ? ` (replacing ${r.copied.replaced})` : ''}: ${Object.entries(r.copied.counts).filter(([, n]) => n > 0).map(([c, n]) => `${c} ${n}`).join(', ') || 'none'}`);
    if (r.copied.history) lines.push(`copied ${r.copied.history.executions} executions of the history (${r.copied.history.outputChunks} output chunks)`);
    lines.push(`copied ${r.copied.auditRecords} audit records from the audit segment files (the files stay)`);
    if (r.copied.configUpdated) lines.push(`${r.copied.configUpdated} now names ${url ? redactUrl(url) : 'the database'}; state.json was renamed state.json.migrated`);
  }
  return lines.join('\n') + '\n';
}
