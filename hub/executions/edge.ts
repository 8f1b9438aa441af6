/**
 * Executions an edge rule ran on the agent itself arrive as `trellis.execution` events (through
 * the agent's durable outbox, at least once). This turns one payload into a history record,
 * checking every field: the agent is trusted for its own executions only, not for their shape.
 */
import { FINAL_STATUSES, type EdgeExecutionPayload, type ExecutionStatus } from '../../common/automation/types.js';
import type { ExecutionRecord } from './types.js';

const ID_RE = /^[0-9a-z_-]{1,64}$/;
const STATUSES = new Set<string>(['requested', 'scheduled', 'running', ...FINAL_STATUSES]);
export const EDGE_OUTPUT_MAX = 64 * 1024;
const PARAMETERS_MAX = 256 * 1024;
const ERROR_MAX = 4096;

const str = (v: unknown, max: number) => (typeof v === 'string' ? v.slice(0, max) : '');
const num = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v : 0);

/** The record and output of an edge execution, or undefined when the payload is unusable. */
export function edgeRecord(agentId: string, tenant: string, p: EdgeExecutionPayload): { rec: ExecutionRecord; output: Buffer } | undefined {
  if (!p || typeof p !== 'object') return undefined;
  const id = typeof p.executionId === 'string' ? p.executionId.toLowerCase() : '';
  if (!ID_RE.test(id) || !STATUSES.has(p.status)) return undefined;
  const params = p.parameters && typeof p.parameters === 'object' && !Array.isArray(p.parameters) ? p.parameters : {};
  const output = Buffer.from(str(p.output, EDGE_OUTPUT_MAX), 'utf8');
  const rec: ExecutionRecord = {
    id, tenant, action: str(p.action, 192), agentId, status: p.status as ExecutionStatus, exitCode: num(p.exitCode), error: str(p.error, ERROR_MAX),
    requestedBy: `agent:${agentId}`, rule: str(p.rule, 192), triggerEventId: str(p.triggerEventId, 64),
    parameters: JSON.stringify(params).length <= PARAMETERS_MAX ? params : {},
    requestedMs: num(p.startedMs) || Date.now(), startedMs: num(p.startedMs), finishedMs: num(p.finishedMs), edge: true,
    outputBytes: output.length, outputTruncated: !!p.outputTruncated,
  };
  return { rec, output };
}
