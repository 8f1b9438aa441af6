/**
 * `trellis run`: a command (argv after --) or a pack action (PACK.ACTION name=value ...) on one
 * agent (--agent: id, unique id prefix or hostname) or on the agents a selector matches.
 *
 * Both forms behave alike:
 * - with --selector, stderr says first what matched (`matched N (online X, offline Y: skipped)`),
 *   output lines are prefixed with the agent's hostname, and at the end one line per agent and a
 *   summary line follow;
 * - `--json` prints one JSON object at the end (target, executions with output, summary, exit code);
 * - exit code: see EXIT_HELP;
 * - Ctrl-C cancels: the remote processes are killed (executions end `canceled`), exit 130. A
 *   second Ctrl-C exits at once.
 */
import type * as grpc from '@grpc/grpc-js';
import { TrellisError } from '../../common/errors.js';
import { formatDuration } from '../../common/duration.js';
import { fromGrpcError } from '../../common/grpc-errors.js';
import { call, withClients, type AdminClients } from '../client.js';
import { parseKeyValues, print, printErr, writeOutput, clean, toDocument } from '../format.js';
import { executionJson } from './executions.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

export const EXIT_HELP = `
Targets: --agent takes an id, a unique id prefix (4+ characters) or an exact hostname. --selector takes
k=v, k!=v, 'k in (a,b)', 'k notin (a,b)', k (has the label), !k (lacks it); commas (or repeated
--selector) AND them. --agent and --selector exclude each other. With --selector only online agents
run it; the offline ones it matches are listed as skipped.

Exit code: with --agent, the remote exit code (1 if the run failed without one, e.g. timed out);
with --selector, 0 if every online matched agent succeeded, 1 if none did, 3 if some did and some
did not (skipped offline agents do not change it); 130 after Ctrl-C; 2 for a bad option; 1 for any
other error (hub unreachable, no such agent, bad selector). Quote selectors in the shell ('!canary').

Ctrl-C cancels, for commands and actions alike: the hub kills the remote processes (their
executions end "canceled"); a second Ctrl-C exits at once. To start an action and not wait, use
--no-follow (it prints the execution ids), then \`trellis executions follow ID\` (where Ctrl-C only
stops following).

Examples:
  trellis run --selector 'role=web,zone in (eu1,eu2),!canary' -- systemctl is-active nginx
  trellis run --agent web-1 -- uptime
  trellis run linux.restart_service --selector role=web service=nginx --json`;

/** The selector expression of repeated --selector options (ANDed). */
export function selectorText(values: string[] | undefined): string {
  return (values ?? []).map((v) => v.trim()).filter(Boolean).join(',');
}

/** Exit code of a run with --selector (documented in EXIT_HELP). */
export const EXIT_PARTIAL = 3;

type Status = string;
interface Result { executionId: string; agentId: string; status: Status; exitCode: number; error: string; durationMs: number; output: Buffer[]; record?: T.ExecutionInfo__Output }

const FINAL = new Set(['succeeded', 'failed', 'timeout', 'canceled', 'abandoned', 'error']);

/** What a run saw, printed at the end and as JSON. */
class RunReport {
  matched?: T.TargetsMatched__Output;
  readonly results = new Map<string, Result>();
  private names = new Map<string, string>();
  constructor(readonly o: { many: boolean; json: boolean; raw?: boolean; action: string }) {}

  setMatched(m: T.TargetsMatched__Output): void {
    this.matched = m;
    const all = [...m.online, ...m.offline];
    const count = new Map<string, number>();
    for (const a of all) if (a.hostname) count.set(a.hostname, (count.get(a.hostname) ?? 0) + 1);
    // Hostname when it names one agent of the run, else the id.
    for (const a of all) this.names.set(a.id, a.hostname && count.get(a.hostname) === 1 ? a.hostname : a.id);
    if (this.o.many && !this.o.json) {
      printErr(`matched ${all.length} (online ${m.online.length}, offline ${m.offline.length}${m.offline.length ? ': skipped' : ''}) by ${m.selector}`);
      for (const a of m.offline) printErr(`  skipped (offline): ${a.hostname || '-'} (${a.id})`);
    } else if (!this.o.many && !this.o.json && m.offline.length) {
      const a = m.offline[0]!;
      printErr(`agent ${a.hostname || '-'} (${a.id}) is offline: the execution waits for it (Ctrl-C cancels it)`);
    }
  }

