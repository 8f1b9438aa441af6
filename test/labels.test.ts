/**
 * Labels come from the hub, never from the host (issue 10, finding 7): the join token's labels,
 * keys the token lets the host set (`--allow-label`), and admins (`trellis agents label`). Edge
 * rules select agents by label and carry sealed secrets, so a host that names itself `tier=db`
 * must not receive the db rule and its secret.
 */
import t from 'tap';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { startHub, waitFor, callError, login, tempDir, ADMIN_PASSWORD, type TestHub } from './helpers/hub.js';
import { runCli } from './helpers/cli.js';
import { adminClients, call } from '../cli/client.js';
import { v1 } from '../common/proto.js';
import { CLIENT_OPTIONS } from '../common/grpc-options.js';
import { agentPaths } from '../agent/identity.js';
import type { Agent } from '../agent/agent.js';
import { file, unaryT, install, getAgent, setSecretViaApi } from './helpers/admin.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

/** A pack with one edge rule for agents labelled tier=db that references the secret db_password. */
function dbPack(dir: string): T.PackFile[] {
  return [
    file('pack.yaml', 'name: dbops\nversion: 1.0.0\ndescription: test pack\n'),
    file('actions/mark.yaml', [
      'name: mark', 'description: append a line', 'runner: command',
      'command: ["/bin/sh", "-c", "printf \'%s\\\\n\' \\"$MSG\\" >> \\"$OUT\\""]',
      'parameters:', '  msg: { type: string, required: true }', '  out: { type: string, required: true }', '  token: { type: string, secret: true }',
      'env:', '  MSG: "{{ msg }}"', '  OUT: "{{ out }}"', '  TOKEN: "{{ token }}"', 'timeout: 10s', '',
    ].join('\n')),
    file('rules/db_only.yaml', [
      'name: db_only', 'trigger: core.file',
      'action:', '  ref: dbops.mark', '  parameters:', '    msg: "m"', `    out: ${JSON.stringify(join(dir, 'edge.out'))}`, '    token: "{{ secret.db_password }}"',
      'target: local', 'on: { selector: { tier: db } }', '',
    ].join('\n')),
  ];
}

const setLabels = (h: TestHub, req: T.SetAgentLabelsRequest) => call<T.SetAgentLabelsRequest, T.AgentInfo__Output>(h.admin, h.admin.agents, h.admin.agents.SetAgentLabels, req);
const sealedKeys = async (a: Agent) => Object.keys((JSON.parse(await readFile(a.edge.path, 'utf8')) as { sealedSecrets: Record<string, string> }).sealedSecrets);

t.test('enroll: a label key the token does not allow is refused (naming the key and the allowed keys); allowed keys work; token labels win', async (t) => {
  await using h = await startHub();
  const none = await h.token({ uses: 2 });
  const err = await callError(h.enroll({ token: none, labels: { tier: 'db' } }));
  t.equal(err?.code, 'TRELLIS_E_INVALID_ARGUMENT', 'host-chosen tier=db with a token that allows nothing: INVALID_ARGUMENT');
  t.match(err?.message, /"tier"/, 'names the key');
  t.match(err?.message, /no host-set labels/, 'says the token allows none');
  const tokens = await call<T.ListJoinTokensRequest, T.ListJoinTokensResponse__Output>(h.admin, h.admin.tokens, h.admin.tokens.ListJoinTokens, { includeInactive: true });
  t.equal(tokens.tokens.find((x) => none.includes(x.id))?.used, 0, 'the refused enrollment did not use the token');

  const some = await h.token({ uses: 3, labels: { tier: 'web', env: 'prod' }, allowLabelKeys: ['rack', 'tier'] });
  const err2 = await callError(h.enroll({ token: some, labels: { rack: 'r1', role: 'db' } }));
  t.equal(err2?.code, 'TRELLIS_E_INVALID_ARGUMENT');
  t.match(err2?.message, /"role".*allows rack, tier/, 'names the refused key and the keys the token allows');

  const ok = await h.enroll({ token: some, labels: { rack: 'r1', tier: 'db' } });
  t.same((await getAgent(h, ok.agentId)).labels, { rack: 'r1', tier: 'web', env: 'prod' }, 'an allowed key is set; the token\'s own tier=web wins over the host\'s tier=db');

  const bad = await callError(h.token({ labels: { tier: 'db\u001b[31m' } }));
  t.equal(bad?.code, 'TRELLIS_E_INVALID_ARGUMENT', 'a label value with a control character is refused');
  t.equal((await callError(h.token({ labels: { tier: 'x'.repeat(64) } })))?.code, 'TRELLIS_E_INVALID_ARGUMENT', 'a label value over 63 characters is refused');
  t.equal((await callError(h.token({ allowLabelKeys: ['bad key'] })))?.code, 'TRELLIS_E_INVALID_ARGUMENT', 'a bad --allow-label key is refused');
});

