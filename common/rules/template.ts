/**
 * `{{ expr }}` templates, a deliberately small Jinja subset. expr is a path (`trigger.payload.host`,
 * `host`, `parameters.host`, `items[0]`) or a reference (`kv.<key>`, `secret.<key>`), followed by
 * filters: `| json`, `| default("x")`, `| upper`, `| lower`, `| int`, `| string`, `| quote`
 * (POSIX shell single-quoting, for `shell: true` commands).
 *
 * expr may also be a quoted literal, `{{ "{{" }}` (Jinja's escape): it renders to its text.
 *
 * A string that is exactly one `{{ expr }}` (whitespace around allowed) renders to the typed
 * value; anything else renders to text (objects as JSON, missing as ''). Values substituted in
 * are never rendered again. References go to a resolver; when there is none or it answers
 * undefined, the `{{ … }}` text is kept as it was.
 *
 * Trust boundary: references are resolved only in text an author wrote. A rule's parameters are
 * rendered against the event in two steps (the event now, the references at the run), so
 * renderKeepingRefs escapes every substituted value (`{{` → `{{ "{{" }}`): the run's pass then
 * reads event data as literal text, never as a template, and the escaped form is what history
 * keeps, so a rerun treats it the same way.
 */
import { TrellisError } from '../errors.js';
import { parsePath, walk } from './path.js';

export type Ref = { kind: 'kv' | 'secret'; key: string };
export type RefResolver = (ref: Ref) => string | undefined;

export const TEMPLATE_MAX = 16 * 1024;
export const RENDERED_MAX = 1024 * 1024;
const DEPTH_MAX = 32;
const REF_KEY = /^[A-Za-z0-9_.:/-]{1,256}$/;
const FILTERS = new Set(['json', 'default', 'upper', 'lower', 'int', 'string', 'quote']);

interface Filter { name: string; args: unknown[] }
interface Expr { src: string; ref?: Ref; segs?: string[]; lit?: string; filters: Filter[] }
interface Compiled { parts: (string | Expr)[]; single: Expr | undefined }

const bad = (tpl: string, msg: string) =>
  new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `template "${tpl.length > 80 ? `${tpl.slice(0, 77)}...` : tpl}": ${msg}`);

/** True when s holds a `{{ … }}`. */
export function hasTemplate(s: string): boolean {
  if (typeof s !== 'string') return false;
  const i = s.indexOf('{{');
  return i >= 0 && s.indexOf('}}', i + 2) >= 0;
}

function parseArgs(tpl: string, text: string): unknown[] {
  const args: unknown[] = [];
  let i = 0;
  const ws = () => { while (i < text.length && /\s/.test(text[i]!)) i++; };
  ws();
  if (text.length === 0) return args;
  for (;;) {
    ws();
    const q = text[i];
    if (q === '"' || q === "'") {
      let j = i + 1;
      let s = '';
      while (j < text.length && text[j] !== q) {
        if (text[j] === '\\' && j + 1 < text.length) { j++; s += ({ n: '\n', t: '\t', r: '\r' } as Record<string, string>)[text[j]!] ?? text[j]; } else s += text[j];
        j++;
      }
      if (j >= text.length) throw bad(tpl, 'unterminated string in filter argument');
      args.push(s);
      i = j + 1;
    } else {
      const m = /^(-?\d+(\.\d+)?|true|false|null)/.exec(text.slice(i));
      if (!m) throw bad(tpl, `bad filter argument "${text.slice(i, i + 20)}": use "text", a number, true, false or null`);
      args.push(JSON.parse(m[0]));
      i += m[0].length;
    }
    ws();
    if (i >= text.length) return args;
    if (text[i] !== ',') throw bad(tpl, `unexpected "${text[i]}" in filter arguments`);
    i++;
  }
}

function parseExpr(tpl: string, src: string, inner: string): Expr {
  // Split on '|' outside quotes and brackets.
  const pieces: string[] = [];
  let cur = '', quote = '', depth = 0;
  for (const ch of inner) {
    if (quote) { if (ch === quote) quote = ''; cur += ch; continue; }
    if (ch === '"' || ch === "'") quote = ch;
    else if (ch === '[' || ch === '(') depth++;
    else if (ch === ']' || ch === ')') depth--;
    else if (ch === '|' && depth === 0) { pieces.push(cur); cur = ''; continue; }
    cur += ch;
  }
  pieces.push(cur);
  const head = pieces[0]!.trim();
  if (!head) throw bad(tpl, `empty expression in "${src}"`);
  const expr: Expr = { src, filters: [] };
  const m = /^(kv|secret)\.(.*)$/s.exec(head);
  if (head[0] === '"' || head[0] === "'") {
    const lit = parseArgs(tpl, head);
    if (lit.length !== 1 || typeof lit[0] !== 'string') throw bad(tpl, `bad literal in "${src.slice(0, 40)}": one quoted text, e.g. {{ "{{" }}`);
    expr.lit = lit[0];
  } else if (m) {
    if (!REF_KEY.test(m[2]!)) throw bad(tpl, `bad ${m[1]} key "${m[2]!.slice(0, 60)}": 1-256 of A-Z a-z 0-9 _ . : / -`);
    expr.ref = { kind: m[1] as Ref['kind'], key: m[2]! };
  } else {
    const segs = parsePath(head);
    if (typeof segs === 'string') throw bad(tpl, segs);
    expr.segs = segs;
  }
  for (const raw of pieces.slice(1)) {
    const f = /^\s*([a-z_]+)\s*(?:\((.*)\))?\s*$/s.exec(raw);
    if (!f || !FILTERS.has(f[1]!)) throw bad(tpl, `unknown filter "${raw.trim().slice(0, 40)}"; use ${[...FILTERS].join(', ')}`);
    const args = f[2] === undefined ? [] : parseArgs(tpl, f[2]);
    if (f[1] === 'default' ? args.length !== 1 : args.length !== 0) throw bad(tpl, f[1] === 'default' ? 'default takes one argument: default("x")' : `${f[1]} takes no argument`);
    expr.filters.push({ name: f[1]!, args });
  }
  return expr;
}

