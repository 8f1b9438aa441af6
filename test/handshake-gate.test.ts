/**
 * The agent port's handshake bound (issue 13 §2): the hub accepts TCP itself and hands at most
 * `maxHandshakes` connections at a time to TLS + gRPC; the rest wait in arrival order, and a
 * connection that waits too long (or finds the queue full) is closed. Unit tests on real
 * loopback sockets, then a real hub with a tiny bound and 30 simulated agents.
 */
import t from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { HandshakeGate } from '../hub/grpc/handshake-gate.js';
import { issueSimIdentities, SimAgent } from '../bench/simagent.js';
import { startHub, waitFor as waitUntil } from './helpers/hub.js';
import * as grpc from '@grpc/grpc-js';
import { v1 } from '../common/proto.js';
import { secureChannel } from '../common/grpc-tls.js';
import { validateConfig } from '../hub/config.js';
import { sourceKey } from '../hub/auth/source.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const waitFor = (what: string, cond: () => boolean, ms = 60_000) => waitUntil(cond, ms, what);

/** A loopback listener feeding `gate`; `connect()` opens a client connection and returns both ends. */
async function loopback(t: { teardown(fn: () => unknown): void }, gate: HandshakeGate) {
  const injected: net.Socket[] = [];
  // As TLS would: an injected connection is read from (so its close is seen).
  gate.attach((s) => { injected.push(s); s.resume(); });
  const server = net.createServer({ pauseOnConnect: true }, (s) => gate.accept(s));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  const clients: net.Socket[] = [];
  t.teardown(() => { gate.close(); for (const c of clients) c.destroy(); for (const s of injected) s.destroy(); server.close(); });
  const connect = async (localAddress?: string) => {
    const c = net.connect({ port, host: '127.0.0.1', ...(localAddress ? { localAddress } : {}) });
    c.on('error', () => undefined);
    clients.push(c);
    await once(c, 'connect');
    const closed = new Promise<void>((r) => c.once('close', () => r()));
    return { client: c, closed, peer: `127.0.0.1:${c.localPort}`, gone: () => c.destroyed || c.closed };
  };
  return { injected, connect, waitAccepted: (n: number) => waitFor(`${n} accepted`, () => gate.stats.accepted >= n, 10_000) };
}

t.test('gate: at most maxHandshakes injected; the rest wait in arrival order; settle() lets the next in', async (t) => {
  const gate = new HandshakeGate({ maxHandshakes: 2, maxQueued: 10, queueTimeoutMs: 30_000, slotTimeoutMs: 30_000 });
  const l = await loopback(t, gate);
  const conns = [];
  for (let i = 0; i < 5; i++) conns.push(await l.connect());
  await l.waitAccepted(5);
  t.equal(l.injected.length, 2, 'two handed to TLS');
  t.equal(gate.inFlight, 2);
  t.equal(gate.queued, 3, 'three wait');
  t.equal(gate.stats.waited, 3, 'the bound was hit three times');
  gate.settle(conns[1]!.peer);
  t.equal(l.injected.length, 3, 'a settled connection frees its slot');
  t.equal(l.injected[2]!.remotePort, conns[2]!.client.localPort, 'the longest waiting goes first (FIFO)');
  gate.settle(conns[1]!.peer);
  t.equal(l.injected.length, 3, 'a second settle of the same connection frees nothing');
  gate.settle('127.0.0.1:1');
  t.equal(l.injected.length, 3, 'an unknown peer frees nothing');
  conns[0]!.client.destroy();
  await waitFor('the closed connection frees its slot', () => l.injected.length === 4, 10_000);
  t.equal(l.injected[3]!.remotePort, conns[3]!.client.localPort, 'then the next in order');
  t.equal(gate.stats.peakInFlight, 2, 'never more than the bound at once');
});

t.test('gate: a full queue closes a new connection at once; a connection gone while waiting frees its turn at once', async (t) => {
  const gate = new HandshakeGate({ maxHandshakes: 1, maxQueued: 2, queueTimeoutMs: 30_000, slotTimeoutMs: 30_000 });
  const l = await loopback(t, gate);
  const a = await l.connect();
  const b = await l.connect();
  const c = await l.connect();
  await l.waitAccepted(3);
  const d = await l.connect();
  await d.closed;
  t.equal(gate.stats.droppedFull, 1, 'the fourth found the queue (2) full and was closed');
  // A waiting connection is not read from (pauseOnConnect), so its going is seen once it is
  // handed on: it then ends at once and the next one follows.
  b.client.destroy();
  await b.closed;
  gate.settle(a.peer);
  await waitFor('the next waiting connection handed on', () => l.injected.length === 3, 10_000);
  t.equal(l.injected[2]!.remotePort, c.client.localPort, 'the one after the gone one');
  t.equal(gate.inFlight, 1);
});

