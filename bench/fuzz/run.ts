/**
 * The protocol fuzzer's engine: `runFuzz` sends generated request bytes (bench/fuzz/gen.ts) to
 * every method of the contract on a running hub, as an administrator (API key), as a user with
 * no roles, and without credentials on the admin port, and as enrolled agents (real mTLS
 * certificates) on the agent port: unary calls, server streams and AgentChannel.Connect frames
 * after a real hello. Bytes go out unchanged through a grpc-js client with an identity
 * serializer, so malformed protobuf reaches the hub's decoder.
 *
 * After every batch the hub must still be running and answer Version and an authenticated call
 * within a deadline (bench/fuzz/oracle.ts). Every call's status is checked against the allowed
 * set. A failing case is written to `outDir` as JSON with its method, seed, case index and bytes,
 * and replays with `npm run fuzz -- --replay FILE`.
 */
import * as grpc from '@grpc/grpc-js';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { secureChannel } from '../../common/grpc-tls.js';
import { CODE_KEY } from '../../common/grpc-errors.js';
import { caseBytes, caseRng, chance, contractMethods, encode, int, loadRoot, pick, unknownMethods, type CaseKind, type MethodSpec, type Rng } from './gen.js';
import { examplesFor, helloMessage, type ExampleContext } from './examples.js';
import { classify, judgeHealth, statusName, type HubHealth, type Outcome, type Principal } from './oracle.js';

export type FuzzTarget = 'admin' | 'agent' | 'all';

export interface AgentCredential { keyPem: string; certPem: string }

export interface FuzzOptions {
  adminAddr: string;
  /** The agent port; needed for target agent/all. */
  agentAddr?: string;
  /** The CA the hub's certificate chains to. */
  caPem: string;
  /** An administrator's API key (tak1_…). */
  apiKey: string;
  /** A credential (session token or API key) of a user with no roles; re-obtained if it stops working. */
  lowCredential?: () => Promise<string>;
  /** Enrolled agents' certificates: AgentChannel.Connect is fuzzed with these. */
  agents?: AgentCredential[];
  /** A separate agent certificate for AgentChannel.Renew (a valid renewal would supersede it). */
  renewAgent?: AgentCredential;
  /** Valid inputs for the mutated cases (join token, CSR). */
  examples?: ExampleContext;
  seconds: number;
  seed: number;
  target?: FuzzTarget;
  /** Stop after this many cases (replays, tests); default: run for `seconds`. */
  maxCases?: number;
  /** Undefined while the hub process runs; else how it ended ("code 1", "signal SIGSEGV"). */
  hubExit?: () => string | undefined;
  /** Where failing cases are written (created); default: none written. */
  outDir?: string;
  /** Calls in flight at once (default 8) and cases between liveness checks (default 48). */
  concurrency?: number;
  batchSize?: number;
  /** Progress lines (stderr in the CLI). */
  note?: (msg: string) => void;
  /** Deadline of a unary call before it counts as a hang (default 20 s), of a liveness probe (15 s). */
  callDeadlineMs?: number;
  probeDeadlineMs?: number;
  /** Stops the run at the next batch boundary (the soak pauses the fuzzer before it kills the hub). */
  signal?: AbortSignal;
  /** The first case index (a paused run resumes where it stopped: cases stay a function of seed and index). */
  startIndex?: number;
  /** Admin methods the administrator leaves alone (fuzzed as the user with no roles or without credentials instead). */
  spare?: ReadonlySet<string>;
  /** Test only: the first case is judged unexpected (proves that findings reach the caller's verdict). */
  injectFailure?: boolean;
}

export interface FuzzCase {
  seed: number;
  index: number;
  method: string;
  principal: Principal;
  kind: CaseKind | 'hello+frames';
  /** Request frames, base64 (one for unary and server-streaming methods). */
  frames: string[];
  /** Connect: the first frame is a real hello and the rest go after the welcome. */
  afterWelcome?: boolean;
}

export interface Finding { case: FuzzCase; outcome?: Outcome; reason: string; file?: string }

export interface FuzzResult {
  seed: number;
  cases: number;
  /** Batches after which the hub was gone or did not answer (the run stops at the first). */
  crashes: number;
  crash?: { reason: string; file?: string };
  unexpected: Finding[];
  /** Count per status name over all cases. */
  statuses: Record<string, number>;
  /** Methods of the contract that received at least one case. */
  methodsCovered: number;
  methodsInContract: number;
  seconds: number;
  /** The slowest cases (a slow answer to bad input is a denial-of-service lead). */
  slowest: Array<{ method: string; principal: Principal; index: number; ms: number; status: string }>;
}

