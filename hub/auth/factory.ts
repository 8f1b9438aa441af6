/**
 * The one table of login backends: config entry → implementation, in the configured order.
 * Secrets and files are read here, once, at start-up, so a bad path or a world-readable password
 * file stops the hub with a clear message instead of failing the first login.
 */
import { readFileSync, statSync } from 'node:fs';
import type { Store } from '../store/index.js';
import type { AuthBackendConfig } from '../config.js';
import type { Logger } from '../../common/log.js';
import { TrellisError } from '../../common/errors.js';
import { LocalBackend, type AuthBackend } from './backends.js';
import type { Kdf } from './kdf.js';
import { LdapBackend } from './ldap.js';
import { ModuleBackend } from './module.js';

export interface BackendDeps {
  store: Store;
  log: Logger;
  /** The hub's KDF (its worker pool); scrypt on libuv's threadpool without it. */
  kdf?: Kdf;
  env?: NodeJS.ProcessEnv;
}

export function buildBackends(configs: readonly AuthBackendConfig[], deps: BackendDeps): AuthBackend[] {
  const { store, log, kdf, env = process.env } = deps;
  return configs.map((c): AuthBackend => {
    switch (c.type) {
      case 'local':
        return new LocalBackend(store, kdf);
      case 'ldap': {
        const b = new LdapBackend({
          name: c.name, url: c.url, startTls: c.startTls, caPem: c.caFile ? readConfigFile(c.caFile, `CA file of auth backend ${c.name}`) : undefined,
          bindDn: c.bindDn, bindPassword: bindPassword(c, env),
          userBase: c.userBase, userFilter: c.userFilter, groupBase: c.groupBase, groupFilter: c.groupFilter,
          groupNameAttribute: c.groupNameAttribute, timeoutMs: c.timeoutMs,
        });
        log.info({ backend: c.name, url: c.url, startTls: c.startTls, userBase: c.userBase, groupBase: c.groupBase }, 'LDAP login backend configured');
        return b;
      }
      case 'module':
        readConfigFile(c.path, `module of auth backend ${c.name}`); // exists and is readable
        log.info({ backend: c.name, path: c.path }, 'module login backend configured');
        return new ModuleBackend({ name: c.name, path: c.path, timeoutMs: c.timeoutMs });
    }
  });
}

function readConfigFile(path: string, what: string): string {
  try { return readFileSync(path, 'utf8'); } catch (e) {
    throw new TrellisError('TRELLIS_E_CONFIG', `cannot read the ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** The service account's password from a 0600 file or an environment variable; never empty. */
function bindPassword(c: Extract<AuthBackendConfig, { type: 'ldap' }>, env: NodeJS.ProcessEnv): string {
  let pw: string;
  if (c.bindPasswordFile) {
    const file = c.bindPasswordFile;
    pw = readConfigFile(file, `bind password file of auth backend ${c.name}`);
    const mode = statSync(file).mode & 0o777;
    if (mode & 0o077) {
      throw new TrellisError('TRELLIS_E_CONFIG', `the bind password file ${file} of auth backend ${c.name} is readable by others (mode ${mode.toString(8)}): run \`chmod 600 ${file}\``);
    }
    pw = pw.replace(/\r?\n$/, '');
  } else {
    pw = env[c.bindPasswordEnv!] ?? '';
  }
  // An empty password would make the service bind an anonymous one.
  if (pw.length === 0) {
    throw new TrellisError('TRELLIS_E_CONFIG', `auth backend ${c.name} has an empty bind password: put it in ${c.bindPasswordFile ? `the file ${c.bindPasswordFile}` : `the environment variable ${c.bindPasswordEnv}`}`);
  }
  return pw;
}
