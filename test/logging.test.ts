import t from 'tap';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { startHub, captureLogger, ADMIN_PASSWORD } from './helpers/hub.js';
import { adminClients, call } from '../cli/client.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? filesUnder(join(dir, e.name)) : [join(dir, e.name)]));
}

t.test('credential fields are redacted wherever they sit in a log record', async (t) => {
  const { log, lines } = captureLogger();
  const planted = 'planted-secret-9f8e7d';
  log.info({ password: planted, nested: { token: planted, deeper: { apiKey: planted } }, metadata: { authorization: `Bearer ${planted}` } }, 'hello');
  log.info({ req: { headers: { authorization: planted } }, privateKey: planted, secret: planted }, 'more');
  t.equal(lines.length, 2);
  for (const l of lines) t.notMatch(l, planted, 'no planted secret in the log line');
  t.match(lines[0], /\[REDACTED\]/);
});

t.test('a planted password, login token, join token and agent key appear in no log line and no hub file in clear', async (t) => {
  await using h = await startHub();
  // A planted password, used for a failed and a good login.
  const anon = adminClients(h.adminAddr, h.caPem);
  t.teardown(() => anon.close());
  await call(anon, anon.auth, anon.auth.Login, { username: 'admin', password: 'planted-wrong-password' }).catch(() => undefined);
  const login = await call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username: 'admin', password: ADMIN_PASSWORD });
  // An API key, created and used for a call.
  const key = await call<T.CreateApiKeyRequest, T.CreateApiKeyResponse__Output>(h.admin, h.admin.apikeys, h.admin.apikeys.CreateApiKey, { name: 'planted' });
  const byKey = adminClients(h.adminAddr, h.caPem, key.key, 'default');
  await call(byKey, byKey.agents, byKey.agents.ListAgents, {});
  byKey.close();
  const joinToken = await h.token({ uses: 2 });
  const { dataDir } = await h.enroll({ token: joinToken });
  const agent = await h.agent({ dataDir });
  t.equal(agent.channel.state, 'ready');
  await h.hub.components.store.flush();
  const keyBody = readFileSync(join(dataDir, 'agent-key.pem'), 'utf8').split('\n').filter((l) => l && !l.startsWith('-----')).join('');
  const secretPart = joinToken.split('.')[2]!;
  const planted = { 'wrong password': 'planted-wrong-password', 'admin password': ADMIN_PASSWORD, 'login token': login.token, 'join token secret': secretPart, 'API key secret': key.key.split('_').slice(2).join('_'), 'agent key': keyBody.slice(48, 88) } // the private scalar, not the shared ASN.1 header;
  const logText = h.logLines.join('\n');
  t.ok(h.logLines.length > 5, 'the hub logged something');
  for (const [what, value] of Object.entries(planted)) t.notOk(logText.includes(value), `${what} is not in the hub log`);
  const agentLog = h.agentLogLines();
  t.ok(agentLog.some((l) => l.includes('"level":')), 'the agent logged to its real log file');
  for (const [what, value] of Object.entries(planted)) t.notOk(agentLog.join('\n').includes(value), `${what} is not in the agent log`);
  for (const f of filesUnder(h.dataDir)) {
    const text = readFileSync(f, 'utf8');
    for (const [what, value] of Object.entries(planted)) t.notOk(text.includes(value), `${what} is not in ${f.slice(h.dataDir.length + 1)}`);
  }
  // Key files are private.
  for (const f of ['ca-key.pem', 'hub-key.pem', 'state.json']) t.equal(statSync(join(h.dataDir, f)).mode & 0o777, 0o600, `${f} is 0600`);
  t.equal(statSync(join(dataDir, 'agent-key.pem')).mode & 0o777, 0o600, 'agent-key.pem is 0600');
  t.equal(statSync(h.dataDir).mode & 0o777, 0o700, 'hub data dir is 0700');
});
