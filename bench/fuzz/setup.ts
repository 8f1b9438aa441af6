/**
 * A hub for a fuzz run: a fresh data directory, `trellis hub run` as a child process (its log in
 * `hub.log` next to it, so a crash's stack trace is kept), and the principals the fuzzer calls
 * as: an administrator's API key, a user with no roles, enrolled agents, a join token and a CSR.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { initHub } from '../../hub/init.js';
import { adminClients, call } from '../../cli/client.js';
import { PROTO_DIR } from '../../common/proto.js';
import { createCSR, generateKey } from '../../certs/index.js';
import { issueSimIdentities } from '../simagent.js';
import { freePorts, sleep } from '../lib.js';
import type { FuzzOptions } from './run.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

export const PACKAGE_ROOT = dirname(PROTO_DIR);
const NAMES = ['localhost', '127.0.0.1'];
const TRUST_DOMAIN = 'trellis.local';
export const FUZZ_ADMIN_PASSWORD = 'fuzz-admin-password-1';
const LOW_USER = 'fzlow';
const LOW_PASSWORD = 'fuzz-low-password-1';

export interface FuzzHub extends AsyncDisposable {
  proc: ChildProcess;
  dataDir: string;
  logFile: string;
  adminAddr: string;
  agentAddr: string;
  /** The web port (HTTPS: webhooks, /stream, agent downloads). */
  webAddr: string;
  caPem: string;
  /** Undefined while running; "code N" / "signal S" once it exited. */
  exit(): string | undefined;
  /** Lines of the hub log at level error or fatal (unhandled errors), newest last. */
  errorLines(): string[];
  stop(graceMs?: number): Promise<void>;
}

