/**
 * `npm run bench`: Trellis's performance figures, all measured in one run.
 *
 * stdout carries exactly one `name: value unit` line per figure (or `name: error`, with the
 * reason on stderr); everything else goes to stderr. The process always exits 0.
 *
 *  1. cert_issue_per_s           agent certificates from the hub CA via HubPki.issueAgentCertificate
 *                                (the default P-256 CA, fresh P-256 subject keys)
 *  2. cert_issue_forge_js_per_s  the same certificate with node-forge's pure-JS pki API, RSA-2048 CA,
 *                                one RSA-2048 subject key (forge signs RSA only)
 *     cert_issue_rsa2048_per_s   HubPki.issueAgentCertificate with an RSA-2048 CA and one RSA-2048
 *                                subject key: the same key types as (2), native node:crypto
 *     cert_issue_speedup         like with like: cert_issue_rsa2048_per_s / (2)
 *     cert_issue_speedup_cross_type  (1) / (2): P-256 native against RSA-2048 pure JS
 *  3. enroll_hub_cpu_ms          CPU time of a child hub process per enrollment (/proc/<pid>/stat)
 *  4. agent_enroll_wall_ms       wall time of one enroll() call, sequential (mean, and p99 of 100 samples)
 *  5. channel_events_per_s       events acknowledged over one agent mTLS stream, default batching
 *     channel_events_unbatched_per_s  the same with batchSize 1
 *  6. login_ms                   mean AdminAuth.Login against the child hub (scrypt dominates)
 *     authz_check_per_s          RBAC decisions over 1,000 roles / 10,000 grants (bench/auth.ts)
 *     authed_rpc_overhead_us     ListAgents (token + authz) minus open GetVersion, same channel
 *     seal_per_s                 64-byte secrets sealed for one P-256 agent certificate (bench/seal.ts)
 *     kv_get_decrypt_per_s       KvStore get + decrypt of secrets, in-process (bench/kv.ts)
 *     rotate_10k_values_s        master key rotation over 10,000 secrets, lowdb store in a temp dir
 *  7. raw_stream_events_per_s, ingest_events_per_s, ingest_vs_raw_ratio, ingest_vs_raw_hub_cpu_ratio, event_to_action_p99_ms,
 *     event_to_action_missing, event_to_action_hub_cpu_us, event_to_action_agent_cpu_us, event_to_action_sink_cpu_us,
 *     event_to_action_floor_p99_ms, event_to_action_floor_hub_cpu_us, event_to_action_floor_agent_cpu_us,
 *     event_to_action_steal_pct, event_to_action_floor_steal_pct, webhook_req_per_s,
 *     secret_fanout_1000_agents_p99_ms   automation against the child hub (bench/automation.ts)
 *     cluster_ingest_events_per_s  2 hubs on one throwaway PostgreSQL, 10 simulated agents split over both, the
 *                                rules of ingest_events_per_s, a /stream follower on hub B (bench/cluster.ts);
 *                                `skipped` (reason on stderr) where PostgreSQL is not installed
 *  9. ca_rotation_1000_agents_s  `ca rotate start` → all renewed → `commit` with 1,000 simulated agents
 *                                 connected to a hub of its own (bench/ca-rotation.ts, bench/simagent.ts)
 *  8. preauth_rss_40x4mib_mb     hub RSS growth under 40 concurrent unauthenticated 4 MiB Logins
 *     kv_set_p99_ms              authenticated kv set latency (a state-file write), quiet hub
 *     login_flood_kv_set_p99_ms  the same while 16 clients from 16 addresses flood Login (bench/dos.ts)
 *  9. agent_install_wall_s       `agents install` of one server over SSH on loopback: bundle copy → agent online
 *                                (bundle built beforehand, not counted; needs root and sshd) (bench/fleet.ts)
 * 10. agent_idle_rss_mb, agent_idle_cpu_pct  one idle agent as its systemd unit runs it (`node
 *                                --max-semi-space-size=1 bin/trellis.js agent run`, MALLOC_ARENA_MAX=2), no
 *                                sensors, connected to the child hub: mean VmRSS and CPU share over 20 s
 *                                after 45 s settling, from /proc (bench/agent-idle.ts)
 * 11. console_agents_page_p99_ms, console_executions_page_p99_ms, console_overview_p99_ms  the web
 *                                console's calls through its API bridge (HTTPS, cookie, CSRF) on a hub
 *                                holding 5,000 agents and 100,000 executions: an agents page (limit 50,
 *                                status/selector filters, a later page), an executions page (limit 50,
 *                                status/action/agent filters, an older page), the overview's calls (bench/console.ts)
 *
 * Knobs (environment): TRELLIS_BENCH_HUB_NODE_ARGS adds node flags to the child hub and to the
 * event_to_action floor's hub (for example "--cpu-prof --cpu-prof-dir=/tmp/prof"); TRELLIS_BENCH_E2A_NODE_ARGS the same for the event_to_action agent process; TRELLIS_BENCH_KEEP=1 keeps the temp directory;
 * TRELLIS_BENCH_ONLY=name,name measures only those figures (and the phases they share a run with);
 * event_to_action: TRELLIS_BENCH_E2A_RATE (events/s, 1000), TRELLIS_BENCH_E2A_WARM (warm-up events,
 * 20000), TRELLIS_BENCH_E2A_RAMP (of those, the first that ramp up to the rate, 3000),
 * TRELLIS_BENCH_E2A_MEASURED (events measured, 20000), TRELLIS_BENCH_TRACE=1 (where slow events spent their time, on stderr).
 */
