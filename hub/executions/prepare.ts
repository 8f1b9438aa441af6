/**
 * From a request to what goes down the agent's stream: datastore references resolved in the
 * tenant (as the requester sees it), the action rendered (common/rules/render.ts), then, per
 * agent and execution, every secret sealed to that agent's certificate. Secret values live in
 * memory only, between the request and the dispatch; they are never logged or stored.
 */
import { sealFor, sealAad } from '../../certs/index.js';
import { maskError } from '../../common/mask.js';
import { TrellisError } from '../../common/errors.js';
import { renderAction, actionRefs, historyParameters, jsonSurelyWithin, validateParams, REDACTED, type RenderedAction } from '../../common/rules/render.js';
import { requestFromRendered } from '../../common/automation/request.js';
import { refKey, type Ref } from '../../common/rules/template.js';
import type { ActionDef } from '../../common/automation/types.js';
import type { KvStore } from '../kv/index.js';
import type { CommandRequest, KvRequester } from './types.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

export const COMMAND_ACTION = 'core.command';
export const MAX_ARGV = 256;
export const MAX_ARG_BYTES = 32 * 1024;
export const MAX_TIMEOUT_MS = 24 * 3_600_000;
export const MAX_PARAMETERS_BYTES = 256 * 1024;
export { REDACTED };

type Resolved = Map<string, { value: string; secret: boolean }>;

