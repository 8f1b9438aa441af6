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
  const flags = (opts.ignoreCase ? RE2JS.CASE_INSENSITIVE : 0) | (opts.dotAll ? RE2JS.DOTALL : 0);
  // The pattern alone first: it must be balanced before it is wrapped in \A(?:…).
  let re = compile(pattern, flags);
  if (opts.anchorStart) re = compile(`\\A(?:${pattern})`, flags);
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
      const m = re.exec(s);
      if (!m) return null;
      return { match: Array.from(m, (g) => (g ?? '') as string), groups: { ...((m as { groups?: Record<string, string | undefined> }).groups ?? {}) } };
    },
  };
}
