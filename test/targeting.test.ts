/**
 * Fleet-safe targeting: the selector language (common/selector.ts), `trellis run --selector`
 * through the real CLI against a real hub with three real agents (two online, one offline):
 * what matched, per-agent results and the summary, --json, exit codes, Ctrl-C; agents named by
 * id prefix or hostname; `agents list --status/--selector`; `agents prune`.
 */
import t, { type Test } from 'tap';
import { mkdtemp } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { matchesSelector, parseSelector, formatSelector } from '../common/selector.js';
import { ADMIN_PASSWORD, login, startHub, waitFor, callError } from './helpers/hub.js';
import { runCli, startCli } from './helpers/cli.js';
import { createRule, listExecutions } from './helpers/admin.js';
import { call } from '../cli/client.js';
import { writeProfile } from '../cli/profile.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';
import { openStore } from '../hub/store/index.js';
import { AgentRegistry, type AgentDoc } from '../hub/agents/index.js';

t.test('selector language: every operator, AND by comma, errors name the position', async (t) => {
  const web = { role: 'web', zone: 'eu1', gpu: '' };
  const db = { role: 'db', zone: 'us1' };
  const m = (s: string, l: Record<string, string>) => matchesSelector(l, parseSelector(s));
  t.ok(m('role=web', web)); t.notOk(m('role=web', db));
  t.ok(m('role==web', web));
  t.ok(m('role!=web', db)); t.notOk(m('role!=web', web)); t.ok(m('tier!=x', db), '!= holds when the label is missing');
  t.ok(m('zone in (eu1, eu2)', web)); t.notOk(m('zone in (eu1,eu2)', db)); t.notOk(m('tier in (a)', db));
  t.ok(m('zone notin (eu1,eu2)', db)); t.notOk(m('zone notin (eu1,eu2)', web)); t.ok(m('tier notin (a)', db), 'notin holds when missing');
  t.ok(m('gpu', web), 'exists (empty value)'); t.notOk(m('gpu', db));
  t.ok(m('!gpu', db)); t.notOk(m('!gpu', web));
  t.ok(m('role=web,zone in (eu1,eu2),gpu', web), 'comma is AND'); t.notOk(m('role=web,!gpu', web));
  t.ok(m('', db), 'the empty selector matches everything');
  // A selector comes from a caller or a rule file and is quoted back in errors, audit records and logs.
  for (const evil of ['a\x1b[31m=b', 'role=web\x1b]0;x\x07', 'role in (web,\u202eb)', 'role=\x1b']) {
    const e = (() => { try { parseSelector(evil); return undefined; } catch (err) { return err as Error & { code?: string }; } })();
    t.equal(e?.code, 'TRELLIS_E_INVALID_ARGUMENT', `${JSON.stringify(evil)} is refused`);
    t.notMatch(e?.message ?? '', /[^\x20-\x7e…]/, `${JSON.stringify(evil)}: the message carries no control or format character`);
  }
  t.equal(formatSelector(parseSelector(' role = web ,zone in( eu1 ,eu2 ), !gpu,x ')), 'role=web,zone in (eu1,eu2),!gpu,x');
  const bad: Array<[string, RegExp]> = [
    ['role in (a,b', /position 13: missing "\)"/],
    ['role=web,', /position 10: expected a requirement/],
    ['role=web zone=x', /position 10: expected ","/],
    ['role=(web)', /position 6: expected ","/],
    ['-bad=x', /position 1: bad label key/],
    ['zone in ()', /position 10: expected a value/],
    ['a=b,,c', /position 5/],
  ];
  for (const [s, re] of bad) {
    try { parseSelector(s); t.fail(`"${s}" parsed`); } catch (e) {
      t.equal((e as { code?: string }).code, 'TRELLIS_E_INVALID_ARGUMENT', `"${s}": INVALID_ARGUMENT`);
      t.match((e as Error).message, re, `"${s}": ${(e as Error).message}`);
    }
  }
});

