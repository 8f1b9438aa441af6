/**
 * What each agent runs by itself: the sensors of its tenant's packs and the edge rules
 * (target: local) that select it, with the actions they call and the datastore values they
 * reference, each sealed to that agent's certificate key (AAD
 * `agent:<id>|secret:<tenant>/<kind>:<key>`). Pushed after every (re)connection and whenever a
 * pack, an edge rule or a referenced value changes; the agent keeps the last config on disk,
 * secrets still sealed, so its edge rules keep working while the hub is unreachable.
 *
 * An agent receives only the values its own edge rules and their actions reference.
 */
import { createHash } from 'node:crypto';
import { sealFor, sealAad } from '../../certs/index.js';
import { findRefs, type Ref } from '../../common/rules/index.js';
import { agentMayPublish } from '../events/sources.js';
import type { ActionDef, AgentSelector, SensorDef } from '../../common/automation/types.js';
import type { Logger } from '../../common/log.js';
import type { AgentRegistry, AgentDoc } from '../agents/index.js';
import type { KvStore, KvDoc } from '../kv/index.js';
import type { RulesEngine, LiveRule } from '../rules/index.js';
import type { SentEdgeRule } from '../executions/edge.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

export interface ConfigPacks {
  sensors(tenant: string): SensorDef[];
  action(tenant: string, ref: string): ActionDef | undefined;
  on(ev: 'change', fn: (tenant: string) => void): unknown;
}

// Not an administrator: like a hub rule, an edge rule cannot use another user's --private key.
const SYSTEM = { username: 'system:agentconfig', isAdmin: false };

export function selects(on: AgentSelector | undefined, a: Pick<AgentDoc, 'id' | 'labels'>): boolean {
  if (!on) return true;
  if (on.agent && on.agent !== a.id) return false;
  for (const [k, v] of Object.entries(on.selector ?? {})) if (a.labels[k] !== v) return false;
  return true;
}

export const refKey = (r: Ref) => `${r.kind}:${r.key}`;

interface Pushed { version: string; refs: Set<string> }
const EMPTY: ReadonlySet<string> = new Set();
/** How long reports of an edge rule are accepted after it left an agent's config (it ran offline). */
const EDGE_SENT_KEEP_MS = 7 * 24 * 3_600_000;
type ValueCache = Map<string, { doc: KvDoc; value: string } | null>;

export class AgentConfigs {
  private readonly pushed = new Map<string, Pushed>();
  /** Per connected agent: the trigger types of the sensors in the config last computed for it. */
  private readonly sensorTriggers = new Map<string, Set<string>>();
  /**
   * Per agent: the edge rules the hub computed for it (kept across disconnections: an agent runs
   * its last config while offline and reports later), with when a rule left its config.
   * Entries that left more than EDGE_SENT_KEEP_MS ago are dropped.
   */
  private readonly edgeSent = new Map<string, Map<string, SentEdgeRule>>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  stats = { pushes: 0, skipped: 0, errors: 0 };

  constructor(private readonly deps: { agents: AgentRegistry; packs: ConfigPacks; rules: RulesEngine; kv: KvStore; log: Logger; debounceMs?: number }) {
    deps.packs.on('change', (tenant) => this.scheduleTenant(tenant));
    deps.rules.on('edge-change', (tenant: string) => this.scheduleTenant(tenant));
    deps.kv.onChange((c) => { if (c.scope === 'tenant') void this.onValueChanged(c.tenant, c.key); });
  }

  /** A (re)connected agent always gets its config: its certificate key may be new. */
  onAttach(agentId: string): void {
    this.pushed.delete(agentId);
    void this.push(agentId).catch((err) => this.failed(agentId, err));
  }

  onDetach(agentId: string): void {
    if (!this.deps.agents.link(agentId)) { this.pushed.delete(agentId); this.sensorTriggers.delete(agentId); }
  }

  /**
   * Computes which sensor triggers the agent may publish, before its stream is admitted (so
   * events it re-sends right after the welcome are judged against its current config). Every
   * later config computation refreshes it.
   */
  async prepareSources(agentId: string): Promise<void> {
    const agent = this.deps.agents.peek(agentId); // read only (frozen): no copy per connection
    if (!agent) return;
    this.sensorTriggers.set(agentId, new Set(this.sensors(agent).map((s) => s.trigger)));
    this.noteEdgeRules(agentId, this.edgeRulesFor(agent, false).map(({ rule, action }) => ({ rule, action: action.ref })));
  }

