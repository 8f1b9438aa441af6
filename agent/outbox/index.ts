/**
 * The agent's durable, bounded event outbox: events wait here, on disk, until the hub
 * acknowledges them, so neither a hub outage nor an agent crash (kill -9) loses an event the
 * outbox accepted.
 *
 * Layout of DATA/outbox/ (directory 0700, every file 0600):
 *   seg-<16 digits>.log  append-only segments of frames, one per write, each with a CRC over
 *                        its records (agent/outbox/record.ts); a new segment every
 *                        `segmentBytes` (4 MiB) and at every start;
 *   cursor.json          {"segment":N,"offset":M}: everything before it is acknowledged. Written
 *                        atomically (temp + rename) at most every `cursorIntervalMs` (1 s), so it may lag:
 *                        a lagging cursor only re-sends events, which the hub drops by id;
 *   lock                 the pid of the process using the outbox (one agent per data directory).
 *
 * Durability: `append()` writes with one synchronous write per call (per 1 MiB of records);
 * once it returns the events are in the kernel, and a kill -9 of the agent loses nothing. The segment is
 * fdatasync'ed in the background within `syncIntervalMs` (100 ms) for power loss (a one-shot timer
 * armed by a write or an ack: an idle outbox sets no timer at all); with
 * `syncIntervalMs: 0` every append is synced before it returns. At start every segment is read
 * and checked: a torn frame at the end (a write cut short by a crash or a power cut) and
 * anything after it is dropped, logged and counted in `stats.droppedBytes`, never misread.
 *
 * Delivery: `read()` hands out the next unsent events as a batch; `ack(batch)` after the hub's
 * EventAck moves the cursor over the acknowledged prefix; `rewind()` (on reconnect) makes every
 * unacknowledged event unsent again. At start, everything after the cursor is sent again.
 * Segments wholly before the saved cursor are deleted. While the hub keeps up, events recently
 * appended are handed out from memory (agent/outbox/tail.ts) rather than read back, so the
 * caller must not change an event object after appending it.
 *
 * Overflow policy: the outbox holds at most `maxEvents` (100,000) unacknowledged events and
 * `maxBytes` (256 MiB) of their records. When full it REFUSES NEW EVENTS: `append()` accepts the
 * ones that fit, in order, and refuses the rest of the call; refused events are counted in
 * `stats.refused` and a warning is logged at most every 10 s. What the outbox accepted is never
 * dropped to make room. Events it cannot store (empty or oversized id or type, payload over
 * 1 MiB) are refused too, counted in `stats.invalid`, with a warning naming the field.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { atomicWriteFile, atomicWriteFileSync, removeStaleTempFiles } from '../../common/fsutil.js';
import { errorMessage } from '../../common/errors.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';
import { checkShape, encodeRecord, FRAME_HEADER_BYTES, maxRecordBytes, sealFrame } from './record.js';
import { TailCache } from './tail.js';
import { compile, type Compiled, type OutboxOptions, type OutboxStats } from './options.js';
import { acquireLock, readCursor, releaseLock, scanSegment, segmentName, listSegments, SegmentReader, type Position, type Segment } from './files.js';

export type { OutboxOptions, OutboxStats };

/** Events handed out by read(); give it back to ack() once the hub acknowledges it. */
export class OutboxBatch {
  acked = false;
  constructor(readonly events: T.Event[], readonly generation: number, readonly end: Position, readonly bytes: number) {}
}

const WRITE_CHUNK_BYTES = 1024 * 1024;
const WARN_EVERY_MS = 10_000;
const SAVE_EVERY_ACKED = 10_000;
/** Events kept in memory as written, so a connected agent sends them without reading them back. */
const TAIL_MAX_EVENTS = 32_768;
const fdatasync = promisify(fs.fdatasync);