const cache = new Map<string, Compiled>();

function compile(tpl: string): Compiled {
  const hit = cache.get(tpl);
  if (hit) return hit;
  if (tpl.length > TEMPLATE_MAX) throw new TrellisError('TRELLIS_E_TOO_LARGE', `a template is ${tpl.length} characters; the limit is ${TEMPLATE_MAX}`);
  const parts: (string | Expr)[] = [];
  let i = 0;
  while (i < tpl.length) {
    const open = tpl.indexOf('{{', i);
    if (open < 0) { parts.push(tpl.slice(i)); break; }
    if (open > i) parts.push(tpl.slice(i, open));
    const close = tpl.indexOf('}}', open + 2);
    if (close < 0) throw bad(tpl, 'unterminated "{{"');
    const src = tpl.slice(open, close + 2);
    parts.push(parseExpr(tpl, src, tpl.slice(open + 2, close)));
    i = close + 2;
  }
  const exprs = parts.filter((p): p is Expr => typeof p !== 'string');
  const single = exprs.length === 1 && parts.every((p) => typeof p !== 'string' || p.trim() === '') ? exprs[0] : undefined;
  const c = { parts, single };
  if (tpl.length <= 2048) {
    if (cache.size >= 2048) cache.clear();
    cache.set(tpl, c);
  }
  return c;
}

