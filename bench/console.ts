/**
 * The web console at scale (issue 15): a child hub (`trellis hub run`) whose store holds 5,000
 * agent records and whose history holds 100,000 executions, asked through the console's API
 * bridge as the browser asks it (real HTTPS on the web port, the session cookie, the CSRF
 * header, one kept-alive connection like a browser tab's):
 *
 * - console_agents_page_p99_ms: `AdminAgents/ListAgents` (limit 50) as the agents page asks it,
 *   rotating over a status filter, a selector, both, none, and a later page (`after_id`);
 * - console_executions_page_p99_ms: `AdminExecutions/ListExecutions` (limit 50), rotating over
 *   no filter, a status, an action, an agent, and an older page (`before_id`);
 * - console_overview_p99_ms: every call the overview page makes, one after another as the page
 *   makes them (tenants, agents online and offline, executions per status in the last hour, rules).
 *
 * The records are written before the hub starts, through the hub's own store and history code
 * (hub/store, hub/executions/history.ts). None of the agents is connected: their records are what
 * the pages read.
 */
import * as https from 'node:https';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pino } from 'pino';
import { monotonicFactory } from 'ulid';
import { initHub } from '../hub/init.js';
import { hubPaths } from '../hub/paths.js';
import { openStore } from '../hub/store/index.js';
import { History } from '../hub/executions/history.js';
import type { AgentDoc } from '../hub/agents/index.js';
import type { ExecutionRecord } from '../hub/executions/types.js';
import { note, percentile, startChildHub } from './lib.js';

export interface ConsoleBenchOptions {
  root: string;
  tmpRoot: string;
  names: string[];
  trustDomain: string;
  closers: Array<() => Promise<void>>;
  agents?: number;
  executions?: number;
  /** Requests timed per page (p99 needs at least 50). */
  samples?: number;
}

export interface ConsoleBenchResult { agentsP99: number; executionsP99: number; overviewP99: number; notes: string[] }

const ROLES = ['web', 'db', 'cache', 'queue'];
const ENVS = ['prod', 'staging', 'dev'];
const ACTIONS = ['core.echo', 'ops.deploy', 'ops.restart', 'ops.backup', 'ops.check'];
const PASSWORD = 'console-bench-password-1';

/** 5,000 agent records as enrollment leaves them (1 in 50 revoked), through the hub's store code. */
async function seedAgents(statePath: string, n: number): Promise<string[]> {
  const store = await openStore({ kind: 'lowdb', path: statePath });
  const newId = monotonicFactory();
  const now = Date.now();
  const ids: string[] = [];
  const writes: Array<Promise<void>> = [];
  for (let i = 0; i < n; i++) {
    const id = newId(now - (n - i) * 1000).toLowerCase();
    ids.push(id);
    const revoked = i % 50 === 49;
    const doc: AgentDoc = {
      id, tenant: 'default', hostname: `host-${String(i).padStart(5, '0')}.example.net`,
      labels: { role: ROLES[i % ROLES.length]!, env: ENVS[i % ENVS.length]!, rack: `r${i % 40}` },
      facts: { hostname: `host-${String(i).padStart(5, '0')}.example.net`, os: 'linux', osRelease: '6.1.0-18-amd64', arch: i % 7 === 0 ? 'arm64' : 'x64', cpus: 4 + (i % 4) * 4, memoryBytes: 8 * 1024 ** 3, agentVersion: '0.15.0' },
      enrolledAt: now - (n - i) * 1000, tokenId: 'bench', spiffeId: `spiffe://trellis.local/agent/${id}`,
      certSerial: (0x1000 + i).toString(16).padStart(32, '0'), certExpiresAt: now + 6 * 86_400_000,
      serials: [{ serial: (0x1000 + i).toString(16).padStart(32, '0'), notAfter: now + 6 * 86_400_000 }],
      revoked, ...(revoked ? { revokedAt: now - 3_600_000 } : {}), lastSeen: now - (i % 600) * 60_000,
    };
    writes.push(store.insert('agents', doc));
  }
  await Promise.all(writes);
  await store.close();
  return ids;
}

/** 100,000 finished executions over the last ~28 hours, through the hub's own History code. */
async function seedHistory(dir: string, n: number, agents: string[]): Promise<void> {
  const { history } = await History.open({ dir, log: pino({ level: 'silent' }), maxSegmentBytes: 64 * 1024 * 1024, maxAgeMs: 30 * 86_400_000, maxCount: n, flushIntervalMs: 100, onDrop: () => undefined });
  const newId = monotonicFactory();
  const now = Date.now();
  const span = 28 * 3_600_000;
  for (let i = 0; i < n; i++) {
    const t = now - span + Math.floor((i * span) / n);
    const status: ExecutionRecord['status'] = i % 20 === 0 ? 'failed' : i % 97 === 0 ? 'timeout' : i % 113 === 0 ? 'canceled' : 'succeeded';
    history.appendState({
      id: newId(t).toLowerCase(), tenant: 'default', action: ACTIONS[i % ACTIONS.length]!, agentId: agents[(i * 7) % agents.length]!, status,
      exitCode: status === 'failed' ? 1 : 0, error: status === 'timeout' ? 'timed out after 60s' : '', requestedBy: i % 3 === 0 ? 'admin' : 'rule:bench.check',
      rule: i % 3 === 0 ? '' : 'bench.check', triggerEventId: '', parameters: { n: i }, requestedMs: t, startedMs: t + 3, finishedMs: t + 40, edge: false,
      outputBytes: 120, outputTruncated: false,
    }, {});
    if (i % 5000 === 4999) await history.flush();
  }
  await history.close();
}

interface Session { cookie: string; csrf: string }

