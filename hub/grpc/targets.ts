/**
 * Run targets as operators name them, for AdminRuns.Run and AdminExecutions.RunAction: one agent
 * (id, unique id prefix or exact hostname) or a selector expression (common/selector.ts). The
 * agents a selector matches are split into online (they run it) and offline (skipped, and said
 * so to the caller before anything runs).
 */
import { TrellisError } from '../../common/errors.js';
import { formatSelector, requestSelector } from '../../common/selector.js';
import { checkString } from '../validate.js';
import type { AgentDoc, AgentView } from '../agents/index.js';
import type { HubComponents } from '../components.js';
import type { CallContext } from './wrap.js';
import { readTenant } from './admin.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

export interface TargetRequest { agentId: string; selector: Record<string, string>; selectorExpr: string }

export interface Targets {
  /** `agent:ID` or `selector:TEXT`, for the audit record. */
  describe: string;
  /** The canonical selector text ('' for one agent). */
  selector: string;
  online: AgentView[];
  offline: AgentView[];
  /** The one agent named (with --agent), online or not. */
  agent?: AgentDoc;
}

/** An agent of the call's tenant named by id, id prefix or hostname; another tenant's agent does not exist for the caller. */
export async function resolveAgent(c: HubComponents, ctx: CallContext, ref: string): Promise<AgentDoc> {
  return c.agents.resolve(checkString(ref, 'agent id', 256), readTenant(ctx));
}

/** The target of a run, in `tenant` (undefined: every tenant, for an administrator asking for `*`). */
export async function resolveTargets(c: HubComponents, ctx: CallContext, req: TargetRequest, tenant: string | undefined): Promise<Targets> {
  const expr = checkString(req.selectorExpr ?? '', 'selector', 4096);
  const hasSelector = !!expr.trim() || Object.keys(req.selector ?? {}).length > 0;
  if (req.agentId && hasSelector) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'name one target: --agent ID or --selector EXPR, not both');
  if (req.agentId) {
    const a = await resolveAgent(c, ctx, req.agentId);
    if (a.revoked) throw new TrellisError('TRELLIS_E_CERT_REVOKED', `agent ${a.id} (${a.hostname || '-'}) is revoked`);
    const v = c.agents.view(a);
    return { describe: `agent:${a.id}`, selector: '', online: v.online ? [v] : [], offline: v.online ? [] : [v], agent: a };
  }
  if (!hasSelector) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'name a target: --agent ID or --selector EXPR');
  const sel = requestSelector(req.selector, expr.trim());
  const text = formatSelector(sel);
  const matched = (await c.agents.list({ selector: sel, tenant })).filter((a) => !a.revoked);
  const online = matched.filter((a) => a.online);
  const offline = matched.filter((a) => !a.online);
  if (matched.length === 0) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no agent matches the selector ${text}: see \`trellis agents list --selector '${text}'\``);
  if (online.length === 0) {
    throw new TrellisError('TRELLIS_E_AGENT_OFFLINE', `the selector ${text} matches ${matched.length} agent(s), none online: ${
      offline.slice(0, 10).map((a) => `${a.hostname || '-'} (${a.id})`).join(', ')}${offline.length > 10 ? ', …' : ''}`);
  }
  return { describe: `selector:${text}`, selector: text, online, offline };
}

/** The TargetsMatched message a run sends first. */
export function matchedMessage(t: Targets): T.TargetsMatched {
  const agent = (a: AgentView): T.TargetAgent => ({ id: a.id, hostname: a.hostname || '' });
  return { online: t.online.map(agent), offline: t.offline.map(agent), selector: t.selector };
}

/**
 * What a run did, for its audit record: argv (never secret by design: secrets go in env; at
 * most 240 characters of it), env variable names only (values are never audited), the
 * executions (id@agent) and the agents skipped because offline.
 */
export function auditDetail(o: { argv?: string[]; envKeys?: string[]; cwd?: string; parameterNames?: string[]; offline: AgentView[]; executions?: Array<{ id: string; agentId: string }> }): string {
  const parts: string[] = [];
  if (o.argv) { const j = JSON.stringify(o.argv); parts.push(`argv ${j.length > 240 ? `${j.slice(0, 240)}…` : j}`); }
  if (o.parameterNames?.length) parts.push(`parameters ${o.parameterNames.join(',')}`);
  if (o.cwd) parts.push(`cwd ${o.cwd.slice(0, 100)}`);
  if (o.envKeys?.length) parts.push(`env keys ${o.envKeys.join(',')}`);
  if (o.executions) parts.push(`executions ${o.executions.map((e) => `${e.id}@${e.agentId}`).join(',') || '-'}`);
  if (o.offline.length) parts.push(`skipped offline ${o.offline.map((a) => a.id).join(',')}`);
  return parts.join('; ');
}
