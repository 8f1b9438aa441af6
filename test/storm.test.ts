/**
 * Reconnect storms (issue 13 §2): full-jitter backoff and its cap, the hub's load shedding
 * (RESOURCE_EXHAUSTED + retry-after-ms, honored by agents), the hello deadline, keepalive on both
 * ends of the agent channel, and the agentChannel config. Real hub, real mTLS streams.
 */
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { backoffDelay, retryAfterDelay, retryAfterMs, RETRY_AFTER_KEY, MAX_RETRY_AFTER_MS, DEFAULT_MAX_BACKOFF_MS } from '../common/backoff.js';
import { validateConfig } from '../hub/config.js';
import { AGENT_CHANNEL_OPTIONS } from '../agent/channel.js';
import { issueSimIdentities, SimAgent } from '../bench/simagent.js';
import { v1 } from '../common/proto.js';
import { secureChannel } from '../common/grpc-tls.js';
import { CODE_KEY } from '../common/grpc-errors.js';
import { startHub, waitFor as waitUntil } from './helpers/hub.js';
import { AdmissionGate, MAX_ADAPTIVE_RETRY_AFTER_MS } from '../hub/grpc/admission.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const waitFor = (what: string, cond: () => boolean, ms = 60_000) => waitUntil(cond, ms, what);

t.test('backoff: full jitter over [0, step], deterministic with an injected random', async (t) => {
  t.equal(backoffDelay(0, { random: () => 0 }), 0, 'the lowest draw waits 0 ms (full jitter starts at 0, not at half the step)');
  t.equal(backoffDelay(3, { random: () => 0 }), 0, 'at any attempt');
  t.equal(backoffDelay(0, { random: () => 0.9999999 }), 500, 'the highest draw waits the whole first step (500 ms)');
  t.equal(backoffDelay(3, { random: () => 0.9999999 }), 4000, 'attempt 3: 500 ms * 2^3');
  t.equal(backoffDelay(3, { random: () => 0.5 }), 2000, 'the middle draw: half the step');
  t.equal(backoffDelay(40, { random: () => 0.9999999 }), DEFAULT_MAX_BACKOFF_MS, 'the cap bounds a late attempt (default 10 s)');
  t.equal(DEFAULT_MAX_BACKOFF_MS, 10_000, 'the default cap: a restarted hub sees its fleet within ~10 s (it queues the handshakes it cannot do yet)');
  t.equal(backoffDelay(10, { random: () => 0.9999999, maxMs: 7000 }), 7000, 'a configured cap');
  t.equal(backoffDelay(-5, { random: () => 0.9999999 }), 500, 'a negative attempt is the first');
  t.equal(backoffDelay(3, { random: () => 0, jitter: 'equal' }), 2000, 'equal jitter (local retry loops) keeps half the step');
});

t.test('backoff: statistical bounds of full jitter and its cap over many samples', async (t) => {
  const n = 20_000;
  const step = 500 * 2 ** 4; // 8 s
  const xs = Array.from({ length: n }, () => backoffDelay(4));
  const min = Math.min(...xs), max = Math.max(...xs), mean = xs.reduce((a, b) => a + b, 0) / n;
  t.ok(max <= step, `never above the step (${max} <= ${step})`);
  t.ok(min < step * 0.02, `some waits near 0: the fleet spreads over the whole window (min ${min})`);
  t.ok(max > step * 0.98, `some waits near the step (max ${max})`);
  t.ok(Math.abs(mean - step / 2) < step * 0.03, `mean ~ step/2 (uniform): ${mean.toFixed(0)} vs ${step / 2}`);
  const lowQuarter = xs.filter((x) => x < step / 4).length / n;
  t.ok(lowQuarter > 0.22 && lowQuarter < 0.28, `a quarter of the waits fall in the first quarter (${lowQuarter.toFixed(3)})`);
  const capped = Array.from({ length: n }, () => backoffDelay(25));
  t.ok(Math.max(...capped) <= DEFAULT_MAX_BACKOFF_MS, 'late attempts never exceed the cap');
  t.ok(Math.max(...capped) > DEFAULT_MAX_BACKOFF_MS * 0.98, 'and reach it');
  // A 10k storm: every agent at the cap spreads evenly over the cap (10 s: ~1,000 arrivals/s; the
  // hub queues the handshakes it cannot do yet), no second much above the mean.
  const seconds = DEFAULT_MAX_BACKOFF_MS / 1000;
  const perSecond = new Array(seconds + 1).fill(0);
  for (const x of capped.slice(0, 10_000)) perSecond[Math.floor(x / 1000)]++;
  const perSecondMean = 10_000 / seconds;
  t.ok(Math.max(...perSecond) < perSecondMean * 1.15, `no second of the ${seconds} s window gets a wave (busiest: ${Math.max(...perSecond)} of 10,000; mean ${perSecondMean})`);
});

