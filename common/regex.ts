/**
 * The one way a regular expression written by a user, a pack or a sensor config is compiled: on
 * RE2 (the `re2js` port), whose matching time is linear in the input, so no pattern can make the
 * hub or an agent backtrack for seconds. What RE2 cannot run in linear time (backreferences,
 * lookaround, atomic groups, possessive quantifiers, conditionals) is refused at compile time
 * with a message naming the feature. Our own fixed regexes stay native `RegExp` literals.
 *
 * Syntax is RE2's (https://github.com/google/re2/wiki/Syntax), close to Python's `re`, which
 * StackStorm rules are written in: `(?i)`, `(?s)`, `(?m)`, `(?P<name>…)`, `(?<name>…)`, `\A`,
 * `\z`, `\b`, `\d\w\s` (ASCII), `\p{L}`, `[[:alpha:]]`, `\Q…\E`, counted repetition up to 1000.
 * A matcher looks at the first MATCH_INPUT_MAX characters of its input.
 */
import { RE2JS, RE2JSException } from 're2js';

/** Longest pattern accepted. */
export const PATTERN_MAX = 1024;
/** Matchers look at the first 64 KiB (UTF-16 code units) of an input only. */
export const MATCH_INPUT_MAX = 64 * 1024;
/**
 * Largest compiled program accepted (RE2 instructions, about one per character and one per
 * repeated copy: `[a-z]{500}` is ~500). Matching costs up to input length × program size when
 * RE2 falls back from its DFA to its NFA, so this bounds the constant of the linear time.
 */
export const PROGRAM_MAX = 2000;

/** A pattern RE2 refuses; the message names the reason and is safe to show the pattern's author. */
export class RegexRefusedError extends Error {
  override name = 'RegexRefusedError';
}

export interface RegexMatch {
  /** Whole match, then each group ('' for a group that did not take part). */
  match: string[];
  /** Named groups (absent when the group did not take part). */
  groups: Record<string, string | undefined>;
}

export interface UserRegex {
  readonly source: string;
  /** Whether the pattern matches the (capped) input: anywhere, or at its start when anchored. */
  test(input: string): boolean;
  /** The first match with its groups, or null. */
  exec(input: string): RegexMatch | null;
}

export interface RegexOptions {
  /** Case-insensitive (as `(?i)`). */
  ignoreCase?: boolean;
  /** `.` matches a newline too (as `(?s)`). */
  dotAll?: boolean;
  /** Match only at the start of the input (Python's `re.match`), not anywhere (`re.search`). */
  anchorStart?: boolean;
}

export function capInput(s: string): string {
  return s.length > MATCH_INPUT_MAX ? s.slice(0, MATCH_INPUT_MAX) : s;
}

