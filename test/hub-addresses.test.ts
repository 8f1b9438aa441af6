/**
 * Several hub addresses on the agent: parsing, the round-robin with backoff per round, agent.json
 * keeping the list, the enroll result carrying the hub's cluster.addresses, enrolling at the first
 * reachable hub, and a real agent failing over from a dead address to a live hub (real TLS, gRPC).
 */
import t from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import { HubAddresses, parseHubAddresses } from '../agent/hub-addresses.js';
import { agentPaths, checkAgentState, readState } from '../agent/identity.js';
import { validateConfig } from '../hub/config.js';
import { startHub, waitFor } from './helpers/hub.js';
import { freePort } from './helpers/net.js';

t.test('parseHubAddresses: lists, default port, de-duplication, bad input refused', async (t) => {
  t.same(parseHubAddresses('a:7443,b:7443', 7443), ['a:7443', 'b:7443']);
  t.same(parseHubAddresses(['a', ' b:9 ', 'a:7443'], 7443), ['a:7443', 'b:9']);
  t.same(parseHubAddresses('[::1]:7443,127.0.0.1', 7444), ['[::1]:7443', '127.0.0.1:7444']);
  for (const bad of ['', ',', 'a:0', 'a:70000', 'a:b:c']) {
    t.throws(() => parseHubAddresses(bad, 7443), { code: 'TRELLIS_E_INVALID_ARGUMENT', message: /--hub/ }, bad);
  }
  t.throws(() => parseHubAddresses(Array.from({ length: 17 }, (_, i) => `h${i}:1`), 7443), { code: 'TRELLIS_E_INVALID_ARGUMENT', message: /at most 16/ });
});

t.test('HubAddresses: sticks to a working address, a round of failures asks for the backoff', async (t) => {
  const a = new HubAddresses(['a:1', 'b:1', 'c:1']);
  t.equal(a.current, 'a:1');
  t.equal(a.failed(), false, 'a fails: try b at once');
  t.equal(a.current, 'b:1');
  a.succeeded();
  t.equal(a.current, 'b:1', 'b works: stays on b');
  t.equal(a.failed(), false);
  t.equal(a.failed(), false);
  t.equal(a.failed(), true, 'three failures since the last success: a whole round, back off');
  t.equal(a.current, 'b:1', 'the round ends where it started');
  a.replace(['c:1', 'b:1']);
  t.equal(a.current, 'b:1', 'a new list keeps the current address');
  const one = new HubAddresses(['x:1']);
  t.equal(one.failed(), true, 'one address: every failure is a round');
});

t.test('agent.json: hubs kept and checked', async (t) => {
  const base = { hub: 'a:7443', agentId: 'ag', tenant: 'default', trustDomain: 'trellis.local' };
  t.same(checkAgentState({ ...base, hubs: ['a:7443', 'b:7443'] }).state?.hubs, ['a:7443', 'b:7443']);
  t.equal(checkAgentState(base).state?.hubs, undefined, 'files from before clusters still load');
  for (const hubs of [[], 'a:1', [1], ['']]) t.match(checkAgentState({ ...base, hubs }).problems, [/^hubs: /], JSON.stringify(hubs));
});

t.test('hub.json cluster.addresses: HOST:PORT only', async (t) => {
  const ok = validateConfig({ names: ['hub-a'], cluster: { addresses: ['hub-a:7443', '[fd00::1]:7443'] } }, 'hub.json');
  t.same(ok.cluster.addresses, ['hub-a:7443', '[fd00::1]:7443']);
  t.same(validateConfig({ names: ['hub-a'] }, 'hub.json').cluster.addresses, [], 'default: none (agents use the hub they enrolled at)');
  for (const bad of ['hub-a', 'hub-a:0', 'hub-a:99999', 'a b:1']) {
    t.throws(() => validateConfig({ names: ['hub-a'], cluster: { addresses: [bad] } }, 'hub.json'), { code: 'TRELLIS_E_CONFIG', message: /cluster\.addresses/ }, bad);
  }
});

