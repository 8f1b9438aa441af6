/**
 * `--log-format pretty`: each JSON log line as one line a person reads (no pino-pretty needed):
 *   2024-05-01T12:00:00.000Z WARN  [admin] request refused  method=/trellis.v1.AdminAuth/Login code=TRELLIS_E_UNAUTHENTICATED reason="wrong user name or password"
 * Time in ISO 8601 (UTC), level, component, message, then the other fields as key=value (values
 * with spaces or quotes in JSON form); an error's stack follows, indented. Text is cleaned of
 * terminal escape sequences and control characters (common/text.ts): log fields quote remote
 * text, and this format is meant for a terminal.
 */
import type { DestinationStream } from 'pino';
import { cleanText } from './text.js';

const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
const PLAIN = /^[\w.:/@+,[\]*-]+$/;

function value(v: unknown): string {
  if (typeof v === 'string') return PLAIN.test(v) ? v : JSON.stringify(v);
  return JSON.stringify(v) ?? String(v);
}

/** One JSON log line in the pretty form (with its newline); a line that is not JSON is kept. */
export function prettyLine(line: string): string {
  let o: Record<string, unknown>;
  try { o = JSON.parse(line) as Record<string, unknown>; } catch { return line.endsWith('\n') ? line : `${line}\n`; }
  const { time, level, msg, component, err, pid: _pid, hostname: _host, name: _name, ...rest } = o;
  const t = typeof time === 'number' ? new Date(time).toISOString() : String(time ?? '');
  const lv = (LEVELS[level as number] ?? String(level)).padEnd(5);
  const fields = Object.entries(rest).map(([k, v]) => `${k}=${value(v)}`);
  const e = err as { message?: string; stack?: string; type?: string } | undefined;
  if (e) fields.push(`err=${value(e.message ?? e)}`);
  let out = `${t} ${lv} ${component ? `[${String(component)}] ` : ''}${String(msg ?? '')}${fields.length ? `  ${fields.join(' ')}` : ''}`;
  out = cleanText(out);
  if (e?.stack) out += `\n${cleanText(e.stack, { multiline: true }).split('\n').slice(1).map((l) => `    ${l.trim()}`).join('\n')}`;
  return `${out}\n`;
}

type Flushable = DestinationStream & { flush?: (cb?: (err?: Error) => void) => void; flushSync?: () => void; end?: () => void };

/** A pino destination that writes each line in the pretty form to another destination. */
export class PrettyStream implements DestinationStream {
  constructor(private readonly dest: Flushable) {}
  write(line: string): void { this.dest.write(prettyLine(line)); }
  flush(cb?: (err?: Error) => void): void { if (this.dest.flush) this.dest.flush(cb); else cb?.(); }
  flushSync(): void { this.dest.flushSync?.(); }
  end(): void { this.dest.end?.(); }
}