/** Why RE2 refused a construct, from the fragment its parser stopped at. */
function explain(err: unknown, pattern: string): string {
  if (!(err instanceof RE2JSException)) return `does not compile: ${(err as Error).message}`;
  const input = (err as { input?: string | null }).input ?? '';
  const said = (err as { error?: string }).error ?? err.message;
  const no = (feature: string, hint = '') =>
    `uses ${feature}, which the linear-time regex engine (RE2) does not support${hint ? `; ${hint}` : ''}`;
  // RE2 reports `(?P=name)` and `(?P>name)` as the bare fragment `(?P`.
  const namedP = input === '(?P' ? (pattern.includes('(?P=') ? '=' : pattern.includes('(?P>') ? '>' : '') : '';
  if (/^\\[1-9]/.test(input) || /^\\[kg]/.test(input) || namedP === '=') return no('a backreference (\\1, \\k<name>, (?P=name))', 'match the repeated text explicitly');
  if (input.startsWith('(?=') || input.startsWith('(?!')) return no('lookahead ((?=…), (?!…))', 'match the text itself, or test the condition separately');
  if (input.startsWith('(?<=') || input.startsWith('(?<!')) return no('lookbehind ((?<=…), (?<!…))', 'match the text itself, or test the condition separately');
  if (input.startsWith('(?>')) return no('an atomic group (?>…)', 'write a plain group: RE2 never backtracks');
  if (input.startsWith('(?(')) return no('a conditional (?(…)…|…)');
  if (input.startsWith('(?#')) return no('an inline comment (?#…)');
  if (namedP === '>' || input.startsWith('(?&') || /^\(\?[0-9R+-]/.test(input)) return no('recursion or a subroutine call');
  if (/^\(\?[a-zA-Z]*x/.test(input)) return no('verbose mode (?x)');
  if (said.includes('nested repetition')) return no(`a repetition of a repetition or a possessive quantifier (${input})`, 'write a single quantifier: RE2 never backtracks');
  if (said.includes('repeat count')) return `uses a repeat count over 1000 (${input.slice(0, 40)}), counting nested repetitions multiplied`;
  if (input.startsWith('\\Z')) return no('\\Z', 'write \\z (end of text)');
  if (input.startsWith('\\u')) return no('\\uXXXX', 'write \\x{XXXX}');
  return `does not compile: ${err.message.replace(/^error parsing regexp: /, '')}`;
}

/**
 * Rough size of the program a pattern compiles to (one per atom, counted repetitions multiplied),
 * read from its text without compiling: compiling `[ab]{1000}` a hundred times over takes a
 * fifth of a second, so what is clearly too large is refused before. The exact size is checked
 * after compiling; this only has to be within a small factor of it.
 */
export function estimateProgramSize(pattern: string): number {
  // Per open group: its size so far, the size of its current branch and of its largest branch.
  const stack = [{ total: 0, branch: 0, widest: 0 }];
  let last = 0; // size of the last atom, which a quantifier applies to
  const add = (n: number) => { const g = stack[stack.length - 1]!; g.total += n; g.branch += n; };
  const atom = (n: number) => { add(n); last = n; };
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '\\') {
      const n = pattern[i + 1];
      if (n === 'Q') { const end = pattern.indexOf('\\E', i + 2); const lit = (end < 0 ? pattern.length : end) - (i + 2); i = end < 0 ? pattern.length : end + 1; atom(Math.max(lit, 0)); continue; }
      if ((n === 'p' || n === 'P' || n === 'x') && pattern[i + 2] === '{') { const end = pattern.indexOf('}', i); i = end < 0 ? pattern.length : end; } else i++;
      atom(1);
    } else if (c === '[') {
      let j = i + 1;
      if (pattern[j] === '^') j++;
      if (pattern[j] === ']') j++;
      while (j < pattern.length && pattern[j] !== ']') j += pattern[j] === '\\' ? 2 : pattern.startsWith('[:', j) ? Math.max(pattern.indexOf(':]', j) - j + 2, 1) : 1;
      i = j;
      atom(1);
    } else if (c === '(') {
      if (pattern[i + 1] === '?') { // (?:…) (?i:…) (?P<n>…) (?<n>…), or flags alone: (?i)
        const named = pattern[i + 2] === 'P' || pattern[i + 2] === '<';
        let j = i + 2;
        while (j < pattern.length && !(named ? pattern[j] === '>' : pattern[j] === ':' || pattern[j] === ')')) j++;
        if (!named && pattern[j] === ')') { i = j; continue; }
        i = j;
      }
      stack.push({ total: 0, branch: 0, widest: 0 });
    } else if (c === ')') {
      const g = stack.length > 1 ? stack.pop()! : { total: 0, branch: 0, widest: 0 };
      // Branches of one character each become one class: (a|b|c) is [a-c].
      atom(Math.max(g.widest, g.branch) <= 1 ? 1 : g.total + 1);
    } else if (c === '{') {
      const m = /^\{(\d+)(?:,(\d*))?\}/.exec(pattern.slice(i, i + 12));
      if (!m) { atom(1); continue; }
      const times = Math.max(Number(m[1]), m[2] ? Number(m[2]) : 0, 1);
      add(last * (times - 1));
      last *= times;
      i += m[0].length - 1;
    } else if (c === '|') {
      const g = stack[stack.length - 1]!;
      g.widest = Math.max(g.widest, g.branch);
      g.branch = 0;
      g.total += 1;
    } else if (c === '*' || c === '+' || c === '?') {
      add(1);
    } else atom(1);
  }
  return stack.reduce((a, g) => a + g.total, 0);
}

/** An inline flag group that turns multiline on or off somewhere: `(?m)`, `(?im:…)`, `(?-m)`. */
const MULTILINE_FLAG = /\(\?[a-zA-Z]*-?[a-zA-Z]*m[a-zA-Z-]*[:)]/;

/**
 * Python's `$` (without MULTILINE) matches at the end of the text and also just before one
 * newline that ends it (`abc$` matches "abc\n"); RE2's matches at the very end only. Each `$`
 * outside a character class, an escape and `\Q…\E` becomes `(?:\n?\z)`: still linear (no
 * lookaround, nothing to backtrack). Returns undefined when the pattern has no such `$`, or sets
 * multiline flags itself (there `$` already matches before every newline, as in Python).
 * One difference remains: a pattern that goes on to consume that final newline after `$`
 * (`a$\n`) does not match "a\n" as Python's does.
 */
