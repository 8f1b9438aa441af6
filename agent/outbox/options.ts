/** The outbox's options (user-facing, with TSDoc defaults) and their one validation. */
import { TrellisError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';

const MB = 1024 * 1024;

export interface OutboxOptions {
  /** The outbox directory (created with mode 0700), normally DATA/outbox. */
  dir: string;
  log: Logger;
  /** Most unacknowledged events held. @default 100000 */
  maxEvents?: number;
  /** Most bytes of unacknowledged records held. @default 268435456 (256 MiB) */
  maxBytes?: number;
  /** Size at which a segment is closed and a new one started. @default 4194304 (4 MiB) */
  segmentBytes?: number;
  /** Background fdatasync period; 0 syncs inside every append. @default 100 */
  syncIntervalMs?: number;
  /**
   * Least time between two saves of the acknowledged cursor (temp file, fsync, rename, directory
   * fsync: two journal commits). A lagging cursor only re-sends events the hub drops by id; under
   * load it is saved after every 10,000 acknowledged events anyway. 0: at every background sync.
   * @default 1000
   */
  cursorIntervalMs?: number;
}

export interface Compiled { dir: string; log: Logger; maxEvents: number; maxBytes: number; segmentBytes: number; syncIntervalMs: number; cursorIntervalMs: number }

export interface OutboxStats {
  /** Events accepted and not yet acknowledged. */
  queued: number;
  /** Bytes of their records. */
  bytes: number;
  /** Events accepted since this process opened the outbox. */
  accepted: number;
  /** Events refused (outbox full, invalid, or a write error) since open. */
  refused: number;
  /** Of the refused, those refused because the event itself was invalid. */
  invalid: number;
  acked: number;
  /** Segment files on disk. */
  segments: number;
  /** Bytes of torn or corrupt records dropped (at open, or found while reading). */
  droppedBytes: number;
}

export function compile(o: OutboxOptions): Compiled {
  const int = (name: keyof OutboxOptions, v: number | undefined, def: number, min: number, max: number): number => {
    const n = v ?? def;
    if (!Number.isInteger(n) || n < min || n > max) throw new TrellisError('TRELLIS_E_CONFIG', `outbox option ${name} must be an integer from ${min} to ${max} (got ${String(v)})`);
    return n;
  };
  if (typeof o.dir !== 'string' || o.dir === '') throw new TrellisError('TRELLIS_E_CONFIG', 'outbox option dir is required');
  return {
    dir: o.dir, log: o.log,
    maxEvents: int('maxEvents', o.maxEvents, 100_000, 1, 100_000_000),
    maxBytes: int('maxBytes', o.maxBytes, 256 * MB, 4096, 64 * 1024 * MB),
    segmentBytes: int('segmentBytes', o.segmentBytes, 4 * MB, 4096, 1024 * MB),
    syncIntervalMs: int('syncIntervalMs', o.syncIntervalMs, 100, 0, 60_000),
    cursorIntervalMs: int('cursorIntervalMs', o.cursorIntervalMs, 1000, 0, 60_000),
  };
}
