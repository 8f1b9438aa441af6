/**
 * The shared contract of the automation layer (packs, actions, sensors, rules, executions),
 * used by the hub, the agent (edge rules) and the CLI. Plain JSON-serialisable data: a value of
 * these types is what the hub stores, what `definition_json` fields carry on the wire, and what
 * the agent keeps in its edge config file.
 *
 * Names: packs are `[a-z0-9][a-z0-9_-]{0,62}`; actions, sensors and rules of a pack are referred
 * to as "<pack>.<name>" (their `ref`). Rules created outside a pack have `pack: ''` and their
 * ref is their name. Trigger types are dotted names: `core.cpu`, `webhook.deploy`, `mypack.x`.
 */

/** JSON-schema-like parameter declaration of an action. */
export interface ParamSpec {
  type: 'string' | 'integer' | 'number' | 'boolean' | 'object' | 'array';
  description?: string;
  required?: boolean;
  default?: unknown;
  enum?: unknown[];
  /** The value is sensitive: it may only reach the process by env, stdin or an HTTP header. */
  secret?: boolean;
}

export type Runner = 'command' | 'script' | 'http';

export interface HttpActionSpec {
  method: string; // GET, POST, ...
  url: string; // template
  headers: Record<string, string>; // templates
  body?: string; // template
  insecure?: boolean;
  successStatus?: number[]; // default: any 2xx
}

/** An action, validated (durations already in ms). Fields holding templates say so. */
export interface ActionDef {
  ref: string; // "<pack>.<name>"
  pack: string;
  name: string;
  description: string;
  runner: Runner;
  /** runner command: argv templates, one element per argument (no shell). */
  command?: string[];
  /** runner command with `shell: true`: one string run by /bin/sh -c (template). */
  shell?: boolean;
  /** runner script: the script file path inside the pack and its body (UTF-8 text). */
  script?: { path: string; body: string };
  /** runner script: argument templates. */
  args?: string[];
  http?: HttpActionSpec;
  parameters: Record<string, ParamSpec>;
  timeoutMs: number; // default 60_000
  env: Record<string, string>; // templates
  /** Template for the process's stdin (the way to hand a secret to a tool that reads stdin). */
  stdin?: string;
  cwd?: string;
  runAs?: string;
}

export type SensorKind = 'cpu' | 'memory' | 'disk' | 'process' | 'file' | 'log' | 'http' | 'command';

/** Which agents: every agent of the tenant (`{}`), one agent, or those matching labels. */
export interface AgentSelector { agent?: string; selector?: Record<string, string> }

export interface SensorDef {
  ref: string; // "<pack>.<name>"
  pack: string;
  name: string;
  description: string;
  kind: SensorKind;
  /** Trigger type of its events; defaults to `core.<kind>`. */
  trigger: string;
  intervalMs: number;
  config: Record<string, unknown>; // checked against the kind's config schema
  /** Where it runs; default every agent of the tenant. */
  on: AgentSelector;
}

export type SearchCondition = 'any' | 'all' | 'any2any' | 'all2any';

/** One criterion: `path` into the event (`trigger.payload.a.b`, `trigger.type`, `trigger.agent`). */
export interface Criterion {
  path: string;
  /** Operator name (StackStorm's, see common/rules/criteria.ts), e.g. equals, regex, timediff_lt. */
  type: string;
  pattern?: unknown;
  /**
   * For `search`: how list items and nested criteria combine (StackStorm's): `any` some item
   * matches every criterion, `all` every item matches every criterion, `any2any` some item
   * matches some criterion, `all2any` every item matches some criterion.
   */
  condition?: SearchCondition;
}

export type RuleTarget =
  | { kind: 'local' } // edge rule: streamed to the agents that emit its trigger, runs there
  | { kind: 'agent'; agent: string } // template, e.g. "{{ trigger.agent }}"
  // `selector`: k=v pairs (all must hold); `expr`: a selector expression (common/selector.ts) instead
  | { kind: 'selector'; selector: Record<string, string>; expr?: string };

export interface RuleDef {
  ref: string; // "<pack>.<name>" or "<name>"
  pack: string; // '' when created directly
  name: string;
  description: string;
  enabled: boolean;
  trigger: string;
  criteria: Criterion[];
  action: {
    ref: string; // "<pack>.<action>"
    /** Templates over the event (`{{ trigger.payload.x }}`) and references (`{{ kv.x }}`, `{{ secret.x }}`). */
    parameters: Record<string, unknown>;
  };
  target: RuleTarget;
  /** After firing, ignore further matches for this long (per agent for edge rules). 0 = none. */
  cooldownMs: number;
  /** At most `count` firings per `perMs` (sliding window); excess matches are counted as suppressed. */
  rateLimit?: { count: number; perMs: number };
  /** For edge rules: which agents get it (default: every agent of the tenant). */
  on?: AgentSelector;
}

export interface PackDef {
  name: string;
  version: string;
  description: string;
  actions: ActionDef[];
  sensors: SensorDef[];
  rules: RuleDef[];
}

/** An event as rules see it (the `trigger` object in templates and criteria paths). */
export interface TriggerEvent {
  id: string;
  type: string;
  payload: unknown;
  agent: string; // '' for hub-originated events (webhooks)
  tenant: string;
  timeMs: number;
}

export type ExecutionStatus =
  | 'requested' | 'scheduled' | 'running'
  | 'succeeded' | 'failed' | 'timeout' | 'canceled' | 'abandoned' | 'error';

export const FINAL_STATUSES: ReadonlySet<ExecutionStatus> = new Set(['succeeded', 'failed', 'timeout', 'canceled', 'abandoned', 'error']);

/**
 * Payload of the `trellis.execution` event an agent emits (through its durable outbox) for an
 * action an edge rule ran locally; the hub records it in the execution history.
 */
export interface EdgeExecutionPayload {
  executionId: string;
  rule: string;
  action: string;
  triggerEventId: string;
  parameters: Record<string, unknown>; // references, never secret values
  status: ExecutionStatus;
  exitCode: number;
  error: string;
  startedMs: number;
  finishedMs: number;
  output: string; // masked, capped at 64 KiB
  outputTruncated: boolean;
}
export const EDGE_EXECUTION_TRIGGER = 'trellis.execution';
