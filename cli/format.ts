/**
 * Plain-text tables and values for CLI output. Everything the CLI prints passes through here:
 * remote text (agent facts and labels, errors, event payloads, audit details) is cleaned of
 * terminal escape sequences and control characters (common/text.ts) before it reaches a terminal.
 */
import { Option, type Command } from 'commander';
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

/** A time in local ISO 8601 form with its offset (`2024-05-01T14:03:09+02:00`, `…Z` in UTC). */
export function localIso(ms: number, o: { millis?: boolean } = {}): string {
  const d = new Date(ms);
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  const off = -d.getTimezoneOffset();
  const zone = off === 0 ? 'Z' : `${off > 0 ? '+' : '-'}${p(Math.floor(Math.abs(off) / 60))}:${p(Math.abs(off) % 60)}`;
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}` +
    `${o.millis ? `.${p(d.getMilliseconds(), 3)}` : ''}${zone}`;
}

/** A time for a table or a `show` view: local ISO 8601, `-` for none. */
export function when(ms: number): string {
  return Number(ms) ? localIso(Number(ms)) : '-';
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

/*
 * One output model for every `list` and `show` command: `-o table|wide|json|yaml`, `--json`
 * an alias of `-o json`. Tables show times in local ISO or relative form; json and yaml show
 * the records themselves with times in RFC 3339 (UTC), keys without their `Ms` suffix.
 */
export const OUTPUT_FORMATS = ['table', 'wide', 'json', 'yaml'] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];
export interface OutputOptions { output?: OutputFormat; json?: boolean }

/** `-o, --output` and `--json` for a list or show command; `more` says what `wide` adds. */
export function addOutputOptions(cmd: Command, more?: string): Command {
  return cmd
    .addOption(new Option('-o, --output <format>', `output format (default: table)${more ? `; wide adds ${more}` : ''}; json and yaml print whole records, times in RFC 3339`)
      .choices(OUTPUT_FORMATS))
    .addOption(new Option('--json', 'the same as -o json').conflicts('output'));
}

export function formatOf(o: OutputOptions): OutputFormat {
  return o.json ? 'json' : o.output ?? 'table';
}

/** Time fields of the API (`createdAtMs`, `lastSeenMs`, `timeMs`, …), as opposed to durations (`ttlMs`, `windowMs`). */
const TIME_WORDS = ['At', 'Seen', 'Login', 'Received', 'Used', 'Until', 'Started', 'Finished', 'Requested', 'Installed', 'Created', 'Before', 'After', 'Time', 'Since'];
const TIME_KEY = new RegExp(`^(?:[a-z][A-Za-z0-9]*(?:${TIME_WORDS.join('|')})|(?:${TIME_WORDS.map((w) => w.toLowerCase()).join('|')}))Ms$`);

/**
 * The API's string maps (proto `map<string, …>`): their keys are chosen by users, tokens or hosts
 * (labels, env, headers, parameters…), so they are data and kept as they are: a label
 * `deployedAtMs=1700000000000` is not an API time.
 */
const VERBATIM_MAPS = new Set(['labels', 'selector', 'set', 'env', 'sealedEnv', 'headers', 'sealedHeaders', 'sealedSecrets', 'parameters', 'refused']);

/**
 * A record as json/yaml show it: times (epoch milliseconds under a `…Ms` key) become RFC 3339
 * strings under the key without `Ms` (null when unset), bytes become base64, undefined fields go;
 * the string maps (VERBATIM_MAPS) are copied unchanged.
 */
export function toDocument(v: unknown): unknown {
  if (Buffer.isBuffer(v) || v instanceof Uint8Array) return Buffer.from(v).toString('base64');
  if (Array.isArray(v)) return v.map(toDocument);
  if (v === null || typeof v !== 'object') return v;
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
    if (x === undefined) continue;
    if (VERBATIM_MAPS.has(k) && x !== null && typeof x === 'object' && !Array.isArray(x) && !(x instanceof Uint8Array)) out[k] = { ...x };
    else if (TIME_KEY.test(k) && (typeof x === 'number' || (typeof x === 'string' && /^\d+$/.test(x)))) {
      const ms = Number(x);
      out[k.slice(0, -2)] = ms > 0 ? new Date(ms).toISOString() : null;
    } else out[k] = toDocument(x);
  }
  return out;
}

export async function printDocument(format: 'json' | 'yaml', doc: unknown): Promise<void> {
  if (format === 'json') { print(JSON.stringify(toDocument(doc), null, 2)); return; }
  const { stringify } = await import('yaml'); // loaded only when asked: it slows every start
  print(stringify(toDocument(doc), { lineWidth: 0 }));
}

/** A column of a list: its header, its cell (`wide`: for `-o wide`), and whether only `-o wide` shows it. */
export interface Column<R> { header: string; cell: (r: R, wide: boolean) => string; wide?: boolean }

/**
 * Prints a list in the format asked: a table of `columns` (wide: with the wide ones too), or
 * `data` (default: the rows themselves) as json or yaml. `empty`: the table's text for no rows.
 */
export async function output<R>(o: OutputOptions, rows: readonly R[], columns: readonly Column<R>[], opts: { data?: unknown; empty?: string } = {}): Promise<void> {
  const f = formatOf(o);
  if (f === 'json' || f === 'yaml') return printDocument(f, opts.data ?? rows);
  if (rows.length === 0 && opts.empty) { print(opts.empty); return; }
  const shown = columns.filter((c) => f === 'wide' || !c.wide);
  print(table(rows.map((r) => shown.map((c) => c.cell(r, f === 'wide'))), shown.map((c) => c.header)));
}

/** Prints one record: `human()` for table and wide (`wide` gets `true`), else `data` as json or yaml. */
export async function outputOne(o: OutputOptions, data: unknown, human: (wide: boolean) => string): Promise<void> {
  const f = formatOf(o);
  if (f === 'json' || f === 'yaml') return printDocument(f, data);
  print(human(f === 'wide'));
}
