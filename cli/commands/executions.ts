/**
 * `trellis executions list|count|show|follow|cancel|rerun` and `trellis run PACK.ACTION` (called from
 * the `run` command in admin.ts). Followed executions print their output live, stdout and
 * stderr on the CLI's own, and the CLI exits with the remote exit code.
 */
import type { Command } from 'commander';
import type * as grpc from '@grpc/grpc-js';
import { TrellisError } from '../../common/errors.js';
import { formatDuration, parseDuration } from '../../common/duration.js';
import { fromGrpcError } from '../../common/grpc-errors.js';
import { call, withClients } from '../client.js';
import { when, ago, parseKeyValues, print, printErr, writeOutput, clean, addOutputOptions, formatOf, output, outputOne, toDocument } from '../format.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

const FINAL = new Set(['succeeded', 'failed', 'timeout', 'canceled', 'abandoned', 'error']);

function parametersOf(i: T.ExecutionInfo__Output): unknown {
  try { return JSON.parse(Buffer.from(i.parametersJson).toString('utf8') || '{}'); } catch { return {}; }
}

/** An execution as JSON: parameters parsed, output as text. */
export function executionJson(i: T.ExecutionInfo__Output, output?: Buffer): Record<string, unknown> {
  const { parametersJson: _p, output: raw, ...rest } = i;
  return { ...rest, parameters: parametersOf(i), output: (output ?? Buffer.from(raw ?? [])).toString('utf8') };
}

function duration(i: T.ExecutionInfo__Output): string {
  const from = Number(i.startedMs) || Number(i.requestedMs);
  const to = Number(i.finishedMs) || (FINAL.has(i.status) ? from : Date.now());
  return from ? formatDuration(Math.max(0, to - from)) : '-';
}

/** The exit code a CLI reports for one finished execution. */
function exitOf(i: T.ExecutionInfo__Output): number {
  if (i.status === 'succeeded') return 0;
  return i.exitCode > 0 && i.exitCode < 256 ? i.exitCode : 1;
}

/**
 * Prints a stream of ExecutionUpdate: output live (prefixed by agent when there are several),
 * a line on stderr for every execution that did not succeed. Resolves with the last record of
 * each execution and its output (for --json).
 */
function consume(stream: grpc.ClientReadableStream<T.ExecutionUpdate__Output>, o: { json: boolean; many: boolean; raw?: boolean }): Promise<{ infos: Map<string, T.ExecutionInfo__Output>; output: Map<string, Buffer[]> }> {
  const infos = new Map<string, T.ExecutionInfo__Output>();
  const output = new Map<string, Buffer[]>();
  const onSig = () => {
    stream.cancel();
    const running = [...infos.values()].filter((i) => !FINAL.has(i.status));
    for (const i of running) printErr(`trellis: stopped following ${i.id} (still ${i.status} on ${i.agentId}): \`trellis executions follow ${i.id}\` or \`trellis executions cancel ${i.id}\``);
  };
  process.once('SIGINT', onSig);
  return new Promise<{ infos: Map<string, T.ExecutionInfo__Output>; output: Map<string, Buffer[]> }>((resolve, reject) => {
    stream.on('data', (u: T.ExecutionUpdate__Output) => {
      if (u.state) {
        const i = u.state;
        const prev = infos.get(i.id);
        infos.set(i.id, i);
        if (!o.json && FINAL.has(i.status) && !FINAL.has(prev?.status ?? '') && i.status !== 'succeeded') {
          printErr(`trellis: ${o.many ? `[${i.agentId}] ` : ''}${i.id} ${i.status}${i.error ? `: ${i.error}` : ''} (exit ${i.exitCode})`);
        }
      } else if (u.output) {
        const data = Buffer.from(u.output.data);
        const id = u.output.executionId;
        if (o.json) { const list = output.get(id) ?? []; list.push(data); output.set(id, list); return; }
        const out = u.output.stream === 'STDERR' ? process.stderr : process.stdout;
        const agent = infos.get(id)?.agentId ?? '';
        writeOutput(out, o.many ? Buffer.from(data.toString('utf8').split('\n').map((l) => (l ? `[${clean(agent)}] ${l}` : l)).join('\n')) : data, o);
      }
    });
    stream.on('error', (e: grpc.ServiceError) => (e.code === 1 /* CANCELLED: our own SIGINT */ ? resolve({ infos, output }) : reject(fromGrpcError(e))));
    stream.on('end', () => resolve({ infos, output }));
  }).finally(() => process.off('SIGINT', onSig));
}

