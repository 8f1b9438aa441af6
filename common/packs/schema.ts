/**
 * What the YAML files of a pack may say: `pack.yaml`, `actions/*.yaml` and `sensors/*.yaml`
 * (rules use common/rules/schema.ts). Schemas are strict (an unknown field is refused by name)
 * and take the file's snake_case spelling; the normalize functions turn a parsed file into the
 * shared camelCase definitions of common/automation/types.ts.
 */
import { z } from 'zod';
import { parseDuration } from '../duration.js';
import type { ActionDef, ParamSpec, SensorDef, SensorKind } from '../automation/types.js';
import { shellTemplateProblem } from '../rules/shell.js';

/** Names of packs, actions, sensors and rules. */
export const NAME_RE = /^[a-z0-9][a-z0-9_-]{0,62}$/;
const NAME_HINT = '1-63 characters of a-z 0-9 _ -, starting with a letter or a digit';
export const PARAM_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;
const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;
const HEADER_NAME_RE = /^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$/;
const USER_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$/;
const SEMVER_RE = /^\d{1,9}\.\d{1,9}(\.\d{1,9})?([-+][0-9A-Za-z.+-]{1,64})?$/;

export const DEFAULT_TIMEOUT_MS = 60_000;
export const MAX_TIMEOUT_MS = 24 * 3_600_000;
export const DEFAULT_INTERVAL_MS = 30_000;
export const MIN_INTERVAL_MS = 1_000;
export const MAX_INTERVAL_MS = 24 * 3_600_000;

const SENSOR_KIND_LIST = ['cpu', 'memory', 'disk', 'process', 'file', 'log', 'http', 'command'] as const satisfies readonly SensorKind[];
const PARAM_TYPES = ['string', 'integer', 'number', 'boolean', 'object', 'array'] as const satisfies readonly ParamSpec['type'][];
const HTTP_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;

const name = z.string().regex(NAME_RE, `must be ${NAME_HINT}`);
const text = (max: number) => z.string().max(max, `must be at most ${max} characters`);
const noNul = (s: string) => !s.includes('\0');
/** A template string (rendered later with parameters, `{{ kv.x }}`, `{{ secret.x }}`). */
const template = (max = 4096) => text(max).refine(noNul, 'must not contain NUL');

