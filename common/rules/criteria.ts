/**
 * Rule criteria: StackStorm's operators (st2common/st2common/operators.py) compiled once into
 * closures, so matching an event is a few property reads and comparisons.
 *
 * Semantics, and where they differ from StackStorm's Python on purpose:
 * - A criterion is true only when its operator says so. An operator that cannot apply (a number
 *   given to `startswith`, an object to `lessthan`, a bad date to `timediff_lt`) makes the
 *   criterion false, and its negation (`ncontains`, `incontains`, `ninside`) false too, as in
 *   StackStorm where the TypeError fails the criterion.
 * - No `true == 1` and no `"5" == 5` by accident: values compare by JSON type. One convenience:
 *   a *pattern* written as text ("5", "true") also matches a number/boolean *value* of that
 *   text, because patterns often come from a CLI flag or a YAML string. A text value never
 *   matches a number pattern (`"95" gt 90` is false: the sensor should send a number).
 * - lessthan/greaterthan/lte/gte: numbers numerically, text against text by code unit order,
 *   anything else false.
 * - contains/ncontains: substring for text, element (by equals) for a list, key for an object.
 *   icontains/incontains also accept a list of texts (case-insensitive element match).
 * - inside/in, ninside/nin: the value is an element of the pattern list (or a substring of a
 *   text pattern, or a key of an object pattern). A missing value is `nin` any list (Python's
 *   `None not in [...]`).
 * - equals with no pattern is refused when the rule is compiled (StackStorm silently never
 *   matches); an explicit `pattern: null` matches a null value. nequals is true for a missing
 *   value (StackStorm: `None != pattern`).
 * - exists/nexists: null counts as missing (StackStorm: `value is not None`).
 * - regex/iregex search anywhere, matchregex is anchored at the start with `.` matching newlines
 *   (Python re.match with DOTALL); matchwildcard is fnmatch (whole value, `*` crosses `/`). The
 *   three only look at the first 64 KiB of a value. Regexes run on RE2 (linear time, common/regex.ts);
 *   what it cannot run (backreferences, lookaround) is refused at compile time.
 * - timediff_lt/gt: seconds from the value (ISO time, zone-less taken as UTC; or epoch seconds
 *   or milliseconds, told apart by magnitude) to now, compared with the pattern (seconds).
 * - search: the pattern is nested criteria over `item` (`item.name`, `item[0]`), condition
 *   (required) `any` (some item matches every criterion), `all` (every item matches every
 *   criterion), `any2any` (some item matches some criterion) or `all2any` (every item matches
 *   some criterion). `all`/`all2any` of an empty list are true, as in StackStorm; an object is
 *   searched as a one-item list (StackStorm too); any other value makes the criterion false.
 * - `$` in regex/iregex/matchregex follows Python: the end of the text, or just before one
 *   newline that ends it (common/regex.ts pythonDollar).
 * - Paths: `trigger.payload.a.b.0.c`, `trigger.type|agent|id|tenant|timeMs`; `payload.x` means
 *   `trigger.payload.x`. StackStorm's `trigger.x` shorthand for a payload field is refused
 *   with a message (it would be ambiguous with `trigger.type`). A `#tag` suffix on a path is
 *   ignored (StackStorm criteria tags, used to test one field twice in the map form).
 * - Patterns are literal: StackStorm renders `{{ }}` in patterns; here such a pattern is refused
 *   at compile time rather than silently never matching.
 */
import type { Criterion, SearchCondition, TriggerEvent } from '../automation/types.js';
import { TrellisError } from '../errors.js';
import { parsePath, step, walk } from './path.js';
import { compileRegex, compileWildcard } from './patterns.js';
import { hasTemplate } from './template.js';

export { getPath } from './path.js';

export const CRITERIA_MAX = 64;
const SEARCH_DEPTH_MAX = 4;
const PATTERN_JSON_MAX = 16 * 1024;

