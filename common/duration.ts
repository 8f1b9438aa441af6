import { TrellisError } from './errors.js';

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000, y: 365 * 86_400_000 };

/**
 * Parses "500ms", "30s", "15m", "1h30m", "7d" (or a bare number of seconds) into milliseconds.
 * Throws TRELLIS_E_INVALID_ARGUMENT naming the bad text.
 */
export function parseDuration(text: string, what = 'duration'): number {
  const s = String(text).trim();
  if (/^\d+$/.test(s)) return Number(s) * 1000;
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)/gy;
  let total = 0;
  let pos = 0;
  let m: RegExpExecArray | null;
  while ((m = re.exec(s)) !== null) {
    total += Number(m[1]) * UNITS[m[2]!]!;
    pos = re.lastIndex;
  }
  if (s.length === 0 || pos !== s.length || !Number.isFinite(total)) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `bad ${what} "${text}": use a number with a unit, e.g. 30s, 15m, 24h, 7d`);
  }
  return Math.round(total);
}

/** 93784000 → "1d2h3m4s"; used in messages and listings. */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  let rest = Math.round(ms / 1000);
  const parts: string[] = [];
  for (const [u, n] of [['d', 86400], ['h', 3600], ['m', 60], ['s', 1]] as const) {
    if (rest >= n) { parts.push(`${Math.floor(rest / n)}${u}`); rest %= n; }
  }
  return parts.join('');
}
