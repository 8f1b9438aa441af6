/**
 * GET /metrics, /healthz and /readyz on the web port (hub/metrics, hub/web/metrics.ts), over
 * real HTTPS on loopback: the Prometheus text parses, counters move after real events and
 * executions, access needs an API key with metrics:read (401 without, 403 without the
 * permission, no detail in the body) or an allow-listed address, and an unknown RPC method
 * never becomes a label.
 */
import t from 'tap';
import https from 'node:https';
import * as grpc from '@grpc/grpc-js';
import { join } from 'node:path';
import { startHub, waitFor, login, type TestHub } from './helpers/hub.js';
import { adminClients, call } from '../cli/client.js';
import { file, install, createRule, readLines } from './helpers/admin.js';
import { secureChannel } from '../common/grpc-tls.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const PW = 'a-long-enough-password-1';

interface Reply { status: number; body: string; headers: Record<string, string | string[] | undefined> }

function get(h: TestHub, path: string, headers: Record<string, string> = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port: h.hub.webPort, path, method: 'GET', ca: h.caPem, servername: 'localhost', agent: false, headers }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d)).on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
    });
    req.on('error', reject);
    req.end();
  });
}

interface Sample { name: string; labels: Record<string, string>; value: number }

/** Parses the Prometheus text exposition format strictly: every line is a comment, blank or a sample. */
function parseExposition(text: string): { samples: Sample[]; types: Map<string, string>; bad: string[] } {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  const bad: string[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    let m = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (m) { if (m[1] === 'TYPE') types.set(m[2]!, m[3]!); continue; }
    m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (-?[0-9.e+-]+|NaN|\+Inf|-Inf)(?: \d+)?$/.exec(line);
    if (!m) { bad.push(line); continue; }
    const labels: Record<string, string> = {};
    if (m[2]) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/g;
      let rest = m[2];
      for (let l = re.exec(rest); l; l = re.exec(rest)) labels[l[1]!] = l[2]!;
      rest = rest.replace(re, '');
      if (rest !== '') bad.push(line);
    }
    samples.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return { samples, types, bad };
}

const value = (s: Sample[], name: string, labels: Record<string, string> = {}) =>
  s.filter((x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v)).reduce((a, x) => a + x.value, 0);

async function apiKeyOf(h: TestHub, username: string, roles: string[]): Promise<string> {
  await h.hub.components.auth.createUser({ username, password: PW, roles, tenants: ['default'] });
  const c = adminClients(h.adminAddr, h.caPem, (await login(h, username, PW)).token, 'default');
  try {
    return (await call<T.CreateApiKeyRequest, T.CreateApiKeyResponse__Output>(c, c.apikeys, c.apikeys.CreateApiKey, { name: 'scrape' })).key;
  } finally { c.close(); }
}

