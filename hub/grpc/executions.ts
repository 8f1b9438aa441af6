/**
 * AdminExecutions on the admin port: thin handlers over hub/executions. RunAction passes the
 * method table with `actions:execute` at any scope and is checked here at the action's scope
 * (platform, pack:<name> or action:<pack>.<name>); parameters holding datastore references also
 * need kv:read, and secrets:use for secrets (hub/rights). Every call is tenant-scoped: another
 * tenant's execution is NOT_FOUND.
 */
import * as grpc from '@grpc/grpc-js';
import { v1 } from '../../common/proto.js';
import { TrellisError, isTrellisError } from '../../common/errors.js';
import { unary, serverStream, type WrapDeps, type CallContext } from './wrap.js';
import { authorize, type Principal } from '../authz/index.js';
import { readTenant, writeTenant } from './admin.js';
import { checkString } from '../validate.js';
import { useRefs } from './refs.js';
import { resolveTargets, matchedMessage, auditDetail, type Targets } from './targets.js';
import { COMMAND_ACTION, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, type ExecutionRecord, type ExecutionUpdate } from '../executions/index.js';
import type { HubComponents } from '../components.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

const S = '/trellis.v1.AdminExecutions';
const ACTION_REF_RE = /^([a-z0-9][a-z0-9_-]{0,62})\.([a-z0-9][a-z0-9_.-]{0,126})$/;
const STATUSES = new Set(['requested', 'scheduled', 'running', 'succeeded', 'failed', 'timeout', 'canceled', 'abandoned', 'error']);
const MAX_PARAMS = 64;
const MAX_PARAM_VALUE = 64 * 1024;

export function executionInfo(r: ExecutionRecord, output?: Buffer): T.ExecutionInfo {
  return {
    id: r.id, action: r.action, agentId: r.agentId, tenant: r.tenant, status: r.status, exitCode: r.exitCode, error: r.error,
    requestedBy: r.requestedBy, rule: r.rule, triggerEventId: r.triggerEventId, parametersJson: Buffer.from(JSON.stringify(r.parameters), 'utf8'),
    requestedMs: r.requestedMs, startedMs: r.startedMs, finishedMs: r.finishedMs, output: output ?? Buffer.alloc(0),
    outputTruncated: r.outputTruncated, edge: r.edge,
  };
}

export function updateMessage(u: ExecutionUpdate): T.ExecutionUpdate {
  return u.kind === 'state'
    ? { state: executionInfo(u.record) }
    : { output: { executionId: u.executionId, stream: u.stream, data: u.data } };
}

/** The tenant a read works in: the call's, or every tenant for an administrator asking for `*`. */
const tenantOf = (ctx: CallContext): string => readTenant(ctx) ?? '*';

function splitRef(ref: string): { pack: string; action: string } {
  const m = ACTION_REF_RE.exec(ref);
  if (!m) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `bad action "${ref.slice(0, 80)}": use <pack>.<action>, e.g. linux.restart_service`);
  return { pack: m[1]!, action: m[2]! };
}

/** `actions:execute` at the action's scope; the ad-hoc command action needs agents:run like `trellis run -- CMD`. */
function authorizeAction(ctx: CallContext, ref: string): void {
  const scope = ref === COMMAND_ACTION ? undefined : splitRef(ref);
  const check = (p: Principal) => (scope ? authorize(p, 'actions:execute', scope) : authorize(p, 'agents:run'));
  check(ctx.principal!);
  (ctx.rechecks ??= []).push(check); // the watch stream ends if this right goes
}

/**
 * Parameters as the CLI sends them: text. The renderer (common/rules/render.ts) checks names
 * against the action and converts text to each declared type ("5", "true", JSON).
 */
export function checkParameters(given: Record<string, string>): Record<string, unknown> {
  const entries = Object.entries(given);
  if (entries.length > MAX_PARAMS) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `at most ${MAX_PARAMS} parameters`);
  for (const [k, v] of entries) {
    if (k.length > 64) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `parameter name "${k.slice(0, 64)}..." is over 64 characters`);
    if (typeof v !== 'string' || v.length > MAX_PARAM_VALUE) throw new TrellisError('TRELLIS_E_TOO_LARGE', `parameter ${k} is over ${MAX_PARAM_VALUE} characters`);
  }
  return Object.fromEntries(entries);
}

