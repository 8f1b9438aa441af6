/**
 * Real hubs and agents for tests: a hub data directory made by `initHub` in a temp dir, the hub
 * listening on ephemeral loopback ports, a logged-in admin client, and helpers to enroll and
 * start agents. Everything returned is disposable (`await using`).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { initHub, type InitOptions } from '../../hub/init.js';
import { Hub } from '../../hub/hub.js';
import { REDACT_PATHS, type Logger } from '../../common/log.js';
import { adminClients, call, type AdminClients } from '../../cli/client.js';
import { enroll, type EnrollOptions } from '../../agent/enroll.js';
import { Agent, type AgentOptions } from '../../agent/agent.js';
import type { HubConfigInput } from '../../hub/config.js';
import { silenceIpServernameWarning } from '../../common/warnings.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

export const ADMIN_PASSWORD = 'test-admin-password-1';

silenceIpServernameWarning();

/** A pino logger that keeps every line in memory (to grep for secrets) and prints nothing. */
export function captureLogger(level = 'debug'): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  const dest = new Writable({ write(chunk, _enc, cb) { lines.push(...String(chunk).split('\n').filter(Boolean)); cb(); } });
  const log = pino({ level, redact: { paths: REDACT_PATHS, censor: '[REDACTED]' } }, dest);
  return { log, lines };
}

export async function tempDir(prefix = 'trellis-test-'): Promise<{ path: string } & AsyncDisposable> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, [Symbol.asyncDispose]: () => rm(path, { recursive: true, force: true, maxRetries: 5 }) };
}

export interface TestHub extends AsyncDisposable {
  hub: Hub;
  dir: string;
  dataDir: string;
  adminAddr: string;
  agentAddr: string;
  caPem: string;
  log: Logger;
  logLines: string[];
  /**
   * Every line the agents started by `agent()` logged so far (they log to `agent.log` in their
   * data directory, at debug level, with the production redact paths). Read them before close.
   */
  agentLogLines(): string[];
  /** The agent log files written so far. */
  agentLogFiles: string[];
  admin: AdminClients;
  /** Creates a join token through the admin API. */
  token(o?: Partial<T.CreateJoinTokenRequest>): Promise<string>;
  /** Enrolls a new agent data dir; returns its path and id. */
  enroll(o?: Partial<EnrollOptions> & { token?: string }): Promise<{ dataDir: string; agentId: string }>;
  /** Enrolls (unless dataDir given) and starts an agent, waiting until it is ready. */
  agent(o?: Partial<AgentOptions>): Promise<Agent & AsyncDisposable>;
  /** Stops the hub (keeps the data dir) and starts it again on the same ports. */
  restart(): Promise<void>;
  stop(): Promise<void>;
  close(): Promise<void>;
}

export interface StartHubOptions {
  init?: Partial<InitOptions>;
  config?: Partial<HubConfigInput>;
  /** Skip init: the data dir was prepared by the test. */
  dataDir?: string;
  memoryStore?: boolean;
}

/**
 * A real agent logger, as the daemon builds it (pino, REDACT_PATHS), writing synchronously to
 * `agent.log` in the agent's data directory, so "no secret in any log" tests can read it.
 */
export function fileAgentLogger(dataDir: string): { log: Logger; path: string } {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const path = join(dataDir, 'agent.log');
  const log = pino({ level: 'debug', name: 'trellis-agent', redact: { paths: REDACT_PATHS, censor: '[REDACTED]' } }, pino.destination({ dest: path, sync: true, mkdir: true }));
  return { log, path };
}