export function pythonDollar(pattern: string): string | undefined {
  if (!pattern.includes('$') || MULTILINE_FLAG.test(pattern)) return undefined;
  let out = '';
  let changed = false;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '\\') {
      if (pattern[i + 1] === 'Q') { // literal up to \E (or the end)
        const end = pattern.indexOf('\\E', i + 2);
        const stop = end < 0 ? pattern.length : end + 2;
        out += pattern.slice(i, stop);
        i = stop - 1;
        continue;
      }
      out += pattern.slice(i, i + 2);
      i++;
      continue;
    }
    if (c === '[') { // a class: up to its closing ], which may come first ([]a] or [^]a])
      let j = i + 1;
      if (pattern[j] === '^') j++;
      if (pattern[j] === ']') j++;
      while (j < pattern.length && pattern[j] !== ']') j += pattern[j] === '\\' ? 2 : pattern.startsWith('[:', j) && pattern.indexOf(':]', j) > 0 ? pattern.indexOf(':]', j) - j + 2 : 1;
      out += pattern.slice(i, j + 1);
      i = j;
      continue;
    }
    if (c === '$') { out += '(?:\\n?\\z)'; changed = true; continue; }
    out += c;
  }
  return changed ? out : undefined;
}

function compile(pattern: string, flags: number): RE2JS {
  try { return RE2JS.compile(pattern, flags); } catch (err) { throw new RegexRefusedError(explain(err, pattern)); }
}

/** RE2 metacharacters; a pattern without any is a plain literal. */
const META = /[\\^$.|?*+()[\]{}]/;

/**
 * Compiles a user's pattern once. Throws RegexRefusedError (message without the pattern, for
 * the caller to prefix with where it came from) when it is too long, does not compile, uses a
 * feature RE2 cannot run, or compiles to a program over PROGRAM_MAX.
 */
export function compileUserRegex(pattern: string, opts: RegexOptions = {}): UserRegex {
  if (typeof pattern !== 'string') throw new RegexRefusedError('must be text');
  if (pattern.length > PATTERN_MAX) throw new RegexRefusedError(`is ${pattern.length} characters; the limit is ${PATTERN_MAX}`);
  const guess = estimateProgramSize(pattern);
  // Generous (8×): RE2 simplifies, e.g. (a|b|c) to [a-c], and the exact size is checked below.
  if (guess > 8 * PROGRAM_MAX) throw new RegexRefusedError(`is too large: it would compile to about ${guess} steps and the limit is ${PROGRAM_MAX} (large counts such as {500} cost the most)`);
  const flags = (opts.ignoreCase ? RE2JS.CASE_INSENSITIVE : 0) | (opts.dotAll ? RE2JS.DOTALL : 0);
  // The pattern alone first: it must be balanced before it is wrapped in \A(?:…), and errors
  // name what the user wrote.
  let plain = compile(pattern, flags);
  if (opts.anchorStart) plain = compile(`\\A(?:${pattern})`, flags);
  // Python's `$` (see pythonDollar): what decides whether the pattern matches.
  const dollar = pythonDollar(pattern);
  const re = dollar === undefined ? plain : compile(opts.anchorStart ? `\\A(?:${dollar})` : dollar, flags);
  const size = re.programSize();
  if (size > PROGRAM_MAX) throw new RegexRefusedError(`is too large: it compiles to ${size} steps and the limit is ${PROGRAM_MAX} (large counts such as {500} cost the most)`);

  // A plain literal (the common "contains this text" rule) needs no engine on the hot path.
  let test: (s: string) => boolean = (s) => re.test(capInput(s));
  if (!opts.ignoreCase && !META.test(pattern)) {
    test = opts.anchorStart ? (s) => capInput(s).startsWith(pattern) : (s) => capInput(s).includes(pattern);
  }
  return {
    source: pattern,
    test,
    exec(input) {
      const s = capInput(input);
      if (!re.test(s)) return null; // the DFA answers most inputs; captures only for a hit
      // Captures as Python gives them: a `$` that matched before the final newline leaves it out.
      const m = plain.exec(s) ?? (dollar !== undefined && s.endsWith('\n') ? plain.exec(s.slice(0, -1)) : null);
      if (!m) return null;
      return { match: Array.from(m, (g) => (g ?? '') as string), groups: { ...((m as { groups?: Record<string, string | undefined> }).groups ?? {}) } };
    },
  };
}
