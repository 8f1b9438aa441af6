/**
 * How often one agent may renew its certificate: a sliding window per agent, in memory (a hub
 * restart forgets it, which only ever allows more). The limit never falls below three times
 * what the certificate lifetime needs (agents renew at about 2/3 of it), so a short
 * `agentCertTtl` does not lock agents out.
 */
import { TrellisError } from '../../common/errors.js';
import { formatDuration } from '../../common/duration.js';

export interface RenewLimitOptions {
  /** Renewals per agent per window. */
  max: number;
  windowMs: number;
  /** The agent certificate lifetime (raises the limit for short lifetimes). */
  certTtlMs: number;
  now?: () => number;
}

export class RenewLimiter {
  /** The limit in force: max(max, 3 × the renewals the certificate lifetime needs per window). */
  readonly limit: number;
  private readonly recent = new Map<string, number[]>();
  private readonly now: () => number;

  constructor(private readonly o: RenewLimitOptions) {
    const scheduled = Math.ceil(o.windowMs / Math.max(1, (o.certTtlMs * 2) / 3));
    this.limit = Math.max(o.max, 3 * scheduled);
    this.now = o.now ?? Date.now;
  }

  /** Counts one renewal of the agent, or throws TRELLIS_E_RATE_LIMITED when it is over the limit. */
  take(agentId: string): void {
    const now = this.now();
    const since = now - this.o.windowMs;
    const times = (this.recent.get(agentId) ?? []).filter((t) => t > since);
    if (times.length >= this.limit) {
      this.recent.set(agentId, times);
      const wait = times[0]! + this.o.windowMs - now;
      throw new TrellisError('TRELLIS_E_RATE_LIMITED',
        `agent ${agentId} renewed its certificate ${times.length} times in the last ${formatDuration(this.o.windowMs)} (limit ${this.limit}); the next renewal is allowed in ${formatDuration(Math.max(1000, wait))}`);
    }
    times.push(now);
    this.recent.set(agentId, times);
    if (this.recent.size > 1024 && this.recent.size % 1024 === 0) this.sweep(since);
  }

  /** Forgets agents with no renewal inside the window (keeps the map bounded by active agents). */
  private sweep(since: number): void {
    for (const [id, times] of this.recent) if (!times.some((t) => t > since)) this.recent.delete(id);
  }
}
