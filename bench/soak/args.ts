/** `npm run soak` options: parsing, defaults and the help text. */
import { mulberry32 } from '../prng.js';
import { parseDuration } from '../../common/duration.js';
import type { InjectFault } from './protocol.js';

export interface SoakOptions {
  agents: number;
  durationMs: number;
  kills: number;
  agentKills: number;
  seed: number;
  procs: number;
  /** Events per second over all agents while the workload runs. */
  eventsPerS: number;
  idleMs: number;
  historySeed: number;
  /** The simulated agents' reconnect backoff cap; undefined: the real agent's default. */
  agentMaxBackoffMs?: number;
  json: boolean;
  keep: boolean;
  inject?: InjectFault;
  /** Seconds of protocol fuzzing (bench/fuzz) against the soak's hub while the workload runs; 0: none. */
  fuzzSeconds: number;
}

export const HELP = `Usage: npm run soak -- --agents N [options]

A scenario runner for scale and faults (not part of npm test): a real \`trellis hub run\` child
process, N simulated agents (distinct certificates, one mTLS stream and one durable outbox each)
spread over P client processes, hub rules firing actions on the agents, an edge rule, datastore
writes and rule creates from an admin client; K times it kill -9s the hub at a random moment and
restarts it, and separately kill -9s random client processes and restarts them. Then it checks
that nothing was lost or run twice and prints \`name: value unit\` lines on stdout (progress on
stderr). Exit code 1 when a soak_* check is not 0, 2 on a usage or harness error.

Options:
  --agents N         simulated agents (required; 1..20000)
  --duration D       how long the workload runs, e.g. 60s, 2m (default 60s)
  --kills K          hub kill -9 + restart cycles during the workload (default 3)
  --agent-kills K2   client-process kill -9 + restart cycles (default max(1, K))
  --seed S           seed of the fault schedule (default: random; the seed used is printed)
  --procs P          client processes (default max(2, ceil(N / 2500)))
  --events-per-s R   events per second over all agents (default min(400, 2 * N))
  --idle D           how long hub_idle_cpu_pct is measured (default 10s)
  --history N        executions in history when hub_start_ms is measured (default 100000; 0 skips it)
  --agent-max-backoff D  the simulated agents' reconnect backoff cap (default: the real agent's,
                     30s); a shorter cap shortens storms (CI uses 3s), so storm_settle_s is
                     only comparable between runs with the same cap
  --fuzz-seconds S   also fuzz the hub (npm run fuzz's cases: every admin RPC and AgentChannel
                     message, random and mutated protobuf, as its own admin, a user with no roles,
                     no credentials and its own enrolled agents) for S seconds while the
                     workload runs (at most --duration; paused around each hub kill), seeded
                     with --seed; prints soak_fuzz_cases and soak_fuzz_failures (hub crashes,
                     hangs and unexpected statuses: a check, must be 0). Its administrator
                     leaves the soak's agents, rules, users and kv keys alone (default 0)
  --json             also print one JSON object with every figure (last line of stdout)
  --keep             keep the temporary directory (its path is printed) for a post-mortem
  -h, --help         this text

Checks (each must be 0): soak_events_lost, soak_events_duplicated, soak_executions_duplicated,
soak_executions_lost, soak_state_files_torn, soak_acked_writes_lost (and soak_fuzz_failures
with --fuzz-seconds).
Figures: storm_settle_s, connect_per_s, hub_rss_mb, hub_rss_kb_per_agent, hub_idle_cpu_pct,
hub_start_ms; soak_fuzz_cases with --fuzz-seconds.

Example: npm run soak -- --agents 1000 --kills 3 --seed 42
`;

export class UsageError extends Error {}

function int(name: string, v: string | undefined, min: number, max: number): number {
  const n = Number(v);
  if (v === undefined || !/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < min || n > max) throw new UsageError(`${name} must be an integer from ${min} to ${max} (got ${v === undefined ? 'nothing' : JSON.stringify(v)})`);
  return n;
}

