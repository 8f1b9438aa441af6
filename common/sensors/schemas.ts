/**
 * Config schemas of the built-in sensor kinds, shared by the hub (pack validation) and the agent
 * (which re-validates what it is sent). Every schema is strict: an unknown key is refused with
 * its name. Durations accept a string with a unit ("5s", "250ms") or a number of milliseconds
 * and come out as milliseconds, so parsing an already-parsed config gives the same config.
 */
import { z } from 'zod';
import type { SensorKind } from '../automation/types.js';
import { parseDuration } from '../duration.js';
import { TrellisError } from '../errors.js';
import { compileUserRegex, PATTERN_MAX, RegexRefusedError } from '../regex.js';

export type { SensorKind };

/** The one list of sensor kinds; `agent/sensors/index.ts` has one implementation per entry. */
export const SENSOR_KINDS = ['cpu', 'memory', 'disk', 'process', 'file', 'log', 'http', 'command'] as const satisfies readonly SensorKind[];

/** Trigger type of a sensor's events when its definition names none. */
export const DEFAULT_TRIGGER = (kind: SensorKind): string => `core.${kind}`;

/** Longest regular expression a sensor accepts. */
export const MAX_PATTERN_LENGTH = PATTERN_MAX;
/** Longest path a sensor accepts. */
export const MAX_PATH_LENGTH = 4096;
/** Cap on the stdout and on the stderr a command sensor puts in its payload. */
export const COMMAND_OUTPUT_CAP_BYTES = 16 * 1024;

const path = z.string().min(1, 'must not be empty').max(MAX_PATH_LENGTH, `must be at most ${MAX_PATH_LENGTH} characters`)
  .refine((p) => !p.includes('\0'), 'must not contain NUL');
const percent = z.number().min(0, 'must be between 0 and 100').max(100, 'must be between 0 and 100');

/** A duration: "5s" / "250ms" / a number of milliseconds, between min and max (ms). */
function duration(minMs: number, maxMs: number) {
  return z.union([z.number().int('must be a whole number of milliseconds'), z.string().max(32, 'is too long')])
    .transform((v, ctx) => {
      let ms: number;
      if (typeof v === 'number') ms = v;
      else {
        try { ms = parseDuration(v); } catch (err) {
          ctx.addIssue({ code: 'custom', message: (err as Error).message });
          return z.NEVER;
        }
      }
      if (ms < minMs || ms > maxMs) {
        ctx.addIssue({ code: 'custom', message: `must be between ${minMs} ms and ${maxMs} ms (got ${ms} ms)` });
        return z.NEVER;
      }
      return ms;
    });
}

/** A regular expression the linear-time engine (RE2, common/regex.ts) compiles. */
export const safePattern = z.string().min(1, 'must not be empty').max(MAX_PATTERN_LENGTH, `must be at most ${MAX_PATTERN_LENGTH} characters`)
  .superRefine((p, ctx) => {
    try { compileUserRegex(p); } catch (err) {
      if (!(err instanceof RegexRefusedError)) throw err;
      ctx.addIssue({ code: 'custom', message: `is not a usable regular expression: it ${err.message}` });
    }
  });

/** cpu / memory / disk: a reading every interval, or (emit: above) only while at or over threshold. */
function thresholdFields() {
  return {
    threshold: percent.optional(),
    emit: z.enum(['always', 'above']).optional(),
  };
}
function resolveEmit<T extends { threshold?: number; emit?: 'always' | 'above' }>(c: T, ctx: z.RefinementCtx): T & { emit: 'always' | 'above' } {
  const emit = c.emit ?? (c.threshold === undefined ? 'always' : 'above');
  if (emit === 'above' && c.threshold === undefined) ctx.addIssue({ code: 'custom', path: ['threshold'], message: 'is required when emit is "above"' });
  return { ...c, emit };
}

const cpu = z.strictObject(thresholdFields()).transform(resolveEmit);
const memory = z.strictObject(thresholdFields()).transform(resolveEmit);
const disk = z.strictObject({ path: path.default('/'), ...thresholdFields() }).transform(resolveEmit);