import crypto from 'node:crypto';
import { mkdtemp, rm, readFile } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { ulid } from 'ulid';
import { initHub } from '../hub/init.js';
import { HubPki } from '../hub/pki/index.js';
import { hubPaths } from '../hub/paths.js';
import { issueCertificate, createCSR, parseCSR, generateKey } from '../certs/index.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import { enroll } from '../agent/enroll.js';
import { Agent, agentFacts } from '../agent/agent.js';
import { HubChannel } from '../agent/channel.js';
import { agentPaths, loadIdentity, readState } from '../agent/identity.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';
import { benchClusterIngest, clusterBenchMissing } from './cluster.js';
import { makeForgeIssuer } from './forge-naive.js';
import { benchAuthedRpc, benchAuthz, benchLogin } from './auth.js';
import { benchKvGetDecrypt, benchKvRotate } from './kv.js';
import { benchLoginFlood, benchPreAuthRss } from './dos.js';
import { benchSeal } from './seal.js';
import { benchAgentInstall } from './fleet.js';
import { benchEventToAction, benchEventToActionFloor, benchIngest, benchSecretFanout, benchWebhook, installBenchPack, type AutomationCtx } from './automation.js';
import { silenceIpServernameWarning } from '../common/warnings.js';
import { benchCaRotation } from './ca-rotation.js';
import { benchCliStart } from './cli.js';
import { benchAgentIdle } from './agent-idle.js';
import { benchStore } from './store.js';
import { benchClusterDispatch } from './cluster-dispatch.js';
import { postgresMissing } from '../test/helpers/postgres.js';
import { benchConsole } from './console.js';
import { envArgs, mean, note, percentile, pool, processCpuMs, sleep, startChildHub, type ChildHub } from './lib.js';

silenceIpServernameWarning();

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const NAMES = ['localhost', '127.0.0.1'];
const TRUST_DOMAIN = 'trellis.local';
const AGENT_CERT_TTL_MS = 7 * 86_400_000;

const CERT_RUN_MS = 2000;
const FORGE_RUN_MS = 2000;
const ENROLL_CPU_N = 200;
const ENROLL_CPU_CONCURRENCY = 4;
/** Sequential enrollments timed: a p99 needs at least 100 samples (nearest rank: the 99th of 100). */
const ENROLL_WALL_N = 100;
const EVENTS_BATCHED = 1_000_000;
const EVENTS_UNBATCHED = 50_000;
const CHANNEL_CAP_MS = 30_000;

const FIGURES = [
  'cert_issue_per_s', 'cert_issue_forge_js_per_s', 'cert_issue_rsa2048_per_s', 'cert_issue_speedup', 'cert_issue_speedup_cross_type', 'enroll_hub_cpu_ms',
  'agent_enroll_wall_ms', 'agent_enroll_wall_p99_ms', 'channel_events_per_s', 'channel_events_unbatched_per_s',
  'login_ms', 'authz_check_per_s', 'authed_rpc_overhead_us',
  'seal_per_s',
  'kv_get_decrypt_per_s', 'rotate_10k_values_s',
  'raw_stream_events_per_s', 'ingest_events_per_s', 'event_to_action_p99_ms', 'webhook_req_per_s', 'secret_fanout_1000_agents_p99_ms',
  'ingest_vs_raw_ratio', 'ingest_vs_raw_hub_cpu_ratio', 'event_to_action_missing', 'event_to_action_hub_cpu_us', 'event_to_action_agent_cpu_us',
  'event_to_action_sink_cpu_us', 'event_to_action_floor_p99_ms', 'event_to_action_floor_hub_cpu_us', 'event_to_action_floor_agent_cpu_us',
  'event_to_action_steal_pct', 'event_to_action_floor_steal_pct',
  'preauth_rss_40x4mib_mb', 'kv_set_p99_ms', 'login_flood_kv_set_p99_ms',
  'agent_install_wall_s',
  'ca_rotation_1000_agents_s',
  'cli_start_ms',
  'agent_idle_rss_mb', 'agent_idle_cpu_pct',
  'store_pg_update_p99_ms', 'store_lowdb_update_p99_ms', 'store_pg_propagation_p99_ms',
  'cluster_dispatch_p99_ms',
  'cluster_ingest_events_per_s',
  'console_agents_page_p99_ms', 'console_executions_page_p99_ms', 'console_overview_p99_ms',
] as const;
type Figure = typeof FIGURES[number];
const reported = new Set<Figure>();

function report(name: Figure, value: number, unit: string, decimals = 0): void {
  if (reported.has(name)) return;
  reported.add(name);
  const v = decimals === 0 ? String(Math.round(value)) : value.toFixed(decimals);
  process.stdout.write(`${name}: ${v} ${unit}\n`);
}

function reportError(names: Figure[], err: unknown): void {
  const why = err instanceof Error ? err.message : String(err);
  for (const name of names) {
    if (reported.has(name)) continue;
    reported.add(name);
    process.stdout.write(`${name}: error\n`);
    note(`${name}: not measured: ${why}`);
  }
}

const ONLY = new Set((process.env.TRELLIS_BENCH_ONLY ?? '').split(',').map((s) => s.trim()).filter(Boolean));

