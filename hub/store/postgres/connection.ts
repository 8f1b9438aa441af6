/**
 * How the PostgreSQL store connects: the URL and TLS options turned into a `pg` pool
 * configuration, the URL with its password hidden (for messages and logs), and database errors
 * turned into Trellis errors. The password never appears in a message this module makes.
 */
import type pg from 'pg';
import { TrellisError } from '../../../common/errors.js';

export type SslMode = 'disable' | 'require' | 'verify-full';

export interface PostgresConnectOptions {
  /** `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE` (a password here is a secret: prefer `password`). */
  url: string;
  /** Overrides a password in the URL (read from a file or an environment variable by the caller). */
  password?: string;
  /**
   * TLS to the database. `verify-full`: TLS, the server's certificate must chain to `ca` (or the
   * system CAs) and name the host; `require`: TLS without checking the certificate (encrypts,
   * does not authenticate the server); `disable`: plain TCP.
   * @default verify-full, except `disable` for a loopback host or a Unix socket
   */
  ssl?: { mode?: SslMode; ca?: string; cert?: string; key?: string };
  /** Connections in the pool. @default 10 */
  poolSize?: number;
  /** Longest a statement may run on the server (`statement_timeout`). @default 10000 */
  statementTimeoutMs?: number;
  /** Longest a new connection may take. @default 5000 */
  connectTimeoutMs?: number;
}

/** The URL with the password replaced by `***` (or the URL's scheme alone when it does not parse). */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return 'postgres://(an unparsable URL)';
  }
}

