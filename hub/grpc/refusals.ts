/**
 * Log lines of calls refused by a rate limit (TRELLIS_E_RATE_LIMITED: the pre-auth gate, the
 * login limiter, the KDF queue). They come in floods, and one warn line each would let an
 * unauthenticated flood fill the disk, so they are counted per (method, source) and written as
 * one line per pair every `intervalMs` ("calls refused by a rate limit", with the count).
 *
 * The log only: their audit records take the normal audit path (wrap.ts `finish`, the pre-auth
 * gate) into the one refusal throttle, hub/audit/throttle.ts, which counts identical refusals of
 * every kind. The source is `sourceKey` (hub/auth/source.ts), as the limits and the throttle
 * count it: port dropped, IPv6 by its /64.
 */
import type { Logger } from '../../common/log.js';
import { sourceKey } from '../auth/source.js';

/** Distinct (method, source) pairs counted per interval; the rest are summed under one "other" entry. */
const MAX_KEYS = 10_000;

export class RefusalLog {
  private counts = new Map<string, { method: string; source: string; reason: string; n: number }>();
  private timer?: NodeJS.Timeout;

  constructor(private readonly log: Logger, private readonly intervalMs = 10_000) {}

  /** Counts one refused call, for the next summary line. */
  note(method: string, peer: string, reason: string): void {
    const source = sourceKey(peer);
    let key = `${method} ${source}`;
    if (!this.counts.has(key) && this.counts.size >= MAX_KEYS) key = `${method} other`;
    const c = this.counts.get(key);
    if (c) c.n++;
    else this.counts.set(key, { method, source: key.endsWith(' other') ? 'other' : source, reason: reason.slice(0, 200), n: 1 });
    if (!this.timer) {
      this.timer = setTimeout(() => { this.timer = undefined; this.flush(); }, this.intervalMs);
      this.timer.unref();
    }
  }

  flush(): void {
    const counts = this.counts;
    this.counts = new Map();
    for (const c of counts.values()) {
      this.log.warn({ method: c.method, source: c.source, refused: c.n, reason: c.reason }, 'calls refused by a rate limit');
    }
  }

  close(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.flush();
  }
}
