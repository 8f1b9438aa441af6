/**
 * The execution history on disk, append-only, with retention by age and count.
 *
 * DATA/executions/ (0700) holds segments, each a pair of files (0600):
 * - `<12-digit seq>.jsonl`: one line per state change (changes of one execution within one write
 *   coalesce into one line, its latest), the whole record:
 *   `{"k":"s","r":{ExecutionRecord},"dk":"<dedup key>"?,"to":<timeout ms>?}` (the last line of
 *   an id wins; the timeout lets executions in flight be timed again after a restart);
 * - `<12-digit seq>.out.jsonl`: output chunks, `{"k":"o","id","s":0|1,"o":offset,"d":base64}`
 *   (s: 0 stdout, 1 stderr; o: bytes of the execution's output before the chunk).
 * Output chunks within the first INLINE_BYTES of an execution's output are written to the state
 * file instead (same line shape): most actions' whole output (an HTTP status line, a short
 * command's stdout) then costs no durable write of its own, and a write that takes a request's
 * state lines takes them along in the same O_DSYNC write (a second file written side by side was
 * a second journal commit on every batch, and the requests waiting behind it). What is past the
 * first INLINE_BYTES goes to the output file, so a restart, which reads the state files whole,
 * reads at most INLINE_BYTES of output per execution. Readers take output lines from both files
 * (files written before this had all output in `.out.jsonl`; the format is the same).
 *
 * Bytes once written are never rewritten. Writes are batched: queued lines go out on a short
 * timer, when the queue gets long, on `flush()` and `close()`, as one append and one fdatasync
 * per file (one O_DSYNC write where the platform has it), both files side by side (a crash
 * loses at most the batch not yet written);
 * `flushStates()` writes the state lines alone (a request waits for those only), and `written()`
 * waits for the next write instead of forcing one (acknowledgements of results). A new segment starts when the
 * current one passes `maxSegmentBytes` or holds a tenth of `maxCount` executions, after a write
 * error, and at start when a file ends in a torn line. Retention drops whole segments, oldest
 * first: while more than `maxCount` executions are held, and every segment last written before
 * `maxAgeMs` (at start, on each rotation and hourly). The current segment is never dropped.
 */
import { open, readdir, readFile, stat, unlink, chmod, type FileHandle } from 'node:fs/promises';
import { constants as fsConstants } from 'node:fs';
import { join } from 'node:path';
import { ensureDir } from '../../common/fsutil.js';
import type { Logger } from '../../common/log.js';
import type { ExecutionRecord } from './types.js';
import { SerialFlusher } from '../../common/serial.js';
import { ID_UNITS, KeyIndex, grown } from './key-index.js';

export interface HistoryOptions {
  dir: string;
  log: Logger;
  maxSegmentBytes: number;
  maxAgeMs: number;
  maxCount: number;
  flushIntervalMs: number;
  /** Executions whose every line was in dropped segments (called during open too). */
  onDrop: (ids: string[]) => void;
}

/** Executions the index is sized for up front (`historyCapacity`), at most: beyond it, it grows by doubling. */
const CAPACITY_CAP = 1 << 18;

/**
 * Executions a history with this `maxCount` holds at most: retention drops whole segments when a
 * new one opens, so up to a segment (a tenth) more than maxCount (capped at CAPACITY_CAP). The
 * hub sizes its execution indexes for it at start: growing them by doubling as a young hub filled
 * up copied every column of every index at once (measured in a node loop: ~4.5 ms at 32,768
 * executions, ~11 ms at 65,536, on the request path; slow events at those counts in every e2a
 * trace). The columns are typed arrays, zero-filled: pages not written yet cost no memory.
 */
export function historyCapacity(maxCount: number): number {
  return Math.min(CAPACITY_CAP, maxCount + Math.ceil(maxCount / 10));
}