/** A hub with three agents labelled role=web (two running, one enrolled and never started: offline) and one role=db. */
async function fleet(t: Test) {
  const h = await startHub();
  t.teardown(() => h.close());
  const tok = (labels: Record<string, string>, uses = 1) => h.token({ labels, uses });
  const e1 = await h.enroll({ token: await tok({ role: 'web', zone: 'eu1' }) });
  const e2 = await h.enroll({ token: await tok({ role: 'web', zone: 'eu2' }) });
  const agents = [await h.agent({ dataDir: e1.dataDir }), await h.agent({ dataDir: e2.dataDir })];
  const off = await h.enroll({ token: await tok({ role: 'web', zone: 'us1' }) });
  // Never started: its Hello never replaces the enrolled hostname.
  await h.hub.components.store.update<{ id: string; hostname: string }>('agents', off.agentId, (a) => (a ? { ...a, hostname: 'web-offline-1' } : a));
  const ids = [e1.agentId, e2.agentId];
  await waitFor(async () => (await h.hub.components.agents.list()).filter((a) => a.online).length === 2, 30_000, 'two agents online');
  const home = await mkdtemp(join(tmpdir(), 'trellis-target-home-'));
  const r = await login(h, 'admin', ADMIN_PASSWORD);
  const env = { TRELLIS_HOME: home, TRELLIS_API_KEY: '', TRELLIS_TENANT: '' };
  await writeProfile({ hub: h.adminAddr, caPem: h.caPem, username: 'admin', token: r.token, expiresAtMs: r.expiresAtMs, tenant: 'default' }, { ...process.env, ...env });
  const cli = (args: string[]) => runCli(args, env);
  return { h, ids, agents, offline: off.agentId, env, cli };
}

t.test('run --selector: matched/skipped before, per-agent lines and a summary after, exit codes, --json', async (t) => {
  const { h, ids, offline, cli } = await fleet(t);

  const ok = await cli(['run', '--selector', 'role=web', '--', 'sh', '-c', 'echo hi']);
  t.equal(ok.code, 0, ok.err);
  t.match(ok.err, /^matched 3 \(online 2, offline 1: skipped\) by role=web\n/, 'says what matched before anything runs');
  t.match(ok.err, new RegExp(`skipped \\(offline\\): web-offline-1 \\(${offline}\\)`));
  for (const id of ids) t.match(ok.err, new RegExp(`\\(${id}\\)\\s+succeeded\\s+exit 0`), `a line for ${id}`);
  t.match(ok.err, new RegExp(`web-offline-1 \\(${offline}\\)\\s+skipped\\s+offline`));
  t.match(ok.err, /summary: 3 matched: 2 succeeded, 0 failed, 0 timed out, 1 skipped \(offline\)\n$/);
  t.equal(ok.out.split('\n').filter((l) => /\] hi$/.test(l)).length, 2, 'output lines carry the agent name');

  // One of two succeeds (mkdir is atomic): a partial failure exits 3.
  const lock = join(h.dir, 'lock');
  const part = await cli(['run', '--selector', 'role=web', '--selector', '!nope', '--', 'mkdir', lock]);
  t.equal(part.code, 3, `partial failure: exit 3 (${part.err})`);
  t.match(part.err, /summary: 3 matched: 1 succeeded, 1 failed, 0 timed out, 1 skipped/);

  const none = await cli(['run', '--selector', 'role=web', '--', 'sh', '-c', 'exit 7']);
  t.equal(none.code, 1, 'none succeeded: exit 1');
  const single = await cli(['run', '--agent', ids[0]!, '--', 'sh', '-c', 'exit 7']);
  t.equal(single.code, 7, '--agent: the remote exit code');

  const timedOut = await cli(['run', '--selector', 'zone=eu1', '--timeout', '1s', '--', 'sleep', '30']);
  t.match(timedOut.err, /timed out/);
  t.match(timedOut.err, /0 succeeded, 0 failed, 1 timed out/);

  const js = await cli(['run', '--selector', 'role in (web,api),zone!=eu2', '--json', '--', 'sh', '-c', 'echo out; echo err >&2; exit 4']);
  t.equal(js.code, 1, js.err);
  t.equal(js.err, '', '--json: nothing on stderr');
  const j = JSON.parse(js.out) as { target: { selector: string }; matched: { online: { id: string }[]; offline: { id: string; hostname: string }[] }; executions: { id: string; agentId: string; status: string; exitCode: number; output: string }[]; summary: Record<string, number>; exitCode: number };
  t.equal(j.target.selector, 'role in (web,api),zone!=eu2');
  t.same(j.matched.online.map((a) => a.id), [ids[0]]);
  t.same(j.matched.offline, [{ id: offline, hostname: 'web-offline-1' }]);
  t.equal(j.executions.length, 1);
  t.match(j.executions[0], { agentId: ids[0], status: 'failed', exitCode: 4 });
  t.match(j.executions[0]!.output, /out\n/);
  t.match(j.summary, { matched: 2, succeeded: 0, failed: 1, skipped: 1 });
  t.equal(j.exitCode, 1);
});

