/**
 * The outbox's tail cache: frames this process just wrote, with the caller's event objects, so
 * that while the hub keeps up events go out without a disk read or a decode. Bounded: a frame
 * that does not fit is simply not cached and is read from disk like everything else. A frame
 * is found by position, so rewinds and frames read from disk need no bookkeeping here.
 */
import type * as T from '../../common/proto-gen/trellis/v1/index.js';
import type { Position } from './files.js';
import { FRAME_HEADER_BYTES } from './record.js';

interface Frame {
  segment: number;
  /** Offset of the frame header in its segment. */
  start: number;
  /** Records in the segment before this frame. */
  index0: number;
  /** End of each record, relative to `start`. */
  ends: number[];
  events: T.Event[];
}

export class TailCache {
  private frames: Frame[] = [];
  private head = 0;
  private held = 0;

  constructor(private readonly maxEvents: number) {}

  add(segment: number, start: number, index0: number, ends: number[], events: T.Event[]): void {
    if (this.held + events.length > this.maxEvents) return;
    this.frames.push({ segment, start, index0, ends, events });
    this.held += events.length;
  }

  /**
   * Moves up to `max` events at `pos` into `out` and advances `pos` over them. Returns the bytes
   * passed, or -1 when `pos` is not inside the oldest cached frame (read the disk instead).
   */
  take(pos: Position, max: number, out: T.Event[]): number {
    for (; this.head < this.frames.length; this.drop()) {
      const f = this.frames[this.head]!;
      if (pos.segment < f.segment || (pos.segment === f.segment && pos.offset < f.start)) return -1;
      const i = pos.index - f.index0;
      if (pos.segment > f.segment || i >= f.events.length) continue; // behind the reader: stale
      let bytes = 0;
      if (pos.offset === f.start) { bytes = FRAME_HEADER_BYTES; pos.offset += FRAME_HEADER_BYTES; }
      const n = Math.min(max, f.events.length - i);
      for (let k = i; k < i + n; k++) out.push(f.events[k]!);
      const end = f.start + f.ends[i + n - 1]!;
      bytes += end - pos.offset;
      pos.offset = end;
      pos.index += n;
      if (i + n === f.events.length) this.drop();
      return bytes;
    }
    return -1;
  }

  clear(): void {
    this.frames = [];
    this.head = 0;
    this.held = 0;
  }

  private drop(): void {
    this.held -= this.frames[this.head]!.events.length;
    this.frames[this.head++] = undefined as unknown as Frame;
    if (this.head === this.frames.length) this.clear();
    else if (this.head > 1024) { this.frames = this.frames.slice(this.head); this.head = 0; }
  }
}
