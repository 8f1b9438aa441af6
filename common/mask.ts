/**
 * The forms a secret value is masked in, and masking of whole strings (error messages, log
 * fields) with a run's secret values. The agent's streaming masker (agent/secrets.ts) uses the
 * same forms; the hub and the agent's edge rules use maskText on every message that leaves a run.
 */
import { TrellisError } from './errors.js';

export const MASK = '****';

/** The byte patterns a value is masked in: itself, base64 (padded and not), base64url. */
export function secretForms(value: string): string[] {
  const raw = Buffer.from(value, 'utf8');
  const b64 = raw.toString('base64');
  return [value, b64, b64.replace(/=+$/, ''), raw.toString('base64url')];
}

/**
 * Text with every form of every value replaced by `****` (longest first, so a value that holds
 * another is masked whole), and with the JSON-quoted form of each value too (messages quote
 * values with JSON.stringify). Values under 3 characters are left alone in messages: masking
 * every "a" would garble the text and hide nothing a guess would not find.
 */
export function maskText(text: string, values: Iterable<string>): string {
  const forms = new Set<string>();
  for (const v of values) {
    if (typeof v !== 'string' || v.length < 3) continue;
    for (const f of secretForms(v)) if (f.length > 0) forms.add(f);
    const q = JSON.stringify(v).slice(1, -1);
    if (q !== v && q.length > 0) forms.add(q);
  }
  if (forms.size === 0 || text.length === 0) return text;
  let out = text;
  for (const f of [...forms].sort((a, b) => b.length - a.length)) if (out.includes(f)) out = out.split(f).join(MASK);
  return out;
}

/** The error with its message masked (a TrellisError keeps its code; another error becomes a plain Error). */
export function maskError(err: unknown, values: Iterable<string>): unknown {
  const list = [...values];
  if (list.length === 0 || !(err instanceof Error)) return err;
  const msg = maskText(err.message, list);
  if (msg === err.message) return err;
  return err instanceof TrellisError ? new TrellisError(err.code, msg) : new Error(msg);
}
