/**
 * A throwaway PostgreSQL server for tests: `initdb` in a temp dir, `pg_ctl start -w` on a free
 * loopback port (and a Unix socket in the temp dir, so nothing touches /var/run/postgresql),
 * stopped and removed on teardown even when the test failed.
 *
 * Authentication: scram-sha-256 with a random password for the superuser `trellis` on TCP (the
 * tests connect the way a hub does, with a password in the URL), trust on the private Unix
 * socket only. PostgreSQL refuses to run as root: when the tests run as root, the server runs
 * as `nobody` (`runuser -u nobody --`) in a directory owned by it.
 *
 * `.ci/run` installs Debian's `postgresql` when no initdb is found; `postgresMissing()` says why a
 * test is skipped where it is not installed (and fails under CI=true via `needs()`).
 */
import { execFile } from 'node:child_process';
import { cpSync, existsSync, readdirSync } from 'node:fs';
import { chmod, chown, mkdtemp, rm, writeFile, appendFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { freePort } from './net.js';

const run = promisify(execFile);

/** The newest installed server's bin directory, or undefined. */
export function postgresBinDir(): string | undefined {
  const base = '/usr/lib/postgresql';
  if (!existsSync(base)) return undefined;
  const versions = readdirSync(base).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a));
  for (const v of versions) {
    const bin = join(base, v, 'bin');
    if (existsSync(join(bin, 'initdb')) && existsSync(join(bin, 'pg_ctl'))) return bin;
  }
  return undefined;
}

/** Why PostgreSQL cannot run here, or undefined when it can. */
export function postgresMissing(): string | undefined {
  if (!postgresBinDir()) return 'PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb; apt-get install postgresql; .ci/run does it)';
  if (process.getuid?.() === 0 && !existsSync('/usr/sbin/runuser') && !existsSync('/sbin/runuser')) return 'running as root without runuser to start PostgreSQL as nobody';
  return undefined;
}

export interface Postgres extends AsyncDisposable {
  host: string;
  port: number;
  user: string;
  password: string;
  dir: string;
  /** postgres://trellis:PASSWORD@127.0.0.1:PORT/DB (default database `postgres`). */
  url(db?: string): string;
  /** Creates an empty database with a fresh name and returns its URL. */
  createDatabase(prefix?: string): Promise<string>;
  /** Stops the server, keeping its data (`pg_ctl stop -m fast`). */
  stop(): Promise<void>;
  /** Starts it again on the same port. */
  start(): Promise<void>;
  /** Stops the server and removes its directory. */
  close(): Promise<void>;
}

export interface StartPostgresOptions {
  /** Serve TLS too (`ssl = on`) with this certificate and key (PEM). Clients may still connect without. */
  tls?: { certPem: string; keyPem: string };
}

export async function startPostgres(o: StartPostgresOptions = {}): Promise<Postgres> {
  const bin = postgresBinDir();
  const missing = postgresMissing();
  if (!bin || missing) throw new Error(missing);
  const asRoot = process.getuid?.() === 0;
  const dir = await mkdtemp(join(tmpdir(), 'trellis-pg-'));
  const dataDir = join(dir, 'data');
  const user = 'trellis';
  const password = randomBytes(12).toString('base64url');
  const port = await freePort();
  let nobody: { uid: number; gid: number } | undefined;
  if (asRoot) {
    const id = await run('id', ['-u', 'nobody']);
    const gid = await run('id', ['-g', 'nobody']);
    nobody = { uid: Number(id.stdout.trim()), gid: Number(gid.stdout.trim()) };
    await chown(dir, nobody.uid, nobody.gid);
  }
  await chmod(dir, 0o700);
  const as = (cmd: string, args: string[]) =>
    asRoot ? run('runuser', ['-u', 'nobody', '--', cmd, ...args], { cwd: dir }) : run(cmd, args, { cwd: dir });
  let running = false;
  const stop = async () => {
    if (!running) return;
    await as(join(bin, 'pg_ctl'), ['-D', dataDir, '-m', 'fast', '-w', '-t', '60', 'stop']).catch(() => undefined);
    running = false;
  };
  const start = async () => {
    await as(join(bin, 'pg_ctl'), ['-D', dataDir, '-l', join(dir, 'postgres.log'), '-w', '-t', '60', '-o', `-k ${dir} -h 127.0.0.1 -p ${port}`, 'start']);
    running = true;
  };
  const close = async () => {
    await stop();
    await rm(dir, { recursive: true, force: true, maxRetries: 5 });
  };
  try {
    const pwFile = join(dir, 'pw');
    await writeFile(pwFile, password, { mode: 0o600 });
    if (nobody) await chown(pwFile, nobody.uid, nobody.gid);
    await as(join(bin, 'initdb'), ['-D', dataDir, '-U', user, '--pwfile', pwFile, '-A', 'scram-sha-256', '--auth-local', 'trust', '-E', 'UTF8', '--locale', 'C.UTF-8', '--no-sync']);
    await rm(pwFile);
    const conf = [
      'fsync = off', // a throwaway server: speed over crash safety
      'synchronous_commit = off',
      'full_page_writes = off',
      'shared_buffers = 16MB',
      'max_connections = 60',
      "log_min_messages = warning",
    ];
    if (o.tls) {
      const cert = join(dataDir, 'server.crt');
      const key = join(dataDir, 'server.key');
      await writeFile(cert, o.tls.certPem, { mode: 0o600 });
      await writeFile(key, o.tls.keyPem, { mode: 0o600 });
      if (nobody) { await chown(cert, nobody.uid, nobody.gid); await chown(key, nobody.uid, nobody.gid); }
      conf.push('ssl = on', `ssl_cert_file = '${cert}'`, `ssl_key_file = '${key}'`);
    }
    await appendFile(join(dataDir, 'postgresql.conf'), '\n' + conf.join('\n') + '\n');
    await start();
  } catch (e) {
    await close();
    throw e;
  }
  const url = (db = 'postgres') => `postgres://${user}:${encodeURIComponent(password)}@127.0.0.1:${port}/${db}`;
  let dbs = 0;
  return {
    host: '127.0.0.1', port, user, password, dir, url, stop, start, close,
    async createDatabase(prefix = 'test') {
      const name = `${prefix}_${++dbs}_${randomBytes(3).toString('hex')}`;
      const client = new pg.Client({ connectionString: url() });
      await client.connect();
      try { await client.query(`CREATE DATABASE "${name}"`); } finally { await client.end(); }
      return url(name);
    },
    [Symbol.asyncDispose]: close,
  };
}

/**
 * A second hub's data directory made from hub `from`'s the way `trellis hub init --join … --from
 * DIR` carries it (keys, keys/ with the master key, settings; not its lock, history, audit,
 * snapshots or agent bundle), for tests and benches that start two hubs on one database.
 */
export function copyHubForJoin(from: string, to: string): void {
  cpSync(from, to, { recursive: true, filter: (src) => !/\/(audit|executions|snapshots|agent-bundle)(\/|$)/.test(src.slice(from.length)) && !/hub\.lock(\.break)?$/.test(src) });
}
