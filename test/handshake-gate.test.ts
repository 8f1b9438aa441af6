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
  const connect = async () => {
    const c = net.connect(port, '127.0.0.1');
    c.on('error', () => undefined);
    clients.push(c);
    await once(c, 'connect');
    const closed = new Promise<void>((r) => c.once('close', () => r()));
    return { client: c, closed, peer: `127.0.0.1:${c.localPort}` };
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
