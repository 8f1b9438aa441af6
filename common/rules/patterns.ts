/**
 * Text patterns used by criteria: regular expressions on the linear-time engine (common/regex.ts),
 * and fnmatch-style wildcards matched without building a regex (so `*a*a*a*b` cannot backtrack).
 */
import { TrellisError } from '../errors.js';
import { capInput, compileUserRegex, MATCH_INPUT_MAX, PATTERN_MAX, RegexRefusedError, type RegexOptions, type UserRegex } from '../regex.js';

export { capInput, MATCH_INPUT_MAX, PATTERN_MAX };

/**
 * Compiles a rule's regular expression (RE2 syntax, which reads StackStorm's Python regexes:
 * `(?i)`, `(?P<name>…)` and the like work as written). Throws TRELLIS_E_RULE_INVALID naming
 * `what` and the reason for a pattern over 1024 characters, one that does not compile, and one
 * using what a linear-time engine cannot run (backreferences, lookaround, ...).
 */
export function compileRegex(pattern: string, opts: RegexOptions, what: string): UserRegex {
  try {
    return compileUserRegex(pattern, opts);
  } catch (err) {
    if (err instanceof RegexRefusedError) throw new TrellisError('TRELLIS_E_RULE_INVALID', `${what}: the regex ${err.message}`);
    throw err;
  }
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