/**
 * What the fuzzer's administrator leaves alone while it fuzzes the hub of a soak (`npm run soak --
 * --fuzz-seconds S`): whatever would change the soak's own workload, so that the soak's checks
 * keep meaning what they say: actions on its agents (a second run of an action would read as a
 * duplicate), its agents, rules and packs (a rule matching its events), its user and sessions,
 * its kv keys, and the system operations (maintenance, snapshot restore). These methods are
 * still fuzzed, as the user with no roles and without credentials (who must be refused).
 */
export const SOAK_SPARED: ReadonlySet<string> = new Set(Object.entries({
  AdminRuns: ['Run'],
  AdminAgents: ['RevokeAgent', 'PruneAgents', 'SetAgentLabels'],
  AdminPacks: ['InstallPack', 'RemovePack'],
  AdminRules: ['CreateRule', 'DeleteRule', 'SetRuleEnabled'],
  AdminExecutions: ['RunAction', 'CancelExecution', 'RerunExecution'],
  AdminUsers: ['SetPassword', 'SetUserActive', 'DeleteUser'],
  AdminSessions: ['RevokeSession'],
  AdminApiKeys: ['DeleteApiKey', 'SetApiKeyEnabled'],
  AdminRoles: ['DeleteRole', 'RevokePermission', 'UnassignRole'],
  AdminTenants: ['DeleteTenant', 'RemoveTenantMember'],
  AdminGroups: ['RemoveGroupMember'],
  AdminKv: ['Delete'],
  AdminSystem: ['Upgrade', 'Rollback'],
  AdminSnapshots: ['CreateSnapshot', 'DeleteSnapshot'],
  AdminMaintenance: ['SetMaintenance'],
}).flatMap(([svc, ms]) => ms.map((m) => `/trellis.v1.${svc}/${m}`)));

/** Admin methods that change the hub's own identity or trust: fuzzed only by callers who must be refused. */
export const IDENTITY_METHODS = new Set([
  '/trellis.v1.AdminCerts/ReplaceHubCertificate', '/trellis.v1.AdminCerts/IssueHubCertificate',
  '/trellis.v1.AdminCa/RotateStart', '/trellis.v1.AdminCa/RotateCommit', '/trellis.v1.AdminCa/RotateRollback',
  '/trellis.v1.AdminMaintenance/SetMaintenance', // on, it would refuse every later non-admin case (a run that fuzzes nothing)
]);

const identity = (b: Buffer): Buffer => b;

interface Clients {
  admin: grpc.Client;
  agents: grpc.Client[];
  renew?: grpc.Client;
  close(): void;
}

function makeClients(o: FuzzOptions): Clients {
  const a = secureChannel(o.adminAddr, o.caPem);
  const admin = new grpc.Client(o.adminAddr, a.creds, a.options);
  const agentClient = (c: AgentCredential) => {
    const s = secureChannel(o.agentAddr!, o.caPem, c.keyPem, c.certPem);
    return new grpc.Client(o.agentAddr!, s.creds, s.options);
  };
  const agents = o.agentAddr ? (o.agents ?? []).map(agentClient) : [];
  const renew = o.agentAddr && o.renewAgent ? agentClient(o.renewAgent) : undefined;
  return { admin, agents, renew, close: () => { admin.close(); for (const c of agents) c.close(); renew?.close(); } };
}

function metadataFor(principal: Principal, apiKey: string, low: string | undefined, r?: Rng): grpc.Metadata {
  const md = new grpc.Metadata();
  if (principal === 'admin') md.set('x-api-key', apiKey);
  if (principal === 'low' && low) md.set(low.startsWith('tak1_') ? 'x-api-key' : 'authorization', low.startsWith('tak1_') ? low : `Bearer ${low}`);
  if (r && chance(r, 0.15)) md.set('x-trellis-tenant', pick(r, ['default', '*', 'fz-tenant', 'nope', 'a'.repeat(100), '..', 'DEFAULT']));
  return md;
}

function outcomeOf(s: { code: number; details?: string; metadata?: grpc.Metadata }, cancelledByUs = false): Outcome {
  const tc = s.metadata?.get(CODE_KEY)?.[0];
  return { code: s.code, details: s.details ?? '', trellisCode: typeof tc === 'string' ? tc : undefined, cancelledByUs };
}

