/**
 * "An event delivered twice never runs an action twice", end to end: a real hub process
 * (`trellis hub run`), a real agent with its durable outbox, a hub rule whose action appends a
 * line to a file on the agent. The same event (same id) reaches the hub a second time
 *  (a) after the hub was killed with SIGKILL and restarted: the hub had matched the event and the
 *      action had run, but the agent's outbox still holds the event as unacknowledged (the ack
 *      was lost), so the restarted agent sends it again. The hub's in-memory id window is gone
 *      with the process; only the rule's idempotency key (`<rule>|<event id>|<agent>`, kept in
 *      the execution history) stands between the event and a second run;
 *  (b) after a reconnect of the agent (hub up): the hub's per-agent id window drops it.
 * The action must have run exactly once per event id, counted on the agent side (lines in the
 * file) and in the hub's history. A fresh event sent right after the duplicate (the sentinel)
 * proves the duplicate was read and went through the rules engine before anything is counted.
 *
 * Checked by hand: with both the hub's id de-duplication (hub/events) and the rule idempotency
 * key (hub/executions dedup map) disabled, both subtests fail (the line appears twice).
 */
import t from 'tap';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { ulid } from 'ulid';
import { ADMIN_PASSWORD, captureLogger, fileAgentLogger, tempDir, waitFor, type TestHub } from './helpers/hub.js';
import { createRule, file, getRule, install, listExecutions, markAction, readLines } from './helpers/admin.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import { initHub } from '../hub/init.js';
import { enroll } from '../agent/enroll.js';
import { Agent } from '../agent/agent.js';
import { Outbox } from '../agent/outbox/index.js';
import { freePorts } from '../bench/lib.js';
import { runHub, stopHub, type HubProc } from './helpers/hub-process.js';
import { FINAL_STATUSES, type ExecutionStatus } from '../common/automation/types.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const kill9 = (h: HubProc) => stopHub(h, 'SIGKILL');

/** Appends events to a stopped agent's outbox, as if its sensors had queued them. */
async function queue(agentDir: string, events: T.Event[]): Promise<void> {
  const { log } = captureLogger('warn');
  const ob = await Outbox.open({ dir: join(agentDir, 'outbox'), log });
  try {
    const r = ob.append(events);
    if (r.accepted !== events.length) throw new Error(`the outbox refused ${r.refused} of ${events.length} events`);
  } finally {
    await ob.close();
  }
}

const ping = (id: string, n: number): T.Event => ({ id, type: 'core.ping', payloadJson: Buffer.from(JSON.stringify({ n })), timeMs: Date.now() });

