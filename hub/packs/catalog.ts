/**
 * The action catalog (`trellis actions list|show`): every action of a tenant's packs plus the
 * built-in ones, with what running each needs and how to run it. Pure functions over the packs
 * cache; the gRPC layer (hub/grpc/packs.ts) only encodes the result.
 */
import { TrellisError } from '../../common/errors.js';
import type { ActionDef, ParamSpec, Runner } from '../../common/automation/types.js';

/** One action as the catalog shows it. */
export interface CatalogAction {
  ref: string;
  pack: string;
  name: string;
  description: string;
  runner: Runner;
  timeoutMs: number;
  runAs: string;
  parameters: Record<string, ParamSpec>;
  builtin: boolean;
  /** '' for built-in actions. */
  tenant: string;
  /** What running it needs. */
  permission: string;
  /** The CLI line that runs it. */
  howToRun: string;
  /** The validated definition (pack actions only). */
  def?: ActionDef;
  /** The pack file that defines it ('' for built-in actions and packs installed before files were kept). */
  file: string;
}

/** The pack name of built-in actions. */
export const BUILTIN_PACK = 'core';

/**
 * Built-in actions: `core.command` is what `trellis run -- CMD` runs (ad-hoc commands are
 * recorded in the execution history as executions of it). Its parameters are the run's options.
 */
export const BUILTIN_ACTIONS: readonly CatalogAction[] = Object.freeze([
  {
    ref: 'core.command', pack: BUILTIN_PACK, name: 'command', builtin: true, tenant: '', file: '',
    description: 'run a command on agents, argv without a shell (trellis run -- CMD ARGS…); output streamed back, exit code kept',
    runner: 'command', timeoutMs: 30_000, runAs: '',
    parameters: {
      argv: { type: 'array', required: true, description: 'the command and its arguments (after --), at most 256, no shell' },
      env: { type: 'object', description: 'environment variables (--env K=V); values may hold {{ kv.NAME }} / {{ secret.NAME }}' },
      cwd: { type: 'string', description: 'working directory on the agent (--cwd)' },
      timeout: { type: 'string', default: '30s', description: 'the process group is killed after it (--timeout)' },
    },
    permission: 'agents:run',
    howToRun: 'trellis run (--agent ID | --selector k=v) [--env K=V] [--cwd DIR] [--timeout 30s] -- CMD ARGS…',
  },
]);

function catalogEntry(tenant: string, a: ActionDef, file: string): CatalogAction {
  const params = Object.entries(a.parameters).map(([n, p]) => (p.required && p.default === undefined ? `${n}=…` : `[${n}=…]`));
  return {
    ref: a.ref, pack: a.pack, name: a.name, description: a.description, runner: a.runner, timeoutMs: a.timeoutMs, runAs: a.runAs ?? '',
    parameters: a.parameters, builtin: false, tenant, permission: `actions:execute@action:${a.ref} (or on pack ${a.pack}, or the platform)`,
    howToRun: `trellis run ${a.ref}${params.length ? ` ${params.join(' ')}` : ''} (--agent ID | --selector k=v)`, def: a, file,
  };
}

/** What the catalog reads from hub/packs. */
export interface CatalogPacks {
  actions(tenant: string): ActionDef[];
  action(tenant: string, ref: string): ActionDef | undefined;
  tenants(): string[];
  sourceOf(tenant: string, ref: string): string;
}

/**
 * The actions of one tenant (or of every tenant when `tenant` is undefined), built-in ones first,
 * then by tenant and ref; `pack` keeps only that pack's (`core`: the built-in ones).
 */
export function listActions(packs: CatalogPacks, tenant: string | undefined, pack = ''): CatalogAction[] {
  const tenants = tenant === undefined ? packs.tenants() : [tenant];
  const out = [...BUILTIN_ACTIONS];
  for (const t of tenants) {
    const acts = packs.actions(t).sort((a, b) => (a.ref < b.ref ? -1 : a.ref > b.ref ? 1 : 0));
    for (const a of acts) out.push(catalogEntry(t, a, packs.sourceOf(t, a.ref)));
  }
  return pack ? out.filter((a) => a.pack === pack) : out;
}

/** One action by ref, or TRELLIS_E_NOT_FOUND naming where to look. */
export function getAction(packs: CatalogPacks, tenant: string, ref: string): CatalogAction {
  const b = BUILTIN_ACTIONS.find((a) => a.ref === ref);
  if (b) return b;
  const a = packs.action(tenant, ref);
  if (!a) {
    const shown = ref.slice(0, 130);
    const hint = ref.includes('.') ? `install its pack (trellis packs install DIR)` : `actions are named PACK.ACTION`;
    throw new TrellisError('TRELLIS_E_NOT_FOUND', `no action ${JSON.stringify(shown)} in tenant ${tenant}: ${hint}; see \`trellis actions list\``);
  }
  return catalogEntry(tenant, a, packs.sourceOf(tenant, a.ref));
}