/** Sends one case and resolves to its final status. */
export function execute(clients: Clients, c: FuzzCase, md: grpc.Metadata, spec: Pick<MethodSpec, 'requestStream' | 'responseStream'>, deadlineMs: number): Promise<Outcome> {
  const frames = c.frames.map((f) => Buffer.from(f, 'base64'));
  const client = c.principal === 'agent'
    ? (c.method.endsWith('/Renew') ? clients.renew : clients.agents[c.index % Math.max(1, clients.agents.length)])
    : clients.admin;
  if (!client) return Promise.resolve({ code: grpc.status.OK, details: 'skipped: no client', cancelledByUs: true });
  return new Promise((resolve) => {
    if (!spec.requestStream && !spec.responseStream) {
      client.makeUnaryRequest<Buffer, Buffer>(c.method, identity, identity, frames[0] ?? Buffer.alloc(0), md, { deadline: Date.now() + deadlineMs }, (err) => {
        resolve(err ? outcomeOf(err as grpc.ServiceError) : { code: grpc.status.OK, details: '' });
      });
      return;
    }
    let cancelled = false;
    let done = false;
    let timer: NodeJS.Timeout | undefined;
    const finish = (o: Outcome) => { if (!done) { done = true; clearTimeout(timer); resolve(o); } };
    if (!spec.requestStream) {
      // Server stream: read for a moment, then cancel (follow streams never end by themselves).
      const call = client.makeServerStreamRequest<Buffer, Buffer>(c.method, identity, identity, frames[0] ?? Buffer.alloc(0), md, {});
      let n = 0;
      call.on('data', () => { if (++n > 2000) { cancelled = true; call.cancel(); } });
      call.on('error', () => undefined);
      call.on('status', (s: grpc.StatusObject) => finish(outcomeOf(s, cancelled)));
      timer = setTimeout(() => { cancelled = true; call.cancel(); }, 3000);
      return;
    }
    // Bidi (AgentChannel.Connect): a real hello first when the case has one, the rest after the welcome.
    const call = client.makeBidiStreamRequest<Buffer, Buffer>(c.method, identity, identity, md, {});
    let sentRest = !c.afterWelcome;
    const sendAll = (fs: Buffer[]) => { for (const f of fs) call.write(f); call.end(); };
    call.on('data', () => {
      if (!sentRest) { sentRest = true; sendAll(frames.slice(1)); }
    });
    call.on('error', () => undefined);
    call.on('status', (s: grpc.StatusObject) => finish(outcomeOf(s, cancelled)));
    if (c.afterWelcome) call.write(frames[0]!);
    else sendAll(frames);
    timer = setTimeout(() => { cancelled = true; call.cancel(); }, 10_000);
  });
}

interface Plan { methods: MethodSpec[]; adminMethods: MethodSpec[]; connect?: MethodSpec; renew?: MethodSpec }

function plan(): Plan {
  const all = contractMethods();
  const adminMethods = [...all.filter((m) => m.service !== 'AgentChannel'), ...unknownMethods()];
  return { methods: all, adminMethods, connect: all.find((m) => m.path === '/trellis.v1.AgentChannel/Connect'), renew: all.find((m) => m.path === '/trellis.v1.AgentChannel/Renew') };
}

