/**
 * `trellis snapshots create|list|download|delete` (on the hub, admin API) and
 * `trellis snapshots restore FILE --data DIR [--store URL]` (offline, on the machine of the new hub).
 * Passphrases come from a file (`--passphrase-file`, not readable by group or others; `-` reads
 * standard input) or a terminal prompt: never from argv or the environment.
 */
import { createHash } from 'node:crypto';
import { open, stat, rename, unlink, readFile } from 'node:fs/promises';
import { InvalidArgumentError, type Command } from 'commander';
import type * as grpc from '@grpc/grpc-js';
import { TrellisError } from '../../common/errors.js';
import { fromGrpcError } from '../../common/grpc-errors.js';
import { call, withClients } from '../client.js';
import { addOutputOptions, localIso, output, outputOne, print, printErr, when, type Column } from '../format.js';
import { askHidden, isInteractive, readStdin } from '../prompt.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

const MIN_PASSPHRASE = 12; // hub/snapshots/format.ts (not imported: it would load the hub's crypto module into every command)
const CREATE_TIMEOUT_MS = 30 * 60_000;

/** "512M", "4G", "100k", or bytes. */
export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?$/i.exec(text.trim());
  if (!m) throw new InvalidArgumentError('a size such as 512M, 4G or 1048576');
  const mult = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  const n = Math.floor(Number(m[1]) * mult);
  if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError('a size of at least one byte');
  return n;
}

export function humanSize(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

/**
 * The passphrase from `--passphrase-file` (one line; a trailing newline is dropped), standard
 * input (`-`), or a hidden prompt (twice when `confirm`). A file group or others can read or
 * write is refused: the passphrase opens every secret in the snapshot.
 */
export async function readPassphrase(file: string | undefined, o: { confirm: boolean }): Promise<string> {
  let text: string;
  if (file === '-') {
    text = await readStdin(64 * 1024);
  } else if (file) {
    let st;
    try { st = await stat(file); } catch (e) { throw new TrellisError('TRELLIS_E_NOT_FOUND', `cannot read the passphrase file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`); }
    if (!st.isFile()) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `the passphrase file ${file} is not a regular file`);
    if (process.platform !== 'win32' && (st.mode & 0o077) !== 0) {
      throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `the passphrase file ${file} is accessible to group or others (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}); make it private first: chmod 600 ${file}`);
    }
    if (st.size > 64 * 1024) throw new TrellisError('TRELLIS_E_TOO_LARGE', `the passphrase file ${file} is over 64 KiB: it should hold one line`);
    text = await readFile(file, 'utf8');
  } else {
    if (!isInteractive()) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'no passphrase: pass --passphrase-file FILE (mode 0600; - reads standard input) or run in a terminal to be asked');
    text = await askHidden('snapshot passphrase: ');
    if (o.confirm && (await askHidden('again: ')) !== text) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'the two passphrases differ; nothing was done');
  }
  const pass = text.replace(/\r?\n$/, '');
  if (pass.includes('\n')) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `the passphrase ${file === '-' ? 'on standard input' : file ? `file ${file}` : ''} holds more than one line`);
  if (pass.length < MIN_PASSPHRASE) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `a snapshot passphrase has at least ${MIN_PASSPHRASE} characters`);
  return pass;
}

const COLUMNS: Column<T.SnapshotInfo__Output>[] = [
  { header: 'ID', cell: (s) => s.id },
  { header: 'CREATED', cell: (s) => when(Number(s.createdAtMs)) },
  { header: 'SIZE', cell: (s) => humanSize(Number(s.sizeBytes)) },
  { header: 'BY', cell: (s) => s.createdBy },
  { header: 'DOCUMENTS', cell: (s) => String(s.documents), wide: true },
  { header: 'SEGMENTS', cell: (s) => String(s.segments), wide: true },
  { header: 'SHA256', cell: (s) => s.sha256, wide: true },
  { header: 'NOTE', cell: (s) => s.note || '-' },
];

