/**
 * From an action definition and parameters to exactly what the agent runs.
 *
 * Secrets: a value is secret when it comes from a `{{ secret.x }}` reference (or from a kv
 * reference the resolver marks secret) or from a parameter declared `secret: true`; a parameter
 * whose value holds a secret reference becomes secret too. Rendering tracks which templates read
 * a secret (secret parameters are getters that flag the read), so `{{ token | upper }}` is caught
 * as surely as `{{ token }}`. A template that reads a secret may only feed env, stdin or an HTTP
 * header; anywhere else (argv, script args, cwd, URL, body) is TRELLIS_E_SECRET_INVALID.
 *
 * Errors: a message never quotes a value that came from a reference or a value of a `secret`
 * parameter ("got a value from secret x that is not an integer"); and as a second line of
 * defence every error thrown here is masked with the secret values the run had opened so far.
 */
import { basename } from 'node:path';
import type { ActionDef, ParamSpec, Runner } from '../automation/types.js';
import { TrellisError } from '../errors.js';
import { findRefs, needsResolving, refKey, renderTemplate, resolveRefs, toText, type Ref } from './template.js';
import { shellTemplateProblem } from './shell.js';
import { maskError } from '../mask.js';

export interface RenderedAction {
  runner: Runner; argv: string[]; env: Record<string, string>; cwd: string; timeoutMs: number; runAs: string;
  /** runner script: the script's file name and body; argv holds the rendered args. */
  script?: { name: string; body: string };
  /** runner http; successStatus [] means any 2xx. Headers that carry a secret are in secretHeaders only. */
  http?: { method: string; url: string; headers: Record<string, string>; body: string; insecure: boolean; successStatus: number[] };
  /** Plain stdin. */
  stdin?: string;
  /** Env values that contain a secret (not repeated in env). */
  secretEnv: Record<string, string>;
  /** Stdin that contains a secret (then stdin is unset). */
  secretStdin?: string;
  /** HTTP headers that contain a secret. */
  secretHeaders: Record<string, string>;
  /** Every secret value used (for masking output). */
  secretValues: string[];
  /** Validated params with defaults applied; references NOT resolved. */
  parameters: Record<string, unknown>;
}

export interface RenderOptions {
  /** Opens a kv/secret reference; undefined means it does not exist (TRELLIS_E_NOT_FOUND). */
  resolve?: (ref: Ref) => { value: string; secret: boolean } | undefined;
  /** The params are validateParams' output already (defaults applied, values coerced): not validated again. */
  validated?: boolean;
}

export const ARGV_MAX = 256;
export const ARG_MAX_BYTES = 32 * 1024;
export const ENV_MAX = 128;
export const STDIN_MAX_BYTES = 1024 * 1024;
const PARAM_MAX_BYTES = 64 * 1024;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$/;
const HTTP_URL_START = /^https?:\/\//i;
const SECRET_MSG = 'secrets reach a process by env, stdin or a header, never argv';

const invalid = (msg: string) => new TrellisError('TRELLIS_E_INVALID_ARGUMENT', msg);
const isObj = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
const show = (v: unknown) => { const s = typeof v === 'string' ? JSON.stringify(v) : toText(v); return s.length > 60 ? `${s.slice(0, 57)}...` : s; };

function parseJson(s: string): unknown {
  try { return JSON.parse(s); } catch { return undefined; }
}

/**
 * Checks one value against its spec, converting text from a CLI ("5", "true", JSON). `origin`
 * ("a value from secret x", "a secret value") is set when the value must not be shown: the
 * message names where it came from instead of quoting it.
 */
function coerce(name: string, spec: ParamSpec, v: unknown, origin?: string): unknown {
  const fail = (what: string) => invalid(origin
    ? `parameter "${name}": got ${origin} that is not ${what}`
    : `parameter "${name}": expected ${what}, got ${show(v)}`);
  let out: unknown;
  switch (spec.type) {
    case 'string':
      if (typeof v === 'string') out = v;
      else if (typeof v === 'number' || typeof v === 'boolean') out = String(v);
      else throw fail('text');
      break;
    case 'integer': {
      const n = typeof v === 'string' && /^\s*-?\d+\s*$/.test(v) ? Number(v) : v;
      if (typeof n !== 'number' || !Number.isSafeInteger(n)) throw fail('an integer');
      out = n;
      break;
    }
    case 'number': {
      const n = typeof v === 'string' && v.trim() !== '' ? Number(v) : v;
      if (typeof n !== 'number' || !Number.isFinite(n)) throw fail('a number');
      out = n;
      break;
    }
    case 'boolean': {
      const s = typeof v === 'string' ? v.trim().toLowerCase() : undefined;
      out = s === 'true' ? true : s === 'false' ? false : v;
      if (typeof out !== 'boolean') throw fail('true or false');
      break;
    }
    case 'object':
      out = typeof v === 'string' ? parseJson(v) : v;
      if (!isObj(out)) throw fail('an object (JSON)');
      break;
    case 'array':
      out = typeof v === 'string' ? parseJson(v) : v;
      if (!Array.isArray(out)) throw fail('a list (JSON)');
      break;
    default:
      throw invalid(`parameter "${name}": unknown type "${String((spec as { type: unknown }).type)}"`);
  }
  if (spec.enum && !spec.enum.some((e) => JSON.stringify(e) === JSON.stringify(out))) {
    throw invalid(origin
      ? `parameter "${name}": got ${origin} that is not one of ${spec.enum.map(show).join(', ')}`
      : `parameter "${name}": ${show(out)} is not one of ${spec.enum.map(show).join(', ')}`);
  }
  return out;
}

