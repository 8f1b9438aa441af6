/**
 * One pino logger per daemon, passed down with child({ component }). Every field that can
 * carry a credential is redacted, wherever it sits in a logged object.
 */
import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

const SECRET_KEYS = [
  'password', 'newPassword', 'token', 'joinToken', 'secret', 'apiKey', 'api_key', 'privateKey',
  'private_key', 'keyPem', 'key', 'authorization', 'Authorization', 'cookie', 'value', 'csr',
  'masterKey', 'x-api-key', 'x-trellis-api-key',
];

/** Redaction paths: each key at the top level and up to two levels down, plus headers/metadata. */
export const REDACT_PATHS: string[] = [
  ...SECRET_KEYS.flatMap((k) => [`["${k}"]`, `*["${k}"]`, `*.*["${k}"]`]),
  'req.headers.authorization',
  'metadata.authorization',
];

export interface LogOptions {
  level?: string;
  /** Destination stream; defaults to stderr so stdout stays clean for command output. */
  destination?: DestinationStream;
  name?: string;
}

export function createLogger(opts: LogOptions = {}): Logger {
  return pino(
    {
      name: opts.name ?? 'trellis',
      level: opts.level ?? process.env.TRELLIS_LOG_LEVEL ?? 'info',
      redact: { paths: REDACT_PATHS, censor: '[REDACTED]' },
      base: { pid: process.pid },
    },
    opts.destination ?? pino.destination({ fd: 2, sync: false }),
  );
}

/** A logger that writes nothing: for library use and quiet commands. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