t.test('gate: a connection waiting past queueTimeoutMs is closed (its agent backs off) instead of handshaking late', async (t) => {
  const gate = new HandshakeGate({ maxHandshakes: 1, maxQueued: 10, queueTimeoutMs: 300, slotTimeoutMs: 30_000 });
  const l = await loopback(t, gate);
  await l.connect();
  const late = await l.connect();
  const t0 = Date.now();
  await late.closed;
  const waited = Date.now() - t0;
  t.ok(waited >= 250 && waited < 5_000, `closed after its queue timeout (${waited} ms)`);
  t.equal(gate.stats.droppedTimeout, 1);
  t.equal(l.injected.length, 1, 'never handed to TLS');
});

t.test('gate: a slot is freed after slotTimeoutMs; the slow connection is not closed (closing would make its agent start over)', async (t) => {
  const gate = new HandshakeGate({ maxHandshakes: 1, maxQueued: 10, queueTimeoutMs: 30_000, slotTimeoutMs: 300 });
  const l = await loopback(t, gate);
  const silent = await l.connect();
  const next = await l.connect();
  await waitFor('the next connection gets the slot', () => l.injected.length === 2, 10_000);
  t.equal(gate.stats.slotTimeouts, 1, 'the silent connection timed out of its slot');
  t.equal(l.injected[1]!.remotePort, next.client.localPort);
  t.notOk(silent.client.destroyed, 'the slow one stays connected');
  t.notOk(l.injected[0]!.destroyed);
});

t.test('gate: a connection done with TLS that opens no stream within streamGraceMs gives its slot back; one with a stream keeps it', async (t) => {
  const gate = new HandshakeGate({ maxHandshakes: 2, maxQueued: 10, queueTimeoutMs: 30_000, slotTimeoutMs: 30_000, streamGraceMs: 200 });
  const l = await loopback(t, gate);
  const idle = await l.connect();
  const busy = await l.connect();
  const next = await l.connect();
  await l.waitAccepted(3);
  gate.started(busy.peer);
  const secured = (c: { client: net.Socket }) => gate.secured(l.injected.find((s) => s.remotePort === c.client.localPort) as never);
  secured(idle);
  secured(busy);
  t.equal(l.injected.length, 2);
  await waitFor('the idle connection gives its slot back', () => l.injected.length === 3, 10_000);
  t.equal(l.injected[2]!.remotePort, next.client.localPort);
  await sleep(400);
  t.equal(gate.inFlight, 2, 'the one with a stream still holds its slot (until its answer)');
  t.notOk(idle.client.destroyed, 'the idle connection stays open (it is a client connecting ahead of its call)');
});

t.test('hub: with maxHandshakes 2, 30 agents connecting at once all get in, the bound held, no hello timed out', async (t) => {
  await using h = await startHub({ config: { agentChannel: { maxHandshakes: 2 } } });
  const cfg = JSON.parse((await import('node:fs')).readFileSync(`${h.dataDir}/hub.json`, 'utf8')) as { names: string[]; trustDomain?: string };
  const ids = issueSimIdentities({ hubDir: h.dataDir, names: cfg.names, trustDomain: cfg.trustDomain ?? 'trellis.local', n: 30 });
  const sims = ids.map((identity) => new SimAgent({ target: h.agentAddr, identity, maxBackoffMs: 30_000 }));
  t.teardown(() => Promise.all(sims.map((s) => s.close())));
  // Two clients that connect (TLS done) and open no stream, as grpc-js does when it reconnects
  // ahead of a call: they must not hold the two slots until the slot timeout.
  const idle = ids.slice(0, 2).map((id) => {
    const tls = secureChannel(h.agentAddr, id.caPem, id.keyPem, id.certPem);
    return new v1.AgentChannel(h.agentAddr, tls.creds, tls.options) as unknown as grpc.Client;
  });
  t.teardown(() => { for (const c of idle) c.close(); });
  await Promise.all(idle.map((c) => new Promise<void>((resolve, reject) => c.waitForReady(Date.now() + 60_000, (e) => (e ? reject(e) : resolve())))));
  for (const s of sims) s.start();
  await waitFor('all 30 agents welcomed', () => sims.every((s) => s.channel.state === 'ready'), 180_000);
  const hs = h.hub.handshakes!;
  t.ok(hs.stats.waited > 0, `connections waited for a handshake slot (${hs.stats.waited} times): the bound was hit`);
  t.ok(hs.stats.peakInFlight <= 2, `at most 2 connections between accept and their answer (peak ${hs.stats.peakInFlight})`);
  // Seen from the stream side, independently of the gate's own counters: never more than 2 hellos
  // pending at once (without the bound, 30 simultaneous connections put many more there).
  t.ok(h.hub.admission!.stats.peakPending <= 2, `at most 2 hellos pending at once (peak ${h.hub.admission!.stats.peakPending})`);
  t.equal(hs.stats.droppedFull + hs.stats.droppedTimeout, 0, 'none closed unserved');
  t.equal(hs.stats.slotTimeouts, 0, 'no slot timed out: every connection was answered');
  t.equal(sims.reduce((n, s) => n + s.channel.stats.shed, 0), 0, 'no stream shed by the admission gate behind it');
  t.same(sims.filter((s) => s.channel.stats.connects !== 1).map((s) => s.channel.stats.connects), [], 'each agent got in on its first attempt: no hello timed out, nothing refused');
  t.equal(h.hub.components.agents.connectedLinks().length, 30, 'the hub holds all 30 streams');
  t.equal(hs.inFlight, 0, 'every slot given back');
});

