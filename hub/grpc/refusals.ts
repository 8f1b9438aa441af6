/**
 * Calls refused by a rate limit come in floods. One log line and one audit record each would let
 * an unauthenticated flood fill the disk and rotate real records out of the audit log, so they
 * are counted per (method, source address) and written as one summary line and one audit record
 * per pair every `intervalMs` (result `denied`, detail "N calls refused: <reason>").
 */
import type { Logger } from '../../common/log.js';
import type { AuditSink } from '../audit/types.js';
import { sourceKey } from '../auth/index.js';

/** Distinct (method, source) pairs counted per interval; the rest are summed under one "other" entry. */
const MAX_KEYS = 10_000;

export class RefusalSummary {
  private counts = new Map<string, { method: string; source: string; reason: string; n: number }>();
  private timer?: NodeJS.Timeout;

  constructor(private readonly deps: { log: Logger; audit?: AuditSink }, private readonly intervalMs = 10_000) {}

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
      this.deps.log.warn({ method: c.method, source: c.source, refused: c.n, reason: c.reason }, 'calls refused by a rate limit');
      this.deps.audit?.record({
        timeMs: Date.now(), actor: '-', tenant: '', method: c.method, target: `source:${c.source}`, result: 'denied',
        sourceAddress: c.source, detail: `${c.n} calls refused: ${c.reason}`.slice(0, 300),
      });
    }
  }

  close(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.flush();
  }
}