export class Outbox {
  readonly stats: OutboxStats = { queued: 0, bytes: 0, accepted: 0, refused: 0, invalid: 0, acked: 0, segments: 0, droppedBytes: 0 };
  private readonly segments: Segment[];
  private writeFd: number;
  /** Write descriptors of closed segments, synced then closed by the next tick. */
  private retired: number[] = [];
  private dirty = false;
  private dirDirty = true;
  private ackPos: Position;
  private savedPos: Position;
  private savedAcked = 0;
  /** When the cursor was last saved (Date.now()). */
  private cursorSavedMs = 0;
  private readPos: Position;
  private unread: number;
  private outstanding: OutboxBatch[] = [];
  private generation = 0;
  private scratch = Buffer.allocUnsafe(WRITE_CHUNK_BYTES + 64 * 1024);
  private readonly reader = new SegmentReader();
  private readonly tail = new TailCache(TAIL_MAX_EVENTS);
  /** The background sync, armed only while there is something to sync, save or delete (an idle agent never wakes for it). */
  private timer: NodeJS.Timeout | undefined;
  private ticking?: Promise<void>;
  private closed = false;
  private readonly warned = new Map<string, { at: number; count: number }>();

  private constructor(private readonly o: Compiled, segments: Segment[], cursor: Position, writeFd: number, private readonly lock: string) {
    this.segments = segments;
    this.writeFd = writeFd;
    this.ackPos = cursor;
    this.savedPos = { ...cursor };
    this.readPos = { ...cursor };
    let queued = -cursor.index, bytes = -cursor.offset;
    for (const s of segments) if (s.id >= cursor.segment) { queued += s.count; bytes += s.size; }
    this.stats.queued = this.unread = queued;
    this.stats.bytes = bytes;
    this.stats.segments = segments.length;
    this.schedule(); // the new segment's name (dirDirty)
  }

  /** Opens (creating if needed) the outbox in `dir` and replays everything not acknowledged. */
  static async open(options: OutboxOptions): Promise<Outbox> {
    const o = compile(options);
    fs.mkdirSync(o.dir, { recursive: true, mode: 0o700 });
    fs.chmodSync(o.dir, 0o700);
    const lock = acquireLock(o.dir);
    try {
      await removeStaleTempFiles(join(o.dir, 'cursor.json'));
      const saved = readCursor(o.dir, o.log);
      const segments: Segment[] = [];
      let dropped = 0;
      let cursor: Position | undefined;
      for (const s of listSegments(o.dir)) {
        if (s.id < saved.segment) { fs.unlinkSync(s.path); continue; } // acknowledged before the last stop
        // In the cursor's segment: the last record boundary at or before the saved offset (a
        // cursor past the data after a power cut can only mean re-sending, never skipping).
        const scan = scanSegment(s, o.log, s.id === saved.segment ? saved.offset : 0);
        dropped += scan.droppedBytes;
        cursor ??= { segment: s.id, ...scan.at };
        segments.push(s);
      }
      const id = Math.max(segments.at(-1)?.id ?? 0, saved.segment - 1, 0) + 1;
      cursor ??= { segment: id, offset: 0, index: 0 };
      const path = join(o.dir, segmentName(id));
      const fd = fs.openSync(path, 'wx', 0o600);
      fs.fchmodSync(fd, 0o600);
      segments.push({ id, path, size: 0, count: 0 });
      const box = new Outbox(o, segments, cursor, fd, lock);
      box.stats.droppedBytes = dropped;
      if (box.stats.queued > 0) o.log.info({ queued: box.stats.queued, bytes: box.stats.bytes, segments: segments.length }, 'event outbox replays unacknowledged events');
      return box;
    } catch (err) {
      releaseLock(o.dir, lock);
      throw err;
    }
  }