t.test('targets: --agent with --selector is an error; bad selectors name the position; no match / all offline', async (t) => {
  const { h, ids, cli } = await fleet(t);
  const both = await cli(['run', '--agent', ids[0]!, '--selector', 'role=web', '--', 'true']);
  t.equal(both.code, 1);
  t.match(both.err, /--agent and --selector exclude each other.*TRELLIS_E_INVALID_ARGUMENT/);
  // The hub refuses it too (a client that sends both).
  const stream = h.admin.runs.Run({ agentId: ids[0]!, selectorExpr: 'role=web', argv: ['true'] }, h.admin.metadata);
  const err = await new Promise<Error & { code?: number }>((resolve) => { stream.on('error', resolve); stream.on('data', () => undefined); });
  t.equal(err.code, 3, 'INVALID_ARGUMENT');
  t.match(err.message, /not both/);

  const bad = await cli(['agents', 'list', '--selector', 'role in (web,db']);
  t.equal(bad.code, 1);
  t.match(bad.err, /bad selector "role in \(web,db" at position 16: missing "\)".*TRELLIS_E_INVALID_ARGUMENT/);
  const badRun = await cli(['run', '--selector', 'role=web zone=eu1', '--', 'true']);
  t.match(badRun.err, /at position 10: expected ","/);

  const nomatch = await cli(['run', '--selector', 'role=nothing', '--', 'true']);
  t.match(nomatch.err, /no agent matches the selector role=nothing.*TRELLIS_E_NOT_FOUND/);
  const alloff = await cli(['run', '--selector', 'zone=us1', '--', 'true']);
  t.match(alloff.err, /matches 1 agent\(s\), none online: web-offline-1.*TRELLIS_E_AGENT_OFFLINE/);
});

t.test('Ctrl-C cancels a run (command and action forms alike): exit 130, executions canceled, never INTERNAL', async (t) => {
  const { h, ids, env } = await fleet(t);
  const listExec = () => call<T.ListExecutionsRequest, T.ListExecutionsResponse__Output>(h.admin, h.admin.executions, h.admin.executions.ListExecutions, { limit: 50 } as T.ListExecutionsRequest);

  const p = startCli(['run', '--selector', 'role=web', '--', 'sh', '-c', 'echo started; sleep 300'], env);
  await waitFor(() => (p.out().match(/started/g) ?? []).length === 2, 60_000, 'both agents started');
  p.child.kill('SIGINT');
  const code = await p.done;
  t.equal(code, 130, p.err());
  t.notMatch(p.err(), /TRELLIS_E_INTERNAL/);
  t.match(p.err(), /summary: 3 matched: 0 succeeded, 0 failed, 0 timed out, 2 canceled/);
  await waitFor(async () => (await listExec()).executions.filter((e) => e.action === 'core.command' && e.status === 'canceled').length === 2, 30_000, 'both executions canceled on the hub');

  await h.hub.components.packs.install('default', [
    { path: 'pack.yaml', content: Buffer.from('name: ops\nversion: 1.0.0\n'), mode: 0o644 },
    { path: 'actions/wait.yaml', content: Buffer.from("name: wait\nrunner: command\ncommand: ['sh', '-c', 'echo started; sleep 300']\ntimeout: 600s\n"), mode: 0o644 },
  ], { by: 'test' });
  const a = startCli(['run', 'ops.wait', '--agent', ids[0]!], env);
  await waitFor(() => /started/.test(a.out()), 60_000, 'action started');
  a.child.kill('SIGINT');
  t.equal(await a.done, 130, a.err());
  t.notMatch(a.err(), /TRELLIS_E_INTERNAL/);
  await waitFor(async () => (await listExec()).executions.some((e) => e.action === 'ops.wait' && e.status === 'canceled'), 30_000, 'the action execution canceled');
});

