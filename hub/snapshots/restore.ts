/**
 * Offline restore: a snapshot file into a new hub data directory (the hub not running).
 *
 * Everything is written to a fresh hidden directory next to the target and moved into place
 * only after the whole file decrypted and authenticated (final chunk included) and its content
 * checked against the manifest: a wrong passphrase, a tampered, truncated or hostile file leaves
 * the target exactly as it was. The store is loaded through the Store interface (lowdb today), so
 * the snapshot's content stays backend-neutral.
 */
import { existsSync, readdirSync, readlinkSync, realpathSync, statSync } from 'node:fs';
import { chmod, mkdir, open, rename, rm, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { TrellisError } from '../../common/errors.js';
import { COLLECTIONS, openStore, type Collection, type Doc, type Store } from '../store/index.js';
import { hubPaths } from '../paths.js';
import { LOCK_FILE, lockDataDir, type DataDirLock } from '../lock/index.js';
import { SnapshotReader, fileSource } from './format.js';
import { PayloadParser, type EntryMeta, type Manifest } from './payload.js';

export interface RestoreOptions {
  /** The snapshot file. */
  file: string;
  /** The hub data directory to create (or, with force, replace). */
  dataDir: string;
  passphrase: string;
  /** Replace a data directory that is not empty. */
  force?: boolean;
  /**
   * Who holds the data directory, if anyone (a running hub): restore refuses then, force or not.
   * Defaults to {@link processHolding}.
   */
  heldBy?: (dataDir: string) => string | undefined;
  /**
   * The store the documents go to, opened for the new data directory (given the temp directory
   * that becomes it). Default: lowdb's DATA/state.json. A PostgreSQL target opens its (empty)
   * database here; documents go in with `insert`, so one already there is refused.
   */
  openStore?: (dir: string) => Promise<Store>;
  /**
   * Runs once the whole snapshot authenticated and was checked, on the temp directory that then
   * becomes the data directory (`snapshots restore --store`: loads the database, points hub.json
   * at it). Throwing aborts the restore: the target directory stays as it was.
   */
  beforeMove?: (tmpDir: string, manifest: Manifest) => Promise<void>;
}

export interface RestoreResult {
  manifest: Manifest;
  dataDir: string;
  documents: number;
  files: number;
  segments: number;
  replaced: boolean;
}

const invalid = (msg: string) => new TrellisError('TRELLIS_E_SNAPSHOT_INVALID', msg);
const KNOWN_COLLECTIONS: ReadonlySet<string> = new Set(COLLECTIONS);
const SEGMENT_FILE = /^\d{12}(\.out)?\.jsonl$/;
const TOP_FILES: ReadonlySet<string> = new Set(['hub.json', 'ca.pem', 'ca-key.pem', 'hub.pem', 'hub-key.pem', 'ca-rotation.json', 'ca-next-key.pem', 'hub-next.pem', 'hub-next-key.pem', 'ca-previous.pem']);
const KEY_FILE = /^keys\/master-\d{1,9}\.key$/;
/** One collection's documents are held in memory while they load (the store holds them all anyway). */
const MAX_COLLECTION_BYTES = 2 * 1024 * 1024 * 1024 - 1;

/** True when a file name from a snapshot is one restore writes (never a path outside the data dir). */
export function allowedFile(name: string): boolean {
  return TOP_FILES.has(name) || KEY_FILE.test(name);
}

/**
 * Linux: a process other than this one with a file of the data directory open (a running hub
 * keeps its audit segment and history open). Best effort elsewhere (undefined).
 */
export function processHolding(dataDir: string): string | undefined {
  if (process.platform !== 'linux' || !existsSync(dataDir)) return undefined;
  let real: string;
  try { real = realpathSync(dataDir); } catch { return undefined; }
  let pids: string[];
  try { pids = readdirSync('/proc').filter((p) => /^\d+$/.test(p) && Number(p) !== process.pid); } catch { return undefined; }
  for (const pid of pids) {
    let fds: string[];
    try { fds = readdirSync(`/proc/${pid}/fd`); } catch { continue; } // gone, or not ours to see
    for (const fd of fds) {
      let target: string;
      try { target = readlinkSync(`/proc/${pid}/fd/${fd}`); } catch { continue; }
      if (target === real || target.startsWith(`${real}/`)) return `process ${pid} has ${target} open`;
    }
  }
  return undefined;
}

/** Empty but for the lock this restore holds. */
function isEmptyDir(dir: string): boolean {
  return readdirSync(dir).every((n) => n === LOCK_FILE);
}

/** Writes the entries of a snapshot under `root`, checking every name. */
class Extractor {
  manifest?: Manifest;
  private store?: Store;
  private body: Buffer[] = [];
  private bodyBytes = 0;
  private fh?: FileHandle;
  private readonly puts: Array<Promise<void>> = [];
  readonly counts = { documents: 0, files: 0, segments: 0 };
  readonly collections = new Map<string, number>();
  readonly fileNames: string[] = [];
  readonly segmentNames: string[] = [];

  constructor(private readonly root: string, private readonly openTarget: (dir: string) => Promise<Store>) {}

  async begin(m: EntryMeta): Promise<void> {
    this.body = [];
    this.bodyBytes = 0;
    switch (m.kind) {
      case 'manifest':
        if (this.manifest) throw invalid('snapshot has two manifests; the file is damaged');
        return;
      case 'collection':
        if (!KNOWN_COLLECTIONS.has(m.name)) throw invalid(`snapshot holds an unknown store collection "${m.name.slice(0, 64)}" (made by a newer Trellis?)`);
        if (this.collections.has(m.name)) throw invalid(`snapshot holds collection ${m.name} twice; the file is damaged`);
        if (m.size > MAX_COLLECTION_BYTES) throw invalid(`snapshot collection ${m.name} is too large to load (${m.size} bytes)`);
        return;
      case 'file':
        if (!allowedFile(m.name)) throw invalid(`snapshot names a file "${m.name.slice(0, 128)}" that is not part of a hub data directory; refused`);
        if (this.fileNames.includes(m.name)) throw invalid(`snapshot holds ${m.name} twice; the file is damaged`);
        this.fileNames.push(m.name);
        this.fh = await this.create(m.name);
        return;
      case 'segment': {
        if ((m.area !== 'audit' && m.area !== 'executions') || !SEGMENT_FILE.test(m.name)) throw invalid(`snapshot names a history segment "${String(m.area).slice(0, 16)}/${m.name.slice(0, 64)}" that is not one; refused`);
        const rel = `${m.area}/${m.name}`;
        if (this.segmentNames.includes(rel)) throw invalid(`snapshot holds segment ${rel} twice; the file is damaged`);
        this.segmentNames.push(rel);
        this.fh = await this.create(rel);
        return;
      }
      default:
        throw invalid('snapshot has an entry of an unknown kind; the file is damaged');
    }
  }

  private async create(rel: string): Promise<FileHandle> {
    const path = join(this.root, rel);
    await mkdir(dirname(path), { recursive: true, mode: 0o700 });
    const fh = await open(path, 'wx', 0o600);
    await fh.chmod(0o600);
    return fh;
  }

  async data(b: Buffer): Promise<void> {
    if (this.fh) { await this.fh.write(b); return; }
    this.body.push(Buffer.from(b)); // the parser's buffer is reused
    this.bodyBytes += b.length;
  }

  async end(m: EntryMeta): Promise<void> {
    if (this.fh) {
      await this.fh.sync();
      await this.fh.close();
      this.fh = undefined;
      if (m.kind === 'file') this.counts.files++;
      else this.counts.segments++;
      return;
    }
    const text = Buffer.concat(this.body, this.bodyBytes).toString('utf8');
    this.body = [];
    if (m.kind === 'manifest') {
      let man: Manifest;
      try { man = JSON.parse(text) as Manifest; } catch { throw invalid('snapshot manifest is not JSON; the file is damaged'); }
      if (!man || man.format !== 1 || typeof man.collections !== 'object' || !Array.isArray(man.files) || typeof man.segments !== 'object') throw invalid('snapshot manifest is incomplete; the file is damaged');
      this.manifest = man;
      this.store = await this.openTarget(this.root);
      return;
    }
    // A collection: one document per line, loaded through the Store interface.
    const col = m.name as Collection;
    let n = 0;
    for (const line of text.split('\n')) {
      if (!line) continue;
      let doc: Doc;
      try { doc = JSON.parse(line) as Doc; } catch { throw invalid(`snapshot collection ${col} has a line that is not JSON; the file is damaged`); }
      if (!doc || typeof doc.id !== 'string') throw invalid(`snapshot collection ${col} has a document without an id; the file is damaged`);
      this.puts.push(this.store!.insert(col, doc));
      n++;
    }
    if (m.count !== undefined && m.count !== n) throw invalid(`snapshot collection ${col} says ${m.count} documents and holds ${n}; the file is damaged`);
    this.collections.set(col, n);
    this.counts.documents += n;
  }

  /** Checks the content against the manifest and makes the store durable. */
  async finish(): Promise<Manifest> {
    const man = this.manifest;
    if (!man) throw invalid('snapshot has no manifest; the file is damaged');
    await Promise.all(this.puts);
    for (const [c, n] of Object.entries(man.collections)) {
      if ((this.collections.get(c) ?? -1) !== n) throw invalid(`snapshot manifest lists ${n} documents of ${c}, the file holds ${this.collections.get(c) ?? 'none'}; it is damaged`);
    }
    const missing = man.files.filter((f) => !this.fileNames.includes(f));
    if (missing.length) throw invalid(`snapshot manifest lists files the file does not hold (${missing.slice(0, 5).join(', ')}); it is damaged`);
    const segs = [...man.segments.audit.map((s) => `audit/${s.name}`), ...man.segments.executions.map((s) => `executions/${s.name}`)];
    if (segs.length !== this.segmentNames.length || segs.some((s) => !this.segmentNames.includes(s))) throw invalid('snapshot manifest and history segments do not match; the file is damaged');
    for (const need of ['hub.json', 'ca.pem', 'hub.pem', 'hub-key.pem']) {
      if (!this.fileNames.includes(need)) throw invalid(`snapshot has no ${need}; it cannot make a hub data directory`);
    }
    if (!this.fileNames.some((f) => KEY_FILE.test(f))) throw invalid('snapshot has no master key; sealed values could not be opened');
    await this.store!.close();
    this.store = undefined;
    return man;
  }

  async abort(): Promise<void> {
    await this.fh?.close().catch(() => undefined);
    await this.store?.close().catch(() => undefined);
    await Promise.allSettled(this.puts);
  }
}

/** Restores `file` into `dataDir`. Throws (and writes nothing to `dataDir`) on any failure. */
export async function restoreSnapshot(o: RestoreOptions): Promise<RestoreResult> {
  const dataDir = resolve(o.dataDir);
  const exists = existsSync(dataDir);
  if (exists && !statSync(dataDir).isDirectory()) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${dataDir} is a file, not a directory: name a new or empty data directory`);
  // The data-dir lock (TRELLIS_E_LOCKED naming a running hub) is held until the restored
  // directory moves into place; the /proc scan also catches a process that holds no lock.
  let lock: DataDirLock | undefined = exists ? lockDataDir(dataDir, 'snapshots restore') : undefined;
  try {
    return await restoreLocked(o, dataDir, exists, () => { lock?.release(); lock = undefined; });
  } finally {
    lock?.release();
  }
}

async function restoreLocked(o: RestoreOptions, dataDir: string, exists: boolean, unlock: () => void): Promise<RestoreResult> {
  const heldBy = (o.heldBy ?? processHolding)(dataDir);
  if (heldBy) throw new TrellisError('TRELLIS_E_IN_USE', `${dataDir} is in use (${heldBy}): stop the hub before restoring into its data directory; nothing was changed`);
  const empty = !exists || isEmptyDir(dataDir);
  if (!empty && !o.force) {
    throw new TrellisError('TRELLIS_E_ALREADY_EXISTS', `${dataDir} is not empty: restore makes a new hub data directory; name a new or empty one, or pass --force to replace this one (its content is deleted once the restore succeeded)`);
  }
  const parent = dirname(dataDir);
  await mkdir(parent, { recursive: true, mode: 0o700 });
  const tmp = join(parent, `.${basename(dataDir)}.restore-${randomBytes(6).toString('hex')}`);
  await mkdir(tmp, { mode: 0o700 });
  await chmod(tmp, 0o700);
  const x = new Extractor(tmp, o.openStore ?? ((dir) => openStore({ kind: 'lowdb', path: hubPaths(dir).store })));
  let fh: FileHandle | undefined;
  try {
    try {
      fh = await open(o.file, 'r');
    } catch (e) {
      throw new TrellisError('TRELLIS_E_NOT_FOUND', `cannot open the snapshot ${o.file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    const reader = await SnapshotReader.open(fileSource(fh), o.passphrase);
    const parser = new PayloadParser(x);
    for (let chunk = await reader.next(); chunk; chunk = await reader.next()) await parser.push(chunk);
    parser.finish();
    const manifest = await x.finish();
    await fh.close();
    fh = undefined;
    await o.beforeMove?.(tmp, manifest);
    // Into place: an empty (or missing) target is replaced by the rename itself; a full one is
    // moved aside first and deleted after.
    let replaced = false;
    unlock();
    if (exists && !empty) {
      const aside = join(parent, `.${basename(dataDir)}.replaced-${randomBytes(6).toString('hex')}`);
      await rename(dataDir, aside);
      try { await rename(tmp, dataDir); } catch (e) { await rename(aside, dataDir).catch(() => undefined); throw e; }
      await rm(aside, { recursive: true, force: true });
      replaced = true;
    } else {
      await rename(tmp, dataDir); // over an empty directory, or where there was none
    }
    await chmod(dataDir, 0o700);
    return { manifest, dataDir, ...x.counts, replaced };
  } catch (err) {
    await x.abort();
    await fh?.close().catch(() => undefined);
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
}

/**
 * The data-dir files a snapshot carries (CA certificate and key, hub certificate, master key
 * versions, config, CA rotation state), by relative path, once the whole snapshot has decrypted
 * and authenticated; store documents and history are read past, not kept. For bringing the keys
 * of an existing hub to a new one (`hub init --join … --from SNAPSHOT`) without them ever passing
 * through the database.
 */
export async function readSnapshotFiles(o: { file: string; passphrase: string; want?: (name: string) => boolean }): Promise<{ manifest: Manifest; files: Map<string, Buffer> }> {
  const files = new Map<string, Buffer>();
  let manifest: Manifest | undefined;
  let cur: { name: string; parts: Buffer[] } | undefined;
  let manifestParts: Buffer[] | undefined;
  const fh = await open(o.file, 'r').catch((e: NodeJS.ErrnoException) => { throw new TrellisError('TRELLIS_E_NOT_FOUND', `cannot open the snapshot ${o.file}: ${e.code ?? e.message}`); });
  try {
    const reader = await SnapshotReader.open(fileSource(fh), o.passphrase);
    const parser = new PayloadParser({
      begin: async (m) => {
        if (m.kind === 'manifest') manifestParts = [];
        else if (m.kind === 'file') {
          if (!allowedFile(m.name)) throw invalid(`snapshot names a file "${m.name.slice(0, 128)}" that is not part of a hub data directory; refused`);
          if (!o.want || o.want(m.name)) cur = { name: m.name, parts: [] };
        }
      },
      data: async (b) => { (cur?.parts ?? manifestParts)?.push(Buffer.from(b)); },
      end: async (m) => {
        if (m.kind === 'manifest') {
          try { manifest = JSON.parse(Buffer.concat(manifestParts ?? []).toString('utf8')) as Manifest; } catch { throw invalid('snapshot manifest is not JSON; the file is damaged'); }
          manifestParts = undefined;
        } else if (cur) {
          files.set(cur.name, Buffer.concat(cur.parts));
          cur = undefined;
        }
      },
    });
    for (let chunk = await reader.next(); chunk; chunk = await reader.next()) await parser.push(chunk);
    parser.finish();
  } finally {
    await fh.close();
  }
  if (!manifest) throw invalid('snapshot has no manifest; the file is damaged');
  return { manifest, files };
}