/** Runs one figure's measurement; a failure becomes `name: error` for the names not yet printed. */
async function figure(names: Figure[], fn: () => Promise<void>): Promise<void> {
  if (ONLY.size > 0 && !names.some((n) => ONLY.has(n))) { for (const n of names) reported.add(n); return; }
  try { await fn(); } catch (err) { reportError(names, err); }
}

// ---- state shared by the phases and the cleanup ----------------------------------------------
let tmpRoot: string | undefined;
let child: ChildHub | undefined;
let admin: AdminClients | undefined;
const closers: Array<() => Promise<void>> = [];
let cleaning: Promise<void> | undefined;

function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    for (const c of closers.reverse()) await c().catch(() => undefined);
    admin?.close();
    await child?.stop().catch(() => undefined);
    if (tmpRoot && process.env.TRELLIS_BENCH_KEEP !== '1') await rm(tmpRoot, { recursive: true, force: true }).catch(() => undefined);
    else if (tmpRoot) note(`kept ${tmpRoot}`);
  })();
  return cleaning;
}

async function finish(): Promise<never> {
  await cleanup();
  reportError(FIGURES.filter((f) => !reported.has(f)), new Error('the run ended before this figure was measured'));
  process.exit(0);
}

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => { note(`${sig}: stopping`); void finish(); });
}
process.on('uncaughtException', (err) => { note(`uncaught: ${err.stack ?? err}`); void finish(); });
process.on('unhandledRejection', (err) => { note(`unhandled rejection: ${(err as Error)?.stack ?? err}`); void finish(); });
// A last resort: never hang a CI job.
setTimeout(() => { note('watchdog: over 900 s, giving up'); void finish(); }, 900_000).unref();

// ---- 1. certificate issuance through the hub's own function ------------------------------------
/**
 * Subject keys as the hub gets them: each agent makes a P-256 key and a CSR, and the hub's
 * public key object comes out of parseCSR (untimed here; enroll_hub_cpu_ms covers it).
 */
function freshKeys(n: number): Array<{ key: crypto.KeyObject; agentId: string }> {
  return Array.from({ length: n }, () => {
    const priv = generateKey('ec-p256').privateKey;
    return { key: parseCSR(createCSR({ privateKey: priv, subject: { commonName: 'bench' } })).publicKey, agentId: ulid().toLowerCase() };
  });
}

/**
 * Issues certificates for ~runMs of measured time. Subject keys are fresh KeyObjects made
 * outside the timed sections (batches of 500), as every enrollment brings a new key.
 */
function timedIssue(runMs: number, issueOne: (k: crypto.KeyObject, agentId: string) => string): { rate: number; n: number; sample: string } {
  let n = 0;
  let spent = 0;
  let sample = '';
  while (spent < runMs) {
    const batch = freshKeys(500);
    const t0 = performance.now();
    for (const { key, agentId } of batch) sample = issueOne(key, agentId);
    spent += performance.now() - t0;
    n += batch.length;
  }
  return { rate: (n * 1000) / spent, n, sample };
}