function post(o: { port: number; ca: string; agent: https.Agent; path: string; body: unknown; s?: Session }): Promise<{ status: number; body: string; setCookie?: string }> {
  return new Promise((resolve, reject) => {
    const text = JSON.stringify(o.body);
    const headers: Record<string, string | number> = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), origin: `https://localhost:${o.port}`, host: `localhost:${o.port}` };
    if (o.s) { headers.cookie = o.s.cookie; headers['x-trellis-csrf'] = o.s.csrf; }
    const req = https.request({ host: '127.0.0.1', port: o.port, path: o.path, method: 'POST', ca: o.ca, servername: 'localhost', agent: o.agent, headers }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d)).on('end', () => resolve({ status: res.statusCode ?? 0, body, setCookie: res.headers['set-cookie']?.[0] }));
    });
    req.on('error', reject);
    req.end(text);
  });
}

export async function benchConsole(o: ConsoleBenchOptions): Promise<ConsoleBenchResult> {
  const nAgents = o.agents ?? 5000;
  const nExec = o.executions ?? 100_000;
  const samples = Math.max(50, o.samples ?? 100);
  const hubDir = join(o.tmpRoot, 'hub-console');
  await initHub({ dataDir: hubDir, names: o.names, trustDomain: o.trustDomain, adminPassword: PASSWORD, config: { bind: '127.0.0.1', agentChannel: { maxHandshakesPerAddress: 1_000_000 } } }); // simulated agents all connect from 127.0.0.1
  const paths = hubPaths(hubDir);
  let t = performance.now();
  const agentIds = await seedAgents(paths.store, nAgents);
  await seedHistory(paths.executions, nExec, agentIds);
  const notes = [`seeded ${nAgents} agents and ${nExec} executions in ${Math.round(performance.now() - t)} ms`];
  const hub = await startChildHub(o.root, hubDir, []);
  o.closers.push(() => hub.stop());
  const ca = await readFile(paths.caCert, 'utf8');
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
  o.closers.push(async () => agent.destroy());
  const port = hub.webPort;
  const login = await post({ port, ca, agent, path: '/console/api/login', body: { username: 'admin', password: PASSWORD } });
  if (login.status !== 200 || !login.setCookie) throw new Error(`console login failed: ${login.status} ${login.body.slice(0, 200)}`);
  const s: Session = { cookie: login.setCookie.split(';')[0]!, csrf: String((JSON.parse(login.body) as { csrf: string }).csrf) };
  const api = async (method: string, body: unknown): Promise<Record<string, unknown>> => {
    const r = await post({ port, ca, agent, path: `/console/api/${method}`, body, s });
    if (r.status !== 200) throw new Error(`${method}: HTTP ${r.status} ${r.body.slice(0, 200)}`);
    return JSON.parse(r.body) as Record<string, unknown>;
  };
  const time = async (fn: () => Promise<unknown>): Promise<number> => { t = performance.now(); await fn(); return performance.now() - t; };

  // Warm-up: the first calls compile the handlers' code paths.
  const all = await api('AdminAgents/ListAgents', { limit: 50 });
  if (Number(all.total) < nAgents - nAgents / 50 - 1) throw new Error(`the hub lists ${String(all.total)} agents, not the ${nAgents} seeded`);
  const newest = await api('AdminExecutions/ListExecutions', { limit: 50 });
  const execs = newest.executions as Array<{ id: string }>;
  if (execs.length !== 50) throw new Error(`the hub lists ${execs.length} executions on a page of 50`);

  const agentQueries: Array<Record<string, unknown>> = [
    { status: 'offline', limit: 50 },
    { selectorExpr: 'role=web', limit: 50 },
    { selectorExpr: 'role=db,env=prod', status: 'offline', limit: 50 },
    { limit: 50 },
    { limit: 50, afterId: agentIds[Math.floor(nAgents / 2)] },
  ];
  const agentsMs: number[] = [];
  for (let i = 0; i < samples; i++) agentsMs.push(await time(() => api('AdminAgents/ListAgents', agentQueries[i % agentQueries.length])));

  const execQueries: Array<Record<string, unknown>> = [
    { limit: 50 },
    { status: 'failed', limit: 50 },
    { action: 'ops.deploy', limit: 50 },
    { agentId: agentIds[123], limit: 50 },
    { status: 'canceled', action: 'ops.backup', limit: 50 },
    { limit: 50, beforeId: execs[execs.length - 1]!.id },
  ];
  const execMs: number[] = [];
  for (let i = 0; i < samples; i++) execMs.push(await time(() => api('AdminExecutions/ListExecutions', execQueries[i % execQueries.length])));

  // The overview page's calls, in its order (console/src/app.ts: frame, then overviewPage).
  const overview = async () => {
    await api('AdminTenants/ListTenants', {});
    await api('AdminAgents/ListAgents', { status: 'online', limit: 1 });
    await api('AdminAgents/ListAgents', { status: 'offline', limit: 1 });
    await api('AdminExecutions/CountExecutions', { sinceMs: Date.now() - 3_600_000 });
    await api('AdminRules/ListRules', {});
  };
  const overviewMs: number[] = [];
  for (let i = 0; i < samples; i++) overviewMs.push(await time(overview));
  const fmt = (xs: number[]) => `p50 ${percentile(xs, 50).toFixed(1)} ms, max ${Math.max(...xs).toFixed(1)} ms`;
  notes.push(`console agents page: ${fmt(agentsMs)}; executions page: ${fmt(execMs)}; overview: ${fmt(overviewMs)} (${samples} requests each)`);
  for (const n of notes) note(n);
  return { agentsP99: percentile(agentsMs, 99), executionsP99: percentile(execMs, 99), overviewP99: percentile(overviewMs, 99), notes };
}
