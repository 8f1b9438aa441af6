/**
 * The hub's rules engine. Rules come from two places: created directly (the `rules` collection)
 * and shipped in packs (read from hub/packs; their enabled flag can be overridden). Hub rules
 * (target: an agent or a label selector) are matched here, on the event hot path, through an
 * index by tenant and trigger type, so an event costs nothing for rules of other trigger types.
 * Edge rules (target: local) are not matched here: hub/agentconfig streams them to the agents.
 *
 * Firing goes through a per-rule RateGate (cooldown and rate limit) and asks hub/executions for
 * one execution per target agent with an idempotency key `<rule>|<event id>|<agent>`, so an
 * event delivered twice (an agent re-sending after a lost acknowledgement, even across a hub
 * restart) never runs an action twice.
 */
import { EventEmitter } from 'node:events';
import { parse as parseYaml } from 'yaml';
import { compileRule, parseRule, payloadKeysOf, RuleIndex, RateGate, renderTemplate, type CompiledRule } from '../../common/rules/index.js';
import { FULL_PARSE, PayloadFields } from './payload-fields.js';
import { Prefilter } from './prefilter.js';
import type { RuleDef, TriggerEvent, ActionDef } from '../../common/automation/types.js';
import { TrellisError } from '../../common/errors.js';
import { formatSelector, targetSelector } from '../../common/selector.js';
import type { Logger } from '../../common/log.js';
import type { Store, Doc } from '../store/index.js';
import type { HubEvent } from '../events/index.js';
import type { AgentRegistry } from '../agents/index.js';
import type { AuditSink } from '../audit/types.js';
import type { Principal } from '../authz/index.js';
import { mayUseSecrets, refsIn, ruleBlockReason, secretGuard } from '../rights/index.js';
import type { SharedRuleGates } from '../cluster/rule-gates.js';

/** What the engine needs from packs and executions (hub/packs, hub/executions). */
export interface RulePacks {
  rules(tenant: string): RuleDef[];
  action(tenant: string, ref: string): ActionDef | undefined;
  tenants(): string[];
  /** The installed pack (its installer is the author of its rules). */
  get(tenant: string, name: string): { installedBy: string } | undefined;
  on(ev: 'change', fn: (tenant: string) => void): unknown;
}

/** Who stands behind rules: the authors' current rights (hub/iam), and a signal when any right changes. */
export interface RuleAuthors {
  resolve(username: string): Promise<Pick<Principal, 'tenants' | 'grants'> | undefined>;
  on(ev: 'changed', fn: () => void): unknown;
}
export interface RuleExecutions {
  request(req: {
    tenant: string; action: ActionDef; agentIds: string[]; parameters: Record<string, unknown>;
    requestedBy: string; rule?: string; triggerEventId?: string; dedupKey?: (agentId: string) => string;
    kvCaller?: { username: string; isAdmin: boolean; onSecret?: (key: string) => void };
    /** When the hub received the triggering event (metrics: event→action). */
    triggeredAtMs?: number;
  }): Promise<unknown[]>;
  /** Resolves (never rejects) once every execution requested so far is on disk (its state lines; output may follow). */
  requestsDurable?(): Promise<void>;
}

export interface RuleDoc extends Doc {
  tenant: string;
  /** A rule created directly (def set) or the enabled override of a pack rule (def unset). */
  def?: RuleDef;
  ref: string;
  enabled?: boolean;
  createdMs: number;
  createdBy: string;
  /** Who last enabled a rule created directly: from then on its author. */
  enabledBy?: string;
}

export interface RuleStats { matched: number; fired: number; suppressed: number; errors: number }

export interface LiveRule {
  tenant: string;
  def: RuleDef;
  compiled: CompiledRule;
  gate: RateGate;
  stats: RuleStats;
  createdMs: number;
  createdBy: string;
  /**
   * The user the rule acts for: whoever created, replaced or last enabled a rule created
   * directly; the installer of a pack for a pack rule (an API key's owner).
   */
  author: string;
  /** Why the rule does not fire (its author lost what it needs); undefined when it may. */
  blocked?: string;
  /** The author may use secrets (secrets:use or kv:decrypt), as of the last check. */
  secretsOk: boolean;
  /** Keys its parameters reference (the author's text, as opposed to the action's). */
  paramKeys: ReadonlySet<string>;
}