const processSchema = z.strictObject({
  name: z.string().min(1, 'must not be empty').max(255, 'must be at most 255 characters').optional(),
  pattern: safePattern.optional(),
  pidFile: path.optional(),
}).superRefine((c, ctx) => {
  const set = [c.name, c.pattern, c.pidFile].filter((v) => v !== undefined).length;
  if (set !== 1) ctx.addIssue({ code: 'custom', message: 'set exactly one of name, pattern or pidFile' });
});

const file = z.strictObject({
  path,
  /** Files larger than this are not hashed (sha256 is ''). */
  maxHashBytes: z.number().int().min(0).max(1024 ** 3).default(64 * 1024 * 1024),
});

const log = z.strictObject({
  path,
  pattern: safePattern,
  fromEnd: z.boolean().default(true),
  maxLineBytes: z.number().int().min(16, 'must be at least 16').max(1024 * 1024, 'must be at most 1048576').default(8192),
  maxLinesPerPoll: z.number().int().min(1, 'must be at least 1').max(100_000, 'must be at most 100000').default(1000),
});

const httpSchema = z.strictObject({
  url: z.string().max(2048, 'must be at most 2048 characters').superRefine((u, ctx) => {
    let parsed: URL;
    try { parsed = new URL(u); } catch {
      ctx.addIssue({ code: 'custom', message: 'is not a valid URL' });
      return;
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') ctx.addIssue({ code: 'custom', message: 'must be an http:// or https:// URL' });
    if (parsed.username || parsed.password) ctx.addIssue({ code: 'custom', message: 'must not embed credentials (sensor configs are not secret storage)' });
  }),
  method: z.enum(['GET', 'HEAD']).default('GET'),
  timeout: duration(100, 120_000).default(10_000),
  expectStatus: z.union([
    z.number().int().min(100).max(599),
    z.array(z.number().int().min(100).max(599)).min(1).max(32),
  ]).optional(),
  insecure: z.boolean().default(false),
  caFile: path.optional(),
  emit: z.enum(['always', 'change', 'failure']).default('always'),
}).superRefine((c, ctx) => {
  if (c.insecure && c.caFile) ctx.addIssue({ code: 'custom', path: ['insecure'], message: 'cannot be combined with caFile' });
});

const command = z.strictObject({
  argv: z.array(z.string().max(4096, 'an argument must be at most 4096 characters')
    .refine((a) => !a.includes('\0'), 'an argument must not contain NUL'))
    .min(1, 'must name a program').max(64, 'must have at most 64 elements')
    .refine((a) => a[0] !== '', 'the program (argv[0]) must not be empty'),
  timeout: duration(100, 600_000).default(10_000),
  emit: z.enum(['always', 'change', 'nonzero']).default('change'),
});

export const SENSOR_CONFIG_SCHEMAS = {
  cpu, memory, disk, process: processSchema, file, log, http: httpSchema, command,
} satisfies Record<SensorKind, z.ZodType>;

export type SensorConfig<K extends SensorKind> = z.output<(typeof SENSOR_CONFIG_SCHEMAS)[K]>;

export function isSensorKind(kind: string): kind is SensorKind {
  return (SENSOR_KINDS as readonly string[]).includes(kind);
}

/**
 * Validates a sensor config against its kind's schema. Throws TRELLIS_E_INVALID_ARGUMENT naming
 * the field ("log sensor config: pattern: is not a usable regular expression: it uses lookahead ...").
 */
export function parseSensorConfig<K extends SensorKind>(kind: K, config: unknown): SensorConfig<K> {
  const schema = SENSOR_CONFIG_SCHEMAS[kind] as unknown as z.ZodType<SensorConfig<K>>;
  const r = schema.safeParse(config ?? {});
  if (r.success) return r.data;
  const msg = r.error.issues.slice(0, 5).map((i) => {
    if (i.code === 'unrecognized_keys') return `unknown key${i.keys.length > 1 ? 's' : ''} ${i.keys.map((k) => `"${k}"`).join(', ')}`;
    const where = i.path.length ? i.path.join('.') : '(config)';
    return `${where}: ${i.message}`;
  }).join('; ');
  throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${kind} sensor config: ${msg}`);
}

export interface SensorDoc {
  /** One line: what it does. */
  summary: string;
  /** Config keys with their defaults. */
  config: string;
  /** Payload fields of its events (every payload also carries `sensor`: the sensor's name). */
  payload: string;
}

/** Per kind: what it does, its config and its payload; the README prints this table. */
export const SENSOR_DOCS: Record<SensorKind, SensorDoc> = {
  cpu: {
    summary: 'CPU busy percent over the last interval (from os.cpus() deltas) and load averages. Emits a reading every interval; with threshold, only while percent >= threshold (emit defaults to "above").',
    config: 'threshold?: 0-100; emit?: "always" | "above" (default "always", "above" when threshold is set)',
    payload: 'percent, load1, load5, load15, cpus',
  },
  memory: {
    summary: 'Memory in use (total minus MemAvailable). Emits a reading every interval; with threshold, only while percent >= threshold (emit defaults to "above").',
    config: 'threshold?: 0-100; emit?: "always" | "above" (default "always", "above" when threshold is set)',
    payload: 'percent, usedBytes, totalBytes, availableBytes',
  },
  disk: {
    summary: 'Filesystem usage of a path (statfs; percent as df shows it). Emits a reading every interval; with threshold, only while percent >= threshold (emit defaults to "above").',
    config: 'path: "/" ; threshold?: 0-100; emit?: "always" | "above" (default "always", "above" when threshold is set)',
    payload: 'path, percent, usedBytes, totalBytes, freeBytes (available to unprivileged users)',
  },
  process: {
    summary: 'Whether a process runs: by name (argv[0] basename or comm), by regex on the command line, or by pid file. Emits once at start and whenever presence changes.',
    config: 'exactly one of name, pattern (RE2 regex on the space-joined command line), pidFile',
    payload: 'name (the name, pattern or pid file), present, pids, count',
  },
  file: {
    summary: 'Watches one file (by polling) and emits when it is created, modified (mtime, size or inode changed) or deleted; no event for the state found at start.',
    config: 'path; maxHashBytes: 67108864 (larger files get sha256 "")',
    payload: 'path, exists, change ("created" | "modified" | "deleted"), size, mtimeMs, sha256',
  },
  log: {
    summary: 'Tails a log file and emits one event per new line matching pattern; follows rotation (inode change) and truncation, reads only new bytes, at most maxLinesPerPoll lines per poll.',
    config: 'path; pattern (RE2 regex, linear time: no backreferences or lookaround; sees the first 64 KiB of a line); fromEnd: true; maxLineBytes: 8192 (longer lines are cut); maxLinesPerPoll: 1000',
    payload: 'path, line, match (array: whole match then capture groups, "" for unmatched), groups (named groups, {} if none)',
  },
  http: {
    summary: 'Probes a URL every interval (no redirects followed). ok is status in expectStatus, or 2xx/3xx when unset. emit: "always" (default) every probe, "change" when ok or status changes (and the first probe), "failure" only when not ok.',
    config: 'url; method: "GET" | "HEAD" (default GET); timeout: 10s; expectStatus?: number | number[]; insecure: false; caFile?; emit: "always"',
    payload: 'url, status (0 when no response), ok, latencyMs, error (only when no response)',
  },
  command: {
    summary: 'Runs argv (no shell, minimal environment, own process group) every interval. emit: "change" (default) when exit code or output differs from the last run (and the first run), "always" every run, "nonzero" when the exit code is not 0.',
    config: 'argv: string[]; timeout: 10s; emit: "change"',
    payload: `argv, exitCode (-1 when it could not run or timed out), stdout, stderr (each capped at ${COMMAND_OUTPUT_CAP_BYTES} bytes), error (only when it failed to run or timed out)`,
  },
};
