/**
 * The console's lists at scale (issue 15: "pages stay fast with 5,000 agents and 100,000
 * executions"): the hub pages and filters, copies only the page it answers, and counts the
 * overview's executions per status itself. The records are written before the hub starts,
 * through the hub's own store and history code; every call goes through the console API bridge
 * (HTTPS, session cookie, CSRF header). bench/console.ts measures the same calls at full scale.
 */
import t from 'tap';
import { join } from 'node:path';
import { pino } from 'pino';
import { monotonicFactory } from 'ulid';
import { startHub, tempDir, login, ADMIN_PASSWORD } from './helpers/hub.js';
import { runCli } from './helpers/cli.js';
import { writeProfile } from '../cli/profile.js';
import { consoleLogin, consoleCall } from './helpers/console.js';
import { initHub } from '../hub/init.js';
import { hubPaths } from '../hub/paths.js';
import { openStore } from '../hub/store/index.js';
import { History } from '../hub/executions/history.js';
import type { AgentDoc } from '../hub/agents/index.js';
import type { ExecutionRecord } from '../hub/executions/types.js';

const PW = 'console-scale-password-1';
const N_AGENTS = 600;
const N_EXEC = 1200;
const ACTIONS = ['core.echo', 'ops.deploy', 'ops.restart'];
const STATUSES: Array<ExecutionRecord['status']> = ['succeeded', 'succeeded', 'failed', 'succeeded', 'timeout', 'canceled'];

interface Seeded { agents: AgentDoc[]; execs: ExecutionRecord[]; dataDir: string }

/** A hub data dir with N_AGENTS agent records (1 in 6 in tenant red; 1 in 10 revoked, some long ago) and N_EXEC executions over 3 hours. */
async function seed(root: string): Promise<Seeded> {
  const dataDir = join(root, 'hub');
  await initHub({ dataDir, names: ['localhost', '127.0.0.1'], adminPassword: ADMIN_PASSWORD, config: { agentPort: 0, adminPort: 0, webPort: 0, bind: '127.0.0.1' } });
  const paths = hubPaths(dataDir);
  const store = await openStore({ kind: 'lowdb', path: paths.store });
  const now = Date.now();
  const newId = monotonicFactory();
  const agents: AgentDoc[] = [];
  for (let i = 0; i < N_AGENTS; i++) {
    const id = newId(now - (N_AGENTS - i) * 1000).toLowerCase();
    const revoked = i % 10 === 9;
    agents.push({
      id, tenant: i % 6 === 5 ? 'red' : 'default', hostname: `host-${i}`, labels: { role: i % 3 === 0 ? 'web' : 'db', idx: String(i) },
      facts: { hostname: `host-${i}`, os: 'linux', arch: i % 7 === 0 ? 'arm64' : 'x64', cpus: 4 * (1 + (i % 4)) }, enrolledAt: now - 86_400_000, tokenId: 't', spiffeId: `spiffe://trellis.local/agent/${id}`,
      certSerial: (0x100 + i).toString(16).padStart(32, '0'), certExpiresAt: now + 86_400_000, serials: [], revoked,
      // Half the revoked ones long ago: the default list leaves them out (REVOKED_LISTED_MS).
      ...(revoked ? { revokedAt: i % 20 === 19 ? now - 30 * 86_400_000 : now - 60_000 } : {}),
    });
  }
  // Stored out of id order: the hub's pages are in id order whatever the store's order.
  await Promise.all([...agents].reverse().map((a) => store.insert('agents', a)));
  await store.close();
  const { history } = await History.open({ dir: paths.executions, log: pino({ level: 'silent' }), maxSegmentBytes: 16 * 1024 * 1024, maxAgeMs: 30 * 86_400_000, maxCount: 100_000, flushIntervalMs: 50, onDrop: () => undefined });
  const execs: ExecutionRecord[] = [];
  for (let i = 0; i < N_EXEC; i++) {
    const t0 = now - 3 * 3_600_000 + Math.floor((i * 3 * 3_600_000) / N_EXEC);
    const rec: ExecutionRecord = {
      id: newId(t0).toLowerCase(), tenant: i % 4 === 3 ? 'red' : 'default', action: ACTIONS[i % ACTIONS.length]!, agentId: agents[i % 50]!.id, status: STATUSES[i % STATUSES.length]!,
      exitCode: 0, error: '', requestedBy: 'admin', rule: '', triggerEventId: '', parameters: {}, requestedMs: t0, startedMs: t0 + 1, finishedMs: t0 + 5, edge: false, outputBytes: 0, outputTruncated: false,
    };
    execs.push(rec);
    history.appendState(rec, {});
  }
  await history.close();
  return { agents, execs, dataDir };
}

