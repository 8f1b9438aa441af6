/**
 * The hub's state store. Backends are listed in {@link openStore}; each one passes the contract
 * suite in test/contract/store.ts.
 */
import { LowdbStore } from './lowdb.js';
import { MemoryStore } from './memory.js';
import { PostgresStore, type PostgresStoreOptions } from './postgres/index.js';
import { COLLECTIONS, type Doc, type Store } from './types.js';

export { COLLECTIONS, type Collection, type Doc, type Store } from './types.js';
export { LowdbStore, type LowdbStoreOptions } from './lowdb.js';
export { MemoryStore } from './memory.js';
export { PostgresStore, type PostgresStoreOptions } from './postgres/index.js';

export type StoreOptions =
  | {
      kind: 'lowdb';
      /** The JSON state file. */
      path: string;
      /** @default 10 */
      coalesceMs?: number;
    }
  | { kind: 'memory' }
  /** Several hubs over one database: see hub/store/postgres. */
  | ({ kind: 'postgres' } & PostgresStoreOptions);

export async function openStore(opts: StoreOptions): Promise<Store> {
  switch (opts.kind) {
    case 'lowdb':
      return LowdbStore.open({ path: opts.path, coalesceMs: opts.coalesceMs });
    case 'memory':
      return new MemoryStore();
    case 'postgres': {
      const { kind: _kind, ...pgOpts } = opts;
      return PostgresStore.open(pgOpts);
    }
  }
}

/** Every document of a state file, by collection (what `hub migrate` and a restore into PostgreSQL copy). */
export async function readStoreFile(path: string): Promise<Map<string, Doc[]>> {
  const source = await LowdbStore.open({ path });
  const docs = new Map<string, Doc[]>();
  try {
    for (const col of COLLECTIONS) docs.set(col, await source.list(col));
  } finally {
    await source.close();
  }
  return docs;
}