t.test('an id prefix or hostname never reaches another tenant\'s agent (NOT_FOUND, not ambiguous, not listed)', async (t) => {
  const store = await openStore({ kind: 'memory' });
  const reg = new AgentRegistry(store, { heartbeatTtlMs: 30_000 });
  await reg.load();
  const doc = (id: string, tenant: string, host: string): AgentDoc => ({
    id, tenant, hostname: host, labels: {}, enrolledAt: Date.now(), tokenId: 't', spiffeId: `spiffe://x/tenant/${tenant}/agent/${id}`,
    certSerial: id, certExpiresAt: Date.now() + 3_600_000, serials: [], revoked: false,
  });
  await reg.create(doc('aaaa1111', 'acme', 'db1'));
  await reg.create(doc('aaaa2222', 'other', 'db1'));
  await reg.create(doc('bbbb3333', 'other', 'web9'));
  t.equal((await reg.resolve('aaaa', 'acme')).id, 'aaaa1111', 'the prefix is unique inside the tenant');
  t.equal((await reg.resolve('db1', 'acme')).id, 'aaaa1111', 'the hostname is unique inside the tenant');
  for (const ref of ['bbbb', 'web9', 'bbbb3333', 'WEB9']) {
    const e = await reg.resolve(ref, 'acme').then(() => undefined, (err: Error & { code?: string }) => err);
    t.equal(e?.code, 'TRELLIS_E_NOT_FOUND', `${ref}: another tenant's agent does not exist`);
    t.notMatch(e?.message ?? '', ref === 'bbbb3333' ? /other|web9/ : /bbbb3333|other/, `${ref}: the message names nothing of the other tenant`);
  }
  const amb = await reg.resolve('db1').then(() => undefined, (err: Error & { code?: string }) => err);
  t.equal(amb?.code, 'TRELLIS_E_INVALID_ARGUMENT', 'across every tenant (an administrator asking for *) the hostname is ambiguous');
});

