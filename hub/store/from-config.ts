/**
 * hub.json's `store` section turned into what `openStore` takes: reads the database password
 * (file or environment variable) and the TLS files. Errors name the key and the file, never a
 * password.
 */
import { readFileSync, statSync } from 'node:fs';
import { TrellisError } from '../../common/errors.js';
import type { StoreConfig } from '../config.js';
import type { StoreOptions } from './index.js';

export interface StoreOptionsContext {
  env?: NodeJS.ProcessEnv;
  /** PostgreSQL: told when the LISTEN connection is lost or back (for the hub log). */
  onStateChange?: (state: string, detail: string) => void;
}

export function storeOptions(c: StoreConfig, statePath: string, ctx: StoreOptionsContext = {}): StoreOptions {
  const env = ctx.env ?? process.env;
  if (c.kind === 'lowdb') return { kind: 'lowdb', path: statePath };
  let password: string | undefined;
  if (c.passwordFile) {
    password = readConfigFile(c.passwordFile, 'store.passwordFile').replace(/\r?\n$/, '');
    const mode = statSync(c.passwordFile).mode & 0o777;
    if (mode & 0o077) {
      throw new TrellisError('TRELLIS_E_CONFIG', `store.passwordFile ${c.passwordFile} is readable by others (mode ${mode.toString(8)}): run \`chmod 600 ${c.passwordFile}\``);
    }
  } else if (c.passwordEnv) {
    password = env[c.passwordEnv];
    if (!password) throw new TrellisError('TRELLIS_E_CONFIG', `store.passwordEnv: the environment variable ${c.passwordEnv} is not set`);
  }
  const ssl = c.ssl && {
    mode: c.ssl.mode,
    ca: c.ssl.caFile ? readConfigFile(c.ssl.caFile, 'store.ssl.caFile') : undefined,
    cert: c.ssl.certFile ? readConfigFile(c.ssl.certFile, 'store.ssl.certFile') : undefined,
    key: c.ssl.keyFile ? readConfigFile(c.ssl.keyFile, 'store.ssl.keyFile') : undefined,
  };
  return {
    kind: 'postgres', url: c.url, password, ssl, poolSize: c.poolSize,
    statementTimeoutMs: c.statementTimeout, connectTimeoutMs: c.connectTimeout, onStateChange: ctx.onStateChange,
  };
}

function readConfigFile(path: string, what: string): string {
  try { return readFileSync(path, 'utf8'); } catch (e) {
    throw new TrellisError('TRELLIS_E_CONFIG', `cannot read ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}