/** Where a parameter value comes from, when it must not be quoted in a message (undefined: it may be). */
function originOf(raw: unknown, spec: ParamSpec): string | undefined {
  const refs = findRefs(raw);
  if (refs.length > 0) return `a value from ${refs.map((r) => `${r.kind === 'secret' ? 'secret' : 'kv key'} ${r.key}`).join(' and ')}`;
  return spec.secret ? 'a secret value' : undefined;
}

/**
 * Validates params against the action's declarations and applies defaults. A value holding a
 * kv/secret reference or a literal (`{{ "{{" }}`, escaped event data) is kept as written: its
 * type is checked once resolved, in renderAction.
 */
export function validateParams(action: ActionDef, params: Record<string, unknown>): Record<string, unknown> {
  if (!isObj(params)) throw invalid(`parameters of ${action.ref} must be an object`);
  const specs = action.parameters ?? {};
  for (const name of Object.keys(params)) {
    if (!Object.hasOwn(specs, name)) {
      const known = Object.keys(specs);
      throw invalid(`unknown parameter "${name.slice(0, 64)}" for action ${action.ref}${known.length ? ` (it takes: ${known.join(', ')})` : ' (it takes none)'}`);
    }
  }
  const out: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(specs)) {
    let v = params[name];
    if (v === undefined || v === null) {
      if (spec.default !== undefined) v = structuredClone(spec.default);
      else if (spec.required) throw invalid(`parameter "${name}" is required by action ${action.ref}`);
      else continue;
    }
    const size = jsonSurelyWithin(v, PARAM_MAX_BYTES) ? 0 : Buffer.byteLength(JSON.stringify(v) ?? '', 'utf8');
    if (size > PARAM_MAX_BYTES) throw new TrellisError('TRELLIS_E_TOO_LARGE', `parameter "${name}" is ${size} bytes; the limit is ${PARAM_MAX_BYTES}`);
    out[name] = needsResolving(v) ? v : coerce(name, spec, v, originOf(v, spec));
  }
  return out;
}

/**
 * True when `v` as JSON is surely at most `max` bytes (and characters), known without serializing
 * it: a string (its JSON is at most 6 bytes per UTF-16 unit, a `\uXXXX` escape, plus the quotes),
 * a number, boolean or null, or an object of at most 64 such values. False means "not known":
 * the caller serializes to measure. Parameters are mostly short strings: measuring them was
 * a JSON.stringify per value and one more per request on the path of every rule firing.
 */
export function jsonSurelyWithin(v: unknown, max: number): boolean {
  const scalar = (x: unknown): number => (typeof x === 'string' ? x.length * 6 + 2 : typeof x === 'number' || typeof x === 'boolean' || x === null ? 24 : Infinity);
  if (v === null || typeof v !== 'object') return scalar(v) <= max;
  if (Array.isArray(v)) return false;
  let bound = 2, n = 0;
  for (const k in v) {
    if (!Object.hasOwn(v, k)) continue;
    if (++n > 64) return false;
    bound += k.length * 6 + 4 + scalar((v as Record<string, unknown>)[k]);
    if (bound > max) return false;
  }
  return true;
}

export const REDACTED = '[REDACTED]';

/**
 * Parameters as history keeps them (the hub's execution history, an edge run's report): a
 * value of a `secret` parameter that is not exactly one reference is replaced by [REDACTED].
 */
export function historyParameters(action: ActionDef | undefined, params: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(params)) {
    const literalSecret = action?.parameters?.[k]?.secret && !(typeof v === 'string' && /^\s*\{\{\s*(secret|kv)\.[^}]+\}\}\s*$/.test(v));
    out[k] = literalSecret ? REDACTED : v;
  }
  return out;
}

/**
 * Every reference the run needs: in the parameters (after defaults) and in the action's templates.
 * `validated`: params already through validateParams (renderAction's `validated` option takes
 * the same), so a request validates its parameters once.
 */
