/**
 * `npm run fuzz -- [--seconds 60] [--seed S] [--target admin|agent|all|web] [--out DIR] [--replay FILE]`
 *
 * Starts a fresh hub (`trellis hub run`, a child process), fuzzes every admin RPC and every
 * AgentChannel message (bench/fuzz/run.ts) and prints `name: value unit` lines on stdout:
 *   fuzz_seed, fuzz_cases, fuzz_hub_crashes, fuzz_unexpected_status, fuzz_hub_error_lines,
 *   fuzz_methods_covered, fuzz_hub_rss_mb.
 * Exit status 1 when the hub crashed or hung, or any status was unexpected. Failing cases are
 * written to --out (default: a new temp dir, printed) and replay with --replay FILE against a new hub.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { silenceIpServernameWarning } from '../../common/warnings.js';
import { startFuzzHub, preparePrincipals } from './setup.js';
import { runFuzz, replayCases, type FuzzCase, type FuzzTarget } from './run.js';
import { runWebFuzz } from './web.js';
import { runAgentSideFuzz } from './agent-side.js';
import { enroll } from '../../agent/enroll.js';
import { agentPaths, readState } from '../../agent/identity.js';

const USAGE = `usage: npm run fuzz -- [options]

Fuzzes a fresh hub (a child \`trellis hub run\`) with random, schema-typed and mutated protobuf on
every admin RPC (as an admin API key, a user with no roles and no credentials) and every
AgentChannel message (enrolled agents, real mTLS). Seeded: the same seed sends the same cases.

options:
  --seconds N        how long to fuzz (default 60)
  --seed S           the seed, an integer (default: random, printed as fuzz_seed)
  --target T         admin (every admin RPC), agent (every AgentChannel message to the hub's
                     agent port), all (both, default), or web (the hub's HTTPS web port:
                     webhooks, /stream, /agent/* downloads; raw HTTP/1.1, malformed and
                     truncated requests; any 5xx but 503 or a hang is a finding), or
                     agent-side (a real \`trellis agent run\` against a fake hub on real mTLS
                     that sends random and mutated HubMessage frames: the agent must keep
                     running, reconnect after every stream and send only valid frames)
  --out DIR          where failing cases and hub.log go (default: a new temp dir, kept on failure)
  --replay FILE      send the case(s) of a failure file again (new hub) and judge them
  -h, --help         this help

prints (stdout): fuzz_seed, fuzz_cases, fuzz_hub_crashes, fuzz_unexpected_status,
fuzz_hub_error_lines, fuzz_methods_covered, fuzz_hub_rss_mb (after the run); with --target web:
fuzz_web_cases, fuzz_hub_crashes, fuzz_web_unexpected_status, fuzz_hub_error_lines. Exit status 1
on any crash, hang or unexpected status.`;

/** Resident memory of a process in MB (Linux /proc), undefined elsewhere. */
function rssMb(pid: number | undefined): number | undefined {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Math.round(Number(m[1]) / 1024) : undefined;
  } catch { return undefined; }
}

function fail(msg: string): never {
  process.stderr.write(`fuzz: ${msg}\n\n${USAGE}\n`);
  process.exit(2);
}