/** Follows a stream to its end, prints JSON if asked, sets the exit code from the remote ones. */
async function followToEnd(stream: grpc.ClientReadableStream<T.ExecutionUpdate__Output>, o: { json: boolean; many: boolean; follow: boolean; raw?: boolean }): Promise<void> {
  const { infos, output } = await consume(stream, o);
  const list = [...infos.values()];
  if (!o.follow) {
    if (o.json) print(JSON.stringify(toDocument(list.map((i) => executionJson(i))), null, 2));
    else for (const i of list) print(`${i.id}  ${i.agentId}  ${i.status}`);
    return;
  }
  if (o.json) print(JSON.stringify(toDocument(list.map((i) => executionJson(i, Buffer.concat(output.get(i.id) ?? [])))), null, 2));
  const unfinished = list.some((i) => !FINAL.has(i.status));
  process.exitCode = unfinished ? 130 : list.reduce((worst, i) => Math.max(worst, exitOf(i)), 0);
}

/** `--raw`: remote program output is cleaned on a terminal unless asked (cli/format.ts writeOutput). */
export const RAW_HELP = 'write the remote output to the terminal unchanged (escape sequences included); by default a terminal gets it without control characters, and a pipe or file always gets the bytes unchanged';

/** Agent id → hostname for a table (empty when the caller may not list agents: the column shows "-"). */
async function hostnames(c: Parameters<Parameters<typeof withClients>[0]>[0]): Promise<Map<string, string>> {
  try {
    const r = await call<T.ListAgentsRequest, T.ListAgentsResponse__Output>(c, c.agents, c.agents.ListAgents, { includeOldRevoked: true });
    return new Map(r.agents.map((a) => [a.id, a.hostname]));
  } catch {
    return new Map();
  }
}

