/**
 * Snapshots kept by the hub: DATA/snapshots/ (0700) holds `<id>.tsnap` (the encrypted snapshot,
 * 0600) and `<id>.json` (its listing: id, created, size, by whom, note, SHA-256 of the file).
 * A snapshot is written to a hidden temp file, fsynced and renamed, then its listing is written;
 * a file without a listing (a crash in between) or a temp file is removed at start. One snapshot
 * is made at a time. Format: ./format.ts (encryption) and ./payload.ts (content); restore:
 * ./restore.ts (offline).
 */
import { createHash } from 'node:crypto';
import { open, readdir, readFile, rename, unlink, chmod, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { ulidFactory } from '../../common/ids.js';
import { TrellisError } from '../../common/errors.js';
import { atomicWriteFile, ensureDir } from '../../common/fsutil.js';
import type { Logger } from '../../common/log.js';
import { SnapshotWriter, type KdfParams } from './format.js';
import { PayloadWriter } from './payload.js';
import { capture, type CaptureSources } from './capture.js';

export { restoreSnapshot, type RestoreOptions, type RestoreResult } from './restore.js';
export { MIN_PASSPHRASE } from './format.js';

export interface SnapshotInfo {
  id: string;
  createdAtMs: number;
  sizeBytes: number;
  createdBy: string;
  note: string;
  sha256: string;
  /** Documents, execution-history and audit segments carried (a summary for `list`). */
  documents: number;
  segments: number;
}

export interface SnapshotsOptions {
  /** DATA/snapshots */
  dir: string;
  sources: CaptureSources;
  log: Logger;
  /** scrypt parameters for new snapshots (tests may lower them). */
  kdf?: KdfParams;
}

const ID_RE = /^[0-9a-hjkmnp-tv-z]{26}$/;
const newId = ulidFactory();
export const MAX_NOTE = 256;

/** A snapshot id as the API accepts it (a lower-case ULID); anything else is refused before it nears a path. */
export function checkSnapshotId(id: unknown): string {
  if (typeof id !== 'string' || !ID_RE.test(id)) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'name a snapshot by its id (26 lower-case letters and digits): see `trellis snapshots list`');
  }
  return id;
}

export class Snapshots {
  private creating?: { by: string; since: number };

  private constructor(private readonly o: SnapshotsOptions) {}

  static async open(o: SnapshotsOptions): Promise<Snapshots> {
    await ensureDir(o.dir, 0o700);
    await chmod(o.dir, 0o700);
    const s = new Snapshots(o);
    await s.sweep();
    return s;
  }

  /** Removes temp files and snapshot files without a listing (a crash mid-create). */
  private async sweep(): Promise<void> {
    const names = await readdir(this.o.dir);
    for (const n of names) {
      const m = /^([0-9a-z]{26})\.tsnap$/.exec(n);
      const orphan = m && !names.includes(`${m[1]}.json`);
      if (n.startsWith('.') || orphan) {
        await unlink(join(this.o.dir, n)).catch(() => undefined);
        this.o.log.warn({ file: n }, 'removed an unfinished snapshot file (the hub stopped while writing it)');
      }
    }
  }

  async create(o: { passphrase: string; createdBy: string; note?: string }): Promise<SnapshotInfo> {
    const note = (o.note ?? '').slice(0, MAX_NOTE);
    if (this.creating) {
      throw new TrellisError('TRELLIS_E_RATE_LIMITED', `a snapshot is being made (started by ${this.creating.by} ${Math.round((Date.now() - this.creating.since) / 1000)}s ago); retry when it is done`);
    }
    this.creating = { by: o.createdBy, since: Date.now() };
    const id = newId().toLowerCase();
    const tmp = join(this.o.dir, `.${id}.tmp`);
    const final = join(this.o.dir, `${id}.tsnap`);
    let fh: FileHandle | undefined;
    try {
      fh = await open(tmp, 'wx', 0o600);
      await fh.chmod(0o600);
      const hash = createHash('sha256');
      let size = 0;
      const file = fh;
      const w = await SnapshotWriter.open(async (b) => { hash.update(b); size += b.length; await file.write(b); }, o.passphrase, { kdf: this.o.kdf });
      const started = Date.now();
      const manifest = await capture(this.o.sources, new PayloadWriter(w), { createdBy: o.createdBy, note });
      await fh.sync();
      await fh.close();
      fh = undefined;
      await rename(tmp, final);
      const info: SnapshotInfo = {
        id, createdAtMs: manifest.createdAtMs, sizeBytes: size, createdBy: o.createdBy, note, sha256: hash.digest('hex'),
        documents: Object.values(manifest.collections).reduce((a, b) => a + b, 0),
        segments: manifest.segments.audit.length + manifest.segments.executions.length,
      };
      await atomicWriteFile(join(this.o.dir, `${id}.json`), JSON.stringify(info) + '\n', { mode: 0o600 });
      this.o.log.info({ snapshot: id, bytes: size, ms: Date.now() - started, documents: info.documents, segments: info.segments }, 'snapshot created');
      return info;
    } catch (err) {
      if (fh) await fh.close().catch(() => undefined);
      await unlink(tmp).catch(() => undefined);
      await unlink(final).catch(() => undefined);
      throw err;
    } finally {
      this.creating = undefined;
    }
  }

  async list(): Promise<SnapshotInfo[]> {
    const out: SnapshotInfo[] = [];
    for (const n of await readdir(this.o.dir)) {
      const m = /^([0-9a-z]{26})\.json$/.exec(n);
      if (!m) continue;
      const info = await this.info(m[1]!).catch(() => undefined);
      if (info) out.push(info);
    }
    return out.sort((a, b) => a.createdAtMs - b.createdAtMs || a.id.localeCompare(b.id));
  }

  private async info(id: string): Promise<SnapshotInfo> {
    let text: string;
    try {
      text = await readFile(join(this.o.dir, `${checkSnapshotId(id)}.json`), 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new TrellisError('TRELLIS_E_NOT_FOUND', `no snapshot ${id}: see \`trellis snapshots list\``);
      throw e;
    }
    const info = JSON.parse(text) as SnapshotInfo;
    const st = await stat(join(this.o.dir, `${id}.tsnap`)).catch(() => undefined);
    if (!st) throw new TrellisError('TRELLIS_E_NOT_FOUND', `snapshot ${id} has a listing but no file (removed by hand?); delete it with \`trellis snapshots delete ${id}\``);
    return { ...info, sizeBytes: st.size };
  }

  /** The snapshot's listing and its file opened for reading (the caller closes it). */
  async open(id: string): Promise<{ info: SnapshotInfo; fh: FileHandle }> {
    const info = await this.info(id);
    const fh = await open(join(this.o.dir, `${id}.tsnap`), 'r');
    return { info, fh };
  }

  async delete(id: string): Promise<SnapshotInfo | undefined> {
    checkSnapshotId(id);
    const info = await this.info(id).catch((e) => { if ((e as TrellisError).code === 'TRELLIS_E_NOT_FOUND') return undefined; throw e; });
    let removed = false;
    for (const f of [`${id}.tsnap`, `${id}.json`]) {
      removed = (await unlink(join(this.o.dir, f)).then(() => true, (e: NodeJS.ErrnoException) => { if (e.code === 'ENOENT') return false; throw e; })) || removed;
    }
    if (!removed) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no snapshot ${id}: see \`trellis snapshots list\``);
    return info;
  }
}