/** Canonical operator names. */
export const OPERATORS: readonly string[] = Object.freeze([
  'equals', 'nequals', 'iequals', 'lessthan', 'greaterthan', 'lessthan_or_equal', 'greaterthan_or_equal',
  'contains', 'ncontains', 'icontains', 'incontains', 'startswith', 'istartswith', 'endswith', 'iendswith',
  'regex', 'iregex', 'matchregex', 'matchwildcard', 'exists', 'nexists', 'inside', 'ninside',
  'timediff_lt', 'timediff_gt', 'search',
]);

/** Other accepted spellings (lookup is case-insensitive and collapses spaces); null prototype: "constructor" is no alias. */
export const OPERATOR_ALIASES: Readonly<Record<string, string>> = Object.freeze(Object.assign(Object.create(null) as Record<string, string>, {
  eq: 'equals', neq: 'nequals', 'not equals': 'nequals', ieq: 'iequals',
  lt: 'lessthan', 'less than': 'lessthan', gt: 'greaterthan', 'greater than': 'greaterthan',
  lte: 'lessthan_or_equal', 'less than or equal': 'lessthan_or_equal',
  gte: 'greaterthan_or_equal', 'greater than or equal': 'greaterthan_or_equal',
  'not contains': 'ncontains', 'not icontains': 'incontains',
  'not exists': 'nexists', in: 'inside', nin: 'ninside', 'not in': 'ninside', 'not inside': 'ninside',
  td_lt: 'timediff_lt', td_gt: 'timediff_gt',
}));

/** Canonical name of an operator spelling, or undefined. */
export function normalizeOperator(name: string): string | undefined {
  if (typeof name !== 'string') return undefined;
  const k = name.trim().toLowerCase().replace(/\s+/g, ' ');
  if (OPERATORS.includes(k)) return k;
  return OPERATOR_ALIASES[k];
}

/** true / false, or undefined when the operator does not apply to the value. */
type Op = (v: unknown) => boolean | undefined;
interface Ctx { now: () => number; depth: number; what: string }

const invalid = (what: string, msg: string) => new TrellisError('TRELLIS_E_RULE_INVALID', `${what}: ${msg}`);
const hasOwn = Object.prototype.hasOwnProperty;
const isObj = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
const NUMERIC = /^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$/;
const numOf = (s: string): number | undefined => (NUMERIC.test(s) ? Number(s) : undefined);

