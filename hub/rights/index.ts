/**
 * What a request, a rule or a pack needs from the person behind it. One place reads datastore
 * references (through `findRefs`, the template parser that also renders them) and turns them into
 * permissions, for every decision: `trellis run --env`, RunAction, RerunExecution, rule create,
 * replace and enable, pack install, and a rule's author at fire time.
 *
 * - Any `{{ kv.x }}` / `{{ secret.x }}` needs `kv:read`.
 * - Using a secret — `{{ secret.x }}`, or `{{ kv.x }}` whose key holds a secret — in text the
 *   caller chooses needs `secrets:use` (or `kv:decrypt`, which implies it): whoever chooses the
 *   command or the parameters can make the process print the value, so using a secret is
 *   reading it.
 * - References written by an action's or a rule's author were checked against that author
 *   (pack install, rule create); someone who merely runs the action does not need them.
 */
import { TrellisError } from '../../common/errors.js';
import { findRefs, type Ref } from '../../common/rules/index.js';
import type { ActionDef, PackDef, RuleDef } from '../../common/automation/types.js';
import type { CompiledGrants, Principal } from '../authz/index.js';

const denied = (msg: string) => new TrellisError('TRELLIS_E_PERMISSION_DENIED', msg);
const MAX_DEPTH = 40;

/** True when these grants may put a secret in clear into a process: `secrets:use` or `kv:decrypt`. */
export function mayUseSecrets(g: CompiledGrants): boolean {
  return g.allows('secrets:use') || g.allows('kv:decrypt');
}

/**
 * Every reference in `value` (strings, lists and objects at any depth), each once. A string
 * that is not a well-formed template holds no reference the renderer would resolve; it is
 * still refused (with the parser's message) when it names `kv.` or `secret.`, so that no
 * other reader of references can find one this function missed.
 */
export function refsIn(value: unknown): Ref[] {
  const out: Ref[] = [];
  const seen = new Set<string>();
  const visit = (v: unknown, depth: number): void => {
    if (depth > MAX_DEPTH) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `a value nests over ${MAX_DEPTH} levels`);
    if (typeof v === 'string') {
      if (!v.includes('{{')) return;
      let refs: Ref[];
      try {
        refs = findRefs(v);
      } catch (err) {
        if (/(kv|secret)\s*\./.test(v)) throw err;
        return;
      }
      for (const r of refs) {
        const id = `${r.kind}.${r.key}`;
        if (!seen.has(id)) { seen.add(id); out.push(r); }
      }
    } else if (v !== null && typeof v === 'object') {
      for (const x of Array.isArray(v) ? v : Object.values(v)) visit(x, depth + 1);
    }
  };
  visit(value, 0);
  return out;
}

/** The references an action's own text holds (written by whoever installed its pack). */
export function actionTextRefs(a: ActionDef): Ref[] {
  const defaults = Object.values(a.parameters ?? {}).map((p) => p.default);
  return refsIn([a.command, a.args, a.env, a.stdin, a.cwd, a.http, defaults]);
}

/** Is a datastore key a secret? undefined when the caller cannot see it (NOT_FOUND later). */
export type SecretLookup = (key: string) => Promise<boolean | undefined>;

/**
 * Checks that `p` may use `refs` (see the file comment) and returns the names of the secrets
 * among them. `isSecret` looks a `{{ kv.x }}` key up in the caller's view of the datastore.
 * The check at resolution time (`secretGuard`) closes the gap of a key that becomes a secret
 * between this check and the run.
 */
export async function authorizeRefs(p: Principal, refs: readonly Ref[], isSecret: SecretLookup, what = 'this request'): Promise<string[]> {
  if (refs.length === 0) return [];
  if (!p.grants.allows('kv:read')) {
    throw denied(`${p.username} lacks the permission kv:read: ${what} uses the datastore (${describe(refs)})`);
  }
  const secrets: string[] = [];
  for (const r of refs) {
    if (r.kind === 'secret' || (await isSecret(r.key)) === true) secrets.push(r.key);
  }
  if (secrets.length > 0 && !mayUseSecrets(p.grants)) {
    throw denied(`${p.username} lacks the permission secrets:use (or kv:decrypt): ${what} uses the secret ${secrets.join(', ')}, and using a secret in a command or parameters you choose is reading it`);
  }
  return [...new Set(secrets)];
}

