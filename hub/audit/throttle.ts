/**
 * The one throttle of refusal records in the audit log. Refusals from a flood must not fill the
 * disk (nor push real records out of retention): identical refusal records (same method, result,
 * actor, target, source and reason, numbers aside) are written once per window; the ones
 * suppressed inside it are counted and written as one summary record when the window ends
 * ("N more like this in 60s, not recorded one by one: <reason>", with the source as its address).
 * Successful records pass straight through, and so do the refusals `only` leaves out. At most
 * `maxKeys` distinct refusals are tracked per window; past that, refusals of the same method and
 * result share one key, so a flood from many addresses still writes a bounded number of records.
 *
 * Every kind of refusal goes through here, rate-limit refusals included (the pre-auth gate and
 * the call wrapper record them like any other refusal); hub/grpc/refusals.ts only keeps their
 * log lines down. The source is `sourceKey` (hub/auth/source.ts), the key limits and lock-outs
 * count by: port dropped, IPv6 by its /64. An attacker who owns a /64 can send from 2^64
 * addresses; counted one by one they would fill the key table at once and fold every other
 * caller's refusals into the shared key, counted by its /64 they take one key.
 */
import type { AuditEntry, AuditSink } from './types.js';
import { sourceKey } from '../auth/source.js';

export interface RefusalThrottleOptions {
  /** @default 60000 */
  windowMs?: number;
  /** @default 256 */
  maxKeys?: number;
  /** Which refusals are throttled; the others pass straight through. @default every refusal */
  only?: (e: AuditEntry) => boolean;
  now?: () => number;
}

/** `source`: what the summary gives as its address (`*` for the key many sources share). */
interface Slot { startMs: number; suppressed: number; entry: AuditEntry; source: string }

export class RefusalThrottle implements AuditSink {
  private readonly slots = new Map<string, Slot>();
  private readonly windowMs: number;
  private readonly maxKeys: number;
  private readonly now: () => number;
  private readonly only: (e: AuditEntry) => boolean;
  private readonly timer: NodeJS.Timeout;
  /** Refusals not written one by one (counted in summaries). */
  suppressed = 0;

  constructor(private readonly sink: AuditSink, o: RefusalThrottleOptions = {}) {
    this.windowMs = o.windowMs ?? 60_000;
    this.maxKeys = o.maxKeys ?? 256;
    this.only = o.only ?? (() => true);
    this.now = o.now ?? Date.now;
    this.timer = setInterval(() => this.sweep(), Math.max(100, Math.floor(this.windowMs / 2)));
    this.timer.unref();
  }

  record(e: AuditEntry): void {
    if (e.result === 'ok' || !this.only(e)) { this.sink.record(e); return; }
    const now = this.now();
    // Numbers in the reason (times, counts) do not make a refusal different.
    const source = sourceKey(e.sourceAddress);
    let key = [e.method, e.result, e.actor, e.target, source, e.detail.slice(0, 200).replace(/\d+\w*/g, '#').replace(/#(?: #)+/g, '#')].join('\u0000');
    let summarySource = source;
    if (!this.slots.has(key) && this.slots.size >= this.maxKeys) { key = [e.method, e.result, '*'].join('\u0000'); summarySource = '*'; }
    const slot = this.slots.get(key);
    if (slot && now - slot.startMs < this.windowMs) {
      slot.suppressed++;
      this.suppressed++;
      return;
    }
    if (slot) this.summarize(slot);
    this.slots.set(key, { startMs: now, suppressed: 0, entry: e, source: summarySource });
    this.sink.record(e);
  }

  private summarize(slot: Slot): void {
    if (slot.suppressed === 0) return;
    const secs = Math.round(this.windowMs / 1000);
    this.sink.record({
      ...slot.entry, timeMs: this.now(), sourceAddress: slot.source, // the suppressed ones came from this source, not all from the first's address
      detail: `${slot.suppressed} more like this in ${secs}s, not recorded one by one: ${slot.entry.detail}`.slice(0, 1024),
    });
  }

  /** Writes the summaries of windows that ended and forgets them. */
  sweep(force = false): void {
    const now = this.now();
    for (const [key, slot] of [...this.slots]) {
      if (!force && now - slot.startMs < this.windowMs) continue;
      this.summarize(slot);
      this.slots.delete(key);
    }
  }

  /** Writes every pending summary (hub shutdown). */
  close(): void {
    clearInterval(this.timer);
    this.sweep(true);
  }
}
