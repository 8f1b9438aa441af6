/** Input checks shared by the hub's edges. Each throws INVALID_ARGUMENT naming the field. */
import { TrellisError } from '../common/errors.js';

const NAME_RE = /^[a-z0-9][a-z0-9-]{0,62}$/;
const LABEL_KEY_RE = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/;

export function checkName(v: string, what: string): string {
  if (!NAME_RE.test(v)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `bad ${what} "${v.slice(0, 80)}": use 1-63 lowercase letters, digits and dashes`);
  return v;
}

/** A label value: at most 63 printable characters (no control or format characters). */
const LABEL_VALUE_RE = /^[^\p{C}]{0,63}$/u;
export const MAX_LABEL_VALUE = 63;

/** A label key (also used for `--allow-label` keys of join tokens). */
export function checkLabelKey(k: string): string {
  if (typeof k !== 'string' || !LABEL_KEY_RE.test(k)) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `bad label key "${String(k).slice(0, 80).replace(/[^\x20-\x7e]/g, '?')}": letters, digits, . _ / -, at most 63, starting with a letter or digit`);
  }
  return k;
}

/** The one label validator: every label the hub stores (token, enrollment, admin) passes here. */
export function checkLabels(labels: Record<string, string>, max = 64): Record<string, string> {
  const entries = Object.entries(labels);
  if (entries.length > max) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `at most ${max} labels`);
  for (const [k, v] of entries) {
    checkLabelKey(k);
    if (typeof v !== 'string' || !LABEL_VALUE_RE.test(v)) {
      throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `label ${k}: the value must be at most ${MAX_LABEL_VALUE} printable characters`);
    }
  }
  return Object.fromEntries(entries);
}

export function checkString(v: unknown, what: string, max: number): string {
  if (typeof v !== 'string') throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${what} must be a string`);
  if (v.length > max) throw new TrellisError('TRELLIS_E_TOO_LARGE', `${what} is over ${max} characters`);
  return v;
}