/** "30s", "5m", "1h30m", or an integer number of seconds; between min and max. */
function duration(minMs: number, maxMs: number) {
  return z.union([z.number().int('a bare number is whole seconds; use a unit for less (500ms)').min(0), text(32)])
    .transform((v, ctx) => {
      let ms: number;
      try { ms = typeof v === 'number' ? v * 1000 : parseDuration(v); } catch {
        ctx.addIssue({ code: 'custom', message: `bad duration "${String(v).slice(0, 32)}": use a number with a unit, e.g. 30s, 5m, 1h` });
        return z.NEVER;
      }
      if (ms < minMs || ms > maxMs) {
        ctx.addIssue({ code: 'custom', message: `must be between ${fmt(minMs)} and ${fmt(maxMs)}` });
        return z.NEVER;
      }
      return ms;
    });
}
const fmt = (ms: number) => (ms % 3_600_000 === 0 ? `${ms / 3_600_000}h` : ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`);

export const packMetaSchema = z.strictObject({
  name,
  version: z.string().regex(SEMVER_RE, 'must look like 1.2.3 (major.minor[.patch][-pre][+build])'),
  description: text(1024).default(''),
});
export type PackMeta = z.output<typeof packMetaSchema>;

function typeMatches(t: ParamSpec['type'], v: unknown): boolean {
  switch (t) {
    case 'string': return typeof v === 'string';
    case 'integer': return Number.isInteger(v);
    case 'number': return typeof v === 'number';
    case 'boolean': return typeof v === 'boolean';
    case 'object': return v !== null && typeof v === 'object' && !Array.isArray(v);
    case 'array': return Array.isArray(v);
  }
}
const isTemplate = (v: unknown) => typeof v === 'string' && v.includes('{{');

const paramSchema = z.strictObject({
  type: z.enum(PARAM_TYPES),
  description: text(1024).optional(),
  required: z.boolean().optional(),
  default: z.unknown().optional(),
  enum: z.array(z.unknown()).min(1).max(256).optional(),
  secret: z.boolean().optional(),
}).superRefine((p, ctx) => {
  // A default may be a template (e.g. "{{ kv.port }}"), resolved when the action runs.
  if (p.default !== undefined && !isTemplate(p.default) && !typeMatches(p.type, p.default)) {
    ctx.addIssue({ code: 'custom', path: ['default'], message: `must be of type ${p.type}` });
  }
  p.enum?.forEach((v, i) => {
    if (!typeMatches(p.type, v)) ctx.addIssue({ code: 'custom', path: ['enum', i], message: `must be of type ${p.type}` });
  });
  if (p.enum && p.default !== undefined && !isTemplate(p.default) && !p.enum.some((v) => JSON.stringify(v) === JSON.stringify(p.default))) {
    ctx.addIssue({ code: 'custom', path: ['default'], message: 'must be one of the enum values' });
  }
  if (p.secret && p.default !== undefined && !isTemplate(p.default)) {
    ctx.addIssue({ code: 'custom', path: ['default'], message: 'a secret parameter cannot have a literal default (pack files are not secret); use "{{ secret.name }}"' });
  }
});

const httpSchema = z.strictObject({
  method: z.string().max(16).transform((m) => m.toUpperCase()).pipe(z.enum(HTTP_METHODS)),
  url: template(8192).refine((u) => /^(https?:\/\/|\{\{)/i.test(u), 'must start with http:// or https:// (or be a template)'),
  headers: z.record(z.string().regex(HEADER_NAME_RE, 'header names are 1-128 token characters'), template(8192)).default({})
    .refine((h) => Object.keys(h).length <= 64, 'at most 64 headers'),
  body: template(64 * 1024).optional(),
  insecure: z.boolean().default(false),
  success_status: z.array(z.number().int().min(100).max(599)).min(1).max(64).optional(),
});

/** The action file as written. */
export const actionInputSchema = z.strictObject({
  name,
  description: text(1024).default(''),
  runner: z.enum(['command', 'script', 'http']),
  command: z.union([z.array(template()).min(1, 'must name a program').max(256), template(64 * 1024)]).optional(),
  shell: z.boolean().default(false),
  script: text(256).optional(),
  args: z.array(template()).max(256).optional(),
  http: httpSchema.optional(),
  parameters: z.record(z.string().regex(PARAM_NAME_RE, 'parameter names are 1-64 characters of A-Z a-z 0-9 _, not starting with a digit'), paramSchema)
    .default({}).refine((p) => Object.keys(p).length <= 64, 'at most 64 parameters'),
  timeout: duration(1000, MAX_TIMEOUT_MS).default(DEFAULT_TIMEOUT_MS) /* zod 4: a default is the OUTPUT value (ms), not re-transformed */,
  env: z.record(z.string().regex(ENV_NAME_RE, 'environment variable names are A-Z a-z 0-9 _, not starting with a digit'), template(16 * 1024))
    .default({}).refine((e) => Object.keys(e).length <= 128, 'at most 128 variables'),
  stdin: template(64 * 1024).optional(),
  cwd: template().refine((c) => c.startsWith('/') || isTemplate(c), 'must be an absolute path').optional(),
  run_as: z.string().regex(USER_RE, 'must be a user name (1-32 characters of A-Z a-z 0-9 _ . -)').optional(),
}).superRefine((a, ctx) => {
  const issue = (path: string, message: string) => ctx.addIssue({ code: 'custom', path: [path], message });
  const notFor = (fields: (keyof typeof a)[]) => {
    for (const f of fields) if (a[f] !== undefined && !(f === 'shell' && a.shell === false)) issue(f, `not used by runner ${a.runner}`);
  };
  switch (a.runner) {
    case 'command':
      notFor(['script', 'args', 'http']);
      if (a.command === undefined) issue('command', 'required for runner command: a list of arguments, or a string with shell: true');
      else if (a.shell && typeof a.command !== 'string') issue('command', 'with shell: true, give one string for /bin/sh -c');
      else if (!a.shell && typeof a.command === 'string') issue('command', 'a string is run by a shell: set shell: true, or give the arguments as a list');
      else if (a.shell && typeof a.command === 'string') {
        // Every value substituted into a shell command is code unless quoted (common/rules/shell.ts).
        let problem: string | undefined;
        try { problem = shellTemplateProblem(a.command); } catch (err) { problem = (err as Error).message; }
        if (problem) issue('command', problem);
      }
      else if (Array.isArray(a.command) && a.command[0] === '') issue('command', 'the program (command[0]) must not be empty');
      break;
    case 'script':
      notFor(['command', 'shell', 'http']);
      if (a.script === undefined) issue('script', 'required for runner script: a path inside the pack, e.g. scripts/restart.sh');
      break;
    case 'http':
      notFor(['command', 'shell', 'script', 'args', 'stdin', 'cwd', 'run_as']);
      if (Object.keys(a.env).length) issue('env', 'not used by runner http');
      if (a.http === undefined) issue('http', 'required for runner http: { method, url }');
      break;
  }
  // A secret reaches a process only by env or stdin, a request only by a header: argv, the
  // working directory, URLs and bodies end up in `ps`, logs and error messages (render.ts
  // refuses the same at run time; refusing here shows it at install).
  const secretParams = new Set(Object.entries(a.parameters).filter(([, p]) => p.secret).map(([n]) => n));
  const visible: [PropertyKey[], string | undefined][] = [
    ...(Array.isArray(a.command) ? a.command.map((c, i) => [['command', i], c] as [PropertyKey[], string]) : [[['command'], a.command as string | undefined] as [PropertyKey[], string | undefined]]),
    ...(a.args ?? []).map((c, i) => [['args', i], c] as [PropertyKey[], string]),
    [['cwd'], a.cwd], [['http', 'url'], a.http?.url], [['http', 'body'], a.http?.body],
  ];
  for (const [path, s] of visible) {
    const leak = s === undefined ? undefined : templateNames(s).find((n) => n === 'secret' || secretParams.has(n));
    if (leak) ctx.addIssue({ code: 'custom', path, message: `references secret ${leak === 'secret' ? 'values' : `parameter "${leak}"`}: pass secrets by env or stdin${a.runner === 'http' ? ' (or a header)' : ''}, never in ${path[0] === 'http' ? `the ${String(path[1])}` : 'arguments or the working directory'}` });
  }
});
export type ActionInput = z.output<typeof actionInputSchema>;

/**
 * The root names a template string refers to: `{{ a.b | f }}` → ["a", "f"]; a parameter named
 * through `parameters.x` counts as "x".
 */
export function templateNames(s: string): string[] {
  const out: string[] = [];
  for (const m of s.matchAll(/\{\{([^}]*)\}\}/g)) {
    for (const w of m[1]!.matchAll(/(?<![.\w'"])([A-Za-z_][A-Za-z0-9_]*)(?:\.([A-Za-z_][A-Za-z0-9_]*))?/g)) {
      out.push(w[1]!);
      if (w[1] === 'parameters' && w[2]) out.push(w[2]);
    }
  }
  return out;
}

/** The action definition, given the pack name and the script body (runner script). */
export function normalizeAction(a: ActionInput, pack: string, script?: { path: string; body: string }): ActionDef {
  const parameters: Record<string, ParamSpec> = {};
  for (const [n, p] of Object.entries(a.parameters)) {
    parameters[n] = {
      type: p.type,
      ...(p.description !== undefined && { description: p.description }),
      ...(p.required !== undefined && { required: p.required }),
      ...(p.default !== undefined && { default: p.default }),
      ...(p.enum !== undefined && { enum: p.enum }),
      ...(p.secret !== undefined && { secret: p.secret }),
    };
  }
  const def: ActionDef = {
    ref: `${pack}.${a.name}`, pack, name: a.name, description: a.description, runner: a.runner,
    parameters, timeoutMs: a.timeout, env: a.env,
  };
  if (a.runner === 'command') {
    def.command = typeof a.command === 'string' ? [a.command] : a.command;
    def.shell = a.shell;
  }
  if (a.runner === 'script') {
    def.script = script;
    def.args = a.args ?? [];
  }
  if (a.runner === 'http' && a.http) {
    def.http = {
      method: a.http.method, url: a.http.url, headers: a.http.headers, insecure: a.http.insecure,
      ...(a.http.body !== undefined && { body: a.http.body }),
      ...(a.http.success_status !== undefined && { successStatus: a.http.success_status }),
    };
  }
  if (a.stdin !== undefined) def.stdin = a.stdin;
  if (a.cwd !== undefined) def.cwd = a.cwd;
  if (a.run_as !== undefined) def.runAs = a.run_as;
  return def;
}

const selector = z.record(z.string().min(1).max(63), z.string().max(63)).refine((s) => Object.keys(s).length <= 32, 'at most 32 labels');
const onSchema = z.strictObject({ agent: z.string().min(1).max(64).optional(), selector: selector.optional() })
  .refine((o) => !(o.agent !== undefined && o.selector !== undefined), 'give agent or selector, not both');

/** The sensor file as written (its config is checked against the kind's schema separately). */
export const sensorInputSchema = z.strictObject({
  name,
  description: text(1024).default(''),
  type: z.enum(SENSOR_KIND_LIST),
  trigger: z.string().max(128).regex(/^[a-z0-9][a-z0-9_-]{0,62}\.[a-z0-9][a-z0-9_.-]{0,62}$/, 'must be a dotted name like core.cpu or mypack.disk_full').optional(),
  interval: duration(MIN_INTERVAL_MS, MAX_INTERVAL_MS).default(DEFAULT_INTERVAL_MS),
  config: z.record(z.string(), z.unknown()).default({}),
  on: onSchema.default({}),
});
export type SensorInput = z.output<typeof sensorInputSchema>;

/** The trigger of a pack sensor: its own `core.<type>`, or one in the pack's namespace. */
export function sensorTriggerProblem(s: SensorInput, pack: string): string | undefined {
  if (s.trigger === undefined || s.trigger === `core.${s.type}` || s.trigger.startsWith(`${pack}.`)) return undefined;
  return `must be core.${s.type} or start with "${pack}." (a pack sensor emits its own kind or its pack's triggers)`;
}

export function normalizeSensor(s: SensorInput, pack: string, config: Record<string, unknown>): SensorDef {
  const on = s.on.agent !== undefined ? { agent: s.on.agent } : s.on.selector !== undefined ? { selector: s.on.selector } : {};
  return {
    ref: `${pack}.${s.name}`, pack, name: s.name, description: s.description, kind: s.type,
    trigger: s.trigger ?? `core.${s.type}`, intervalMs: s.interval, config, on,
  };
}