export interface Chunk { stream: 'STDOUT' | 'STDERR'; offset: number; data: Buffer }
export interface Rebuilt {
  rec: ExecutionRecord; dedupKey?: string; timeoutMs?: number;
  /** The execution's last state line as read (when it holds the dedup key above): what hub/executions/finished.ts keeps. */
  line?: string;
}

type StateLine = { k: 's'; r: ExecutionRecord; dk?: string; to?: number };
type OutputLine = { k: 'o'; id: string; s: 0 | 1; o: number; d: string };

const SEGMENT_RE = /^(\d{12})\.jsonl$/;
const stateName = (seq: number) => `${String(seq).padStart(12, '0')}.jsonl`;
const outName = (seq: number) => `${String(seq).padStart(12, '0')}.out.jsonl`;
const BATCH_LINES = 1000;
/** Output within the first this many bytes of an execution's goes to the state file (see above). */
export const INLINE_BYTES = 1024;
/** How every output line starts, up to its id (JSON.stringify keeps the key order of OutputLine). */
export const OUT_PREFIX = '{"k":"o",';
const MAX_QUEUED = 200_000;
const RETAIN_EVERY_MS = 3_600_000;

async function fsyncDir(dir: string): Promise<void> {
  if (process.platform === 'win32') return;
  const fh = await open(dir, 'r');
  try { await fh.sync(); } finally { await fh.close(); }
}

/**
 * Open flags of the history files: append, and where the platform has it O_DSYNC, so that one
 * write() returns with its bytes on disk (what write + fdatasync did, in one syscall and one
 * thread-pool round trip instead of two: ~30% less CPU per durable write measured on ext4, and one
 * event-loop turn less in front of every request). `exclusive`: a new segment (O_EXCL).
 */
const DSYNC = process.platform === 'win32' ? 0 : (fsConstants.O_DSYNC ?? 0);
function appendFlags(exclusive: boolean): number | string {
  if (!DSYNC) return exclusive ? 'ax' : 'a';
  return fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_APPEND | DSYNC | (exclusive ? fsConstants.O_EXCL : 0);
}

/**
 * Appends `b` at the end of a history file and makes it durable (nothing for an empty buffer):
 * opened with O_DSYNC, every write is; otherwise one fdatasync after the writes.
 * `write` straight away: FileHandle.appendFile goes through writeFile's option handling and
 * chunk loop, which cost more than the write itself for one short batch.
 */
async function appendSync(fh: FileHandle, b: Buffer): Promise<void> {
  if (b.length === 0) return;
  let off = 0;
  while (off < b.length) {
    const { bytesWritten } = await fh.write(b, off, b.length - off);
    off += bytesWritten;
  }
  if (!DSYNC) await fh.datasync();
}

async function endsClean(path: string): Promise<boolean> {
  const st = await stat(path).catch(() => undefined);
  if (!st || st.size === 0) return true;
  const fh = await open(path, 'r');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, st.size - 1);
    return b[0] === 0x0a;
  } finally { await fh.close(); }
}

function stateLine(rec: ExecutionRecord, dk: string | undefined, to: number | undefined): string {
  const line: StateLine = { k: 's', r: rec };
  if (dk) line.dk = dk;
  if (to) line.to = to;
  return JSON.stringify(line) + '\n';
}

const OUT_PREFIX_BYTES = Buffer.from(OUT_PREFIX);

/**
 * The lines of a history file whose first bytes are (`want` true) or are not (false) `prefix`,
 * decoded; the others are skipped on their bytes, never decoded. A restart skips the output lines
 * of state files this way (it pays a scan for their line end only), and readOutput decodes one
 * execution's lines only.
 */
function* linesOf(buf: Buffer, prefix: Buffer, want: boolean): Generator<string> {
  for (let pos = 0; pos < buf.length;) {
    let end = buf.indexOf(0x0a, pos);
    if (end < 0) end = buf.length;
    const has = end - pos >= prefix.length && buf.compare(prefix, 0, prefix.length, pos, pos + prefix.length) === 0;
    if (has === want) yield buf.toString('utf8', pos, end);
    pos = end + 1;
  }
}