export const MAX_RULE_TEXT = 64 * 1024;
export const MAX_RULES_PER_TENANT = 10_000;
const RULE_NAME_RE = /^[a-z0-9][a-z0-9_-]{0,62}$/;

const docId = (tenant: string, ref: string) => `${tenant}/${ref}`;

/** Most rules one agent report is read for. */
export const MAX_EDGE_REPORT = 256;
/** A counter value from an agent, as a safe non-negative integer (garbage counts as 0). */
const bounded = (v: unknown): number => {
  const n = Number(v);
  return Number.isSafeInteger(n) && n > 0 ? Math.min(n, 2 ** 48) : 0;
};

export function describeTarget(def: RuleDef): string {
  const t = def.target;
  if (t.kind === 'local') return 'local';
  if (t.kind === 'agent') return `agent ${t.agent}`;
  return `selector ${formatSelector(targetSelector(t))}`;
}

/** Parses rule text (YAML or JSON, one rule) into a validated definition. */
export function parseRuleText(text: string, source = 'rule'): RuleDef {
  if (text.length > MAX_RULE_TEXT) throw new TrellisError('TRELLIS_E_TOO_LARGE', `${source}: a rule is at most ${MAX_RULE_TEXT} bytes`);
  let obj: unknown;
  try {
    obj = parseYaml(text, { maxAliasCount: 100 });
  } catch (err) {
    const e = err as Error & { linePos?: Array<{ line: number }> };
    const line = e.linePos?.[0]?.line;
    throw new TrellisError('TRELLIS_E_RULE_INVALID', `${source}${line ? `:${line}` : ''}: not valid YAML/JSON: ${e.message.split('\n')[0]}`);
  }
  try {
    return parseRule(obj, '');
  } catch (err) {
    if (err instanceof TrellisError) throw new TrellisError(err.code, `${source}: ${err.message}`);
    throw err;
  }
}

/** The event as rules see it; a payload that is not JSON is null (criteria on it are false). */
export function triggerOf(e: HubEvent): TriggerEvent {
  let payload: unknown = null;
  try { payload = JSON.parse(e.payload.toString('utf8')); } catch { /* not JSON */ }
  return { id: e.id, type: e.type, payload, agent: e.agentId, tenant: e.tenant, timeMs: e.timeMs };
}

/**
 * The event as criteria that read only `plan.keys` of the payload see it: the payload reduced to
 * those fields (hub/rules/payload-fields.ts; `null` when it is not JSON, as triggerOf), or
 * undefined when it must be parsed whole (JSON but not an object). No field read: the payload is
 * not looked at.
 */
export function reducedTrigger(e: HubEvent, plan: PayloadFields): TriggerEvent | undefined {
  let fields: ReturnType<PayloadFields['read']>;
  try { fields = plan.keys.length === 0 ? null : plan.read(e.payload); } catch { return undefined; } // a scanner fault (never seen): JSON.parse decides
  if (fields === FULL_PARSE) return undefined;
  return { id: e.id, type: e.type, payload: fields, agent: e.agentId, tenant: e.tenant, timeMs: e.timeMs };
}

export class RulesEngine extends EventEmitter {
  /** tenant → index of enabled hub rules by trigger type. */
  private index = new Map<string, RuleIndex<LiveRule>>();
  /** tenant → enabled edge rules. */
  private edge = new Map<string, LiveRule[]>();
  /** `${tenant}/${ref}` → every rule (enabled or not). */
  private readonly all = new Map<string, LiveRule>();
  private readonly docs = new Map<string, RuleDoc>();
  /** agent id → its last edge counters report (boot id and absolute counts per rule); at most agents × MAX_EDGE_REPORT entries. */
  private readonly edgeReports = new Map<string, { boot: string; counts: Map<string, { matched: number; fired: number; suppressed: number }> }>();
  private lastErrorLog = 0;
  private lastGateErrorLog = 0;
  private suppressedErrorLogs = 0;
  /**
   * Per list of rules of one trigger type (RuleIndex lists are copied on write, so a list is a
   * stable key): the payload fields their criteria read, or undefined when one reads the whole
   * payload.
   */
  private readonly plans = new WeakMap<readonly LiveRule[], PayloadFields | undefined>();
  /** Per list of rules (null: none pays). */
  private readonly prefilters = new WeakMap<readonly LiveRule[], Prefilter | null>();
  private lastPlan: { rules?: readonly LiveRule[]; plan?: PayloadFields } = {};
  private lastPrefilter: { rules?: readonly LiveRule[]; pre?: Prefilter } = {};
  /** Hub rule counters since start, every rule and tenant (metrics); `held`: suppressed by `hold` (maintenance). */
  readonly totals = { matched: 0, fired: 0, suppressed: 0, held: 0, errors: 0 };