function duration(name: string, v: string | undefined, minMs: number, maxMs: number): number {
  let ms: number;
  try { ms = parseDuration(String(v)); } catch { throw new UsageError(`${name} must be a duration such as 60s or 2m (got ${JSON.stringify(v)})`); }
  if (!(ms >= minMs && ms <= maxMs)) throw new UsageError(`${name} must be from ${minMs / 1000}s to ${maxMs / 1000}s`);
  return ms;
}

/** Parses argv (without node and the script); throws UsageError; returns undefined for --help. */
export function parseArgs(argv: string[]): SoakOptions | undefined {
  const v: Record<string, string | boolean> = {};
  const flags = new Set(['--json', '--keep', '--help', '-h']);
  const valued = new Set(['--agents', '--duration', '--kills', '--agent-kills', '--seed', '--procs', '--events-per-s', '--idle', '--history', '--inject-fault', '--agent-max-backoff', '--fuzz-seconds']);
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i]!;
    let val: string | undefined;
    const eq = a.indexOf('=');
    if (a.startsWith('--') && eq > 0) { val = a.slice(eq + 1); a = a.slice(0, eq); }
    if (flags.has(a)) { v[a] = true; continue; }
    if (!valued.has(a)) throw new UsageError(`unknown option ${JSON.stringify(a)} (see --help)`);
    if (val === undefined) { val = argv[++i]; if (val === undefined) throw new UsageError(`${a} needs a value`); }
    v[a] = val;
  }
  if (v['--help'] || v['-h']) return undefined;
  if (v['--agents'] === undefined) throw new UsageError('--agents N is required (see --help)');
  const agents = int('--agents', v['--agents'] as string, 1, 20_000);
  const kills = v['--kills'] === undefined ? 3 : int('--kills', v['--kills'] as string, 0, 100);
  const inject = v['--inject-fault'] as string | undefined;
  if (inject !== undefined && inject !== 'duplicate-execution' && inject !== 'lose-event' && inject !== 'fuzz-failure') throw new UsageError('--inject-fault must be duplicate-execution, lose-event or fuzz-failure');
  const durationMs = v['--duration'] === undefined ? 60_000 : duration('--duration', v['--duration'] as string, 5_000, 24 * 3_600_000);
  const fuzz = v['--fuzz-seconds'] as string | undefined;
  const fuzzSeconds = fuzz === undefined ? 0 : /^\d+$/.test(fuzz) ? int('--fuzz-seconds', fuzz, 0, 86_400) : duration('--fuzz-seconds', fuzz, 1_000, 86_400_000) / 1000;
  if (fuzzSeconds * 1000 > durationMs) throw new UsageError(`--fuzz-seconds (${fuzzSeconds}) must not exceed --duration (${durationMs / 1000} s): the fuzzer runs while the workload does`);
  if (inject === 'fuzz-failure' && fuzzSeconds === 0) throw new UsageError('--inject-fault fuzz-failure needs --fuzz-seconds');
  return {
    agents,
    durationMs,
    kills,
    agentKills: v['--agent-kills'] === undefined ? Math.max(1, kills) : int('--agent-kills', v['--agent-kills'] as string, 0, 100),
    seed: v['--seed'] === undefined ? Math.floor(Math.random() * 2 ** 31) : int('--seed', v['--seed'] as string, 0, 2 ** 31 - 1),
    procs: v['--procs'] === undefined ? Math.max(2, Math.ceil(agents / 2500)) : int('--procs', v['--procs'] as string, 1, 64),
    eventsPerS: v['--events-per-s'] === undefined ? Math.min(400, 2 * agents) : int('--events-per-s', v['--events-per-s'] as string, 0, 100_000),
    idleMs: v['--idle'] === undefined ? 10_000 : duration('--idle', v['--idle'] as string, 1_000, 600_000),
    historySeed: v['--history'] === undefined ? 100_000 : int('--history', v['--history'] as string, 0, 10_000_000),
    agentMaxBackoffMs: v['--agent-max-backoff'] === undefined ? undefined : duration('--agent-max-backoff', v['--agent-max-backoff'] as string, 100, 600_000),
    json: v['--json'] === true,
    keep: v['--keep'] === true,
    inject: inject as SoakOptions['inject'],
    fuzzSeconds,
  };
}

/** A seeded PRNG for the fault schedule (reproducible with --seed). */
export const prng = mulberry32;
