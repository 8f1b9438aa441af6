/**
 * Label selectors, kubectl style: the one parser used by the hub (run targets, `agents list
 * --selector`, rules that target a selector) and the CLI.
 *
 *   role=web            equal (also `role==web`)
 *   role!=web           not equal (true when the label is missing)
 *   zone in (eu,us)     one of
 *   zone notin (eu,us)  none of (true when the label is missing)
 *   gpu                 the label exists
 *   !gpu                the label does not exist
 *
 * Requirements are separated by commas and must all hold (AND). Whitespace around tokens is
 * ignored. A malformed selector is INVALID_ARGUMENT naming the 1-based character position.
 * Pure functions: no I/O.
 */
import { TrellisError } from './errors.js';

export type SelectorOp = 'eq' | 'ne' | 'in' | 'notin' | 'exists' | 'notexists';
export interface Requirement { key: string; op: SelectorOp; values: string[] }
/** A parsed selector: every requirement must hold. The empty selector matches everything. */
export type Selector = readonly Requirement[];

/** Label keys as the hub stores them (hub/validate.ts checkLabelKey). */
const KEY_RE = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/;
/** A value: anything but separators, whitespace and control or format characters (no label holds them: hub/validate.ts), at most 63 characters. */
const VALUE_CHARS = /[^\s,()=!\p{C}]/u;
export const MAX_SELECTOR_LENGTH = 4096;
export const MAX_REQUIREMENTS = 32;

function fail(pos: number, what: string, text: string): never {
  const shown = text.length > 80 ? `${text.slice(0, 80)}…` : text;
  // `what` quotes the text too (the character found, a bad key): cleaned the same way.
  throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `bad selector "${shown.replace(/[^\x20-\x7e]/g, '?')}" at position ${pos + 1}: ${what.replace(/[^\x20-\x7e]/g, '?')} ` +
    '(use k=v, k!=v, k in (a,b), k notin (a,b), k, !k; commas join them)');
}

/** Parses a selector expression; throws INVALID_ARGUMENT naming the position of the error. */
export function parseSelector(text: string): Selector {
  if (typeof text !== 'string') throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'selector must be a string');
  if (text.length > MAX_SELECTOR_LENGTH) throw new TrellisError('TRELLIS_E_TOO_LARGE', `selector is over ${MAX_SELECTOR_LENGTH} characters`);
  let i = 0;
  const ws = () => { while (i < text.length && /\s/.test(text[i]!)) i++; };
  const word = (): string => {
    const start = i;
    while (i < text.length && VALUE_CHARS.test(text[i]!)) i++;
    return text.slice(start, i);
  };
  const key = (): string => {
    const start = i;
    const k = word();
    if (!k) fail(start, i < text.length ? `expected a label key, found "${text[i]}"` : 'expected a label key', text);
    if (!KEY_RE.test(k)) fail(start, `bad label key "${k.slice(0, 64)}" (letters, digits, . _ / -, at most 63, starting with a letter or digit)`, text);
    return k;
  };
  const value = (): string => {
    const start = i;
    const v = word();
    if (v.length > 63) fail(start, 'a value is at most 63 characters', text);
    return v;
  };
  const out: Requirement[] = [];
  ws();
  if (i === text.length) return out; // empty: everything
  for (;;) {
    ws();
    if (text[i] === '!') {
      i++; ws();
      out.push({ key: key(), op: 'notexists', values: [] });
    } else {
      const k = key();
      ws();
      if (text.startsWith('!=', i)) { i += 2; ws(); out.push({ key: k, op: 'ne', values: [value()] }); }
      else if (text.startsWith('==', i)) { i += 2; ws(); out.push({ key: k, op: 'eq', values: [value()] }); }
      else if (text[i] === '=') { i += 1; ws(); out.push({ key: k, op: 'eq', values: [value()] }); }
      else if (/^(in|notin)\s*\(/.test(text.slice(i))) {
        const op: SelectorOp = text.startsWith('notin', i) ? 'notin' : 'in';
        i += op.length; ws();
        i++; // '('
        const values: string[] = [];
        for (;;) {
          ws();
          const start = i;
          const v = value();
          if (!v) fail(start, i < text.length ? `expected a value, found "${text[i]}"` : 'expected a value and ")"', text);
          values.push(v);
          ws();
          if (text[i] === ',') { i++; continue; }
          if (text[i] === ')') { i++; break; }
          fail(i, i < text.length ? `expected "," or ")", found "${text[i]}"` : 'missing ")"', text);
        }
        out.push({ key: k, op, values: [...new Set(values)] });
      } else if (i === text.length || text[i] === ',') {
        out.push({ key: k, op: 'exists', values: [] });
      } else {
        fail(i, `expected =, !=, in (...), notin (...) or "," after "${k}", found "${text[i]}"`, text);
      }
    }
    ws();
    if (i === text.length) break;
    if (text[i] !== ',') fail(i, `expected "," between requirements, found "${text[i]}"`, text);
    i++;
    ws();
    if (i === text.length) fail(i, 'expected a requirement after ","', text);
  }
  if (out.length > MAX_REQUIREMENTS) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `a selector holds at most ${MAX_REQUIREMENTS} requirements`);
  return out;
}

/** The selector of a plain label map (`{role: web}`: role=web). */
export function selectorFromMap(map: Record<string, string>): Selector {
  return Object.entries(map ?? {}).map(([key, v]) => ({ key, op: 'eq' as const, values: [v] }));
}

/**
 * The selector of a request: the `selector` expression, or the legacy label map of older
 * clients; both at once is an error.
 */
export function requestSelector(map: Record<string, string> | undefined, expr: string | undefined): Selector {
  const hasMap = Object.keys(map ?? {}).length > 0;
  if (hasMap && expr) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'give the selector once: as an expression or as a label map, not both');
  return expr ? parseSelector(expr) : selectorFromMap(map ?? {});
}

/** The selector of a rule target: its expression, else its label map. */
export function targetSelector(t: { selector: Record<string, string>; expr?: string }): Selector {
  return t.expr ? parseSelector(t.expr) : selectorFromMap(t.selector);
}

export function matchesSelector(labels: Record<string, string>, sel: Selector): boolean {
  for (const r of sel) {
    const has = Object.prototype.hasOwnProperty.call(labels, r.key);
    const v = has ? labels[r.key]! : undefined;
    switch (r.op) {
      case 'eq': if (v !== r.values[0]) return false; break;
      case 'ne': if (v === r.values[0]) return false; break;
      case 'in': if (v === undefined || !r.values.includes(v)) return false; break;
      case 'notin': if (v !== undefined && r.values.includes(v)) return false; break;
      case 'exists': if (!has) return false; break;
      case 'notexists': if (has) return false; break;
    }
  }
  return true;
}

/** The canonical text of a selector (for audit records and messages). */
export function formatSelector(sel: Selector): string {
  return sel.map((r) => {
    switch (r.op) {
      case 'eq': return `${r.key}=${r.values[0]}`;
      case 'ne': return `${r.key}!=${r.values[0]}`;
      case 'in': return `${r.key} in (${r.values.join(',')})`;
      case 'notin': return `${r.key} notin (${r.values.join(',')})`;
      case 'exists': return r.key;
      case 'notexists': return `!${r.key}`;
    }
  }).join(',');
}