  /** Bumped whenever rights may have changed (or rules appeared); authors are checked up to it. */
  private authGen = 0;
  private checkedGen = 0;
  private checking?: Promise<void>;

  constructor(private readonly deps: {
    store: Store; packs: RulePacks; executions: RuleExecutions; agents: AgentRegistry; log: Logger; now?: () => number;
    /** Without it (unit tests) authors are not checked after the rule is saved. */
    authors?: RuleAuthors;
    /** Rule firings that opened a secret are audited with the key names. */
    audit?: AuditSink;
    /** A reason to hold every firing back (maintenance mode), counted as suppressed. @default never */
    hold?: () => string | undefined;
    /**
     * Cooldowns and rate limits shared by every hub on the store (hub/cluster/rule-gates.ts);
     * without it (one hub) the in-memory gate of each rule decides.
     */
    sharedGates?: SharedRuleGates;
  }) {
    super();
    deps.packs.on('change', (tenant) => this.rebuild(tenant));
    deps.authors?.on('changed', () => this.rightsChanged());
  }

  /** Rights (or rules) changed: every author is checked again, in the background and before the next firing. */
  private rightsChanged(): void {
    if (!this.deps.authors) return;
    this.authGen++;
    void this.checkAuthors().catch((err) => this.deps.log.error({ err: (err as Error).message }, 'cannot check the authors of rules'));
  }

  /**
   * Brings every rule's `blocked` state up to the current rights (single-flight; joins a check
   * in progress and runs again if rights changed meanwhile). A rule whose author is deactivated
   * or deleted, left its tenant, or lost what the rule needs stops firing (hub rules leave the
   * index, edge rules leave the agents' configs) until the author has it again.
   */
  async checkAuthors(): Promise<void> {
    while (this.deps.authors && this.checkedGen < this.authGen) {
      this.checking ??= this.runCheck(this.authGen).finally(() => { this.checking = undefined; });
      await this.checking;
    }
  }

  private async runCheck(gen: number): Promise<void> {
    const authors = this.deps.authors!;
    const principals = new Map<string, Promise<Pick<Principal, 'tenants' | 'grants'> | undefined>>();
    const changed = new Set<string>();
    const edgeValues = new Set<string>();
    for (const r of [...this.all.values()]) {
      let p = principals.get(r.author);
      if (!p) principals.set(r.author, (p = authors.resolve(r.author).catch(() => undefined)));
      const who = await p;
      const why = ruleBlockReason(r.author, who, r.tenant, r.def);
      const ok = !!who && mayUseSecrets(who.grants);
      if (ok !== r.secretsOk && r.def.target.kind === 'local' && r.paramKeys.size > 0) edgeValues.add(r.tenant); // what its agents may be sent changed
      r.secretsOk = ok;
      if (why !== r.blocked) {
        if (why) this.deps.log.warn({ rule: r.def.ref, tenant: r.tenant, author: r.author, reason: why }, 'rule blocked: it no longer fires');
        else if (r.blocked) this.deps.log.info({ rule: r.def.ref, tenant: r.tenant, author: r.author }, 'rule unblocked: its author has what it needs again');
        r.blocked = why;
        changed.add(r.tenant);
      }
    }
    this.checkedGen = gen;
    for (const t of changed) this.rebuild(t, false);
    for (const t of edgeValues) if (!changed.has(t)) this.emit('edge-change', t);
  }

  private now(): number { return this.deps.now?.() ?? Date.now(); }