/** Streams a snapshot to `out` (via a temp file renamed at the end), checking size and SHA-256. */
async function download(stream: grpc.ClientReadableStream<T.SnapshotChunk__Output>, out: string, maxBytes: number): Promise<T.SnapshotInfo__Output> {
  const tmp = `${out}.part-${process.pid}`;
  const fh = await open(tmp, 'wx', 0o600);
  let info: T.SnapshotInfo__Output | undefined;
  let got = 0;
  const hash = createHash('sha256');
  try {
    await new Promise<void>((resolve, reject) => {
      let chain = Promise.resolve();
      const fail = (e: unknown) => { stream.cancel(); reject(e); };
      stream.on('data', (m: T.SnapshotChunk__Output) => {
        if (!info) {
          if (!m.info) return fail(new TrellisError('TRELLIS_E_INTERNAL', 'the hub sent data before the snapshot listing'));
          info = m.info;
          if (Number(info.sizeBytes) > maxBytes) return fail(new TrellisError('TRELLIS_E_TOO_LARGE', `snapshot ${info.id} is ${humanSize(Number(info.sizeBytes))}, over --max-size ${humanSize(maxBytes)}; nothing was kept`));
        }
        const data = Buffer.from(m.data);
        got += data.length;
        if (got > Number(info.sizeBytes)) return fail(new TrellisError('TRELLIS_E_TOO_LARGE', `the hub sent more than the snapshot's ${info.sizeBytes} bytes; nothing was kept`));
        hash.update(data);
        stream.pause();
        chain = chain.then(() => fh.write(data)).then(() => { stream.resume(); }, fail);
      });
      stream.on('error', (e: grpc.ServiceError) => reject(fromGrpcError(e)));
      stream.on('end', () => { void chain.then(() => resolve()); });
    });
    if (!info) throw new TrellisError('TRELLIS_E_INTERNAL', 'the hub ended the download without the snapshot');
    if (got !== Number(info.sizeBytes)) throw new TrellisError('TRELLIS_E_UNAVAILABLE', `the download stopped at ${got} of ${info.sizeBytes} bytes; nothing was kept: retry`);
    if (hash.digest('hex') !== info.sha256) throw new TrellisError('TRELLIS_E_SNAPSHOT_INVALID', 'the downloaded file does not match the SHA-256 the hub lists for it; nothing was kept: retry');
    await fh.sync();
    await fh.close();
    await rename(tmp, out);
    return info;
  } catch (e) {
    await fh.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw e;
  }
}

