/**
 * A soak client process (forked by bench/soak/main.ts): a share of the simulated agents, each
 * with its own certificate, its own mTLS stream speaking the real AgentChannel protocol
 * (agent/channel.ts), its own durable outbox (agent/outbox) and its own edge rules engine
 * (agent/edge.ts). The orchestrator kill -9s these processes and starts them again with the
 * same identities and directories: an agent's outbox then re-sends what it had accepted.
 *
 * Actions from the hub are "run" by recording them in ran.log (fsynced) before the result is
 * sent; edge rules run a no-op and report through the outbox, as the real agent does. See
 * bench/soak/protocol.ts for the files.
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import crypto from 'node:crypto';
import { pino } from 'pino';
import { HubChannel } from '../../agent/channel.js';
import { agentFacts } from '../../agent/agent.js';
import { Outbox } from '../../agent/outbox/index.js';
import { EdgeRules } from '../../agent/edge.js';
import { silenceIpServernameWarning } from '../../common/warnings.js';
import type { TriggerEvent } from '../../common/automation/types.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';
import type { SimIdentity } from '../simagent.js';
import { SOAK_EDGE_TRIGGER, SOAK_RULE, SOAK_TRIGGER, type ClientConfig, type ClientStats, type FromClient, type ToClient } from './protocol.js';

silenceIpServernameWarning();

const cfg = JSON.parse(process.argv[2] ?? '{}') as ClientConfig;
const log = pino({ level: 'silent' });
const send = (m: FromClient) => { try { process.send?.(m); } catch { /* the orchestrator went away */ } };

/** Appends lines to a file, synchronously, one write per call (fsync optional). */
class LineLog {
  private readonly fd: number;
  constructor(path: string) { this.fd = fs.openSync(path, 'a', 0o600); }
  write(lines: string[], sync: boolean): void {
    if (lines.length === 0) return;
    const b = Buffer.from(lines.join('\n') + '\n');
    let off = 0;
    while (off < b.length) off += fs.writeSync(this.fd, b, off);
    if (sync) fs.fdatasyncSync(this.fd);
  }
}

const accepted = new LineLog(join(cfg.dir, 'accepted.log'));
const ranLog = new LineLog(join(cfg.dir, 'ran.log'));
let injectedDup = false;
let injectedLoss = false;

interface Sim {
  id: string;
  identity: SimIdentity;
  channel: HubChannel;
  outbox: Outbox;
  edge: EdgeRules;
  seq: number;
  credit: number;
  edgeRunning: number;
}

const counters = { accepted: 0, refused: 0, ran: 0 };
let publishing = false;
const sims: Sim[] = [];
/** Actions recorded but not yet synced: their results go out after the fsync. */
let pendingRan: Array<{ sim: Sim; lines: string[]; results: T.ActionResult[] }> = [];
let ranTimer: NodeJS.Timeout | undefined;

function flushRan(): void {
  ranTimer = undefined;
  const batch = pendingRan;
  pendingRan = [];
  ranLog.write(batch.flatMap((b) => b.lines), true);
  for (const b of batch) for (const r of b.results) b.sim.channel.send({ result: r });
}

function onAction(sim: Sim, a: T.ActionRequest__Output): void {
  const now = Date.now();
  const eventId = a.argv[1] ?? '';
  const key = `${SOAK_RULE}|${eventId}|${sim.id}`;
  const lines = [`${sim.id} ${a.executionId} ${key}`];
  if (cfg.inject === 'duplicate-execution' && !injectedDup && cfg.index === 0) { injectedDup = true; lines.push(lines[0]!); }
  counters.ran += lines.length;
  pendingRan.push({ sim, lines, results: [{ executionId: a.executionId, status: 'succeeded', exitCode: 0, error: '', startedMs: now, finishedMs: Date.now() }] });
  ranTimer ??= setTimeout(flushRan, 5);
}

/** Publishes through the outbox and logs what it accepted (after append returned). */
function publish(sim: Sim, events: T.Event[], kinds: string[]): void {
  if (events.length === 0) return;
  const r = sim.channel.publish(events);
  counters.accepted += r.accepted;
  counters.refused += r.refused;
  const lines: string[] = [];
  for (let i = 0; i < r.accepted; i++) lines.push(`${sim.id} ${events[i]!.id} ${kinds[i]}`);
  accepted.write(lines, false);
}

