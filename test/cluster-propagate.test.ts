/**
 * Several hubs on one PostgreSQL (issue 14 §2): what is changed through one hub reaches the
 * others within a second, in the parts they keep in memory (hub/cluster/propagate.ts). Two real
 * hubs (in this process, each with its own ports and data directory: B has A's keys and
 * settings) on one throwaway PostgreSQL, real agents connected to A, changes made through B:
 * revocation cuts the agent's live stream on A and A refuses it; a deactivated user's /stream
 * on A ends; a rule (and its pack) created on B fires on A; an edge rule and a secret set on B
 * reach the agent on A; maintenance mode turned on through B makes A refuse non-admin calls.
 */
import t, { type Test } from 'tap';

import { join } from 'node:path';
import { WebSocket } from 'ws';
import { startHub, tempDir, login, waitFor, callError, type TestHub } from './helpers/hub.js';
import { createRule, file, install, markAction, readLines, tenantMd } from './helpers/admin.js';
import { PgRuleGates } from '../hub/cluster/rule-gates.js';
import { ClusterEvents } from '../hub/cluster/events.js';
import { EventIntake, type HubEvent } from '../hub/events/index.js';
import type { PostgresStore } from '../hub/store/index.js';
import { call, adminClients } from '../cli/client.js';
import { Agent } from '../agent/agent.js';
import { needs } from './helpers/needs.js';
import { copyHubForJoin, postgresMissing, startPostgres, type Postgres } from './helpers/postgres.js';
import type { ChannelState } from '../agent/channel.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const PW = 'a-long-enough-password-1';
/** The bound: a change made on one hub is in force on the others within a second. */
const WITHIN_MS = 1_000;

/** Hub A on a fresh database, and hub B with A's keys, certificates and settings (its own data dir). */
export async function hubPair(t: Test, server: Postgres): Promise<{ a: TestHub; b: TestHub }> {
  const url = await server.createDatabase('prop');
  const a = await startHub({ init: { storeUrl: url } });
  t.teardown(() => a.close());
  const dir = await tempDir('trellis-hub-b-');
  t.teardown(() => dir[Symbol.asyncDispose]());
  const bData = join(dir.path, 'hub');
  // What `hub init --join` brings to a new hub: the data directory's key files and settings.
  copyHubForJoin(a.dataDir, bData);
  const b = await startHub({ dataDir: bData });
  t.teardown(() => b.close());
  return { a, b };
}

/** A unary call through another hub's admin client, in the `default` tenant. */
function onB<Req, Res>(b: TestHub, client: object, fn: (req: Req, md: import('@grpc/grpc-js').Metadata, cb: (e: import('@grpc/grpc-js').ServiceError | null, r?: Res) => void) => unknown, req: Req): Promise<Res> {
  return new Promise((resolve, reject) => fn.call(client, req, tenantMd(b), (e, r) => (e ? reject(e) : resolve(r!))));
}

function openStream(t: Test, h: TestHub, token: string, query = ''): Promise<{ ws: WebSocket; messages: Array<Record<string, unknown>>; closed: Promise<{ code: number; reason: string }> }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`wss://127.0.0.1:${h.hub.webPort}/stream${query}`, ['trellis.v1'], { ca: h.caPem, headers: { authorization: `Bearer ${token}` }, perMessageDeflate: false });
    const messages: Array<Record<string, unknown>> = [];
    const closed = new Promise<{ code: number; reason: string }>((r) => ws.on('close', (code, reason) => r({ code, reason: reason.toString() })));
    ws.on('message', (d) => messages.push(JSON.parse(d.toString()) as Record<string, unknown>));
    ws.on('open', () => resolve({ ws, messages, closed }));
    ws.on('unexpected-response', (_req, res) => reject(new Error(`stream refused: ${res.statusCode}`)));
    ws.on('error', reject);
    t.teardown(() => ws.terminate());
  });
}

