/**
 * Reading a pack on the CLI side: a directory (walked; hidden files such as .git skipped;
 * symbolic links followed only while they stay inside it) or a tarball (.tar, .tar.gz, .tgz),
 * read in memory: absolute paths, `..`, links and devices are refused, and a tarball holding a
 * single top-level folder is unwrapped. The limits of {@link PACK_LIMITS} are checked while
 * reading, so an oversized pack fails before it is all in memory.
 */
import { lstat, readdir, readFile, realpath, stat } from 'node:fs/promises';
import { join, relative, isAbsolute, sep } from 'node:path';
import { Parser, type ReadEntry } from 'tar';
import { TrellisError } from '../errors.js';
import { PACK_LIMITS, packPathProblem, type PackFile } from './load.js';

const MIB = (n: number) => `${n / 1024 / 1024} MiB`;
/** A tarball on disk is at most this big (compressed or not). */
const MAX_TARBALL_BYTES = 2 * PACK_LIMITS.totalBytes;
/** Entries of any type (directories included) a tarball may hold. */
const MAX_TAR_ENTRIES = 4 * PACK_LIMITS.files;

const tooLarge = (msg: string) => new TrellisError('TRELLIS_E_TOO_LARGE', msg);
const invalid = (msg: string) => new TrellisError('TRELLIS_E_PACK_INVALID', msg);

/** Counts files and bytes against the pack limits as they are read. */
class Budget {
  files = 0;
  bytes = 0;
  constructor(private readonly source: string) {}

  file(path: string, size: number): void {
    if (++this.files > PACK_LIMITS.files) throw tooLarge(`${this.source}: more than ${PACK_LIMITS.files} files: a pack holds at most ${PACK_LIMITS.files}`);
    if (size > PACK_LIMITS.fileBytes) throw tooLarge(`${this.source}: ${path} is ${size} bytes: a pack file is at most ${MIB(PACK_LIMITS.fileBytes)}`);
    this.bytes += size;
    if (this.bytes > PACK_LIMITS.totalBytes) throw tooLarge(`${this.source}: more than ${MIB(PACK_LIMITS.totalBytes)} of files: a pack is at most ${MIB(PACK_LIMITS.totalBytes)}`);
  }
}

/** The files of a pack directory or tarball, with paths relative to the pack root. */
export async function readPackSource(source: string): Promise<PackFile[]> {
  let st;
  try { st = await stat(source); } catch (e) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `cannot read ${source}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (st.isDirectory()) return readPackDir(source);
  if (st.isFile() && /\.(tar|tar\.gz|tgz)$/i.test(source)) {
    if (st.size > MAX_TARBALL_BYTES) throw tooLarge(`${source} is ${st.size} bytes: a pack tarball is at most ${MIB(MAX_TARBALL_BYTES)}`);
    return readPackTarball(await readFile(source), source);
  }
  throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${source} is neither a directory nor a .tar, .tar.gz or .tgz file`);
}

const inside = (root: string, p: string) => {
  const r = relative(root, p);
  return r === '' || (!r.startsWith(`..${sep}`) && r !== '..' && !isAbsolute(r));
};

/** Walks a pack directory (sorted, hidden entries skipped). */
export async function readPackDir(dir: string): Promise<PackFile[]> {
  const root = await realpath(dir);
  const budget = new Budget(dir);
  const out: PackFile[] = [];
  const visited = new Set<string>();
  const walk = async (real: string, rel: string): Promise<void> => {
    if (visited.has(real)) return; // a link back to a folder already read
    visited.add(real);
    const names = (await readdir(real)).filter((n) => !n.startsWith('.')).sort();
    for (const name of names) {
      const relPath = rel ? `${rel}/${name}` : name;
      const bad = packPathProblem(relPath);
      if (bad) throw invalid(`${dir}: ${relPath}: ${bad}`);
      let abs = join(real, name);
      let s = await lstat(abs);
      if (s.isSymbolicLink()) {
        let target: string;
        try { target = await realpath(abs); } catch { throw invalid(`${dir}: ${relPath} is a broken symbolic link`); }
        if (!inside(root, target)) throw invalid(`${dir}: ${relPath} is a symbolic link leaving the pack (to ${target}): copy the file into the pack instead`);
        abs = target;
        s = await stat(abs);
      }
      if (s.isDirectory()) await walk(abs, relPath);
      else if (s.isFile()) {
        budget.file(relPath, s.size);
        const content = await readFile(abs);
        if (content.length > PACK_LIMITS.fileBytes) budget.file(relPath, content.length); // grew while reading
        out.push({ path: relPath, content, mode: s.mode & 0o7777 });
      } else throw invalid(`${dir}: ${relPath} is not a regular file (socket, device or FIFO)`);
    }
  };
  await walk(root, '');
  return out;
}

