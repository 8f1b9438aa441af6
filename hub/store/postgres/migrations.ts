/**
 * The PostgreSQL schema, as numbered migrations. A migration is never edited once released: a
 * change is a new entry at the end. `migrate()` applies what is missing, each in its own
 * transaction, under an advisory lock so that two hubs migrating at once are safe;
 * `checkSchema()` is what a hub runs at start.
 */
import type pg from 'pg';
import { TrellisError } from '../../../common/errors.js';

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'documents',
    sql: `
      -- Every collection of the hub's state store, one row per document.
      --   doc      the document as JSON text: "json", not "jsonb", so a document reads back
      --            exactly as stored (key order, \\u0000 in strings); documents are read whole.
      --   version  from trellis_doc_version, taken under the document's lock: it only grows, in
      --            commit order, for one (collection, id), across delete and re-insert.
      --   seq      from trellis_doc_seq at insert, kept by a replace: the listing order.
      CREATE SEQUENCE trellis_doc_version;
      CREATE SEQUENCE trellis_doc_seq;
      CREATE TABLE trellis_docs (
        collection text   NOT NULL,
        id         text   NOT NULL,
        doc        json   NOT NULL,
        version    bigint NOT NULL,
        seq        bigint NOT NULL,
        PRIMARY KEY (collection, id)
      );
      CREATE INDEX trellis_docs_order ON trellis_docs (collection, seq);
    `,
  },
  {
    version: 2,
    name: 'executions',
    sql: `
      -- Execution history shared by every hub (hub/executions/history-pg.ts).
      --   record      the whole ExecutionRecord as JSON text (read back exactly as written)
      --   dedup_key   the request's idempotency key: UNIQUE, so one key is one execution on every hub
      --   kv_caller   whose view of the datastore renders it again on another hub ({username, isAdmin})
      --   owner_hub   the hub that dispatches it and writes its state (NULL: none yet, any hub
      --               holding the agent may claim it); a hub writes only the rows it owns
      --   version     bumped at each write: what followers on other hubs compare
      CREATE TABLE trellis_executions (
        id           text    PRIMARY KEY,
        tenant       text    NOT NULL,
        agent        text    NOT NULL,
        action       text    NOT NULL,
        status       text    NOT NULL,
        rule         text    NOT NULL DEFAULT '',
        requested_ms bigint  NOT NULL,
        record       json    NOT NULL,
        dedup_key    text    UNIQUE,
        kv_caller    json,
        timeout_ms   bigint  NOT NULL DEFAULT 0,
        owner_hub    text,
        version      bigint  NOT NULL DEFAULT 1,
        created_at   timestamptz NOT NULL DEFAULT now(),
        updated_at   timestamptz NOT NULL DEFAULT now()
      );
      CREATE INDEX trellis_executions_tenant ON trellis_executions (tenant, id DESC);
      CREATE INDEX trellis_executions_agent ON trellis_executions (agent, id DESC);
      CREATE INDEX trellis_executions_open ON trellis_executions (agent, status) WHERE status IN ('requested', 'scheduled', 'running');
      CREATE INDEX trellis_executions_updated ON trellis_executions (updated_at);
      -- Output chunks as received (stream 0 stdout, 1 stderr; off: bytes of output before the chunk).
      CREATE TABLE trellis_output (
        id     text     NOT NULL,
        off    bigint   NOT NULL,
        stream smallint NOT NULL,
        data   bytea    NOT NULL,
        PRIMARY KEY (id, off)
      );
      -- Which hub each connected agent is attached to (a hub's rows are dropped when it stops;
      -- those of a killed hub are ignored once it is stale in the hubs registry).
      CREATE TABLE trellis_agent_hubs (
        agent text PRIMARY KEY,
        hub   text NOT NULL,
        since timestamptz NOT NULL DEFAULT now()
      );
      CREATE INDEX trellis_agent_hubs_hub ON trellis_agent_hubs (hub);
    `,
  },
  {
    version: 3,
    name: 'audit',
    sql: `
      -- The audit log of every hub (hub/audit/postgres.ts), append-only: the code has no UPDATE
      -- of it; the only DELETE is retention (audit.retention: rows older than maxAge, and the
      -- oldest rows beyond maxSegments x maxSegmentBytes bytes).
      --   seq    insert order (a bigserial): what a hub re-reads when another hub says "new rows"
      --   id     the record's lower-case ULID (time-ordered): the listing order, unique so that a
      --          batch retried after an ambiguous failure is not written twice
      --   hub    the id of the hub that wrote it (hubs registry)
      --   bytes  the record's size as a JSON line (what retention counts, as the files do)
      CREATE TABLE trellis_audit (
        seq            bigserial PRIMARY KEY,
        id             text   NOT NULL UNIQUE,
        time_ms        bigint NOT NULL,
        hub            text   NOT NULL,
        actor          text   NOT NULL,
        tenant         text   NOT NULL,
        method         text   NOT NULL,
        target         text   NOT NULL,
        result         text   NOT NULL,
        source_address text   NOT NULL,
        detail         text   NOT NULL,
        bytes          integer NOT NULL
      );
      CREATE INDEX trellis_audit_time ON trellis_audit (time_ms);
      CREATE INDEX trellis_audit_actor ON trellis_audit (actor, id);
    `,
  },
  {
    version: 4,
    name: 'rule gates',
    sql: `
      -- Cluster-wide rule cooldowns and rate limits (hub/cluster/rule-gates.ts), one row per gate
      -- (a rule, as of its last edit), times in the database's clock (ms since the epoch):
      --   last_ms     the last firing (cooldown)
      --   times       the last firings, oldest first, as many as the rate limit counts
      --   expires_ms  after this the row restricts nothing and may be deleted
      -- A firing is claimed by one conditional INSERT … ON CONFLICT DO UPDATE … WHERE (row lock).
      CREATE TABLE trellis_rule_gates (
        gate       text     PRIMARY KEY,
        last_ms    bigint   NOT NULL,
        times      bigint[] NOT NULL,
        expires_ms bigint   NOT NULL
      );
    `,
  },
];