t.test('/metrics: 401 without a key, 403 without metrics:read, 200 with it; counters move after real events and executions', async (t) => {
  const h = await startHub();
  t.teardown(() => h.close());
  await h.hub.components.iam.createRole('scraper', 'reads metrics', [{ permission: 'metrics:read', scope: '' }, { permission: 'apikeys:create', scope: '' }]);
  const goodKey = await apiKeyOf(h, 'prom', ['scraper']);
  const plainKey = await apiKeyOf(h, 'obs', ['user']);
  const loginToken = (await login(h, 'prom', PW)).token;

  // Negative: refused without a key, with a bad key, with a login token, with a key lacking the permission.
  for (const [what, headers] of [
    ['no credentials', {}],
    ['a bad API key', { authorization: 'Bearer tak1_0123456789abcdef_notarealsecretatallxxxxxxxxxxxxxxxxxxxxx' }],
    ['a login token (not an API key)', { authorization: `Bearer ${loginToken}` }],
    ['garbage', { authorization: 'Basic cHJvbTpwdw==' }],
  ] as const) {
    const r = await get(h, '/metrics', headers);
    t.equal(r.status, 401, `${what}: 401`);
    t.equal(r.body, '{"error":"unauthorized"}', `${what}: no detail in the body`);
    t.notMatch(r.body, /trellis_/, 'no metrics leak');
  }
  const forbidden = await get(h, '/metrics', { authorization: `Bearer ${plainKey}` });
  t.equal(forbidden.status, 403, 'a key without metrics:read: 403');
  t.equal(forbidden.body, '{"error":"forbidden"}', 'no detail in the body');
  t.equal((await get(h, '/metrics', { 'x-api-key': plainKey })).status, 403, 'the same through x-api-key');
  await h.hub.components.audit.flush();
  const refusals = await h.hub.components.audit.query({ methodContains: 'GET /metrics', limit: 100 });
  t.ok(refusals.some((r) => r.result === 'denied' && r.actor.endsWith('@obs')), 'the 403 is audited with the key\'s owner');
  t.notOk(JSON.stringify(refusals).includes(plainKey.slice(25)), 'never the key itself');

  const scrape = async () => {
    const r = await get(h, '/metrics', { authorization: `Bearer ${goodKey}` });
    t.equal(r.status, 200, 'a key with metrics:read: 200');
    t.match(String(r.headers['content-type']), /^text\/plain; version=0\.0\.4/);
    const p = parseExposition(r.body);
    t.same(p.bad, [], 'every line parses as the Prometheus text format');
    return p;
  };
  const before = await scrape();
  t.equal(before.types.get('trellis_events_received_total'), 'counter');
  t.equal(before.types.get('trellis_rpc_duration_seconds'), 'histogram');
  t.ok(value(before.samples, 'process_cpu_user_seconds_total') > 0, 'process metrics are there');
  t.ok(value(before.samples, 'nodejs_heap_size_used_bytes') > 0);
  const now = Date.now() / 1000;
  t.ok(value(before.samples, 'trellis_cert_expiry_timestamp_seconds', { cert: 'hub' }) > now, 'hub certificate expiry');
  t.ok(value(before.samples, 'trellis_cert_expiry_timestamp_seconds', { cert: 'ca' }) > now + 86_400 * 365, 'CA expiry');
  t.equal(value(before.samples, 'trellis_maintenance_mode'), 0);

  // Real work: an agent, a pack, a rule fired by an event, and a refused admin call.
  const out = join(h.dir, 'm.out');
  await install(h, [
    file('pack.yaml', 'name: ops\nversion: 1.0.0\ndescription: metrics test\n'),
    file('actions/mark.yaml', ['name: mark', 'runner: command', 'command: ["/bin/sh", "-c", "echo \\"$MSG\\" >> \\"$OUT\\""]',
      'parameters:', '  msg: { type: string, required: true }', '  out: { type: string, required: true }', 'env:', '  MSG: "{{ msg }}"', '  OUT: "{{ out }}"', 'timeout: 30s', ''].join('\n')),
  ]);
  await createRule(h, { name: 'on-job', trigger: 'core.job', action: { ref: 'ops.mark', parameters: { msg: 'job {{ trigger.payload.n }}', out } } });
  const agent = await h.agent();
  for (let n = 0; n < 3; n++) agent.publishEvent('core.job', { n });
  agent.publishEvent('core.other', { n: 9 });
  await waitFor(() => readLines(out).length === 3, 20_000, 'three rule executions ran');
  await waitFor(async () => (await h.hub.components.executions.list('*', { status: 'succeeded' })).length === 3, 20_000, 'recorded as succeeded');
  const obs = adminClients(h.adminAddr, h.caPem, plainKey, 'default');
  await call(obs, obs.users, obs.users.ListUsers, {}).catch(() => undefined); // PERMISSION_DENIED
  obs.close();

  const after = await scrape();
  const s = after.samples;
  t.equal(value(s, 'trellis_agents_connected', { tenant: 'default' }), 1, 'one agent connected in tenant default');
  t.ok(value(s, 'trellis_events_received_total') - value(before.samples, 'trellis_events_received_total') >= 4, 'events received moved');
  t.ok(value(s, 'trellis_events_acked_total') >= 4, 'events acked');
  t.equal(value(s, 'trellis_rule_matches_total'), 3, 'rule matches');
  t.equal(value(s, 'trellis_rule_firings_total'), 3, 'rule firings');
  t.equal(value(s, 'trellis_rule_suppressions_total'), 0, 'no suppressions');
  t.equal(value(s, 'trellis_executions', { status: 'succeeded' }), 3, 'executions by status');
  t.equal(value(s, 'trellis_event_to_action_seconds_count', { origin: 'rule' }), 3, 'event→action observed per rule execution');
  t.ok(value(s, 'trellis_event_to_action_seconds_bucket', { origin: 'rule', le: '+Inf' }) === 3, 'histogram buckets');
  t.equal(after.types.get('trellis_execution_dispatch_sync_wait_seconds'), 'histogram');
  t.equal(value(s, 'trellis_execution_dispatch_sync_wait_seconds_count'), 3, 'the wait for the history fdatasync observed per dispatch');
  const syncSum = value(s, 'trellis_execution_dispatch_sync_wait_seconds_sum');
  // Inside event→action (which is read from millisecond clocks: up to 1 ms short per observation).
  t.ok(syncSum > 0 && syncSum <= value(s, 'trellis_event_to_action_seconds_sum', { origin: 'rule' }) + 0.003, 'a part of event→action');
  t.ok(value(s, 'trellis_event_to_action_seconds_bucket', { origin: 'rule', le: '0.0005' }) <= 3, 'sub-millisecond buckets (a p99 near 10 ms can be read)');
  t.ok(s.some((x) => x.name === 'trellis_event_to_action_seconds_bucket' && x.labels.le === '0.0075'), 'a 7.5 ms bucket');
  t.ok(value(s, 'trellis_rpc_duration_seconds_count', { method: 'trellis.v1.AdminRules/CreateRule', code: 'OK' }) >= 1, 'RPC latency by method and code');
  t.ok(value(s, 'trellis_rpc_duration_seconds_count', { method: 'trellis.v1.AdminUsers/ListUsers', code: 'PERMISSION_DENIED' }) >= 1, 'refusals counted under their code');
  t.ok(s.some((x) => x.name === 'trellis_audit_queue_records'), 'audit queue depth');

  // An unknown method (grpc-js answers UNIMPLEMENTED) never becomes a label.
  const { creds, options } = secureChannel(h.adminAddr, h.caPem);
  const raw = new grpc.Client(h.adminAddr, creds, options);
  for (const path of ['/trellis.v1.AdminAgents/NoSuchMethod', `/evil.Service/${'x'.repeat(40)}`]) {
    const code = await new Promise<number>((resolve) => raw.makeUnaryRequest(path, (b: Buffer) => b, (b: Buffer) => b, Buffer.alloc(0), new grpc.Metadata(), (err) => resolve(err?.code ?? 0)));
    t.equal(code, grpc.status.UNIMPLEMENTED, `${path.slice(0, 40)}: UNIMPLEMENTED`);
  }
  raw.close();
  const last = await scrape();
  const methods = new Set(last.samples.filter((x) => x.labels.method).map((x) => x.labels.method));
  t.notOk([...methods].some((m) => /NoSuchMethod|evil/.test(m!)), 'no label for an unknown method');
  t.ok([...methods].every((m) => /^trellis\.v1\.[A-Za-z]+\/[A-Za-z]+$/.test(m!)), 'method labels are contract methods only');
  t.notOk(last.samples.some((x) => Object.values(x.labels).some((v) => v === agent.agentId)), 'never an agent id as a label');
});

