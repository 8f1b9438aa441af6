/**
 * The audit log: who did what, where, to what, with what result.
 *
 * On disk (DATA/audit/, 0700): append-only segment files `<12-digit sequence>.jsonl` (0600), one
 * JSON object per line: `{"id","timeMs","actor","tenant","method","target","result",
 * "sourceAddress","detail"}`. Ids are lower-case ULIDs, monotonic within the process, so they
 * sort in time order. Bytes once written are never rewritten: a new segment starts when the
 * current one passes `maxSegmentBytes`, after a write error, and at start when the last segment
 * ends in a torn line (a crash mid-write); readers skip any line that does not parse.
 *
 * `record()` never waits for the disk: records are queued and written in batches (one append and
 * one fdatasync per batch) on a short timer, when the queue gets long, on `flush()` and on
 * `close()`. A crash loses at most the batch not yet written. Retention (at most `maxSegments`
 * files, none whose last write is older than `maxAgeMs`) runs at start and on each rotation.
 */
import { monotonicUlidFactory } from '../../common/ids.js';
import { open, readdir, readFile, stat, unlink, chmod, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { ensureDir } from '../../common/fsutil.js';
import { silentLogger, type Logger } from '../../common/log.js';
import type { AuditBackend, AuditEntry, AuditQuery, AuditRecord, AuditSink } from './types.js';
import { SerialFlusher } from '../../common/serial.js';
export type { AuditBackend, AuditEntry, AuditQuery, AuditRecord, AuditSink } from './types.js';

export interface AuditLogOptions {
  /** The segment directory (hubPaths(dataDir).audit). */
  dir: string;
  /** Start a new segment once the current one is this large. @default 16 MiB */
  maxSegmentBytes?: number;
  /** Keep at most this many segments, the current one included. @default 20 */
  maxSegments?: number;
  /** Drop segments whose last write is older than this. @default 90 days */
  maxAgeMs?: number;
  /** Longest a record waits in memory before its batch is written. @default 100 */
  flushIntervalMs?: number;
  /** Records queued beyond this are dropped (oldest first) and counted; only a dead disk gets here. @default 100,000 */
  maxQueued?: number;
  log?: Logger;
}

export const DEFAULT_QUERY_LIMIT = 100;
export const MAX_QUERY_LIMIT = 10_000;
const BATCH_RECORDS = 1000; // a queue this long is written at once rather than on the timer
export const SEGMENT_RE = /^(\d{12})\.jsonl$/;
const segmentName = (seq: number) => `${String(seq).padStart(12, '0')}.jsonl`;

/** Defensive: token-shaped substrings never reach the disk (ids are kept, secrets replaced). */
export function redactCredentials(s: string): string {
  return s
    .replace(/tls1_[A-Za-z0-9_-]*/g, 'tls1_[REDACTED]')
    .replace(/tak1_(?:([0-9a-f]{16})_)?[A-Za-z0-9_-]*/g, (_m, id?: string) => (id ? `tak1_${id}_[REDACTED]` : 'tak1_[REDACTED]'))
    .replace(/tj1\.(?:([0-9a-f]{16})\.)?[A-Za-z0-9_.-]*/g, (_m, id?: string) => (id ? `tj1.${id}.[REDACTED]` : 'tj1.[REDACTED]'));
}

/** The record matches the query's filters (not its limit). */
export function matchesAudit(r: AuditRecord, q: AuditQuery): boolean {
  if (q.sinceMs && r.timeMs < q.sinceMs) return false;
  if (q.actor && r.actor !== q.actor) return false;
  if (q.methodContains && !r.method.toLowerCase().includes(q.methodContains.toLowerCase())) return false;
  return true;
}

export function clampLimit(limit: number | undefined): number {
  if (!limit || limit <= 0 || !Number.isFinite(limit)) return DEFAULT_QUERY_LIMIT;
  return Math.min(Math.floor(limit), MAX_QUERY_LIMIT);
}

/** The entry as stored: a time-ordered id, fields cut to their limits, credentials redacted. */
export function toAuditRecord(e: AuditEntry, newId: (timeMs: number) => string): AuditRecord {
  const timeMs = Number.isFinite(e.timeMs) ? e.timeMs : Date.now();
  return {
    id: newId(timeMs).toLowerCase(), timeMs, actor: String(e.actor).slice(0, 256), tenant: String(e.tenant).slice(0, 64),
    method: String(e.method).slice(0, 256), target: redactCredentials(String(e.target)).slice(0, 1024), result: e.result,
    sourceAddress: String(e.sourceAddress).slice(0, 128), detail: redactCredentials(String(e.detail)).slice(0, 1024),
  };
}

/** One line of a segment file as a record, or undefined (a torn or foreign line). */
export function parseLine(line: string): AuditRecord | undefined {
  if (!line) return undefined;
  try {
    const r = JSON.parse(line) as AuditRecord;
    return r && typeof r.id === 'string' && typeof r.timeMs === 'number' && typeof r.method === 'string' ? r : undefined;
  } catch {
    return undefined; // a torn line from a crash mid-write
  }
}

async function fsyncDir(dir: string): Promise<void> {
  if (process.platform === 'win32') return;
  const fh = await open(dir, 'r');
  try { await fh.sync(); } finally { await fh.close(); }
}

type Follower = { onRecord: (r: AuditRecord) => void; onEnd?: () => void };

export class AuditLog implements AuditBackend {
  private readonly newId = monotonicUlidFactory();
  private readonly followers = new Set<Follower>();
  private queue: AuditRecord[] = [];
  private fh?: FileHandle;
  private seq = 0;
  private size = 0;
  /** The current segment may end in a partial write: the next batch starts a new one. */
  private broken = false;
  private readonly flusher = new SerialFlusher(() => this.writeQueued());
  private closed = false;
  private following = true;
  private failing = false;
  /** Records dropped because the queue overflowed (the disk kept failing). */
  dropped = 0;
  /** Records waiting to be written (metrics). */
  get queued(): number { return this.queue.length; }

  private constructor(private readonly o: Required<AuditLogOptions>) {}

  static async open(opts: AuditLogOptions): Promise<AuditLog> {
    const log = new AuditLog({
      dir: opts.dir,
      maxSegmentBytes: opts.maxSegmentBytes ?? 16 * 2 ** 20,
      maxSegments: opts.maxSegments ?? 20,
      maxAgeMs: opts.maxAgeMs ?? 90 * 86_400_000,
      flushIntervalMs: opts.flushIntervalMs ?? 100,
      maxQueued: opts.maxQueued ?? 100_000,
      log: opts.log ?? silentLogger(),
    });
    if (log.o.maxSegments < 1 || log.o.maxSegmentBytes < 1) throw new RangeError('maxSegments and maxSegmentBytes must be at least 1');
    await ensureDir(log.o.dir, 0o700);
    await chmod(log.o.dir, 0o700);
    await log.start();
    return log;
  }

  /** Opens the newest segment for appending, or starts a new one when it is full or torn. */
  private async start(): Promise<void> {
    const segs = await this.segments();
    const last = segs.at(-1);
    if (last) {
      const path = join(this.o.dir, segmentName(last));
      const st = await stat(path);
      let clean = st.size === 0;
      if (!clean) {
        const fh = await open(path, 'r');
        try {
          const b = Buffer.alloc(1);
          await fh.read(b, 0, 1, st.size - 1);
          clean = b[0] === 0x0a;
        } finally { await fh.close(); }
      }
      const expired = st.mtimeMs < Date.now() - this.o.maxAgeMs; // then retention drops it below
      if (clean && !expired && st.size < this.o.maxSegmentBytes) {
        this.fh = await open(path, 'a', 0o600);
        await this.fh.chmod(0o600);
        this.seq = last;
        this.size = st.size;
      } else {
        if (!clean) this.o.log.warn({ segment: segmentName(last) }, 'audit segment ends in a torn line (crash mid-write); it is kept as is and a new segment starts');
        this.seq = last;
      }
    }
    if (!this.fh) await this.openNext();
    else await this.retain();
  }

  /** Sequence numbers of the segment files, oldest first. */
  private async segments(): Promise<number[]> {
    const names = await readdir(this.o.dir).catch((e: NodeJS.ErrnoException) => { if (e.code === 'ENOENT') return [] as string[]; throw e; });
    return names.map((n) => SEGMENT_RE.exec(n)).filter((m): m is RegExpExecArray => !!m).map((m) => Number(m[1])).sort((a, b) => a - b);
  }

  private async openNext(): Promise<void> {
    await this.fh?.close().catch(() => undefined);
    this.fh = undefined;
    const seq = this.seq + 1;
    const fh = await open(join(this.o.dir, segmentName(seq)), 'ax', 0o600);
    await fh.chmod(0o600);
    await fsyncDir(this.o.dir);
    this.fh = fh;
    this.seq = seq;
    this.size = 0;
    this.broken = false;
    await this.retain();
  }

  /** Drops the oldest segments beyond maxSegments and those last written before maxAgeMs; never the current one. */
  private async retain(): Promise<void> {
    const old = (await this.segments()).filter((s) => s !== this.seq);
    const excess = old.length + 1 - this.o.maxSegments;
    const cutoff = Date.now() - this.o.maxAgeMs;
    let removed = 0;
    for (let i = 0; i < old.length; i++) {
      const path = join(this.o.dir, segmentName(old[i]!));
      let drop = i < excess;
      if (!drop) drop = await stat(path).then((s) => s.mtimeMs < cutoff, () => false);
      if (drop) await unlink(path).then(() => removed++, () => undefined);
    }
    if (removed) this.o.log.info({ removed, kept: old.length - removed + 1 }, 'audit segments removed by retention');
  }

  // ------------------------------------------------------------ writing

  /** Queues one record (never waits for the disk) and hands it to live followers. */
  record(e: AuditEntry): void {
    if (this.closed) {
      this.o.log.warn({ method: e.method }, 'audit record after close; not written');
      return;
    }
    const r = toAuditRecord(e, this.newId);
    this.queue.push(r);
    if (this.queue.length > this.o.maxQueued) {
      const n = this.queue.length - this.o.maxQueued;
      this.queue.splice(0, n);
      this.dropped += n;
    }
    if (this.queue.length >= BATCH_RECORDS) this.flusher.schedule(0);
    else this.flusher.schedule(this.o.flushIntervalMs);
    for (const f of this.followers) {
      try { f.onRecord(r); } catch (err) { this.o.log.error({ err }, 'audit follower failed'); }
    }
  }

  /** Writes everything queued so far (one append + fdatasync per batch); resolves when it is on disk. */
  flush(): Promise<void> {
    return this.flusher.flush();
  }

  private async writeQueued(): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.queue;
      this.queue = [];
      const buf = Buffer.from(batch.map((r) => JSON.stringify(r) + '\n').join(''), 'utf8');
      try {
        if (!this.fh || this.broken) await this.openNext();
        await this.fh!.appendFile(buf);
        await this.fh!.datasync();
        this.size += buf.length;
        if (this.failing) { this.failing = false; this.o.log.info('audit log writable again'); }
      } catch (err) {
        // Keep the batch for the next attempt; what reached the file may be a torn line, so
        // the next batch goes to a fresh segment instead of appending after it.
        this.broken = true;
        this.queue = batch.concat(this.queue);
        if (this.queue.length > this.o.maxQueued) { this.dropped += this.queue.length - this.o.maxQueued; this.queue.splice(0, this.queue.length - this.o.maxQueued); }
        if (!this.failing) this.o.log.error({ err, queued: this.queue.length }, 'writing the audit log failed; retrying');
        this.failing = true;
        if (!this.closed) this.flusher.schedule(Math.max(this.o.flushIntervalMs, 1000));
        throw err;
      }
      if (this.size >= this.o.maxSegmentBytes) await this.openNext().catch((err) => { this.broken = true; this.o.log.error({ err }, 'audit segment rotation failed'); });
    }
  }

  // ------------------------------------------------------------ reading

  /** The most recent `limit` matching records, oldest first. Writes what is queued first. */
  async query(q: AuditQuery = {}): Promise<AuditRecord[]> {
    await this.flush().catch(() => undefined);
    const limit = clampLimit(q.limit);
    const segs = await this.segments();
    const out: AuditRecord[][] = [];
    let n = 0;
    for (let i = segs.length - 1; i >= 0 && n < limit; i--) {
      const path = join(this.o.dir, segmentName(segs[i]!));
      if (q.sinceMs && i < segs.length - 1) {
        const mtime = await stat(path).then((s) => s.mtimeMs, () => 0);
        if (mtime < q.sinceMs - 1000) break; // every record in it (and in older ones) is before sinceMs
      }
      const text = await readFile(path, 'utf8').catch((e: NodeJS.ErrnoException) => { if (e.code === 'ENOENT') return ''; throw e; });
      const found: AuditRecord[] = [];
      for (const line of text.split('\n')) {
        const r = parseLine(line);
        if (r && matchesAudit(r, q)) found.push(r);
      }
      const take = found.slice(Math.max(0, found.length - (limit - n)));
      out.unshift(take);
      n += take.length;
    }
    return out.flat();
  }

  /**
   * Calls `onRecord` for every record from now on; `onEnd` when the log stops following
   * (`endFollowers`, `close`). Returns the unsubscribe function.
   */
  follow(onRecord: (r: AuditRecord) => void, onEnd?: () => void): () => void {
    const f: Follower = { onRecord, onEnd };
    if (!this.following) { onEnd?.(); return () => undefined; }
    this.followers.add(f);
    return () => { this.followers.delete(f); };
  }

  /** Live followers (a test hook: a finished ListAudit call leaves none behind). */
  get followerCount(): number { return this.followers.size; }

  /** Ends every follower, now and later (before a drain, so live ListAudit streams do not hold the server open). */
  endFollowers(): void {
    this.following = false;
    const all = [...this.followers];
    this.followers.clear();
    for (const f of all) {
      try { f.onEnd?.(); } catch (err) { this.o.log.error({ err }, 'audit follower failed'); }
    }
  }

  /** Flushes what is queued and closes the segment. Later records are dropped with a warning. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.endFollowers();
    this.flusher.cancel();
    await this.flush().catch((err) => this.o.log.error({ err, lost: this.queue.length }, 'audit records not written at close'));
    await this.flusher.idle();
    await this.fh?.close().catch(() => undefined);
    this.fh = undefined;
    if (this.dropped) this.o.log.error({ dropped: this.dropped }, 'audit records were dropped while the disk failed');
  }

  async [Symbol.asyncDispose](): Promise<void> { await this.close(); }
}

/** A sink that keeps the last 10,000 entries in memory (unit tests). */
export class MemoryAudit implements AuditSink {
  readonly entries: AuditEntry[] = [];
  record(e: AuditEntry): void {
    this.entries.push(e);
    if (this.entries.length > 10_000) this.entries.shift();
  }
}
