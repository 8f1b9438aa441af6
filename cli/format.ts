/** Plain-text tables and values for CLI output. */
import { formatDuration } from '../common/duration.js';

export function table(rows: string[][], headers: string[]): string {
  const all = [headers, ...rows];
  const widths = headers.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  return all.map((r) => r.map((c, i) => (i === r.length - 1 ? c : (c ?? '').padEnd(widths[i]!))).join('  ').trimEnd()).join('\n');
}

export function ago(ms: number, now = Date.now()): string {
  if (!ms) return '-';
  const d = now - ms;
  return d >= 0 ? `${formatDuration(d)} ago` : `in ${formatDuration(-d)}`;
}

export function when(ms: number): string {
  return ms ? new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z') : '-';
}

export function labels(l: Record<string, string>): string {
  const s = Object.entries(l).map(([k, v]) => `${k}=${v}`).join(',');
  return s || '-';
}

/** Parses repeated k=v options into a map; throws a clear error on a bad one. */
export function parseKeyValues(items: string[] | undefined, what: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of items ?? []) {
    for (const part of item.split(',')) {
      if (!part) continue;
      const i = part.indexOf('=');
      if (i <= 0) throw new Error(`bad ${what} "${part}": use key=value`);
      out[part.slice(0, i)] = part.slice(i + 1);
    }
  }
  return out;
}

/** Writes a line to stdout (adds the newline if missing). */
export function print(s: string): void { process.stdout.write(s.endsWith('\n') ? s : s + '\n'); }