t.test('retry-after: parsed from the trailer, clamped, jittered upward', async (t) => {
  const md = (v?: string) => { const m = new grpc.Metadata(); if (v !== undefined) m.set(RETRY_AFTER_KEY, v); return { metadata: m }; };
  t.equal(retryAfterMs(md('1500')), 1500);
  t.equal(retryAfterMs(md()), undefined, 'absent');
  t.equal(retryAfterMs(md('soon')), undefined, 'not a number');
  t.equal(retryAfterMs(md('-3')), undefined, 'negative');
  t.equal(retryAfterMs(md('99999999999')), MAX_RETRY_AFTER_MS, 'a huge value is clamped (a bad hub cannot park agents for days)');
  t.equal(retryAfterMs(new Error('x')), undefined, 'no metadata');
  t.equal(retryAfterDelay(1000, () => 0), 1000, 'never earlier than asked');
  t.equal(retryAfterDelay(1000, () => 0.9999999), 2000, 'at most twice');
});

t.test('admission gate: one key holds at most maxPendingPerKey slots; a refused claim frees its slot', async (t) => {
  const g = new AdmissionGate({ maxPending: 10, retryAfterMs: 1000, maxPendingPerKey: 2 });
  const a = g.claim('agent-a', g.tryEnter()!), b = g.claim('agent-a', g.tryEnter()!);
  t.ok(a && b, 'two slots for agent-a');
  t.equal(g.claim('agent-a', g.tryEnter()!), undefined, 'a third for agent-a is refused');
  t.equal(g.inFlight, 2, 'and its slot went back to the pool');
  t.ok(g.claim('agent-b', g.tryEnter()!), 'another agent is not affected');
  a!(); a!();
  t.equal(g.heldBy('agent-a'), 1, 'a release counts once per key too');
  t.equal(g.inFlight, 2);
  t.ok(g.claim('agent-a', g.tryEnter()!), 'the released slot can be claimed again');
});

t.test('admission gate: bounded slots, released once; retry-after grows with the sheds of the last second', async (t) => {
  let now = 1_000_000;
  const g = new AdmissionGate({ maxPending: 2, retryAfterMs: 1000 }, () => now);
  const a = g.tryEnter(), b = g.tryEnter();
  t.ok(a && b, 'two slots');
  t.equal(g.tryEnter(), undefined, 'the third is shed');
  a!(); a!();
  t.equal(g.inFlight, 1, 'a release counts once');
  t.ok(g.tryEnter(), 'a released slot is reused');
  const ra = (s: ReturnType<AdmissionGate['shedStatus']>) => Number(s.metadata.get(RETRY_AFTER_KEY)[0]);
  t.equal(ra(g.shedStatus('r')), 1000, 'the first shed: the configured retry-after');
  t.equal(ra(g.shedStatus('r')), 1000, 'one shed before it (< maxPending): still the base');
  t.equal(ra(g.shedStatus('r')), 2000, 'two sheds before it (= maxPending): twice');
  for (let i = 0; i < 20; i++) g.shedStatus('r');
  t.equal(ra(g.shedStatus('r')), 12_000, '23 sheds in the last second, 2 slots: 1 + 11 times');
  now += 1500;
  t.equal(ra(g.shedStatus('r')), 13_000, 'the previous second still counts (24 then)');
  now += 5000;
  t.equal(ra(g.shedStatus('r')), 1000, 'a quiet spell: back to the base');
  for (let i = 0; i < 500; i++) g.shedStatus('r');
  t.equal(ra(g.shedStatus('r')), MAX_ADAPTIVE_RETRY_AFTER_MS, 'capped');
  const big = new AdmissionGate({ maxPending: 1, retryAfterMs: 60_000 }, () => now);
  t.equal(Number(big.shedStatus('r').metadata.get(RETRY_AFTER_KEY)[0]), 60_000, 'a configured retry-after above the cap is kept');
});