  async load(): Promise<void> {
    for (const d of await this.deps.store.list<RuleDoc>('rules')) this.docs.set(d.id, d);
    const tenants = new Set([...this.deps.packs.tenants(), ...[...this.docs.values()].map((d) => d.tenant)]);
    for (const t of tenants) this.rebuild(t);
    await this.checkAuthors();
  }

  /**
   * Another hub (shared store) saved or deleted a rule document (`id` undefined: maybe every
   * one): the tenant's rules are rebuilt as after a local change (hub rules re-indexed, edge rules
   * pushed to the agents connected here).
   */
  async reloadDocs(id?: string): Promise<void> {
    if (id === undefined) {
      const tenants = new Set([...this.docs.values()].map((d) => d.tenant));
      this.docs.clear();
      for (const d of await this.deps.store.list<RuleDoc>('rules')) { this.docs.set(d.id, d); tenants.add(d.tenant); }
      for (const t of tenants) this.rebuild(t);
      return;
    }
    const d = await this.deps.store.get<RuleDoc>('rules', id);
    const tenant = d?.tenant ?? this.docs.get(id)?.tenant;
    if (d) this.docs.set(id, d);
    else this.docs.delete(id);
    if (tenant !== undefined) this.rebuild(tenant);
  }

  /** The author of a pack's rules: its installer (the owner, for an API key `apikey:<id>@<owner>`). */
  private packAuthor(tenant: string, pack: string): string {
    const by = this.deps.packs.get(tenant, pack)?.installedBy ?? '';
    const at = by.startsWith('apikey:') ? by.lastIndexOf('@') : -1;
    return at >= 0 ? by.slice(at + 1) : by;
  }

  /** Recomputes one tenant's rules from its docs and packs, keeping gates and counters of unchanged rules. */
  private rebuild(tenant: string, recheck = true): void {
    const defs: Array<{ def: RuleDef; createdMs: number; createdBy: string; author: string }> = [];
    for (const d of this.docs.values()) {
      if (d.tenant === tenant && d.def) defs.push({ def: d.def, createdMs: d.createdMs, createdBy: d.createdBy, author: d.enabledBy ?? d.createdBy });
    }
    for (const def of this.deps.packs.rules(tenant)) {
      const o = this.docs.get(docId(tenant, def.ref));
      const author = this.packAuthor(tenant, def.pack);
      defs.push({ def: o?.enabled === undefined ? def : { ...def, enabled: o.enabled }, createdMs: o?.createdMs ?? 0, createdBy: o?.createdBy ?? author, author });
    }
    let fresh = false;
    const before = this.edgeSignature(tenant);
    const prevRules = new Map<string, LiveRule>();
    for (const [k, r] of this.all) if (r.tenant === tenant) prevRules.set(k, r);
    for (const k of prevRules.keys()) this.all.delete(k);
    const index = new RuleIndex<LiveRule>();
    const edge: LiveRule[] = [];
    for (const { def, createdMs, createdBy, author } of defs) {
      const key = docId(tenant, def.ref);
      const prev = prevRules.get(key);
      // Unchanged rules keep their compiled form, gate and counters (saving one rule must not recompile all).
      if (prev && prev.author === author && (prev.def === def || JSON.stringify(prev.def) === JSON.stringify(def))) {
        this.all.set(key, prev);
        if (!def.enabled || prev.blocked) continue;
        if (def.target.kind === 'local') edge.push(prev);
        else index.add(key, prev);
        continue;
      }
      let live: LiveRule;
      try {
        let paramKeys: Set<string>;
        try { paramKeys = new Set(refsIn(def.action.parameters).map((r) => r.key)); } catch { paramKeys = new Set(); }
        live = {
          tenant, def, compiled: compileRule(def, () => this.now()), gate: new RateGate({ cooldownMs: def.cooldownMs, rateLimit: def.rateLimit }, () => this.now()),
          stats: { matched: 0, fired: 0, suppressed: 0, errors: 0 }, createdMs, createdBy, author,
          // Until its author is checked (right away, and before it fires): as before, if it was; fresh rules were checked when saved or installed.
          blocked: prev?.author === author ? prev.blocked : undefined, secretsOk: prev?.author === author ? prev.secretsOk : !this.deps.authors, paramKeys,
        };
      } catch (err) {
        this.deps.log.error({ rule: def.ref, tenant, err: (err as Error).message }, 'rule does not compile; skipped');
        continue;
      }
      fresh = true;
      if (prev && prev.def.ref === def.ref) live.stats = prev.stats; // counters survive an edit; the gate starts fresh
      this.all.set(key, live);
      if (!def.enabled || live.blocked) continue;
      if (def.target.kind === 'local') edge.push(live);
      else index.add(key, live);
    }
    this.index.set(tenant, index);
    this.edge.set(tenant, edge);
    if (this.edgeSignature(tenant) !== before) this.emit('edge-change', tenant);
    if (fresh && recheck) this.rightsChanged();
  }