t.test('agents are named by unique id prefix or exact hostname; ambiguity lists the candidates', async (t) => {
  const { h, ids, offline, cli } = await fleet(t);
  const byHost = await cli(['agents', 'show', 'web-offline-1']);
  t.equal(byHost.code, 0, byHost.err);
  t.match(byHost.out, new RegExp(`id: +${offline}`));
  const prefix = await cli(['agents', 'show', ids[0]!.slice(0, 16)]);
  t.match(prefix.out, new RegExp(`id: +${ids[0]}`), 'a unique id prefix');
  // The two running agents report this machine's hostname: ambiguous.
  const host = (await h.hub.components.agents.get(ids[0]!))!.hostname;
  const amb = await cli(['agents', 'show', host]);
  t.equal(amb.code, 1);
  t.match(amb.err, new RegExp(`names 2 agents: .*${ids[0]}.*TRELLIS_E_INVALID_ARGUMENT`));
  const short = await cli(['agents', 'show', ids[0]!.slice(0, 3)]);
  t.match(short.err, /no agent .*TRELLIS_E_NOT_FOUND/, 'a prefix under 4 characters names nothing');
  const lbl = await cli(['agents', 'label', 'web-offline-1', 'tier=cold']);
  t.equal(lbl.code, 0, lbl.err);
  t.equal((await h.hub.components.agents.get(offline))!.labels.tier, 'cold', 'labels set through the hostname');
  const run = await cli(['run', '--agent', ids[1]!.slice(0, 16), '--', 'echo', 'by-prefix']);
  t.equal(run.code, 0, run.err);
  t.equal(run.out, 'by-prefix\n');
  const hist = await cli(['executions', 'list', '--agent', ids[1]!.slice(0, 16), '--json']);
  t.equal(hist.code, 0, hist.err);
  t.same((JSON.parse(hist.out) as { agentId: string }[]).map((e) => e.agentId), [ids[1]], 'executions list --agent takes a prefix too');
  const histTable = await cli(['executions', 'list', '--agent', ids[1]!.slice(0, 16)]);
  t.match(histTable.out, new RegExp(`HOST[\\s\\S]*${ids[1]}\\s+${hostname().replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\s`), 'executions list shows the hostname beside the agent id');
  const offRun = await cli(['run', '--agent', 'web-offline-1', '--', 'true']);
  t.match(offRun.err, /agent .* \(web-offline-1\) is not connected.*TRELLIS_E_AGENT_OFFLINE/);
});

t.test('agents list --status/--selector; revoked agents hidden after 7 days; agents prune (audited, needs agents:revoke)', async (t) => {
  const { h, ids, offline, cli } = await fleet(t);
  const listIds = async (args: string[]) => {
    const r = await cli(['agents', 'list', '--json', ...args]);
    t.equal(r.code, 0, r.err);
    return (JSON.parse(r.out) as { id: string }[]).map((a) => a.id).sort();
  };
  t.same(await listIds(['--status', 'online']), [...ids].sort());
  t.same(await listIds(['--status', 'offline']), [offline]);
  t.same(await listIds(['--selector', 'zone in (eu1,us1)']), [ids[0], offline].sort());
  t.same(await listIds(['--selector', 'zone notin (eu1,us1)', '--status', 'online']), [ids[1]]);
  const badStatus = await cli(['agents', 'list', '--status', 'gone']);
  t.match(badStatus.err, /bad --status "gone".*TRELLIS_E_INVALID_ARGUMENT/);
  const table = await cli(['agents', 'list']);
  t.match(table.out, /web-offline-1/, 'the table shows the hostname');

  // A user without agents:revoke may not prune.
  await h.hub.components.auth.createUser({ username: 'worker', password: 'worker-password-1', roles: ['user'] });
  const w = await login(h, 'worker', 'worker-password-1');
  const { mkdtemp: mk } = await import('node:fs/promises');
  const whome = await mk(join(tmpdir(), 'trellis-worker-'));
  await writeProfile({ hub: h.adminAddr, caPem: h.caPem, username: 'worker', token: w.token, expiresAtMs: w.expiresAtMs, tenant: 'default' }, { ...process.env, TRELLIS_HOME: whome });
  const denied = await runCli(['agents', 'prune', '--revoked'], { TRELLIS_HOME: whome, TRELLIS_API_KEY: '', TRELLIS_TENANT: '' });
  t.equal(denied.code, 1);
  t.match(denied.err, /TRELLIS_E_PERMISSION_DENIED/);

  const nothing = await cli(['agents', 'prune']);
  t.match(nothing.err, /say what to prune/);
  const tooShort = await cli(['agents', 'prune', '--offline-for', '10m']);
  t.match(tooShort.err, /at least 1h.*TRELLIS_E_INVALID_ARGUMENT/);

  // Revoked: listed for 7 days, then only with --all / --status revoked; prune --revoked deletes it.
  t.equal((await cli(['agents', 'revoke', ids[1]!.slice(0, 16)])).code, 0, 'revoke by id prefix');
  t.ok((await listIds([])).includes(ids[1]!), 'a fresh revocation is listed');
  await h.hub.components.store.update<{ id: string; revokedAt?: number }>('agents', ids[1]!, (a) => (a ? { ...a, revokedAt: Date.now() - 8 * 86_400_000 } : a));
  t.notOk((await listIds([])).includes(ids[1]!), 'hidden 8 days later');
  t.ok((await listIds(['--all'])).includes(ids[1]!), '--all shows it');
  t.same(await listIds(['--status', 'revoked']), [ids[1]]);

  // The offline agent, last seen 40 days ago.
  await h.hub.components.store.update<{ id: string; enrolledAt: number; lastSeen?: number }>('agents', offline, (a) => (a ? { ...a, enrolledAt: Date.now() - 40 * 86_400_000, lastSeen: Date.now() - 40 * 86_400_000 } : a));
  const dry = await cli(['agents', 'prune', '--revoked', '--offline-for', '30d', '--dry-run']);
  t.equal(dry.code, 0, dry.err);
  t.match(dry.out, /2 agent\(s\) would be pruned \(dry run\)/);
  t.equal((await listIds(['--all'])).length, 3, 'a dry run changes nothing');
  const pr = await cli(['agents', 'prune', '--revoked', '--offline-for', '30d']);
  t.equal(pr.code, 0, pr.err);
  t.match(pr.out, new RegExp(`pruned ${offline}  web-offline-1`));
  t.match(pr.out, /2 agent\(s\) pruned/);
  t.same(await listIds(['--all']), [ids[0]], 'only the online agent is left');
  const off = (await h.hub.components.agents.revokedEntries()).entries.length;
  t.ok(off >= 2, 'the pruned agents\' certificates are in the CRL');
  await waitFor(async () => (await h.hub.components.audit.query({ methodContains: 'PruneAgents' })).some((e) => e.result === 'ok' && e.detail.includes(offline)), 10_000, 'prune audited');
  const rec = (await h.hub.components.audit.query({ methodContains: 'PruneAgents' })).find((e) => e.result === 'ok' && !e.target.includes('dry run'))!;
  t.match(rec, { actor: 'admin', target: /revoked and offline for 30d/, detail: new RegExp(`2 agent\\(s\\): .*${offline} \\(web-offline-1\\)`) });
});