/** The newest schema version this build knows. */
export const SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1]!.version;

/** Advisory lock (two-int key space, apart from the per-document locks) held while migrating. */
const MIGRATE_LOCK = [0x7472656c, 1] as const; // 'trel'

const CREATE_TABLE = `CREATE TABLE IF NOT EXISTS schema_migrations (
  version    integer PRIMARY KEY,
  name       text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
)`;

export interface MigrateResult {
  from: number;
  to: number;
  applied: { version: number; name: string }[];
}

/** Applies the missing migrations; refuses a database whose schema is newer than this build. */
export async function migrate(client: pg.ClientBase): Promise<MigrateResult> {
  await client.query('SELECT pg_advisory_lock($1, $2)', [...MIGRATE_LOCK]);
  try {
    await client.query(CREATE_TABLE);
    const from = await currentVersion(client);
    if (from > SCHEMA_VERSION) throw newerSchema(from);
    const applied: MigrateResult['applied'] = [];
    for (const m of MIGRATIONS) {
      if (m.version <= from) continue;
      await client.query('BEGIN');
      try {
        await client.query(m.sql);
        await client.query('INSERT INTO schema_migrations (version, name) VALUES ($1, $2)', [m.version, m.name]);
        await client.query('COMMIT');
      } catch (e) {
        await client.query('ROLLBACK').catch(() => undefined);
        throw new TrellisError('TRELLIS_E_INTERNAL', `schema migration ${m.version} (${m.name}) failed, nothing of it was applied: ${(e as Error).message}`, { cause: e });
      }
      applied.push({ version: m.version, name: m.name });
    }
    return { from, to: Math.max(from, SCHEMA_VERSION), applied };
  } finally {
    await client.query('SELECT pg_advisory_unlock($1, $2)', [...MIGRATE_LOCK]).catch(() => undefined);
  }
}

/** What a hub checks at start: the schema is exactly the one it knows. */
export async function checkSchema(client: pg.ClientBase, where: string): Promise<void> {
  let version: number;
  try {
    version = await currentVersion(client);
  } catch (e) {
    if ((e as { code?: string }).code === '42P01') version = 0; // no schema_migrations table
    else throw e;
  }
  if (version > SCHEMA_VERSION) throw newerSchema(version);
  if (version < SCHEMA_VERSION) {
    throw new TrellisError(
      'TRELLIS_E_CONFIG',
      `the database ${where} is at schema version ${version}, this hub needs ${SCHEMA_VERSION}: run \`trellis hub migrate --data DIR\` first`,
    );
  }
}

async function currentVersion(client: pg.ClientBase): Promise<number> {
  const r = await client.query<{ v: number | null }>('SELECT max(version) AS v FROM schema_migrations');
  return r.rows[0]?.v ?? 0;
}

function newerSchema(version: number): TrellisError {
  return new TrellisError(
    'TRELLIS_E_CONFIG',
    `the database schema is at version ${version}, newer than this hub knows (${SCHEMA_VERSION}): another hub was upgraded; upgrade this one to the same release`,
  );
}

/** Documents in the database (0 for an empty, freshly migrated one). */
export async function countDocuments(client: pg.ClientBase): Promise<number> {
  const r = await client.query<{ n: string }>('SELECT count(*) AS n FROM trellis_docs');
  return Number(r.rows[0]!.n);
}