  private edgeSignature(tenant: string): string {
    return (this.edge.get(tenant) ?? []).map((r) => JSON.stringify(r.def)).join('\n');
  }

  // ---------------------------------------------------------------- hot path

  /**
   * Matches a batch of fresh (de-duplicated) events against the hub rules. When a rule fired,
   * returns a promise (never rejecting) that resolves once the executions it requested are on
   * disk: the caller acknowledges the events only then (hub/events EventListener).
   */
  onEvents(events: readonly HubEvent[]): Promise<void> | undefined {
    let fired: Promise<void>[] | undefined;
    const receivedMs = Date.now();
    for (const e of events) {
      const rules = this.index.get(e.tenant)?.forTrigger(e.type);
      if (!rules || rules.length === 0) continue;
      // What the criteria see: only the payload fields they read (decoded once per event, not per
      // rule); the whole event, parsed, once a rule matches.
      const plan = this.planFor(rules);
      const reduced = plan ? reducedTrigger(e, plan) : undefined;
      let full = reduced ? undefined : triggerOf(e);
      const seen = reduced ?? full!;
      const pre = this.prefilterFor(rules);
      const may = pre?.candidates(seen); // the rules whose numeric threshold this event passes (and those without one)
      for (let i = 0; i < rules.length; i++) {
        if (may && may[i] === 0) continue;
        const r = rules[i]!;
        let hit: boolean;
        try { hit = r.compiled.match(seen); } catch { hit = false; }
        if (!hit) continue;
        const trig = (full ??= triggerOf(e));
        r.stats.matched++;
        this.totals.matched++;
        // Its action is gone (a rule saved before references were checked): nothing can run, so nothing "fires".
        if (!this.deps.packs.action(r.tenant, r.def.action.ref)) {
          this.fireError(r, trig, new TrellisError('TRELLIS_E_NOT_FOUND', `action ${r.def.action.ref} is not installed in tenant ${r.tenant}`));
          continue;
        }
        if (this.deps.hold?.()) { r.stats.suppressed++; this.totals.suppressed++; this.totals.held++; continue; } // before the gate: no cooldown spent
        if (this.deps.sharedGates && (r.def.cooldownMs > 0 || r.def.rateLimit)) {
          // Cluster-wide: the database decides (one hub's firing closes the gate on every hub).
          const t = trig;
          (fired ??= []).push(this.fireShared(r, t, receivedMs));
          continue;
        }
        if (!r.gate.tryFire()) { r.stats.suppressed++; this.totals.suppressed++; continue; }
        r.stats.fired++;
        this.totals.fired++;
        const t = trig;
        (fired ??= []).push(this.fire(r, t, receivedMs).catch((err) => this.fireError(r, t, err)));
      }
      if (reduced) plan!.release(); // matched: the payload (a slice of its gRPC message) is let go
    }
    if (!fired) return undefined;
    return Promise.all(fired).then(() => this.deps.executions.requestsDurable?.());
  }

  /** The threshold prefilter of a list of rules (cached per list), or undefined when it would not pay (hub/rules/prefilter.ts). */
  private prefilterFor(rules: readonly LiveRule[]): Prefilter | undefined {
    if (rules === this.lastPrefilter.rules) return this.lastPrefilter.pre; // a batch is mostly of one type
    let pre = this.prefilters.get(rules);
    if (pre === undefined) this.prefilters.set(rules, (pre = Prefilter.of(rules.map((r) => r.compiled.threshold)) ?? null));
    this.lastPrefilter = { rules, pre: pre ?? undefined };
    return pre ?? undefined;
  }