function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (a === null || b === null || typeof a !== 'object' || typeof b !== 'object') return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) {
    const bb = b as unknown[];
    return a.length === bb.length && a.every((x, i) => deepEqual(x, bb[i]));
  }
  const ka = Object.keys(a), kb = Object.keys(b);
  return ka.length === kb.length && ka.every((k) => hasOwn.call(b, k) && deepEqual((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
}

function eqMatcher(p: unknown): (v: unknown) => boolean {
  if (p === null) return (v) => v === null;
  if (typeof p === 'string') {
    const n = numOf(p);
    const b = p === 'true' ? true : p === 'false' ? false : undefined;
    return (v) => (typeof v === 'string' ? v === p : typeof v === 'number' ? n !== undefined && v === n : typeof v === 'boolean' ? v === b : false);
  }
  if (typeof p === 'number' || typeof p === 'boolean') return (v) => v === p;
  return (v) => deepEqual(v, p);
}

function textOf(p: unknown, what: string): string {
  if (typeof p === 'string') return p;
  if (typeof p === 'number' || typeof p === 'boolean') return String(p);
  throw invalid(what, 'the pattern must be text');
}

function ordered(p: unknown, cmp: (a: number | string, b: number | string) => boolean, what: string): Op {
  if (typeof p === 'number') return (v) => (typeof v === 'number' ? cmp(v, p) : undefined);
  if (typeof p === 'string') {
    const n = numOf(p);
    return (v) => (typeof v === 'number' ? (n === undefined ? undefined : cmp(v, n)) : typeof v === 'string' ? cmp(v, p) : undefined);
  }
  throw invalid(what, 'the pattern must be a number or text');
}

const negate = (op: Op): Op => (v) => { const r = op(v); return r === undefined ? undefined : !r; };
const onText = (f: (s: string) => boolean): Op => (v) => (typeof v === 'string' ? f(v) : undefined);

function contains(p: unknown, what: string): Op {
  const eq = eqMatcher(p);
  const s = p !== null && typeof p !== 'object' ? String(p) : undefined;
  if (p === null || p === undefined) throw invalid(what, 'contains needs a pattern');
  return (v) => (typeof v === 'string' ? (s === undefined ? undefined : v.includes(s)) : Array.isArray(v) ? v.some(eq) : isObj(v) ? (s === undefined ? undefined : hasOwn.call(v, s)) : undefined);
}

function icontains(p: unknown, what: string): Op {
  const pl = textOf(p, what).toLowerCase();
  return (v) => (typeof v === 'string' ? v.toLowerCase().includes(pl) : Array.isArray(v) ? v.some((x) => typeof x === 'string' && x.toLowerCase() === pl) : undefined);
}

function inside(p: unknown, what: string): Op {
  if (Array.isArray(p)) {
    const ms = p.map(eqMatcher);
    return (v) => ms.some((m) => m(v));
  }
  if (typeof p === 'string') return onText((v) => p.includes(v));
  if (isObj(p)) return onText((v) => hasOwn.call(p, v));
  throw invalid(what, 'the pattern must be a list, a text or an object');
}

const ISO_NO_ZONE = /^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$/;

/** Epoch ms of an ISO time (zone-less = UTC) or epoch seconds/ms (|n| < 1e11 = seconds). */
export function toEpochMs(v: unknown): number | undefined {
  let n: number | undefined;
  if (typeof v === 'number') n = v;
  else if (typeof v === 'string') {
    n = numOf(v);
    if (n === undefined) {
      const s = v.trim();
      const ms = Date.parse(ISO_NO_ZONE.test(s) ? `${s.replace(' ', 'T')}Z` : s);
      return Number.isFinite(ms) ? ms : undefined;
    }
  }
  if (n === undefined || !Number.isFinite(n)) return undefined;
  return Math.abs(n) < 1e11 ? n * 1000 : n;
}

function timediff(p: unknown, lt: boolean, ctx: Ctx): Op {
  const sec = typeof p === 'number' ? p : typeof p === 'string' ? numOf(p) : undefined;
  if (sec === undefined || !Number.isFinite(sec)) throw invalid(ctx.what, 'the pattern must be a number of seconds');
  const now = ctx.now;
  return (v) => {
    const t = toEpochMs(v);
    if (t === undefined) return undefined;
    const d = (now() - t) / 1000;
    return lt ? d < sec : d > sec;
  };
}

/** `search` conditions: which items (any/all) must match which nested criteria (all, or any: `…2any`). */
export const SEARCH_CONDITIONS = ['any', 'all', 'any2any', 'all2any'] as const satisfies readonly SearchCondition[];

function search(c: Criterion, ctx: Ctx): Op {
  if (ctx.depth >= SEARCH_DEPTH_MAX) throw invalid(ctx.what, `search nests at most ${SEARCH_DEPTH_MAX} deep`);
  const cond = c.condition;
  if (!cond || !(SEARCH_CONDITIONS as readonly string[]).includes(cond)) throw invalid(ctx.what, `search needs condition: ${SEARCH_CONDITIONS.join(', ')}`);
  const nested = normalizeCriteria(c.pattern, ctx.what).map((n) => compileOne(n, 'item', { ...ctx, depth: ctx.depth + 1 }));
  // StackStorm: an item matches all nested criteria, or (any2any, all2any) any one of them.
  const item = cond === 'any2any' || cond === 'all2any' ? (x: unknown) => nested.some((n) => n.test(x)) : (x: unknown) => nested.every((n) => n.test(x));
  const someItems = cond === 'any' || cond === 'any2any';
  // An object is searched as a one-item list (StackStorm does the same); anything else cannot be searched.
  const items = (v: unknown): unknown[] | undefined => (Array.isArray(v) ? v : v !== null && typeof v === 'object' ? [v] : undefined);
  return (v) => {
    const list = items(v);
    if (!list) return undefined;
    return someItems ? list.some(item) : list.every(item);
  };
}

function compileOp(op: string, c: Criterion, ctx: Ctx): Op {
  const p = c.pattern;
  const w = ctx.what;
  if (p === undefined && op !== 'exists' && op !== 'nexists') throw invalid(w, `${op} needs a pattern`);
  switch (op) {
    case 'equals': { const eq = eqMatcher(p); return (v) => eq(v); }
    case 'nequals': { const eq = eqMatcher(p); return (v) => !eq(v); }
    case 'iequals': { const pl = textOf(p, w).toLowerCase(); return onText((v) => v.toLowerCase() === pl); }
    case 'lessthan': return ordered(p, (a, b) => a < b, w);
    case 'greaterthan': return ordered(p, (a, b) => a > b, w);
    case 'lessthan_or_equal': return ordered(p, (a, b) => a <= b, w);
    case 'greaterthan_or_equal': return ordered(p, (a, b) => a >= b, w);
    case 'contains': return contains(p, w);
    case 'ncontains': return negate(contains(p, w));
    case 'icontains': return icontains(p, w);
    case 'incontains': return negate(icontains(p, w));
    case 'startswith': { const s = textOf(p, w); return onText((v) => v.startsWith(s)); }
    case 'istartswith': { const s = textOf(p, w).toLowerCase(); return onText((v) => v.toLowerCase().startsWith(s)); }
    case 'endswith': { const s = textOf(p, w); return onText((v) => v.endsWith(s)); }
    case 'iendswith': { const s = textOf(p, w).toLowerCase(); return onText((v) => v.toLowerCase().endsWith(s)); }
    case 'regex': { const re = compileRegex(textOf(p, w), {}, w); return onText(re.test); }
    case 'iregex': { const re = compileRegex(textOf(p, w), { ignoreCase: true }, w); return onText(re.test); }
    case 'matchregex': { const re = compileRegex(textOf(p, w), { dotAll: true, anchorStart: true }, w); return onText(re.test); }
    case 'matchwildcard': { const m = compileWildcard(textOf(p, w), w); return onText(m); }
    case 'exists': return (v) => v !== undefined && v !== null;
    case 'nexists': return (v) => v === undefined || v === null;
    case 'inside': return inside(p, w);
    case 'ninside': return negate(inside(p, w));
    case 'timediff_lt': return timediff(p, true, ctx);
    case 'timediff_gt': return timediff(p, false, ctx);
    case 'search': return search(c, ctx);
    default: throw invalid(w, `unknown operator "${op}"`);
  }
}

const TRIGGER_SCALARS = new Set(['id', 'type', 'agent', 'tenant', 'timeMs']);

/** A criterion's path as segments (a `#comment` after it dropped; `payload.x` read as `trigger.payload.x`), or parsePath's error. */
function criterionPath(rawPath: string, root: 'trigger' | 'item'): string[] | string {
  let path = rawPath;
  const hash = path.indexOf('#');
  if (hash >= 0 && hash > path.lastIndexOf(']')) path = path.slice(0, hash);
  const segs = parsePath(path);
  return root === 'trigger' && typeof segs !== 'string' && segs[0] === 'payload' ? ['trigger', ...segs] : segs;
}

/** Compiles a path into a getter from the root (the event, or a list item for `search`). */
function compileGetter(rawPath: string, root: 'trigger' | 'item', what: string): (r: unknown) => unknown {
  const segs = criterionPath(rawPath, root);
  if (typeof segs === 'string') throw invalid(what, segs);
  if (root === 'item') {
    if (segs[0] !== 'item') throw invalid(what, 'paths inside search start with item (item.name, item[0])');
    return segs.length === 1 ? (r) => r : (r) => walk(r, segs, 1);
  }
  if (segs[0] !== 'trigger') throw invalid(what, 'paths start with trigger. (trigger.payload.x, trigger.type, trigger.agent, trigger.id, trigger.timeMs)');
  const field = segs[1];
  if (field === undefined) throw invalid(what, 'name a field of trigger (trigger.payload.x, trigger.type, ...)');
  if (TRIGGER_SCALARS.has(field)) {
    if (segs.length > 2) throw invalid(what, `trigger.${field} has no fields`);
    return (ev) => (ev as Record<string, unknown>)[field];
  }
  if (field !== 'payload') throw invalid(what, `trigger has no field "${field}": payload data is trigger.payload.${field}`);
  const rest = segs.slice(2);
  const [a, b] = rest;
  if (rest.length === 0) return (ev) => (ev as TriggerEvent).payload;
  if (rest.length === 1) return (ev) => step((ev as TriggerEvent).payload, a!);
  if (rest.length === 2) return (ev) => step(step((ev as TriggerEvent).payload, a!), b!);
  return (ev) => walk((ev as TriggerEvent).payload, rest);
}

interface Compiled { path: string; op: string; pattern: unknown; get: (r: unknown) => unknown; op_: Op; test: (r: unknown) => boolean }

function compileOne(c: Criterion, root: 'trigger' | 'item', ctx: Ctx): Compiled {
  if (!isObj(c)) throw invalid(ctx.what, 'a criterion is an object {path, type, pattern}');
  const what = `criterion "${String(c.path).slice(0, 120)}"`;
  if (typeof c.path !== 'string') throw invalid(what, 'path must be text');
  const op = normalizeOperator(c.type);
  if (!op) throw invalid(what, `unknown operator "${String(c.type).slice(0, 40)}"; use one of ${OPERATORS.join(', ')}`);
  if (c.pattern !== undefined && op !== 'search') {
    let size = 0;
    try { size = JSON.stringify(c.pattern)?.length ?? 0; } catch { throw invalid(what, 'the pattern is not JSON data'); }
    if (size > PATTERN_JSON_MAX) throw invalid(what, `the pattern is over ${PATTERN_JSON_MAX} characters`);
  }
  if (typeof c.pattern === 'string' && op !== 'regex' && op !== 'iregex' && op !== 'matchregex' && hasTemplate(c.pattern)) {
    throw invalid(what, 'patterns are literal values; templates ({{ }}) in a pattern are not supported');
  }
  const get = compileGetter(c.path, root, what);
  const op_ = compileOp(op, c, { ...ctx, what: `${what} (${op})` });
  return { path: c.path, op, pattern: c.pattern, get, op_, test: (r) => op_(get(r)) === true };
}

/**
 * Criteria in the list form, or StackStorm's map form `{ "<path>": {type, pattern, condition} }`.
 * Throws TRELLIS_E_RULE_INVALID naming `what`.
 */
export function normalizeCriteria(input: unknown, what = 'criteria'): Criterion[] {
  if (input === undefined || input === null) return [];
  let out: Criterion[];
  if (Array.isArray(input)) out = input as Criterion[];
  else if (isObj(input)) {
    out = Object.entries(input).map(([path, body]) => {
      if (!isObj(body)) throw invalid(what, `"${path.slice(0, 120)}" must be {type, pattern}`);
      return Object.assign({ path }, body, { path }) as unknown as Criterion;
    });
  } else throw invalid(what, 'criteria are a map {path: {type, pattern}} or a list [{path, type, pattern}]');
  if (out.length > CRITERIA_MAX) throw invalid(what, `at most ${CRITERIA_MAX} criteria`);
  return out;
}

function compileAll(criteria: Criterion[], now: () => number): Compiled[] {
  const list = normalizeCriteria(criteria);
  return list.map((c) => compileOne(c, 'trigger', { now, depth: 0, what: 'criteria' }));
}

/**
 * Compiles criteria (all must hold) into one predicate. Throws TRELLIS_E_RULE_INVALID naming the
 * criterion for an unknown operator, a bad path, a bad or unsafe pattern.
 */
export function compileCriteria(criteria: Criterion[], now: () => number = Date.now): (ev: TriggerEvent) => boolean {
  const cs = compileAll(criteria, now).map((c) => c.test);
  const [a, b] = cs;
  switch (cs.length) {
    case 0: return () => true;
    case 1: return (ev) => a!(ev);
    case 2: return (ev) => a!(ev) && b!(ev);
    default: return (ev) => { for (let i = 0; i < cs.length; i++) if (!cs[i]!(ev)) return false; return true; };
  }
}

/**
 * The top-level payload fields the criteria read (`trigger.payload.a.b` reads `a`), or undefined
 * when one reads the payload as a whole (`trigger.payload`). Lets the hub decode only those
 * fields of an event it matches (hub/rules/payload-fields.ts). Criteria must compile.
 */
export function payloadKeysOf(criteria: Criterion[]): string[] | undefined {
  const keys = new Set<string>();
  for (const c of normalizeCriteria(criteria)) {
    const segs = criterionPath(c.path, 'trigger');
    if (typeof segs === 'string') return undefined;
    if (segs[1] !== 'payload') continue; // trigger.type, .agent, ...: not the payload
    const rest = segs.slice(2);
    if (rest.length === 0) return undefined;
    keys.add(rest[0]!);
  }
  return [...keys];
}

/**
 * A numeric threshold every matching event passes: one of the criteria compares a value with a
 * number (greaterthan/gte/lessthan/lte and a number pattern), so the rule can match only when
 * that value is a number on the right side of `pattern` (`ordered`: any other value, NaN
 * included, fails). Lets a rules engine skip, without evaluating them, the rules of a trigger
 * whose threshold an event's value does not pass (hub/rules/prefilter.ts). `key` names the
 * value (the path as written): criteria with the same key read the same value.
 */
export interface Threshold {
  key: string;
  get: (ev: TriggerEvent) => unknown;
  /** above: the value must be > pattern (>= when !strict); below: < (<=). */
  above: boolean;
  strict: boolean;
  pattern: number;
}

const THRESHOLD_OPS = new Map<string, { above: boolean; strict: boolean }>([
  ['greaterthan', { above: true, strict: true }], ['greaterthan_or_equal', { above: true, strict: false }],
  ['lessthan', { above: false, strict: true }], ['lessthan_or_equal', { above: false, strict: false }],
]);

/** The first criterion that is a numeric threshold (see Threshold), if any. Criteria must compile. */
export function thresholdOf(criteria: Criterion[]): Threshold | undefined {
  for (const c of normalizeCriteria(criteria)) {
    const op = normalizeOperator(c.type);
    const t = op ? THRESHOLD_OPS.get(op) : undefined;
    if (!t || typeof c.pattern !== 'number' || !Number.isFinite(c.pattern) || typeof c.path !== 'string') continue;
    const what = `criterion "${c.path.slice(0, 120)}"`;
    return { key: c.path, get: compileGetter(c.path, 'trigger', what), above: t.above, strict: t.strict, pattern: c.pattern };
  }
  return undefined;
}

function show(v: unknown): string {
  if (v === undefined) return 'missing';
  let s: string;
  try { s = JSON.stringify(v) ?? String(v); } catch { s = String(v); }
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

/** Evaluates every criterion (no short cut) and says why each held or not. */
export function explainCriteria(criteria: Criterion[], ev: TriggerEvent, now: () => number = Date.now): { matched: boolean; reasons: string[] } {
  const reasons: string[] = [];
  let matched = true;
  for (const c of compileAll(criteria, now)) {
    const v = c.get(ev);
    const r = c.op_(v);
    if (r !== true) matched = false;
    const verdict = r === true ? 'matched' : r === false ? 'did not match' : 'does not apply to this value';
    reasons.push(`${c.path} ${c.op}${c.op === 'search' ? '' : ` ${show(c.pattern)}`}: ${verdict} (value ${show(v)})`);
  }
  return { matched, reasons };
}