  name(agentId: string): string { return this.names.get(agentId) ?? agentId; }
  hostname(agentId: string): string {
    return [...(this.matched?.online ?? []), ...(this.matched?.offline ?? [])].find((a) => a.id === agentId)?.hostname ?? '';
  }

  started(executionId: string, agentId: string): void {
    if (!this.results.has(executionId)) this.results.set(executionId, { executionId, agentId, status: 'requested', exitCode: 0, error: '', durationMs: 0, output: [] });
  }

  output(executionId: string, agentId: string, stream: string, data: Buffer): void {
    this.started(executionId, agentId);
    if (this.o.json) { this.results.get(executionId)!.output.push(data); return; }
    const out = stream === 'STDERR' ? process.stderr : process.stdout;
    const tag = `[${clean(this.name(agentId))}] `;
    writeOutput(out, this.o.many ? Buffer.from(data.toString('utf8').split('\n').map((l) => (l ? tag + l : l)).join('\n')) : data, this.o);
  }

  finished(r: Omit<Result, 'output'>): void {
    const prev = this.results.get(r.executionId);
    const wasFinal = prev && FINAL.has(prev.status);
    this.results.set(r.executionId, { ...r, output: prev?.output ?? [] });
    if (!wasFinal && !this.o.json && !this.o.many && r.status !== 'succeeded') {
      printErr(`trellis: ${r.executionId} ${r.status}${r.error ? `: ${r.error}` : ''} (exit ${r.exitCode})`);
    }
  }

  unfinished(): Result[] { return [...this.results.values()].filter((r) => !FINAL.has(r.status)); }

  summary(): Record<string, number> {
    const rs = [...this.results.values()];
    const n = (s: string) => rs.filter((r) => r.status === s).length;
    return {
      matched: (this.matched?.online.length ?? 0) + (this.matched?.offline.length ?? 0) || rs.length,
      succeeded: n('succeeded'), failed: n('failed') + n('error') + n('abandoned'), timedOut: n('timeout'), canceled: n('canceled'),
      running: rs.filter((r) => !FINAL.has(r.status)).length, skipped: this.o.many ? this.matched?.offline.length ?? 0 : 0,
    };
  }

  exitCode(interrupted: boolean): number {
    if (interrupted) return 130;
    const rs = [...this.results.values()];
    if (!this.o.many) {
      const r = rs[0];
      if (!r || r.status === 'succeeded') return r ? 0 : 1;
      return r.exitCode > 0 && r.exitCode < 256 ? r.exitCode : 1;
    }
    const ok = rs.filter((r) => r.status === 'succeeded').length;
    return ok === rs.length && rs.length > 0 ? 0 : ok === 0 ? 1 : EXIT_PARTIAL;
  }