/** The case with this index: a pure function of (seed, index, options). */
export function makeCase(p: Plan, o: FuzzOptions, index: number): { c: FuzzCase; spec: MethodSpec; r: Rng } {
  const r = caseRng(o.seed, index);
  const target = o.target ?? 'all';
  const agentLane = target === 'agent' || (target === 'all' && o.agentAddr && chance(r, 0.3));
  const kind: CaseKind = pick(r, ['random', 'typed', 'mutated', 'mutated', 'tweaked', 'tweaked', 'tweaked']);
  const ex = o.examples ?? {};
  if (agentLane && p.connect && (chance(r, 0.75) || !o.renewAgent)) {
    const msgType = p.connect.requestType;
    const frames: Buffer[] = [];
    let afterWelcome = false;
    if (chance(r, 0.12)) {
      frames.push(caseBytes(r, kind, msgType, [helloMessage()]));
    } else {
      afterWelcome = true;
      frames.push(encode(msgType, helloMessage()));
      const n = 1 + int(r, 6);
      for (let i = 0; i < n; i++) frames.push(caseBytes(r, pick(r, ['random', 'typed', 'mutated', 'tweaked', 'tweaked'] as const), msgType, examplesFor('AgentMessage', ex)));
    }
    return { c: { seed: o.seed, index, method: p.connect.path, principal: 'agent', kind: afterWelcome ? 'hello+frames' : kind, frames: frames.map((f) => f.toString('base64')), afterWelcome }, spec: p.connect, r };
  }
  if (agentLane && p.renew) {
    const bytes = caseBytes(r, kind, p.renew.requestType, examplesFor('RenewRequest', ex));
    return { c: { seed: o.seed, index, method: p.renew.path, principal: 'agent', kind, frames: [bytes.toString('base64')] }, spec: p.renew, r };
  }
  const spec = pick(r, p.adminMethods);
  let principal: Principal = pick(r, ['admin', 'admin', 'low', 'anon'] as const);
  if (principal === 'low' && !o.lowCredential) principal = 'anon';
  if (principal === 'admin' && (IDENTITY_METHODS.has(spec.path) || o.spare?.has(spec.path))) principal = o.lowCredential ? 'low' : 'anon';
  const bytes = caseBytes(r, kind, spec.requestType, examplesFor(spec.requestType.name, ex));
  return { c: { seed: o.seed, index, method: spec.path, principal, kind, frames: [bytes.toString('base64')] }, spec, r };
}

/** Saves a failing case as JSON under `dir` (none without a dir); returns its path. */
export function writeCase(dir: string | undefined, name: string, body: unknown): string | undefined {
  if (!dir) return undefined;
  mkdirSync(dir, { recursive: true });
  const file = join(dir, name);
  writeFileSync(file, JSON.stringify(body, null, 2) + '\n');
  return file;
}

const safe = (s: string) => s.replace(/[^A-Za-z0-9_.-]+/g, '_').replace(/^_+/, '');

/** Probes the hub after a batch: process, Version, an authenticated call. */
export async function probeHub(clients: Clients, o: FuzzOptions): Promise<HubHealth> {
  const exit = o.hubExit?.();
  if (exit !== undefined) return judgeHealth({ processExit: exit });
  const deadline = o.probeDeadlineMs ?? 15_000;
  const root = loadRoot();
  const unary = (path: string, md: grpc.Metadata, bytes: Buffer) => new Promise<string | undefined>((resolve) => {
    clients.admin.makeUnaryRequest<Buffer, Buffer>(path, identity, identity, bytes, md, { deadline: Date.now() + deadline }, (err) => {
      resolve(err ? `${statusName((err as grpc.ServiceError).code)} ${(err as grpc.ServiceError).details}` : undefined);
    });
  });
  const version = await unary('/trellis.v1.Version/GetVersion', new grpc.Metadata(), encode(root.lookupType('trellis.v1.GetVersionRequest'), {}));
  const authed = version ? undefined : await unary('/trellis.v1.AdminAuth/WhoAmI', metadataFor('admin', o.apiKey, undefined), Buffer.alloc(0));
  return judgeHealth({ processExit: o.hubExit?.(), version, authed });
}