export async function startHub(o: StartHubOptions = {}): Promise<TestHub> {
  const dir = (await mkdtemp(join(tmpdir(), 'trellis-hub-')));
  const dataDir = o.dataDir ?? join(dir, 'hub');
  if (!o.dataDir) {
    await initHub({ dataDir, names: ['localhost', '127.0.0.1'], adminPassword: ADMIN_PASSWORD, config: { agentPort: 0, adminPort: 0, webPort: 0, bind: '127.0.0.1', ...(o.config ?? {}) }, ...(o.init ?? {}) });
  }
  const { log, lines } = captureLogger();
  let hub = await Hub.start({ dataDir, log, memoryStore: o.memoryStore });
  const caPem = hub.components.pki.trustBundle.join('');
  let ports = { agentPort: hub.agentPort, adminPort: hub.adminPort, webPort: hub.webPort };
  let admin = adminClients(`127.0.0.1:${hub.adminPort}`, caPem);
  let login: T.LoginResponse__Output;
  try {
    login = await call<T.LoginRequest, T.LoginResponse__Output>(admin, admin.auth, admin.auth.Login, { username: 'admin', password: ADMIN_PASSWORD });
  } catch (e) {
    await hub.close(500);
    throw e;
  } finally {
    admin.close();
  }
  // The admin client reads across every tenant (`*`); tenant isolation tests make their own clients.
  admin = adminClients(`127.0.0.1:${hub.adminPort}`, caPem, login.token, '*');
  const agents: Agent[] = [];
  const agentLogFiles: string[] = [];
  let n = 0;

  const th: TestHub = {
    get hub() { return hub; },
    dir, dataDir, caPem, log, logLines: lines, agentLogFiles,
    agentLogLines() {
      return agentLogFiles.filter((f) => existsSync(f)).flatMap((f) => readFileSync(f, 'utf8').split('\n').filter(Boolean));
    },
    get adminAddr() { return `127.0.0.1:${ports.adminPort}`; },
    get agentAddr() { return `127.0.0.1:${ports.agentPort}`; },
    get admin() { return admin; },
    async token(t = {}) {
      const tenant = t.tenant ?? 'default';
      if (!(await hub.components.store.get('tenants', tenant))) await hub.components.iam.createTenant(tenant, '');
      const r = await call<T.CreateJoinTokenRequest, T.CreateJoinTokenResponse__Output>(admin, admin.tokens, admin.tokens.CreateJoinToken, { tenant: 'default', uses: 1, ttlMs: 600_000, ...t });
      return r.token;
    },
    async enroll(e = {}) {
      const agentDir = e.dataDir ?? join(dir, `agent-${++n}`);
      const token = e.token ?? (await th.token());
      const r = await enroll({ hub: th.adminAddr, token, dataDir: agentDir, ...e });
      return { dataDir: agentDir, agentId: r.agentId };
    },
    async agent(a = {}) {
      const dataDir2 = a.dataDir ?? (await th.enroll()).dataDir;
      const fileLog = fileAgentLogger(dataDir2);
      if (!agentLogFiles.includes(fileLog.path)) agentLogFiles.push(fileLog.path);
      const agent = await Agent.start({ dataDir: dataDir2, log: fileLog.log, maxBackoffMs: 1000, ...a });
      agents.push(agent);
      await waitFor(() => agent.channel.state === 'ready' || agent.channel.state === 'closed', 10_000, 'agent ready');
      return agent as Agent & AsyncDisposable;
    },
    async stop() {
      await hub.close(1000);
    },
    async restart() {
      await hub.close(1000);
      hub = await Hub.start({ dataDir, log, memoryStore: o.memoryStore, flags: { agentPort: ports.agentPort, adminPort: ports.adminPort, webPort: ports.webPort } });
      ports = { agentPort: hub.agentPort, adminPort: hub.adminPort, webPort: hub.webPort };
    },
    async close() {
      for (const a of agents) await a.close().catch(() => undefined);
      admin.close();
      await hub.close(1000).catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    },
    [Symbol.asyncDispose]() { return th.close(); },
  };
  return th;
}

/** Logs in through the admin API (no credentials needed for Login). */
export async function login(h: { adminAddr: string; caPem: string }, username: string, password: string): Promise<T.LoginResponse__Output> {
  const anon = adminClients(h.adminAddr, h.caPem);
  try {
    return await call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username, password });
  } finally {
    anon.close();
  }
}

/** Polls `cond` every 10 ms until true; fails with a message after `ms`. */
export async function waitFor(cond: () => boolean | Promise<boolean>, ms = 5000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A unary admin call returning the error (or undefined) instead of throwing. */
export async function callError(p: Promise<unknown>): Promise<(Error & { code?: string; grpcCode?: number }) | undefined> {
  try { await p; return undefined; } catch (e) { return e as Error & { code?: string; grpcCode?: number }; }
}
