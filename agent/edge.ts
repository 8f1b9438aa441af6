/**
 * Edge rules: rules with `target: local`, streamed by the hub in the agent's config and run
 * here, on the agent, against its own sensor events, so a local remediation works while the hub
 * is unreachable. The last config is kept in DATA/edge-config.json (0600) with its datastore
 * values still sealed to this agent's key; a value is opened in memory just before the action
 * that needs it runs, and never written in clear.
 *
 * Each run is reported upstream as a `trellis.execution` event through the durable outbox
 * (at least once; the hub records it in the execution history and de-duplicates by event id).
 *
 * The rules engine (common/rules: zod schemas, RE2, templates) is imported with the first config
 * that holds a rule: an agent without edge rules never loads it.
 */
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import type { KeyObject } from 'node:crypto';
import { ulidFactory } from '../common/ids.js';
import { openSealed, sealAad } from '../certs/index.js';
import type { CompiledRule, RateGate, RenderedAction, Ref } from '../common/rules/index.js';
import { maskText } from '../common/mask.js';
import { atomicWriteFile } from '../common/fsutil.js';
import { TrellisError } from '../common/errors.js';
import { EDGE_EXECUTION_TRIGGER, type ActionDef, type EdgeExecutionPayload, type ExecutionStatus, type RuleDef, type TriggerEvent } from '../common/automation/types.js';
import type { Logger } from '../common/log.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

export const EDGE_CONFIG_FILE = 'edge-config.json';
/** Most rules one heartbeat reports counters for (the hub reads no more). */
export const MAX_REPORTED = 256;
const OUTPUT_CAP = 64 * 1024;

/** What the agent keeps on disk: the config as received (values sealed) and who it was sealed for. */
interface StoredConfig {
  agentId: string;
  tenant: string;
  version: string;
  sensors: Array<{ name: string; kind: string; trigger: string; intervalMs: number; config: unknown }>;
  rules: Array<{ name: string; trigger: string; def: RuleDef; action: ActionDef }>;
  sealedSecrets: Record<string, string>;
}

interface EdgeRule { def: RuleDef; action: ActionDef; compiled: CompiledRule; gate: RateGate }

type RulesEngine = typeof import('../common/rules/index.js');

/** Result of a local run, as the runner reports it (output already masked by the runner). */
export interface LocalRunResult { status: ExecutionStatus; exitCode: number; error: string; startedMs: number; finishedMs: number; output: Buffer; outputTruncated: boolean }
export type LocalRunner = (executionId: string, action: ActionDef, rendered: RenderedAction) => Promise<LocalRunResult>;

export interface EdgeOptions {
  dataDir: string;
  log: Logger;
  privateKey: () => KeyObject;
  run: LocalRunner;
  /** Sends events upstream through the outbox. */
  publish: (events: T.Event[]) => void;
  now?: () => number;
}

export class EdgeRules {
  private config?: StoredConfig;
  private byTrigger = new Map<string, EdgeRule[]>();
  stats = { matched: 0, fired: 0, suppressed: 0, errors: 0 };
  /** Per rule since this agent started, reported to the hub in heartbeats (report()). */
  private readonly perRule = new Map<string, { matched: number; fired: number; suppressed: number }>();
  /** Changes at every start: the hub adds only what is new within one boot. */
  private readonly ulid = ulidFactory();
  private readonly boot = this.ulid().toLowerCase();
  /** common/rules, once a config has a rule. */
  private engine?: RulesEngine;

  constructor(private readonly opts: EdgeOptions) {}

  get path(): string { return join(this.opts.dataDir, EDGE_CONFIG_FILE); }
  get version(): string { return this.config?.version ?? ''; }
  /** Who the saved config was sealed for (known before the hub welcomes this agent). */
  get agentId(): string { return this.config?.agentId ?? ''; }
  get tenant(): string { return this.config?.tenant ?? ''; }
  get sensors(): StoredConfig['sensors'] { return this.config?.sensors ?? []; }
  get ruleNames(): string[] { return (this.config?.rules ?? []).map((r) => r.name); }