// ------------------------------------------------------------------ per source address

t.test('gate: one source may have at most maxPerSource connections queued or handshaking; more from it are closed at once, others still get in', async (t) => {
  const lines: Array<{ o: Record<string, unknown>; msg: string }> = [];
  const gate = new HandshakeGate({ maxHandshakes: 2, maxQueued: 100, queueTimeoutMs: 30_000, slotTimeoutMs: 30_000, maxPerSource: 3, log: { warn: (o, msg) => lines.push({ o: o as Record<string, unknown>, msg }) } });
  const l = await loopback(t, gate);
  const flood: Array<Awaited<ReturnType<typeof l.connect>>> = [];
  for (let i = 0; i < 10; i++) flood.push(await l.connect('127.0.0.2'));
  await l.waitAccepted(10);
  await waitFor('the 7 over the bound closed', () => flood.filter((c) => c.gone()).length === 7, 10_000);
  t.same(flood.map((c) => c.gone()), [false, false, false, true, true, true, true, true, true, true], 'the first 3 kept, every later one closed at once');
  t.equal(gate.stats.droppedPerSource, 7, 'counted');
  t.equal(gate.fromSource('127.0.0.2'), 3, '2 handshaking + 1 queued');
  t.equal(gate.inFlight, 2);
  t.equal(gate.queued, 1);
  // Another address is not held back by the flood's closures: it queues (the 2 slots are taken) and gets the next slot.
  const other = await l.connect('127.0.0.3');
  await l.waitAccepted(11);
  t.notOk(other.gone(), 'another address is not closed');
  t.equal(gate.fromSource('127.0.0.3'), 1);
  t.equal(lines.length, 1, 'one log line for the flooding address, not one per closure');
  t.equal(lines[0]!.o.source, '127.0.0.2');
  t.match(lines[0]!.msg, /maxHandshakesPerAddress/);
  // A connection that completes TLS no longer counts for its source: one more from it is let in.
  gate.secured(l.injected[0] as never);
  t.equal(gate.fromSource('127.0.0.2'), 2, 'TLS done: no longer counted');
  const more = await l.connect('127.0.0.2');
  await l.waitAccepted(12);
  await sleep(100);
  t.notOk(more.gone(), 'room again for that address');
  // A handshaking connection that closes gives its count back.
  flood[1]!.client.destroy();
  await waitFor('the closed one uncounted', () => gate.fromSource('127.0.0.2') === 2, 10_000);
});

t.test('gate: closures by the per-source bound are logged at most once per source per period, with the count since the last line', async (t) => {
  let now = 1_000_000;
  const lines: Array<Record<string, unknown>> = [];
  const gate = new HandshakeGate({ maxHandshakes: 1, maxQueued: 100, queueTimeoutMs: 30_000, slotTimeoutMs: 30_000, maxPerSource: 1, sourceLogEveryMs: 60_000, log: { warn: (o) => lines.push(o as Record<string, unknown>) } }, () => now);
  const l = await loopback(t, gate);
  await l.connect('127.0.0.2');
  for (let i = 0; i < 5; i++) await l.connect('127.0.0.2');
  await l.waitAccepted(6);
  await waitFor('5 closed', () => gate.stats.droppedPerSource === 5, 10_000);
  t.equal(lines.length, 1, 'one line for 5 closures');
  t.equal(lines[0]!.closed, 1);
  now += 61_000;
  (gate as unknown as { sweep(): void }).sweep();
  t.equal(lines.length, 2, 'the closures held back get their line once the period is over');
  t.equal(lines[1]!.closed, 4);
  now += 61_000;
  (gate as unknown as { sweep(): void }).sweep();
  t.equal(lines.length, 2, 'a quiet source: no line');
});

t.test('sourceKey: IPv4 by address, IPv4-mapped IPv6 as IPv4, IPv6 by its /64', async (t) => {
  t.equal(sourceKey('127.0.0.2'), '127.0.0.2');
  t.equal(sourceKey('::ffff:10.1.2.3'), '10.1.2.3');
  t.equal(sourceKey('2001:db8:1:2:aaaa::1'), sourceKey('2001:db8:1:2:bbbb:cccc:dddd:2'), 'one /64 is one source');
  t.not(sourceKey('2001:db8:1:2::1'), sourceKey('2001:db8:1:3::1'), 'another /64 is another source');
});

