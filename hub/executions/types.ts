/** The public shapes of hub/executions: records, updates, requests and options. */
import type { ActionDef, ExecutionStatus } from '../../common/automation/types.js';
import type { Logger } from '../../common/log.js';
import { AGENT_CONCURRENT_ACTIONS } from '../../common/automation/request.js';

export interface ExecutionRecord {
  id: string;
  tenant: string;
  /** "pack.action"; ad-hoc runs are "core.command". */
  action: string;
  agentId: string;
  status: ExecutionStatus;
  exitCode: number;
  error: string;
  /** A user, "rule:<name>", "webhook:<name>" or "agent:<id>" (edge rule). */
  requestedBy: string;
  rule: string;
  triggerEventId: string;
  /** As given: references, never secret values (literal values of `secret` parameters are redacted). */
  parameters: Record<string, unknown>;
  requestedMs: number;
  startedMs: number;
  finishedMs: number;
  edge: boolean;
  /** Output bytes received from the agent (history keeps at most `maxOutputBytes` of them). */
  outputBytes: number;
  /** More output was received than history keeps. */
  outputTruncated: boolean;
}

export type ExecutionUpdate =
  | { kind: 'state'; record: ExecutionRecord }
  | {
    kind: 'output'; tenant: string; executionId: string; agentId: string; stream: 'STDOUT' | 'STDERR'; data: Buffer;
    /** Bytes of this execution's output received before this chunk (followers de-duplicate by it). */
    offset?: number;
  };

/** Who resolves `{{ kv.x }}` / `{{ secret.x }}` references: private keys are visible to their owner and admins only. */
export interface KvRequester {
  username: string;
  isAdmin: boolean;
  /**
   * Called for every secret a run opens, before its value is used (hub/rights secretGuard):
   * records the key name for the audit log; throws to refuse a secret the caller may not use.
   */
  onSecret?: (key: string) => void;
}

export interface ExecuteRequest {
  tenant: string;
  action: ActionDef;
  agentIds: string[];
  parameters: Record<string, unknown>;
  requestedBy: string;
  rule?: string;
  triggerEventId?: string;
  /**
   * Idempotency: a second request with the same key (e.g. `${rule}|${eventId}|${agentId}`)
   * returns the first execution instead of running again, also after a hub restart (keys of
   * the executions history still holds are rebuilt at start).
   */
  dedupKey?: (agentId: string) => string;
  /** Whose view of the datastore resolves references. @default { username: requestedBy, isAdmin: false } */
  kvCaller?: KvRequester;
  /** When the hub received the triggering event (rules), for the event→action latency (hub/metrics). */
  triggeredAtMs?: number;
}

/** An ad-hoc command (`trellis run -- CMD`): the built-in action `core.command`. */
export interface CommandRequest {
  tenant: string;
  agentIds: string[];
  argv: string[];
  /** Values may hold `{{ secret.X }}` / `{{ kv.X }}` (resolved in the tenant, sealed per agent). */
  env: Record<string, string>;
  cwd: string;
  timeoutMs: number;
  requestedBy: string;
  kvCaller?: KvRequester;
}

export interface ListFilter {
  action?: string;
  agentId?: string;
  status?: string;
  rule?: string;
  /** @default 50, at most 1000 */
  limit?: number;
  sinceMs?: number;
  /** Paging: only executions older than this one. */
  beforeId?: string;
}

/** Where a pack action is looked up (hub/packs), for re-runs. */
export interface ActionCatalog { action(tenant: string, ref: string): ActionDef | undefined }

/** Options as configured (hub.json `executions`), durations already in ms. */
export interface ExecutionsOptions {
  /** DATA/executions. */
  dir: string;
  log: Logger;
  /** Executions scheduled or running on one agent at once; more wait in a FIFO queue. @default 8 */
  perAgentConcurrency?: number;
  /** Drop history segments whose last write is older than this. @default 30 days */
  maxAgeMs?: number;
  /** Keep about this many executions (whole old segments are dropped beyond it). @default 100,000 */
  maxCount?: number;
  /** Output kept in history per execution. @default 1 MiB */
  maxOutputBytes?: number;
  /** A `requested` execution (agent offline or busy) waits this long, then fails with status error. @default 10 min */
  maxWaitMs?: number;
  /** An execution sent to an agent that reports no result within its timeout plus this is abandoned. @default 30 s */
  abandonGraceMs?: number;
  /** An agent that disconnects while running executions has this long to come back; then they are abandoned. @default 60 s */
  reconnectGraceMs?: number;
  /** Start a new segment once the current one is this large. @default 16 MiB */
  maxSegmentBytes?: number;
  /** Longest a record waits in memory before its batch is written. @default 100 */
  flushIntervalMs?: number;
  /** Admission of new executions (user runs, re-runs, rules): throws to refuse (hub/maintenance). @default admits all */
  admit?: (o: { requestedBy: string; rule?: string }) => void;
  /** Told when an ActionRequest went out to its agent, with when it was asked for (rules: the event's receipt). @default nothing */
  onDispatch?: (o: { rule: boolean; sinceMs: number; syncWaitMs?: number }) => void;
}

export type CompiledOptions = Required<ExecutionsOptions>;

/** Defaults applied, checked once; the caller's object is not changed. */
export function compileOptions(o: ExecutionsOptions): CompiledOptions {
  const c: CompiledOptions = {
    dir: o.dir, log: o.log,
    perAgentConcurrency: o.perAgentConcurrency ?? AGENT_CONCURRENT_ACTIONS,
    maxAgeMs: o.maxAgeMs ?? 30 * 86_400_000,
    maxCount: o.maxCount ?? 100_000,
    maxOutputBytes: o.maxOutputBytes ?? 1024 * 1024,
    maxWaitMs: o.maxWaitMs ?? 10 * 60_000,
    abandonGraceMs: o.abandonGraceMs ?? 30_000,
    reconnectGraceMs: o.reconnectGraceMs ?? 60_000,
    maxSegmentBytes: o.maxSegmentBytes ?? 16 * 1024 * 1024,
    flushIntervalMs: o.flushIntervalMs ?? 100,
    admit: o.admit ?? (() => undefined),
    onDispatch: o.onDispatch ?? (() => undefined),
  };
  for (const k of ['perAgentConcurrency', 'maxCount', 'maxSegmentBytes'] as const) {
    if (!Number.isInteger(c[k]) || c[k] < 1) throw new RangeError(`executions: ${k} must be a whole number of at least 1`);
  }
  return c;
}