/** Queued lines of one kind, with the id each is about (segment bookkeeping once written). */
class LineQueue {
  lines: string[] = [];
  ids: string[] = [];
  get length(): number { return this.lines.length; }
  push(id: string, line: string): void { this.lines.push(line); this.ids.push(id); }
  /** Everything queued; the queue starts empty. */
  take(): LineQueue { const q = new LineQueue(); [q.lines, q.ids, this.lines, this.ids] = [this.lines, this.ids, [], []]; return q; }
  /** Lines taken by a write that failed, back in front of what was queued since. */
  putBack(q: LineQueue): void { this.lines = q.lines.concat(this.lines); this.ids = q.ids.concat(this.ids); }
  /** Drops the oldest `n` lines; returns how many it dropped. */
  drop(n: number): number { const k = Math.max(0, Math.min(this.lines.length, n)); this.lines.splice(0, k); this.ids.splice(0, k); return k; }
}

function parseState(line: string): StateLine | undefined {
  if (!line) return undefined;
  try {
    const l = JSON.parse(line) as StateLine;
    return l && l.k === 's' && l.r && typeof l.r.id === 'string' && typeof l.r.status === 'string' ? l : undefined;
  } catch {
    return undefined; // a torn line from a crash mid-write
  }
}

export class History {
  /**
   * State lines waiting for the next write, one per execution: a change of an execution already
   * queued replaces its entry, and the line is serialized when it is written (the record as it is
   * then: the last line of an id wins anyway). An execution that goes requested → scheduled, or
   * running → succeeded, within one write costs one line and one JSON.stringify, not two.
   */
  /** State lines to write, by execution; `text`: the line, once built (see `queuedLine`). */
  private stateQ = new Map<string, { rec: ExecutionRecord; dk?: string; to?: number; text?: string }>();
  /** Output lines for the state file (the first INLINE_BYTES of an execution's). */
  private inQ = new LineQueue();
  /** Output lines for the output file. */
  private outQ = new LineQueue();
  private fh?: FileHandle;
  private outFh?: FileHandle;
  private seq = 0;
  private size = 0;
  /** Executions first written to the current segment (rotation at a tenth of maxCount). */
  private fresh = 0;
  private broken = false;
  private retainTimer?: NodeJS.Timeout;
  /** The retention running beside the writes (retainInBackground), and whether a rotation asked for another. */
  private retaining?: Promise<void>;
  private retainAgain = false;
  private readonly flusher = new SerialFlusher(() => this.writeQueued());
  /** Callers of written(), released by the next write that succeeds. */
  private waiters: Array<() => void> = [];
  /** A states-only write queued behind the one in flight, not started yet (flushStates shares it). */
  private pendingStates?: Promise<void>;
  /** A write (writeQueued) is running. */
  private writing = false;
  private closed = false;
  private failing = false;
  /**
   * First and last segment holding a line of each execution: columns by the slot of its id, off
   * the JavaScript heap (hub/executions/key-index.ts says why). Retention finds the ids whose last
   * line is in a dropped segment by a pass over `last`.
   */
  private readonly ids = new KeyIndex();
  private first = new Int32Array(1024);
  private last = new Int32Array(1024);
  dropped = 0;

  private constructor(private readonly o: HistoryOptions) {}