function checkIssued(pem: string, caPublicKey: crypto.KeyObject, what: string): void {
  const x = new crypto.X509Certificate(pem);
  if (!x.verify(caPublicKey)) throw new Error(`${what}: the issued certificate does not verify against the CA key`);
  if (!/URI:spiffe:\/\//.test(x.subjectAltName ?? '')) throw new Error(`${what}: the issued certificate has no spiffe URI SAN`);
}

async function benchCertIssue(hubDir: string): Promise<number> {
  const pki = HubPki.load(hubPaths(hubDir), NAMES);
  const caPublicKey = crypto.createPublicKey(pki.caKey!);
  const viaHub = (key: crypto.KeyObject, agentId: string) =>
    pki.issueAgentCertificate({ publicKey: key, agentId, tenant: 'default', trustDomain: TRUST_DOMAIN, ttlMs: AGENT_CERT_TTL_MS }).certPem;
  const direct = (key: crypto.KeyObject, agentId: string) => issueCertificate({
    issuerCertPem: pki.caCertPem, issuerKey: pki.caKey!, subjectPublicKey: key, subject: { commonName: agentId, organization: 'default' },
    uris: [`spiffe://${TRUST_DOMAIN}/tenant/default/agent/${agentId}`], usage: 'client', notAfter: new Date(Date.now() + AGENT_CERT_TTL_MS),
  });
  timedIssue(300, viaHub); // warm-up
  const hub = timedIssue(CERT_RUN_MS, viaHub);
  checkIssued(hub.sample, caPublicKey, 'HubPki.issueAgentCertificate');
  note(`cert issue: HubPki.issueAgentCertificate ${hub.n} certs, ${(1000 / hub.rate).toFixed(3)} ms each (${Math.round(hub.rate)}/s)`);
  // For comparison only (stderr): the certs-library function alone, without HubPki's certInfo calls.
  timedIssue(200, direct);
  const lib = timedIssue(1000, direct);
  checkIssued(lib.sample, caPublicKey, 'issueCertificate');
  note(`cert issue: certs.issueCertificate alone ${lib.n} certs, ${(1000 / lib.rate).toFixed(3)} ms each (${Math.round(lib.rate)}/s)`);
  report('cert_issue_per_s', hub.rate, 'certs/s');
  return hub.rate;
}

/**
 * The hub's own issuance with the key types of the forge baseline: a hub data directory made with
 * an RSA-2048 CA (initHub caKeyType) and one RSA-2048 subject key, as makeForgeIssuer uses.
 */
async function benchCertIssueRsa(dir: string): Promise<number> {
  await initHub({ dataDir: dir, names: NAMES, trustDomain: TRUST_DOMAIN, adminPassword: crypto.randomBytes(18).toString('base64url'), caKeyType: 'rsa-2048', config: { bind: '127.0.0.1' } });
  const pki = HubPki.load(hubPaths(dir), NAMES);
  const caPublicKey = crypto.createPublicKey(pki.caKey!);
  if (caPublicKey.asymmetricKeyType !== 'rsa' || caPublicKey.asymmetricKeyDetails?.modulusLength !== 2048) throw new Error('the hub CA is not RSA-2048');
  const subject = crypto.generateKeyPairSync('rsa', { modulusLength: 2048, publicExponent: 0x10001 }).publicKey;
  const one = () => {
    const agentId = ulid().toLowerCase();
    return pki.issueAgentCertificate({ publicKey: subject, agentId, tenant: 'default', trustDomain: TRUST_DOMAIN, ttlMs: AGENT_CERT_TTL_MS }).certPem;
  };
  for (let i = 0; i < 20; i++) one(); // warm-up
  let n = 0;
  let sample = '';
  const start = performance.now();
  while (performance.now() - start < CERT_RUN_MS) { sample = one(); n++; }
  const ms = performance.now() - start;
  checkIssued(sample, caPublicKey, 'HubPki.issueAgentCertificate (RSA-2048 CA)');
  const rate = (n * 1000) / ms;
  note(`cert issue (RSA-2048 CA, RSA-2048 subject key, native): ${n} certs in ${Math.round(ms)} ms, ${(ms / n).toFixed(3)} ms each`);
  report('cert_issue_rsa2048_per_s', rate, 'certs/s');
  return rate;
}

// ---- 2. the naive node-forge baseline ------------------------------------------------------------
function benchForge(): number {
  const t0 = performance.now();
  const f = makeForgeIssuer();
  note(`forge: RSA-2048 CA and subject keys ready in ${Math.round(performance.now() - t0)} ms`);
  const one = () => {
    const id = ulid().toLowerCase();
    return f.issue(id, 'default', `spiffe://${TRUST_DOMAIN}/tenant/default/agent/${id}`);
  };
  for (let i = 0; i < 3; i++) one(); // warm-up
  let n = 0;
  let sample = '';
  const start = performance.now();
  while (performance.now() - start < FORGE_RUN_MS) { sample = one(); n++; }
  const ms = performance.now() - start;
  checkIssued(sample, f.caPublicKey, 'forge');
  const rate = (n * 1000) / ms;
  note(`forge: ${n} certs in ${Math.round(ms)} ms, ${(ms / n).toFixed(2)} ms each`);
  report('cert_issue_forge_js_per_s', rate, 'certs/s');
  return rate;
}

// ---- 3..5: a real hub in a child process ---------------------------------------------------------
async function adminLogin(adminAddr: string, caPem: string, password: string): Promise<AdminClients> {
  // Version first: the hub answers once both listeners are up.
  const deadline = Date.now() + 20_000;
  for (;;) {
    const probe = adminClients(adminAddr, caPem);
    try {
      const v = await call<T.GetVersionRequest, T.VersionInfo__Output>(probe, probe.version, probe.version.GetVersion, {}, 2000);
      note(`hub answers Version ${v.version} (api ${v.api}), canIssue=${v.canIssue}`);
      break;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`the hub did not answer Version within 20 s: ${(err as Error).message}`);
      await sleep(100);
    } finally {
      probe.close();
    }
  }
  const anon = adminClients(adminAddr, caPem);
  let login: T.LoginResponse__Output;
  try {
    login = await call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username: 'admin', password });
  } finally {
    anon.close();
  }
  return adminClients(adminAddr, caPem, login.token);
}

async function joinToken(uses: number): Promise<string> {
  const r = await call<T.CreateJoinTokenRequest, T.CreateJoinTokenResponse__Output>(admin!, admin!.tokens, admin!.tokens.CreateJoinToken,
    { tenant: 'default', uses, ttlMs: 600_000, description: 'bench' });
  return r.token;
}

let agentSeq = 0;
const agentDir = () => join(tmpRoot!, 'agents', `a-${++agentSeq}`);

async function benchEnrollCpu(adminAddr: string): Promise<void> {
  // A few untimed enrollments first (JIT, first-use paths in the hub).
  const warm = await joinToken(4);
  for (let i = 0; i < 4; i++) await enroll({ hub: adminAddr, token: warm, dataDir: agentDir() });
  const token = await joinToken(ENROLL_CPU_N);
  await sleep(100);
  const pid = child!.pid;
  const cpu0 = processCpuMs(pid);
  const t0 = performance.now();
  await pool(ENROLL_CPU_N, ENROLL_CPU_CONCURRENCY, async () => { await enroll({ hub: adminAddr, token, dataDir: agentDir() }); });
  const wall = performance.now() - t0;
  await sleep(200); // let the hub finish closing the connections the enrollments opened
  const cpu = processCpuMs(pid) - cpu0;
  note(`enroll (hub CPU): ${ENROLL_CPU_N} enrollments, concurrency ${ENROLL_CPU_CONCURRENCY}, ${Math.round(wall)} ms wall `
    + `(${((ENROLL_CPU_N * 1000) / wall).toFixed(1)}/s), hub CPU ${Math.round(cpu)} ms`);
  report('enroll_hub_cpu_ms', cpu / ENROLL_CPU_N, 'ms', 2);
}

