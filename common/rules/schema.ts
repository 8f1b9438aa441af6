/**
 * The rule file format (YAML or JSON), StackStorm-like:
 *
 *   name: restart-nginx              # [a-z0-9][a-z0-9_-]{0,62}
 *   description: ...
 *   enabled: true                    # default true
 *   trigger: core.process            # or {type: core.process}
 *   criteria:                        # map form {path: {type, pattern}} or list [{path, type, pattern}]
 *     trigger.payload.name: { type: equals, pattern: nginx }
 *   action: { ref: web.restart, parameters: { service: "{{ trigger.payload.name }}" } }
 *   target: local                    # or {agent: ID-or-template} or {selector: {role: web}}
 *                                    # default {agent: "{{ trigger.agent }}"}
 *   on: { selector: { role: web } }  # edge rules (target: local) only; default every agent
 *   cooldown: 30s                    # duration text, or a number of seconds; default 0
 *   rate_limit: { count: 10, per: 1m }
 *
 * ruleInputSchema is strict (an unknown key is refused by name) and reports every problem with
 * its path, including bad operators, unsafe regexes and malformed templates, so the packs
 * loader can point at the YAML line.
 */
import { z } from 'zod';
import type { AgentSelector, Criterion, RuleDef, RuleTarget, SearchCondition } from '../automation/types.js';
import { formatDuration, parseDuration } from '../duration.js';
import { TrellisError, isTrellisError } from '../errors.js';
import { compileCriteria, normalizeCriteria, SEARCH_CONDITIONS } from './criteria.js';
import { findRefs } from './template.js';
import { parseSelector } from '../selector.js';

export const RULE_NAME_RE = /^[a-z0-9][a-z0-9_-]{0,62}$/;
export const TRIGGER_RE = /^[a-z0-9][a-z0-9_-]{0,62}\.[a-z0-9][a-z0-9_.-]{0,62}$/;
const ACTION_REF_RE = /^[a-z0-9][a-z0-9_-]{0,62}\.[a-z0-9][a-z0-9_-]{0,62}$/;
const LABEL_KEY_RE = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/;
const DURATION_MAX_MS = 30 * 86_400_000;
const CRITERIA_MAX = 64;

type CriterionBody = { type: string; pattern?: unknown; condition?: SearchCondition };
type CriteriaInput = Record<string, CriterionBody> | (CriterionBody & { path: string })[];
type TriggerInput = string | { type: string };
type TargetInput = 'local' | { agent: string } | { selector: Record<string, string> | string };
type DurationInput = string | number;

/**
 * A union that picks its branch by the value's shape, so errors come from that branch with
 * their paths (zod's own union only says "Invalid input" when several branches could apply).
 */
function byShape<T>(choose: (v: unknown) => z.ZodType | string) {
  return z.custom<T>(() => true).superRefine((v, ctx) => {
    const s = choose(v);
    if (typeof s === 'string') { ctx.addIssue({ code: 'custom', message: s }); return; }
    const r = s.safeParse(v);
    if (!r.success) for (const i of r.error.issues) ctx.addIssue({ code: 'custom', message: i.message, path: i.path as (string | number)[] });
  });
}

const isObj = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