export function addExecutionCommands(program: Command): void {
  const ex = program.command('executions').description('action runs: list, show, follow, cancel and re-run (history kept on the hub)');

  addOutputOptions(ex.command('list')
    .description('recent executions, newest first')
    .option('--action <pack.action>', 'only this action (ad-hoc commands: core.command)')
    .option('--agent <id|host>', 'only on this agent (id, unique id prefix or hostname)')
    .option('--status <status>', 'requested, scheduled, running, succeeded, failed, timeout, canceled, abandoned or error')
    .option('--rule <name>', 'only those fired by this rule')
    .option('--limit <n>', 'at most this many (1-1000)', '50')
    .option('--before <id>', 'older than this execution (paging)'), 'tenant, rule, requested time, error')
    .action((o) => withClients(async (c) => {
      const limit = Number(o.limit);
      if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', '--limit is a whole number from 1 to 1000');
      const r = await call<T.ListExecutionsRequest, T.ListExecutionsResponse__Output>(c, c.executions, c.executions.ListExecutions, {
        action: o.action ?? '', agentId: o.agent ?? '', status: o.status ?? '', rule: o.rule ?? '', limit, beforeId: o.before ?? '',
      });
      const f = formatOf(o);
      const hosts = f === 'table' || f === 'wide' ? await hostnames(c) : new Map<string, string>();
      await output(o, r.executions, [
        { header: 'ID', cell: (i) => i.id }, { header: 'ACTION', cell: (i) => i.action }, { header: 'AGENT', cell: (i) => i.agentId },
        { header: 'HOST', cell: (i) => hosts.get(i.agentId) || '-' },
        { header: 'TENANT', cell: (i) => i.tenant, wide: true }, { header: 'STATUS', cell: (i) => i.status },
        { header: 'EXIT', cell: (i) => (FINAL.has(i.status) ? String(i.exitCode) : '-') }, { header: 'BY', cell: (i) => i.requestedBy },
        { header: 'RULE', cell: (i) => i.rule || '-', wide: true },
        { header: 'REQUESTED', cell: (i, wide) => (wide ? when(Number(i.requestedMs)) : ago(Number(i.requestedMs))) }, { header: 'DURATION', cell: (i) => duration(i) },
        { header: 'ERROR', cell: (i) => i.error || '-', wide: true },
      ], { empty: 'no executions', data: r.executions.map((i) => { const { output: _o, ...rest } = executionJson(i); return rest; }) });
    }));

  addOutputOptions(ex.command('count')
    .description('how many executions, by status, counted on the hub (the web console\'s overview)')
    .option('--since <duration>', 'only those requested in the last DURATION, e.g. 1h, 30m, 7d (default: all history)')
    .option('--action <pack.action>', 'only this action')
    .option('--agent <id|host>', 'only on this agent (id, unique id prefix or hostname)')
    .option('--rule <name>', 'only those fired by this rule'))
    .action((o) => withClients(async (c) => {
      const sinceMs = o.since ? Date.now() - parseDuration(String(o.since), '--since') : 0;
      const r = await call<T.CountExecutionsRequest, T.CountExecutionsResponse__Output>(c, c.executions, c.executions.CountExecutions, {
        action: o.action ?? '', agentId: o.agent ?? '', rule: o.rule ?? '', sinceMs,
      });
      const rows = Object.entries(r.byStatus).map(([status, n]) => ({ status, count: Number(n) })).sort((a, b) => b.count - a.count);
      await output(o, rows, [{ header: 'STATUS', cell: (x) => x.status }, { header: 'COUNT', cell: (x) => String(x.count) }],
        { empty: 'no executions', data: { byStatus: Object.fromEntries(rows.map((x) => [x.status, x.count])), total: Number(r.total) } });
      if (formatOf(o) === 'table' && rows.length) print(`total: ${Number(r.total)}`);
    }));

  addOutputOptions(ex.command('show')
    .description('one execution with its output')
    .argument('<id>'))
    .option('--raw', RAW_HELP)
    .action((id: string, o) => withClients(async (c) => {
      const i = await call<T.GetExecutionRequest, T.ExecutionInfo__Output>(c, c.executions, c.executions.GetExecution, { id });
      const f = formatOf(o);
      if (f === 'json' || f === 'yaml') return outputOne(o, executionJson(i), () => '');
      const rows: [string, string][] = [
        ['id', i.id], ['action', i.action], ['agent', i.agentId], ['tenant', i.tenant], ['status', i.status],
        ['exit code', FINAL.has(i.status) ? String(i.exitCode) : '-'], ['error', i.error || '-'], ['requested by', i.requestedBy],
        ['rule', i.rule || '-'], ['trigger event', i.triggerEventId || '-'], ['parameters', JSON.stringify(parametersOf(i))],
        ['requested', when(Number(i.requestedMs))], ['started', when(Number(i.startedMs))], ['finished', when(Number(i.finishedMs))],
        ['duration', duration(i)], ['edge', i.edge ? 'yes (run by an edge rule on the agent)' : 'no'],
      ];
      print(rows.map(([k, v]) => `${(k + ':').padEnd(15)}${v}`).join('\n'));
      const out = Buffer.from(i.output);
      print(`--- output${i.outputTruncated ? ' (truncated: history keeps the first part)' : ''} ---`);
      if (out.length) writeOutput(process.stdout, out.toString('utf8').endsWith('\n') ? out : Buffer.concat([out, Buffer.from('\n')]), o);
    }));

  ex.command('follow')
    .description('print what an execution has output so far, then live until it ends; exits with its exit code')
    .argument('<id>')
    .option('--json', 'print the final record as JSON instead')
    .option('--raw', RAW_HELP)
    .action((id: string, o) => withClients(async (c) => {
      const stream = c.executions.FollowExecution({ id }, c.metadata) as grpc.ClientReadableStream<T.ExecutionUpdate__Output>;
      await followToEnd(stream, { json: !!o.json, many: false, follow: true, raw: !!o.raw });
    }));

  ex.command('cancel')
    .description('cancel an execution (the agent kills its process group)')
    .argument('<id>')
    .action((id: string) => withClients(async (c) => {
      const i = await call<T.CancelExecutionRequest, T.ExecutionInfo__Output>(c, c.executions, c.executions.CancelExecution, { id });
      print(FINAL.has(i.status) ? `${i.id}: ${i.status}${i.error ? ` (${i.error})` : ''}` : `${i.id}: cancel sent to ${i.agentId}; \`trellis executions follow ${i.id}\` shows when it stops`);
    }));

  ex.command('rerun')
    .description('run an execution again: same action, agent and parameters (references resolved anew)')
    .argument('<id>')
    .option('--no-follow', 'print the new execution id and return')
    .option('--json', 'print JSON')
    .option('--raw', RAW_HELP)
    .action((id: string, o) => withClients(async (c) => {
      const follow = o.follow !== false;
      const stream = c.executions.RerunExecution({ id, follow }, c.metadata) as grpc.ClientReadableStream<T.ExecutionUpdate__Output>;
      await followToEnd(stream, { json: !!o.json, many: false, follow, raw: !!o.raw });
    }));
}

/** For the `run` command: the options it takes for actions, next to those for commands. */
export function addRunActionOptions(cmd: Command): Command {
  return cmd
    .option('--no-follow', 'PACK.ACTION: print the execution ids and return instead of following')
    .option('--json', 'print one JSON object at the end: target, matched agents, executions (with their output), summary, exit code')
    .option('--raw', RAW_HELP);
}