async function benchEnrollWall(adminAddr: string): Promise<string[]> {
  const token = await joinToken(ENROLL_WALL_N);
  const dirs: string[] = [];
  const times: number[] = [];
  for (let i = 0; i < ENROLL_WALL_N; i++) {
    const dir = agentDir();
    const t0 = performance.now();
    await enroll({ hub: adminAddr, token, dataDir: dir });
    times.push(performance.now() - t0);
    dirs.push(dir);
  }
  if (times.length < 100) throw new Error(`a p99 needs at least 100 samples, got ${times.length}`);
  note(`enroll (wall): n=${times.length}, min ${Math.min(...times).toFixed(2)} ms, median ${percentile(times, 50).toFixed(2)} ms, `
    + `p99 ${percentile(times, 99).toFixed(2)} ms (nearest rank ${Math.ceil(0.99 * times.length)} of ${times.length}), max ${Math.max(...times).toFixed(2)} ms`);
  report('agent_enroll_wall_ms', mean(times), 'ms', 2);
  report('agent_enroll_wall_p99_ms', percentile(times, 99), `ms (n=${times.length})`, 2);
  return dirs;
}

/** ~250 bytes of JSON, shared by every event (the id makes each event unique). */
const PAYLOAD = (() => {
  const base = { host: 'web-01.example.internal', check: 'disk', mount: '/var/lib/data', usedPct: 81.4, freeBytes: 19_327_352_832, severity: 'warning', tags: ['prod', 'eu-west-1', 'storage'], note: '' };
  const len = Buffer.byteLength(JSON.stringify(base));
  base.note = 'x'.repeat(Math.max(0, 250 - len));
  return Buffer.from(JSON.stringify(base));
})();

/**
 * Publishes `total` events through `ch` in chunks, keeping the backlog under maxQueued, and
 * resolves when the hub has acknowledged them all (or capMs has passed).
 */
function pumpEvents(ch: HubChannel, total: number, prefix: string, opts: { chunk: number; high: number; capMs: number }): Promise<{ ms: number; acked: number; complete: boolean }> {
  const acked0 = ch.stats.eventsAcked;
  const dropped0 = ch.stats.eventsDropped;
  let published = 0;
  let scheduled = false;
  const start = performance.now();
  return new Promise((resolve, reject) => {
    let timer: NodeJS.Timeout | undefined;
    const done = (complete: boolean) => {
      clearTimeout(timer);
      ch.off('acked', onAck);
      ch.off('state', onState);
      const acked = ch.stats.eventsAcked - acked0;
      if (ch.stats.eventsDropped !== dropped0) { reject(new Error(`${ch.stats.eventsDropped - dropped0} events dropped by the channel queue`)); return; }
      resolve({ ms: performance.now() - start, acked, complete });
    };
    const pump = () => {
      scheduled = false;
      // A few chunks per turn, then yield so acks and timers get their turn.
      for (let k = 0; k < 4 && published < total && ch.backlog < opts.high; k++) {
        const n = Math.min(opts.chunk, total - published);
        const timeMs = Date.now();
        const events: T.Event[] = new Array(n);
        for (let i = 0; i < n; i++) events[i] = { id: `${prefix}-${published + i}`, type: 'core.bench_disk', payloadJson: PAYLOAD, timeMs };
        ch.publish(events);
        published += n;
      }
      schedule();
    };
    const schedule = () => {
      if (!scheduled && published < total && ch.backlog < opts.high) { scheduled = true; setImmediate(pump); }
    };
    const onAck = () => {
      if (ch.stats.eventsAcked - acked0 >= total) done(true);
      else schedule();
    };
    const onState = (s: string) => { if (s === 'closed') reject(new Error('the channel closed during the run')); };
    ch.on('acked', onAck);
    ch.on('state', onState);
    timer = setTimeout(() => done(false), opts.capMs);
    pump();
  });
}

function waitReady(ch: HubChannel, ms: number): Promise<void> {
  if (ch.state === 'ready') return Promise.resolve();
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => { ch.off('state', on); reject(new Error(`the channel was not ready within ${ms} ms (state ${ch.state})`)); }, ms);
    const on = (s: string, detail: unknown) => {
      if (s === 'ready') { clearTimeout(t); ch.off('state', on); resolve(); }
      if (s === 'closed') { clearTimeout(t); ch.off('state', on); reject(new Error(`the channel closed: ${(detail as Error)?.message ?? ''}`)); }
    };
    ch.on('state', on);
  });
}

const silentLog = () => pino({ level: 'silent' });

function channelNote(what: string, r: { ms: number; acked: number; complete: boolean }, total: number): number {
  const rate = (r.acked * 1000) / r.ms;
  note(`${what}: ${r.acked}/${total} events acknowledged in ${Math.round(r.ms)} ms (${Math.round(rate)}/s)`
    + (r.complete ? '' : ` — stopped at the ${CHANNEL_CAP_MS / 1000} s cap; the rate is over the acknowledged events`));
  if (r.acked === 0) throw new Error(`no event acknowledged within ${CHANNEL_CAP_MS} ms`);
  return rate;
}

