/**
 * Skipping rules an event cannot match, without evaluating them: the rules of one trigger type
 * that compare a value with a number (`percent gt 90`, `disk.free lt 1000`: common/rules
 * criteria.ts `thresholdOf`) are kept sorted by that number, per value they read; an event's
 * value is read once per such group and only the rules whose threshold it passes are evaluated
 * (in full, as before). A rule matches only when its threshold criterion holds, so no rule that
 * would match is skipped; rules without a threshold are always evaluated. Ten alert rules at
 * different levels of one gauge cost one read and one comparison for an event under them all,
 * instead of ten evaluations.
 */
import type { Threshold } from '../../common/rules/criteria.js';
import type { TriggerEvent } from '../../common/automation/types.js';

/** Below these, evaluating every rule costs about as much as the prefilter. */
const MIN_RULES = 4;
const MIN_WITH_THRESHOLD = 2;

/** One direction of a group: patterns sorted outward (ascending for "above", descending for "below"). */
interface Side { patterns: number[]; strict: boolean[]; rule: number[] }
interface Group { get: (ev: TriggerEvent) => unknown; above: Side; below: Side }

export class Prefilter {
  private constructor(
    /** 1 for a rule evaluated whatever the event (it has no threshold). */
    private readonly always: Uint8Array,
    private readonly groups: readonly Group[],
  ) {
    this.scratch = new Uint8Array(always.length);
  }

  /** A prefilter over rules with these thresholds (by position), or undefined when it would not pay. */
  static of(thresholds: readonly (Threshold | undefined)[]): Prefilter | undefined {
    const n = thresholds.length;
    if (n < MIN_RULES || thresholds.filter(Boolean).length < MIN_WITH_THRESHOLD) return undefined;
    const always = new Uint8Array(n);
    const byKey = new Map<string, { get: Group['get']; above: [number, boolean, number][]; below: [number, boolean, number][] }>();
    thresholds.forEach((t, i) => {
      if (!t) { always[i] = 1; return; }
      let g = byKey.get(t.key);
      if (!g) byKey.set(t.key, (g = { get: t.get, above: [], below: [] }));
      (t.above ? g.above : g.below).push([t.pattern, t.strict, i]);
    });
    const side = (l: [number, boolean, number][], asc: boolean): Side => {
      l.sort((a, b) => (asc ? a[0] - b[0] : b[0] - a[0]));
      return { patterns: l.map((x) => x[0]), strict: l.map((x) => x[1]), rule: l.map((x) => x[2]) };
    };
    return new Prefilter(always, [...byKey.values()].map((g) => ({ get: g.get, above: side(g.above, true), below: side(g.below, false) })));
  }

  /** The answer of candidates(), reused from one event to the next. */
  private readonly scratch: Uint8Array;

  /**
   * Per rule (by position), 1 when it may match `ev` (it is evaluated), 0 when it cannot. The
   * array answered is valid until the next call (it is reused).
   */
  candidates(ev: TriggerEvent): Uint8Array {
    const m = this.scratch;
    m.set(this.always);
    for (const g of this.groups) {
      let v: unknown;
      try { v = g.get(ev); } catch { // never seen (getters only read): evaluate them all
        for (const s of [g.above, g.below]) for (const r of s.rule) m[r] = 1;
        continue;
      }
      if (typeof v !== 'number') continue; // a threshold holds for numbers only
      const a = g.above;
      for (let k = 0; k < a.patterns.length; k++) {
        const p = a.patterns[k]!;
        if (p < v) m[a.rule[k]!] = 1;
        else if (p === v) { if (!a.strict[k]) m[a.rule[k]!] = 1; } else break; // sorted: no later one passes (nor any, for NaN)
      }
      const b = g.below;
      for (let k = 0; k < b.patterns.length; k++) {
        const p = b.patterns[k]!;
        if (p > v) m[b.rule[k]!] = 1;
        else if (p === v) { if (!b.strict[k]) m[b.rule[k]!] = 1; } else break;
      }
    }
    return m;
  }
}
