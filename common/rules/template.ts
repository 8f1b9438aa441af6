/**
 * `{{ expr }}` templates, a deliberately small Jinja subset. expr is a path (`trigger.payload.host`,
 * `host`, `parameters.host`, `items[0]`) or a reference (`kv.<key>`, `secret.<key>`), followed by
 * filters: `| json`, `| default("x")`, `| upper`, `| lower`, `| int`, `| string`, `| quote`
 * (POSIX shell single-quoting, for `shell: true` commands).
 *
 * A string that is exactly one `{{ expr }}` (whitespace around allowed) renders to the typed
 * value; anything else renders to text (objects as JSON, missing as ''). Values substituted in
 * are never rendered again, so event data cannot inject a template. References go to a resolver;
 * when there is none or it answers undefined, the `{{ … }}` text is kept as it was, so rule
 * parameters can be rendered against an event while their references wait for the run.
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
interface Expr { src: string; ref?: Ref; segs?: string[]; filters: Filter[] }
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
  if (m) {
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
  if (!e.ref && !ctx) return UNRESOLVED;
  if (e.ref) {
    const r = refs?.(e.ref);
    if (r === undefined) return UNRESOLVED;
    v = r;
  } else v = walk(ctx, e.segs!);
  for (const f of e.filters) v = applyFilter(v, f);
  return v;
}

function renderString(tpl: string, ctx: Record<string, unknown> | undefined, refs: RefResolver | undefined): unknown {
  if (!tpl.includes('{{')) return tpl;
  const c = compile(tpl);
  if (c.single) {
    const v = evalExpr(c.single, ctx, refs);
    return v === UNRESOLVED ? tpl : v === undefined ? '' : v;
  }
  let out = '';
  for (const p of c.parts) {
    if (typeof p === 'string') out += p;
    else {
      const v = evalExpr(p, ctx, refs);
      out += v === UNRESOLVED ? p.src : toText(v);
    }
    if (out.length > RENDERED_MAX) throw new TrellisError('TRELLIS_E_TOO_LARGE', `a rendered template is over ${RENDERED_MAX} characters`);
  }
  return out;
}

function renderAny(v: unknown, ctx: Record<string, unknown> | undefined, refs: RefResolver | undefined, depth: number): unknown {
  if (typeof v === 'string') return renderString(v, ctx, refs);
  if (v === null || typeof v !== 'object') return v;
  if (depth > DEPTH_MAX) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `a templated value nests over ${DEPTH_MAX} levels`);
  if (Array.isArray(v)) return v.map((x) => renderAny(x, ctx, refs, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) out[k] = renderAny(x, ctx, refs, depth + 1);
  return out;
}

/**
 * Renders every string in tpl (recursing into lists and objects; keys are not templates).
 * Throws TRELLIS_E_INVALID_ARGUMENT for a malformed template (naming its text) and
 * TRELLIS_E_TOO_LARGE for a template over 16 KiB or a result over 1 MiB.
 */
export function renderTemplate(tpl: unknown, ctx: Record<string, unknown>, refs?: RefResolver): unknown {
  return renderAny(tpl, ctx, refs, 0);
}

/**
 * Substitutes only the references (through refs) and keeps every other `{{ … }}` as text: how
 * parameter values that hold `{{ secret.x }}` are opened without rendering anything else.
 */
export function resolveRefs(value: unknown, refs: RefResolver): unknown {
  return renderAny(value, undefined, refs, 0);
}

/** Every kv/secret reference in value's templates, each once, in order of appearance. */
export function findRefs(value: unknown): Ref[] {
  const out: Ref[] = [];
  const seen = new Set<string>();
  const visit = (v: unknown, depth: number): void => {
    if (typeof v === 'string') {
      if (!v.includes('{{')) return;
      for (const p of compile(v).parts) {
        if (typeof p === 'string' || !p.ref) continue;
        const id = `${p.ref.kind}\0${p.ref.key}`;
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