  /** What the hub sent this agent for one edge rule, to check its execution reports against. */
  sentEdgeRule(agentId: string, ruleRef: string): SentEdgeRule | undefined {
    return this.edgeSent.get(agentId)?.get(ruleRef);
  }

  private noteEdgeRules(agentId: string, now: Array<{ rule: LiveRule; action: string }>, at = Date.now()): void {
    const prev = this.edgeSent.get(agentId) ?? new Map<string, SentEdgeRule>();
    const next = new Map<string, SentEdgeRule>();
    for (const { rule, action } of now) next.set(rule.def.ref, { action, createdMs: rule.createdMs });
    for (const [ref, old] of prev) {
      if (next.has(ref)) {
        // Same action: still the rule it was. Another action: reports of the old one may still
        // arrive, but they name the old action and are refused — the narrower choice.
        continue;
      }
      const until = old.untilMs ?? at;
      if (at - until < EDGE_SENT_KEEP_MS) next.set(ref, { ...old, untilMs: until });
    }
    if (next.size) this.edgeSent.set(agentId, next);
    else this.edgeSent.delete(agentId);
  }

  /** The enabled edge rules that select this agent and whose action is installed. */
  private edgeRulesFor(agent: AgentDoc, warn = true): Array<{ rule: LiveRule; action: ActionDef }> {
    const out: Array<{ rule: LiveRule; action: ActionDef }> = [];
    for (const r of this.deps.rules.edgeRules(agent.tenant)) {
      if (!selects(r.def.on, agent)) continue;
      const action = this.deps.packs.action(agent.tenant, r.def.action.ref);
      if (!action) {
        if (warn) this.deps.log.warn({ rule: r.def.ref, action: r.def.action.ref, tenant: agent.tenant }, 'edge rule calls an action that is not installed; not sent');
        continue;
      }
      out.push({ rule: r, action });
    }
    return out;
  }

  /** The source policy for one agent's events (hub/events/sources.ts). */
  mayPublish(agentId: string, type: string): boolean {
    return agentMayPublish(type, this.sensorTriggers.get(agentId) ?? EMPTY);
  }

  private sensors(agent: AgentDoc): SensorDef[] {
    return this.deps.packs.sensors(agent.tenant).filter((s) => selects(s.on, agent));
  }

  onAck(agentId: string, ack: T.ConfigAck__Output): void {
    if (ack.error) this.deps.log.warn({ agentId, version: ack.version, error: ack.error.slice(0, 500) }, 'agent could not apply its config');
  }

  private failed(agentId: string, err: unknown): void {
    this.stats.errors++;
    this.deps.log.error({ agentId, err: (err as Error).message }, 'cannot push agent config');
  }

  private scheduleTenant(tenant: string): void {
    clearTimeout(this.timers.get(tenant));
    const t = setTimeout(() => {
      this.timers.delete(tenant);
      void this.pushTenant(tenant);
    }, this.deps.debounceMs ?? 20);
    t.unref();
    this.timers.set(tenant, t);
  }

  private async connectedAgents(tenant: string): Promise<string[]> {
    return (await this.deps.agents.list({ tenant })).filter((a) => this.deps.agents.link(a.id)).map((a) => a.id);
  }

  async pushTenant(tenant: string): Promise<void> {
    const cache: ValueCache = new Map();
    await Promise.all((await this.connectedAgents(tenant)).map((id) => this.push(id, cache).catch((err) => this.failed(id, err))));
  }

  /** Every connected agent gets its config again where it differs (another hub's changes, unknown scope). */
  async pushAll(): Promise<void> {
    const cache: ValueCache = new Map();
    await Promise.all(this.deps.agents.connectedLinks().map((l) => this.push(l.agentId, cache).catch((err) => this.failed(l.agentId, err))));
  }

  /** A datastore value changed: re-push to exactly the agents whose config references it. */
  private async onValueChanged(tenant: string, key: string): Promise<void> {
    const cache: ValueCache = new Map();
    const hit = (p: Pushed) => p.refs.has(`kv:${key}`) || p.refs.has(`secret:${key}`);
    const ids = [...this.pushed].filter(([, p]) => hit(p)).map(([id]) => id);
    await Promise.all(ids.map(async (id) => {
      const a = this.deps.agents.peek(id);
      if (a?.tenant === tenant) await this.push(id, cache).catch((err) => this.failed(id, err));
    }));
  }

