/**
 * Plain-text tables and values for CLI output. Everything the CLI prints passes through here:
 * remote text (agent facts and labels, errors, event payloads, audit details) is cleaned of
 * terminal escape sequences and control characters (common/text.ts) before it reaches a terminal.
 */
import { formatDuration } from '../common/duration.js';
import { cleanText } from '../common/text.js';

/** One line of remote text, safe to print (no escape sequences, no control characters, no newline). */
export const clean = (s: string): string => cleanText(String(s ?? ''));

export function table(rows: string[][], headers: string[]): string {
  const all = [headers, ...rows].map((r) => r.map((c) => clean(c ?? '')));
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
  const s = Object.entries(l).map(([k, v]) => `${clean(k)}=${clean(v)}`).join(',');
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

/** Writes a line to stdout (adds the newline if missing), cleaned: \n and \t kept, no other control character. */
export function print(s: string): void {
  const t = cleanText(s, { multiline: true });
  process.stdout.write(t.endsWith('\n') ? t : t + '\n');
}

/** The same on stderr (messages and errors, which may quote remote text). */
export function printErr(s: string): void {
  const t = cleanText(s, { multiline: true });
  process.stderr.write(t.endsWith('\n') ? t : t + '\n');
}

/**
 * Output of a remote program (`run`, `executions show/follow/rerun`). To a terminal it is cleaned
 * like any remote text (a process on an agent — or an agent itself — must not drive the admin's
 * terminal: colours and cursor movement are dropped); `--raw` passes the bytes through. To a pipe
 * or a file the bytes are written unchanged: no terminal interprets them there.
 */
export function writeOutput(out: NodeJS.WriteStream, data: Buffer | Uint8Array, o: { raw?: boolean } = {}): void {
  if (o.raw || !out.isTTY) { out.write(data); return; }
  out.write(cleanText(Buffer.from(data).toString('utf8'), { multiline: true }));
}
