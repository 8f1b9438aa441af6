/**
 * Issue 10, finding 3: references are resolved only in text an author wrote. Event data (a
 * signed webhook body, an agent's event feeding an edge rule) copied by a rule into a parameter
 * or an env value reaches the process verbatim, on the hub and on the agent, and stays data when
 * the execution is re-run; a datastore value holding a reference is not expanded.
 */
import t, { type Test } from 'tap';
import * as https from 'node:https';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { startHub, waitFor, type TestHub } from './helpers/hub.js';
import { signWebhook } from '../hub/webhooks/index.js';
import { file, tenantMd, unaryT, install, createRule, listExecutions, getExecution, setKv } from './helpers/admin.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const SECRET = 'planted-api-secret-5d1f93';
const DB_HOST = 'db-internal.example-8841';

/**
 * Pack `inj`: `show` prints its env MSG and its argument ARG (argv) to stdout and appends
 * them to OUT; the rule-side templates are the author's, the values come from events.
 */
function injPack(): T.PackFile[] {
  return [
    file('pack.yaml', 'name: inj\nversion: 1.0.0\n'),
    file('actions/show.yaml', JSON.stringify({
      name: 'show', runner: 'command',
      command: ['/bin/sh', '-c', 'printf "env=%s\\narg=%s\\n" "$MSG" "$1"; if [ -n "$OUT" ]; then printf "%s|%s\\n" "$MSG" "$1" >> "$OUT"; fi', 'sh', '{{ arg }}'],
      parameters: { msg: { type: 'string', required: true }, arg: { type: 'string', default: '' }, out: { type: 'string', default: '' } },
      env: { MSG: '{{ msg }}', OUT: '{{ out }}' }, timeout: '10s',
    })),
  ];
}


/** A stream call (RunAction, RerunExecution) to its end: the execution ids it made. */
function streamIds(h: TestHub, start: (md: grpc.Metadata) => grpc.ClientReadableStream<T.ExecutionUpdate__Output>): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const ids = new Set<string>();
    const s = start(tenantMd(h));
    s.on('data', (u: T.ExecutionUpdate__Output) => { if (u.state) ids.add(u.state.id); });
    s.on('error', reject);
    s.on('end', () => resolve([...ids]));
  });
}

async function finished(h: TestHub, id: string): Promise<T.ExecutionInfo__Output> {
  await waitFor(async () => ['succeeded', 'failed', 'error', 'timeout', 'abandoned'].includes((await getExecution(h, id)).status), 15_000, `execution ${id} to finish`);
  return getExecution(h, id);
}

function postWebhook(h: TestHub, name: string, secret: string, body: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: '127.0.0.1', port: h.hub.webPort, path: `/webhooks/${name}`, method: 'POST', ca: h.caPem, servername: 'localhost', agent: false,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'x-trellis-signature': signWebhook(secret, body, Math.floor(Date.now() / 1000)) },
    }, (res) => { res.resume(); res.on('end', () => resolve(res.statusCode ?? 0)); });
    req.on('error', reject);
    req.end(body);
  });
}

function noPlantedValues(t: Test, what: string, text: string): void {
  t.notOk(text.includes(SECRET), `${what}: the secret was not resolved`);
  t.notOk(text.includes(DB_HOST), `${what}: the kv value was not resolved`);
}

t.test('a signed webhook body carrying {{ secret.x }} / {{ kv.x }}, copied by a hub rule into an env and a param, reaches the process verbatim, also on rerun', async (t) => {
  await using h = await startHub();
  await setKv(h, 'api', SECRET, true);
  await setKv(h, 'db_host', DB_HOST, false);
  await install(h, injPack());
  const agent = await h.agent();
  const hook = await unaryT<T.CreateWebhookRequest, T.CreateWebhookResponse__Output>(h, h.admin.webhooks, h.admin.webhooks.CreateWebhook, { name: 'deploy', description: '' });
  await createRule(h, {
    name: 'on-deploy', trigger: 'webhook.deploy', target: { agent: agent.agentId },
    action: { ref: 'inj.show', parameters: { msg: '{{ trigger.payload.msg }}', arg: 'x {{ trigger.payload.arg }} {{ kv.db_host }}' } },
  });

  const body = JSON.stringify({ msg: '{{ secret.api }}', arg: '{{ kv.db_host }} {{ secret.api | upper }}' });
  t.equal(await postWebhook(h, 'deploy', hook.secret, body), 202);
  await waitFor(async () => (await listExecutions(h, { rule: 'on-deploy' })).executions.length === 1, 15_000, 'the rule fired');
  const [x] = (await listExecutions(h, { rule: 'on-deploy' })).executions;
  const done = await finished(h, x!.id);
  t.equal(done.status, 'succeeded', done.error);
  const out = Buffer.from(done.output).toString();
  t.match(out, 'env={{ secret.api }}\n', 'the env value is the body text, not the secret');
  t.match(out, `arg=x {{ kv.db_host }} {{ secret.api | upper }} ${DB_HOST}\n`, 'the param holds the body text; the rule author\'s own {{ kv.db_host }} is resolved');
  t.notOk(out.includes('****'), 'nothing was resolved (and so nothing masked)');
  t.notOk(out.includes(SECRET));

  // A rerun of the rule's execution must not turn the event data into templates either.
  const again = await streamIds(h, (md) => h.admin.executions.RerunExecution({ id: x!.id, follow: true }, md));
  t.equal(again.length, 1);
  const re = await finished(h, again[0]!);
  t.equal(re.status, 'succeeded', re.error);
  t.equal(Buffer.from(re.output).toString(), out, 'the rerun prints the same literal text');

  // A webhook body aimed at the env alone, with a kv reference.
  t.equal(await postWebhook(h, 'deploy', hook.secret, JSON.stringify({ msg: 'host={{ kv.db_host }}', arg: '' })), 202);
  await waitFor(async () => (await listExecutions(h, { rule: 'on-deploy' })).executions.length === 2, 15_000, 'the rule fired again');
  const third = (await listExecutions(h, { rule: 'on-deploy' })).executions.find((e) => e.id !== x!.id);
  const d3 = await finished(h, third!.id);
  t.match(Buffer.from(d3.output).toString(), 'env=host={{ kv.db_host }}\n');
  noPlantedValues(t, 'history', JSON.stringify((await listExecutions(h, {})).executions.map((e) => Buffer.from(e.parametersJson).toString())));
});

