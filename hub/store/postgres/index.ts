/** The PostgreSQL state store (several hubs over one database): the store, its schema, its connection options. */
export { PostgresStore, NOTIFY_CHANNEL, CHANNEL_RE, MAX_CHANNEL_PAYLOAD, type PostgresStoreOptions, type PostgresStoreState } from './store.js';
export { MIGRATIONS, SCHEMA_VERSION, migrate, checkSchema, type MigrateResult } from './migrations.js';
export { poolConfig, redactUrl, parsePostgresUrl, storeError, type PostgresConnectOptions, type SslMode } from './connection.js';
export { withDatabase, migrateDatabase, prepareEmptyDatabase, copyDocuments, copyDocumentsIn, type CopyResult } from './admin.js';