function tick(): void {
  if (!publishing) return;
  const now = Date.now();
  for (const sim of sims) {
    sim.credit += cfg.ratePerAgent / 10;
    if (sim.credit < 1) continue;
    const n = Math.floor(sim.credit);
    sim.credit -= n;
    const events: T.Event[] = [];
    const kinds: string[] = [];
    const triggers: TriggerEvent[] = [];
    for (let i = 0; i < n; i++) {
      const edge = Math.random() < cfg.edgeFraction;
      const id = `${cfg.index}-${cfg.boot}-${++sim.seq}`;
      const type = edge ? SOAK_EDGE_TRIGGER : SOAK_TRIGGER;
      const payload = { n: sim.seq, host: sim.id };
      if (cfg.inject === 'lose-event' && !injectedLoss && cfg.index === 0 && !edge && sim.seq >= 3) {
        // Test-only: logged as accepted, never handed to the outbox (the checker must see it lost).
        injectedLoss = true;
        accepted.write([`${sim.id} ${id} r`], false);
        continue;
      }
      events.push({ id, type, payloadJson: Buffer.from(JSON.stringify(payload)), timeMs: now });
      kinds.push(edge ? 'e' : 'r');
      if (edge) triggers.push({ id, type, payload, agent: sim.id, tenant: 'default', timeMs: now });
    }
    // As the real agent does: local edge rules see the events, then they go upstream.
    if (triggers.length) { try { sim.edge.onEvents(triggers); } catch { /* counted by the engine */ } }
    publish(sim, events, kinds);
  }
}

function stats(): ClientStats {
  let ready = 0, backlog = 0, edgeRunning = 0, closed = 0;
  for (const s of sims) {
    if (s.channel.state === 'ready') ready++;
    if (s.channel.state === 'closed') closed++;
    backlog += s.channel.backlog;
    edgeRunning += s.edgeRunning;
  }
  return { t: 'stats', index: cfg.index, agents: sims.length, ready, backlog, accepted: counters.accepted, refused: counters.refused, ran: counters.ran, edgeRunning, closed, rssMb: process.memoryUsage.rss() / 1048576 };
}

async function main(): Promise<void> {
  const identities = JSON.parse(fs.readFileSync(cfg.identitiesFile, 'utf8')) as SimIdentity[];
  const t0 = performance.now();
  for (const identity of identities) {
    const dir = join(cfg.dir, 'agents', identity.agentId);
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const outbox = await Outbox.open({ dir: join(dir, 'outbox'), log, syncIntervalMs: 1000 });
    const key = crypto.createPrivateKey(identity.keyPem);
    const sim = { id: identity.agentId, identity, outbox, seq: 0, credit: Math.random(), edgeRunning: 0 } as Sim;
    sim.edge = new EdgeRules({
      dataDir: dir, log, privateKey: () => key,
      run: async () => {
        sim.edgeRunning++;
        const startedMs = Date.now();
        await new Promise((r) => setImmediate(r));
        sim.edgeRunning--;
        return { status: 'succeeded', exitCode: 0, error: '', startedMs, finishedMs: Date.now(), output: Buffer.alloc(0), outputTruncated: false };
      },
      publish: (evs) => publish(sim, evs, evs.map((e) => `x ${String((JSON.parse(Buffer.from(e.payloadJson ?? "").toString('utf8')) as { executionId?: string }).executionId)}`)),
    });
    sim.edge.load();
    let welcomed: T.Welcome__Output | undefined;
    sim.channel = new HubChannel({
      target: cfg.target,
      credentials: () => ({ caPem: identity.caPem, keyPem: identity.keyPem, certPem: identity.certPem }),
      hello: () => ({ facts: agentFacts(), labels: {} }),
      onAction: (a) => onAction(sim, a),
      onCancel: () => undefined,
      onConfig: (c) => {
        void (async () => {
          let error = '';
          try { await sim.edge.apply(welcomed?.agentId ?? sim.id, welcomed?.tenant ?? 'default', c); } catch (err) { error = (err as Error).message; }
          sim.channel.send({ configAck: { version: c.version, error } });
        })();
      },
      heartbeat: () => sim.edge.report(),
      log,
      outbox,
      maxBackoffMs: cfg.maxBackoffMs,
    });
    sim.channel.on('welcome', (w: T.Welcome__Output) => { welcomed = w; });
    sims.push(sim);
  }
  const openMs = performance.now() - t0;
  for (const s of sims) s.channel.start();
  send({ t: 'started', index: cfg.index, agents: sims.length, openMs });
  setInterval(tick, 100);
}

async function close(): Promise<void> {
  publishing = false;
  if (ranTimer) { clearTimeout(ranTimer); flushRan(); }
  await Promise.all(sims.map(async (s) => { await s.channel.close(); await s.outbox.close(); }));
  send({ t: 'closed', index: cfg.index });
  process.exit(0);
}

process.on('message', (m: ToClient) => {
  if (m.t === 'publish') publishing = m.on;
  else if (m.t === 'stats') send(stats());
  else if (m.t === 'close') void close();
});
process.on('disconnect', () => process.exit(0)); // the orchestrator died: do not linger
main().catch((err: Error) => { send({ t: 'error', index: cfg.index, message: err.stack ?? err.message }); process.exit(1); });