t.test('a hub rule may target a selector expression; a bad one is refused naming the position', async (t) => {
  const { h, ids, agents } = await fleet(t);
  await h.hub.components.packs.install('default', [
    { path: 'pack.yaml', content: Buffer.from('name: ops\nversion: 1.0.0\n'), mode: 0o644 },
    { path: 'actions/noop.yaml', content: Buffer.from("name: noop\nrunner: command\ncommand: ['true']\ntimeout: 60s\n"), mode: 0o644 },
  ], { by: 'test' });
  const bad = await callError(createRule(h, { name: 'bad-sel', trigger: 'core.tick', target: { selector: 'role in (web' }, action: { ref: 'ops.noop' } }));
  t.match(bad?.message, /bad selector "role in \(web" at position 13/);
  const rule = await createRule(h, { name: 'eu-only', trigger: 'core.tick', target: { selector: 'role=web, zone!=eu2' }, action: { ref: 'ops.noop' } });
  t.equal(rule.target, 'selector role=web,zone!=eu2');
  const list = () => listExecutions(h, { action: 'ops.noop' });
  // The eu2 agent emits the event; the rule runs on the agents its selector picks: eu1 only.
  await waitFor(() => agents[1]!.publishEvent('core.tick', {}).accepted > 0, 10_000, 'the event accepted');
  await waitFor(async () => (await list()).executions.some((e) => e.status === 'succeeded'), 30_000, 'the rule ran');
  const ex = (await list()).executions;
  t.same(ex.map((e) => e.agentId), [ids[0]], 'only the agent the selector matches');
});