t.test('config: agentChannel.maxHandshakesPerAddress defaults to 64 and is validated', async (t) => {
  t.equal(validateConfig({ names: ['h'] }, 'x').agentChannel.maxHandshakesPerAddress, 64);
  t.equal(validateConfig({ names: ['h'], agentChannel: { maxHandshakesPerAddress: 5000 } }, 'x').agentChannel.maxHandshakesPerAddress, 5000, 'a NAT\'d fleet raises it');
  for (const v of [0, -1, 2.5, '64']) {
    t.throws(() => validateConfig({ names: ['h'], agentChannel: { maxHandshakesPerAddress: v } }, 'x'), { code: 'TRELLIS_E_CONFIG', message: /agentChannel\.maxHandshakesPerAddress/ }, `${JSON.stringify(v)} refused`);
  }
});

/** Stalled handshakes from `localAddress`: TCP connections that send the first bytes of a TLS record, then nothing. */
async function stallFrom(t: { teardown(fn: () => unknown): void }, agentAddr: string, localAddress: string, n: number): Promise<net.Socket[]> {
  const [host, port] = [agentAddr.slice(0, agentAddr.lastIndexOf(':')), Number(agentAddr.slice(agentAddr.lastIndexOf(':') + 1))];
  const out: net.Socket[] = [];
  t.teardown(() => { for (const s of out) s.destroy(); });
  for (let i = 0; i < n; i++) {
    const s = net.connect({ host, port, localAddress });
    s.on('error', () => undefined);
    out.push(s);
    await once(s, 'connect');
    s.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00])); // a TLS handshake record header announcing 512 bytes that never come
  }
  return out;
}

async function floodedHub(t: { teardown(fn: () => unknown): void }, perAddress: number) {
  const h = await startHub({ config: { agentChannel: { maxHandshakes: 4, maxHandshakesPerAddress: perAddress, helloTimeout: '60s', handshakeQueueTimeout: '120s' } } });
  t.teardown(() => h[Symbol.asyncDispose]());
  const cfg = JSON.parse((await import('node:fs')).readFileSync(`${h.dataDir}/hub.json`, 'utf8')) as { names: string[]; trustDomain?: string };
  const [identity] = issueSimIdentities({ hubDir: h.dataDir, names: cfg.names, trustDomain: cfg.trustDomain ?? 'trellis.local', n: 1 });
  const flood = await stallFrom(t, h.agentAddr, '127.0.0.2', 40);
  const hs = h.hub.handshakes!;
  await waitFor('the flood accepted', () => hs.stats.accepted >= 40, 30_000);
  const agent = new SimAgent({ target: h.agentAddr, identity: identity!, maxBackoffMs: 2_000 });
  t.teardown(() => agent.close());
  agent.start();
  return { h, hs, agent, flood };
}

t.test('hub: one address flooding the agent port with stalled TLS handshakes cannot keep an agent at another address from connecting', async (t) => {
  const { h, hs, agent } = await floodedHub(t, 2);
  await waitFor('the real agent (127.0.0.1) welcomed despite the flood (127.0.0.2)', () => agent.channel.state === 'ready', 30_000);
  t.equal(hs.stats.droppedPerSource, 38, 'all but 2 of the 40 stalled connections closed at once');
  t.equal(hs.fromSource('127.0.0.2'), 2, 'the flooding address holds 2');
  t.equal(h.hub.components.agents.connectedLinks().length, 1, 'the hub holds the agent\'s stream');
  const m = await h.hub.metrics!.scrape();
  t.match(m.body, /trellis_agent_connections_closed_total\{reason="per_address"\} 38/, 'the closures are a metric');
});

t.test('hub (control): without a per-address bound the same flood keeps the agent out (the test above would fail without the bound)', async (t) => {
  const { hs, agent, flood } = await floodedHub(t, 1_000_000);
  await sleep(6_000);
  t.not(agent.channel.state, 'ready', 'the agent waits behind 40 stalled handshakes (slots free only after helloTimeout, 60 s)');
  t.equal(hs.stats.droppedPerSource, 0);
  t.equal(hs.inFlight, 4, 'every slot held by the flood');
  // An agent stopped while its connection waits in the hub's queue does not wait for it (it took ~2 min).
  const t0 = Date.now();
  await agent.close();
  t.ok(Date.now() - t0 < 5_000, `the agent's close() returned in ${Date.now() - t0} ms with its connection queued at the hub`);
  t.equal(agent.channel.state, 'closed');
  // The flood goes: its slots come back.
  for (const s of flood) s.destroy();
});
