/**
 * A client process of bench/storm.ts (forked; talks over IPC). `sim` mode: simulated agents
 * (bench/simagent.ts: each its own key, certificate, mTLS connection and the real AgentChannel
 * protocol through agent/channel.ts, with the real agent's reconnect policy). `raw` mode: for the
 * raw grpc-js baseline, one mTLS connection per identity with the same channel setup, each holding
 * one idle bidi stream. Reports progress every 500 ms; `mark` starts counting welcomes afresh
 * (the storm: every agent must be welcomed again after the hub's restart).
 */
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { SimAgent, type SimIdentity } from './simagent.js';
import { v1 } from '../common/proto.js';
import { secureChannel } from '../common/grpc-tls.js';
import { AGENT_CHANNEL_OPTIONS } from '../agent/channel.js';
import { silenceIpServernameWarning } from '../common/warnings.js';
import { agentFacts } from '../agent/agent.js';
import { LightAgent, LightFleet } from './storm-light.js';

/** `client`: light (bench/storm-light.ts: node:tls + node:http2, the default) or grpc (bench/simagent.ts: the real agent's grpc-js channel). */
export interface StormClientStart { cmd: 'start'; mode: 'sim' | 'raw'; client: 'light' | 'grpc'; target: string; idsFile: string; concurrency: number; maxBackoffMs: number }
export type StormClientCommand = StormClientStart | { cmd: 'mark' } | { cmd: 'stop' };
export interface StormClientReport { ready: number; welcomedSinceMark: number; closed: number; shed: number; connects: number; failures: number; lastError?: string }

silenceIpServernameWarning();
// Thousands of refused connections per second while the hub restarts, each an Error: their stack
// traces (never printed here) cost the client processes CPU on the hub's cores.
Error.stackTraceLimit = 4;

const send = (m: StormClientReport | { done: true }) => process.send?.(m);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let sims: SimAgent[] = [];
let lights: LightAgent[] = [];
let fleet: LightFleet | undefined;
let lightOnce = false;
const raws: Array<{ client: grpc.Client; call: grpc.ClientDuplexStream<unknown, unknown>; ready: boolean }> = [];
let welcomedSinceMark = new Set<string>();
let failures = 0;
let lastError: string | undefined;

function report(): StormClientReport {
  if (raws.length) {
    const ready = raws.filter((r) => r.ready).length;
    return { ready, welcomedSinceMark: ready, closed: 0, shed: 0, connects: ready, failures, lastError };
  }
  let ready = 0, closed = 0, shed = 0, connects = 0;
  for (const s of lights) {
    if (s.state === 'ready') ready++;
    else if (s.state === 'closed') closed++;
    shed += s.stats.shed;
    connects += s.stats.connects;
  }
  if (lightOnce) return { ready, welcomedSinceMark: ready, closed: 0, shed, connects, failures: closed, lastError };
  for (const s of sims) {
    if (s.channel.state === 'ready') ready++;
    else if (s.channel.state === 'closed') closed++;
    shed += s.channel.stats.shed;
    connects += s.channel.stats.connects;
  }
  return { ready, welcomedSinceMark: welcomedSinceMark.size, closed, shed, connects, failures, lastError };
}

async function startSims(o: StormClientStart, ids: SimIdentity[]): Promise<void> {
  sims = ids.map((identity) => new SimAgent({ target: o.target, identity, maxBackoffMs: o.maxBackoffMs }));
  for (const s of sims) {
    s.channel.on('welcome', () => welcomedSinceMark.add(s.agentId));
    s.channel.on('state', (st: string, detail: unknown) => { if (st === 'closed' && detail) { failures++; lastError = String((detail as Error).message).slice(0, 200); } });
  }
  // At most `concurrency` connecting at once per process (as agents on many hosts would, each
  // connecting once): the next starts when one is welcomed.
  let next = 0;
  const worker = async () => {
    while (next < sims.length) {
      const s = sims[next++]!;
      s.start();
      while (s.channel.state === 'connecting') await sleep(5);
    }
  };
  await Promise.all(Array.from({ length: Math.min(o.concurrency, sims.length) }, worker));
}

/** Light agents (bench/storm-light.ts); `once` (the raw baseline): no reconnect, a lost stream is a failure. */
async function startLight(o: StormClientStart, ids: SimIdentity[], once: boolean): Promise<void> {
  lightOnce = once;
  fleet = new LightFleet({ target: o.target, hello: { facts: agentFacts(), labels: {} }, maxBackoffMs: o.maxBackoffMs });
  const f = fleet;
  lights = ids.map((identity) => new LightAgent(f, identity, once));
  for (const s of lights) {
    s.on('welcome', () => welcomedSinceMark.add(s.agentId));
    s.on('state', (st: string, detail: unknown) => { if (st === 'closed' && detail) { if (!once) failures++; lastError = String((detail as Error).message).slice(0, 200); } });
  }
  let next = 0;
  const worker = async () => {
    while (next < lights.length) {
      const s = lights[next++]!;
      s.start();
      while (s.state === 'connecting') await sleep(5);
    }
  };
  await Promise.all(Array.from({ length: Math.min(o.concurrency, lights.length) }, worker));
}

async function startRaw(o: StormClientStart, ids: SimIdentity[]): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < ids.length) {
      const id = ids[next++]!;
      const tls = secureChannel(o.target, id.caPem, id.keyPem, id.certPem);
      const client = new v1.AgentChannel(o.target, tls.creds, { ...tls.options, ...AGENT_CHANNEL_OPTIONS }) as unknown as grpc.Client & { Connect(): grpc.ClientDuplexStream<unknown, unknown> };
      const call = client.Connect();
      const r = { client, call, ready: false };
      raws.push(r);
      await new Promise<void>((resolve) => {
        call.on('data', () => { r.ready = true; resolve(); });
        call.on('error', (e: Error) => { failures++; lastError = e.message.slice(0, 200); resolve(); });
        call.write({ hello: { facts: { hostname: 'raw' }, labels: {} } });
      });
    }
  };
  await Promise.all(Array.from({ length: Math.min(o.concurrency, ids.length) }, worker));
}

process.on('message', (m: StormClientCommand) => {
  if (m.cmd === 'start') {
    const ids = JSON.parse(readFileSync(m.idsFile, 'utf8')) as SimIdentity[];
    const timer = setInterval(() => send(report()), 500);
    const run = m.client === 'light' ? startLight(m, ids, m.mode === 'raw') : m.mode === 'raw' ? startRaw(m, ids) : startSims(m, ids);
    void run.catch((e: Error) => { failures++; lastError = e.message; });
    process.once('disconnect', () => { clearInterval(timer); process.exit(0); });
  } else if (m.cmd === 'mark') {
    welcomedSinceMark = new Set();
    send(report());
  } else if (m.cmd === 'stop') {
    fleet?.close();
    void Promise.all([...sims.map((s) => s.close()), ...lights.map((s) => s.close()), ...raws.map(async (r) => { r.call.cancel(); r.client.close(); })])
      .finally(() => { send({ done: true }); setTimeout(() => process.exit(0), 100); });
  }
});
