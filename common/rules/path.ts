/**
 * Paths into JSON-like data, shared by criteria and templates: `a.b.0.c`, `a[0]`, `a['x.y']`,
 * `a["x"]`. Segments are compiled once; lookups only read own properties (so `constructor` or
 * `__proto__` never reach the prototype) and index arrays by decimal segment.
 */

export const PATH_MAX = 512;
export const PATH_SEGMENTS_MAX = 32;

const IDENT = /^[A-Za-z0-9_$:@-]+$/;

/**
 * Splits a path into segments, or returns an error string. A trailing `#tag` (StackStorm's
 * criteria tags, which make a map key unique) is dropped by the criteria code, not here.
 */
export function parsePath(path: string): string[] | string {
  if (typeof path !== 'string' || path.length === 0) return 'the path is empty';
  if (path.length > PATH_MAX) return `the path is over ${PATH_MAX} characters`;
  const segs: string[] = [];
  let i = 0;
  let expectSeg = true; // at the start or after '.'
  while (i < path.length) {
    const ch = path[i]!;
    if (ch === '[') {
      const close = path.indexOf(']', i);
      if (close < 0) return `unclosed "[" in "${path}"`;
      let inner = path.slice(i + 1, close).trim();
      const q = inner[0];
      if (q === '"' || q === "'") {
        if (inner.length < 2 || inner[inner.length - 1] !== q) return `bad quoted segment in "${path}"`;
        inner = inner.slice(1, -1);
      } else if (!/^\d+$/.test(inner)) return `"[${inner}]" in "${path}": use [0] or ['name']`;
      segs.push(inner);
      i = close + 1;
      expectSeg = false;
      if (i < path.length && path[i] !== '.' && path[i] !== '[') return `unexpected "${path[i]}" in "${path}"`;
      if (path[i] === '.') { i++; expectSeg = true; if (i === path.length) return `"${path}" ends with "."`; }
      continue;
    }
    if (!expectSeg) return `unexpected "${ch}" in "${path}"`;
    let j = i;
    while (j < path.length && path[j] !== '.' && path[j] !== '[') j++;
    const seg = path.slice(i, j);
    if (!IDENT.test(seg)) return seg ? `bad segment "${seg}" in "${path}"` : `empty segment in "${path}"`;
    segs.push(seg);
    i = j;
    expectSeg = false;
    if (path[i] === '.') { i++; expectSeg = true; if (i === path.length) return `"${path}" ends with "."`; }
  }
  if (segs.length > PATH_SEGMENTS_MAX) return `the path has over ${PATH_SEGMENTS_MAX} segments`;
  return segs;
}

const hasOwn = Object.prototype.hasOwnProperty;

/** One step: own property of an object, or element of an array by decimal index. */
export function step(v: unknown, seg: string): unknown {
  if (v === null || typeof v !== 'object') return undefined;
  if (Array.isArray(v)) {
    const c = seg.charCodeAt(0);
    if (c < 48 || c > 57) return undefined;
    const idx = Number(seg);
    return Number.isInteger(idx) && idx < v.length ? v[idx] : undefined;
  }
  return hasOwn.call(v, seg) ? (v as Record<string, unknown>)[seg] : undefined;
}

/** Walks segs from index `from`. */
export function walk(root: unknown, segs: readonly string[], from = 0): unknown {
  let v = root;
  for (let i = from; i < segs.length && v !== undefined; i++) v = step(v, segs[i]!);
  return v;
}

const cache = new Map<string, string[] | string>();

/** Parses with a small bounded cache (templates and getPath see the same paths over and over). */
export function parsePathCached(path: string): string[] | string {
  let r = cache.get(path);
  if (r === undefined) {
    r = parsePath(path);
    if (cache.size >= 4096) cache.clear();
    cache.set(path, r);
  }
  return r;
}

/** Value at `path` in obj, undefined when any step is missing or the path is malformed. */
export function getPath(obj: unknown, path: string): unknown {
  const segs = parsePathCached(path);
  return typeof segs === 'string' ? undefined : walk(obj, segs);
}