const byId = (a: { id: string }, b: { id: string }) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

t.test('console lists and counts over seeded agents and executions', async (t) => {
  await using dir = await tempDir();
  const d = await seed(dir.path);
  await using h = await startHub({ dataDir: d.dataDir });
  const c = h.hub.components;
  await c.iam.createTenant('red', '');
  await c.auth.createUser({ username: 'watcher', password: PW, roles: ['observer'], tenants: ['red'] });
  await c.auth.createUser({ username: 'nobody', password: PW, roles: [], tenants: ['red'] });
  const admin = await consoleLogin(h, 'admin', ADMIN_PASSWORD);
  const api = async (method: string, body: unknown, s = admin, tenant = 'default') => {
    const r = await consoleCall(h, s, method, body, { 'x-trellis-tenant': tenant });
    if (r.status !== 200) t.fail(`${method} ${JSON.stringify(body)}: HTTP ${r.status} ${r.body.slice(0, 300)}`);
    return r.json();
  };
  const now = Date.now();
  const listedByDefault = (a: AgentDoc) => !a.revoked || now - (a.revokedAt ?? 0) < 7 * 86_400_000;

  await t.test('ListAgents pages in id order over a selector and a status, with the total of all matches', async (t) => {
    const want = d.agents.filter((a) => a.tenant === 'default' && a.labels.role === 'web' && !a.revoked).sort(byId).map((a) => a.id);
    const seen: string[] = [];
    let after = '';
    for (let pages = 0; pages < 20; pages++) {
      const r = await api('AdminAgents/ListAgents', { selectorExpr: 'role=web', status: 'offline', limit: 50, afterId: after });
      t.equal(r.total, want.length, 'total: every match, not the page');
      const page = (r.agents as Array<{ id: string; status: string; labels: Record<string, string> }>);
      t.ok(page.length <= 50);
      for (const a of page) { t.equal(a.status, 'offline'); t.equal(a.labels.role, 'web'); }
      seen.push(...page.map((a) => a.id));
      if (page.length < 50) break;
      after = page[page.length - 1]!.id;
    }
    t.same(seen, want, 'the pages, end to end, are every match once, in id order');
    // The default list leaves out agents revoked long ago; status=revoked shows them all.
    t.equal((await api('AdminAgents/ListAgents', { limit: 1 })).total, d.agents.filter((a) => a.tenant === 'default' && listedByDefault(a)).length);
    const revoked = await api('AdminAgents/ListAgents', { status: 'revoked', limit: 1000 });
    t.same((revoked.agents as Array<{ id: string }>).map((a) => a.id), d.agents.filter((a) => a.tenant === 'default' && a.revoked).sort(byId).map((a) => a.id));
    // No limit: every listed agent (the CLI's `agents list`).
    t.equal(((await api('AdminAgents/ListAgents', {})).agents as unknown[]).length, d.agents.filter((a) => a.tenant === 'default' && listedByDefault(a)).length);
    // Another tenant's agents are neither listed nor counted.
    const red = await api('AdminAgents/ListAgents', { limit: 50 }, await consoleLogin(h, 'watcher', PW), 'red');
    t.equal(red.total, d.agents.filter((a) => a.tenant === 'red' && listedByDefault(a)).length);
    t.ok((red.agents as Array<{ tenant: string }>).every((a) => a.tenant === 'red'));
    // A bad status is refused with its code.
    const bad = await consoleCall(h, admin, 'AdminAgents/ListAgents', { status: 'sleeping', limit: 50 });
    t.equal(bad.status, 400);
    t.equal(bad.json().code, 'TRELLIS_E_INVALID_ARGUMENT');
  });

  await t.test('ListAgents filters by facts on the hub (facts_expr); an unknown fact or a bad expression is refused', async (t) => {
    const arm = await api('AdminAgents/ListAgents', { factsExpr: 'arch=arm64,os=linux', limit: 50 });
    t.equal(arm.total, d.agents.filter((a) => a.tenant === 'default' && listedByDefault(a) && a.facts?.arch === 'arm64').length);
    t.ok(Number(arm.total) > 0);
    t.ok((arm.agents as Array<{ facts: { arch: string } }>).every((a) => a.facts.arch === 'arm64'));
    const big = await api('AdminAgents/ListAgents', { factsExpr: 'cpus in (8,16)', selectorExpr: 'role=web', limit: 1000 });
    t.same((big.agents as Array<{ id: string }>).map((a) => a.id), d.agents.filter((a) => a.tenant === 'default' && listedByDefault(a) && a.labels.role === 'web' && [8, 16].includes(Number(a.facts?.cpus))).sort(byId).map((a) => a.id));
    const unknown = await consoleCall(h, admin, 'AdminAgents/ListAgents', { factsExpr: 'secretKey=x', limit: 50 });
    t.equal(unknown.status, 400);
    t.match(unknown.json().error, /no fact "secretKey": facts are hostname, os, arch/);
    const bad = await consoleCall(h, admin, 'AdminAgents/ListAgents', { factsExpr: 'os=(', limit: 50 });
    t.equal(bad.status, 400);
    t.equal(bad.json().code, 'TRELLIS_E_INVALID_ARGUMENT');
  });

  await t.test('a page of ListAgents copies the page\'s records, not every agent record', async (t) => {
    const real = globalThis.structuredClone;
    let clones = 0;
    globalThis.structuredClone = ((v: unknown, o?: Parameters<typeof structuredClone>[1]) => { clones++; return real(v, o); }) as typeof structuredClone;
    try {
      const r = await api('AdminAgents/ListAgents', { limit: 50 });
      t.equal((r.agents as unknown[]).length, 50);
    } finally {
      globalThis.structuredClone = real;
    }
    t.ok(clones < 100, `${clones} records copied for a page of 50 out of ${N_AGENTS} (copying them all costs ~40 ms per page at 5,000 agents)`);
  });

  await t.test('ListExecutions pages newest first with filters; an older page starts before the last id', async (t) => {
    const want = d.execs.filter((e) => e.tenant === 'default' && e.status === 'failed' && e.action === 'ops.restart').sort(byId).reverse().map((e) => e.id);
    t.ok(want.length > 50, 'more than one page');
    const seen: string[] = [];
    let before = '';
    for (let pages = 0; pages < 20; pages++) {
      const page = (await api('AdminExecutions/ListExecutions', { status: 'failed', action: 'ops.restart', limit: 50, beforeId: before })).executions as Array<{ id: string }>;
      seen.push(...page.map((e) => e.id));
      if (page.length < 50) break;
      before = page[page.length - 1]!.id;
    }
    t.same(seen, want);
    const agentId = d.agents[7]!.id;
    const mine = (await api('AdminExecutions/ListExecutions', { agentId, limit: 1000 })).executions as Array<{ agentId: string }>;
    t.equal(mine.length, d.execs.filter((e) => e.tenant === 'default' && e.agentId === agentId).length);
    t.ok(mine.every((e) => e.agentId === agentId));
  });

  await t.test('CountExecutions: the overview\'s executions per status, counted on the hub, in the caller\'s tenant', async (t) => {
    const since = now - 3_600_000;
    const count = (tenant: string, f: (e: ExecutionRecord) => boolean) => {
      const by: Record<string, number> = {};
      for (const e of d.execs) if (e.tenant === tenant && f(e)) by[e.status] = (by[e.status] ?? 0) + 1;
      return by;
    };
    const lastHour = count('default', (e) => e.requestedMs >= since);
    const r = await api('AdminExecutions/CountExecutions', { sinceMs: since });
    t.same(r.byStatus, lastHour);
    t.equal(r.total, Object.values(lastHour).reduce((a, b) => a + b, 0));
    t.ok(Number(r.total) > 0 && Number(r.total) < d.execs.length / 2, 'only the last hour');
    t.same((await api('AdminExecutions/CountExecutions', { action: 'ops.deploy' })).byStatus, count('default', (e) => e.action === 'ops.deploy'));
    t.same((await api('AdminExecutions/CountExecutions', { agentId: 'host-3' })).byStatus, count('default', (e) => e.agentId === d.agents[3]!.id), 'an agent by hostname, as ListExecutions takes it');
    // An observer of tenant red counts red's executions only.
    const watcher = await consoleLogin(h, 'watcher', PW);
    t.same((await api('AdminExecutions/CountExecutions', {}, watcher, 'red')).byStatus, count('red', () => true));
    const other = await consoleCall(h, watcher, 'AdminExecutions/CountExecutions', {}, { 'x-trellis-tenant': 'default' });
    t.equal(other.status, 403, 'another tenant is refused');
    // Without executions:read: refused, as ListExecutions is.
    const nobody = await consoleLogin(h, 'nobody', PW);
    const denied = await consoleCall(h, nobody, 'AdminExecutions/CountExecutions', {}, { 'x-trellis-tenant': 'red' });
    t.equal(denied.status, 403);
    t.equal(denied.json().code, 'TRELLIS_E_PERMISSION_DENIED');
    const bad = await consoleCall(h, admin, 'AdminExecutions/CountExecutions', { sinceMs: -5 });
    t.equal(bad.status, 400);
  });

  await t.test('`trellis executions count --since 1h` prints the same counts; `agents list --facts` filters by facts', async (t) => {
    await using home = await tempDir();
    const r = await login(h, 'admin', ADMIN_PASSWORD);
    const env = { TRELLIS_HOME: home.path, TRELLIS_API_KEY: '', TRELLIS_TENANT: '' };
    await writeProfile({ hub: h.adminAddr, caPem: h.caPem, username: 'admin', token: r.token, expiresAtMs: r.expiresAtMs, tenant: 'default' }, { ...process.env, ...env });
    const since = Date.now() - 3_600_000;
    const json = await runCli(['executions', 'count', '--since', '1h', '--json'], env);
    t.equal(json.code, 0, json.err);
    const got = JSON.parse(json.out) as { byStatus: Record<string, number>; total: number };
    const inHour = d.execs.filter((e) => e.tenant === 'default' && e.requestedMs >= since);
    // The CLI's hour starts a moment after `since`: at most a record or two fewer.
    t.ok(got.total <= inHour.length && got.total >= inHour.length - 2, `${got.total} of ${inHour.length}`);
    const table = await runCli(['executions', 'count', '--action', 'ops.deploy'], env);
    t.equal(table.code, 0, table.err);
    t.match(table.out, /STATUS\s+COUNT/);
    t.match(table.out, new RegExp(`total: ${d.execs.filter((e) => e.tenant === 'default' && e.action === 'ops.deploy').length}`));
    const arm = await runCli(['agents', 'list', '--facts', 'arch=arm64', '--selector', 'role=web', '--json'], env);
    t.equal(arm.code, 0, arm.err);
    t.same((JSON.parse(arm.out) as Array<{ id: string }>).map((a) => a.id).sort(), d.agents.filter((a) => a.tenant === 'default' && (!a.revoked || Date.now() - (a.revokedAt ?? 0) < 7 * 86_400_000) && a.labels.role === 'web' && a.facts?.arch === 'arm64').map((a) => a.id).sort(), '`agents list --facts` filters on the hub');
    const badSince = await runCli(['executions', 'count', '--since', 'soon'], env);
    t.not(badSince.code, 0);
    t.match(badSince.err, /--since/);
  });
});
