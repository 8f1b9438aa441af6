/**
 * One pino logger per daemon, passed down with child({ component }). Every field that can
 * carry a credential is redacted, wherever it sits in a logged object.
 *
 * Lines are JSON (one object per line, one `msg`) or, with format `pretty`, one readable line
 * each (common/log-pretty.ts). `time` is epoch milliseconds, or an ISO 8601 string with `iso`.
 */
import { pino, type Logger, type DestinationStream, type LoggerOptions } from 'pino';
import { TrellisError } from './errors.js';
import { PrettyStream } from './log-pretty.js';

export type { Logger };

const SECRET_KEYS = [
  'password', 'newPassword', 'token', 'joinToken', 'secret', 'apiKey', 'api_key', 'privateKey',
  'private_key', 'keyPem', 'key', 'authorization', 'Authorization', 'cookie', 'value', 'csr',
  'masterKey', 'x-api-key', 'x-trellis-api-key', 'passphrase',
];

/** Redaction paths: each key at the top level and up to two levels down, plus headers/metadata. */
export const REDACT_PATHS: string[] = [
  ...SECRET_KEYS.flatMap((k) => [`["${k}"]`, `*["${k}"]`, `*.*["${k}"]`]),
  'req.headers.authorization',
  'metadata.authorization',
];

export const LOG_FORMATS = ['json', 'pretty'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];
export const LOG_TIMES = ['epoch', 'iso'] as const;
export type LogTime = (typeof LOG_TIMES)[number];

export interface LogOptions {
  level?: string;
  /** Destination stream; defaults to stderr so stdout stays clean for command output. */
  destination?: DestinationStream;
  name?: string;
  /** json (default: TRELLIS_LOG_FORMAT, else json) or pretty. */
  format?: LogFormat;
  /** epoch milliseconds (default: TRELLIS_LOG_TIME, else epoch) or iso. */
  time?: LogTime;
}

/** Keys pino writes itself on every line: a logged object holding one would repeat it in the line. */
const RESERVED = ['time', 'level', 'pid', 'hostname', 'name'];

/**
 * Every line has each key once: a logged field named like one pino writes (`msg` beside a
 * message, `time`, `level`, `pid`, `hostname`, `name`) is written as `<key>_` instead, so a
 * JSON parser (which keeps only the last of two equal keys) loses nothing. Call sites name
 * their fields apart (a refusal's text is `reason`); this only keeps a slip from costing data.
 */
const logMethod: NonNullable<NonNullable<LoggerOptions['hooks']>['logMethod']> = function (args, method) {
  const [o, message] = args as unknown[];
  if (o && typeof o === 'object' && !(o instanceof Error)) {
    let copy: Record<string, unknown> | undefined;
    for (const k of typeof message === 'string' ? ['msg', ...RESERVED] : RESERVED) {
      if (!Object.prototype.hasOwnProperty.call(o, k)) continue;
      copy ??= { ...(o as Record<string, unknown>) };
      copy[`${k}_`] = copy[k];
      delete copy[k];
    }
    if (copy) { method.apply(this, [copy, ...(args as unknown[]).slice(1)] as Parameters<typeof method>); return; }
  }
  method.apply(this, args);
};

function pick<T extends string>(v: string | undefined, allowed: readonly T[], what: string): T | undefined {
  if (v === undefined || v === '') return undefined;
  if (!(allowed as readonly string[]).includes(v)) throw new TrellisError('TRELLIS_E_CONFIG', `${what} is ${allowed.join(' or ')}, not "${v}"`);
  return v as T;
}

export function createLogger(opts: LogOptions = {}): Logger {
  const format = opts.format ?? pick(process.env.TRELLIS_LOG_FORMAT, LOG_FORMATS, 'TRELLIS_LOG_FORMAT') ?? 'json';
  const time = opts.time ?? pick(process.env.TRELLIS_LOG_TIME, LOG_TIMES, 'TRELLIS_LOG_TIME') ?? 'epoch';
  const dest = opts.destination ?? pino.destination({ fd: 2, sync: false });
  return pino(
    {
      name: opts.name ?? 'trellis',
      level: opts.level ?? process.env.TRELLIS_LOG_LEVEL ?? 'info',
      redact: { paths: REDACT_PATHS, censor: '[REDACTED]' },
      base: { pid: process.pid },
      timestamp: time === 'iso' ? pino.stdTimeFunctions.isoTime : pino.stdTimeFunctions.epochTime,
      hooks: { logMethod },
    },
    format === 'pretty' ? new PrettyStream(dest) : dest,
  );
}

/** A logger that writes nothing: for library use and quiet commands. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