async function benchChannelBatched(dataDir: string): Promise<void> {
  const agent = await Agent.start({ dataDir, log: silentLog(), maxBackoffMs: 1000 });
  closers.push(() => agent.close());
  await waitReady(agent.channel, 10_000);
  const r = await pumpEvents(agent.channel, EVENTS_BATCHED, 'b', { chunk: 4000, high: 24_000, capMs: CHANNEL_CAP_MS });
  report('channel_events_per_s', channelNote('channel (batched, default batchSize 500)', r, EVENTS_BATCHED), 'events/s');
  await agent.close();
}

async function benchChannelUnbatched(dataDir: string): Promise<void> {
  // Agent does not expose batchSize, so build the channel the way Agent does, from the enrolled files.
  const paths = agentPaths(dataDir);
  const state = readState(paths);
  const id = loadIdentity({ key: paths.key, cert: paths.cert, ca: paths.ca }, paths);
  const ch = new HubChannel({
    target: state.hub,
    credentials: () => ({ caPem: id.caPem, keyPem: id.keyPem, certPem: id.certPem }),
    hello: () => ({ facts: agentFacts(), labels: {} }),
    onAction: () => undefined,
    onCancel: () => undefined,
    log: silentLog(),
    maxBackoffMs: 1000,
    batchSize: 1,
  });
  closers.push(() => ch.close());
  ch.start();
  await waitReady(ch, 10_000);
  const r = await pumpEvents(ch, EVENTS_UNBATCHED, 'u', { chunk: 1000, high: 4000, capMs: CHANNEL_CAP_MS });
  report('channel_events_unbatched_per_s', channelNote('channel (batchSize 1, default maxInflight 16)', r, EVENTS_UNBATCHED), 'events/s');
  await ch.close();
}