t.test('enroll at the first reachable hub; the result carries cluster.addresses; the agent fails over from a dead hub', async (t) => {
  const dead = await freePort(); // nothing listens here
  const other = await freePort();
  await using h = await startHub({ config: { cluster: { addresses: [`127.0.0.1:${dead}`, `127.0.0.1:${other}`] } } });
  const adminPort = h.adminAddr.slice(h.adminAddr.lastIndexOf(':') + 1);
  const { dataDir } = await h.enroll({ hub: `127.0.0.1:${dead},127.0.0.1:${adminPort}` });
  const state = readState(agentPaths(dataDir));
  t.same(state.hubs, [`127.0.0.1:${dead}`, `127.0.0.1:${other}`], 'agent.json keeps the hub\'s cluster addresses');
  t.equal(state.hub, `127.0.0.1:${dead}`);
  t.equal(state.enrollHub, `127.0.0.1:${adminPort}`, 'enrolled at the reachable hub');

  // The saved list, with the live hub's real agent port last: the dead address is tried first.
  const raw = JSON.parse(readFileSync(agentPaths(dataDir).state, 'utf8'));
  raw.hubs = [`127.0.0.1:${dead}`, h.agentAddr];
  writeFileSync(agentPaths(dataDir).state, JSON.stringify(raw));
  const t0 = Date.now();
  await using agent = await h.agent({ dataDir, maxBackoffMs: 60_000 });
  t.equal(agent.channel.state, 'ready');
  t.equal(agent.target, h.agentAddr, 'connected to the live hub');
  t.ok(Date.now() - t0 < 20_000, 'failed over without waiting for the backoff cap');
  const lines = h.agentLogLines().filter((l) => l.includes('trying the next hub address'));
  t.ok(lines.length >= 1, 'the fail-over is logged');
  // The Welcome carries the hub's cluster.addresses: they become the list, the address in use first.
  const fromHub = [h.agentAddr, `127.0.0.1:${dead}`, `127.0.0.1:${other}`];
  await waitFor(() => readState(agentPaths(dataDir)).hubs?.join(',') === fromHub.join(','), 10_000, 'agent.json updated from the welcome');
  t.same(agent.addresses.all, fromHub, 'the hub\'s list, the live address first');
  t.equal(readState(agentPaths(dataDir)).hub, h.agentAddr);

  // The live hub goes away and comes back on the same port: the agent returns to it (a round of
  // failures backs off, then tries again).
  await h.stop();
  await waitFor(() => agent.channel.state === 'connecting', 10_000, 'agent notices the lost hub');
  await h.restart();
  await waitFor(() => agent.channel.state === 'ready', 30_000, 'agent back on the hub');
  t.equal(agent.target, h.agentAddr);

  // `agent run --hub` given: the operator's list wins over the hub's.
  await agent.close();
  await using pinned = await h.agent({ dataDir, hub: h.agentAddr });
  await new Promise((r) => setTimeout(r, 500));
  t.same(pinned.addresses.all, [h.agentAddr], '--hub: the welcome does not replace the list');
});

t.test('enroll: a hub that answers and refuses ends it (the next one is not asked)', async (t) => {
  await using h = await startHub();
  const adminPort = h.adminAddr.slice(h.adminAddr.lastIndexOf(':') + 1);
  const dead = await freePort();
  const good = await h.token();
  const wrongSecret = good.replace(/^(tj1\.[0-9a-f]{16}\.)[A-Za-z0-9_-]{43}/, `$1${'A'.repeat(43)}`);
  const err = await h.enroll({ hub: `127.0.0.1:${adminPort},127.0.0.1:${dead}`, token: wrongSecret }).then(() => undefined, (e: Error & { code?: string }) => e);
  t.match(err?.code, /^TRELLIS_E_/, 'the hub\'s refusal, not a connection error of the next address');
  t.notMatch(err?.message ?? '', new RegExp(`:${dead}`), 'the next hub was not tried');
  const all = await freePort();
  const err2 = await h.enroll({ hub: `127.0.0.1:${dead},127.0.0.1:${all}` }).then(() => undefined, (e: Error) => e);
  t.match(err2?.message ?? '', new RegExp(`127\\.0\\.0\\.1:${all}`), 'every hub unreachable: the last one\'s error');
});
