import t from 'tap';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { startHub, ADMIN_PASSWORD } from './helpers/hub.js';
import { adminClients, call } from '../cli/client.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';
import type { AdminClients } from '../cli/client.js';

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? filesUnder(join(dir, e.name)) : [join(dir, e.name)]));
}

function run(c: AdminClients, req: Partial<T.RunRequest>): Promise<{ out: string; err: string; finished?: T.RunFinished__Output; error?: grpc.ServiceError }> {
  return new Promise((resolve) => {
    let out = '', err = '';
    let finished: T.RunFinished__Output | undefined;
    const s = c.runs.Run({ timeoutMs: 10_000, ...req }, c.metadata);
    s.on('data', (u: T.RunUpdate__Output) => {
      if (u.output) (u.output.stream === 'STDERR' ? (err += String(u.output.data)) : (out += String(u.output.data)));
      if (u.finished) finished = u.finished;
    });
    s.on('error', (error: grpc.ServiceError) => resolve({ out, err, finished, error }));
    s.on('end', () => resolve({ out, err, finished }));
  });
}

t.test('a secret reference in --env reaches the process sealed, by environment only, and comes back masked', async (t) => {
  await using h = await startHub();
  const agent = await h.agent();
  const secret = 'planted-db-password-7c1e';
  await h.hub.components.kv.set('default', { username: 'admin', isAdmin: true }, { key: 'db/password', value: secret, secret: true });
  const c = adminClients(h.adminAddr, h.caPem, (await call<T.LoginRequest, T.LoginResponse__Output>(h.admin, h.admin.auth, h.admin.auth.Login, { username: 'admin', password: ADMIN_PASSWORD })).token, 'default');
  t.teardown(() => c.close());
  const agentId = agent.agentId!;
  const r = await run(c, {
    agentId, argv: ['sh', '-c', 'echo "got $DB_PASS"; echo "len ${#DB_PASS}"; echo "$DB_PASS" >&2; tr "\\0" "\\n" < /proc/$$/cmdline'],
    env: { DB_PASS: '{{ secret.db/password }}', PLAIN: 'x' },
  });
  t.notOk(r.error, r.error?.message ?? 'no error');
  t.equal(r.finished?.status, 'succeeded');
  t.match(r.out, /got \*\*\*\*/, 'the value is masked in stdout');
  t.match(r.out, new RegExp(`len ${secret.length}`), 'the process had the real value');
  t.equal(r.err.trim(), '****', 'and in stderr');
  t.notOk(r.out.includes(secret) || r.err.includes(secret));
  await h.hub.components.store.flush();
  // Nowhere in clear: hub files, hub logs, agent files.
  for (const f of [...filesUnder(h.dataDir), ...filesUnder(h.dir).filter((p) => p.includes('agent-'))]) {
    t.notOk(readFileSync(f).includes(secret), `not in ${f.slice(h.dir.length)}`);
  }
  t.notOk(h.logLines.join('\n').includes(secret), 'not in the hub log');
  t.ok(h.agentLogLines().length > 0, 'the agent logged to its real log file');
  t.notOk(h.agentLogLines().join('\n').includes(secret), 'not in the agent log');
});

t.test('secrets never go in argv, and using one needs kv:read', async (t) => {
  await using h = await startHub();
  const agent = await h.agent();
  await h.hub.components.kv.set('default', { username: 'admin', isAdmin: true }, { key: 'token', value: 'tok-123456', secret: true });
  const admin = adminClients(h.adminAddr, h.caPem, (await call<T.LoginRequest, T.LoginResponse__Output>(h.admin, h.admin.auth, h.admin.auth.Login, { username: 'admin', password: ADMIN_PASSWORD })).token, 'default');
  t.teardown(() => admin.close());
  const inArgv = await run(admin, { agentId: agent.agentId!, argv: ['echo', '{{ secret.token }}'] });
  t.equal(inArgv.error?.code, grpc.status.INVALID_ARGUMENT);
  t.match(inArgv.error?.details, /--env only/);
  const missing = await run(admin, { agentId: agent.agentId!, argv: ['true'], env: { X: '{{ secret.nope }}' } });
  t.equal(missing.error?.code, grpc.status.NOT_FOUND);
  // A secret of another tenant does not exist for a run in this one.
  await h.hub.components.iam.createTenant('blue', '');
  await h.hub.components.kv.set('blue', { username: 'admin', isAdmin: true }, { key: 'blue-only', value: 'blue-secret-99', secret: true });
  const otherTenant = await run(admin, { agentId: agent.agentId!, argv: ['sh', '-c', 'echo $X'], env: { X: '{{ secret.blue-only }}' } });
  t.equal(otherTenant.error?.code, grpc.status.NOT_FOUND, 'another tenant\'s secret is NOT_FOUND');
  t.notOk(otherTenant.out.includes('blue-secret-99'));
  // A plain datastore value referenced as a secret is refused, so nobody mistakes it for one.
  await h.hub.components.kv.set('default', { username: 'admin', isAdmin: true }, { key: 'plain', value: 'v', secret: false });
  const notSecret = await run(admin, { agentId: agent.agentId!, argv: ['true'], env: { X: '{{ secret.plain }}' } });
  t.equal(notSecret.error?.code, grpc.status.INVALID_ARGUMENT);
  // A role that may run commands but not read the datastore.
  await h.hub.components.iam.createRole('runner', '', [{ permission: 'agents:run', scope: '' }, { permission: 'agents:list', scope: '' }]);
  await h.hub.components.auth.createUser({ username: 'runner', password: 'runner-password-1', roles: ['runner'] });
  const anon = adminClients(h.adminAddr, h.caPem);
  const login = await call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username: 'runner', password: 'runner-password-1' });
  anon.close();
  const runner = adminClients(h.adminAddr, h.caPem, login.token, 'default');
  t.teardown(() => runner.close());
  const denied = await run(runner, { agentId: agent.agentId!, argv: ['true'], env: { X: '{{ secret.token }}' } });
  t.equal(denied.error?.code, grpc.status.PERMISSION_DENIED);
  const plain = await run(runner, { agentId: agent.agentId!, argv: ['sh', '-c', 'echo $X'], env: { X: 'no refs' } });
  t.equal(plain.out, 'no refs\n', 'plain env still works without kv:read');
});
