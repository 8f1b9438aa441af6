/**
 * Executions an edge rule ran on the agent itself arrive as `trellis.execution` events (through
 * the agent's durable outbox, at least once). This turns one payload into a history record,
 * checking every field against what the hub itself decided (issue 10, finding 15): the rule must
 * be one the hub sent this agent in its edge config, calling the action it sent with it; the id
 * is a ULID; the times lie between the rule's creation (or the history's retention) and now
 * (plus clock skew); the status is a final one; output, parameters and error are bounded. The
 * agent is trusted for its own executions only, and only for their outcome.
 */
import { FINAL_STATUSES, type EdgeExecutionPayload, type ExecutionStatus } from '../../common/automation/types.js';
import type { ExecutionRecord } from './types.js';

/** What the hub sent one agent for one edge rule (hub/agentconfig keeps it). */
export interface SentEdgeRule {
  /** The action ref the rule calls, as sent. */
  action: string;
  /** When the rule was created (0: unknown, e.g. a pack rule). */
  createdMs: number;
  /** When a config without this rule was computed for the agent (undefined: still in it). */
  untilMs?: number;
}

/** A ULID as the agent makes it (`ulid().toLowerCase()`): 26 Crockford base32 characters. */
const ULID_RE = /^[0-7][0-9a-hjkmnp-tv-z]{25}$/;
const EVENT_ID_RE = /^[0-9A-Za-z_-]{1,64}$/;
/** How far an agent's clock may run ahead of the hub's. */
export const EDGE_CLOCK_SKEW_MS = 5 * 60_000;
export const EDGE_OUTPUT_MAX = 64 * 1024;
const PARAMETERS_MAX = 256 * 1024;
const ERROR_MAX = 4096;

export type EdgeCheck = { ok: true; rec: ExecutionRecord; output: Buffer } | { ok: false; reason: string };

const isTime = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v > 0;

/**
 * The record and output of an edge execution, or the reason it is refused. Pure: `rule` is what
 * the hub sent this agent for `p.rule` (undefined when it never did), `now` the hub's clock and
 * `maxAgeMs` the history's retention (an older report would be swept at once).
 */
export function edgeRecord(o: { agentId: string; tenant: string; p: EdgeExecutionPayload; rule: SentEdgeRule | undefined; now: number; maxAgeMs: number }): EdgeCheck {
  const { p, rule, now } = o;
  if (!p || typeof p !== 'object' || Array.isArray(p)) return { ok: false, reason: 'not an object' };
  const id = typeof p.executionId === 'string' ? p.executionId : '';
  if (!ULID_RE.test(id)) return { ok: false, reason: 'execution id is not a lowercase ULID' };
  if (!FINAL_STATUSES.has(p.status)) return { ok: false, reason: 'status is not a final status' };
  if (typeof p.rule !== 'string' || !rule) return { ok: false, reason: 'no such edge rule in the config the hub sent this agent' };
  if (p.action !== rule.action) return { ok: false, reason: 'the rule calls another action in the config the hub sent this agent' };
  if (typeof p.triggerEventId !== 'string' || !EVENT_ID_RE.test(p.triggerEventId)) return { ok: false, reason: 'bad trigger event id' };
  if (!isTime(p.startedMs) || !isTime(p.finishedMs) || p.finishedMs < p.startedMs) return { ok: false, reason: 'bad start or finish time' };
  if (p.finishedMs > now + EDGE_CLOCK_SKEW_MS) return { ok: false, reason: 'finish time in the future' };
  const earliest = Math.max(now - o.maxAgeMs, rule.createdMs ? rule.createdMs - EDGE_CLOCK_SKEW_MS : 0);
  if (p.startedMs < earliest) return { ok: false, reason: 'start time before the rule existed or older than the history keeps' };
  if (rule.untilMs !== undefined && p.startedMs > rule.untilMs + EDGE_CLOCK_SKEW_MS) return { ok: false, reason: 'started after the rule left the agent\'s config' };
  if (!Number.isSafeInteger(p.exitCode) || Math.abs(p.exitCode) > 2 ** 31) return { ok: false, reason: 'bad exit code' };
  if (typeof p.output !== 'string' || p.output.length > EDGE_OUTPUT_MAX) return { ok: false, reason: `output missing or over ${EDGE_OUTPUT_MAX} characters` };
  if (p.error !== undefined && typeof p.error !== 'string') return { ok: false, reason: 'bad error' };
  const params = p.parameters;
  if (!params || typeof params !== 'object' || Array.isArray(params) || JSON.stringify(params).length > PARAMETERS_MAX) return { ok: false, reason: 'parameters missing or too large' };
  const output = Buffer.from(p.output, 'utf8');
  const rec: ExecutionRecord = {
    id, tenant: o.tenant, action: rule.action, agentId: o.agentId, status: p.status as ExecutionStatus, exitCode: p.exitCode, error: (p.error ?? '').slice(0, ERROR_MAX),
    requestedBy: `agent:${o.agentId}`, rule: p.rule, triggerEventId: p.triggerEventId, parameters: params,
    requestedMs: p.startedMs, startedMs: p.startedMs, finishedMs: p.finishedMs, edge: true,
    outputBytes: output.length, outputTruncated: !!p.outputTruncated,
  };
  return { ok: true, rec, output };
}
