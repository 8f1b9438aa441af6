/**
 * The outbox's files: at open time the pid lock, the saved cursor, the segment list and the
 * check of each segment (torn tails cut off), synchronous on purpose (it runs once, before
 * anything else touches the directory); then the buffered reader of segments.
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { TrellisError, errorMessage } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';
import { checkFrame, decodeRecord, unitAt } from './record.js';

/** A place in the outbox: `index` counts the records before `offset` in that segment. */
export interface Position { segment: number; offset: number; index: number }

export interface Segment {
  id: number;
  path: string;
  /** Valid bytes (the end of the last whole record). */
  size: number;
  /** Records in [0, size). */
  count: number;
  /** Set when a corrupt record was found while reading: nothing at or after it is read. */
  end?: number;
}

const SEGMENT_RE = /^seg-(\d{16})\.log$/;
export const segmentName = (id: number) => `seg-${String(id).padStart(16, '0')}.log`;

/** Segment files of `dir`, oldest first (size and count are filled in by scanSegment). */
export function listSegments(dir: string): Segment[] {
  const out: Segment[] = [];
  for (const name of fs.readdirSync(dir)) {
    const m = SEGMENT_RE.exec(name);
    if (m) out.push({ id: Number(m[1]), path: join(dir, name), size: 0, count: 0 });
  }
  return out.sort((a, b) => a.id - b.id);
}

/**
 * Checks every frame of `seg`, sets its size and record count, and cuts off a torn or corrupt
 * tail (logged). `at` is the last frame or record boundary at or before `stopAt`.
 */
export function scanSegment(seg: Segment, log: Logger, stopAt: number): { droppedBytes: number; at: { offset: number; index: number } } {
  const buf = fs.readFileSync(seg.path);
  let off = 0, count = 0;
  let at = { offset: 0, index: 0 };
  for (;;) {
    if (off <= stopAt) at = { offset: off, index: count };
    const frame = checkFrame(buf, off, buf.length);
    if (!frame) break;
    for (const r of frame.records) {
      if (r <= stopAt) at = { offset: r, index: count };
      count++;
    }
    off += frame.length;
  }
  seg.size = off;
  seg.count = count;
  const dropped = buf.length - off;
  if (dropped > 0) {
    log.warn({ segment: seg.path, offset: off, droppedBytes: dropped }, 'event outbox: dropped a torn or corrupt tail (a write cut short by a crash)');
    fs.truncateSync(seg.path, off);
  }
  return { droppedBytes: dropped, at };
}

/** The saved cursor, or the start of everything when there is none or it does not parse. */
export function readCursor(dir: string, log: Logger): { segment: number; offset: number } {
  const path = join(dir, 'cursor.json');
  let text: string;
  try {
    text = fs.readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { segment: 0, offset: 0 };
    throw err;
  }
  try {
    const c = JSON.parse(text) as { segment?: unknown; offset?: unknown };
    if (Number.isSafeInteger(c.segment) && Number.isSafeInteger(c.offset) && (c.segment as number) >= 0 && (c.offset as number) >= 0) {
      return { segment: c.segment as number, offset: c.offset as number };
    }
  } catch { /* reported below */ }
  log.warn({ path }, 'event outbox cursor is unreadable; re-sending every stored event (the hub drops duplicates)');
  return { segment: 0, offset: 0 };
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Outbox directories open in this process: the pid in a lock file cannot tell them apart. */
const openHere = new Set<string>();

/**
 * Takes DATA/outbox/lock for this process. A lock naming a live process other than this one,
 * or an outbox already open in this process, is refused; a stale lock (its process is gone, or
 * is this pid again after a container restart) is taken over.
 */
export function acquireLock(dir: string): string {
  const path = join(dir, 'lock');
  const key = fs.realpathSync(dir);
  if (openHere.has(key)) throw new TrellisError('TRELLIS_E_CONFIG', `the event outbox ${dir} is already open in this process`);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = fs.openSync(path, 'wx', 0o600);
      try { fs.writeSync(fd, `${process.pid}\n`); } finally { fs.closeSync(fd); }
      openHere.add(key);
      return key;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const pid = Number.parseInt(fs.readFileSync(path, 'utf8'), 10);
    if (Number.isSafeInteger(pid) && pid > 0 && pid !== process.pid && pidAlive(pid)) {
      throw new TrellisError('TRELLIS_E_CONFIG', `the event outbox ${dir} is in use by process ${pid}; run one agent per data directory`);
    }
    try { fs.unlinkSync(path); } catch (err) { if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err; }
  }
  throw new TrellisError('TRELLIS_E_CONFIG', `cannot take the event outbox lock ${path}: another process keeps taking it`);
}

/** Gives back the lock acquireLock() returned `key` for. */
export function releaseLock(dir: string, key: string): void {
  const path = join(dir, 'lock');
  openHere.delete(key);
  try {
    if (Number.parseInt(fs.readFileSync(path, 'utf8'), 10) === process.pid) fs.unlinkSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new TrellisError('TRELLIS_E_INTERNAL', `cannot release the event outbox lock: ${errorMessage(err)}`, { cause: err });
  }
}

/** Reads segments through one reusable buffer (1 MiB, more for a bigger record). */
export class SegmentReader {
  private buf = Buffer.allocUnsafe(1024 * 1024);
  private bufSeg = -1;
  private bufStart = 0;
  private bufLen = 0;
  private fd?: number;
  private fdSeg = -1;

  /** unitAt() of the bytes at `offset` of `seg`, now buffered; <= 0 or NaN when not a record. */
  unitAt(seg: Segment, offset: number, end: number): number {
    const local = offset - this.bufStart;
    if (this.bufSeg === seg.id && local >= 0 && local < this.bufLen) {
      const n = unitAt(this.buf, local, this.bufLen);
      if (n !== 0) return n;
    }
    this.fill(seg, offset, end);
    let n = unitAt(this.buf, 0, this.bufLen);
    if (n === 0 && this.bufLen === this.buf.length && this.bufLen >= 4) {
      this.buf = Buffer.allocUnsafe(4 + this.buf.readUInt32LE(0)); // one record bigger than the buffer
      this.fill(seg, offset, end);
      n = unitAt(this.buf, 0, this.bufLen);
    }
    return n;
  }

  /** The record at `offset` of the segment unitAt() just accepted. */
  decode(offset: number): T.Event {
    return decodeRecord(this.buf, offset - this.bufStart);
  }

  /** Closes the descriptor of a segment about to be deleted. */
  forget(segId: number): void {
    if (this.fdSeg === segId) this.close();
  }

  close(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
    this.fdSeg = -1;
  }

  private fill(seg: Segment, offset: number, end: number): void {
    if (this.fdSeg !== seg.id || this.fd === undefined) {
      this.close();
      this.fd = fs.openSync(seg.path, 'r');
      this.fdSeg = seg.id;
    }
    const want = Math.min(this.buf.length, end - offset);
    let got = 0;
    while (got < want) {
      const r = fs.readSync(this.fd, this.buf, got, want - got, offset + got);
      if (r === 0) break;
      got += r;
    }
    this.bufSeg = seg.id;
    this.bufStart = offset;
    this.bufLen = got;
  }
}