export function addSnapshotCommands(program: Command): void {
  const snap = program.command('snapshots')
    .description('encrypted snapshots of the hub (state, history, audit, packs, CA and master key) and offline restore; administrators only')
    .addHelpText('after', `
A snapshot is encrypted with a key derived from your passphrase (scrypt, AES-256-GCM): without
the passphrase nobody (you included) can open it. It holds the CA key and the master key, so
keep the file and the passphrase apart. Passphrases are read from --passphrase-file (mode 0600,
or - for standard input) or asked in a terminal; never from the command line.

  trellis snapshots create --passphrase-file /root/snap.pass --note "before upgrade"
  trellis snapshots list
  trellis snapshots download 01jb2x... --out /backup/hub-2024-05-01.tsnap
  trellis snapshots restore /backup/hub-2024-05-01.tsnap --data /var/lib/trellis-hub --passphrase-file /root/snap.pass
  trellis hub run --data /var/lib/trellis-hub`);

  addOutputOptions(snap.command('create')
    .description('make a snapshot on the hub now (it keeps running); prints its id')
    .option('--passphrase-file <file>', 'read the passphrase (at least 12 characters, one line) from this file (mode 0600; - for standard input); else asked twice in a terminal')
    .option('--note <text>', 'free text shown by `snapshots list` (at most 256 characters)'))
    .action(async (o) => {
      const passphrase = await readPassphrase(o.passphraseFile, { confirm: true });
      await withClients(async (c) => {
        const s = await call<T.CreateSnapshotRequest, T.SnapshotInfo__Output>(c, c.snapshots, c.snapshots.CreateSnapshot, { passphrase, note: o.note ?? '' }, CREATE_TIMEOUT_MS);
        await outputOne(o, s, () => `created snapshot ${s.id} (${humanSize(Number(s.sizeBytes))}, ${s.documents} documents, ${s.segments} history and audit segments)\n` +
          `  download it: trellis snapshots download ${s.id} --out FILE`);
      });
    });

  addOutputOptions(snap.command('list')
    .description('list the snapshots kept on the hub (DATA/snapshots)'), 'documents, segments, SHA-256')
    .action(async (o) => {
      await withClients(async (c) => {
        const r = await call<T.ListSnapshotsRequest, T.ListSnapshotsResponse__Output>(c, c.snapshots, c.snapshots.ListSnapshots, {});
        await output(o, r.snapshots, COLUMNS, { empty: 'no snapshots: make one with `trellis snapshots create`' });
      });
    });

  snap.command('download')
    .description('copy a snapshot from the hub to a local file (checked against its size and SHA-256)')
    .argument('<id>', 'the snapshot id (`trellis snapshots list`)')
    .requiredOption('--out <file>', 'where to write it (must not exist; written as 0600)')
    .option('--max-size <size>', 'refuse a snapshot larger than this (512M, 4G, ...)', parseSize, 64 * 2 ** 30)
    .option('--json', 'print the snapshot listing as JSON')
    .action(async (id: string, o) => {
      if (await stat(o.out).then(() => true, () => false)) throw new TrellisError('TRELLIS_E_ALREADY_EXISTS', `${o.out} exists; name a new file`);
      await withClients(async (c) => {
        const info = await download(c.snapshots.DownloadSnapshot({ id }, c.metadata), o.out, o.maxSize);
        if (o.json) print(JSON.stringify({ ...info, file: o.out }, null, 2));
        else print(`wrote snapshot ${info.id} to ${o.out} (${humanSize(Number(info.sizeBytes))}, sha256 ${info.sha256})`);
      });
    });

  snap.command('delete')
    .description('delete a snapshot from the hub (audited)')
    .argument('<id>', 'the snapshot id')
    .option('--json', 'print the deleted snapshot\'s listing as JSON')
    .action(async (id: string, o) => {
      await withClients(async (c) => {
        const s = await call<T.DeleteSnapshotRequest, T.SnapshotInfo__Output>(c, c.snapshots, c.snapshots.DeleteSnapshot, { id });
        if (o.json) print(JSON.stringify(s, null, 2));
        else print(`deleted snapshot ${s.id}`);
      });
    });

  snap.command('restore')
    .description('offline: make a hub data directory from a snapshot file (the hub there must not be running)')
    .argument('<file>', 'the snapshot file (from `snapshots download`)')
    .requiredOption('--data <dir>', 'the hub data directory to create: new or empty (see --force)')
    .option('--passphrase-file <file>', 'read the passphrase from this file (mode 0600; - for standard input); else asked in a terminal')
    .option('--store <url>', 'restore the documents, execution history and audit log into this EMPTY PostgreSQL database instead (postgres://USER@HOST[:PORT]/DATABASE; password from TRELLIS_STORE_PASSWORD); --data then keeps the keys and hub.json, pointed at it')
    .option('--force', 'replace a data directory (or with --store, a database) that is not empty (its content is deleted once the restore succeeded)')
    .option('--json', 'print what was restored as JSON')
    .addHelpText('after', `
Nothing is written to --data unless the whole file decrypts and authenticates: a wrong passphrase,
a damaged, truncated or altered file is refused. Afterwards start the hub with
\`trellis hub run --data DIR\`: agents reconnect with their certificates (same CA) and secrets open
(same master key). The hub's names, ports and settings are those of hub.json in the snapshot.
The restored hub is the hub as it was when the snapshot was made: revocations of agents and API
keys, user deactivations and password changes made since are not in it; repeat them.

With --store (a snapshot of a hub on PostgreSQL or on state.json), the database must be empty
(\`createdb\`; --force replaces what it holds): it is migrated and loaded in one transaction, only
after the whole file authenticated; its password comes from TRELLIS_STORE_PASSWORD (or the URL) and
goes to DIR/store-password (0600), never to hub.json. Stop every hub on that database first.

  TRELLIS_STORE_PASSWORD=... trellis snapshots restore /backup/hub.tsnap --data /var/lib/trellis-hub \\
      --store postgres://trellis@db.example/trellis_restored --passphrase-file /root/snap.pass
  trellis hub run --data /var/lib/trellis-hub`)
    .action(async (file: string, o) => {
      const passphrase = await readPassphrase(o.passphraseFile, { confirm: false });
      let r: import('../../hub/snapshots/restore.js').RestoreResult;
      let db: import('../../hub/snapshots/restore-pg.js').RestoreToDatabaseResult | undefined;
      if (o.store) {
        const { restoreSnapshotToDatabase } = await import('../../hub/snapshots/restore-pg.js');
        r = db = await restoreSnapshotToDatabase({ file, dataDir: o.data, passphrase, force: !!o.force, storeUrl: o.store, storePassword: process.env.TRELLIS_STORE_PASSWORD || undefined });
      } else {
        const { restoreSnapshot } = await import('../../hub/snapshots/restore.js');
        r = await restoreSnapshot({ file, dataDir: o.data, passphrase, force: !!o.force });
      }
      const m = r.manifest;
      if (o.json) {
        print(JSON.stringify({
          dataDir: r.dataDir, createdAtMs: m.createdAtMs, createdBy: m.createdBy, note: m.note, caFingerprint: m.caFingerprint, documents: r.documents, files: r.files, segments: r.segments, keyVersions: m.keyVersions, replaced: r.replaced,
          ...(db ? { database: db.database, replacedDocuments: db.copied.replaced, executions: db.history.executions, outputChunks: db.history.outputChunks, auditRecords: db.auditRecords } : {}),
        }, null, 2));
        return;
      }
      print(`restored the snapshot of ${when(m.createdAtMs)} (by ${m.createdBy}${m.note ? `: ${m.note}` : ''}) into ${r.dataDir}${r.replaced ? ' (its former content replaced)' : ''}`);
      if (db) print(`  into the database ${db.database}${db.copied.replaced ? ` (replacing ${db.copied.replaced} documents)` : ''}: ${r.documents} documents, ${db.history.executions} executions (${db.history.outputChunks} output chunks), ${db.auditRecords} audit records`);
      print(`  ${r.documents} documents, ${r.segments} history and audit segments, ${r.files} files; CA ${m.caFingerprint.slice(0, 16)}..., master key versions ${m.keyVersions.join(', ')}`);
      print(`  what changed after ${localIso(m.createdAtMs)} is not in it: repeat agent and API key revocations, user deactivations and password changes made since`);
      if (!db) {
        // A snapshot of a hub on PostgreSQL restored as files: hub.json still names that database.
        const kind = await readFile(`${r.dataDir}/hub.json`, 'utf8').then((t) => (JSON.parse(t) as { store?: { kind?: string } }).store?.kind, () => undefined);
        if (kind === 'postgres') print('  hub.json names the PostgreSQL database of the hub the snapshot was made on: to restore into a new database, run this again with --store postgres://USER@HOST/DB (history and audit go there)');
      }
      print(`  start it: trellis hub run --data ${r.dataDir}`);
      if (process.stderr.isTTY) printErr('note: the hub listens on the addresses and ports of the hub.json it restored; edit it first if this machine differs');
    });
}