/** Parses and checks the URL; TRELLIS_E_CONFIG naming what is wrong, never echoing the URL. */
export function parsePostgresUrl(url: string): { host: string; port: number; database: string; user: string; password: string; applicationName?: string } {
  let u: URL;
  try { u = new URL(url); } catch {
    throw new TrellisError('TRELLIS_E_CONFIG', 'store.url is not a URL: give postgres://USER@HOST[:PORT]/DATABASE');
  }
  if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') {
    throw new TrellisError('TRELLIS_E_CONFIG', `store.url must start with postgres:// or postgresql:// (got ${u.protocol}//)`);
  }
  let host = decodeURIComponent(u.hostname);
  for (const [k, v] of u.searchParams) {
    if (k === 'host') host = v; // a Unix socket directory: postgres://user@/db?host=/run/postgresql
    else if (k !== 'application_name') {
      throw new TrellisError('TRELLIS_E_CONFIG', `store.url: the parameter "${k}" is not supported; TLS is set with store.ssl (mode, caFile, certFile, keyFile), timeouts with store.statementTimeout`);
    }
  }
  if (!host) throw new TrellisError('TRELLIS_E_CONFIG', 'store.url names no host');
  const database = decodeURIComponent(u.pathname.replace(/^\//, ''));
  if (!database) throw new TrellisError('TRELLIS_E_CONFIG', `store.url names no database: ${redactUrl(url)}`);
  const user = decodeURIComponent(u.username);
  if (!user) throw new TrellisError('TRELLIS_E_CONFIG', `store.url names no user: ${redactUrl(url)}`);
  return {
    host, port: u.port ? Number(u.port) : 5432, database, user, password: decodeURIComponent(u.password),
    applicationName: u.searchParams.get('application_name') ?? undefined,
  };
}

export function isLoopback(host: string): boolean {
  return host.startsWith('/') || host === 'localhost' || host === '::1' || host === '[::1]' || /^127\./.test(host);
}

/** The `pg` client configuration for these options. */
export function poolConfig(o: PostgresConnectOptions): pg.PoolConfig & { where: string } {
  const p = parsePostgresUrl(o.url);
  const mode: SslMode = o.ssl?.mode ?? (isLoopback(p.host) ? 'disable' : 'verify-full');
  if (mode === 'disable' && (o.ssl?.ca || o.ssl?.cert || o.ssl?.key)) {
    throw new TrellisError('TRELLIS_E_CONFIG', 'store.ssl: caFile, certFile and keyFile need mode "require" or "verify-full"');
  }
  if (!o.ssl?.cert !== !o.ssl?.key) throw new TrellisError('TRELLIS_E_CONFIG', 'store.ssl: certFile and keyFile go together');
  let ssl: pg.PoolConfig['ssl'] = false;
  if (mode !== 'disable') {
    ssl = {
      rejectUnauthorized: mode === 'verify-full',
      ...(o.ssl?.ca ? { ca: o.ssl.ca } : {}),
      ...(o.ssl?.cert ? { cert: o.ssl.cert, key: o.ssl.key } : {}),
      ...(p.host.startsWith('/') ? {} : { servername: p.host }),
    };
  }
  const statementTimeout = o.statementTimeoutMs ?? 10_000;
  return {
    where: `${p.user}@${p.host}${p.host.startsWith('/') ? '' : `:${p.port}`}/${p.database}`,
    host: p.host,
    port: p.port,
    database: p.database,
    user: p.user,
    password: o.password ?? p.password,
    ssl,
    max: o.poolSize ?? 10,
    statement_timeout: statementTimeout,
    // The client gives up on an answer a little after the server would have: a connection that
    // died without a FIN (a partition) fails the call instead of hanging it.
    query_timeout: statementTimeout + 5_000,
    connectionTimeoutMillis: o.connectTimeoutMs ?? 5_000,
    idle_in_transaction_session_timeout: statementTimeout + 5_000,
    keepAlive: true,
    application_name: p.applicationName ?? 'trellis-hub',
  };
}

/** SQLSTATE classes and Node error codes that mean "the database cannot be used right now". */
const UNAVAILABLE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', '57P01', '57P02', '57P03', '53300']);

/** Node's certificate verification failures (OpenSSL's names, and the host name check). */
const TLS_CODES = /^(ERR_TLS_|ERR_SSL_|UNABLE_TO_|SELF_SIGNED_|DEPTH_ZERO_|CERT_|HOSTNAME_MISMATCH)/;

export function isUnavailable(e: unknown): boolean {
  const code = (e as { code?: unknown }).code;
  if (typeof code === 'string' && (UNAVAILABLE_CODES.has(code) || code.startsWith('08'))) return true;
  const msg = (e as Error)?.message ?? '';
  return /Connection terminated|timeout exceeded when trying to connect|Query read timeout|Client has encountered a connection error|Connection ended unexpectedly/i.test(msg);
}

/** A database error as the Trellis error a caller can act on. */
export function storeError(e: unknown, where: string): Error {
  if (e instanceof TrellisError) return e;
  const code = (e as { code?: unknown }).code;
  const msg = (e as Error)?.message ?? String(e);
  if (isUnavailable(e)) {
    return new TrellisError('TRELLIS_E_UNAVAILABLE', `the state database ${where} is unavailable (${typeof code === 'string' ? code : msg}); the call was not done, retry when it is back`, { cause: e });
  }
  if ((typeof code === 'string' && TLS_CODES.test(code)) || /does not support SSL|SSL off|no pg_hba.conf entry.*no encryption/i.test(msg)) {
    return new TrellisError('TRELLIS_E_CONFIG', `TLS to the state database ${where} failed (${typeof code === 'string' ? code : msg}): check store.ssl (mode, caFile) against the server's certificate and ssl setting`, { cause: e });
  }
  if (code === '57014') return new TrellisError('TRELLIS_E_TIMEOUT', `a statement on the state database ${where} ran past store.statementTimeout`, { cause: e });
  if (code === '28P01' || code === '28000') return new TrellisError('TRELLIS_E_CONFIG', `the state database ${where} refused the login: ${msg}`, { cause: e });
  if (code === '3D000') return new TrellisError('TRELLIS_E_CONFIG', `the state database ${where} does not exist: create it (createdb) and run \`trellis hub migrate\``, { cause: e });
  return new TrellisError('TRELLIS_E_INTERNAL', `the state database ${where} failed: ${msg}`, { cause: e });
}