  /** The payload fields the criteria of `rules` read (cached per list), or undefined when one reads the whole payload. */
  private planFor(rules: readonly LiveRule[]): PayloadFields | undefined {
    if (rules === this.lastPlan.rules) return this.lastPlan.plan; // a batch is mostly of one type
    let plan = this.plans.get(rules);
    if (plan !== undefined || this.plans.has(rules)) { this.lastPlan = { rules, plan }; return plan; }
    const keys = new Set<string>();
    for (const r of rules) {
      const k = payloadKeysOf(r.def.criteria);
      if (!k) { this.plans.set(rules, undefined); this.lastPlan = { rules, plan: undefined }; return undefined; }
      for (const x of k) keys.add(x);
    }
    plan = new PayloadFields([...keys]);
    this.plans.set(rules, plan);
    this.lastPlan = { rules, plan };
    return plan;
  }

  /**
   * A rule with a cooldown or rate limit in a cluster: claims the firing in the database first.
   * When the database cannot answer, the rule's own in-memory gate decides (a firing too many
   * across hubs beats a remediation lost), logged at most once a minute.
   */
  private async fireShared(r: LiveRule, ev: TriggerEvent, receivedMs: number): Promise<void> {
    let ok: boolean;
    try {
      ok = await this.deps.sharedGates!.tryFire(`${r.tenant}/${r.def.ref}@${r.createdMs}`, { cooldownMs: r.def.cooldownMs, rateLimit: r.def.rateLimit });
    } catch (err) {
      const now = Date.now();
      if (now - this.lastGateErrorLog >= 60_000) {
        this.lastGateErrorLog = now;
        this.deps.log.warn({ rule: r.def.ref, tenant: r.tenant, err: (err as Error).message }, 'cannot check the cluster-wide cooldown/rate limit of a rule: this hub\'s own gate decides until the database answers');
      }
      ok = r.gate.tryFire();
    }
    if (!ok) { r.stats.suppressed++; this.totals.suppressed++; return; }
    r.stats.fired++;
    this.totals.fired++;
    await this.fire(r, ev, receivedMs).catch((err) => this.fireError(r, ev, err));
  }

  private fireError(r: LiveRule, ev: TriggerEvent, err: unknown): void {
    r.stats.errors++;
    this.totals.errors++;
    // A broken rule fed by a busy trigger must not flood the log: one line per second at most.
    const now = Date.now();
    if (now - this.lastErrorLog < 1000) { this.suppressedErrorLogs++; return; }
    this.deps.log.warn({ rule: r.def.ref, tenant: r.tenant, eventId: ev.id, err: (err as Error).message, suppressedLogs: this.suppressedErrorLogs }, 'rule fired but its action could not be requested');
    this.lastErrorLog = now;
    this.suppressedErrorLogs = 0;
  }

