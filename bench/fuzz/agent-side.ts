/**
 * The agent side of the channel under fuzz (`npm run fuzz -- --target agent-side`): a real
 * `trellis agent run` child process, enrolled to a real hub, then connected to a fake hub on the
 * same port (the hub's own certificate and CA: real mTLS) that answers each stream with a valid
 * welcome and then random, schema-typed or mutated HubMessage frames (bench/fuzz/examples.ts
 * hubMessages as seeds), then ends it. The agent must: keep running (never exit), connect again
 * after every stream, and send only frames that decode as AgentMessage with one known member.
 * Actions in mutated frames may run: the fuzzer's examples run `true`, scripts that exit 0 and
 * HTTP requests to 127.0.0.1:1, and mutations of those (as the agent's own user).
 */
import * as grpc from '@grpc/grpc-js';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { caseBytes, caseRng, int, loadRoot, pick } from './gen.js';
import { hubMessages } from './examples.js';
import { PACKAGE_ROOT } from './setup.js';

export interface AgentSideOptions {
  /** The agent's data directory (enrolled) and its id. */
  dataDir: string;
  agentId: string;
  /** Where the fake hub listens: the agent port the agent was enrolled with (host:port). */
  agentAddr: string;
  /** The hub's data directory (hub.pem, hub-key.pem, ca.pem). */
  hubDir: string;
  seconds: number;
  seed: number;
  maxCases?: number;
  outDir?: string;
  note?: (m: string) => void;
  /** How long the agent may take to connect again after a stream ended (default 20 s). */
  reconnectMs?: number;
}

export interface AgentSideResult { cases: number; crashes: number; crash?: string; bogus: string[]; connects: number; agentErrors: string[] }

const identity = (b: Buffer): Buffer => b;

export async function runAgentSideFuzz(o: AgentSideOptions): Promise<AgentSideResult> {
  const note = o.note ?? (() => undefined);
  const root = loadRoot();
  const hubType = root.lookupType('trellis.v1.HubMessage');
  const agentType = root.lookupType('trellis.v1.AgentMessage');
  const examples = hubMessages();
  const result: AgentSideResult = { cases: 0, crashes: 0, bogus: [], connects: 0, agentErrors: [] };
  let index = 0;
  let waiting: (() => void) | undefined;
  const welcome = () => Buffer.from(hubType.encode(hubType.fromObject({ welcome: { agentId: o.agentId, tenant: 'default', heartbeatIntervalMs: 10_000, serverTimeMs: Date.now() } })).finish());

  const server = new grpc.Server();
  server.addService({
    Connect: { path: '/trellis.v1.AgentChannel/Connect', requestStream: true, responseStream: true, requestDeserialize: identity, requestSerialize: identity, responseSerialize: identity, responseDeserialize: identity },
  } as unknown as grpc.ServiceDefinition, {
    Connect: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
      result.connects++;
      const i = index++;
      const r = caseRng(o.seed, i);
      const frames: Buffer[] = [];
      const n = 1 + int(r, 5);
      for (let k = 0; k < n; k++) frames.push(caseBytes(r, pick(r, ['random', 'typed', 'mutated', 'mutated', 'tweaked'] as const), hubType, examples));
      let got = 0;
      call.on('data', (b: Buffer) => {
        try {
          const m = agentType.toObject(agentType.decode(b), { oneofs: true }) as { msg?: string };
          if (!m.msg && b.length > 0) result.bogus.push(`case ${i}: a frame with no known member (${b.length} bytes)`);
        } catch (e) { result.bogus.push(`case ${i}: a frame that does not decode as AgentMessage: ${(e as Error).message}`); }
        if (got++ === 0) {
          // After the hello: a valid welcome, then the case's frames, then the end of the stream.
          call.write(welcome());
          for (const f of frames) call.write(f);
          if (o.outDir && frames.some((f) => f.length > 0)) writeFileSync(join(o.outDir, `agent-side-${o.seed}-${i}.json`), JSON.stringify({ seed: o.seed, index: i, frames: frames.map((f) => f.toString('base64')) }));
          setTimeout(() => { call.end(); result.cases++; waiting?.(); }, 300);
        }
      });
      call.on('error', () => undefined);
    },
  } as grpc.UntypedServiceImplementation);
  const caPem = readFileSync(join(o.hubDir, 'ca.pem'));
  const creds = grpc.ServerCredentials.createSsl(caPem, [{ cert_chain: readFileSync(join(o.hubDir, 'hub.pem')), private_key: readFileSync(join(o.hubDir, 'hub-key.pem')) }], true);
  await new Promise<void>((resolve, reject) => server.bindAsync(o.agentAddr, creds, (err) => (err ? reject(err) : resolve())));
  if (o.outDir) mkdirSync(o.outDir, { recursive: true });

  let errText = '';
  const agent: ChildProcess = spawn(process.execPath, [join(PACKAGE_ROOT, 'bin', 'trellis.js'), 'agent', 'run', '--data', o.dataDir], {
    cwd: o.dataDir, env: { ...process.env, TRELLIS_LOG_LEVEL: 'info' }, stdio: ['ignore', 'ignore', 'pipe'],
  });
  let exitText: string | undefined;
  const exited = new Promise<void>((r) => agent.once('exit', (code, sig) => { exitText = sig ? `signal ${sig}` : `code ${code}`; r(); }));
  agent.stderr!.setEncoding('utf8').on('data', (d: string) => {
    if (errText.length < 200_000) errText += d;
    for (const line of d.split('\n')) if (/"level":60\b|Uncaught|unhandled/i.test(line) && result.agentErrors.length < 50) result.agentErrors.push(line.slice(0, 500));
  });
  const started = Date.now();
  try {
    while (Date.now() - started < o.seconds * 1000 && (o.maxCases === undefined || result.cases < o.maxCases)) {
      const before = result.cases;
      await Promise.race([new Promise<void>((r) => { waiting = r; }), exited, new Promise((r) => setTimeout(r, o.reconnectMs ?? 20_000))]);
      waiting = undefined;
      if (exitText !== undefined) {
        result.crashes++;
        result.crash = `the agent exited (${exitText}) after case ${index - 1}: ${errText.trim().split('\n').slice(-5).join(' | ').slice(0, 1500)}`;
        note(result.crash);
        break;
      }
      if (result.cases === before) {
        result.crashes++;
        result.crash = `the agent did not connect again within ${(o.reconnectMs ?? 20_000) / 1000} s after case ${index - 1}: ${errText.trim().split('\n').slice(-3).join(' | ').slice(0, 1000)}`;
        note(result.crash);
        break;
      }
    }
  } finally {
    if (exitText === undefined) agent.kill('SIGTERM');
    const t = setTimeout(() => agent.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
    server.forceShutdown();
  }
  return result;
}