  /** Opens the directory, rebuilds the index from the state files and applies retention. */
  static async open(o: HistoryOptions): Promise<{ history: History; records: Map<string, Rebuilt> }> {
    const h = new History(o);
    h.reserve(historyCapacity(o.maxCount));
    await ensureDir(o.dir, 0o700);
    await chmod(o.dir, 0o700);
    const records = new Map<string, Rebuilt>();
    const segs = await h.segments();
    for (const seq of segs) {
      const buf = await readFile(join(o.dir, stateName(seq))).catch(() => Buffer.alloc(0));
      for (const line of linesOf(buf, OUT_PREFIX_BYTES, false)) { // output lines kept inline: skipped
        const l = parseState(line);
        if (!l) continue;
        const prev = records.get(l.r.id);
        const dedupKey = l.dk ?? prev?.dedupKey;
        records.set(l.r.id, { rec: l.r, dedupKey, timeoutMs: l.to ?? prev?.timeoutMs, line: l.dk === dedupKey ? line : undefined });
        h.place(l.r.id, seq);
      }
    }
    const last = segs.at(-1);
    if (last !== undefined) {
      h.seq = last;
      const clean = (await endsClean(join(o.dir, stateName(last)))) && (await endsClean(join(o.dir, outName(last))));
      const st = await stat(join(o.dir, stateName(last))).catch(() => undefined);
      const outSt = await stat(join(o.dir, outName(last))).catch(() => undefined);
      const size = (st?.size ?? 0) + (outSt?.size ?? 0);
      const expired = (st?.mtimeMs ?? 0) < Date.now() - o.maxAgeMs;
      if (!clean) o.log.warn({ segment: stateName(last) }, 'execution history segment ends in a torn line (crash mid-write); a new segment starts');
      if (clean && !expired && size < o.maxSegmentBytes) {
        h.fh = await open(join(o.dir, stateName(last)), appendFlags(false), 0o600);
        h.outFh = await open(join(o.dir, outName(last)), appendFlags(false), 0o600);
        h.size = size;
        h.ids.forEach((s) => { if (h.first[s] === last) h.fresh++; });
      }
    }
    const dropped: string[] = [];
    const onDrop = h.o.onDrop;
    h.o.onDrop = (ids) => { dropped.push(...ids); };
    try {
      if (!h.fh) await h.openNext();
      await h.retain();
    } finally {
      h.o.onDrop = onDrop;
    }
    for (const id of dropped) records.delete(id);
    h.retainTimer = setInterval(() => h.retainInBackground(), RETAIN_EVERY_MS);
    h.retainTimer.unref();
    return { history: h, records };
  }

  /** Room for `n` executions in the index without growing it. */
  private reserve(n: number): void {
    this.ids.reserve(n - this.ids.size, (n - this.ids.size) * ID_UNITS);
    this.first = grown(this.first, n);
    this.last = grown(this.last, n);
  }

  /** Executions history holds (what retention by count compares with maxCount). */
  get count(): number { return this.ids.size; }

  /** Records a line of `id` in segment `seq`; true if it is the execution's first. */
  private place(id: string, seq: number): boolean {
    const h = this.ids.hashOf(id);
    const s = this.ids.find(id, h);
    if (s >= 0) { this.last[s] = seq; return false; }
    const n = this.ids.insert(id, h);
    if (n >= this.first.length) { this.first = grown(this.first, n + 1); this.last = grown(this.last, n + 1); }
    this.first[n] = seq;
    this.last[n] = seq;
    return true;
  }

  private async segments(): Promise<number[]> {
    const names = await readdir(this.o.dir).catch((e: NodeJS.ErrnoException) => { if (e.code === 'ENOENT') return [] as string[]; throw e; });
    return names.map((n) => SEGMENT_RE.exec(n)).filter((m): m is RegExpExecArray => !!m).map((m) => Number(m[1])).sort((a, b) => a - b);
  }

  private async openNext(): Promise<void> {
    await this.fh?.close().catch(() => undefined);
    await this.outFh?.close().catch(() => undefined);
    this.fh = this.outFh = undefined;
    const seq = this.seq + 1;
    const fh = await open(join(this.o.dir, stateName(seq)), appendFlags(true), 0o600);
    const outFh = await open(join(this.o.dir, outName(seq)), appendFlags(true), 0o600);
    await fh.chmod(0o600);
    await outFh.chmod(0o600);
    await fsyncDir(this.o.dir);
    this.fh = fh;
    this.outFh = outFh;
    this.seq = seq;
    this.size = 0;
    this.fresh = 0;
    this.broken = false;
  }