/** Reads every reference once, as `caller` (NOT_FOUND, or INVALID_ARGUMENT for a plain value used as a secret). */
async function resolveRefs(kv: KvStore, tenant: string, caller: KvRequester, refs: Ref[]): Promise<Resolved> {
  const out: Resolved = new Map();
  for (const r of refs) {
    const k = refKey(r);
    if (out.has(k)) continue;
    const doc = await kv.getDoc(tenant, caller, r.key);
    if (r.kind === 'secret' && !doc.secret) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${r.key} is not a secret: refer to it as {{ kv.${r.key} }}`);
    if (doc.secret) caller.onSecret?.(r.key);
    out.set(k, { value: await kv.open(doc), secret: doc.secret });
  }
  return out;
}

/** Renders a pack action with its references resolved. */
export async function prepareAction(kv: KvStore, o: { tenant: string; caller: KvRequester; action: ActionDef; parameters: Record<string, unknown> }): Promise<RenderedAction> {
  let resolved: Resolved = new Map();
  try {
    // Validated once: the references and the rendering both read the result.
    const parameters = validateParams(o.action, o.parameters);
    const refs = actionRefs(o.action, parameters, true);
    resolved = refs.length ? await resolveRefs(kv, o.tenant, o.caller, refs) : resolved;
    return renderAction(o.action, parameters, { resolve: (r) => resolved.get(refKey(r)), validated: true });
  } catch (err) {
    // renderAction already masks what it opened; this is the run's masker once more, over every secret it resolved.
    throw maskError(scrubSecretParameters(err, o.action, o.parameters), [...resolved.values()].filter((r) => r.secret).map((r) => r.value));
  }
}

/**
 * A validation message may quote a value ("expected an integer, got ..."): the literal value of
 * a `secret` parameter must not travel back to the caller or into the request log.
 */
function scrubSecretParameters(err: unknown, action: ActionDef, params: Record<string, unknown>): unknown {
  if (!(err instanceof TrellisError)) return err;
  const secrets = Object.entries(params)
    .filter(([k, v]) => action.parameters[k]?.secret && v !== undefined && v !== null && String(v).length >= 3)
    .map(([, v]) => (typeof v === 'string' ? v : JSON.stringify(v)));
  // Whole, quoted, and cut short the way messages shorten long values.
  const forms = secrets.flatMap((s) => [JSON.stringify(s), s, JSON.stringify(s).slice(0, 57), s.slice(0, 56)]).filter((f) => f.length >= 3);
  if (!forms.some((f) => err.message.includes(f))) return err;
  let msg = err.message;
  for (const f of forms) msg = msg.split(f).join(REDACTED);
  return new TrellisError(err.code, msg);
}

const REF_RE = /\{\{\s*(secret|kv)\.([A-Za-z0-9._/:-]{1,256})\s*\}\}/g;
const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;

export function checkCommand(req: Pick<CommandRequest, 'argv' | 'env' | 'cwd' | 'timeoutMs'>): void {
  if (!Array.isArray(req.argv) || req.argv.length === 0) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'no command given: trellis run --agent ID -- CMD ARGS...');
  if (req.argv.length > MAX_ARGV) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `at most ${MAX_ARGV} arguments`);
  for (const a of req.argv) if (typeof a !== 'string' || Buffer.byteLength(a) > MAX_ARG_BYTES) throw new TrellisError('TRELLIS_E_TOO_LARGE', `an argument is over ${MAX_ARG_BYTES} bytes`);
  if (req.argv[0] === '') throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'the command name is empty');
  if (!(req.timeoutMs > 0 && req.timeoutMs <= MAX_TIMEOUT_MS)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'timeout must be between 1ms and 24h');
  if (typeof req.cwd !== 'string' || req.cwd.length > 4096) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'cwd must be a path of at most 4096 characters');
  const names = Object.keys(req.env ?? {});
  if (names.length > 128) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'at most 128 environment variables');
  for (const k of names) {
    if (!ENV_NAME_RE.test(k)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `bad environment variable name "${k.slice(0, 40)}"`);
    if (typeof req.env[k] !== 'string' || Buffer.byteLength(req.env[k]!) > MAX_ARG_BYTES) throw new TrellisError('TRELLIS_E_TOO_LARGE', `environment variable ${k} is over ${MAX_ARG_BYTES} bytes`);
  }
  if (req.argv.some((a) => new RegExp(REF_RE.source).test(a))) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'datastore references go in --env only: secrets never travel in argv, where other users of the host can read them');
  }
}

/**
 * An ad-hoc command as a rendered action: argv literal (no templates), environment values with
 * references resolved; a value that used a secret goes to `secretEnv` (sealed per agent).
 */
export async function prepareCommand(kv: KvStore, o: { tenant: string; caller: KvRequester; argv: string[]; env: Record<string, string>; cwd: string; timeoutMs: number }): Promise<RenderedAction> {
  checkCommand(o);
  const env: Record<string, string> = {};
  const secretEnv: Record<string, string> = {};
  const secretValues: string[] = [];
  for (const [name, value] of Object.entries(o.env)) {
    const refs = [...value.matchAll(new RegExp(REF_RE.source, 'g'))];
    if (refs.length === 0) { env[name] = value; continue; }
    const resolved = await resolveRefs(kv, o.tenant, o.caller, refs.map((m) => ({ kind: m[1] as Ref['kind'], key: m[2]! })));
    let secret = false;
    for (const r of resolved.values()) if (r.secret) { secret = true; secretValues.push(r.value); }
    // One pass: a substituted value is never scanned again (a kv value holding `{{ secret.y }}` stays text).
    const out = value.replace(new RegExp(REF_RE.source, 'g'), (_m, kind: string, key: string) => resolved.get(refKey({ kind: kind as Ref['kind'], key }))!.value);
    (secret ? secretEnv : env)[name] = out;
  }
  return {
    runner: 'command', argv: [...o.argv], env, cwd: o.cwd, timeoutMs: o.timeoutMs, runAs: '',
    secretEnv, secretHeaders: {}, secretValues, parameters: commandParameters(o),
  };
}

/** What history keeps of an ad-hoc command (environment values as given: references, not values). */
export function commandParameters(o: { argv: string[]; env: Record<string, string>; cwd: string; timeoutMs: number }): Record<string, unknown> {
  return { argv: [...o.argv], env: { ...o.env }, cwd: o.cwd, timeoutMs: o.timeoutMs };
}

/** Parameters as history keeps them: a literal value of a `secret` parameter is replaced by [REDACTED]. */
export function storedParameters(action: ActionDef | undefined, params: Record<string, unknown>): Record<string, unknown> {
  return historyParameters(action, params);
}

/** The ActionRequest for one agent, every secret sealed to its certificate for this execution. */
export function actionRequest(o: { executionId: string; action: string; agentId: string; certPem: string; rendered: RenderedAction }): T.ActionRequest {
  let aad: string | undefined; // bound once, at the first value sealed (most requests seal none)
  return requestFromRendered({
    executionId: o.executionId, action: o.action, rendered: o.rendered,
    seal: (v) => sealFor(o.certPem, Buffer.from(v, 'utf8'), (aad ??= sealAad(o.agentId, 'exec', o.executionId))),
  });
}

/** Back from what history keeps of an ad-hoc command to a request (for re-runs). */
export function commandFromParameters(p: Record<string, unknown>): { argv: string[]; env: Record<string, string>; cwd: string; timeoutMs: number } {
  const env = p.env && typeof p.env === 'object' && !Array.isArray(p.env) ? Object.fromEntries(Object.entries(p.env).map(([k, v]) => [k, String(v)])) : {};
  return {
    argv: Array.isArray(p.argv) ? p.argv.map(String) : [], env,
    cwd: typeof p.cwd === 'string' ? p.cwd : '', timeoutMs: Number(p.timeoutMs) || 30_000,
  };
}

const MAX_AGENTS_PER_REQUEST = 10_000;

export function checkAgents(ids: unknown): string[] {
  if (!Array.isArray(ids) || ids.length === 0) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'no target agent: name --agent ID or a --selector that matches');
  if (ids.length > MAX_AGENTS_PER_REQUEST) throw new TrellisError('TRELLIS_E_TOO_LARGE', `at most ${MAX_AGENTS_PER_REQUEST} agents per request`);
  for (const a of ids) if (typeof a !== 'string' || a.length === 0 || a.length > 64) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'agent ids are 1-64 characters');
  return [...new Set(ids as string[])];
}

export function checkParameters(p: unknown): void {
  if (!p || typeof p !== 'object' || Array.isArray(p)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'parameters must be an object');
  if (!jsonSurelyWithin(p, MAX_PARAMETERS_BYTES) && JSON.stringify(p).length > MAX_PARAMETERS_BYTES) throw new TrellisError('TRELLIS_E_TOO_LARGE', `parameters are over ${MAX_PARAMETERS_BYTES} bytes`);
}