t.test('hello labels and `agent run --label` cannot give a host a label', async (t) => {
  await using h = await startHub();
  const { dataDir, agentId } = await h.enroll();
  const p = agentPaths(dataDir);
  const [caPem, keyPem, certPem] = await Promise.all([readFile(p.ca, 'utf8'), readFile(p.key, 'utf8'), readFile(p.cert, 'utf8')]);
  const client = new v1.AgentChannel(h.agentAddr, grpc.credentials.createSsl(Buffer.from(caPem), Buffer.from(keyPem), Buffer.from(certPem)), CLIENT_OPTIONS) as unknown as grpc.Client & {
    Connect(md: grpc.Metadata, opts: grpc.CallOptions): grpc.ClientDuplexStream<T.AgentMessage, T.HubMessage__Output>;
  };
  const c = client.Connect(new grpc.Metadata(), { deadline: Date.now() + 20_000 });
  c.on('error', () => undefined);
  const welcomed = new Promise<void>((resolve) => c.on('data', (m: T.HubMessage__Output) => { if (m.welcome) resolve(); }));
  c.write({ hello: { facts: { hostname: 'claims-db' }, labels: { tier: 'db' } } });
  await welcomed;
  t.same((await getAgent(h, agentId)).labels, {}, 'a hello claiming tier=db changes nothing');
  c.cancel();
  client.close();

  const r = await runCli(['agent', 'run', '--data', dataDir, '--label', 'tier=db']);
  t.not(r.code, 0, '`agent run --label` exits with an error');
  t.match(r.err, /agent run --label` was removed/, 'and says labels come from the token or an admin');
  t.match(r.err, /agents label/);
});

t.test('an edge rule for tier=db and its secret reach only an agent an admin labelled tier=db; the change is audited', async (t) => {
  await using h = await startHub();
  const secret = `db-secret-${Math.random().toString(36).slice(2)}`;
  await setSecretViaApi(h, 'db_password', secret);
  await install(h, dbPack(h.dir));

  // The host tries to claim tier=db at enrollment: refused. It enrols without it and connects.
  const token = await h.token({ uses: 2 });
  t.equal((await callError(h.enroll({ token, labels: { tier: 'db' } })))?.code, 'TRELLIS_E_INVALID_ARGUMENT', 'claiming tier=db at enrollment is refused');
  const e = await h.enroll({ token });
  const agent = await h.agent({ dataDir: e.dataDir });
  await waitFor(() => agent.edge.version !== '', 10_000, 'first config');
  t.same(agent.edge.ruleNames, [], 'no db rule on an agent that is not tier=db');
  t.same(await sealedKeys(agent), [], 'and no sealed secret');

  // Labels are an admin's to set: without agents:label, refused.
  await unaryT(h, h.admin.users, h.admin.users.CreateUser, { username: 'plain', password: 'plain-user-password-1', roles: ['user'], tenants: ['default'] });
  const plain = adminClients(h.adminAddr, h.caPem, (await login(h, 'plain', 'plain-user-password-1')).token, 'default');
  t.teardown(() => plain.close());
  const denied = await callError(call(plain, plain.agents, plain.agents.SetAgentLabels, { id: e.agentId, set: { tier: 'db' }, remove: [] }));
  t.equal(denied?.code, 'TRELLIS_E_PERMISSION_DENIED', 'the built-in user role does not hold agents:label');
  t.equal((await callError(setLabels(h, { id: e.agentId, set: { tier: 'd\nb' }, remove: [] })))?.code, 'TRELLIS_E_INVALID_ARGUMENT', 'admin labels pass the same validator');

  const a = await setLabels(h, { id: e.agentId, set: { tier: 'db' }, remove: [] });
  t.same(a.labels, { tier: 'db' }, 'the admin sets tier=db');
  await waitFor(() => agent.edge.ruleNames.length === 1, 10_000, 'the db rule reaches the agent');
  t.same(agent.edge.ruleNames, ['dbops.db_only']);
  t.same(await sealedKeys(agent), ['secret:db_password'], 'with its sealed secret');

  const r = await setLabels(h, { id: e.agentId, set: {}, remove: ['tier'] });
  t.same(r.labels, {}, '--remove tier');
  await waitFor(() => agent.edge.ruleNames.length === 0, 10_000, 'the rule leaves the agent');
  t.same(await sealedKeys(agent), [], 'and so does the secret');

  const recs = (await h.hub.components.audit.query({ methodContains: 'SetAgentLabels' }));
  const ok = recs.filter((x) => x.result === 'ok');
  t.equal(ok.length, 2, 'both changes are audited');
  t.equal(ok[0]!.actor, 'admin');
  t.equal(ok[0]!.target, `agent:${e.agentId}`);
  t.match(ok[0]!.detail, /labels \{\} -> \{tier=db\}/, 'with the labels before and after');
  t.ok(recs.some((x) => x.result === 'denied' && x.actor === 'plain'), 'the refused attempt is audited too');
});

t.test('the CLI: tokens create --allow-label, agent enroll --label, agents label k=v --remove k', async (t) => {
  await using h = await startHub();
  await using home = await tempDir();
  const env = { TRELLIS_HOME: home.path, TRELLIS_PASSWORD: ADMIN_PASSWORD };
  t.equal((await runCli(['login', '--hub', h.adminAddr, '--user', 'admin', '--ca', join(h.dataDir, 'ca.pem')], env)).code, 0);
  const tok = await runCli(['tokens', 'create', '--uses', '2', '--label', 'env=prod', '--allow-label', 'rack', '--allow-label', 'zone'], env);
  t.equal(tok.code, 0, tok.err);
  const token = tok.out.trim();
  t.match((await runCli(['tokens', 'list'], env)).out, /env=prod\s+rack,zone/, '`tokens list` shows the keys a host may set');
  const refused = await runCli(['agent', 'enroll', '--hub', h.adminAddr, '--token', token, '--data', join(home.path, 'a1'), '--label', 'tier=db'], env);
  t.equal(refused.code, 1);
  t.match(refused.err, /does not let this host set the label "tier" \(it allows rack, zone\).*TRELLIS_E_INVALID_ARGUMENT/);
  const ok = await runCli(['agent', 'enroll', '--hub', h.adminAddr, '--token', token, '--data', join(home.path, 'a1'), '--label', 'rack=r7'], env);
  t.equal(ok.code, 0, ok.err);
  const id = /enrolled as agent (\S+)/.exec(ok.out)![1]!;
  const lab = await runCli(['agents', 'label', id, 'tier=db', '--remove', 'rack'], env);
  t.equal(lab.code, 0, lab.err);
  t.match(lab.out, /labels .*env=prod/);
  t.same((await getAgent(h, id)).labels, { env: 'prod', tier: 'db' });
  const help = await runCli(['agents', 'label', '--help']);
  t.match(help.out, /agents:label/, '--help names the permission');
  t.notMatch((await runCli(['agent', 'run', '--help'])).out, /--label <k=v/, '`agent run --help` no longer offers --label');
});
