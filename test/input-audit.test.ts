/**
 * Input checks and audit (issue 12): `tokens create --uses` refuses 0 and text, the hub's
 * longest join-token lifetime (joinTokenMaxTtl), and audit records that say who ran what where:
 * Run (target, argv, execution ids; env values never), RunAction (its target), Enroll (agent and
 * join-token ids).
 */
import t from 'tap';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ADMIN_PASSWORD, login, startHub, waitFor, callError } from './helpers/hub.js';
import { runCli } from './helpers/cli.js';
import { call } from '../cli/client.js';
import { writeProfile } from '../cli/profile.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

t.test('tokens create: --uses 0|abc|-1 is an error, --ttl over joinTokenMaxTtl is refused by the hub', async (t) => {
  const h = await startHub({ config: { joinTokenMaxTtl: '2d' } });
  t.teardown(() => h.close());
  const home = await mkdtemp(join(tmpdir(), 'trellis-input-'));
  const r = await login(h, 'admin', ADMIN_PASSWORD);
  const env = { TRELLIS_HOME: home, TRELLIS_API_KEY: '', TRELLIS_TENANT: '' };
  await writeProfile({ hub: h.adminAddr, caPem: h.caPem, username: 'admin', token: r.token, expiresAtMs: r.expiresAtMs, tenant: 'default' }, { ...process.env, ...env });
  for (const uses of ['0', 'abc', '-1', '1.5', '100001']) {
    const bad = await runCli(['tokens', 'create', '--uses', uses], env);
    t.equal(bad.code, 2, `--uses ${uses}: usage error`);
    t.match(bad.err, /a whole number from 1 to 100000/);
  }
  const before = (await call<T.ListJoinTokensRequest, T.ListJoinTokensResponse__Output>(h.admin, h.admin.tokens, h.admin.tokens.ListJoinTokens, { includeInactive: true })).tokens.length;
  t.equal(before, 0, 'no token was created by a refused command');
  const ok = await runCli(['tokens', 'create', '--uses', '3', '--ttl', '2d'], env);
  t.equal(ok.code, 0, ok.err);
  t.match(ok.err, /3 use\(s\)/);
  const long = await runCli(['tokens', 'create', '--ttl', '3d'], env);
  t.equal(long.code, 1);
  t.match(long.err, /--ttl 3d is over this hub's longest join-token lifetime, 2d \(hub config joinTokenMaxTtl\).*TRELLIS_E_INVALID_ARGUMENT/);
  // The hub enforces it, whatever the client.
  const e = await callError(call(h.admin, h.admin.tokens, h.admin.tokens.CreateJoinToken, { tenant: 'default', uses: 1, ttlMs: 30 * 86_400_000 }));
  t.equal(e?.code, 'TRELLIS_E_INVALID_ARGUMENT');
  const neg = await callError(call(h.admin, h.admin.tokens, h.admin.tokens.CreateJoinToken, { tenant: 'default', uses: -1, ttlMs: 60_000 }));
  t.equal(neg?.code, 'TRELLIS_E_INVALID_ARGUMENT', 'negative uses refused by the hub');
});

t.test('audit: Run names its targets, argv and executions (env values never); RunAction its target; Enroll agent and token ids', async (t) => {
  const h = await startHub();
  t.teardown(() => h.close());
  const tok = await h.token({ labels: { role: 'web' } });
  const tokenId = tok.split('.')[1]!; // tj1.<id>.<secret>.<ca fingerprint>
  const e1 = await h.enroll({ token: tok });
  await h.agent({ dataDir: e1.dataDir });
  const off = await h.enroll({ token: await h.token({ labels: { role: 'web' } }) });
  await waitFor(async () => (await h.hub.components.agents.list()).some((a) => a.online), 30_000, 'agent online');
  const audit = (m: string) => h.hub.components.audit.query({ methodContains: m, limit: 100 });

  const enr = (await audit('Enrollment/Enroll')).find((r) => r.result === 'ok' && r.target.includes(e1.agentId))!;
  t.ok(enr, 'Enroll audited');
  t.match(enr.target, new RegExp(`^agent:${e1.agentId} \\(token `));
  t.equal(enr.target, `agent:${e1.agentId} (token ${tokenId})`, 'the join-token id is named');
  t.notOk(enr.target.includes(tok) || enr.detail.includes(tok), 'never the token text');

  const home = await mkdtemp(join(tmpdir(), 'trellis-audit-'));
  const r = await login(h, 'admin', ADMIN_PASSWORD);
  const env = { TRELLIS_HOME: home, TRELLIS_API_KEY: '', TRELLIS_TENANT: '' };
  await writeProfile({ hub: h.adminAddr, caPem: h.caPem, username: 'admin', token: r.token, expiresAtMs: r.expiresAtMs, tenant: 'default' }, { ...process.env, ...env });
  const planted = 'planted-env-value-6f1c2';
  const run = await runCli(['run', '--selector', 'role=web', '--env', `PASSWORDISH=${planted}`, '--', 'sh', '-c', 'echo audited'], env);
  t.equal(run.code, 0, run.err);
  await waitFor(async () => (await audit('AdminRuns/Run')).some((x) => x.result === 'ok'), 10_000, 'Run audited');
  const rec = (await audit('AdminRuns/Run')).find((x) => x.result === 'ok')!;
  t.match(rec, { actor: 'admin', target: 'selector:role=web' });
  t.match(rec.detail, /argv \["sh","-c","echo audited"\]/);
  t.match(rec.detail, /env keys PASSWORDISH/);
  t.match(rec.detail, new RegExp(`executions [0-9a-z]+@${e1.agentId}`));
  t.match(rec.detail, new RegExp(`skipped offline ${off.agentId}`));
  const all = JSON.stringify(await h.hub.components.audit.query({ limit: 1000 }));
  t.notOk(all.includes(planted), 'an env value never reaches the audit log');

  const one = await runCli(['run', '--agent', e1.agentId, '--', 'true'], env);
  t.equal(one.code, 0, one.err);
  await waitFor(async () => (await audit('AdminRuns/Run')).some((x) => x.target === `agent:${e1.agentId}`), 10_000, 'Run --agent audited');

  await h.hub.components.packs.install('default', [
    { path: 'pack.yaml', content: Buffer.from('name: ops\nversion: 1.0.0\n'), mode: 0o644 },
    { path: 'actions/hi.yaml', content: Buffer.from("name: hi\nrunner: command\ncommand: ['echo', '{{ who }}']\nparameters:\n  who: { type: string, default: x }\ntimeout: 60s\n"), mode: 0o644 },
  ], { by: 'test' });
  const act = await runCli(['run', 'ops.hi', '--selector', 'role=web', 'who=there'], env);
  t.equal(act.code, 0, act.err);
  await waitFor(async () => (await audit('RunAction')).some((x) => x.result === 'ok'), 10_000, 'RunAction audited');
  const ra = (await audit('RunAction')).find((x) => x.result === 'ok')!;
  t.equal(ra.target, 'action:ops.hi on selector:role=web');
  t.match(ra.detail, new RegExp(`parameters who; executions [0-9a-z]+@${e1.agentId}; skipped offline ${off.agentId}`));
  t.notOk(ra.detail.includes('there'), 'parameter values are not audited (they may hold secrets)');
});