  /** The per-agent lines and the summary line (stderr), or the JSON object (stdout). */
  end(interrupted: boolean): number {
    const code = this.exitCode(interrupted);
    const s = this.summary();
    if (this.o.json) {
      const agent = (a: T.TargetAgent__Output) => ({ id: a.id, hostname: a.hostname });
      // Times in RFC 3339 as every json output (toDocument); durations stay in ms.
      print(JSON.stringify(toDocument({
        target: this.matched?.selector ? { selector: this.matched.selector } : { agent: this.matched?.online[0]?.id ?? this.matched?.offline[0]?.id ?? '' },
        matched: { online: (this.matched?.online ?? []).map(agent), offline: (this.matched?.offline ?? []).map(agent) },
        executions: [...this.results.values()].map((r) => {
          const output = Buffer.concat(r.output);
          const base = r.record ? executionJson(r.record, output) : {
            id: r.executionId, action: this.o.action, agentId: r.agentId, status: r.status, exitCode: r.exitCode, error: r.error, durationMs: r.durationMs, output: output.toString('utf8'),
          };
          return { ...base, hostname: this.hostname(r.agentId) };
        }),
        summary: s, interrupted, exitCode: code,
      }), null, 2));
      return code;
    }
    if (this.o.many) {
      const rows = [...this.results.values()].map((r) => [
        `${clean(this.hostname(r.agentId) || '-')} (${r.agentId})`, r.status === 'timeout' ? 'timed out' : FINAL.has(r.status) ? r.status : `still ${r.status}`,
        FINAL.has(r.status) && r.exitCode >= 0 ? `exit ${r.exitCode}` : '', r.durationMs ? formatDuration(r.durationMs) : '', r.error ? clean(r.error).slice(0, 200) : '',
      ]);
      for (const a of this.matched?.offline ?? []) rows.push([`${clean(a.hostname || '-')} (${a.id})`, 'skipped', 'offline', '', '']);
      const w = [0, 1, 2, 3].map((i) => Math.max(0, ...rows.map((r) => r[i]!.length)));
      for (const r of rows) printErr(r.map((c, i) => (i < 4 ? c.padEnd(w[i]!) : c)).join('  ').trimEnd());
      printErr(`summary: ${s.matched} matched: ${s.succeeded} succeeded, ${s.failed} failed, ${s.timedOut} timed out` +
        `${s.canceled ? `, ${s.canceled} canceled` : ''}${s.running ? `, ${s.running} still running` : ''}, ${s.skipped} skipped (offline)${interrupted ? '; interrupted (Ctrl-C)' : ''}`);
    }
    return code;
  }
}

/**
 * Ctrl-C for a run: `cancel` once (the remote processes are killed), then resolve the wait; a
 * second Ctrl-C exits at once with 130. Returns a disposer.
 */
function onInterrupt(cancel: () => Promise<void> | void): { interrupted: () => boolean; dispose: () => void } {
  let count = 0;
  const handler = () => {
    count++;
    if (count > 1) { printErr('trellis: second Ctrl-C: exiting now'); process.exit(130); }
    printErr('trellis: Ctrl-C: canceling (the remote processes are killed); Ctrl-C again to exit now');
    void Promise.resolve(cancel()).catch((e) => printErr(`trellis: cancel failed: ${(e as Error).message}`));
  };
  process.on('SIGINT', handler);
  return { interrupted: () => count > 0, dispose: () => { process.off('SIGINT', handler); } };
}

export interface RunOptions { agent?: string; selector?: string[]; timeout?: string; env?: string[]; cwd?: string; follow?: boolean; json?: boolean; raw?: boolean }

function target(o: RunOptions): { agentId: string; selectorExpr: string } {
  const selectorExpr = selectorText(o.selector);
  if (o.agent && selectorExpr) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', '--agent and --selector exclude each other: name one agent or a selector');
  if (!o.agent && !selectorExpr) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'name a target: --agent ID|HOSTNAME or --selector EXPR');
  return { agentId: o.agent ?? '', selectorExpr };
}

/** Waits for a stream's end; our own cancel (CANCELLED after Ctrl-C) is an end, not an error. */
function drain<M>(stream: grpc.ClientReadableStream<M>, onData: (m: M) => void, interrupted: () => boolean): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    stream.on('data', onData);
    stream.on('error', (e: grpc.ServiceError) => (e.code === 1 && interrupted() ? resolve() : reject(fromGrpcError(e))));
    stream.on('end', () => resolve());
  });
}