  private async fire(r: LiveRule, ev: TriggerEvent, receivedMs?: number): Promise<void> {
    // Rights changed since the last check (a deactivation a moment ago): check before acting.
    if (this.checkedGen < this.authGen) await this.checkAuthors();
    if (r.blocked) { r.stats.fired--; r.stats.suppressed++; this.totals.fired--; this.totals.suppressed++; return; }
    const action = this.deps.packs.action(r.tenant, r.def.action.ref);
    if (!action) throw new TrellisError('TRELLIS_E_NOT_FOUND', `action ${r.def.action.ref} is not installed in tenant ${r.tenant}`);
    const agentIds = await this.targets(r.tenant, r.def, ev);
    if (agentIds.length === 0) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no online agent for target ${describeTarget(r.def)}`);
    const ref = r.def.ref;
    // References resolve as the rule (never an administrator: no --private keys); a secret its
    // own parameters name needs its author to hold secrets:use, also when the key became one later.
    const used = new Set<string>();
    const kvCaller = { username: `rule:${ref}`, isAdmin: false, onSecret: secretGuard({ who: `rule ${ref} (author ${r.author})`, mayUse: r.secretsOk, callerKeys: r.paramKeys, used }) };
    await this.deps.executions.request({
      tenant: r.tenant, action, agentIds, parameters: r.compiled.parameters(ev), requestedBy: `rule:${ref}`, rule: ref,
      triggerEventId: ev.id, dedupKey: (agentId) => `${ref}|${ev.id}|${agentId}`, kvCaller, triggeredAtMs: receivedMs,
    });
    if (used.size > 0) {
      this.deps.audit?.record({
        timeMs: Date.now(), actor: `rule:${ref}`, tenant: r.tenant, method: 'rules/Fire', target: `rule:${ref}`.slice(0, 256), result: 'ok',
        sourceAddress: '', detail: `author ${r.author}; event ${ev.id.slice(0, 64)}; secrets used: ${[...used].sort().join(', ')}`.slice(0, 600),
      });
    }
  }

  /** The agents a hub rule targets for this event (in the rule's tenant, not revoked). */
  async targets(tenant: string, def: RuleDef, ev: TriggerEvent): Promise<string[]> {
    const t = def.target;
    if (t.kind === 'local') return [];
    if (t.kind === 'agent') {
      const id = String(renderTemplate(t.agent, { trigger: ev }) ?? '');
      if (!id) return [];
      const a = this.deps.agents.peek(id); // per event: read in place, no copy
      return a && a.tenant === tenant && !a.revoked ? [a.id] : [];
    }
    return (await this.deps.agents.list({ tenant, selector: targetSelector(t) })).filter((a) => a.online && !a.revoked).map((a) => a.id);
  }

  // ---------------------------------------------------------------- edge rules

  /** Enabled edge rules of a tenant (hub/agentconfig filters them per agent). */
  edgeRules(tenant: string): readonly LiveRule[] {
    return this.edge.get(tenant) ?? [];
  }

  /**
   * Counters an agent reported for the edge rules it runs (absolute since its start, with a boot
   * id). Only what is new since its last report of the same boot is added to the rule's counters
   * (MATCHED/FIRED/SUPPRESSED in `rules list`), so a re-sent or repeated report adds nothing and
   * an agent restart does not lose counts. Reports are data from an agent: only rules the hub sent
   * to that agent (`sent`) count, at most MAX_EDGE_REPORT entries, each value bounded.
   */
  edgeCounts(tenant: string, agentId: string, boot: string, entries: readonly { rule: string; matched: number; fired: number; suppressed: number }[], sent: (ref: string) => boolean): number {
    if (!boot || boot.length > 64) return 0;
    let last = this.edgeReports.get(agentId);
    if (!last || last.boot !== boot) this.edgeReports.set(agentId, (last = { boot, counts: new Map() }));
    let applied = 0;
    for (const e of entries.slice(0, MAX_EDGE_REPORT)) {
      const ref = String(e.rule ?? '').slice(0, 130);
      const live = this.all.get(docId(tenant, ref));
      if (!live || live.def.target.kind !== 'local' || !sent(ref)) continue;
      const now = { matched: bounded(e.matched), fired: bounded(e.fired), suppressed: bounded(e.suppressed) };
      const before = last.counts.get(ref) ?? { matched: 0, fired: 0, suppressed: 0 };
      live.stats.matched += Math.max(0, now.matched - before.matched);
      live.stats.fired += Math.max(0, now.fired - before.fired);
      live.stats.suppressed += Math.max(0, now.suppressed - before.suppressed);
      last.counts.set(ref, { matched: Math.max(now.matched, before.matched), fired: Math.max(now.fired, before.fired), suppressed: Math.max(now.suppressed, before.suppressed) });
      applied++;
    }
    return applied;
  }

  // ---------------------------------------------------------------- admin

  list(tenant: string, filter: { pack?: string; trigger?: string } = {}): LiveRule[] {
    return [...this.all.values()]
      .filter((r) => (tenant === '*' || r.tenant === tenant) && (!filter.pack || r.def.pack === filter.pack) && (!filter.trigger || r.def.trigger === filter.trigger))
      .sort((a, b) => (a.tenant + a.def.ref < b.tenant + b.def.ref ? -1 : 1));
  }

  get(tenant: string, ref: string): LiveRule {
    const r = this.all.get(docId(tenant, ref));
    if (!r) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no rule ${ref.slice(0, 130)} in tenant ${tenant}`);
    return r;
  }

  async create(tenant: string, def: RuleDef, o: { by: string; replace?: boolean }): Promise<LiveRule> {
    if (def.pack || !RULE_NAME_RE.test(def.ref)) throw new TrellisError('TRELLIS_E_RULE_INVALID', `rule name "${def.ref.slice(0, 80)}": 1-63 lowercase letters, digits, _ and -; pack rules come with their pack`);
    if (!this.deps.packs.action(tenant, def.action.ref)) {
      throw new TrellisError('TRELLIS_E_RULE_INVALID', `action ${def.action.ref}: no such action in tenant ${tenant} (install its pack first: trellis packs install DIR)`);
    }
    const id = docId(tenant, def.ref);
    if (!o.replace && this.docs.get(id)?.def) throw new TrellisError('TRELLIS_E_ALREADY_EXISTS', `rule ${def.ref} exists; pass --replace to change it`);
    if (!this.docs.has(id) && [...this.docs.values()].filter((d) => d.tenant === tenant).length >= MAX_RULES_PER_TENANT) {
      throw new TrellisError('TRELLIS_E_TOO_LARGE', `at most ${MAX_RULES_PER_TENANT} rules per tenant`);
    }
    const doc: RuleDoc = { id, tenant, ref: def.ref, def, createdMs: this.now(), createdBy: o.by };
    await this.deps.store.put('rules', doc);
    this.docs.set(id, doc);
    this.rebuild(tenant);
    return this.get(tenant, def.ref);
  }

  /**
   * Enabled rules of a tenant, outside pack `exceptPack`, whose action `calls` matches: who would
   * be left calling nothing if those actions went away.
   */
  callers(tenant: string, calls: (actionRef: string) => boolean, exceptPack = ''): LiveRule[] {
    return this.list(tenant).filter((r) => r.def.enabled && (!exceptPack || r.def.pack !== exceptPack) && calls(r.def.action.ref));
  }

  async setEnabled(tenant: string, ref: string, enabled: boolean, by: string): Promise<LiveRule> {
    const r = this.get(tenant, ref);
    if (enabled && !this.deps.packs.action(tenant, r.def.action.ref)) {
      throw new TrellisError('TRELLIS_E_RULE_INVALID', `rule ${ref}: action ${r.def.action.ref} is not installed in tenant ${tenant}: install its pack first, or change the rule (trellis rules create FILE --replace)`);
    }
    const id = docId(tenant, ref);
    const cur = this.docs.get(id);
    // Enabling a rule created directly makes the enabler its author (they were checked for it);
    // a pack rule keeps acting for its pack's installer.
    const doc: RuleDoc = cur?.def
      ? { ...cur, def: { ...cur.def, enabled }, ...(enabled ? { enabledBy: by } : {}) }
      : { id, tenant, ref, enabled, createdMs: cur?.createdMs ?? this.now(), createdBy: cur?.createdBy ?? by };
    await this.deps.store.put('rules', doc);
    this.docs.set(id, doc);
    this.rebuild(r.tenant);
    return this.get(tenant, ref);
  }

  async delete(tenant: string, ref: string): Promise<void> {
    const r = this.get(tenant, ref);
    if (r.def.pack) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `rule ${ref} comes with pack ${r.def.pack}: disable it, or remove the pack`);
    await this.deps.store.delete('rules', docId(tenant, ref));
    this.docs.delete(docId(tenant, ref));
    this.rebuild(tenant);
  }

  /** Does the rule match, and what would run where? Changes nothing, fires nothing. */
  async test(tenant: string, def: RuleDef, ev: TriggerEvent): Promise<{ matched: boolean; reasons: string[]; parameters: Record<string, unknown>; agents: string[]; warnings: string[] }> {
    const c = compileRule(def, () => this.now());
    const { matched, reasons } = c.explain(ev);
    if (def.trigger !== ev.type) reasons.unshift(`trigger type: the rule wants ${def.trigger}, the event is ${ev.type || '(none)'}`);
    const ok = matched && def.trigger === ev.type;
    const warnings: string[] = [];
    if (!this.deps.packs.action(tenant, def.action.ref)) {
      warnings.push(`action ${def.action.ref} is not installed in tenant ${tenant}: the rule would run nothing (see trellis actions list)`);
    }
    return { matched: ok, reasons, parameters: c.parameters(ev), agents: ok ? await this.targets(tenant, def, ev) : [], warnings };
  }
}
