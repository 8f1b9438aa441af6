/**
 * The rule language: criteria (StackStorm operators), `{{ }}` templates with kv/secret
 * references, action rendering, the rule file schema, and the small runtime pieces both the
 * hub's rules engine and the agent's edge rules use (compiled rule, index by trigger, rate gate).
 * Pure code: no I/O, no clocks except the `now` functions passed in.
 */
import type { RuleDef, TriggerEvent } from '../automation/types.js';
import { compileCriteria, explainCriteria, thresholdOf, type Threshold } from './criteria.js';
import { renderKeepingRefs } from './template.js';

export { OPERATORS, OPERATOR_ALIASES, compileCriteria, explainCriteria, getPath, normalizeCriteria, normalizeOperator, payloadKeysOf, thresholdOf, toEpochMs, type Threshold } from './criteria.js';
export { escapeTemplate, findRefs, hasTemplate, needsResolving, renderKeepingRefs, renderTemplate, resolveRefs, toText, type Ref, type RefResolver } from './template.js';
export { actionRefs, historyParameters, renderAction, validateParams, REDACTED, type RenderedAction, type RenderOptions } from './render.js';
export { shellTemplateProblem } from './shell.js';
export { normalizeRule, parseRule, ruleFileOf, ruleInputSchema, RULE_NAME_RE, TRIGGER_RE, type RuleInput } from './schema.js';

export interface CompiledRule {
  def: RuleDef;
  /** True when the event is of the rule's trigger type and every criterion holds. */
  match(ev: TriggerEvent): boolean;
  /** Every criterion evaluated, with a reason each (for `trellis rules test`). */
  explain(ev: TriggerEvent): { matched: boolean; reasons: string[] };
  /**
   * The action parameters rendered against `{ trigger: ev }`: kv/secret references kept as text
   * for the run, every value from the event escaped so that the run reads it as data, never as
   * a template (renderKeepingRefs).
   */
  parameters(ev: TriggerEvent): Record<string, unknown>;
  /** A numeric threshold the criteria hold every matching event to (thresholdOf), if any. */
  threshold?: Threshold;
}

/** Compiles a rule's criteria once. Throws TRELLIS_E_RULE_INVALID like compileCriteria. */
export function compileRule(def: RuleDef, now: () => number = Date.now): CompiledRule {
  const criteria = compileCriteria(def.criteria, now);
  const type = def.trigger;
  return {
    def,
    match: (ev) => ev.type === type && criteria(ev),
    explain: (ev) => {
      const r = explainCriteria(def.criteria, ev, now);
      if (ev.type === type) return r;
      return { matched: false, reasons: [`trigger type is ${JSON.stringify(ev.type)}, the rule wants ${JSON.stringify(type)}`, ...r.reasons] };
    },
    parameters: (ev) => renderKeepingRefs(def.action.parameters, { trigger: ev }) as Record<string, unknown>,
    threshold: thresholdOf(def.criteria),
  };
}

/**
 * Rules keyed by trigger type: an event only looks at the rules of its own type, so its cost
 * does not grow with unrelated rules. Lists are copied on write, so a list returned by
 * forTrigger stays stable while rules are added or removed.
 */
export class RuleIndex<R extends { def: RuleDef }> {
  private byKey = new Map<string, R>();
  private byType = new Map<string, readonly R[]>();

  get size(): number { return this.byKey.size; }

  /** Adds a rule, replacing any rule under the same key. */
  add(key: string, rule: R): void {
    this.remove(key);
    this.byKey.set(key, rule);
    const type = rule.def.trigger;
    this.byType.set(type, Object.freeze([...(this.byType.get(type) ?? []), rule]));
  }

  /** Removes the rule under key; false when there was none. */
  remove(key: string): boolean {
    const old = this.byKey.get(key);
    if (!old) return false;
    this.byKey.delete(key);
    const type = old.def.trigger;
    const rest = (this.byType.get(type) ?? []).filter((r) => r !== old);
    if (rest.length) this.byType.set(type, Object.freeze(rest)); else this.byType.delete(type);
    return true;
  }

  get(key: string): R | undefined { return this.byKey.get(key); }

  forTrigger(type: string): readonly R[] { return this.byType.get(type) ?? EMPTY; }

  values(): IterableIterator<R> { return this.byKey.values(); }
}
const EMPTY: readonly never[] = Object.freeze([]);

export interface RateGateOptions {
  /** After firing, refuse for this long (per key). 0 = no cooldown. */
  cooldownMs: number;
  /** At most count firings in any window of perMs (per key). */
  rateLimit?: { count: number; perMs: number } | undefined;
}

interface GateState { last: number; times: number[]; next: number }

const GATE_KEYS_MAX = 10_000;

/**
 * Cooldown plus sliding-window rate limit, per key (e.g. per agent for edge rules). O(1) per
 * call: the window is a ring of the last `count` firing times. Refusals are counted in
 * `suppressed`. Idle keys are dropped when more than 10,000 are tracked.
 */
export class RateGate {
  suppressed = 0;
  private readonly cooldownMs: number;
  private readonly count: number;
  private readonly perMs: number;
  private readonly now: () => number;
  private states = new Map<string, GateState>();

  constructor(opts: RateGateOptions, now: () => number = Date.now) {
    this.cooldownMs = Math.max(0, opts.cooldownMs || 0);
    this.count = opts.rateLimit ? Math.max(1, Math.floor(opts.rateLimit.count)) : 0;
    this.perMs = opts.rateLimit ? Math.max(0, opts.rateLimit.perMs) : 0;
    this.now = now;
  }

  /** True (and the firing is recorded) when key may fire now; false counts as suppressed. */
  tryFire(key = ''): boolean {
    if (this.cooldownMs === 0 && this.count === 0) return true;
    const now = this.now();
    let s = this.states.get(key);
    if (!s) {
      if (this.states.size >= GATE_KEYS_MAX) this.prune(now);
      s = { last: -Infinity, times: [], next: 0 };
      this.states.set(key, s);
    }
    if (now - s.last < this.cooldownMs) { this.suppressed++; return false; }
    if (this.count > 0) {
      if (s.times.length < this.count) s.times.push(now);
      else {
        if (now - s.times[s.next]! < this.perMs) { this.suppressed++; return false; }
        s.times[s.next] = now;
        s.next = (s.next + 1) % this.count;
      }
    }
    s.last = now;
    return true;
  }

  private prune(now: number): void {
    const horizon = Math.max(this.cooldownMs, this.perMs);
    for (const [k, s] of this.states) if (now - s.last >= horizon) this.states.delete(k);
    if (this.states.size >= GATE_KEYS_MAX) this.states.clear(); // all busy: forget rather than grow
  }
}