async function main(): Promise<number> {
  silenceIpServernameWarning();
  let args;
  try {
    args = parseArgs({
      options: {
        seconds: { type: 'string' }, seed: { type: 'string' }, target: { type: 'string' }, out: { type: 'string' },
        replay: { type: 'string' }, help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }).values;
  } catch (e) { fail((e as Error).message); }
  if (args.help) { process.stdout.write(USAGE + '\n'); return 0; }
  const seconds = args.seconds === undefined ? 60 : Number(args.seconds.replace(/s$/, ''));
  if (!(seconds > 0 && seconds <= 86_400)) fail(`--seconds must be a number of seconds between 1 and 86400, not "${args.seconds}"`);
  const seed = args.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(args.seed);
  if (!Number.isSafeInteger(seed) || seed < 0 || seed >= 2 ** 32) fail(`--seed must be an integer between 0 and 4294967295, not "${args.seed}"`);
  const target = (args.target ?? 'all') as FuzzTarget | 'web' | 'agent-side';
  if (!['admin', 'agent', 'all', 'web', 'agent-side'].includes(target)) fail(`--target must be admin, agent, all, web or agent-side, not "${args.target}"`);
  if (target === 'web' && args.replay) fail('--replay replays admin and agent cases; a web case is re-run with its --seed');
  let replay: FuzzCase[] | undefined;
  if (args.replay) {
    try {
      const body = JSON.parse(readFileSync(args.replay, 'utf8')) as FuzzCase | { cases: FuzzCase[] };
      replay = 'cases' in body ? body.cases : [body];
      if (!replay.every((c) => typeof c.method === 'string' && Array.isArray(c.frames))) throw new Error('not a fuzz case file (method, frames)');
    } catch (e) { fail(`cannot read --replay ${args.replay}: ${(e as Error).message}`); }
  }

  const outDir = args.out ?? mkdtempSync(join(tmpdir(), 'trellis-fuzz-'));
  const note = (m: string) => process.stderr.write(`[fuzz] ${m}\n`);
  const hub = await startFuzzHub(join(outDir, `run-${process.pid}`));
  note(`hub pid ${hub.proc.pid}, admin ${hub.adminAddr}, agent ${hub.agentAddr}, log ${hub.logFile}`);
  let failed = false;
  try {
    const p = await preparePrincipals(hub);
    if (target === 'agent-side') {
      const dataDir = join(outDir, `agent-${process.pid}`);
      await enroll({ hub: hub.adminAddr, token: p.examples.joinToken!, dataDir });
      const agentId = readState(agentPaths(dataDir)).agentId;
      await hub.stop(3000);
      note(`seed ${seed}: agent ${agentId} against a fake hub on ${hub.agentAddr} for ${seconds} s`);
      const a = await runAgentSideFuzz({ dataDir, agentId, agentAddr: hub.agentAddr, hubDir: hub.dataDir, seconds, seed, outDir: join(outDir, 'agent-side'), note });
      process.stdout.write(`fuzz_seed: ${seed} seed\n`);
      process.stdout.write(`fuzz_agent_cases: ${a.cases} cases\n`);
      process.stdout.write(`fuzz_agent_crashes: ${a.crashes} crashes\n`);
      process.stdout.write(`fuzz_agent_bogus_frames: ${a.bogus.length} frames\n`);
      process.stdout.write(`fuzz_agent_error_lines: ${a.agentErrors.length} lines\n`);
      for (const b of a.bogus.slice(0, 5)) note(`bogus: ${b}`);
      for (const l of a.agentErrors.slice(0, 5)) note(`agent error: ${l}`);
      failed = a.crashes > 0 || a.bogus.length > 0 || a.agentErrors.length > 0;
      return failed ? 1 : 0;
    }
    if (target === 'web') {
      note(`seed ${seed}: fuzzing the web port ${hub.webAddr} for ${seconds} s; failing cases go to ${outDir}`);
      const w = await runWebFuzz({ webAddr: hub.webAddr, caPem: hub.caPem, webhook: p.webhook, apiKey: p.apiKey, seconds, seed, hubExit: hub.exit, outDir, note });
      const errors = hub.errorLines();
      process.stdout.write(`fuzz_seed: ${seed} seed\n`);
      process.stdout.write(`fuzz_web_cases: ${w.cases} cases\n`);
      process.stdout.write(`fuzz_hub_crashes: ${w.crashes} crashes\n`);
      process.stdout.write(`fuzz_web_unexpected_status: ${w.unexpected.length} statuses\n`);
      process.stdout.write(`fuzz_hub_error_lines: ${errors.length} lines\n`);
      note(`statuses: ${Object.entries(w.statuses).map(([k, v]) => `${k} ${v}`).join(', ')}`);
      for (const l of errors.slice(0, 5)) note(`hub error: ${l.slice(0, 400)}`);
      if (w.crash) note(`hub crash/hang: ${w.crash.reason}${w.crash.file ? ` (cases in ${w.crash.file})` : ''}; hub log ${hub.logFile}`);
      failed = w.crashes > 0 || w.unexpected.length > 0 || errors.length > 0;
      return failed ? 1 : 0;
    }
    const opts = { adminAddr: hub.adminAddr, agentAddr: hub.agentAddr, caPem: hub.caPem, ...p, seconds, seed, target, hubExit: hub.exit, outDir, note };
    if (replay) {
      const results = await replayCases(opts, replay);
      for (const r of results) {
        note(`${r.c.method} as ${r.c.principal} (seed ${r.c.seed}, case ${r.c.index}): status ${r.outcome.code} ${r.outcome.details.slice(0, 200)} -> ${r.verdict.ok ? 'allowed' : `UNEXPECTED: ${r.verdict.reason}`}`);
        if (!r.verdict.ok) failed = true;
      }
      const exit = hub.exit();
      if (exit) { note(`the hub exited (${exit}); see ${hub.logFile}`); failed = true; }
      return failed ? 1 : 0;
    }
    note(`seed ${seed}: fuzzing ${target} for ${seconds} s; failing cases go to ${outDir}`);
    const r = await runFuzz(opts);
    const errors = hub.errorLines();
    process.stdout.write(`fuzz_seed: ${seed} seed\n`);
    process.stdout.write(`fuzz_cases: ${r.cases} cases\n`);
    process.stdout.write(`fuzz_hub_crashes: ${r.crashes} crashes\n`);
    process.stdout.write(`fuzz_unexpected_status: ${r.unexpected.length} statuses\n`);
    process.stdout.write(`fuzz_hub_error_lines: ${errors.length} lines\n`);
    process.stdout.write(`fuzz_methods_covered: ${r.methodsCovered} of ${r.methodsInContract} methods\n`);
    const rss = rssMb(hub.proc.pid);
    if (rss !== undefined) process.stdout.write(`fuzz_hub_rss_mb: ${rss} MB\n`);
    note(`statuses: ${Object.entries(r.statuses).map(([k, v]) => `${k} ${v}`).join(', ')}`);
    note(`slowest: ${r.slowest.map((x) => `${x.method} as ${x.principal} case ${x.index} ${x.ms} ms ${x.status}`).join('; ')}`);
    for (const l of errors.slice(0, 5)) note(`hub error: ${l.slice(0, 400)}`);
    if (r.crash) note(`hub crash/hang: ${r.crash.reason}${r.crash.file ? ` (cases in ${r.crash.file})` : ''}; hub log ${hub.logFile}`);
    failed = r.crashes > 0 || r.unexpected.length > 0 || errors.length > 0;
  } finally {
    await hub.stop(3000);
    if (!failed && !args.out) rmSync(outDir, { recursive: true, force: true });
    else note(`kept ${outDir}`);
  }
  return failed ? 1 : 0;
}

main().then((code) => process.exit(code), (err: unknown) => {
  process.stderr.write(`fuzz: ${(err as Error)?.stack ?? String(err)}\n`);
  process.exit(2);
});