function durationMs(v: DurationInput, what: string): number {
  const ms = typeof v === 'number' ? v * 1000 : parseDuration(v, what); // a bare number is seconds, as everywhere in Trellis
  if (!Number.isFinite(ms) || ms < 0 || ms > DURATION_MAX_MS) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${what} must be between 0 and 30d`);
  return Math.round(ms);
}

const duration = (what: string) => z.union([z.number().min(0).max(DURATION_MAX_MS / 1000), z.string().max(32)])
  .superRefine((v, ctx) => {
    try { durationMs(v, what); } catch (e) { ctx.addIssue({ code: 'custom', message: (e as Error).message }); }
  });

const labels = z.record(z.string(), z.string().max(256)).superRefine((s, ctx) => {
  const keys = Object.keys(s);
  if (keys.length > 32) ctx.addIssue({ code: 'custom', message: 'at most 32 labels' });
  for (const k of keys) if (!LABEL_KEY_RE.test(k)) ctx.addIssue({ code: 'custom', message: `bad label key "${k.slice(0, 64)}": label keys are 1-63 of A-Z a-z 0-9 . _ / -`, path: [k] });
});

const criterionBody = z.strictObject({
  type: z.string().min(1).max(64),
  pattern: z.unknown().optional(),
  condition: z.enum(SEARCH_CONDITIONS).optional(),
});
const criterionItem = criterionBody.extend({ path: z.string().min(1).max(512) }).strict();

/** Each criterion compiled alone, so a bad operator or unsafe regex is reported at its key. */
const criteria = byShape<CriteriaInput>((v) => (Array.isArray(v)
  ? z.array(criterionItem).max(CRITERIA_MAX, `at most ${CRITERIA_MAX} criteria`)
  : isObj(v) ? z.record(z.string().min(1).max(512), criterionBody).refine((o) => Object.keys(o).length <= CRITERIA_MAX, `at most ${CRITERIA_MAX} criteria`)
    : 'criteria are a map {path: {type, pattern}} or a list [{path, type, pattern}]'))
  .superRefine((v, ctx) => {
    const entries: [string | number, Criterion][] = Array.isArray(v)
      ? v.map((c, i) => [i, c as Criterion])
      : Object.entries(v ?? {}).map(([k, c]) => [k, { ...c, path: k } as Criterion]);
    for (const [at, c] of entries) {
      try { compileCriteria([c]); } catch (e) { ctx.addIssue({ code: 'custom', message: (e as Error).message, path: [at] }); }
    }
  });

function templateIssue(v: unknown): string | undefined {
  try { findRefs(v); return undefined; } catch (e) { return (e as Error).message; }
}

const parameters = z.record(z.string().min(1).max(64), z.unknown())
  .refine((o) => Object.keys(o).length <= 64, 'at most 64 parameters')
  .superRefine((o, ctx) => {
    for (const [k, v] of Object.entries(o)) {
      const m = templateIssue(v);
      if (m) ctx.addIssue({ code: 'custom', message: m, path: [k] });
    }
    const size = JSON.stringify(o)?.length ?? 0;
    if (size > 64 * 1024) ctx.addIssue({ code: 'custom', message: `parameters are ${size} characters; the limit is 65536` });
  });

const agentTemplate = z.string().min(1).max(256).superRefine((s, ctx) => {
  const m = templateIssue(s);
  if (m) ctx.addIssue({ code: 'custom', message: m });
  else if (findRefs(s).length) ctx.addIssue({ code: 'custom', message: 'an agent cannot come from a kv or secret reference' });
});

/** `target: {selector: "role in (web,api),!canary"}`: the expression form (common/selector.ts). */
const selectorExpr = z.string().min(1).max(1024).superRefine((s, ctx) => {
  try { parseSelector(s); } catch (e) { ctx.addIssue({ code: 'custom', message: (e as Error).message }); }
});

const target = byShape<TargetInput>((v) => (typeof v === 'string'
  ? z.literal('local', { error: 'target is local, {agent: ...} or {selector: {...}}' })
  : isObj(v) && 'selector' in v ? z.strictObject({ selector: typeof v.selector === 'string' ? selectorExpr : labels })
    : isObj(v) ? z.strictObject({ agent: agentTemplate })
      : 'target is local, {agent: ...} or {selector: {...}}'));

const trigger = byShape<TriggerInput>((v) => {
  const name = z.string().max(128).regex(TRIGGER_RE, 'must be a dotted name like core.cpu or webhook.deploy');
  return typeof v === 'string' ? name : isObj(v) ? z.strictObject({ type: name }) : 'trigger is a name (core.cpu) or {type: core.cpu}';
});

export const ruleInputSchema = z.strictObject({
  name: z.string().regex(RULE_NAME_RE, 'must be 1-63 of a-z 0-9 _ -, starting with a letter or digit'),
  /** Accepted for StackStorm files; must name the pack the rule is loaded into. */
  pack: z.string().max(63).optional(),
  description: z.string().max(1024).optional(),
  enabled: z.boolean().optional(),
  trigger,
  criteria: criteria.optional(),
  action: z.strictObject({
    ref: z.string().regex(ACTION_REF_RE, 'must be <pack>.<action>'),
    parameters: parameters.optional(),
  }),
  target: target.optional(),
  on: z.strictObject({ agent: z.string().min(1).max(64).optional(), selector: labels.optional() })
    .refine((o) => !(o.agent !== undefined && o.selector !== undefined), 'give agent or selector, not both')
    .optional(),
  cooldown: duration('cooldown').optional(),
  rate_limit: z.strictObject({ count: z.number().int().min(1).max(10_000), per: duration('rate_limit.per') }).optional(),
});

export type RuleInput = z.infer<typeof ruleInputSchema>;

function fail(name: string, path: PropertyKey[], msg: string): TrellisError {
  const at = path.map((p) => (typeof p === 'number' ? `[${p}]` : String(p))).join('.').replace(/\.\[/g, '[');
  const err = new TrellisError('TRELLIS_E_RULE_INVALID', `rule ${name ? `"${name}" ` : ''}${at ? `${at}: ` : ''}${msg}`);
  return Object.assign(err, { path });
}

/**
 * The validated input as a RuleDef of `pack` ('' for a rule made outside a pack). Compiles the
 * criteria once to surface bad operators and unsafe regexes. Throws TRELLIS_E_RULE_INVALID whose
 * `path` property is the field's path in the input.
 */
export function normalizeRule(input: RuleInput, pack: string): RuleDef {
  const name = input.name;
  if (input.pack !== undefined && input.pack !== pack) {
    throw fail(name, ['pack'], pack ? `the rule is in pack "${pack}", not "${input.pack}"` : 'a rule created outside a pack cannot name one');
  }
  const crit = normalizeCriteria(input.criteria);
  try {
    compileCriteria(crit);
  } catch (e) {
    throw fail(name, ['criteria'], (e as Error).message);
  }
  let tgt: RuleTarget = { kind: 'agent', agent: '{{ trigger.agent }}' };
  const t = input.target;
  if (t === 'local') tgt = { kind: 'local' };
  else if (t && 'selector' in t) tgt = typeof t.selector === 'string' ? { kind: 'selector', selector: {}, expr: t.selector } : { kind: 'selector', selector: { ...t.selector } };
  else if (t && 'agent' in t) tgt = { kind: 'agent', agent: t.agent };
  if (input.on && tgt.kind !== 'local') throw fail(name, ['on'], 'on is for edge rules only (target: local); a hub rule picks agents with target');
  let cooldownMs = 0;
  let rateLimit: RuleDef['rateLimit'];
  try {
    if (input.cooldown !== undefined) cooldownMs = durationMs(input.cooldown, 'cooldown');
  } catch (e) { throw fail(name, ['cooldown'], (e as Error).message); }
  try {
    if (input.rate_limit) rateLimit = { count: input.rate_limit.count, perMs: durationMs(input.rate_limit.per, 'rate_limit.per') };
  } catch (e) { throw fail(name, ['rate_limit', 'per'], (e as Error).message); }
  if (rateLimit && rateLimit.perMs === 0) throw fail(name, ['rate_limit', 'per'], 'must be more than 0');
  const def: RuleDef = {
    ref: pack ? `${pack}.${name}` : name,
    pack,
    name,
    description: input.description ?? '',
    enabled: input.enabled ?? true,
    trigger: typeof input.trigger === 'string' ? input.trigger : input.trigger.type,
    criteria: crit.map((c) => ({ ...c })),
    action: { ref: input.action.ref, parameters: structuredClone(input.action.parameters ?? {}) },
    target: tgt,
    cooldownMs,
  };
  if (rateLimit) def.rateLimit = rateLimit;
  if (input.on) {
    const on: AgentSelector = {};
    if (input.on.agent !== undefined) on.agent = input.on.agent;
    if (input.on.selector !== undefined) on.selector = { ...input.on.selector };
    def.on = on;
  }
  return def;
}

/** Validates a rule object (parsed YAML/JSON). Throws TRELLIS_E_RULE_INVALID naming the field. */
export function parseRule(input: unknown, pack = ''): RuleDef {
  const r = ruleInputSchema.safeParse(input);
  if (!r.success) {
    const name = isObj(input) && typeof input.name === 'string' ? input.name.slice(0, 63) : '';
    const issues = r.error.issues;
    const first = issues[0]!;
    const msg = issues.slice(0, 5).map((i) => {
      const at = i.path.map((p) => (typeof p === 'number' ? `[${p}]` : String(p))).join('.').replace(/\.\[/g, '[');
      return `${at || '(rule)'}: ${i.message}`;
    }).join('; ');
    throw Object.assign(new TrellisError('TRELLIS_E_RULE_INVALID', `rule ${name ? `"${name}" ` : ''}is invalid: ${msg}${issues.length > 5 ? ` (and ${issues.length - 5} more)` : ''}`), { path: first.path });
  }
  try {
    return normalizeRule(r.data, pack);
  } catch (e) {
    if (isTrellisError(e)) throw e;
    throw new TrellisError('TRELLIS_E_RULE_INVALID', `rule: ${(e as Error).message}`, { cause: e });
  }
}

/** A duration as rule files write it, without loss: "1h30m", "1500ms". */
function durationText(ms: number): string {
  return ms % 1000 === 0 ? formatDuration(ms) : `${ms}ms`;
}

/**
 * The rule file (the input format above) of a definition: what `rules show -o yaml` prints, so
 * that `rules create --replace` reads back the same rule. A pack rule names its pack (`pack:`),
 * as a file of that pack may.
 */
export function ruleFileOf(def: RuleDef): Record<string, unknown> {
  const paths = def.criteria.map((c) => c.path);
  const unique = new Set(paths).size === paths.length;
  const crit = def.criteria.map(({ path, ...body }) => [path, body] as const);
  const t = def.target;
  const out: Record<string, unknown> = {
    name: def.name,
    ...(def.pack ? { pack: def.pack } : {}),
    ...(def.description ? { description: def.description } : {}),
    enabled: def.enabled,
    trigger: def.trigger,
    ...(def.criteria.length ? { criteria: unique ? Object.fromEntries(crit) : def.criteria.map((c) => ({ ...c })) } : {}),
    action: { ref: def.action.ref, ...(Object.keys(def.action.parameters).length ? { parameters: structuredClone(def.action.parameters) } : {}) },
    target: t.kind === 'local' ? 'local' : t.kind === 'agent' ? { agent: t.agent } : { selector: t.expr ? t.expr : { ...t.selector } },
  };
  if (def.on && (def.on.agent !== undefined || def.on.selector !== undefined)) out.on = structuredClone(def.on);
  if (def.cooldownMs) out.cooldown = durationText(def.cooldownMs);
  if (def.rateLimit) out.rate_limit = { count: def.rateLimit.count, per: durationText(def.rateLimit.perMs) };
  return out;
}