export function actionRefs(action: ActionDef, params: Record<string, unknown>, validated = false): Ref[] {
  const own = findRefs(validated ? params : validateParams(action, params));
  const fixed = templateRefs(action);
  if (fixed.length === 0) return own;
  const seen = new Set(own.map(refKey));
  for (const r of fixed) if (!seen.has(refKey(r))) { seen.add(refKey(r)); own.push(r); }
  return own;
}

/** The references in an action's own templates: an action definition does not change, so once per action. */
const actionTemplateRefs = new WeakMap<ActionDef, Ref[]>();
function templateRefs(action: ActionDef): Ref[] {
  let refs = actionTemplateRefs.get(action);
  if (!refs) actionTemplateRefs.set(action, (refs = findRefs([action.command, action.args, action.env, action.stdin, action.cwd, action.http])));
  return refs;
}

function checkArg(s: string, where: string): string {
  if (s.includes('\0')) throw invalid(`${where}: contains a NUL byte`);
  const n = Buffer.byteLength(s, 'utf8');
  if (n > ARG_MAX_BYTES) throw new TrellisError('TRELLIS_E_TOO_LARGE', `${where} is ${n} bytes; the limit is ${ARG_MAX_BYTES}`);
  return s;
}

export function renderAction(action: ActionDef, params: Record<string, unknown>, opts: RenderOptions = {}): RenderedAction {
  const secretValues = new Set<string>();
  // Literal values of secret parameters are masked too (before validation: its messages are masked).
  for (const [k, v] of Object.entries(isObj(params) ? params : {})) {
    if (!action.parameters?.[k]?.secret || v === undefined || v === null || toText(v) === '') continue;
    let templated: boolean;
    try { templated = needsResolving(v); } catch { templated = false; } // malformed: validation says so, masked
    if (!templated) secretValues.add(toText(v));
  }
  try {
    return render(action, params, opts, secretValues);
  } catch (err) {
    throw maskError(err, secretValues);
  }
}

