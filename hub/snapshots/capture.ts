/**
 * Taking a snapshot of a running hub at one consistent point in time.
 *
 * 1. Everything accepted so far is made durable (store, audit log, execution history).
 * 2. In one synchronous step (no other hub code runs in between): every collection is read
 *    through the Store interface, every history and audit segment file is opened and its size
 *    recorded, and the small files (config, CA, hub certificate, master key versions, CA rotation
 *    state) are read. The agent bundle (DATA/agent-bundle) is not carried: it is a cache the hub
 *    rebuilds for its own version. The in-process stores copy their documents synchronously when
 *    `list()` is called, so all collections come from the same instant; the segment sizes taken
 *    right after mean the history holds no execution the store does not know about yet.
 * 3. The segments are then copied up to their recorded sizes (cut at the last whole line) while the
 *    hub keeps writing after them: segment files are append-only, and an open descriptor keeps a
 *    segment readable even if retention unlinks it meanwhile.
 *
 * The synchronous step does file-system calls on the event loop: a few dozen open/fstat calls and
 * reads of files of a few KiB, bounded and short.
 */
import { closeSync, fstatSync, openSync, readdirSync, readFileSync, statSync, type Stats } from 'node:fs';
import { read } from 'node:fs';
import { promisify } from 'node:util';
import { mkdir, rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { COLLECTIONS, type Doc, type Store } from '../store/index.js';
import { hubPaths } from '../paths.js';
import { keysDir } from '../secrets/keyring.js';
import type { Manifest, PayloadWriter, SegmentArea } from './payload.js';

const readAt = promisify(read);
const SEGMENT_FILE = /^\d{12}(\.out)?\.jsonl$/;
const KEY_FILE = /^master-\d{1,9}\.key$/;

export interface CaptureSources {
  dataDir: string;
  store: Store;
  /** Makes everything accepted so far durable: store, audit log, execution history. */
  flush(): Promise<void>;
  caFingerprint(): string;
  trellisVersion: string;
  /**
   * When the audit log is not in DATA/audit (PostgreSQL: hub/audit/postgres.ts): writes every
   * record, as segment-file lines, to this new file (0600); the snapshot carries it as the one
   * audit segment, so a restore brings the audit log back as files.
   */
  exportAudit?: (file: string) => Promise<void>;
  /**
   * When the execution history is not in DATA/executions (PostgreSQL: hub/executions/export-pg.ts):
   * writes it as file-history segments into this new, empty directory (0700); the snapshot
   * carries them as its execution segments.
   */
  exportExecutions?: (dir: string) => Promise<void>;
}

interface OpenSegment { area: SegmentArea; name: string; fd: number; size: number }

/** The data-dir files a snapshot carries besides the store and the segments (relative paths). */
function fileNames(dataDir: string): string[] {
  const p = hubPaths(dataDir);
  const top = [p.config, p.caCert, p.caKey, p.hubCert, p.hubKey, p.caRotation, p.caNextKey, p.hubNextCert, p.hubNextKey, p.caPrevious]
    .map((f) => f.slice(dataDir.length + 1));
  const list = (dir: string, re?: RegExp) => {
    try { return readdirSync(dir).filter((f) => !re || re.test(f)).sort(); } catch (e) { if ((e as NodeJS.ErrnoException).code === 'ENOENT') return []; throw e; }
  };
  const keys = list(keysDir(dataDir), KEY_FILE).map((f) => `keys/${f}`);
  return [...top, ...keys];
}

function statIfFile(path: string): Stats | undefined {
  try {
    const st = statSync(path);
    return st.isFile() ? st : undefined;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

function openSegments(area: SegmentArea, dir: string): OpenSegment[] {
  let names: string[];
  try { names = readdirSync(dir).filter((f) => SEGMENT_FILE.test(f)).sort(); } catch (e) { if ((e as NodeJS.ErrnoException).code === 'ENOENT') return []; throw e; }
  const out: OpenSegment[] = [];
  for (const name of names) {
    let fd: number;
    try { fd = openSync(join(dir, name), 'r'); } catch (e) { if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue; throw e; } // dropped by retention just now
    out.push({ area, name, fd, size: fstatSync(fd).size });
  }
  return out;
}

/** The length of the longest prefix of the first `size` bytes that ends with a newline (0 if none). */
async function wholeLines(fd: number, size: number): Promise<number> {
  const block = Buffer.allocUnsafe(64 * 1024);
  let end = size;
  while (end > 0) {
    const start = Math.max(0, end - block.length);
    const { bytesRead } = await readAt(fd, block, 0, end - start, start);
    const nl = block.subarray(0, bytesRead).lastIndexOf(0x0a);
    if (nl >= 0) return start + nl + 1;
    end = start;
  }
  return 0;
}

async function* bytesOf(fd: number, size: number): AsyncGenerator<Buffer> {
  let pos = 0;
  while (pos < size) {
    const b = Buffer.allocUnsafe(Math.min(1024 * 1024, size - pos));
    const { bytesRead } = await readAt(fd, b, 0, b.length, pos);
    if (bytesRead === 0) throw new Error('segment file shrank while it was copied');
    pos += bytesRead;
    yield b.subarray(0, bytesRead);
  }
}

/** Writes the whole snapshot payload (manifest, collections, files, segments, end) to `out`. */
export async function capture(src: CaptureSources, out: PayloadWriter, o: { createdBy: string; note: string; now?: number }): Promise<Manifest> {
  await src.flush();
  // The audit table, exported before the consistent point (records are not referenced by the
  // state; a few written meanwhile may be missing). The file is unlinked at once, its fd kept.
  let exported: OpenSegment | undefined;
  if (src.exportAudit) {
    const tmp = join(hubPaths(src.dataDir).snapshots, `.audit-${randomBytes(6).toString('hex')}.jsonl`);
    try {
      await src.exportAudit(tmp);
      const fd = openSync(tmp, 'r');
      exported = { area: 'audit', name: '000000000001.jsonl', fd, size: fstatSync(fd).size };
    } finally {
      await rm(tmp, { force: true });
    }
  }
  // The execution tables, likewise before the consistent point: the export reads them in one
  // REPEATABLE READ transaction (state and output agree); executions started after it are not in
  // the snapshot, documents they touched may be. The files are unlinked at once, their fds kept.
  let exportedExecutions: OpenSegment[] | undefined;
  if (src.exportExecutions) {
    const tmp = join(hubPaths(src.dataDir).snapshots, `.executions-${randomBytes(6).toString('hex')}`);
    try {
      await mkdir(tmp, { mode: 0o700 });
      await src.exportExecutions(tmp);
      exportedExecutions = openSegments('executions', tmp);
    } catch (e) {
      if (exported) closeSync(exported.fd);
      throw e;
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }
  // ---- the consistent point: nothing below awaits until every source is pinned.
  // `hubs` is the cluster's live registry (heartbeats of running hubs), not state to restore.
  const lists = COLLECTIONS.filter((c) => c !== 'hubs').map((c) => [c, src.store.list<Doc>(c)] as const);
  const segments = [...(exportedExecutions ?? openSegments('executions', hubPaths(src.dataDir).executions)), ...(exported ? [exported] : openSegments('audit', hubPaths(src.dataDir).audit))];
  const files: Array<{ name: string; mode: number; body: Buffer }> = [];
  try {
    for (const name of fileNames(src.dataDir)) {
      const path = join(src.dataDir, name);
      const st = statIfFile(path);
      if (!st) continue;
      files.push({ name, mode: st.mode & 0o777, body: readFileSync(path) });
    }
    const caFingerprint = src.caFingerprint();
    // ---- end of the synchronous step
    const docs = await Promise.all(lists.map(async ([c, p]) => [c, await p] as const));
    for (const s of segments) s.size = await wholeLines(s.fd, s.size);
    const manifest: Manifest = {
      format: 1, createdAtMs: o.now ?? Date.now(), createdBy: o.createdBy, trellisVersion: src.trellisVersion, note: o.note, caFingerprint,
      collections: Object.fromEntries(docs.map(([c, d]) => [c, d.length])),
      files: files.map((f) => f.name),
      segments: {
        audit: segments.filter((s) => s.area === 'audit').map((s) => ({ name: s.name, size: s.size })),
        executions: segments.filter((s) => s.area === 'executions').map((s) => ({ name: s.name, size: s.size })),
      },
      keyVersions: files.filter((f) => f.name.startsWith('keys/')).map((f) => Number(/(\d+)\.key$/.exec(f.name)![1])).sort((a, b) => a - b),
    };
    await out.entry({ kind: 'manifest', name: 'manifest.json' }, Buffer.from(JSON.stringify(manifest), 'utf8'));
    for (const [c, d] of docs) {
      await out.entry({ kind: 'collection', name: c, count: d.length }, Buffer.from(d.map((x) => JSON.stringify(x) + '\n').join(''), 'utf8'));
    }
    for (const f of files) await out.entry({ kind: 'file', name: f.name, mode: f.mode }, f.body);
    for (const s of segments) await out.stream({ kind: 'segment', area: s.area, name: s.name, size: s.size }, bytesOf(s.fd, s.size));
    await out.end();
    return manifest;
  } finally {
    for (const s of segments) { try { closeSync(s.fd); } catch { /* already closed */ } }
  }
}