const opsPack = (name = 'ops') => [file('pack.yaml', `name: ${name}\nversion: 1.0.0\ndescription: cluster test pack\n`), markAction('append a line')];

void t.test('changes made through one hub reach the other within a second', needs(t, postgresMissing()), async (t) => {
  const server = await startPostgres();
  t.teardown(() => server.close());
  const { a, b } = await hubPair(t, server);

  void t.test("revoked through B: the agent's live stream on A is cut within 1 s and A refuses it", async (t) => {
    const { dataDir, agentId } = await a.enroll();
    const agent = await a.agent({ dataDir });
    t.equal(agent.channel.state, 'ready', 'connected to A');
    let closedAt = 0;
    const closed = new Promise<void>((resolve) => agent.channel.on('state', (s: ChannelState) => { if (s === 'closed' && !closedAt) { closedAt = performance.now(); resolve(); } }));
    const res = await call<T.RevokeAgentRequest, T.RevokeAgentResponse__Output>(b.admin, b.admin.agents, b.admin.agents.RevokeAgent, { id: agentId, reason: 'cluster propagation test' });
    const returned = performance.now();
    t.equal(res.disconnected, false, 'B has no stream of it to cut');
    await Promise.race([closed, new Promise((r) => setTimeout(r, 10_000))]);
    if (!t.ok(closedAt > 0, 'A cut the stream')) return;
    const ms = Math.max(0, closedAt - returned); // cut before the answer arrived: 0
    t.ok(ms < WITHIN_MS, `cut on A ${ms.toFixed(1)} ms after the revoke through B returned`);
    t.comment(`revocation through B → stream on A cut: ${ms.toFixed(1)} ms`);
    const why = await agent.channel.closedPromise;
    t.equal((why as { code?: string } | undefined)?.code, 'TRELLIS_E_CERT_REVOKED', 'the agent is told it was revoked');
    await agent.close();
    const again = await Agent.start({ dataDir, log: a.log, maxBackoffMs: 500, hub: a.agentAddr });
    t.teardown(() => again.close());
    const refused = await again.channel.closedPromise;
    t.equal((refused as { code?: string } | undefined)?.code, 'TRELLIS_E_CERT_REVOKED', 'A refuses the agent revoked through B');
    const serial = (await a.hub.components.agents.get(agentId))!.certSerial;
    t.ok(a.hub.components.agents.isSerialRevoked(serial), "A's CRL view has the revocation");
  });

  void t.test("deactivated through B: the user's /stream on A ends", async (t) => {
    await call(a.admin, a.admin.users, a.admin.users.CreateUser, { username: 'fay', password: PW, roles: ['user'], tenants: ['default'] });
    const token = (await login(a, 'fay', PW)).token;
    const s = await openStream(t, a, token);
    await call(b.admin, b.admin.users, b.admin.users.SetUserActive, { username: 'fay', active: false });
    const returned = performance.now();
    const end = await Promise.race([s.closed, new Promise<undefined>((r) => setTimeout(() => r(undefined), 10_000))]);
    const ms = performance.now() - returned;
    t.equal(end?.code, 4001, 'closed as revoked credentials');
    t.ok(ms < WITHIN_MS, `ended on A ${ms.toFixed(1)} ms after the deactivation through B`);
    const refused = await openStream(t, a, token).then(() => 'opened', (e: Error) => e.message);
    t.match(refused, /401/, 'and A refuses the token');
  });

  void t.test('a pack and a rule created through B fire on A for an event of an agent on A', async (t) => {
    const agent = await a.agent();
    const out = join(a.dir, 'rule-b.out');
    await onB(b, b.admin.packs, b.admin.packs.InstallPack, { files: opsPack(), force: true });
    await onB(b, b.admin.rules, b.admin.rules.CreateRule, {
      definition: JSON.stringify({ name: 'from-b', trigger: 'core.job', action: { ref: 'ops.mark', parameters: { msg: 'job {{ trigger.payload.n }}', out } } }), replace: true, source: 'test',
    });
    await waitFor(() => a.hub.components.rules.list('default').some((r) => r.def.ref === 'from-b'), WITHIN_MS * 5, 'A knows the rule');
    agent.publishEvent('core.job', { n: 1 });
    await waitFor(() => readLines(out).length === 1, 15_000, 'the rule fired on A');
    t.same(readLines(out), ['job 1'], 'the action ran on the agent connected to A');
    // Disabled through B: A stops firing it.
    await onB(b, b.admin.rules, b.admin.rules.SetRuleEnabled, { name: 'from-b', enabled: false });
    await waitFor(() => a.hub.components.rules.get('default', 'from-b').def.enabled === false, WITHIN_MS * 5, 'A sees it disabled');
    agent.publishEvent('core.job', { n: 2 });
    await waitFor(() => a.hub.components.events.received > 0, 1000);
    await new Promise((r) => setTimeout(r, 500));
    t.same(readLines(out), ['job 1'], 'a rule disabled through B does not fire on A');
  });

  void t.test('an edge rule and a secret set through B reach the agent connected to A', async (t) => {
    const agent = await a.agent();
    await onB(b, b.admin.packs, b.admin.packs.InstallPack, { files: opsPack(), force: true });
    await onB(b, b.admin.kv, b.admin.kv.Set, { key: 'edge_token', value: 'first-secret-1', secret: true, ttlMs: 0, scope: 'tenant', private: false });
    await onB(b, b.admin.rules, b.admin.rules.CreateRule, {
      definition: JSON.stringify({ name: 'edge-b', trigger: 'core.file', target: 'local', action: { ref: 'ops.mark', parameters: { msg: '{{ secret.edge_token }}', out: join(a.dir, 'edge.out') } } }),
      replace: true, source: 'test',
    });
    const t0 = performance.now();
    await waitFor(() => agent.edge.ruleNames.includes('edge-b'), 10_000, 'the edge rule reached the agent on A');
    t.comment(`edge rule created through B → on the agent of A: ${(performance.now() - t0).toFixed(0)} ms`);
    const v1 = agent.edge.version;
    await onB(b, b.admin.kv, b.admin.kv.Set, { key: 'edge_token', value: 'second-secret-2', secret: true, ttlMs: 0, scope: 'tenant', private: false });
    await waitFor(() => agent.edge.version !== v1, 10_000, 'the new secret reached the agent on A');
    t.pass('a secret changed through B is pushed again by A');
    // An edge rule for role=web agents only: the agent gets it when B labels it.
    await onB(b, b.admin.rules, b.admin.rules.CreateRule, {
      definition: JSON.stringify({ name: 'edge-web', trigger: 'core.file', target: 'local', on: { selector: { role: 'web' } }, action: { ref: 'ops.mark', parameters: { msg: 'web', out: join(a.dir, 'edge.out') } } }),
      replace: true, source: 'test',
    });
    await new Promise((r) => setTimeout(r, 300));
    t.notOk(agent.edge.ruleNames.includes('edge-web'), 'not for an agent without the label');
    await call(b.admin, b.admin.agents, b.admin.agents.SetAgentLabels, { id: agent.agentId!, set: { role: 'web' }, remove: [] });
    await waitFor(() => agent.edge.ruleNames.includes('edge-web'), 10_000, 'labelled through B: A pushed the rule to the agent');
    t.pass('a label set through B changes the config A pushes');
  });

  void t.test("/stream on B sees the events of an agent on A, of the follower's tenant only; forwarded only while someone follows", async (t) => {
    const ce = a.hub.clusterEvents!;
    const agent = await a.agent(); // tenant default
    const otherAgent = await a.agent({ dataDir: (await a.enroll({ token: await a.token({ tenant: 'other' }) })).dataDir });
    // Nobody follows anywhere: A sends nothing over the bus.
    const before = ce.stats.messages;
    agent.publishEvent('core.quiet', { n: 0 });
    await waitFor(() => a.hub.components.events.received > 0, 5_000);
    await new Promise((r) => setTimeout(r, 300));
    t.equal(ce.stats.messages, before, 'no follower on another hub: no message sent');
    t.notOk(ce.remoteFollowers, 'A knows of no follower elsewhere');

    await call(b.admin, b.admin.users, b.admin.users.CreateUser, { username: 'dora', password: PW, roles: ['user'], tenants: ['default'] });
    await call(b.admin, b.admin.users, b.admin.users.CreateUser, { username: 'olive', password: PW, roles: ['user'], tenants: ['other'] });
    const dora = await openStream(t, b, (await login(b, 'dora', PW)).token);
    const olive = await openStream(t, b, (await login(b, 'olive', PW)).token);
    await waitFor(() => ce.forwards('default') && ce.forwards('other'), WITHIN_MS * 5, 'A knows B has followers of both tenants');
    t.notOk(ce.forwards('third'), 'and of no other tenant');
    const t0 = performance.now();
    agent.publishEvent('core.ping', { n: 1 });
    otherAgent.publishEvent('core.ping', { n: 2 });
    const evs = (s: typeof dora) => s.messages.filter((m) => m.kind === 'event' && m.type === 'core.ping');
    await waitFor(() => evs(dora).length === 1 && evs(olive).length === 1, 10_000, 'both followers got their tenant\'s event');
    t.comment(`event of an agent on A → follower on B: ${(performance.now() - t0).toFixed(0)} ms`);
    t.match(evs(dora)[0], { tenant: 'default', agent: agent.agentId, payload: { n: 1 } }, "dora (tenant default) sees the default agent's event");
    t.match(evs(olive)[0], { tenant: 'other', agent: otherAgent.agentId, payload: { n: 2 } }, "olive (tenant other) sees the other agent's event");
    await new Promise((r) => setTimeout(r, 300));
    t.equal(evs(dora).length, 1, "dora never sees the other tenant's event");
    t.equal(evs(olive).length, 1, "olive never sees the default tenant's event");

    // Only the tenants followed on B are forwarded at all.
    await waitFor(() => ce.stats.forwarded >= 2, 5_000, 'the two events counted as forwarded');
    const fwd = ce.stats.forwarded;
    a.hub.components.events.publish([{ id: 'third-1', type: 'core.third', payload: Buffer.from('{}'), timeMs: Date.now(), agentId: '', tenant: 'third' }]);
    await new Promise((r) => setTimeout(r, 300));
    t.equal(ce.stats.forwarded, fwd, 'an event of a tenant no follower on B watches is not sent over the bus');

    // Too big for one bus message: forwarded with a marker, not dropped silently.
    agent.publishEvent('core.big', { blob: 'x'.repeat(20_000) });
    await waitFor(() => dora.messages.some((m) => m.type === 'core.big'), 10_000, 'the big event');
    t.match(dora.messages.find((m) => m.type === 'core.big'), { payload: null, payloadTruncated: 20_011 }, 'its payload is cut, with its size');

    // Lost rights on B end the stream as for local events; the last follower gone, A stops forwarding.
    dora.ws.close();
    olive.ws.close();
    await waitFor(() => !ce.remoteFollowers, WITHIN_MS * 5, 'A hears B has no followers left');
  });

  void t.test('forwarding over the bus: a backlog over its bound reaches followers as a gap, malformed entries are ignored', async (t) => {
    const intake = new EventIntake();
    const got: HubEvent[] = [];
    const gaps: Array<[string, number, string]> = [];
    const recv = await ClusterEvents.start({
      bus: b.hub.bus!, events: new EventIntake(), log: b.log,
      followers: { followers: () => 1, deliverRemote: (e) => { got.push(...e); }, deliverGap: (tenant, n, why) => { gaps.push([tenant, n, why]); } },
    });
    const send = await ClusterEvents.start({
      bus: a.hub.bus!, events: intake, log: a.log, maxPending: 3,
      followers: { followers: () => 0, deliverRemote: () => undefined, deliverGap: () => undefined },
    });
    t.teardown(() => { recv.close(); send.close(); });
    await waitFor(() => send.remoteFollowers, 5_000, 'the sender hears of the follower');
    intake.publish(Array.from({ length: 10 }, (_, i) => ({ id: `gap-${i}`, type: 'core.gap', payload: Buffer.from(`{"i":${i}}`), timeMs: i, agentId: 'x', tenant: 'gaps' })));
    await waitFor(() => gaps.length > 0 && got.filter((e) => e.tenant === 'gaps').length === 3, 5_000, 'three events and a gap');
    t.same(got.filter((e) => e.tenant === 'gaps').map((e) => e.id), ['gap-0', 'gap-1', 'gap-2'], 'the first three, in order');
    t.same(gaps[0]!.slice(0, 2), ['gaps', 7], 'the seven others are reported to the tenant\'s followers, not dropped silently');
    t.match(gaps[0]![2], /not keeping up/);
    t.equal(send.stats.dropped, 7);
    const malformed = recv.stats.malformed;
    await a.hub.bus!.publish('events', { e: [[1, 2, 3], ['id', 'core.x', 'agent', 'tenant', 'not-a-time', '{}'], ['ok-1', 'core.x', 'a', 'gaps', 5, '{}']] });
    await waitFor(() => got.some((e) => e.id === 'ok-1'), 5_000, 'the valid entry');
    t.equal(recv.stats.malformed - malformed, 2, 'two malformed entries ignored, the valid one delivered');
    // A forged gap's reason reaches followers' terminals: one line, no escape sequences.
    const before = gaps.length;
    await a.hub.bus!.publish('events', { gap: { gaps: 1 }, reason: 'x\n2026-01-01T00:00:00.000Z  core.fake  agent  {}\u001b[2J' });
    await waitFor(() => gaps.length > before, 5_000, 'the forged gap');
    t.notMatch(gaps[gaps.length - 1]![2], /[\n\u001b]/, 'no newline or escape from a forged gap reason');
  });

  void t.test('cooldowns and rate limits hold across hubs: a rule matched on both hubs within its cooldown fires once', async (t) => {
    const onA = await a.agent();
    const onB = await b.agent();
    t.equal(b.hub.components.agents.link(onB.agentId!) !== undefined, true, 'one agent on each hub');
    await install(a, opsPack());
    const out = join(a.dir, 'cool.out');
    const limited = join(a.dir, 'limited.out');
    await createRule(a, { name: 'cool', trigger: 'core.cool', cooldown: '1h', action: { ref: 'ops.mark', parameters: { msg: 'cool {{ trigger.agent }}', out } } });
    await createRule(a, { name: 'limited', trigger: 'core.limited', rate_limit: { count: 3, per: '1h' }, action: { ref: 'ops.mark', parameters: { msg: 'limited {{ trigger.payload.n }}', out: limited } } });
    await waitFor(() => ['cool', 'limited'].every((n) => b.hub.components.rules.list('default').some((r) => r.def.ref === n)), WITHIN_MS * 5, 'B knows the rules');
    const stats = (name: string) => [a, b].map((h) => h.hub.components.rules.get('default', name).stats);
    const sum = (name: string, k: 'matched' | 'fired' | 'suppressed') => stats(name).reduce((n, s) => n + s[k], 0);
    const decided = (name: string, n: number) => sum(name, 'matched') === n && sum(name, 'fired') + sum(name, 'suppressed') === n;

    onA.publishEvent('core.cool', {});
    onB.publishEvent('core.cool', {});
    await waitFor(() => decided('cool', 2), 15_000, 'both hubs matched and decided');
    t.equal(sum('cool', 'fired'), 1, 'fired once across the two hubs');
    t.equal(sum('cool', 'suppressed'), 1, 'the other match is suppressed');
    await waitFor(() => readLines(out).length === 1, 15_000, 'the one action ran');
    await new Promise((r) => setTimeout(r, 300));
    t.equal(readLines(out).length, 1, 'and only one');

    for (let n = 0; n < 5; n++) { onA.publishEvent('core.limited', { n }); onB.publishEvent('core.limited', { n: 10 + n }); }
    await waitFor(() => decided('limited', 10), 15_000, '10 matches decided');
    t.equal(sum('limited', 'fired'), 3, 'a rate limit of 3 per hour allows 3 firings across both hubs');
    await waitFor(() => readLines(limited).length === 3, 15_000, 'three actions ran');
  });

  void t.test('the shared gate: concurrent claims from two hubs, cooldown reopening, local refusals without a round trip', async (t) => {
    const ga = new PgRuleGates(a.hub.components.store as PostgresStore, a.log);
    const gb = new PgRuleGates(b.hub.components.store as PostgresStore, b.log);
    t.teardown(() => { ga.close(); gb.close(); });
    const limits = { cooldownMs: 0, rateLimit: { count: 3, perMs: 3_600_000 } };
    const all = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? ga : gb).tryFire('t/burst@1', limits)));
    t.equal(all.filter(Boolean).length, 3, '20 concurrent claims from two hubs: exactly 3 fire');
    const claims = ga.claims + gb.claims;
    t.notOk(await ga.tryFire('t/burst@1', limits), 'closed');
    t.notOk(await gb.tryFire('t/burst@1', limits), 'closed');
    t.equal(ga.claims + gb.claims, claims, 'a gate known closed is refused without asking the database');

    const cool = { cooldownMs: 400 };
    t.ok(await ga.tryFire('t/cool@1', cool), 'first firing');
    t.notOk(await gb.tryFire('t/cool@1', cool), 'the other hub is held by the cooldown');
    await new Promise((r) => setTimeout(r, 500));
    t.ok(await gb.tryFire('t/cool@1', cool), 'open again after the cooldown, on either hub');
    t.notOk(await ga.tryFire('t/cool@1', cool), 'and closed again');
    t.ok(await ga.tryFire('t/cool@2', cool), 'a rule edited since (another gate) starts afresh');
  });

  void t.test('maintenance on through B: A refuses non-admin calls; off through B: A serves them', async (t) => {
    await call(a.admin, a.admin.users, a.admin.users.CreateUser, { username: 'gus', password: PW, roles: ['user'], tenants: ['default'] });
    const gus = adminClients(a.adminAddr, a.caPem, (await login(a, 'gus', PW)).token);
    t.teardown(() => gus.close());
    const list = () => call(gus, gus.agents, gus.agents.ListAgents, {});
    t.notOk(await callError(list()), 'served before');
    await call(b.admin, b.admin.maintenance, b.admin.maintenance.SetMaintenance, { on: true, message: 'db upgrade' });
    const returned = performance.now();
    await waitFor(() => a.hub.maintenance?.on === true, WITHIN_MS * 5, 'A in maintenance');
    const ms = performance.now() - returned;
    t.ok(ms < WITHIN_MS, `A in maintenance ${ms.toFixed(1)} ms after B`);
    const refused = await callError(list());
    t.equal(refused?.code, 'TRELLIS_E_MAINTENANCE', 'A refuses a non-admin call');
    t.match(refused?.message, /db upgrade/, "with the operator's message");
    await call(b.admin, b.admin.maintenance, b.admin.maintenance.SetMaintenance, { on: false, message: '' });
    await waitFor(() => a.hub.maintenance?.on === false, WITHIN_MS * 5, 'A out of maintenance');
    t.notOk(await callError(list()), 'served again');
  });
});