/** Text form: '' for missing/null, JSON for objects and lists. */
export function toText(v: unknown): string {
  if (v === undefined || v === null) return '';
  if (typeof v === 'string') return v;
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

function applyFilter(v: unknown, f: Filter): unknown {
  switch (f.name) {
    case 'default': return v === undefined || v === null ? f.args[0] : v;
    case 'json': return JSON.stringify(v ?? null);
    case 'upper': return toText(v).toUpperCase();
    case 'lower': return toText(v).toLowerCase();
    case 'string': return toText(v);
    case 'quote': return `'${toText(v).replace(/'/g, `'\\''`)}'`;
    case 'int': {
      if (typeof v === 'number') return Number.isFinite(v) ? Math.trunc(v) : 0;
      if (typeof v === 'boolean') return v ? 1 : 0;
      const n = typeof v === 'string' ? parseInt(v, 10) : NaN;
      return Number.isFinite(n) ? n : 0;
    }
    default: return v;
  }
}

const UNRESOLVED = Symbol('unresolved');

function evalExpr(e: Expr, ctx: Record<string, unknown> | undefined, refs: RefResolver | undefined): unknown {
  let v: unknown;
  if (e.lit !== undefined) v = e.lit;
  else if (!e.ref && !ctx) return UNRESOLVED;
  else if (e.ref) {
    const r = refs?.(e.ref);
    if (r === undefined) return UNRESOLVED;
    v = r;
  } else v = walk(ctx, e.segs!);
  for (const f of e.filters) v = applyFilter(v, f);
  return v;
}

/**
 * Text in which no `{{` can start a template: each `{{` is written as the literal `{{ "{{" }}`,
 * and a `{` at either end as `{{ "{" }}`, so two substituted values (or a value and the author's
 * text) cannot join into one: `{{ a }}{{ b }}` with a = `{` and b = `{ kv.x }}` stays data.
 */
export function escapeTemplate(s: string): string {
  return s.includes('{') ? s.replace(/\{\{|^\{|\{$/g, (m) => (m === '{{' ? ESCAPED_OPEN : ESCAPED_BRACE)) : s;
}
const ESCAPED_OPEN = '{{ "{{" }}';
const ESCAPED_BRACE = '{{ "{" }}';

/** Every string in v (deep; keys are not templates) escaped with escapeTemplate. */
function escapeDeep(v: unknown, depth = 0): unknown {
  if (typeof v === 'string') return escapeTemplate(v);
  if (v === null || typeof v !== 'object') return v;
  if (depth > DEPTH_MAX) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `a templated value nests over ${DEPTH_MAX} levels`);
  if (Array.isArray(v)) return v.map((x) => escapeDeep(x, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) out[k] = escapeDeep(x, depth + 1);
  return out;
}

interface Mode { ctx: Record<string, unknown> | undefined; refs: RefResolver | undefined; escape: boolean }

function renderString(tpl: string, m: Mode): unknown {
  if (!tpl.includes('{{')) return tpl;
  const c = compile(tpl);
  // Escape mode (the first of two passes): a value substituted from ctx (data) is escaped;
  // references and literals are the author's text and stay as written for the second pass.
  const ev = (e: Expr) => (m.escape && e.lit !== undefined ? UNRESOLVED : evalExpr(e, m.ctx, m.refs));
  if (c.single) {
    const v = ev(c.single);
    return v === UNRESOLVED ? tpl : v === undefined ? '' : m.escape ? escapeDeep(v) : v;
  }
  let out = '';
  for (const p of c.parts) {
    if (typeof p === 'string') out += p;
    else {
      const v = ev(p);
      out += v === UNRESOLVED ? p.src : m.escape ? escapeTemplate(toText(v)) : toText(v);
    }
    if (out.length > RENDERED_MAX) throw new TrellisError('TRELLIS_E_TOO_LARGE', `a rendered template is over ${RENDERED_MAX} characters`);
  }
  return out;
}

function renderAny(v: unknown, m: Mode, depth: number): unknown {
  if (typeof v === 'string') return renderString(v, m);
  if (v === null || typeof v !== 'object') return v;
  if (depth > DEPTH_MAX) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `a templated value nests over ${DEPTH_MAX} levels`);
  if (Array.isArray(v)) return v.map((x) => renderAny(x, m, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) out[k] = renderAny(x, m, depth + 1);
  return out;
}

/**
 * Renders every string in tpl (recursing into lists and objects; keys are not templates).
 * Throws TRELLIS_E_INVALID_ARGUMENT for a malformed template (naming its text) and
 * TRELLIS_E_TOO_LARGE for a template over 16 KiB or a result over 1 MiB.
 */
export function renderTemplate(tpl: unknown, ctx: Record<string, unknown>, refs?: RefResolver): unknown {
  return renderAny(tpl, { ctx, refs, escape: false }, 0);
}

/**
 * The first of two passes (a rule's parameters against its event): paths are substituted from
 * ctx with every substituted string escaped (escapeTemplate), references and literals are kept
 * as the author wrote them. The result is a template for the run's pass (resolveRefs) in which
 * only the author's references are references.
 */
export function renderKeepingRefs(tpl: unknown, ctx: Record<string, unknown>): unknown {
  return renderAny(tpl, { ctx, refs: () => undefined, escape: true }, 0);
}

/**
 * Substitutes only the references (through refs) and literals (`{{ "{{" }}` → `{{`) and keeps
 * every other `{{ … }}` as text: how parameter values are opened at the run.
 */
export function resolveRefs(value: unknown, refs: RefResolver): unknown {
  return renderAny(value, { ctx: undefined, refs, escape: false }, 0);
}

/** True when some string in value holds a reference or a literal: it needs the run's pass (resolveRefs). */
export function needsResolving(value: unknown): boolean {
  const visit = (v: unknown, depth: number): boolean => {
    if (typeof v === 'string') return hasTemplate(v) && compile(v).parts.some((p) => typeof p !== 'string' && (p.ref !== undefined || p.lit !== undefined));
    if (v === null || typeof v !== 'object' || depth > DEPTH_MAX) return false;
    return (Array.isArray(v) ? v : Object.values(v)).some((x) => visit(x, depth + 1));
  };
  return visit(value, 0);
}

/** A template in pieces: author text (literals included, as the text they render to) and substitutions. */
export type TemplatePiece = { text: string } | { src: string; quoted: boolean };

/**
 * The pieces of a template, in order: for a substitution, its source and whether its last
 * filter is `| quote`. Throws like renderTemplate for a malformed template.
 */
export function templatePieces(tpl: string): TemplatePiece[] {
  if (!hasTemplate(tpl)) return [{ text: tpl }];
  return compile(tpl).parts.map((p) => (typeof p === 'string' ? { text: p } : p.lit !== undefined && p.filters.length === 0 ? { text: p.lit } : { src: p.src, quoted: p.filters[p.filters.length - 1]?.name === 'quote' }));
}

/** One string per distinct reference (its kind and key): what findRefs and its callers de-duplicate by. */
export const refKey = (r: Ref): string => `${r.kind}\0${r.key}`;

/** Every kv/secret reference in value's templates, each once, in order of appearance. */
export function findRefs(value: unknown): Ref[] {
  const out: Ref[] = [];
  const seen = new Set<string>();
  const visit = (v: unknown, depth: number): void => {
    if (typeof v === 'string') {
      if (!v.includes('{{')) return;
      for (const p of compile(v).parts) {
        if (typeof p === 'string' || !p.ref) continue;
        const id = refKey(p.ref);
        if (!seen.has(id)) { seen.add(id); out.push(p.ref); }
      }
    } else if (v !== null && typeof v === 'object') {
      if (depth > DEPTH_MAX) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `a templated value nests over ${DEPTH_MAX} levels`);
      for (const x of Array.isArray(v) ? v : Object.values(v)) visit(x, depth + 1);
    }
  };
  visit(value, 0);
  return out;
}
