import { dirname, resolve } from 'node:path';
import { Low } from 'lowdb';
import { TrellisError } from '../../common/errors.js';
import { ensureDir, removeStaleTempFiles } from '../../common/fsutil.js';
import { MapStore, type Tables } from './base.js';
import { StoreFileAdapter } from './file.js';

export interface LowdbStoreOptions {
  /** The JSON file; its directory is created (0700) if missing. */
  path: string;
  /**
   * How long a mutation waits for others to share its write. Every mutation accepted before the
   * write starts goes out in that one write.
   * @default 10
   */
  coalesceMs?: number;
}

interface Waiter {
  /** The write must contain state version >= this to settle the waiter. */
  version: number;
  /** A flush/close is waiting: write without the coalescing delay. */
  urgent: boolean;
  resolve: () => void;
  reject: (err: unknown) => void;
}

/**
 * The embedded store: all documents in memory, persisted as one JSON file through lowdb.
 *
 * Writes are coalesced. A mutation changes memory at once, bumps the state version and waits
 * for a write holding that version; a write starts `coalesceMs` after the first waiting
 * mutation (at once for flush/close) and snapshots the whole state, so every mutation accepted
 * before it started shares it. At most one write runs at a time; mutations that arrive during a
 * write get exactly one more write after it. A failed write rejects the mutations it held; their
 * changes stay in memory and go out with the next write (next mutation or flush).
 */
export class LowdbStore extends MapStore {
  readonly path: string;
  readonly #db: Low<Tables>;
  readonly #adapter: StoreFileAdapter;
  readonly #coalesceMs: number;
  /** Bumped by every change to memory. */
  #version = 0;
  /** The highest version a completed write holds. */
  #durable = 0;
  #waiters: Waiter[] = [];
  #timer: NodeJS.Timeout | undefined;
  #writing = false;

  private constructor(db: Low<Tables>, adapter: StoreFileAdapter, path: string, coalesceMs: number) {
    super(db.data);
    this.#db = db;
    this.#adapter = adapter;
    this.path = path;
    this.#coalesceMs = coalesceMs;
  }

  /** Reads the file (a missing one is an empty store); TRELLIS_E_CONFIG if it is corrupt. */
  static async open(opts: LowdbStoreOptions): Promise<LowdbStore> {
    const path = resolve(opts.path);
    const coalesceMs = opts.coalesceMs ?? 10;
    if (!Number.isFinite(coalesceMs) || coalesceMs < 0) {
      throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `store coalesceMs must be a number >= 0, got ${coalesceMs}`);
    }
    await ensureDir(dirname(path), 0o700);
    // Left by a process killed mid-write; the file itself is intact (old or new content).
    await removeStaleTempFiles(path);
    const adapter = new StoreFileAdapter(path);
    const db = new Low<Tables>(adapter, new Map());
    await db.read();
    return new LowdbStore(db, adapter, path, coalesceMs);
  }

  /** File writes started since open (for tests and metrics). */
  get writes(): number {
    return this.#adapter.writes;
  }

  protected override persist(changed: boolean): Promise<void> {
    if (changed) this.#version++;
    return this.#waitFor(this.#version, this.#coalesceMs);
  }

  protected override persistAll(): Promise<void> {
    return this.#waitFor(this.#version, 0);
  }

  #waitFor(version: number, delayMs: number): Promise<void> {
    if (version <= this.#durable) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.#waiters.push({ version, urgent: delayMs === 0, resolve, reject });
      this.#schedule(delayMs);
    });
  }

  /** Makes sure a write will start within `delayMs` (a running write reschedules when it ends). */
  #schedule(delayMs: number): void {
    if (this.#writing) return;
    if (this.#timer) {
      if (delayMs > 0) return;
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    if (delayMs === 0) {
      void this.#write();
    } else {
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        void this.#write();
      }, delayMs);
    }
  }

  async #write(): Promise<void> {
    this.#writing = true;
    const version = this.#version;
    let error: unknown;
    try {
      await this.#db.write();
      this.#durable = Math.max(this.#durable, version);
    } catch (err) {
      error = err;
    }
    this.#writing = false;
    const settled = this.#waiters.filter((w) => w.version <= version);
    this.#waiters = this.#waiters.filter((w) => w.version > version);
    for (const w of settled) {
      if (error === undefined) w.resolve();
      else w.reject(error);
    }
    if (this.#waiters.length > 0) {
      // Calls that arrived during the write share exactly one more write.
      this.#schedule(this.#waiters.some((w) => w.urgent) ? 0 : this.#coalesceMs);
    }
  }
}