  /**
   * Stores events durably against a kill -9 once this returns (see the policy in the header).
   * When the outbox fills up it keeps the valid events that fit, in order, and refuses the rest
   * of the call; refused events are counted.
   */
  append(events: readonly T.Event[]): { accepted: number; refused: number } {
    let accepted = 0, invalid = 0, n = 0;
    let len = FRAME_HEADER_BYTES; // scratch = one frame: header, then the records of this write
    let frameEvents: T.Event[] = [], frameEnds: number[] = [];
    let full = false;
    if (this.closed) return this.refuse(events.length, 0, false);
    let seg = this.segments.at(-1)!;
    try {
      if (seg.end !== undefined) seg = this.roll(); // a corrupt record was found in it: never append after one
      for (const e of events) {
        if (this.stats.queued + n >= this.o.maxEvents) { full = true; break; }
        const bad = checkShape(e);
        if (bad) { invalid++; this.warn('invalid', bad); continue; }
        this.ensureScratch(len + maxRecordBytes(e));
        const r = encodeRecord(this.scratch, len, e);
        if (typeof r === 'string') { invalid++; this.warn('invalid', r); continue; }
        const recLen = r - len;
        if (this.stats.bytes + len + recLen > this.o.maxBytes) { full = true; break; }
        const overSegment = seg.size + len + recLen > this.o.segmentBytes && seg.size + n > 0;
        if (n > 0 && (overSegment || len >= WRITE_CHUNK_BYTES)) {
          if (!this.writeOut(seg, len, frameEvents, frameEnds)) return this.refuse(events.length, accepted, false, invalid);
          accepted += n;
          this.scratch.copyWithin(FRAME_HEADER_BYTES, len, r);
          len = FRAME_HEADER_BYTES;
          n = 0;
          frameEvents = [];
          frameEnds = [];
        }
        if (overSegment && seg.size > 0) seg = this.roll();
        len += recLen;
        n++;
        frameEvents.push(e);
        frameEnds.push(len);
      }
      if (n > 0) {
        if (!this.writeOut(seg, len, frameEvents, frameEnds)) return this.refuse(events.length, accepted, false, invalid);
        accepted += n;
      }
      if (accepted > 0 && this.o.syncIntervalMs === 0) fs.fdatasyncSync(this.writeFd);
    } catch (err) {
      // A segment that cannot be created or synced: what was written stays accepted.
      this.warn('write', `cannot write the event outbox: ${errorMessage(err)}`, 'error');
    }
    return this.refuse(events.length, accepted, full, invalid);
  }

  /** The next unsent events, at most `max`, or undefined when everything has been handed out. */
  read(max: number): OutboxBatch | undefined {
    if (this.closed || this.unread <= 0 || max <= 0) return undefined;
    const events: T.Event[] = [];
    let bytes = 0;
    let si = this.indexOf(this.readPos.segment);
    const pos = { ...this.readPos };
    try {
      while (events.length < max) {
        const seg = this.segments[si]!;
        const end = seg.end ?? seg.size;
        if (pos.offset >= end) {
          if (si === this.segments.length - 1) break;
          si++;
          Object.assign(pos, { segment: this.segments[si]!.id, offset: 0, index: 0 });
          continue;
        }
        const cached = this.tail.take(pos, max - events.length, events);
        if (cached >= 0) { bytes += cached; continue; }
        const n = this.reader.unitAt(seg, pos.offset, end);
        if (n === -FRAME_HEADER_BYTES) { bytes += FRAME_HEADER_BYTES; pos.offset += FRAME_HEADER_BYTES; continue; }
        if (!(n > 0)) { this.corrupt(si, pos); continue; }
        events.push(this.reader.decode(pos.offset));
        bytes += n;
        pos.offset += n;
        pos.index++;
      }
    } catch (err) {
      // An unreadable segment (EIO, removed behind our back): hand out what was read, retry later.
      this.warn('read', `cannot read the event outbox: ${errorMessage(err)}`, 'error');
    }
    this.readPos = pos;
    if (events.length === 0) return undefined;
    this.unread -= events.length;
    const batch = new OutboxBatch(events, this.generation, { ...pos }, bytes);
    this.outstanding.push(batch);
    return batch;
  }

  /** The hub acknowledged `batch`: the cursor moves over every acknowledged batch in order. */
  ack(batch: OutboxBatch): void {
    if (batch.generation !== this.generation || batch.acked) return;
    batch.acked = true;
    while (this.outstanding.length > 0 && this.outstanding[0]!.acked) {
      const b = this.outstanding.shift()!;
      this.ackPos = b.end;
      this.stats.queued -= b.events.length;
      this.stats.bytes -= b.bytes;
      this.stats.acked += b.events.length;
    }
    // Under heavy load save the cursor early too, so a crash re-sends less than the hub's
    // de-duplication window (20,000 ids per agent) remembers.
    if (this.stats.acked - this.savedAcked >= SAVE_EVERY_ACKED) this.kick();
    else this.schedule();
  }

  /** Every unacknowledged event becomes unsent again (after a reconnect); older batches are void. */
  rewind(): void {
    this.generation++;
    this.outstanding = [];
    this.readPos = { ...this.ackPos };
    this.unread = this.stats.queued;
  }