  /** Loads the last config saved (start-up, possibly with the hub down). A bad file is logged and ignored. */
  async load(): Promise<void> {
    let text: string;
    try { text = readFileSync(this.path, 'utf8'); } catch { return; }
    try {
      const c = JSON.parse(text) as StoredConfig;
      await this.loadEngine(c);
      this.install(c);
      this.opts.log.info({ version: this.version, rules: this.ruleNames.length }, 'edge config loaded from disk');
    } catch (err) {
      this.opts.log.error({ err: (err as Error).message, file: this.path }, 'edge config file unreadable; waiting for the hub to send a new one');
    }
  }

  /** Applies (and saves) a config from the hub. Throws with a message for the ConfigAck. */
  async apply(agentId: string, tenant: string, c: T.AgentConfig__Output): Promise<void> {
    const stored: StoredConfig = {
      agentId, tenant, version: c.version,
      sensors: c.sensors.map((s) => ({ name: s.name, kind: s.kind, trigger: s.trigger, intervalMs: Number(s.intervalMs), config: parseJson(s.configJson, `sensor ${s.name}`) })),
      rules: c.rules.map((r) => ({ name: r.name, trigger: r.trigger, def: parseJson(r.definitionJson, `rule ${r.name}`) as RuleDef, action: parseJson(r.actionJson, `rule ${r.name} action`) as ActionDef })),
      sealedSecrets: { ...c.sealedSecrets },
    };
    await this.loadEngine(stored);
    const compiled = this.compile(stored); // a config that does not compile is refused before it is saved
    await atomicWriteFile(this.path, JSON.stringify(stored), { mode: 0o600 });
    this.config = stored;
    this.byTrigger = compiled;
    this.opts.log.info({ version: c.version, rules: stored.rules.length, sensors: stored.sensors.length, values: Object.keys(stored.sealedSecrets).length }, 'edge config applied');
  }

  private install(c: StoredConfig): void {
    this.byTrigger = this.compile(c);
    this.config = c;
  }

  /** Imports the rules engine if `c` has rules and it is not loaded yet. */
  private async loadEngine(c: StoredConfig): Promise<void> {
    if (!this.engine && Array.isArray(c?.rules) && c.rules.length > 0) this.engine = await import('../common/rules/index.js');
  }

  private compile(c: StoredConfig): Map<string, EdgeRule[]> {
    const byTrigger = new Map<string, EdgeRule[]>();
    if (c.rules.length === 0) return byTrigger;
    const { compileRule, RateGate } = this.engine!;
    const old = new Map<string, EdgeRule>();
    for (const list of this.byTrigger.values()) for (const r of list) old.set(r.def.ref, r);
    for (const r of c.rules) {
      const prev = old.get(r.def.ref);
      const gate = prev && JSON.stringify(prev.def) === JSON.stringify(r.def) ? prev.gate : new RateGate({ cooldownMs: r.def.cooldownMs, rateLimit: r.def.rateLimit }, () => this.now());
      const rule: EdgeRule = { def: r.def, action: r.action, compiled: compileRule(r.def, () => this.now()), gate };
      const list = byTrigger.get(r.def.trigger) ?? [];
      list.push(rule);
      byTrigger.set(r.def.trigger, list);
    }
    return byTrigger;
  }

  private now(): number { return this.opts.now?.() ?? Date.now(); }

  /** Matches fresh local events; fired actions run in the background. */
  onEvents(events: readonly TriggerEvent[]): void {
    if (this.byTrigger.size === 0) return;
    for (const ev of events) {
      if (ev.type === EDGE_EXECUTION_TRIGGER) continue; // never feed our own reports back
      const rules = this.byTrigger.get(ev.type);
      if (!rules) continue;
      for (const r of rules) {
        let hit = false;
        try { hit = r.compiled.match(ev); } catch { hit = false; }
        if (!hit) continue;
        this.stats.matched++;
        let c = this.perRule.get(r.def.ref);
        if (!c) this.perRule.set(r.def.ref, (c = { matched: 0, fired: 0, suppressed: 0 }));
        c.matched++;
        if (!r.gate.tryFire()) { this.stats.suppressed++; c.suppressed++; continue; }
        this.stats.fired++;
        c.fired++;
        void this.fire(r, ev);
      }
    }
  }

