/**
 * Ad-hoc command runs: an execution per target agent, sent down the agent's stream, with
 * output and result routed back to whoever asked. An execution whose agent never answers is
 * marked abandoned after its timeout plus a grace period.
 */
import { ulid } from 'ulid';
import { sealFor, sealAad } from '../../certs/index.js';
import { TrellisError } from '../../common/errors.js';
import type { AgentRegistry } from '../agents/index.js';
import type { ActionOutput__Output } from '../../common/proto-gen/trellis/v1/ActionOutput.js';
import type { ActionResult__Output } from '../../common/proto-gen/trellis/v1/ActionResult.js';
import type { Logger } from '../../common/log.js';

export type RunEvent =
  | { kind: 'started'; executionId: string; agentId: string }
  | { kind: 'output'; executionId: string; agentId: string; stream: 'STDOUT' | 'STDERR'; data: Buffer }
  | { kind: 'finished'; executionId: string; agentId: string; status: string; exitCode: number; error: string; durationMs: number };

export interface RunRequest {
  agentIds: string[];
  argv: string[];
  timeoutMs: number;
  env: Record<string, string>;
  cwd: string;
  requestedBy: string;
  /**
   * Environment values resolved from secret references, in memory only: each is sealed to the
   * target agent's certificate for this execution and never logged or stored.
   */
  secretEnv?: Record<string, string>;
}

interface Execution {
  id: string;
  agentId: string;
  startedAt: number;
  listener: (e: RunEvent) => void;
  timer: NodeJS.Timeout;
  done: boolean;
}

export const MAX_ARGV = 256;
export const MAX_ARG_BYTES = 32 * 1024;
export const MAX_TIMEOUT_MS = 24 * 3_600_000;
const ABANDON_GRACE_MS = 30_000;

export class Runs {
  private readonly executions = new Map<string, Execution>();

  constructor(private readonly agents: AgentRegistry, private readonly log: Logger) {}

  /** Starts one execution per agent; returns a cancel function. */
  start(req: RunRequest, listener: (e: RunEvent) => void): { executionIds: string[]; cancel: () => void } {
    validateRun(req);
    const ids: string[] = [];
    for (const agentId of req.agentIds) {
      const link = this.agents.link(agentId);
      if (!link) throw new TrellisError('TRELLIS_E_AGENT_OFFLINE', `agent ${agentId} is not connected`);
    }
    for (const agentId of req.agentIds) {
      const id = ulid().toLowerCase();
      const exec: Execution = {
        id, agentId, startedAt: Date.now(), listener, done: false,
        timer: setTimeout(() => this.finish(id, { status: 'abandoned', exitCode: -1, error: `agent ${agentId} did not report a result in time` }), req.timeoutMs + ABANDON_GRACE_MS),
      };
      exec.timer.unref();
      this.executions.set(id, exec);
      ids.push(id);
      listener({ kind: 'started', executionId: id, agentId });
      const link = this.agents.link(agentId);
      let sealedEnv: Record<string, string> = {};
      try {
        sealedEnv = sealEnv(req.secretEnv ?? {}, link?.certPem, sealAad(agentId, 'exec', id));
      } catch (err) {
        this.finish(id, { status: 'error', exitCode: -1, error: `cannot seal secrets for agent ${agentId}: ${(err as Error).message}` });
        continue;
      }
      const sent = link?.send({ action: { executionId: id, argv: req.argv, timeoutMs: req.timeoutMs, env: req.env, cwd: req.cwd, sealedEnv } });
      this.log.info({ executionId: id, agentId, requestedBy: req.requestedBy, argv0: req.argv[0] }, 'run requested');
      if (!sent) this.finish(id, { status: 'error', exitCode: -1, error: `agent ${agentId} disconnected before the request was sent` });
    }
    return { executionIds: ids, cancel: () => ids.forEach((id) => this.cancel(id)) };
  }

  cancel(executionId: string): void {
    const e = this.executions.get(executionId);
    if (!e || e.done) return;
    this.agents.link(e.agentId)?.send({ cancel: { executionId } });
  }

  onOutput(agentId: string, o: ActionOutput__Output): void {
    const e = this.executions.get(o.executionId);
    if (!e || e.agentId !== agentId || e.done) return; // an agent can only speak for its own executions
    e.listener({ kind: 'output', executionId: e.id, agentId, stream: o.stream === 'STDERR' ? 'STDERR' : 'STDOUT', data: Buffer.from(o.data) });
  }

  onResult(agentId: string, r: ActionResult__Output): void {
    const e = this.executions.get(r.executionId);
    if (!e || e.agentId !== agentId) return;
    this.finish(e.id, { status: r.status || 'failed', exitCode: r.exitCode, error: r.error });
  }

  private finish(id: string, r: { status: string; exitCode: number; error: string }): void {
    const e = this.executions.get(id);
    if (!e || e.done) return;
    e.done = true;
    clearTimeout(e.timer);
    this.executions.delete(id);
    const durationMs = Date.now() - e.startedAt;
    this.log.info({ executionId: id, agentId: e.agentId, status: r.status, exitCode: r.exitCode, durationMs }, 'run finished');
    e.listener({ kind: 'finished', executionId: id, agentId: e.agentId, ...r, durationMs });
  }

  close(): void {
    for (const id of [...this.executions.keys()]) this.finish(id, { status: 'abandoned', exitCode: -1, error: 'the hub shut down' });
  }
}

function sealEnv(secretEnv: Record<string, string>, certPem: string | undefined, aad: string): Record<string, string> {
  const names = Object.keys(secretEnv);
  if (names.length === 0) return {};
  if (!certPem) throw new Error('no certificate for the agent link');
  return Object.fromEntries(names.map((k) => [k, sealFor(certPem, Buffer.from(secretEnv[k]!, 'utf8'), aad)]));
}

function validateRun(req: RunRequest): void {
  if (req.argv.length === 0) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'no command given: trellis run --agent ID -- CMD ARGS...');
  if (req.argv.length > MAX_ARGV) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `at most ${MAX_ARGV} arguments`);
  for (const a of req.argv) if (Buffer.byteLength(a) > MAX_ARG_BYTES) throw new TrellisError('TRELLIS_E_TOO_LARGE', `an argument is over ${MAX_ARG_BYTES} bytes`);
  if (req.argv[0] === '') throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'the command name is empty');
  if (!(req.timeoutMs > 0 && req.timeoutMs <= MAX_TIMEOUT_MS)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'timeout must be between 1ms and 24h');
  if (Object.keys(req.env).length > 128) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'at most 128 environment variables');
  for (const k of Object.keys(req.env)) if (!/^[A-Za-z_][A-Za-z0-9_]{0,127}$/.test(k)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `bad environment variable name "${k.slice(0, 40)}"`);
}