// ---- main -------------------------------------------------------------------------------------
async function main(): Promise<void> {
  const t0 = performance.now();
  // Figures are only comparable on a quiet machine: say how busy it was.
  note(`load average at start: ${loadavg().map((l) => l.toFixed(2)).join(' ')} (cores: ${cpus().length})`);
  tmpRoot = await mkdtemp(join(tmpdir(), 'trellis-bench-'));
  const hubDir = join(tmpRoot, 'hub');
  const password = crypto.randomBytes(18).toString('base64url');
  let hubReady: Error | undefined;
  let caPem = '';
  try {
    // Executions in flight per agent: the agent's own limit (maxConcurrentActions, 16), so event_to_action_p99_ms
    // measures the pipeline rather than the hub's queue in front of one agent (hub default: 8).
    // /metrics from loopback without a key: event_to_action reads the hub's dispatch histograms (its latency breakdown).
    // Every simulated agent connects from 127.0.0.1, as a fleet behind one NAT address: the per-address handshake bound is raised as for one.
    await initHub({ dataDir: hubDir, names: NAMES, trustDomain: TRUST_DOMAIN, adminPassword: password, config: { bind: '127.0.0.1', executions: { perAgentConcurrency: Number(process.env.TRELLIS_BENCH_CONCURRENCY ?? 16) }, metrics: { allow: ['127.0.0.1/32'] }, agentChannel: { maxHandshakesPerAddress: 20_000 } } });
  } catch (err) {
    hubReady = err as Error;
  }

  // First, on a machine the bench has not loaded yet: `trellis version`, no hub call.
  await figure(['cli_start_ms'], async () => {
    const r = await benchCliStart({ root: ROOT, tmpRoot: tmpRoot! });
    note(`cli_start_ms samples: ${r.samples.map((x) => Math.round(x)).join(' ')}`);
    report('cli_start_ms', r.medianMs, 'ms');
  });

  let fast: number | undefined;
  let naive: number | undefined;
  await figure(['cert_issue_per_s', 'cert_issue_speedup_cross_type'], async () => {
    if (hubReady) throw hubReady;
    fast = await benchCertIssue(hubDir);
  });
  await figure(['cert_issue_forge_js_per_s', 'cert_issue_speedup', 'cert_issue_speedup_cross_type'], async () => { naive = benchForge(); });
  let rsa: number | undefined;
  await figure(['cert_issue_rsa2048_per_s', 'cert_issue_speedup'], async () => { rsa = await benchCertIssueRsa(join(tmpRoot!, 'hub-rsa')); });
  // Like with like: the same key types (RSA-2048 CA and subject key), native node:crypto against pure JS.
  await figure(['cert_issue_speedup'], async () => {
    if (rsa === undefined || naive === undefined) throw new Error('needs both cert_issue_rsa2048_per_s and cert_issue_forge_js_per_s');
    report('cert_issue_speedup', rsa / naive, 'x', 1);
  });
  // Across key types (the default P-256 CA against forge's RSA-2048): most of this ratio is the key type, not the library.
  await figure(['cert_issue_speedup_cross_type'], async () => {
    if (fast === undefined || naive === undefined) throw new Error('needs both cert_issue_per_s and cert_issue_forge_js_per_s');
    report('cert_issue_speedup_cross_type', fast / naive, 'x', 1);
  });
  await figure(['authz_check_per_s'], async () => report('authz_check_per_s', benchAuthz().perS, 'checks/s'));
  await figure(['seal_per_s'], async () => report('seal_per_s', benchSeal().perS, 'seals/s'));
  await figure(['kv_get_decrypt_per_s'], async () => report('kv_get_decrypt_per_s', (await benchKvGetDecrypt()).perS, 'gets/s'));
  await figure(['rotate_10k_values_s'], async () => report('rotate_10k_values_s', (await benchKvRotate()).seconds, 's', 2));
  await figure(['store_pg_update_p99_ms', 'store_lowdb_update_p99_ms', 'store_pg_propagation_p99_ms'], async () => {
    const r = await benchStore();
    report('store_pg_update_p99_ms', r.pgP99, 'ms', 1);
    report('store_lowdb_update_p99_ms', r.lowdbP99, 'ms', 1);
    report('store_pg_propagation_p99_ms', r.propagationP99, 'ms', 1);
  });
  // Several hubs (issue 14 §2): a run on hub B until the action reaches an agent on hub A.
  await figure(['cluster_dispatch_p99_ms'], async () => {
    const missing = postgresMissing();
    if (missing) { reported.add('cluster_dispatch_p99_ms'); process.stdout.write(`cluster_dispatch_p99_ms: skipped (${missing})\n`); return; }
    const r = await benchClusterDispatch({ samples: 200, names: NAMES, trustDomain: TRUST_DOMAIN });
    note(`cluster_dispatch: ${r.n} runs, p50 ${r.p50.toFixed(1)} ms`);
    report('cluster_dispatch_p99_ms', r.p99, 'ms', 1);
  });
  // Two hubs on one PostgreSQL, agents split over both, the rules of ingest_events_per_s (bench/cluster.ts).
  await figure(['cluster_ingest_events_per_s'], async () => {
    const missing = clusterBenchMissing();
    if (missing) {
      reported.add('cluster_ingest_events_per_s');
      process.stdout.write('cluster_ingest_events_per_s: skipped\n');
      note(`cluster_ingest_events_per_s: skipped: ${missing}`);
      return;
    }
    report('cluster_ingest_events_per_s', (await benchClusterIngest({ root: ROOT, names: NAMES, trustDomain: TRUST_DOMAIN })).perS, 'events/s');
  });

  const hubFigures: Figure[] = ['login_ms', 'authed_rpc_overhead_us', 'enroll_hub_cpu_ms', 'agent_enroll_wall_ms', 'agent_enroll_wall_p99_ms', 'channel_events_per_s', 'channel_events_unbatched_per_s'];
  try {
    if (hubReady) throw hubReady;
    const nodeArgs = envArgs('TRELLIS_BENCH_HUB_NODE_ARGS');
    child = await startChildHub(ROOT, hubDir, nodeArgs);
    note(`child hub pid ${child.pid}, admin port ${child.adminPort}, agent port ${child.agentPort}`);
    const adminAddr = `127.0.0.1:${child.adminPort}`;
    admin = await adminLogin(adminAddr, caPem = await readFile(hubPaths(hubDir).caCert, 'utf8'), password);
  } catch (err) {
    reportError(hubFigures, err);
  }

  if (child && admin) {
    const adminAddr = `127.0.0.1:${child.adminPort}`;
    // Before any enrollment, while the hub is (almost) empty.
    await figure(['login_ms'], async () => report('login_ms', await benchLogin(adminAddr, caPem, password), 'ms', 1));
    await figure(['authed_rpc_overhead_us'], async () => report('authed_rpc_overhead_us', await benchAuthedRpc(admin!), 'us'));
    await figure(['enroll_hub_cpu_ms'], () => benchEnrollCpu(adminAddr));
    let enrolled: string[] = [];
    await figure(['agent_enroll_wall_ms', 'agent_enroll_wall_p99_ms'], async () => { enrolled = await benchEnrollWall(adminAddr); });
    // Agents for the channel runs: from the sequential phase, or enrolled here if it failed.
    const agentDirFor = async (i: number): Promise<string> => {
      if (enrolled[i]) return enrolled[i]!;
      const dir = agentDir();
      await enroll({ hub: adminAddr, token: await joinToken(1), dataDir: dir });
      return dir;
    };
    // One idle `trellis agent run` child process, no sensors (bench/agent-idle.ts), before the load phases.
    await figure(['agent_idle_rss_mb', 'agent_idle_cpu_pct'], async () => {
      const dir = agentDir();
      await enroll({ hub: adminAddr, token: await joinToken(1), dataDir: dir });
      const r = await benchAgentIdle({ root: ROOT, dataDir: dir });
      report('agent_idle_rss_mb', r.rssMb, 'MB', 1);
      report('agent_idle_cpu_pct', r.cpuPct, '%', 2);
    });
    await figure(['channel_events_per_s'], async () => benchChannelBatched(await agentDirFor(0)));
    await figure(['channel_events_unbatched_per_s'], async () => benchChannelUnbatched(await agentDirFor(1)));

    const actx: AutomationCtx = {
      admin: admin!, hubDir, agentAddr: `127.0.0.1:${child.agentPort}`, webAddr: `127.0.0.1:${child.webPort}`, caPem, trustDomain: TRUST_DOMAIN, names: NAMES, closers,
    };
    const automation: Figure[] = ['raw_stream_events_per_s', 'ingest_events_per_s', 'event_to_action_p99_ms', 'ingest_vs_raw_ratio', 'ingest_vs_raw_hub_cpu_ratio', 'event_to_action_missing', 'event_to_action_hub_cpu_us', 'event_to_action_agent_cpu_us', 'event_to_action_sink_cpu_us', 'event_to_action_floor_p99_ms', 'event_to_action_floor_hub_cpu_us', 'event_to_action_floor_agent_cpu_us', 'event_to_action_steal_pct', 'event_to_action_floor_steal_pct', 'webhook_req_per_s', 'secret_fanout_1000_agents_p99_ms'];
    let packReady = false; // without the bench pack every automation figure is `error` (figure() reports why)
    await figure(automation, async () => { await installBenchPack(admin!); packReady = true; });
    if (packReady) {
      await figure(['raw_stream_events_per_s', 'ingest_events_per_s', 'ingest_vs_raw_ratio', 'ingest_vs_raw_hub_cpu_ratio'], async () => {
        const r = await benchIngest({ ...actx, hubPid: child!.pid });
        report('raw_stream_events_per_s', r.raw, 'events/s');
        report('ingest_events_per_s', r.withRules, 'events/s');
        report('ingest_vs_raw_ratio', r.withRules / r.raw, 'ratio', 2);
        report('ingest_vs_raw_hub_cpu_ratio', r.rawHubCpuUs / r.rulesHubCpuUs, 'ratio', 2);
      });
      // A measured event whose action never ran (or ran twice) fails the figure: p99 is `error`.
      await figure(['event_to_action_p99_ms', 'event_to_action_missing', 'event_to_action_hub_cpu_us', 'event_to_action_agent_cpu_us', 'event_to_action_sink_cpu_us', 'event_to_action_steal_pct'], async () => {
        const r = await benchEventToAction({ ...actx, hubPid: child!.pid });
        report('event_to_action_steal_pct', r.stealPct, '%', 1);
        report('event_to_action_missing', r.missing + r.duplicated + r.refused, 'actions');
        report('event_to_action_hub_cpu_us', r.hubCpuUsPerEvent, 'us/event');
        report('event_to_action_agent_cpu_us', r.agentCpuUsPerEvent, 'us/event');
        report('event_to_action_sink_cpu_us', r.sinkCpuUsPerEvent, 'us/event');
        if (r.missing + r.duplicated + r.refused > 0) {
          throw new Error(`${r.missing} of ${r.measured} measured actions never ran, ${r.duplicated} ran twice, ${r.refused} events refused by the outbox`);
        }
        report('event_to_action_p99_ms', r.p99, 'ms', 2);
      });
      // The same pipeline without Trellis (same rate, processes, certificates, durability): what this machine allows.
      await figure(['event_to_action_floor_p99_ms', 'event_to_action_floor_hub_cpu_us', 'event_to_action_floor_agent_cpu_us', 'event_to_action_floor_steal_pct'], async () => {
        const r = await benchEventToActionFloor(actx, tmpRoot!);
        report('event_to_action_floor_steal_pct', r.stealPct, '%', 1);
        report('event_to_action_floor_hub_cpu_us', r.hubCpuUsPerEvent, 'us/event');
        report('event_to_action_floor_agent_cpu_us', r.agentCpuUsPerEvent, 'us/event');
        if (r.missing > 0) throw new Error(`${r.missing} measured actions of the floor never ran`);
        report('event_to_action_floor_p99_ms', r.p99, 'ms', 2);
      });
      await figure(['webhook_req_per_s'], async () => report('webhook_req_per_s', await benchWebhook(actx), 'req/s'));
      await figure(['secret_fanout_1000_agents_p99_ms'], async () => report('secret_fanout_1000_agents_p99_ms', await benchSecretFanout(actx), 'ms', 1));
    }
    await figure(['agent_install_wall_s'], async () => report('agent_install_wall_s', await benchAgentInstall({ admin: admin!, adminAddr }), 's', 2));
    // Last: unauthenticated load (a hub that locks accounts as a whole locks `admin` out here).
    await figure(['preauth_rss_40x4mib_mb'], async () => report('preauth_rss_40x4mib_mb', await benchPreAuthRss({ pid: child!.pid, adminAddr, caPem }), 'MB'));
    await figure(['kv_set_p99_ms', 'login_flood_kv_set_p99_ms'], async () => {
      const r = await benchLoginFlood({ admin: admin!, adminPort: child!.adminPort, caPem });
      report('kv_set_p99_ms', r.quiet, 'ms', 1);
      report('login_flood_kv_set_p99_ms', r.flood, 'ms', 1);
    });
  }
  // The web console with 5,000 agents and 100,000 executions: its own hub (bench/console.ts), the machine to itself.
  await figure(['console_agents_page_p99_ms', 'console_executions_page_p99_ms', 'console_overview_p99_ms'], async () => {
    await child?.stop().catch(() => undefined);
    const r = await benchConsole({ root: ROOT, tmpRoot: tmpRoot!, names: NAMES, trustDomain: TRUST_DOMAIN, closers });
    report('console_agents_page_p99_ms', r.agentsP99, 'ms', 1);
    report('console_executions_page_p99_ms', r.executionsP99, 'ms', 1);
    report('console_overview_p99_ms', r.overviewP99, 'ms', 1);
  });
  // Its own hub (a committed rotation changes the CA), after the main hub's phases.
  await figure(['ca_rotation_1000_agents_s'], async () => {
    await child?.stop().catch(() => undefined); // the machine to itself
    const nodeArgs = envArgs('TRELLIS_BENCH_HUB_NODE_ARGS');
    report('ca_rotation_1000_agents_s', await benchCaRotation({ root: ROOT, tmpRoot: tmpRoot!, names: NAMES, trustDomain: TRUST_DOMAIN, nodeArgs, closers }), 's', 1);
  });
  note(`load average at end: ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  note(`done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}

main().catch((err) => note(`failed: ${(err as Error)?.stack ?? err}`)).finally(() => void finish());
