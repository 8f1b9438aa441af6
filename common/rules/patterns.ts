/**
 * Text patterns used by criteria: regular expressions checked for ReDoS at compile time, and
 * fnmatch-style wildcards matched without building a regex (so `*a*a*a*b` cannot backtrack).
 */
import safeRegex from 'safe-regex2';
import { TrellisError } from '../errors.js';

export const PATTERN_MAX = 1024;
/** Regex and wildcard operators look at the first 64 KiB of a value only. */
export const MATCH_INPUT_MAX = 64 * 1024;

/**
 * Compiles a (Python-flavoured, as StackStorm rules are written) regular expression.
 * Translations: leading inline flags `(?i)`, `(?s)`, `(?m)` (any combination) become JS flags,
 * `(?P<name>` becomes `(?<name>` and `(?P=name)` becomes `\k<name>`. Refuses a pattern over
 * 1024 characters, one that does not compile, and one safe-regex2 rates as exponential.
 */
export function compileRegex(pattern: string, flags: string, what: string): RegExp {
  if (pattern.length > PATTERN_MAX) throw new TrellisError('TRELLIS_E_RULE_INVALID', `${what}: the regex is ${pattern.length} characters; the limit is ${PATTERN_MAX}`);
  let src = pattern;
  const inline = /^\(\?([imsx]+)\)/.exec(src);
  if (inline) {
    if (inline[1]!.includes('x')) throw new TrellisError('TRELLIS_E_RULE_INVALID', `${what}: verbose regexes "(?x)" are not supported`);
    for (const f of inline[1]!) if (!flags.includes(f)) flags += f;
    src = src.slice(inline[0].length);
  }
  src = src.replace(/\(\?P</g, '(?<').replace(/\(\?P=([A-Za-z_][A-Za-z0-9_]*)\)/g, '\\k<$1>');
  let re: RegExp;
  try {
    re = new RegExp(src, flags);
  } catch (err) {
    throw new TrellisError('TRELLIS_E_RULE_INVALID', `${what}: bad regex: ${(err as Error).message}`);
  }
  if (!safeRegex(re)) throw new TrellisError('TRELLIS_E_RULE_INVALID', `${what}: the regex "${pattern.slice(0, 80)}" can take exponential time (nested repetition); rewrite it`);
  return re;
}

export function capInput(s: string): string {
  return s.length > MATCH_INPUT_MAX ? s.slice(0, MATCH_INPUT_MAX) : s;
}

type GlobTok = { k: 'star' } | { k: 'any' } | { k: 'lit'; c: string } | { k: 'set'; neg: boolean; ranges: [number, number][] };

/**
 * fnmatch (Python) semantics: whole-string match, case-sensitive, `*` any run including `/` and
 * newlines, `?` one character, `[seq]`, `[!seq]`, ranges `a-z`; a `[` with no closing `]` is a
 * literal. Matched with the classic single-backtrack-point algorithm: O(len(value) × tokens).
 */
export function compileWildcard(pattern: string, what: string): (s: string) => boolean {
  if (pattern.length > PATTERN_MAX) throw new TrellisError('TRELLIS_E_RULE_INVALID', `${what}: the wildcard is ${pattern.length} characters; the limit is ${PATTERN_MAX}`);
  const toks: GlobTok[] = [];
  const chars = Array.from(pattern); // code points
  for (let i = 0; i < chars.length; i++) {
    const c = chars[i]!;
    if (c === '*') { if (toks.at(-1)?.k !== 'star') toks.push({ k: 'star' }); continue; }
    if (c === '?') { toks.push({ k: 'any' }); continue; }
    if (c === '[') {
      let j = i + 1;
      if (chars[j] === '!') j++;
      if (chars[j] === ']') j++;
      while (j < chars.length && chars[j] !== ']') j++;
      if (j >= chars.length) { toks.push({ k: 'lit', c }); continue; }
      const neg = chars[i + 1] === '!';
      const body = chars.slice(i + 1 + (neg ? 1 : 0), j);
      const ranges: [number, number][] = [];
      for (let k = 0; k < body.length; k++) {
        const a = body[k]!.codePointAt(0)!;
        if (body[k + 1] === '-' && k + 2 < body.length) { ranges.push([a, body[k + 2]!.codePointAt(0)!]); k += 2; } else ranges.push([a, a]);
      }
      toks.push({ k: 'set', neg, ranges });
      i = j;
      continue;
    }
    toks.push({ k: 'lit', c });
  }
  const one = (t: GlobTok, ch: string): boolean => {
    switch (t.k) {
      case 'any': return true;
      case 'lit': return t.c === ch;
      case 'set': {
        const cp = ch.codePointAt(0)!;
        let hit = false;
        for (const [lo, hi] of t.ranges) if (cp >= lo && cp <= hi) { hit = true; break; }
        return hit !== t.neg;
      }
      case 'star': return false;
    }
  };
  return (input: string) => {
    const s = Array.from(capInput(input));
    let si = 0, ti = 0, starTi = -1, starSi = 0;
    while (si < s.length) {
      const t = toks[ti];
      if (t && t.k === 'star') { starTi = ti++; starSi = si; continue; }
      if (t && one(t, s[si]!)) { si++; ti++; continue; }
      if (starTi < 0) return false;
      ti = starTi + 1;
      si = ++starSi;
    }
    while (ti < toks.length && toks[ti]!.k === 'star') ti++;
    return ti === toks.length;
  };
}