/** `trellis run [--agent|--selector] -- CMD ARGS...`. */
export async function runCommand(argv: string[], o: RunOptions, parseDuration: (v: string, what: string) => number): Promise<void> {
  const t = target(o);
  const timeoutMs = parseDuration(o.timeout ?? '30s', '--timeout');
  const env = parseKeyValues(o.env, 'env');
  await withClients(async (c) => {
    const report = new RunReport({ many: !t.agentId, json: !!o.json, raw: o.raw, action: 'core.command' });
    const stream = c.runs.Run({ agentId: t.agentId, selectorExpr: t.selectorExpr, argv, timeoutMs, env, cwd: o.cwd ?? '' }, c.metadata) as grpc.ClientReadableStream<T.RunUpdate__Output>;
    // The hub cancels the executions of a run whose client goes away.
    const sig = onInterrupt(() => { stream.cancel(); });
    try {
      await drain(stream, (u: T.RunUpdate__Output) => {
        if (u.matched) report.setMatched(u.matched);
        else if (u.started) report.started(u.started.executionId, u.started.agentId);
        else if (u.output) report.output(u.output.executionId, u.output.agentId, u.output.stream, Buffer.from(u.output.data));
        else if (u.finished) {
          const f = u.finished;
          report.finished({ executionId: f.executionId, agentId: f.agentId, status: f.status, exitCode: f.exitCode, error: f.error, durationMs: Number(f.durationMs) });
        }
      }, sig.interrupted);
      if (sig.interrupted()) for (const r of report.unfinished()) report.finished({ ...r, status: 'canceled', exitCode: -1, error: 'canceled by Ctrl-C' });
      process.exitCode = report.end(sig.interrupted());
    } finally { sig.dispose(); }
  });
}

/** `trellis run PACK.ACTION [name=value ...] [--agent|--selector]`. */
export async function runAction(ref: string, params: string[], o: RunOptions): Promise<void> {
  const parameters: Record<string, string> = {};
  for (const p of params) {
    const i = p.indexOf('=');
    if (i <= 0) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `bad parameter "${p.slice(0, 80)}": use name=value (values are JSON or plain text)`);
    parameters[p.slice(0, i)] = p.slice(i + 1);
  }
  const t = target(o);
  const follow = o.follow !== false;
  await withClients(async (c) => {
    const report = new RunReport({ many: !t.agentId, json: !!o.json, raw: o.raw, action: ref });
    const stream = c.executions.RunAction({ action: ref, agentId: t.agentId, selectorExpr: t.selectorExpr, parameters, follow }, c.metadata) as grpc.ClientReadableStream<T.ExecutionUpdate__Output>;
    const cancelAll = async (cl: AdminClients) => {
      await Promise.all(report.unfinished().map((r) => call<T.CancelExecutionRequest, T.ExecutionInfo__Output>(cl, cl.executions, cl.executions.CancelExecution, { id: r.executionId }, 10_000)
        .catch((e) => printErr(`trellis: cannot cancel ${r.executionId}: ${(e as Error).message}`))));
    };
    // Cancel, then keep following until the executions report `canceled` (the stream ends then).
    const sig = onInterrupt(() => cancelAll(c));
    try {
      await drain(stream, (u: T.ExecutionUpdate__Output) => {
        if (u.matched) report.setMatched(u.matched);
        else if (u.state) {
          const i = u.state;
          report.started(i.id, i.agentId);
          const r = report.results.get(i.id)!;
          r.record = i;
          const durationMs = Number(i.finishedMs) ? Number(i.finishedMs) - (Number(i.startedMs) || Number(i.requestedMs)) : 0;
          if (FINAL.has(i.status)) report.finished({ executionId: i.id, agentId: i.agentId, status: i.status, exitCode: i.exitCode, error: i.error, durationMs, record: i });
          else r.status = i.status;
        } else if (u.output) report.output(u.output.executionId, report.results.get(u.output.executionId)?.agentId ?? '', u.output.stream, Buffer.from(u.output.data));
      }, sig.interrupted);
      if (!follow) {
        if (o.json) report.end(false);
        else for (const r of report.results.values()) print(`${r.executionId}  ${r.agentId}  ${clean(report.hostname(r.agentId) || '-')}  ${r.status}`);
        return;
      }
      process.exitCode = report.end(sig.interrupted());
    } finally { sig.dispose(); }
  });
}