t.test('/metrics from an allow-listed address needs no key; other ranges do; /healthz and /readyz', async (t) => {
  const open = await startHub({ config: { metrics: { allow: ['10.0.0.0/8', '127.0.0.1/32'] } } });
  t.teardown(() => open.close());
  const r = await get(open, '/metrics');
  t.equal(r.status, 200, '127.0.0.1 is in metrics.allow: no key needed');
  t.match(r.body, /trellis_agents_connected/);

  const closed = await startHub({ config: { metrics: { allow: ['10.0.0.0/8', '::2/128'] } } });
  t.teardown(() => closed.close());
  t.equal((await get(closed, '/metrics')).status, 401, 'loopback is not in the list: a key is needed');

  t.equal((await get(closed, '/healthz')).status, 200, '/healthz: alive');
  const ready = await get(closed, '/readyz');
  t.equal(ready.status, 200);
  t.equal(ready.body, 'ready\n');
  // Draining (what close() sets first): not ready, so a load balancer stops sending before the ports close.
  closed.hub.state = 'draining';
  const draining = await get(closed, '/readyz');
  t.equal(draining.status, 503, 'draining: 503');
  t.equal(draining.body, 'not ready: the hub is draining\n');
  closed.hub.state = 'running';
  // The store stops answering: not ready, with a one-line reason.
  await closed.hub.components.store.close();
  const notReady = await get(closed, '/readyz');
  t.equal(notReady.status, 503, 'store unreachable: 503');
  t.match(notReady.body, /^not ready: the store is unreachable: .+\n$/);
  t.equal(notReady.body.split('\n').length, 2, 'one line');
  t.equal((await get(closed, '/healthz')).status, 200, 'still alive');
});