  /** Computes the agent's config; sends it when it differs from what the agent has. */
  async push(agentId: string, cache: ValueCache = new Map()): Promise<boolean> {
    const link = this.deps.agents.link(agentId);
    const agent = this.deps.agents.peek(agentId); // read only (frozen): no copy per connection
    if (!link || !agent || agent.revoked) return false;
    const { config, refs, fingerprint } = await this.compute(agent, cache);
    const version = createHash('sha256').update(fingerprint).digest('hex').slice(0, 32);
    if (this.pushed.get(agentId)?.version === version) { this.stats.skipped++; return false; }
    const sealed: Record<string, string> = {};
    for (const [k, v] of config.values) {
      sealed[k] = sealFor(link.certPem, Buffer.from(v, 'utf8'), sealAad(agentId, 'secret', `${agent.tenant}/${k}`));
    }
    const msg: T.AgentConfig = { version, sensors: config.sensors, rules: config.rules, sealedSecrets: sealed };
    if (!link.send({ config: msg })) return false;
    this.pushed.set(agentId, { version, refs });
    this.stats.pushes++;
    return true;
  }

  private async compute(agent: AgentDoc, cache: ValueCache): Promise<{
    config: { sensors: T.SensorSpec[]; rules: T.EdgeRule[]; values: Map<string, string> }; refs: Set<string>; fingerprint: string;
  }> {
    const { tenant } = agent;
    const sensors: T.SensorSpec[] = this.sensors(agent).map((s) => ({
      name: s.ref, kind: s.kind, trigger: s.trigger, intervalMs: s.intervalMs, configJson: Buffer.from(JSON.stringify(s.config)),
    }));
    if (this.deps.agents.link(agent.id)) this.sensorTriggers.set(agent.id, new Set(sensors.map((s) => s.trigger ?? '')));
    const rules: T.EdgeRule[] = [];
    const refs = new Set<string>();
    // `{{ kv.x }}` in the parameters of a rule whose author may not use secrets: not sent when x is a secret (hub/rights).
    const plainOnly = new Set<string>();
    const parts: string[] = [JSON.stringify(sensors.map((s) => [s.name, s.kind, s.trigger, s.intervalMs, String(s.configJson)]))];
    const edge = this.edgeRulesFor(agent);
    this.noteEdgeRules(agent.id, edge.map(({ rule, action }) => ({ rule, action: action.ref })));
    for (const { rule: r, action } of edge) {
      for (const ref of [...findRefs(r.def.action.parameters), ...findRefs(action)]) refs.add(refKey(ref));
      if (!r.secretsOk) for (const key of r.paramKeys) plainOnly.add(`kv:${key}`);
      const def = JSON.stringify(r.def);
      const act = JSON.stringify(action);
      rules.push({ name: r.def.ref, trigger: r.def.trigger, definitionJson: Buffer.from(def), actionJson: Buffer.from(act) });
      parts.push(def, act);
    }
    const values = new Map<string, string>();
    for (const k of [...refs].sort()) {
      const sep = k.indexOf(':');
      const kind = k.slice(0, sep);
      const key = k.slice(sep + 1);
      let hit = cache.get(k);
      if (hit === undefined) {
        try {
          const doc = await this.deps.kv.getDoc(tenant, SYSTEM, key, 'tenant');
          if (kind === 'secret' && !doc.secret) throw new Error(`${key} is not a secret`);
          hit = { doc, value: await this.deps.kv.open(doc) };
        } catch (err) {
          this.deps.log.warn({ tenant, key, err: (err as Error).message }, 'an edge rule refers to a datastore value that cannot be read; not sent');
          hit = null;
        }
        cache.set(k, hit);
      }
      if (hit && hit.doc.secret && plainOnly.has(k)) {
        this.deps.log.warn({ tenant, key }, 'an edge rule whose author lacks secrets:use refers to a secret as {{ kv.x }}; not sent');
        hit = null;
      }
      if (!hit) { parts.push(`${k}@missing`); continue; }
      values.set(k, hit.value);
      parts.push(`${k}@${hit.doc.updatedAt}`);
    }
    return { config: { sensors, rules, values }, refs, fingerprint: parts.join('\n') };
  }

  close(): void {
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
  }
}