/** Runs the fuzzer for `seconds` (or `maxCases`) and returns what it found. */
export async function runFuzz(o: FuzzOptions): Promise<FuzzResult> {
  const p = plan();
  const clients = makeClients(o);
  const note = o.note ?? (() => undefined);
  const started = Date.now();
  const statuses: Record<string, number> = {};
  const covered = new Set<string>();
  const unexpected: Finding[] = [];
  const result: FuzzResult = { seed: o.seed, cases: 0, crashes: 0, unexpected, statuses, methodsCovered: 0, methodsInContract: p.methods.length, seconds: 0, slowest: [] };
  let low = o.lowCredential ? await o.lowCredential() : undefined;
  const batchSize = o.batchSize ?? 48;
  const concurrency = o.concurrency ?? 8;
  const deadlineMs = o.callDeadlineMs ?? 20_000;
  let index = o.startIndex ?? 0;
  const first = index;
  let lastReport = started;
  try {
    while (Date.now() - started < o.seconds * 1000 && (o.maxCases === undefined || index < first + o.maxCases) && !o.signal?.aborted) {
      const batch: Array<{ c: FuzzCase; spec: MethodSpec; r: Rng }> = [];
      const end = o.maxCases === undefined ? index + batchSize : Math.min(first + o.maxCases, index + batchSize);
      for (; index < end; index++) batch.push(makeCase(p, o, index));
      let next = 0;
      await Promise.all(Array.from({ length: concurrency }, async () => {
        while (next < batch.length) {
          const { c, spec, r } = batch[next++]!;
          const md = c.principal === 'agent' ? new grpc.Metadata() : metadataFor(c.principal, o.apiKey, low, r);
          const t0 = performance.now();
          const out = await execute(clients, c, md, spec, deadlineMs);
          const ms = Math.round(performance.now() - t0);
          if (!out.cancelledByUs && (result.slowest.length < 5 || ms > result.slowest[4]!.ms)) {
            result.slowest.push({ method: c.method, principal: c.principal, index: c.index, ms, status: statusName(out.code) });
            result.slowest.sort((a, b) => b.ms - a.ms).splice(5);
          }
          const name = statusName(out.code);
          statuses[name] = (statuses[name] ?? 0) + 1;
          covered.add(c.method);
          result.cases++;
          const v = o.injectFailure && c.index === first ? { ok: false as const, reason: 'injected failure (test only)' } : classify(c.method, spec.known, c.principal, out);
          if (!v.ok) {
            const file = unexpected.length < 100
              ? writeCase(o.outDir, `unexpected-${safe(c.method)}-${o.seed}-${c.index}.json`, { ...c, outcome: out, reason: v.reason })
              : undefined;
            unexpected.push({ case: c, outcome: out, reason: v.reason, file });
            note(`unexpected: ${c.method} as ${c.principal} (${c.kind}, case ${c.index}): ${v.reason}${file ? ` -> ${file}` : ''}`);
          }
        }
      }));
      const health = await probeHub(clients, o);
      if (!health.alive) {
        result.crashes++;
        const file = writeCase(o.outDir, `crash-${o.seed}-${batch[0]?.c.index ?? 0}.json`, { reason: health.reason, cases: batch.map((b) => b.c) });
        result.crash = { reason: health.reason ?? 'hub down', file };
        note(`hub down after cases ${batch[0]?.c.index}..${index - 1}: ${health.reason}${file ? ` -> ${file}` : ''}`);
        break;
      }
      // The low-privilege session may have been ended by a fuzzed Logout: log in again.
      if (o.lowCredential && statuses.UNAUTHENTICATED && batch.some((b) => b.c.principal === 'low')) {
        const who = await probeLow(clients, low, deadlineMs);
        if (!who) low = await o.lowCredential();
      }
      if (Date.now() - lastReport > 10_000) {
        lastReport = Date.now();
        note(`${result.cases} cases, ${unexpected.length} unexpected, ${Math.round((Date.now() - started) / 1000)} s`);
      }
    }
  } finally {
    clients.close();
  }
  result.methodsCovered = p.methods.filter((m) => covered.has(m.path)).length;
  result.seconds = (Date.now() - started) / 1000;
  return result;
}

function probeLow(clients: Clients, low: string | undefined, deadlineMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    clients.admin.makeUnaryRequest<Buffer, Buffer>('/trellis.v1.AdminAuth/WhoAmI', identity, identity, Buffer.alloc(0), metadataFor('low', '', low), { deadline: Date.now() + deadlineMs }, (err) => resolve(!err));
  });
}

/** Replays recorded cases (a file's `cases`, or the file itself as one case) and judges them again. */
export async function replayCases(o: FuzzOptions, cases: FuzzCase[]): Promise<Array<{ c: FuzzCase; outcome: Outcome; verdict: ReturnType<typeof classify> }>> {
  const p = plan();
  const clients = makeClients(o);
  const low = o.lowCredential ? await o.lowCredential() : undefined;
  const out: Array<{ c: FuzzCase; outcome: Outcome; verdict: ReturnType<typeof classify> }> = [];
  try {
    for (const c of cases) {
      const spec = [...p.methods, ...unknownMethods()].find((m) => m.path === c.method) ?? { requestStream: false, responseStream: false, known: false };
      const outcome = await execute(clients, c, c.principal === 'agent' ? new grpc.Metadata() : metadataFor(c.principal, o.apiKey, low), spec, o.callDeadlineMs ?? 20_000);
      out.push({ c, outcome, verdict: classify(c.method, spec.known, c.principal, outcome) });
    }
  } finally {
    clients.close();
  }
  return out;
}
