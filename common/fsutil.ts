/**
 * Small file-system helpers shared by the hub and the agent.
 *
 * `atomicWriteFile` is the only way Trellis replaces a state file: readers (and a process that
 * restarts after a crash) see either the old content or the new content, never a torn mix.
 */
import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  createReadStream,
  fchmodSync,
  fsyncSync,
  openSync,
  readFileSync,
  renameSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { mkdir, open, readdir, readFile, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { z } from 'zod';
import { TrellisError } from './errors.js';

export interface AtomicWriteOptions {
  /**
   * Permission bits of the written file, applied regardless of the process umask.
   * @default 0o600
   */
  mode?: number;
}

const TEMP_SUFFIX = '.tmp';

/** A temp name in the target's directory (rename is only atomic within one file system). */
function tempPathFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}${TEMP_SUFFIX}`);
}

/**
 * Replaces `path` with `data` atomically and durably: the data goes to a new temp file in the
 * same directory (created exclusively with `mode`, then chmod'ed so the umask cannot widen or
 * narrow it), is fsync'ed, renamed over the target, and the directory is fsync'ed so the rename
 * itself survives a power cut. On failure the temp file is removed and the target is untouched.
 */
export async function atomicWriteFile(path: string, data: string | Buffer, opts: AtomicWriteOptions = {}): Promise<void> {
  const mode = opts.mode ?? 0o600;
  const tmp = tempPathFor(path);
  let fh: FileHandle | undefined;
  let renamed = false;
  try {
    fh = await open(tmp, 'wx', mode);
    await fh.chmod(mode);
    await fh.writeFile(data);
    await fh.sync();
    await fh.close();
    fh = undefined;
    await rename(tmp, path);
    renamed = true;
    await fsyncDir(dirname(path));
  } catch (err) {
    if (fh) await fh.close().catch(() => undefined);
    if (!renamed) await unlink(tmp).catch(() => undefined);
    throw err;
  }
}

/** Synchronous twin of {@link atomicWriteFile}, for the few places that cannot await (exit hooks). */
export function atomicWriteFileSync(path: string, data: string | Buffer, opts: AtomicWriteOptions = {}): void {
  const mode = opts.mode ?? 0o600;
  const tmp = tempPathFor(path);
  let fd: number | undefined;
  let renamed = false;
  try {
    fd = openSync(tmp, 'wx', mode);
    fchmodSync(fd, mode);
    writeFileSync(fd, data);
    fsyncSync(fd);
    closeSync(fd);
    fd = undefined;
    renameSync(tmp, path);
    renamed = true;
    fsyncDirSync(dirname(path));
  } catch (err) {
    if (fd !== undefined) {
      try { closeSync(fd); } catch { /* already failing; keep the first error */ }
    }
    if (!renamed) {
      try { unlinkSync(tmp); } catch { /* it may never have been created */ }
    }
    throw err;
  }
}

// Windows cannot open a directory for fsync; NTFS journals the rename itself.
const CAN_FSYNC_DIR = process.platform !== 'win32';

async function fsyncDir(dir: string): Promise<void> {
  if (!CAN_FSYNC_DIR) return;
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

function fsyncDirSync(dir: string): void {
  if (!CAN_FSYNC_DIR) return;
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Removes temp files that an {@link atomicWriteFile} of `path` left behind when its process was
 * killed mid-write. Call it only while holding the file (at open), never while another process
 * may be writing it. Returns how many were removed.
 */
export async function removeStaleTempFiles(path: string): Promise<number> {
  const prefix = `.${basename(path)}.`;
  let names: string[];
  try {
    names = await readdir(dirname(path));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw err;
  }
  let removed = 0;
  for (const name of names) {
    if (!name.startsWith(prefix) || !name.endsWith(TEMP_SUFFIX)) continue;
    await unlink(join(dirname(path), name)).then(() => removed++, () => undefined);
  }
  return removed;
}

/** Creates `path` (and missing parents) with `mode` if it does not exist; an existing directory is left as is. */
export async function ensureDir(path: string, mode = 0o700): Promise<void> {
  await mkdir(path, { recursive: true, mode });
}

/** The file's content, or undefined when it does not exist. Other errors (EACCES, EISDIR, ...) throw. */
export async function readFileIfExists(path: string): Promise<Buffer | undefined> {
  try {
    return await readFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** The SHA-256 of a file's content, lower-case hex, read as a stream. */
export function sha256File(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(file).on('data', (d) => h.update(d)).on('error', reject).on('end', () => resolve(h.digest('hex')));
  });
}

/** Reads a JSON state file and validates it: TRELLIS_E_CONFIG naming the file and each bad field. */
export function readJsonFile<S extends z.ZodTypeAny>(path: string, schema: S): z.output<S> {
  let raw: unknown;
  try { raw = JSON.parse(readFileSync(path, 'utf8')); } catch (e) {
    throw new TrellisError('TRELLIS_E_CONFIG', `cannot parse ${path}: ${(e as Error).message}`);
  }
  const r = schema.safeParse(raw);
  if (!r.success) throw new TrellisError('TRELLIS_E_CONFIG', `invalid ${path}: ${r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  return r.data as z.output<S>;
}
