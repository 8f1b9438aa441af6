/**
 * What a snapshot holds, once decrypted: a sequence of entries, each
 *   u32 BE length of the entry's JSON meta | meta | `meta.size` bytes of body.
 * The first entry is the manifest, the last one `end`. Backend-neutral on purpose: the store is
 * carried as documents per collection (JSON Lines), not as lowdb's file, so a restore can load it
 * into any Store backend.
 *
 * Entry kinds:
 * - manifest: JSON (Manifest below);
 * - collection: `name` a store collection, body one document per line;
 * - file: `name` a path under the data dir (config, CA and hub certificates and keys, master key
 *   versions, CA rotation state), `mode` its permission bits;
 * - segment: `area` audit | executions, `name` the segment file, body its bytes up to the offset
 *   recorded at the snapshot's point in time (whole lines only);
 * - end: no body; `entries` the number of entries before it.
 */
import { TrellisError } from '../../common/errors.js';
import type { SnapshotWriter } from './format.js';

export type EntryKind = 'manifest' | 'collection' | 'file' | 'segment' | 'end';
export type SegmentArea = 'audit' | 'executions';

export interface EntryMeta {
  kind: EntryKind;
  name: string;
  size: number;
  mode?: number;
  area?: SegmentArea;
  count?: number;
  entries?: number;
}

export interface Manifest {
  format: 1;
  createdAtMs: number;
  createdBy: string;
  trellisVersion: string;
  note: string;
  caFingerprint: string;
  /** Documents per collection. */
  collections: Record<string, number>;
  /** Files under the data dir, relative paths. */
  files: string[];
  /** Segment files per area with the bytes taken from each. */
  segments: Record<SegmentArea, Array<{ name: string; size: number }>>;
  /** Master key versions held. */
  keyVersions: number[];
}

const MAX_META = 64 * 1024;
const invalid = (msg: string) => new TrellisError('TRELLIS_E_SNAPSHOT_INVALID', msg);

/** Writes entries into an encrypted snapshot. */
export class PayloadWriter {
  entries = 0;
  constructor(private readonly w: SnapshotWriter) {}

  private async meta(m: EntryMeta): Promise<void> {
    const json = Buffer.from(JSON.stringify(m), 'utf8');
    const len = Buffer.alloc(4);
    len.writeUInt32BE(json.length);
    await this.w.write(Buffer.concat([len, json]));
    this.entries++;
  }

  async entry(m: Omit<EntryMeta, 'size'>, body: Buffer): Promise<void> {
    await this.meta({ ...m, size: body.length });
    await this.w.write(body);
  }

  /** An entry whose body comes in pieces; they must add up to exactly `size` bytes. */
  async stream(m: EntryMeta, body: AsyncIterable<Buffer>): Promise<void> {
    await this.meta(m);
    let n = 0;
    for await (const b of body) {
      n += b.length;
      if (n > m.size) throw new Error(`snapshot entry ${m.kind}:${m.name} grew past its recorded size ${m.size}`);
      await this.w.write(b);
    }
    if (n !== m.size) throw new Error(`snapshot entry ${m.kind}:${m.name} ended at ${n} of its recorded ${m.size} bytes`);
  }

  async end(): Promise<void> {
    await this.meta({ kind: 'end', name: '', size: 0, entries: this.entries });
    await this.w.finish();
  }
}

/** Receives entries as they are parsed: `begin`, then the body in pieces, then `end`. */
export interface EntryHandler {
  begin(m: EntryMeta): Promise<void>;
  data(b: Buffer): Promise<void>;
  end(m: EntryMeta): Promise<void>;
}

const KINDS: ReadonlySet<string> = new Set(['manifest', 'collection', 'file', 'segment', 'end']);

/**
 * Parses the decrypted payload pushed to it chunk by chunk. Bodies are handed on as they arrive
 * (never buffered whole here). `finish()` throws unless the `end` entry was seen and its count
 * matches.
 */
export class PayloadParser {
  private pending: Buffer = Buffer.alloc(0);
  private cur?: EntryMeta;
  private left = 0;
  private seen = 0;
  private ended = false;

  constructor(private readonly h: EntryHandler) {}

  async push(chunk: Buffer): Promise<void> {
    let buf = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    this.pending = Buffer.alloc(0);
    while (buf.length > 0) {
      if (this.ended) throw invalid('snapshot has data after its end entry; the file is damaged');
      if (this.cur) {
        const take = Math.min(this.left, buf.length);
        if (take > 0) await this.h.data(buf.subarray(0, take));
        this.left -= take;
        buf = buf.subarray(take);
        if (this.left === 0) await this.close();
        continue;
      }
      if (buf.length < 4) break;
      const len = buf.readUInt32BE(0);
      if (len < 2 || len > MAX_META) throw invalid(`snapshot entry ${this.seen} has a bad header length (${len}); the file is damaged`);
      if (buf.length < 4 + len) break;
      let m: EntryMeta;
      try { m = JSON.parse(buf.subarray(4, 4 + len).toString('utf8')) as EntryMeta; } catch { throw invalid(`snapshot entry ${this.seen} has a header that is not JSON; the file is damaged`); }
      if (!m || !KINDS.has(m.kind) || typeof m.name !== 'string' || !Number.isSafeInteger(m.size) || m.size < 0) throw invalid(`snapshot entry ${this.seen} has a bad header; the file is damaged`);
      if (this.seen === 0 && m.kind !== 'manifest') throw invalid('snapshot does not start with its manifest; the file is damaged');
      buf = buf.subarray(4 + len);
      if (m.kind === 'end') {
        if (m.entries !== this.seen) throw invalid(`snapshot end entry counts ${m.entries} entries, ${this.seen} were read; the file is damaged`);
        this.ended = true;
        continue;
      }
      this.cur = m;
      this.left = m.size;
      this.seen++;
      await this.h.begin(m);
      if (this.left === 0) await this.close();
    }
    if (buf.length) this.pending = Buffer.from(buf);
  }

  private async close(): Promise<void> {
    const m = this.cur!;
    this.cur = undefined;
    await this.h.end(m);
  }

  finish(): void {
    if (!this.ended || this.cur || this.pending.length) throw invalid('snapshot payload ends before its end entry; the file is damaged or truncated');
  }
}