export function addExecutionServices(server: grpc.Server, c: HubComponents, deps: WrapDeps): void {
  /**
   * Target agents in the call's tenant: one by id, id prefix or hostname (it may be offline: the
   * execution waits for it), or the online ones matching a selector (offline ones are skipped).
   */
  async function targets(req: T.RunActionRequest__Output, ctx: CallContext): Promise<{ tenant: string; agentIds: string[]; t: Targets }> {
    const hasSelector = !!req.selectorExpr?.trim() || Object.keys(req.selector).length > 0;
    const tenant = req.agentId || !hasSelector ? undefined : writeTenant(ctx);
    const t = await resolveTargets(c, ctx, req, tenant ?? readTenant(ctx));
    if (t.agent) return { tenant: t.agent.tenant, agentIds: [t.agent.id], t };
    return { tenant: tenant!, agentIds: t.online.map((a) => a.id), t };
  }

  server.addService(v1.AdminExecutions.service, {
    RunAction: serverStream<T.RunActionRequest__Output, T.ExecutionUpdate>(deps, `${S}/RunAction`, async (req, ctx, write) => {
      const ref = checkString(req.action, 'action', 192);
      ctx.target = `action:${ref}`;
      authorizeAction(ctx, ref);
      if (ref === COMMAND_ACTION) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${COMMAND_ACTION} is run with \`trellis run --agent ID -- CMD\``);
      const { tenant, agentIds, t } = await targets(req, ctx);
      ctx.target = `action:${ref} on ${t.describe}`;
      const action = c.packs.action(tenant, ref);
      if (!action) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no action ${ref} in tenant ${tenant}: see \`trellis packs list\``);
      const parameters = checkParameters(req.parameters);
      const uses = await useRefs(c.kv, ctx, tenant, parameters);
      ctx.detail = auditDetail({ parameterNames: Object.keys(parameters), offline: t.offline });
      write({ matched: matchedMessage(t) });
      await c.executions.watch(
        async () => {
          const recs = await c.executions.request({ tenant, action, agentIds, parameters, requestedBy: ctx.principal!.username, kvCaller: uses.kvCaller });
          ctx.detail = auditDetail({ parameterNames: Object.keys(parameters), offline: t.offline, executions: recs });
          uses.note();
          return recs;
        },
        (u) => { write(updateMessage(u)); },
        { follow: req.follow, signal: ctx.signal },
      );
    }),

    ListExecutions: unary<T.ListExecutionsRequest__Output, T.ListExecutionsResponse>(deps, `${S}/ListExecutions`, async (req, ctx) => {
      if (req.status && !STATUSES.has(req.status)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `bad status "${req.status.slice(0, 32)}": one of ${[...STATUSES].join(', ')}`);
      if (req.limit < 0 || req.limit > MAX_LIST_LIMIT) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `limit is between 1 and ${MAX_LIST_LIMIT} (0: ${DEFAULT_LIST_LIMIT})`);
      // --agent: an id, unique id prefix or hostname; an id no longer known (a pruned agent) as given.
      let agentId = checkString(req.agentId, 'agent_id', 256);
      if (agentId) agentId = await c.agents.resolve(agentId, readTenant(ctx)).then((a) => a.id, (e) => { if (isTrellisError(e, 'TRELLIS_E_NOT_FOUND')) return agentId; throw e; });
      const recs = await c.executions.list(tenantOf(ctx), {
        action: checkString(req.action, 'action', 192), agentId, status: req.status,
        rule: checkString(req.rule, 'rule', 192), limit: req.limit, sinceMs: Number(req.sinceMs) || 0, beforeId: checkString(req.beforeId, 'before_id', 64),
      });
      return { executions: recs.map((r) => executionInfo(r)) };
    }),

    CountExecutions: unary<T.CountExecutionsRequest__Output, T.CountExecutionsResponse>(deps, `${S}/CountExecutions`, async (req, ctx) => {
      let agentId = checkString(req.agentId, 'agent_id', 256);
      if (agentId) agentId = await c.agents.resolve(agentId, readTenant(ctx)).then((a) => a.id, (e) => { if (isTrellisError(e, 'TRELLIS_E_NOT_FOUND')) return agentId; throw e; });
      const sinceMs = Number(req.sinceMs) || 0;
      if (sinceMs < 0) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'since_ms is a time in ms since the epoch (0: all)');
      const by = await c.executions.countByStatus(tenantOf(ctx), { action: checkString(req.action, 'action', 192), agentId, rule: checkString(req.rule, 'rule', 192), sinceMs });
      let total = 0;
      for (const n of by.values()) total += n;
      return { byStatus: Object.fromEntries(by), total };
    }),

    GetExecution: unary<T.GetExecutionRequest__Output, T.ExecutionInfo>(deps, `${S}/GetExecution`, async (req, ctx) => {
      const r = await c.executions.get(tenantOf(ctx), checkString(req.id, 'id', 64));
      return executionInfo(r, r.output);
    }),

    FollowExecution: serverStream<T.FollowExecutionRequest__Output, T.ExecutionUpdate>(deps, `${S}/FollowExecution`, async (req, ctx, write) => {
      await c.executions.follow(tenantOf(ctx), checkString(req.id, 'id', 64), (u) => { write(updateMessage(u)); }, ctx.signal);
    }),

    CancelExecution: unary<T.CancelExecutionRequest__Output, T.ExecutionInfo>(deps, `${S}/CancelExecution`, async (req, ctx) => {
      const id = checkString(req.id, 'id', 64);
      ctx.target = `execution:${id}`;
      return executionInfo(await c.executions.cancel(tenantOf(ctx), id));
    }),

    RerunExecution: serverStream<T.RerunExecutionRequest__Output, T.ExecutionUpdate>(deps, `${S}/RerunExecution`, async (req, ctx, write) => {
      const id = checkString(req.id, 'id', 64);
      ctx.target = `execution:${id}`;
      const old = await c.executions.get(tenantOf(ctx), id);
      authorizeAction(ctx, old.action);
      // A re-run resolves the references again, as the caller: they answer for them now.
      const uses = await useRefs(c.kv, ctx, old.tenant, old.parameters);
      await c.executions.watch(
        async () => {
          const recs = await c.executions.rerun(tenantOf(ctx), id, ctx.principal!.username, uses.kvCaller);
          uses.note();
          return recs;
        },
        (u) => { write(updateMessage(u)); },
        { follow: req.follow, signal: ctx.signal },
      );
    }),
  });
}