  /**
   * Runs retention beside the writes, not in their queue: each rotation's retention (a readdir, a
   * stat per old segment, two unlinks and a pass over the index) held every write behind it, and
   * every request waits for a write — 50–61 ms for the events of that moment, once per segment
   * (10,000 executions) in a 120,000-event e2a run. It needs no write to stand still: it removes
   * only segments older than the one written, and the pass over the index is synchronous, so a
   * line written meanwhile moves its execution's last segment on before or after it, never during.
   * One runs at a time; a rotation meanwhile runs it once more after.
   */
  private retainInBackground(): void {
    if (this.closed) return;
    if (this.retaining) { this.retainAgain = true; return; }
    this.retaining = (async () => {
      do {
        this.retainAgain = false;
        await this.retain().catch((err) => this.o.log.error({ err }, 'execution history retention failed'));
      } while (this.retainAgain && !this.closed);
    })().finally(() => { this.retaining = undefined; });
  }

  /** Drops the oldest segments beyond maxCount executions and those last written before maxAgeMs. */
  private async retain(): Promise<void> {
    const old = (await this.segments()).filter((s) => s < this.seq);
    const cutoff = Date.now() - this.o.maxAgeMs;
    const gone: string[] = [];
    let removed = 0;
    for (const seq of old) {
      const path = join(this.o.dir, stateName(seq));
      let drop = this.ids.size > this.o.maxCount;
      if (!drop) drop = await stat(path).then((s) => s.mtimeMs < cutoff, () => false);
      if (!drop) continue;
      await unlink(path).catch(() => undefined);
      await unlink(join(this.o.dir, outName(seq))).catch(() => undefined);
      removed++;
      this.ids.forEach((s) => { if (this.last[s] === seq) { gone.push(this.ids.key(s)); this.ids.remove(s); } });
    }
    if (removed) {
      this.o.log.info({ removed, executions: gone.length, kept: this.ids.size }, 'execution history segments removed by retention');
      this.o.onDrop(gone);
    }
  }

  // ------------------------------------------------------------ writing

  /**
   * The state line queued for `rec` (this very object, as `appendState` took it last), without
   * its line end; built once, and the write takes it as it is. For a record that no longer
   * changes (a finished execution, which hub/executions/finished.ts keeps as this text): any
   * change goes through `appendState`, which queues it anew. Undefined when none is queued.
   */
  queuedLine(rec: ExecutionRecord): string | undefined {
    const q = this.stateQ.get(rec.id);
    if (!q || q.rec !== rec) return undefined;
    q.text ??= stateLine(q.rec, q.dk, q.to);
    return q.text.slice(0, -1);
  }

  /** Queues a state line (never waits for the disk). */
  appendState(rec: ExecutionRecord, extra: { dedupKey?: string; timeoutMs?: number } = {}): void {
    const prev = this.stateQ.get(rec.id);
    // Kept from an earlier change in the same write: the key and timeout are never unset.
    this.stateQ.set(rec.id, { rec, dk: extra.dedupKey || prev?.dk, to: extra.timeoutMs || prev?.to });
    this.queued();
  }

  /** Queues an output chunk (the caller applies the per-execution cap). */
  appendOutput(id: string, stream: 'STDOUT' | 'STDERR', offset: number, data: Buffer): void {
    const line: OutputLine = { k: 'o', id, s: stream === 'STDERR' ? 1 : 0, o: offset, d: data.toString('base64') };
    (offset + data.length <= INLINE_BYTES ? this.inQ : this.outQ).push(id, JSON.stringify(line) + '\n');
    this.queued();
  }

  /** Lines queued, of every kind. */
  private get queuedLines(): number { return this.stateQ.size + this.inQ.length + this.outQ.length; }

