/**
 * AdminRules: thin handlers over hub/rules. Creating a rule is acting on its behalf later, so
 * the creator must hold `actions:execute` on the action it calls (at the action's scope),
 * `kv:read` when its parameters refer to datastore values and `secrets:use` for secrets.
 */
import * as grpc from '@grpc/grpc-js';
import { v1 } from '../../common/proto.js';
import { TrellisError } from '../../common/errors.js';
import { actionScope, authorizeRefs, refsIn, ruleBlockReason } from '../rights/index.js';
import { secretLookup } from './refs.js';
import { unary, type WrapDeps, type CallContext } from './wrap.js';
import { authorize } from '../authz/index.js';
import { readTenant, writeTenant } from './admin.js';
import { checkString } from '../validate.js';
import { describeTarget, parseRuleText, type LiveRule } from '../rules/index.js';
import type { RuleDef, TriggerEvent } from '../../common/automation/types.js';
import type { HubComponents } from '../components.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

const S = '/trellis.v1.AdminRules';
const MAX_EVENT_JSON = 64 * 1024;

export function ruleInfo(r: LiveRule): T.RuleInfo {
  return {
    name: r.def.ref, pack: r.def.pack, enabled: r.def.enabled, trigger: r.def.trigger, action: r.def.action.ref, target: describeTarget(r.def),
    definitionJson: Buffer.from(JSON.stringify(r.def)), createdMs: r.createdMs, createdBy: r.createdBy, tenant: r.tenant,
    matched: r.stats.matched, fired: r.stats.fired, suppressed: r.stats.suppressed, author: r.author, blocked: r.blocked ?? '',
  };
}

/**
 * Saving or enabling a rule is acting through it later: the caller must hold now what the rule
 * needs (hub/rights ruleBlockReason), and kv:read / secrets:use for what its parameters
 * reference (a `{{ kv.x }}` whose key is a secret counts as a secret). The engine checks the
 * author again whenever rights change, and blocks the rule when they no longer suffice.
 */
async function mayRunAs(c: HubComponents, ctx: CallContext, tenant: string, def: RuleDef): Promise<void> {
  const p = ctx.principal!;
  authorize(p, 'actions:execute', actionScope(def.action.ref));
  const why = ruleBlockReason(p.username, p, tenant, def);
  if (why) throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `rule ${def.ref}: ${why.replace(/^its author /, '')}`);
  await authorizeRefs(p, refsIn(def.action.parameters), secretLookup(c.kv, tenant, { username: p.username, isAdmin: p.grants.isAdmin }), `rule ${def.ref}`);
}

/** The event of a TestRule call: `{type, payload, agent?, id?, timeMs?}`, or a bare payload for the rule's trigger. */
function testEvent(raw: Buffer, def: RuleDef, tenant: string): TriggerEvent {
  if (raw.length > MAX_EVENT_JSON) throw new TrellisError('TRELLIS_E_TOO_LARGE', `the event is over ${MAX_EVENT_JSON} bytes`);
  let obj: unknown;
  try { obj = JSON.parse(raw.toString('utf8') || '{}'); } catch { throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'the event is not valid JSON'); }
  const o = obj as Record<string, unknown>;
  const wrapped = obj !== null && typeof obj === 'object' && !Array.isArray(obj) && 'payload' in o && ('type' in o || 'trigger' in o);
  const str = (v: unknown, d: string) => (typeof v === 'string' ? v : d);
  return wrapped
    ? { id: str(o.id, 'test-event'), type: str(o.type ?? o.trigger, ''), payload: o.payload, agent: str(o.agent, ''), tenant, timeMs: typeof o.timeMs === 'number' ? o.timeMs : Date.now() }
    : { id: 'test-event', type: def.trigger, payload: obj, agent: '', tenant, timeMs: Date.now() };
}

export function addRuleServices(server: grpc.Server, c: HubComponents, deps: WrapDeps): void {
  server.addService(v1.AdminRules.service, {
    CreateRule: unary<T.CreateRuleRequest__Output, T.RuleInfo>(deps, `${S}/CreateRule`, async (req, ctx) => {
      const def = parseRuleText(checkString(req.definition, 'definition', 64 * 1024), checkString(req.source, 'source', 256) || 'rule');
      ctx.target = `rule:${def.ref}`;
      await mayRunAs(c, ctx, writeTenant(ctx), def);
      const r = await c.rules.create(writeTenant(ctx), def, { by: ctx.principal!.username, replace: req.replace });
      c.log.info({ component: 'rules', rule: def.ref, tenant: r.tenant, user: ctx.principal!.username, target: describeTarget(def) }, 'rule saved');
      return ruleInfo(r);
    }),
    ListRules: unary<T.ListRulesRequest__Output, T.ListRulesResponse>(deps, `${S}/ListRules`, async (req, ctx) => ({
      rules: c.rules.list(readTenant(ctx) ?? '*', { pack: checkString(req.pack, 'pack', 64), trigger: checkString(req.trigger, 'trigger', 128) }).map(ruleInfo),
    })),
    GetRule: unary<T.GetRuleRequest__Output, T.RuleInfo>(deps, `${S}/GetRule`, async (req, ctx) =>
      ruleInfo(c.rules.get(writeTenant(ctx), checkString(req.name, 'name', 130)))),
    SetRuleEnabled: unary<T.SetRuleEnabledRequest__Output, T.RuleInfo>(deps, `${S}/SetRuleEnabled`, async (req, ctx) => {
      ctx.target = `rule:${String(req.name).slice(0, 130)}`;
      const tenant = writeTenant(ctx);
      const cur = c.rules.get(tenant, checkString(req.name, 'name', 130));
      if (req.enabled) await mayRunAs(c, ctx, tenant, cur.def);
      return ruleInfo(await c.rules.setEnabled(tenant, cur.def.ref, req.enabled, ctx.principal!.username));
    }),
    DeleteRule: unary<T.DeleteRuleRequest__Output, T.DeleteRuleResponse>(deps, `${S}/DeleteRule`, async (req, ctx) => {
      ctx.target = `rule:${String(req.name).slice(0, 130)}`;
      await c.rules.delete(writeTenant(ctx), checkString(req.name, 'name', 130));
      return {};
    }),
    TestRule: unary<T.TestRuleRequest__Output, T.TestRuleResponse>(deps, `${S}/TestRule`, async (req, ctx) => {
      const tenant = writeTenant(ctx);
      let def: RuleDef;
      if (req.definition) def = parseRuleText(checkString(req.definition, 'definition', 64 * 1024), 'rule');
      else if (req.name) def = c.rules.get(tenant, checkString(req.name, 'name', 130)).def;
      else throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'name a rule or give its definition');
      const ev = testEvent(Buffer.from(req.eventJson), def, tenant);
      const r = await c.rules.test(tenant, def, ev);
      return {
        matched: r.matched, reasons: r.reasons, action: def.action.ref, parametersJson: Buffer.from(JSON.stringify(r.parameters)),
        agents: r.agents, target: describeTarget(def), warnings: r.warnings,
      };
    }),
  });
}