/** `./a/b` → `a/b`; refuses absolute paths and `..`. */
function entryPath(raw: string, source: string): string {
  let p = raw.replace(/\/+$/, '');
  while (p.startsWith('./')) p = p.slice(2);
  if (p === '.' || p === '') return '';
  if (p.startsWith('/') || /^[A-Za-z]:/.test(p)) throw invalid(`${source}: ${raw.slice(0, 256)}: absolute paths are not allowed in a pack tarball`);
  if (p.split('/').includes('..')) throw invalid(`${source}: ${raw.slice(0, 256)}: ".." is not allowed in a pack tarball`);
  return p;
}

const hidden = (p: string) => p.split('/').some((s) => s.startsWith('.'));

/** Reads a (gzipped) tarball held in memory. */
export function readPackTarball(data: Buffer, source = 'tarball'): Promise<PackFile[]> {
  return new Promise<PackFile[]>((resolve, reject) => {
    const budget = new Budget(source);
    const files: PackFile[] = [];
    let entries = 0;
    let done = false;
    const parser = new Parser({ strict: true, maxDecompressionRatio: 200 });
    const fail = (err: unknown) => {
      if (done) return;
      done = true;
      reject(err instanceof TrellisError ? err : invalid(`${source}: not a readable tarball: ${(err as Error).message ?? String(err)}`));
      parser.abort(err instanceof Error ? err : new Error(String(err)));
    };
    parser.on('error', fail);
    parser.on('entry', (e: ReadEntry) => {
      if (done) { e.resume(); return; }
      try {
        if (++entries > MAX_TAR_ENTRIES) throw tooLarge(`${source}: more than ${MAX_TAR_ENTRIES} entries`);
        const p = entryPath(e.path, source);
        switch (e.type) {
          case 'Directory':
            e.resume();
            return;
          case 'File':
          case 'OldFile':
          case 'ContiguousFile':
            break;
          case 'SymbolicLink':
          case 'Link':
            throw invalid(`${source}: ${p} is a ${e.type === 'Link' ? 'hard' : 'symbolic'} link: links are not allowed in a pack tarball`);
          default:
            throw invalid(`${source}: ${p} is a ${e.type} entry: a pack tarball holds only files and directories`);
        }
        if (hidden(p)) { e.resume(); return; }
        const bad = packPathProblem(p);
        if (bad) throw invalid(`${source}: ${p.slice(0, 256)}: ${bad}`);
        budget.file(p, e.size);
        const chunks: Buffer[] = [];
        let n = 0;
        e.on('data', (c: Buffer) => {
          n += c.length;
          if (n > PACK_LIMITS.fileBytes) fail(tooLarge(`${source}: ${p} is over ${MIB(PACK_LIMITS.fileBytes)}`));
          else chunks.push(c);
        });
        e.on('end', () => { if (!done) files.push({ path: p, content: Buffer.concat(chunks), mode: (e.mode ?? 0o644) & 0o7777 }); });
      } catch (err) {
        e.resume();
        fail(err);
      }
    });
    parser.on('end', () => {
      if (done) return;
      done = true;
      resolve(unwrap(files));
    });
    parser.end(data);
  });
}

/** A tarball made with `tar czf x.tgz mypack/` holds one folder: its content is the pack. */
function unwrap(files: PackFile[]): PackFile[] {
  if (files.length === 0) return files;
  const first = files[0]!.path.split('/')[0]!;
  const wrapped = files.every((f) => f.path.startsWith(`${first}/`));
  const sorted = (wrapped ? files.map((f) => ({ ...f, path: f.path.slice(first.length + 1) })) : files);
  return sorted.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}