  /** Syncs and closes the files and saves the cursor. Unacknowledged events stay for the next open. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.ticking;
    try {
      for (const fd of [...this.retired, this.writeFd]) {
        try { fs.fdatasyncSync(fd); } catch (err) { this.o.log.error({ err: errorMessage(err) }, 'cannot sync the event outbox'); }
        fs.closeSync(fd);
      }
      this.retired = [];
      this.reader.close();
      this.tail.clear();
      this.advanceAckPos();
      if (!samePos(this.ackPos, this.savedPos)) {
        atomicWriteFileSync(join(this.o.dir, 'cursor.json'), cursorJson(this.ackPos));
        this.savedPos = { ...this.ackPos };
      }
      for (const path of this.dropAcked()) {
        try { fs.unlinkSync(path); } catch (err) { this.unlinkFailed(err, path); }
      }
    } finally {
      releaseLock(this.o.dir, this.lock);
    }
  }

  async [Symbol.asyncDispose](): Promise<void> { await this.close(); }

  private refuse(total: number, accepted: number, full: boolean, invalid = 0): { accepted: number; refused: number } {
    const refused = total - accepted;
    this.stats.refused += refused;
    this.stats.invalid += invalid;
    if (full && refused - invalid > 0) {
      this.warn('full', 'event outbox is full; refusing new events until the hub acknowledges older ones', 'warn', refused - invalid);
    }
    return { accepted, refused };
  }

  /** Logs at most once per 10 s per kind, with how many times it happened since. */
  private warn(kind: string, msg: string, level: 'warn' | 'error' = 'warn', count = 1): void {
    const w = this.warned.get(kind) ?? { at: 0, count: 0 };
    w.count += count;
    this.warned.set(kind, w);
    const now = Date.now();
    if (now - w.at < WARN_EVERY_MS) return;
    const { queued, bytes } = this.stats;
    this.o.log[level]({ count: w.count, queued, bytes, maxEvents: this.o.maxEvents, maxBytes: this.o.maxBytes }, msg);
    w.at = now;
    w.count = 0;
  }

  private ensureScratch(bytes: number): void {
    if (bytes <= this.scratch.length) return;
    const next = Buffer.allocUnsafe(Math.max(bytes, this.scratch.length * 2));
    this.scratch.copy(next);
    this.scratch = next;
  }

  /** Seals the frame scratch[0, len) of `events` and writes it at the end of `seg`; false (and logged) on failure. */
  private writeOut(seg: Segment, len: number, events: T.Event[], ends: number[]): boolean {
    const n = events.length;
    let done = 0;
    sealFrame(this.scratch, 0, len);
    try {
      while (done < len) done += fs.writeSync(this.writeFd, this.scratch, done, len - done, seg.size + done);
    } catch (err) {
      // Cut a partial write back off so the next record starts on a boundary.
      try { fs.ftruncateSync(this.writeFd, seg.size); } catch { /* the reader stops at seg.size anyway */ }
      this.warn('write', `cannot write the event outbox: ${errorMessage(err)}`, 'error', n);
      return false;
    }
    this.tail.add(seg.id, seg.size, seg.count, ends, events);
    seg.size += len;
    seg.count += n;
    this.stats.queued += n;
    this.stats.bytes += len;
    this.stats.accepted += n;
    this.unread += n;
    this.dirty = true;
    this.schedule();
    return true;
  }

  private roll(): Segment {
    const id = this.segments.at(-1)!.id + 1;
    const path = join(this.o.dir, segmentName(id));
    const fd = fs.openSync(path, 'wx', 0o600);
    fs.fchmodSync(fd, 0o600);
    if (this.o.syncIntervalMs === 0) { // strict mode: the old segment and the new name are durable first
      fs.fdatasyncSync(this.writeFd);
      const dir = fs.openSync(this.o.dir, 'r');
      try { fs.fsyncSync(dir); } finally { fs.closeSync(dir); }
    }
    this.retired.push(this.writeFd);
    this.writeFd = fd;
    this.dirDirty = true;
    this.schedule();
    const seg: Segment = { id, path, size: 0, count: 0 };
    this.segments.push(seg);
    this.stats.segments++;
    return seg;
  }