t.test('config: agentChannel defaults and validation', async (t) => {
  const c = validateConfig({ names: ['h'] }, 'x');
  t.same(c.agentChannel, { maxHandshakes: 512, maxHandshakesPerAddress: 64, maxQueuedHandshakes: 20_000, handshakeQueueTimeout: 60_000, maxPendingHellos: 256, retryAfter: 2000, helloTimeout: 10_000, keepaliveTime: 60_000, keepaliveTimeout: 20_000 });
  const d = validateConfig({ names: ['h'], agentChannel: { maxPendingHellos: 5, retryAfter: '500ms', helloTimeout: '30s' } }, 'x');
  t.equal(d.agentChannel.maxPendingHellos, 5);
  t.equal(d.agentChannel.retryAfter, 500);
  t.equal(d.agentChannel.helloTimeout, 30_000);
  const h = validateConfig({ names: ['h'], agentChannel: { maxHandshakes: 8, maxQueuedHandshakes: 0, handshakeQueueTimeout: '2s' } }, 'x');
  t.same([h.agentChannel.maxHandshakes, h.agentChannel.maxQueuedHandshakes, h.agentChannel.handshakeQueueTimeout], [8, 0, 2000], 'handshake bound, queue and its timeout');
  const bad = (v: unknown, re: RegExp, what: string) => t.throws(() => validateConfig({ names: ['h'], agentChannel: v }, 'x'), { code: 'TRELLIS_E_CONFIG', message: re }, what);
  bad({ maxPendingHellos: 0 }, /agentChannel\.maxPendingHellos/, 'zero admissions refused');
  bad({ maxHandshakes: 0 }, /agentChannel\.maxHandshakes/, 'zero handshakes refused');
  bad({ maxHandshakes: 1.5 }, /agentChannel\.maxHandshakes/, 'a fractional handshake bound refused');
  bad({ maxQueuedHandshakes: -1 }, /agentChannel\.maxQueuedHandshakes/, 'a negative queue refused');
  bad({ handshakeQueueTimeout: '10ms' }, /agentChannel\.handshakeQueueTimeout: between 1s and 5m/, 'a queue timeout shorter than a handshake');
  bad({ retryAfter: '10ms' }, /agentChannel\.retryAfter: between 100ms and 5m/, 'a retry-after too short to shed anything');
  bad({ retryAfter: '1h' }, /agentChannel\.retryAfter/, 'a retry-after that parks agents');
  bad({ helloTimeout: '100ms' }, /agentChannel\.helloTimeout/, 'a hello deadline shorter than a slow handshake');
  bad({ keepaliveTimeout: '1s' }, /agentChannel\.keepaliveTimeout: between 5s and 5m/, 'a keepalive timeout a GC pause would trip');
  bad({ keepaliveTime: '1s' }, /agentChannel\.keepaliveTime/, 'pings every second');
  bad({ maxPending: 5 }, /unrecognized|maxPending/, 'an unknown key named');
});