  /**
   * The counters for a heartbeat: every rule that matched since this agent started (absolute,
   * with the boot id), at most MAX_REPORTED rules; nothing when no rule matched yet.
   */
  report(): { edgeBoot?: string; edgeRules?: T.EdgeRuleCounts[] } {
    if (this.perRule.size === 0) return {};
    const edgeRules = [...this.perRule].slice(0, MAX_REPORTED).map(([rule, c]) => ({ rule, ...c }));
    return { edgeBoot: this.boot, edgeRules };
  }

  /** Opens one referenced value, in memory, for this run only. */
  private open(ref: Ref): { value: string; secret: boolean } | undefined {
    const c = this.config!;
    const k = `${ref.kind}:${ref.key}`;
    const sealed = c.sealedSecrets[k];
    if (!sealed) throw new TrellisError('TRELLIS_E_SECRET_INVALID', `the hub sent no value for {{ ${ref.kind}.${ref.key} }} (missing in the datastore, or not readable)`);
    const value = openSealed(sealed, this.opts.privateKey(), sealAad(c.agentId, 'secret', `${c.tenant}/${k}`)).toString('utf8');
    return { value, secret: ref.kind === 'secret' };
  }

  private async fire(r: EdgeRule, ev: TriggerEvent): Promise<void> {
    const executionId = this.ulid().toLowerCase();
    const { historyParameters, renderAction } = this.engine!; // loaded: r was compiled with it
    const parameters = r.compiled.parameters(ev);
    const base: Omit<EdgeExecutionPayload, 'status' | 'exitCode' | 'error' | 'startedMs' | 'finishedMs' | 'output' | 'outputTruncated'> = {
      executionId, rule: r.def.ref, action: r.action.ref, triggerEventId: ev.id, parameters: historyParameters(r.action, parameters),
    };
    // The run's masker: every secret value this run opened (and literal values of secret parameters).
    const opened: string[] = Object.entries(parameters).filter(([k, v]) => r.action.parameters?.[k]?.secret && typeof v === 'string').map(([, v]) => v as string);
    let result: LocalRunResult;
    try {
      const rendered = renderAction(r.action, parameters, {
        resolve: (ref) => { const o = this.open(ref); if (o?.secret) opened.push(o.value); return o; },
      });
      opened.push(...rendered.secretValues);
      this.opts.log.info({ executionId, rule: r.def.ref, action: r.action.ref, eventId: ev.id }, 'edge rule fired');
      result = await this.opts.run(executionId, r.action, rendered);
    } catch (err) {
      this.stats.errors++;
      const now = this.now();
      const message = maskText((err as Error).message, opened);
      result = { status: 'error', exitCode: -1, error: message, startedMs: now, finishedMs: now, output: Buffer.alloc(0), outputTruncated: false };
      this.opts.log.warn({ executionId, rule: r.def.ref, err: message }, 'edge rule could not run its action');
    }
    result = { ...result, error: maskText(result.error, opened) };
    opened.length = 0;
    const output = result.output.subarray(0, OUTPUT_CAP);
    const payload: EdgeExecutionPayload = {
      ...base, status: result.status, exitCode: result.exitCode, error: result.error, startedMs: result.startedMs, finishedMs: result.finishedMs,
      output: output.toString('utf8'), outputTruncated: result.outputTruncated || result.output.length > OUTPUT_CAP,
    };
    this.opts.publish([{ id: this.ulid(), type: EDGE_EXECUTION_TRIGGER, payloadJson: Buffer.from(JSON.stringify(payload)), timeMs: this.now() }]);
  }
}

function parseJson(b: Buffer | Uint8Array, what: string): unknown {
  try {
    return JSON.parse(Buffer.from(b).toString('utf8'));
  } catch {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${what}: not valid JSON`);
  }
}