  private queued(): void {
    if (this.closed) return;
    const n = this.queuedLines;
    if (n > MAX_QUEUED) {
      // Only a dead disk gets here: output goes first (the output file's, then the inline lines),
      // state lines are kept as long as possible.
      const fromOut = this.outQ.drop(n - MAX_QUEUED);
      this.dropped += fromOut + this.inQ.drop(n - MAX_QUEUED - fromOut);
    }
    this.flusher.schedule(n >= BATCH_LINES ? 0 : this.o.flushIntervalMs);
  }

  /** Writes everything queued so far; resolves when it is on disk. */
  flush(): Promise<void> {
    return this.flusher.flush();
  }

  /**
   * Resolves once everything queued so far is on disk, without forcing a write of its own: it
   * rides on the next one (the flush timer, at most `flushIntervalMs` away, or an earlier
   * `flush()`). For acknowledgements nobody waits on (results): at 1,000 results/s they share a
   * write instead of costing one append and one fdatasync each. A failed write keeps it waiting
   * for the retry; `close()` releases whatever still waits. Never rejects.
   */
  written(): Promise<void> {
    // Nothing queued and no write running: everything is on disk already.
    if (this.closed || (!this.writing && this.queuedLines === 0)) return Promise.resolve();
    return new Promise<void>((resolve) => {
      this.waiters.push(resolve);
      this.flusher.schedule(this.o.flushIntervalMs);
    });
  }

  /**
   * Writes what is queued for the state file only (state lines and inline output lines); the
   * output file's lines wait for the next full write (the flush timer, `flush()`, `written()`).
   * What a request needs on disk before it goes out (its `requested`/`scheduled` lines and key)
   * costs one durable write, not two side by side.
   */
  flushStates(): Promise<void> {
    // A states write queued and not started yet takes every line queued until it starts: later
    // callers share it (one write and one promise for a burst of dispatches, not one each).
    if (this.pendingStates) return this.pendingStates;
    const p = this.flusher.run(() => { this.pendingStates = undefined; return this.writeQueued(true); });
    this.pendingStates = p;
    return p;
  }

  private async writeQueued(statesOnly = false): Promise<void> {
    this.writing = true;
    try {
      await this.writeOnce(statesOnly);
    } finally {
      this.writing = false;
    }
  }

  /**
   * One write of what is queued when it starts, never more: a caller waits for the write in
   * flight (if any) and the one that takes its lines, not for the lines queued after its own
   * (group commit: at 1,000 dispatches/s a loop "until the queue is empty" rarely ended, and
   * every request queued behind it waited for write after write). What is queued meanwhile goes
   * with the next write (the flush timer armed by `queued()`, or the next `flushStates()`).
   */
  private async writeOnce(statesOnly: boolean): Promise<void> {
    // Writes run one after another: what a waiter taken here waits for is in this write or an
    // earlier one. A states-only write with output-file lines queued is not the whole queue: no
    // waiter.
    const full = !statesOnly || this.outQ.length === 0;
    const waiters = full ? this.waiters : [];
    if (full) this.waiters = [];
    if (this.stateQ.size === 0 && this.inQ.length === 0 && (!full || this.outQ.length === 0)) {
      for (const w of waiters) w();
      return;
    }
    const states = this.stateQ, ins = this.inQ.take(), outs = full ? this.outQ.take() : new LineQueue();
    this.stateQ = new Map();
    let text = '';
    for (const q of states.values()) text += q.text ?? stateLine(q.rec, q.dk, q.to);
    for (const l of ins.lines) text += l;
    const sb = Buffer.from(text, 'utf8');
    const ob = Buffer.from(outs.lines.join(''), 'utf8');
    try {
      if (!this.fh || !this.outFh || this.broken) { await this.openNext(); this.retainInBackground(); }
      // The two files are independent: written and synced side by side (the wait is the slower
      // one, not the sum). Both settle before a failure is handled (the retry closes these files).
      const [a, b] = await Promise.allSettled([appendSync(this.fh!, sb), appendSync(this.outFh!, ob)]);
      if (a.status === 'rejected') throw a.reason;
      if (b.status === 'rejected') throw b.reason;
      this.size += sb.length + ob.length;
      if (this.failing) { this.failing = false; this.o.log.info('execution history writable again'); }
    } catch (err) {
      // What reached the files may end in a torn line: the retry goes to a fresh segment.
      this.broken = true;
      for (const [id, q] of this.stateQ) { // changes queued meanwhile are newer: they win
        const old = states.get(id);
        states.delete(id);
        states.set(id, { rec: q.rec, dk: q.dk || old?.dk, to: q.to || old?.to });
      }
      this.stateQ = states;
      this.inQ.putBack(ins);
      this.outQ.putBack(outs);
      this.waiters = waiters.concat(this.waiters); // not on disk: they wait for the retry
      if (!this.failing) this.o.log.error({ err, queued: this.queuedLines }, 'writing the execution history failed; retrying');
      this.failing = true;
      if (!this.closed) this.flusher.schedule(Math.max(this.o.flushIntervalMs, 1000));
      throw err;
    }
    for (const id of states.keys()) this.wrote(id);
    for (const id of ins.ids) this.wrote(id);
    for (const id of outs.ids) this.wrote(id);
    for (const w of waiters) w();
    const perSegment = Math.max(1, Math.ceil(this.o.maxCount / 10));
    if (this.size >= this.o.maxSegmentBytes || this.fresh >= perSegment) {
      await this.openNext().then(() => this.retainInBackground(), (err) => { this.broken = true; this.o.log.error({ err }, 'execution history segment rotation failed'); });
    }
  }