t.test('keepalive: the agent channel and the hub agent port run the configured keepalive', async (t) => {
  await using h = await startHub({ config: { agentChannel: { keepaliveTime: '45s', keepaliveTimeout: '15s' } } });
  // The hub's agent server was built with them (read back from the live grpc-js server).
  const opts = (h.hub as unknown as { agentServer: { options: Record<string, unknown> } }).agentServer.options;
  t.equal(opts['grpc.keepalive_time_ms'], 45_000, 'hub pings agent connections at keepaliveTime');
  t.equal(opts['grpc.keepalive_timeout_ms'], 15_000, 'and waits keepaliveTimeout for the answer');
  // A connected agent's channel carries the agent keepalive (read back from the live channel).
  await using a = await h.agent();
  const conn = (a as unknown as { channel: { current?: { client: grpc.Client } } }).channel.current;
  t.ok(conn, 'the agent is connected');
  const chOpts = (conn!.client.getChannel() as unknown as { internalChannel: { options: Record<string, unknown> } }).internalChannel.options;
  t.equal(chOpts['grpc.keepalive_time_ms'], AGENT_CHANNEL_OPTIONS['grpc.keepalive_time_ms']);
  t.equal(chOpts['grpc.keepalive_time_ms'], 30_000, 'agent pings every 30 s');
  t.equal(chOpts['grpc.keepalive_timeout_ms'], 20_000, 'and gives a busy hub 20 s to answer (a GC pause is not a dead hub)');
  t.equal(chOpts['grpc.keepalive_permit_without_calls'], 1);
  t.ok(Number(chOpts['grpc.keepalive_time_ms']) >= 5_000, 'not below the hub\'s min_ping_interval (the hub would answer GOAWAY too_many_pings)');
});

t.test('shedding: a hub at its admission bound answers RESOURCE_EXHAUSTED + retry-after-ms; agents honor it and all get in', async (t) => {
  const RETRY_AFTER = 400;
  await using h = await startHub({ config: { agentChannel: { maxPendingHellos: 1, retryAfter: `${RETRY_AFTER}ms` } } });
  const cfg = JSON.parse((await import('node:fs')).readFileSync(`${h.dataDir}/hub.json`, 'utf8')) as { names: string[]; trustDomain?: string };
  const ids = issueSimIdentities({ hubDir: h.dataDir, names: cfg.names, trustDomain: cfg.trustDomain ?? 'trellis.local', n: 24 });
  const sims = ids.map((identity) => new SimAgent({ target: h.agentAddr, identity, maxBackoffMs: 30_000 }));
  t.teardown(() => Promise.all(sims.map((s) => s.close())));
  const sheds = new Map<string, number[]>();
  const welcomes = new Map<string, number>();
  for (const s of sims) {
    s.channel.on('shed', (delay: number) => {
      if (delay < RETRY_AFTER) t.fail(`a shed agent planned to return after ${delay} ms, before the retry-after (${RETRY_AFTER} ms)`);
      const at = sheds.get(s.agentId) ?? [];
      at.push(Date.now());
      sheds.set(s.agentId, at);
    });
    s.channel.on('welcome', () => welcomes.set(s.agentId, Date.now()));
  }
  for (const s of sims) s.start();
  await waitFor('all 24 agents welcomed', () => sims.every((s) => s.channel.state === 'ready'));
  const shedCount = [...sheds.values()].reduce((n, x) => n + x.length, 0);
  t.ok(shedCount > 0, `some streams were shed (${shedCount} sheds over ${sheds.size} agents)`);
  t.equal(sims.filter((s) => s.channel.state === 'closed').length, 0, 'no agent gave up: shedding is not fatal');
  // Honored: after a shed, the agent's next attempt (a shed or its welcome) comes >= retry-after later.
  let gaps = 0;
  for (const [id, at] of sheds) {
    const next = [...at.slice(1), welcomes.get(id)!];
    for (let i = 0; i < at.length; i++) {
      const gap = next[i]! - at[i]!;
      gaps++;
      if (gap < RETRY_AFTER - 20) t.fail(`agent ${id} came back ${gap} ms after a shed (retry-after ${RETRY_AFTER} ms)`);
    }
  }
  t.ok(gaps > 0, `every gap after a shed honored the retry-after (${gaps} gaps)`);
  t.equal(h.hub.components.agents.connectedLinks().length, 24, 'the hub holds all 24 streams');
  const reused = sims.reduce((n, s) => n + s.channel.stats.reused, 0);
  t.ok(reused > 0, `shed agents retried over the TLS connection they had (${reused} reuses): no second handshake per shed`);
});

