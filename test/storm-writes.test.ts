/**
 * Reconnect storms must not rewrite the state document per agent (issue 13 §2, DESIGN.md: nothing
 * on a per-connection path writes it). A real hub on its JSON store, real mTLS streams of
 * simulated agents: agents whose records are unchanged reconnect after a hub restart without a
 * single state write; the first connection of a new agent and changed facts still write.
 */
import t from 'tap';
import { statSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { issueSimIdentities, SimAgent } from '../bench/simagent.js';
import { LowdbStore } from '../hub/store/lowdb.js';
import { startHub, waitFor as waitUntil } from './helpers/hub.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const waitFor = (what: string, cond: () => boolean, ms = 60_000) => waitUntil(cond, ms, what);

t.test('a reconnect storm of agents with unchanged records writes no state; registration and the last-seen batch do', async (t) => {
  await using h = await startHub();
  const cfg = JSON.parse(readFileSync(join(h.dataDir, 'hub.json'), 'utf8')) as { names: string[]; trustDomain?: string };
  const ids = issueSimIdentities({ hubDir: h.dataDir, names: cfg.names, trustDomain: cfg.trustDomain ?? 'trellis.local', n: 20 });
  const storeOf = () => {
    const s = h.hub.components.store;
    if (!(s instanceof LowdbStore)) throw new Error('the test hub must run on the JSON store');
    return s;
  };
  const fleet = async (n = ids.length) => {
    const sims = ids.slice(0, n).map((identity) => new SimAgent({ target: h.agentAddr, identity, maxBackoffMs: 1_000 }));
    for (const s of sims) s.start();
    await waitFor(`${n} agents welcomed`, () => sims.every((s) => s.channel.state === 'ready'));
    return sims;
  };

  // First connections: the hub registers the agents and stores their facts (those are writes).
  let sims = await fleet();
  await storeOf().flush();
  t.ok(storeOf().writes > 0, 'registering new agents wrote the state');
  t.equal((await h.hub.components.agents.list()).length, ids.length, 'every agent has a record');
  await Promise.all(sims.map((s) => s.close()));

  // The storm: the hub was up for a long time and died (kill -9: no last-seen saved at shutdown),
  // so every stored last-seen is hours old; it restarts and the same agents come back.
  await h.stop();
  const state = JSON.parse(readFileSync(join(h.dataDir, 'state.json'), 'utf8')) as { collections: { agents: Record<string, { lastSeen?: number }> } };
  const hoursAgo = Date.now() - 6 * 3_600_000;
  for (const a of Object.values(state.collections.agents)) a.lastSeen = hoursAgo;
  writeFileSync(join(h.dataDir, 'state.json'), JSON.stringify(state), { mode: 0o600 });
  await h.restart();
  t.equal((await h.hub.components.agents.get(ids[0]!.agentId))?.lastSeen, hoursAgo, 'the hub read the old last-seen');
  await storeOf().flush();
  await sleep(300);
  const statePath = storeOf().path;
  const before = { writes: storeOf().writes, mtimeMs: statSync(statePath).mtimeMs, ino: statSync(statePath).ino };
  sims = await fleet();
  await waitFor('every stream attached', () => h.hub.components.agents.connectedLinks().length === ids.length);
  await sleep(300); // past the store's coalescing delay: a write caused by the hellos would have started
  await storeOf().flush();
  t.equal(storeOf().writes, before.writes, `${ids.length} agents reconnected with unchanged records: no state write`);
  const after = statSync(statePath);
  t.equal(after.ino, before.ino, 'state file not replaced');
  t.equal(after.mtimeMs, before.mtimeMs, 'state file not modified');

  // The stored last-seen catches up in one batch (the hub's timer, and shutdown), not per agent.
  const w0 = storeOf().writes;
  t.equal(await h.hub.components.agents.persistLastSeen(), ids.length, 'every connected agent with a stale stored last-seen is refreshed');
  t.equal(storeOf().writes, w0 + 1, 'in one state write');
  t.ok((await h.hub.components.agents.get(ids[0]!.agentId))!.lastSeen! > hoursAgo + 3_600_000, 'the stored last-seen is now recent');
  t.equal(await h.hub.components.agents.persistLastSeen(), 0, 'a second pass right after has nothing to write');
  t.equal(storeOf().writes, w0 + 1, 'and does not write');
  before.writes = storeOf().writes;

  // A reconnect without a restart (stream dropped, agent back): still no write.
  await Promise.all(sims.map((s) => s.close()));
  await waitFor('streams detached', () => h.hub.components.agents.connectedLinks().length === 0);
  sims = await fleet(5);
  await sleep(300);
  await storeOf().flush();
  t.equal(storeOf().writes, before.writes, 'agents reconnecting to a running hub: no state write');
  await Promise.all(sims.map((s) => s.close()));
});