  /** Segment bookkeeping for a line of `id` written to the current segment. */
  private wrote(id: string): void {
    if (this.place(id, this.seq)) this.fresh++;
  }

  // ------------------------------------------------------------ reading

  /** The stored output chunks of one execution, in order. Writes what is queued first. */
  async readOutput(id: string): Promise<Chunk[]> {
    await this.flush().catch(() => undefined);
    const slot = this.ids.find(id);
    if (slot < 0) return [];
    const prefix = Buffer.from(`${OUT_PREFIX}"id":${JSON.stringify(id)},`);
    const chunks: Chunk[] = [];
    for (let seq = this.first[slot]!, last = this.last[slot]!; seq <= last; seq++) for (const name of [stateName(seq), outName(seq)]) {
      const buf = await readFile(join(this.o.dir, name)).catch(() => Buffer.alloc(0));
      for (const line of linesOf(buf, prefix, true)) {
        try {
          const l = JSON.parse(line) as OutputLine;
          if (l.k !== 'o' || l.id !== id) continue;
          chunks.push({ stream: l.s === 1 ? 'STDERR' : 'STDOUT', offset: l.o, data: Buffer.from(l.d, 'base64') });
        } catch { /* torn line */ }
      }
    }
    return chunks.sort((a, b) => a.offset - b.offset);
  }

  /** Flushes what is queued and closes the files. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.flusher.cancel();
    clearInterval(this.retainTimer);
    // A write takes what was queued when it started: what came in while it ran goes with the next
    // (a few rounds at most; a failing disk stops at the first error).
    for (let round = 0; round < 5; round++) {
      const ok = await this.flush().then(() => true, (err) => { this.o.log.error({ err, lost: this.queuedLines }, 'execution history not written at close'); return false; });
      if (!ok || this.queuedLines === 0) break;
    }
    await this.flusher.idle();
    await this.retaining; // its unlinks and the executions it drops settle before the files close
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w(); // the streams that would send these acknowledgements are closing
    await this.fh?.close().catch(() => undefined);
    await this.outFh?.close().catch(() => undefined);
    this.fh = this.outFh = undefined;
    if (this.dropped) this.o.log.error({ dropped: this.dropped }, 'execution output lines were dropped while the disk failed');
  }
}