t.test('shedding: the refusal a raw client sees carries the code and the retry-after', async (t) => {
  await using h = await startHub({ config: { agentChannel: { maxPendingHellos: 1, retryAfter: '3s' } } });
  const cfg = JSON.parse((await import('node:fs')).readFileSync(`${h.dataDir}/hub.json`, 'utf8')) as { names: string[]; trustDomain?: string };
  const [a, b] = issueSimIdentities({ hubDir: h.dataDir, names: cfg.names, trustDomain: cfg.trustDomain ?? 'trellis.local', n: 2 });
  // Stream 1 holds the only admission slot: it never sends its hello.
  const open = (id: typeof a) => {
    const tls = secureChannel(h.agentAddr, id!.caPem, id!.keyPem, id!.certPem);
    const client = new v1.AgentChannel(h.agentAddr, tls.creds, tls.options) as unknown as grpc.Client & { Connect(): grpc.ClientDuplexStream<unknown, unknown> };
    t.teardown(() => client.close());
    return client.Connect();
  };
  const first = open(a);
  first.on('error', () => undefined);
  first.on('data', () => undefined);
  await sleep(1_000); // its TLS handshake and stream are up (the hub holds it until helloTimeout, 10 s)
  const second = open(b);
  second.on('data', () => undefined);
  const err = await new Promise<grpc.ServiceError>((resolve) => second.on('error', resolve));
  t.equal(err.code, grpc.status.RESOURCE_EXHAUSTED, 'RESOURCE_EXHAUSTED');
  t.equal(err.metadata.get(RETRY_AFTER_KEY)[0], '3000', 'retry-after-ms trailer from the config');
  t.equal(err.metadata.get(CODE_KEY)[0], 'TRELLIS_E_RATE_LIMITED', 'the Trellis code');
  t.match(err.details, /admitting 1 other agents; retry after 3000 ms/);
  first.cancel();
  // Once the slot frees, the same agent gets in.
  const sim = new SimAgent({ target: h.agentAddr, identity: b!, maxBackoffMs: 1_000 });
  t.teardown(() => sim.close());
  sim.start();
  await waitFor('the shed agent welcomed once the slot is free', () => sim.channel.state === 'ready', 30_000);
  t.pass('admitted after the slot was released');
});

t.test('hello deadline: a stream that never says hello is refused after helloTimeout and frees its slot', async (t) => {
  await using h = await startHub({ config: { agentChannel: { maxPendingHellos: 1, helloTimeout: '1s', retryAfter: '100ms' } } });
  const cfg = JSON.parse((await import('node:fs')).readFileSync(`${h.dataDir}/hub.json`, 'utf8')) as { names: string[]; trustDomain?: string };
  const [a, b] = issueSimIdentities({ hubDir: h.dataDir, names: cfg.names, trustDomain: cfg.trustDomain ?? 'trellis.local', n: 2 });
  const tls = secureChannel(h.agentAddr, a!.caPem, a!.keyPem, a!.certPem);
  const client = new v1.AgentChannel(h.agentAddr, tls.creds, tls.options) as unknown as grpc.Client & { Connect(): grpc.ClientDuplexStream<unknown, unknown> };
  t.teardown(() => client.close());
  const mute = client.Connect();
  mute.on('data', () => undefined);
  const t0 = Date.now();
  const err = await new Promise<grpc.ServiceError>((resolve) => mute.on('error', resolve));
  t.equal(err.code, grpc.status.INVALID_ARGUMENT);
  t.match(err.details, /no hello within 1000 ms/, 'the configured deadline, named');
  t.ok(Date.now() - t0 >= 900, 'not before the deadline');
  const sim = new SimAgent({ target: h.agentAddr, identity: b!, maxBackoffMs: 1_000 });
  t.teardown(() => sim.close());
  sim.start();
  await waitFor('next agent admitted after the mute stream was refused', () => sim.channel.state === 'ready', 30_000);
  t.pass('the slot of the refused stream was released');
});