t.test('an event delivered twice runs its action once: after a hub SIGKILL + restart, and after an agent reconnect', async (t) => {
  await using tmp = await tempDir('trellis-dedup-');
  const dataDir = join(tmp.path, 'hub');
  const agentDir = join(tmp.path, 'agent');
  const out = join(tmp.path, 'ran.out');
  await initHub({ dataDir, names: ['localhost', '127.0.0.1'], adminPassword: ADMIN_PASSWORD, config: { bind: '127.0.0.1' } });
  const ports = await freePorts(3);
  const adminAddr = `127.0.0.1:${ports[1]}`;
  const caPem = readFileSync(join(dataDir, 'ca.pem'), 'utf8');
  let hub = await runHub(dataDir, ports);
  t.teardown(async () => { if (hub.proc.exitCode === null && hub.proc.signalCode === null) await kill9(hub); });

  const anon = adminClients(adminAddr, caPem);
  const login = await call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username: 'admin', password: ADMIN_PASSWORD });
  anon.close();
  const admin: AdminClients = adminClients(adminAddr, caPem, login.token, '*');
  t.teardown(() => admin.close());
  const h = { admin } as TestHub; // what the admin helpers use

  await install(h, [file('pack.yaml', 'name: ops\nversion: 1.0.0\ndescription: test\n'), markAction('append a line')]);
  await createRule(h, { name: 'on-ping', trigger: 'core.ping', action: { ref: 'ops.mark', parameters: { msg: 'ping {{ trigger.payload.n }}', out } } });
  const token = (await call<T.CreateJoinTokenRequest, T.CreateJoinTokenResponse__Output>(admin, admin.tokens, admin.tokens.CreateJoinToken, { tenant: 'default', uses: 1, ttlMs: 600_000 })).token;
  await enroll({ hub: adminAddr, token, dataDir: agentDir });

  let agent: Agent | undefined;
  const startAgent = async () => {
    agent = await Agent.start({ dataDir: agentDir, log: fileAgentLogger(agentDir).log, maxBackoffMs: 500 });
    await waitFor(() => agent!.channel.state === 'ready', 30_000, 'agent ready');
    return agent;
  };
  t.teardown(async () => { await agent?.close().catch(() => undefined); });
  const executions = async () => (await listExecutions(h, { rule: 'on-ping' })).executions;
  /** Every execution of the rule has finished and `lines` lines are in the file. */
  const settled = async (lines: number) => {
    await waitFor(() => readLines(out).length >= lines, 60_000, `${lines} lines`);
    await waitFor(async () => (await executions()).every((x) => FINAL_STATUSES.has(x.status as ExecutionStatus)), 60_000, 'executions finished');
  };

  // 1. The event, the first time: matched, run, acknowledged.
  const a = await startAgent();
  a.publishEvent('core.ping', { n: 1 });
  await settled(1);
  const [first] = await executions();
  t.equal(first?.status, 'succeeded');
  const firstId = first!.triggerEventId;
  t.match(firstId, /^[0-9A-Z]{26}$/, 'the execution names its trigger event');
  await waitFor(() => a.outbox.stats.queued === 0 && a.outbox.stats.acked >= 1, 30_000, 'the hub acknowledged the event');
  // The execution (with its idempotency key) is in the hub's history on disk before the kill.
  const histDir = join(dataDir, 'executions');
  const onDisk = () => readdirSync(histDir).filter((f) => /^\d{12}\.jsonl$/.test(f)).map((f) => readFileSync(join(histDir, f), 'utf8')).join('');
  const onDiskDone = () => onDisk().split('\n').some((l) => l.includes(`"id":"${first!.id}"`) && l.includes('"status":"succeeded"'));
  await waitFor(onDiskDone, 30_000, 'the finished execution in the history files');

  // (a) kill -9 the hub. The ack was lost: the agent's outbox holds the same event again.
  await kill9(hub);
  await a.close();
  agent = undefined;
  const sentinelA = ulid();
  await queue(agentDir, [ping(firstId, 1), ping(sentinelA, 2)]);
  hub = await runHub(dataDir, ports);
  const b = await startAgent();
  await waitFor(() => readLines(out).includes('ping 2'), 60_000, 'the event sent after the duplicate ran');
  await waitFor(async () => (await getRule(h, 'on-ping')).matched >= 2, 30_000, 'the restarted hub matched both events');
  await settled(2);
  t.equal((await getRule(h, 'on-ping')).matched, 2, 'the duplicate reached the rules engine of the restarted hub (its id window was empty)');
  t.same(readLines(out), ['ping 1', 'ping 2'], 'after a hub SIGKILL + restart the re-delivered event did not run its action again');
  let hist = await executions();
  t.same(hist.map((x) => x.triggerEventId).sort(), [firstId, sentinelA].sort(), 'the hub has one execution per event id');
  await waitFor(() => b.outbox.stats.queued === 0, 30_000, 'both acknowledged');

  // (b) The agent reconnects and sends the same event again (hub up: its id window holds it).
  await b.close();
  agent = undefined;
  const sentinelB = ulid();
  await queue(agentDir, [ping(firstId, 1), ping(sentinelA, 2), ping(sentinelB, 3)]);
  const c = await startAgent();
  await waitFor(() => readLines(out).includes('ping 3'), 60_000, 'the event sent after the duplicates ran');
  await settled(3);
  t.same(readLines(out), ['ping 1', 'ping 2', 'ping 3'], 'after a reconnect the re-delivered events did not run their action again');
  hist = await executions();
  t.equal(hist.length, 3, 'three executions in all');
  t.same(hist.map((x) => x.triggerEventId).sort(), [firstId, sentinelA, sentinelB].sort(), 'one per event id');
  await waitFor(() => c.outbox.stats.queued === 0, 30_000, 'all acknowledged');
  // Closed here, before `tmp` is removed at the end of this block (a teardown would run after that).
  await c.close();
  agent = undefined;
});