  private indexOf(id: number): number {
    let lo = 0, hi = this.segments.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.segments[mid]!.id < id) lo = mid + 1; else hi = mid;
    }
    return lo;
  }

  /** A bad record in data already checked (bit rot, a foreign write): skip the rest of its segment. */
  private corrupt(si: number, pos: Position): void {
    const seg = this.segments[si]!;
    const lost = seg.count - pos.index;
    const bytes = seg.size - pos.offset;
    seg.end = pos.offset;
    seg.count = pos.index;
    this.tail.clear();
    this.stats.queued -= lost;
    this.stats.bytes -= bytes;
    this.stats.droppedBytes += bytes;
    this.unread -= lost;
    this.o.log.error({ segment: seg.path, offset: pos.offset, lost }, 'corrupt record in the event outbox; skipping the rest of the segment');
    if (si !== this.segments.length - 1) return;
    try { this.roll(); } catch (err) { this.warn('write', `cannot start a new outbox segment: ${errorMessage(err)}`, 'error'); }
  }

  /** Background work waits: written data to sync, retired descriptors, new names, or a cursor to save. */
  private pending(): boolean {
    return this.dirty || this.retired.length > 0 || this.dirDirty || !samePos(this.ackPos, this.savedPos);
  }

  /** Arms the background sync `syncIntervalMs` (100 ms) from now unless it is armed already. */
  private schedule(): void {
    if (this.timer || this.closed) return;
    this.timer = setTimeout(() => { this.timer = undefined; this.kick(); }, this.o.syncIntervalMs || 100);
    this.timer.unref();
  }

  private kick(): void {
    if (this.closed) return;
    if (this.ticking) { this.schedule(); return; } // the running tick may have missed what came since
    this.ticking = this.tick().catch((err) => this.o.log.error({ err: errorMessage(err) }, 'event outbox background sync failed')).finally(() => {
      this.ticking = undefined;
      if (this.pending()) this.schedule(); // written during the tick, or a failed sync: again later
    });
  }

  /** Background: fdatasync what was written, save the cursor, delete acknowledged segments. */
  private async tick(): Promise<void> {
    const retired = this.retired;
    this.retired = [];
    const fds = this.dirty ? [...retired, this.writeFd] : retired;
    this.dirty = false;
    try {
      await Promise.all(fds.map((fd) => fdatasync(fd)));
    } finally {
      for (const fd of retired) fs.closeSync(fd);
    }
    if (this.dirDirty) { // new segment files: make their names durable too
      this.dirDirty = false;
      const dir = await fsp.open(this.o.dir, 'r');
      try { await dir.sync(); } finally { await dir.close(); }
    }
    this.advanceAckPos();
    // The cursor at most every cursorIntervalMs (its save costs two journal commits), sooner
    // after SAVE_EVERY_ACKED acknowledgements.
    const due = Date.now() - this.cursorSavedMs >= this.o.cursorIntervalMs || this.stats.acked - this.savedAcked >= SAVE_EVERY_ACKED;
    if (due && !samePos(this.ackPos, this.savedPos)) {
      const pos = { ...this.ackPos };
      const acked = this.stats.acked;
      await atomicWriteFile(join(this.o.dir, 'cursor.json'), cursorJson(pos));
      this.savedPos = pos;
      this.savedAcked = acked;
      this.cursorSavedMs = Date.now();
    }
    await Promise.all(this.dropAcked().map((path) => fsp.unlink(path).catch((err: unknown) => this.unlinkFailed(err, path))));
  }

  /** A cursor at the end of a closed segment is the start of the next one. */
  private advanceAckPos(): void {
    let si = this.indexOf(this.ackPos.segment);
    while (si < this.segments.length - 1) {
      const seg = this.segments[si]!;
      if (seg.id !== this.ackPos.segment || this.ackPos.offset < (seg.end ?? seg.size)) break;
      si++;
      this.ackPos = { segment: this.segments[si]!.id, offset: 0, index: 0 };
    }
  }

  /** Forgets the segments wholly before the saved cursor (never the one being written): the files to delete. */
  private dropAcked(): string[] {
    const paths: string[] = [];
    while (this.segments.length > 1 && this.segments[0]!.id < this.savedPos.segment) {
      const seg = this.segments.shift()!;
      this.reader.forget(seg.id);
      this.stats.segments--;
      paths.push(seg.path);
    }
    return paths;
  }

  private unlinkFailed(err: unknown, path: string): void {
    this.o.log.warn({ err: errorMessage(err), segment: path }, 'cannot delete an acknowledged outbox segment');
  }
}

const samePos = (a: Position, b: Position) => a.segment === b.segment && a.offset === b.offset;
const cursorJson = (p: Position) => `${JSON.stringify({ segment: p.segment, offset: p.offset })}\n`;