t.test('reconnect after a hub restart reuses the agent\'s client (no TLS context rebuilt per attempt) and gets back in', async (t) => {
  await using h = await startHub();
  const cfg = JSON.parse((await import('node:fs')).readFileSync(`${h.dataDir}/hub.json`, 'utf8')) as { names: string[]; trustDomain?: string };
  const [id] = issueSimIdentities({ hubDir: h.dataDir, names: cfg.names, trustDomain: cfg.trustDomain ?? 'trellis.local', n: 1 });
  const sim = new SimAgent({ target: h.agentAddr, identity: id!, maxBackoffMs: 2_000 });
  t.teardown(() => sim.close());
  sim.start();
  await waitFor('connected', () => sim.channel.state === 'ready', 30_000);
  await h.restart();
  await waitFor('connected again after the restart', () => sim.channel.state === 'ready' && sim.channel.stats.connects === 2, 60_000);
  t.ok(sim.channel.stats.reused >= 1, `the attempts after the lost stream reused the client (${sim.channel.stats.reused})`);
  t.equal(sim.channel.state, 'ready');
});

t.test('start-up: an agent port that listens before start-up is complete admits no agent until it is', async (t) => {
  // A second agent port over a started hub's components, whose start-up "is not complete" until
  // the test says so: streams connect and say hello, and nothing is decided (no welcome, no link,
  // no record of a new agent) before that.
  await using h = await startHub();
  const c = h.hub.components;
  const { MemoryCertificateProvider, mtlsServerCredentials } = await import('../hub/grpc/credentials.js');
  const { addAgentServices } = await import('../hub/grpc/agent-channel.js');
  const identity = new MemoryCertificateProvider({ certChain: c.pki.hubIdentity.certChainPem, key: c.pki.hubIdentity.keyPem });
  const ca = new MemoryCertificateProvider({ ca: c.pki.clientTrust.join('\n') });
  let complete!: () => void;
  const server = new grpc.Server();
  addAgentServices(server, c, undefined, { ready: new Promise<void>((r) => { complete = r; }) });
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', mtlsServerCredentials(identity, ca), (e, p) => (e ? reject(e) : resolve(p))));
  t.teardown(() => server.forceShutdown());
  const cfg = JSON.parse((await import('node:fs')).readFileSync(`${h.dataDir}/hub.json`, 'utf8')) as { names: string[]; trustDomain?: string };
  const ids = issueSimIdentities({ hubDir: h.dataDir, names: cfg.names, trustDomain: cfg.trustDomain ?? 'trellis.local', n: 3 });
  const sims = ids.map((identity) => new SimAgent({ target: `127.0.0.1:${port}`, identity, maxBackoffMs: 30_000 }));
  t.teardown(() => Promise.all(sims.map((s) => s.close())));
  let welcomed = 0;
  for (const s of sims) { s.channel.on('welcome', () => { welcomed++; }); s.start(); }
  // The hellos are sent once TLS is up; give them time to arrive (the assertion is on absence, so a slow machine only makes it weaker, never flaky).
  await sleep(3_000);
  t.equal(welcomed, 0, 'no agent welcomed while start-up is not complete');
  t.equal(c.agents.connectedLinks().length, 0, 'no agent attached to the registry');
  t.equal((await c.store.list('agents')).length, 0, 'no agent registered (its record is written on admission)');
  t.ok(sims.every((s) => s.channel.state === 'connecting'), 'every agent is still connecting (held, not refused)');
  complete();
  await waitFor('all 3 agents welcomed once start-up is complete', () => sims.every((s) => s.channel.state === 'ready'), 60_000);
  t.equal(c.agents.connectedLinks().length, 3, 'and attached');
  t.equal((await c.store.list('agents')).length, 3, 'and registered');
});
