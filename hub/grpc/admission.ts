/**
 * Load shedding on the agent port. After a hub restart every agent comes back within the
 * backoff window; admitting each one costs a registry lookup, a store write and some messages.
 * Streams being admitted (accepted, not yet welcomed or refused) are bounded: past the bound a
 * new stream is refused at once with RESOURCE_EXHAUSTED (TRELLIS_E_RATE_LIMITED) and a
 * `retry-after-ms` trailer the agent honors (jittered), instead of queueing it behind the others
 * until its deadline passes and it retries anyway, which is how a slow moment becomes a storm.
 */
import { RETRY_AFTER_KEY } from '../../common/backoff.js';
import { TrellisError } from '../../common/errors.js';
import { toStatus, type StatusObject } from '../../common/grpc-errors.js';

/** The adaptive retry-after never exceeds this (nor the configured one, if larger). */
export const MAX_ADAPTIVE_RETRY_AFTER_MS = 30_000;

export interface AdmissionOptions {
  /** Streams being admitted at once. */
  maxPending: number;
  /** The retry-after given to a shed stream, in ms (the agent adds up to as much again at random). */
  retryAfterMs: number;
  /** Slots one key (an agent id) may hold at once, so one caller cannot hold everyone's. @default 4 */
  maxPendingPerKey?: number;
}

/** Slots one agent may hold at once by default: a reconnect overlapping a renewal fits. */
export const MAX_PENDING_PER_KEY = 4;

export class AdmissionGate {
  private pending = 0;
  /** Slots held per key (claim()). */
  private readonly perKey = new Map<string, number>();
  /** Sheds in the current one-second window and the one before (the retry-after grows with them). */
  private window = { startMs: 0, count: 0, previous: 0 };
  /** Streams shed since the hub started, and since the last summary log line. */
  readonly stats = { admitted: 0, shed: 0, shedSinceLog: 0, peakPending: 0 };

  constructor(private readonly opts: AdmissionOptions, private readonly now: () => number = Date.now) {}

  get inFlight(): number { return this.pending; }

  /** A slot for one admission, or undefined when full (shed the stream). Call the release once. */
  tryEnter(): (() => void) | undefined {
    if (this.pending >= this.opts.maxPending) {
      this.stats.shed++;
      this.stats.shedSinceLog++;
      return undefined;
    }
    this.pending++;
    if (this.pending > this.stats.peakPending) this.stats.peakPending = this.pending;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.pending--;
      this.stats.admitted++;
    };
  }

  /**
   * Binds a slot from tryEnter() to `key` once the caller is identified: a release that frees
   * both, or undefined when `key` already holds maxPendingPerKey slots (the slot is then freed).
   */
  claim(key: string, release: () => void): (() => void) | undefined {
    const held = this.perKey.get(key) ?? 0;
    if (held >= (this.opts.maxPendingPerKey ?? MAX_PENDING_PER_KEY)) { release(); return undefined; }
    this.perKey.set(key, held + 1);
    let released = false;
    return () => {
      release();
      if (released) return;
      released = true;
      const n = (this.perKey.get(key) ?? 1) - 1;
      if (n > 0) this.perKey.set(key, n); else this.perKey.delete(key);
    };
  }

  /** Slots `key` holds now. */
  heldBy(key: string): number { return this.perKey.get(key) ?? 0; }

  private tick(): void {
    const t = this.now();
    if (t - this.window.startMs < 1000) return;
    this.window = { startMs: t, count: 0, previous: t - this.window.startMs < 2000 ? this.window.count : 0 };
  }

  /**
   * The retry-after for a stream shed now: the configured one, times 1 + (streams shed in the
   * last second before it / maxPending), at most MAX_ADAPTIVE_RETRY_AFTER_MS. The more agents are turned
   * away, the wider they are told to spread; a brief overflow gets the base value.
   */
  retryAfterMs(): number {
    this.tick();
    const shedRecently = Math.max(this.window.count, this.window.previous);
    const factor = 1 + Math.floor(shedRecently / this.opts.maxPending);
    return Math.max(this.opts.retryAfterMs, Math.min(MAX_ADAPTIVE_RETRY_AFTER_MS, this.opts.retryAfterMs * factor));
  }

  /** The status a shed stream ends with: RESOURCE_EXHAUSTED, the Trellis code and retry-after-ms. */
  shedStatus(reqId: string): StatusObject {
    const ms = this.retryAfterMs();
    this.window.count++;
    const s = toStatus(new TrellisError('TRELLIS_E_RATE_LIMITED',
      `the hub is admitting ${this.opts.maxPending} other agents; retry after ${ms} ms`), reqId);
    s.metadata.set(RETRY_AFTER_KEY, String(ms));
    return s;
  }
}
