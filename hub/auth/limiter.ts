/**
 * What a login may cost the hub, decided before any password is checked:
 *  - password checks in progress, in all and per source address: past either, a login is
 *    refused at once ("too many logins in progress, retry"), never queued behind the KDF;
 *  - failed logins per source address inside a window, whatever the names tried: past it, the
 *    address is refused at once until old failures leave the window.
 * Refusals are TRELLIS_E_RATE_LIMITED (gRPC RESOURCE_EXHAUSTED) and cost no KDF time. The
 * failure table is in memory and bounded like the lock-out table.
 */
import { TrellisError } from '../../common/errors.js';
import { formatDuration } from '../../common/duration.js';

export interface LoginLimits {
  /** Password checks in progress at once, in all. */
  concurrent: number;
  /** Password checks in progress at once from one source address. */
  concurrentPerAddress: number;
  /** Failed logins from one source address inside the window before it is refused. */
  failuresPerAddress: number;
  failureWindowMs: number;
  /**
   * A refused login is answered after this long (a tarpit): a client that waits for each answer
   * gets one refusal per this much time and slot, not thousands a second.
   */
  refusalDelayMs: number;
}

export const DEFAULT_LOGIN_LIMITS: LoginLimits = { concurrent: 4, concurrentPerAddress: 2, failuresPerAddress: 20, failureWindowMs: 5 * 60_000, refusalDelayMs: 1000 };

const TABLE_MAX = 100_000;

export class LoginLimiter {
  private inFlight = 0;
  private readonly inFlightBySource = new Map<string, number>();
  private readonly failures = new Map<string, number[]>();

  constructor(readonly limits: LoginLimits) {}

  /**
   * Takes a slot for one password check from `source`, or throws TRELLIS_E_RATE_LIMITED.
   * The returned function gives the slot back (call it exactly once, in a finally).
   */
  admit(source: string, now: number): () => void {
    const recent = this.recentFailures(source, now);
    if (recent.length >= this.limits.failuresPerAddress) {
      const retryIn = recent[0]! + this.limits.failureWindowMs - now;
      throw new TrellisError('TRELLIS_E_RATE_LIMITED', `too many failed logins from your address: retry in ${formatDuration(Math.max(1000, retryIn))}`);
    }
    const mine = this.inFlightBySource.get(source) ?? 0;
    if (this.inFlight >= this.limits.concurrent || mine >= this.limits.concurrentPerAddress) {
      throw new TrellisError('TRELLIS_E_RATE_LIMITED', 'too many logins in progress: retry in a moment');
    }
    this.inFlight++;
    this.inFlightBySource.set(source, mine + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.inFlight--;
      const n = (this.inFlightBySource.get(source) ?? 1) - 1;
      if (n <= 0) this.inFlightBySource.delete(source); else this.inFlightBySource.set(source, n);
    };
  }

  /** A failed login from `source` (wrong name or password, malformed request). */
  failed(source: string, now: number): void {
    const recent = [...this.recentFailures(source, now), now].slice(-this.limits.failuresPerAddress);
    this.failures.delete(source); // re-insert: most recently touched last
    this.failures.set(source, recent);
    while (this.failures.size > TABLE_MAX) this.failures.delete(this.failures.keys().next().value!);
  }

  private recentFailures(source: string, now: number): number[] {
    return (this.failures.get(source) ?? []).filter((t) => now - t < this.limits.failureWindowMs);
  }
}