/** Initializes a hub in `dir` and starts `trellis hub run` on free loopback ports. */
export async function startFuzzHub(dir: string, nodeArgs: string[] = []): Promise<FuzzHub> {
  const dataDir = join(dir, 'hub');
  // Failed logins per address unlimited: fuzzed Login calls fail by the thousand from 127.0.0.1, and
  // past the shipped 20 in 5 minutes the harness's own login (the low user's, again after a fuzzed
  // Logout ends its session) was refused and ended a run of more than ~25 s. The per-name lock-out
  // stays as shipped; test/auth and test/dos cover the per-address limit.
  await initHub({ dataDir, names: NAMES, trustDomain: TRUST_DOMAIN, adminPassword: FUZZ_ADMIN_PASSWORD, config: { bind: '127.0.0.1', auth: { limits: { failuresPerAddress: 1_000_000 } } } });
  const caPem = readFileSync(join(dataDir, 'ca.pem'), 'utf8');
  const logFile = join(dir, 'hub.log');
  mkdirSync(dir, { recursive: true });
  for (let attempt = 1; ; attempt++) {
    const [agentPort, adminPort, webPort] = await freePorts(3);
    const log = createWriteStream(logFile, { flags: 'a' });
    const proc = spawn(process.execPath, [...nodeArgs, join(PACKAGE_ROOT, 'bin', 'trellis.js'), 'hub', 'run', '--data', dataDir,
      '--agent-port', String(agentPort), '--admin-port', String(adminPort), '--web-port', String(webPort)], {
      cwd: PACKAGE_ROOT, env: { ...process.env, TRELLIS_LOG_LEVEL: 'warn' }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let exitText: string | undefined;
    const exited = new Promise<void>((resolve) => proc.once('exit', (code, signal) => { exitText = signal ? `signal ${signal}` : `code ${code}`; resolve(); }));
    let head = '';
    const errors: string[] = [];
    const onData = (chunk: Buffer) => {
      log.write(chunk);
      const text = chunk.toString('utf8');
      if (head.length < 20_000) head += text;
      for (const line of text.split('\n')) if (/"level":(50|60)\b/.test(line) && errors.length < 1000) errors.push(line);
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', onData);
    const up = await Promise.race([
      (async () => { while (!/trellis hub: agent port \d+, admin port \d+/.test(head) && exitText === undefined) await sleep(50); return exitText === undefined; })(),
      sleep(30_000).then(() => false),
    ]);
    const stop = async (graceMs = 5000) => {
      if (exitText === undefined) {
        proc.kill('SIGTERM');
        const t = setTimeout(() => { if (exitText === undefined) proc.kill('SIGKILL'); }, graceMs);
        await exited;
        clearTimeout(t);
      }
      await new Promise<void>((r) => log.end(() => r()));
    };
    if (up) {
      return {
        proc, dataDir, logFile, caPem, adminAddr: `127.0.0.1:${adminPort}`, agentAddr: `127.0.0.1:${agentPort}`, webAddr: `127.0.0.1:${webPort}`,
        exit: () => exitText, errorLines: () => [...errors], stop, [Symbol.asyncDispose]: () => stop(2000),
      };
    }
    await stop(1000);
    if (attempt >= 3 || !/cannot listen|EADDRINUSE/.test(head)) throw new Error(`the fuzz hub did not start: ${head.trim().slice(-800)}`);
  }
}

export interface Principals {
  apiKey: string; lowCredential: () => Promise<string>; agents: FuzzOptions['agents']; renewAgent: FuzzOptions['renewAgent']; examples: NonNullable<FuzzOptions['examples']>;
  /** A webhook of the fuzzer's own (the web fuzzer signs bodies with its secret). */
  webhook: { path: string; secret: string };
}

/** The fuzzer's principals on `hub`: made through the admin API (and the CA files for agents). */
export async function preparePrincipals(hub: Pick<FuzzHub, 'adminAddr' | 'caPem' | 'dataDir'>, nAgents = 4, adminPassword = FUZZ_ADMIN_PASSWORD): Promise<Principals> {
  const anon = adminClients(hub.adminAddr, hub.caPem);
  let login: T.LoginResponse__Output;
  try {
    login = await call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username: 'admin', password: adminPassword });
  } finally { anon.close(); }
  const admin = adminClients(hub.adminAddr, hub.caPem, login.token);
  try {
    const key = await call<T.CreateApiKeyRequest, T.CreateApiKeyResponse__Output>(admin, admin.apikeys, admin.apikeys.CreateApiKey, { name: `fuzz-${Date.now().toString(36)}` });
    await call<T.CreateUserRequest, T.UserInfo__Output>(admin, admin.users, admin.users.CreateUser, { username: LOW_USER, password: LOW_PASSWORD, roles: [], tenants: ['default'] });
    const token = await call<T.CreateJoinTokenRequest, T.CreateJoinTokenResponse__Output>(admin, admin.tokens, admin.tokens.CreateJoinToken, { tenant: 'default', uses: 1000, ttlMs: 86_400_000 });
    const hook = await call<T.CreateWebhookRequest, T.CreateWebhookResponse__Output>(admin, admin.webhooks, admin.webhooks.CreateWebhook, { name: `fz-web-${Date.now().toString(36)}`, description: 'web fuzzer' });
    const ids = issueSimIdentities({ hubDir: hub.dataDir, names: NAMES, trustDomain: TRUST_DOMAIN, n: nAgents + 1 });
    const k = generateKey('ec-p256');
    const csrPem = createCSR({ privateKey: k.privateKey, subject: { commonName: 'fz-host' } });
    const lowCredential = async () => {
      const c = adminClients(hub.adminAddr, hub.caPem);
      try {
        return (await call<T.LoginRequest, T.LoginResponse__Output>(c, c.auth, c.auth.Login, { username: LOW_USER, password: LOW_PASSWORD })).token;
      } finally { c.close(); }
    };
    return {
      apiKey: key.key, lowCredential,
      agents: ids.slice(0, nAgents).map((i) => ({ keyPem: i.keyPem, certPem: i.certPem })),
      renewAgent: { keyPem: ids[nAgents]!.keyPem, certPem: ids[nAgents]!.certPem },
      examples: { joinToken: token.token, csrPem },
      webhook: { path: hook.path, secret: hook.secret },
    };
  } finally {
    admin.close();
  }
}