const describe = (refs: readonly Ref[]) => refs.slice(0, 5).map((r) => `${r.kind}.${r.key}`).join(', ') + (refs.length > 5 ? ', …' : '');

/**
 * The hook resolution calls for every secret it opens (KvRequester.onSecret): records the key
 * for the audit record and refuses a secret the caller named in their own text when they may
 * not use secrets (a `{{ kv.x }}` whose key became a secret after the check).
 */
export function secretGuard(o: { who: string; mayUse: boolean; callerKeys: ReadonlySet<string>; used: Set<string> }): (key: string) => void {
  return (key) => {
    if (!o.mayUse && o.callerKeys.has(key)) {
      throw denied(`${o.who} lacks the permission secrets:use (or kv:decrypt): ${key} is a secret`);
    }
    o.used.add(key);
  };
}

/** `actions:execute` scope of an action ref ("pack.action"). */
export function actionScope(ref: string): { pack: string; action: string } {
  const dot = ref.indexOf('.');
  return { pack: ref.slice(0, dot), action: ref.slice(dot + 1) };
}

/**
 * Why the author of a rule may not (or no longer) act through it, or undefined when they may.
 * Pure: the author's current principal (undefined: deactivated or deleted) against what the
 * rule needs: membership of its tenant, `actions:execute` on its action, `kv:read` for
 * references in its parameters, `secrets:use` for secret references there.
 */
export function ruleBlockReason(author: string, p: Pick<Principal, 'tenants' | 'grants'> | undefined, tenant: string, def: RuleDef): string | undefined {
  if (!p) return `its author ${author} is deactivated or deleted`;
  if (!p.grants.isAdmin && !p.tenants.includes(tenant)) return `its author ${author} is no longer a member of tenant ${tenant}`;
  if (!p.grants.allows('actions:execute', actionScope(def.action.ref))) return `its author ${author} lacks actions:execute on ${def.action.ref}`;
  let refs: Ref[];
  try { refs = refsIn(def.action.parameters); } catch { return 'its parameters hold a malformed template'; }
  if (refs.length > 0 && !p.grants.allows('kv:read')) return `its author ${author} lacks kv:read for ${describe(refs)}`;
  const secrets = refs.filter((r) => r.kind === 'secret');
  if (secrets.length > 0 && !mayUseSecrets(p.grants)) return `its author ${author} lacks secrets:use (or kv:decrypt) for ${describe(secrets)}`;
  return undefined;
}

/**
 * Installing a pack is acting through everything in it, at once and later: its rules run its
 * actions as the installer, its sensors run on every agent of the tenant, and its actions'
 * own references are used by whoever runs them. The installer needs `actions:execute` on the
 * pack (and on any other pack's action a rule of it calls), `agents:run` when it has a
 * `command` sensor (an arbitrary command on every agent), and kv:read / secrets:use for what
 * its actions and rules reference. Returns the secrets the pack uses.
 */
export async function authorizePackInstall(p: Principal, tenant: string, def: Pick<PackDef, 'name' | 'actions' | 'sensors' | 'rules'>, isSecret: SecretLookup): Promise<string[]> {
  if (!p.grants.allows('actions:execute', { pack: def.name })) {
    throw denied(`${p.username} lacks the permission actions:execute on pack ${def.name}: installing a pack acts through its actions (its rules run them as the installer)`);
  }
  if (def.sensors.some((s) => s.kind === 'command') && !p.grants.allows('agents:run')) {
    throw denied(`${p.username} lacks the permission agents:run: pack ${def.name} has a command sensor, which runs a command on every agent of the tenant`);
  }
  for (const r of def.rules) {
    const why = ruleBlockReason(p.username, p, tenant, r);
    if (why) throw denied(`rule ${r.ref} of pack ${def.name}: ${why.replace(/^its author /, '')}`);
  }
  const seen = new Set<string>();
  const refs = [...def.actions.flatMap(actionTextRefs), ...refsIn(def.rules.map((r) => r.action.parameters))]
    .filter((r) => { const k = `${r.kind}.${r.key}`; if (seen.has(k)) return false; seen.add(k); return true; });
  return authorizeRefs(p, refs, isSecret, `pack ${def.name}`);
}