t.test('an event on the agent carrying {{ secret.x }} / {{ kv.x }}, copied by an edge rule, reaches the process verbatim', async (t) => {
  await using h = await startHub();
  await setKv(h, 'api', SECRET, true);
  await setKv(h, 'db_host', DB_HOST, false);
  await install(h, injPack());
  const out = join(h.dir, 'edge.out');
  // The rule itself uses both values, so the hub seals them to the agent: an injected
  // reference would find them.
  await createRule(h, {
    name: 'edge-show', trigger: 'test.note', target: 'local',
    action: { ref: 'inj.show', parameters: { msg: '{{ trigger.payload.msg }} / {{ kv.db_host }}', arg: '{{ trigger.payload.arg }}', out } },
  });
  await createRule(h, {
    name: 'edge-uses-secret', trigger: 'test.never', target: 'local',
    action: { ref: 'inj.show', parameters: { msg: '{{ secret.api }}', out } },
  });
  const agent = await h.agent();
  await waitFor(() => agent.edge.ruleNames.length === 2, 10_000, 'edge rules on the agent');
  agent.publishEvent('test.note', { msg: '{{ secret.api }}', arg: '{{ kv.db_host }}' });
  await waitFor(() => existsSync(out) && readFileSync(out, 'utf8').includes('\n'), 10_000, 'the edge action ran');
  const line = readFileSync(out, 'utf8');
  t.equal(line, `{{ secret.api }} / ${DB_HOST}|{{ kv.db_host }}\n`, 'the process got the event text verbatim; only the author\'s reference was resolved');
  noPlantedValues(t, 'the process input', line.replace(DB_HOST, ''));
  // The report reaches the hub with the same (literal) output.
  await waitFor(async () => (await listExecutions(h, { rule: 'edge-show' })).executions.length === 1, 15_000, 'edge execution recorded');
  const [x] = (await listExecutions(h, { rule: 'edge-show' })).executions;
  const rec = await getExecution(h, x!.id);
  t.equal(rec.status, 'succeeded', rec.error);
  t.match(Buffer.from(rec.output).toString(), 'env={{ secret.api }} / ');
});

t.test('a datastore value holding {{ kv.other }} or {{ secret.x }} is not expanded', async (t) => {
  await using h = await startHub();
  await setKv(h, 'api', SECRET, true);
  await setKv(h, 'db_host', DB_HOST, false);
  await setKv(h, 'nested', 'a={{ kv.db_host }} b={{ secret.api }}', false);
  await install(h, injPack());
  const agent = await h.agent();
  const ids = await streamIds(h, (md) => h.admin.executions.RunAction({ action: 'inj.show', agentId: agent.agentId!, selector: {}, parameters: { msg: '{{ kv.nested }}', arg: '{{ kv.nested }}' }, follow: true }, md));
  const done = await finished(h, ids[0]!);
  t.equal(done.status, 'succeeded', done.error);
  t.equal(Buffer.from(done.output).toString(), 'env=a={{ kv.db_host }} b={{ secret.api }}\narg=a={{ kv.db_host }} b={{ secret.api }}\n');
  // And through a rule: the author's {{ kv.nested }} opens once, its content stays text.
  await createRule(h, { name: 'nested', trigger: 'core.test_go', target: { agent: agent.agentId }, action: { ref: 'inj.show', parameters: { msg: '{{ kv.nested }}' } } });
  agent.publishEvent('core.test_go', {});
  await waitFor(async () => (await listExecutions(h, { rule: 'nested' })).executions.length === 1, 15_000, 'the rule fired');
  const r = await finished(h, (await listExecutions(h, { rule: 'nested' })).executions[0]!.id);
  t.match(Buffer.from(r.output).toString(), 'env=a={{ kv.db_host }} b={{ secret.api }}\n');
});

t.test('trellis run --env: a datastore value holding a reference is substituted once, never scanned again', async (t) => {
  await using h = await startHub();
  await setKv(h, 'api', SECRET, true);
  await setKv(h, 'holder', '{{ secret.api }}', false);
  const agent = await h.agent();
  const r = await new Promise<{ out: string; status: string }>((resolve, reject) => {
    let out = '';
    let status = '';
    const s = h.admin.runs.Run({ agentId: agent.agentId!, selector: {}, argv: ['sh', '-c', 'echo "${X%%|*}"; echo "${X#*|}"'], env: { X: '{{ kv.holder }}|{{ secret.api }}' }, cwd: '', timeoutMs: 10_000 }, tenantMd(h));
    s.on('data', (u: T.RunUpdate__Output) => { if (u.output) out += String(u.output.data); if (u.finished) status = u.finished.status; });
    s.on('error', reject);
    s.on('end', () => resolve({ out, status }));
  });
  t.equal(r.status, 'succeeded');
  t.equal(r.out, '{{ secret.api }}\n****\n', 'the kv value is text; only the caller\'s own reference opened the secret');
});