function render(action: ActionDef, params: Record<string, unknown>, opts: RenderOptions, secretValues: Set<string>): RenderedAction {
  const parameters = opts.validated ? params : validateParams(action, params);
  let touched = false;
  let readRef = false;
  let where = '';
  const resolver = (ref: Ref): string => {
    readRef = true;
    const r = opts.resolve?.(ref);
    if (!r) throw new TrellisError('TRELLIS_E_NOT_FOUND', `${where}: ${ref.kind === 'secret' ? 'secret' : 'kv key'} "${ref.key}" not found`);
    if (r.secret) { touched = true; if (r.value) secretValues.add(r.value); }
    return r.value;
  };

  // Open the references held in parameter values; a parameter that read a secret is secret.
  const specs = action.parameters ?? {};
  const ctxParams: Record<string, unknown> = Object.create(null);
  const ctx: Record<string, unknown> = Object.create(null);
  for (const [name, raw] of Object.entries(parameters)) {
    touched = false;
    where = `parameter "${name}"`;
    const spec = specs[name]!;
    const value = needsResolving(raw) ? coerce(name, spec, resolveRefs(raw, resolver), originOf(raw, spec)) : raw;
    const secret = touched || spec.secret === true;
    if (spec.secret && value !== undefined && toText(value) !== '') secretValues.add(toText(value));
    if (secret) {
      const desc: PropertyDescriptor = { enumerable: true, get: () => { touched = true; return value; } };
      Object.defineProperty(ctxParams, name, desc);
      if (name !== 'parameters') Object.defineProperty(ctx, name, desc); // reachable as parameters.parameters
    } else {
      // Plain data properties (the objects have no prototype: no setter can be reached).
      ctxParams[name] = value;
      if (name !== 'parameters') ctx[name] = value;
    }
  }
  Object.defineProperty(ctx, 'parameters', { enumerable: true, value: ctxParams });

  /** Renders one template; says whether it read a secret. */
  const render = (tpl: unknown, at: string): { value: unknown; secret: boolean } => {
    touched = false;
    where = at;
    const value = renderTemplate(tpl, ctx, resolver);
    return { value, secret: touched };
  };
  const noSecret = (tpl: unknown, at: string): unknown => {
    const r = render(tpl, at);
    if (r.secret) throw new TrellisError('TRELLIS_E_SECRET_INVALID', `${at} reads a secret: ${SECRET_MSG}`);
    return r.value;
  };
  /** Argument templates; one that is exactly `{{ list }}` expands to one argument per item. */
  const renderArgs = (tpls: string[], what: string): string[] => {
    const argv: string[] = [];
    tpls.forEach((tpl, i) => {
      const at = `${what}[${i}]`;
      const v = noSecret(tpl, at);
      for (const a of Array.isArray(v) ? v : [v]) argv.push(checkArg(toText(a), at));
      if (argv.length > ARGV_MAX) throw new TrellisError('TRELLIS_E_TOO_LARGE', `${what} has over ${ARGV_MAX} arguments`);
    });
    return argv;
  };

  const out: RenderedAction = {
    runner: action.runner, argv: [], env: {}, cwd: '', timeoutMs: action.timeoutMs, runAs: action.runAs ?? '',
    secretEnv: {}, secretHeaders: {}, secretValues: [], parameters,
  };
  switch (action.runner) {
    case 'command': {
      const cmd = action.command ?? [];
      if (action.shell) {
        if (cmd.length !== 1) throw invalid(`action ${action.ref}: a shell command is one string`);
        const text = toText(noSecret(cmd[0], 'command'));
        const unsafe = shellTemplateProblem(cmd[0]!);
        if (unsafe) throw invalid(`action ${action.ref}: command: ${unsafe}`);
        out.argv = ['/bin/sh', '-c', checkArg(text, 'command')];
      } else {
        out.argv = renderArgs(cmd, 'command');
        if (out.argv.length === 0 || out.argv[0] === '') throw invalid(`action ${action.ref}: the command renders to no program`);
      }
      break;
    }
    case 'script': {
      if (!action.script) throw invalid(`action ${action.ref}: runner script needs a script`);
      out.script = { name: basename(action.script.path), body: action.script.body };
      out.argv = renderArgs(action.args ?? [], 'args');
      break;
    }
    case 'http': {
      const h = action.http;
      if (!h) throw invalid(`action ${action.ref}: runner http needs http`);
      const method = String(h.method ?? 'GET').toUpperCase();
      if (!/^[A-Z]{1,16}$/.test(method)) throw invalid(`action ${action.ref}: bad http method "${method.slice(0, 20)}"`);
      const url = checkArg(toText(noSecret(h.url, 'http.url')), 'http.url');
      // The usual URL (it starts with the scheme) is only checked, not built; anything else is parsed to say what is wrong.
      if (!(HTTP_URL_START.test(url) && URL.canParse(url))) {
        let parsed: URL;
        try { parsed = new URL(url); } catch { throw invalid(readRef ? 'http.url does not render to a URL (the message does not quote it: the run read datastore values)' : `http.url: "${url.slice(0, 120)}" is not a URL`); }
        if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw invalid(`http.url: use http or https, not ${parsed.protocol}`);
      }
      const headers: Record<string, string> = {};
      for (const [k, tpl] of Object.entries(h.headers ?? {})) {
        if (!HEADER_NAME.test(k)) throw invalid(`http.headers: bad header name "${k.slice(0, 60)}"`);
        const r = render(tpl, `http.headers.${k}`);
        const v = checkArg(toText(r.value), `http.headers.${k}`);
        if (/[\r\n]/.test(v)) throw invalid(`http.headers.${k}: a header value cannot hold a line break`);
        (r.secret ? out.secretHeaders : headers)[k] = v;
      }
      const body = h.body === undefined ? '' : toText(noSecret(h.body, 'http.body'));
      if (Buffer.byteLength(body, 'utf8') > STDIN_MAX_BYTES) throw new TrellisError('TRELLIS_E_TOO_LARGE', `http.body is over ${STDIN_MAX_BYTES} bytes`);
      out.http = { method, url, headers, body, insecure: h.insecure === true, successStatus: [...(h.successStatus ?? [])] };
      break;
    }
    default:
      throw invalid(`action ${action.ref}: unknown runner "${String(action.runner)}"`);
  }

  const envEntries = Object.entries(action.env ?? {});
  if (envEntries.length > ENV_MAX) throw invalid(`action ${action.ref}: at most ${ENV_MAX} env variables`);
  for (const [k, tpl] of envEntries) {
    if (!ENV_NAME.test(k) || k.length > 256) throw invalid(`env: bad variable name "${k.slice(0, 60)}": letters, digits and _, not starting with a digit`);
    const r = render(tpl, `env.${k}`);
    (r.secret ? out.secretEnv : out.env)[k] = checkArg(toText(r.value), `env.${k}`);
  }
  if (action.cwd !== undefined && action.cwd !== '') out.cwd = checkArg(toText(noSecret(action.cwd, 'cwd')), 'cwd');
  if (action.stdin !== undefined) {
    const r = render(action.stdin, 'stdin');
    const s = toText(r.value);
    if (Buffer.byteLength(s, 'utf8') > STDIN_MAX_BYTES) throw new TrellisError('TRELLIS_E_TOO_LARGE', `stdin is over ${STDIN_MAX_BYTES} bytes`);
    if (r.secret) out.secretStdin = s; else out.stdin = s;
  }
  out.secretValues = [...secretValues];
  return out;
}
