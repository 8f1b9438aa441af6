/**
 * Found by the soak (bench/soak): what a hub kill -9 must not lose or repeat.
 *  - An agent's events are acknowledged only once the executions they caused are on disk (a
 *    kill before that used to lose the event: acknowledged, but its execution never written).
 *  - An ActionRequest goes out only once its `scheduled` line (and the `requested` line with
 *    the idempotency key, on the same line when both changes went out in one write) is on disk
 *    (a kill used to leave actions that ran unknown to history,
 *    and an event sent again could run its action a second time).
 *  - A request the hub accepted but had not sent survives a restart (it used to end in `error`)
 *    when it needs no datastore value; one that needs a secret still ends in `error`.
 */
import t from 'tap';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { captureLogger, startHub, tempDir, waitFor } from './helpers/hub.js';
import { createRule, file, install, markAction, readLines, setSecret } from './helpers/admin.js';
import { HubChannel } from '../agent/channel.js';
import { agentPaths, loadIdentity, readState } from '../agent/identity.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

/** Every state line of the execution history on disk now (synchronous: what a kill -9 would leave). */
function onDisk(dataDir: string): Array<{ r: { id: string; status: string; triggerEventId: string }; dk?: string }> {
  const dir = join(dataDir, 'executions');
  const out: Array<{ r: { id: string; status: string; triggerEventId: string }; dk?: string }> = [];
  for (const name of readdirSync(dir).filter((n) => /^\d{12}\.jsonl$/.test(n))) {
    for (const line of readFileSync(join(dir, name), 'utf8').split('\n')) if (line) out.push(JSON.parse(line));
  }
  return out;
}

const PACK = [file('pack.yaml', 'name: dd\nversion: 1.0.0\ndescription: durable dispatch\n'),
  file('actions/noop.yaml', 'name: noop\ndescription: nothing\nrunner: command\ncommand: ["true", "{{ t }}"]\nparameters:\n  t: { type: string, default: "" }\n')];

t.test('events are acknowledged after their executions are on disk; requests go out after their scheduled line is', async (t) => {
  await using h = await startHub();
  await install(h, PACK);
  await createRule(h, { name: 'dd-fire', trigger: 'core.dd', action: { ref: 'dd.noop', parameters: { t: '{{ trigger.id }}' } }, target: { agent: '{{ trigger.agent }}' } });
  const { dataDir } = await h.enroll();
  const paths = agentPaths(dataDir);
  const id = loadIdentity({ key: paths.key, cert: paths.cert, ca: paths.ca }, paths);
  const atAck: string[][] = [];
  const atAction: Array<{ id: string; lines: Array<{ status: string; dk?: string }> }> = [];
  const ch: HubChannel = new HubChannel({
    target: readState(paths).hub,
    credentials: () => ({ caPem: id.caPem, keyPem: id.keyPem, certPem: id.certPem }),
    hello: () => ({ facts: { hostname: 'dd' }, labels: {} }),
    onAction: (a: T.ActionRequest__Output) => {
      atAction.push({ id: a.executionId, lines: onDisk(h.dataDir).filter((l) => l.r.id === a.executionId).map((l) => ({ status: l.r.status, dk: l.dk })) });
      ch.send({ result: { executionId: a.executionId, status: 'succeeded', exitCode: 0, error: '', startedMs: Date.now(), finishedMs: Date.now() } });
    },
    onCancel: () => undefined,
    log: captureLogger().log,
    maxBackoffMs: 500,
  });
  ch.on('acked', () => { atAck.push(onDisk(h.dataDir).map((l) => l.r.triggerEventId)); });
  t.teardown(() => ch.close());
  ch.start();
  await waitFor(() => ch.state === 'ready', 10_000, 'ready');
  const ids = ['dd-1', 'dd-2', 'dd-3'];
  for (const eid of ids) {
    ch.publish([{ id: eid, type: 'core.dd', payloadJson: Buffer.from('{}'), timeMs: Date.now() }]);
    await waitFor(() => atAck.length === ids.indexOf(eid) + 1, 10_000, `ack of ${eid}`);
  }
  ids.forEach((eid, i) => t.ok(atAck[i]!.includes(eid), `when ${eid} was acknowledged, its execution was on disk`));
  await waitFor(() => atAction.length === 3, 10_000, 'three action requests');
  for (const a of atAction) {
    t.ok(a.lines.some((l) => l.status === 'scheduled'), `execution ${a.id}: its scheduled line was on disk when the request arrived`);
    // requested and scheduled in one history write are one line (the scheduled one): the key is on it.
    t.ok(a.lines.some((l) => (l.status === 'requested' || l.status === 'scheduled') && /^dd-fire\|dd-\d\|/.test(l.dk ?? '')), 'and its idempotency key');
  }
});

t.test('a request accepted but not sent survives a restart when it needs no datastore value', async (t) => {
  await using h = await startHub();
  await using out = await tempDir();
  await install(h, [file('pack.yaml', 'name: dd\nversion: 1.0.0\ndescription: durable dispatch\n'), markAction('appends a line')]);
  await setSecret(h, 'dd/secret', 'a-secret-value');
  const { dataDir, agentId } = await h.enroll(); // enrolled, not started: requests wait for it
  const x = h.hub.components.executions;
  const action = h.hub.components.packs.action('default', 'dd.mark')!;
  const target = join(out.path, 'marks');
  const [plain] = await x.request({ tenant: 'default', action, agentIds: [agentId], parameters: { msg: 'plain', out: target }, requestedBy: 'admin' });
  const [secret] = await x.request({ tenant: 'default', action, agentIds: [agentId], parameters: { msg: '{{ secret.dd/secret }}', out: target }, requestedBy: 'admin', kvCaller: { username: 'admin', isAdmin: true } });
  t.equal(plain!.status, 'requested');
  t.equal(secret!.status, 'requested');
  await h.restart();
  const x2 = h.hub.components.executions;
  t.equal((await x2.get('*', plain!.id)).status, 'requested', 'the plain request waits for its agent again');
  const s = await x2.get('*', secret!.id);
  t.equal(s.status, 'error', 'the request that needs a secret cannot be rendered again');
  t.match(s.error, /before it was sent to the agent; run it again/);
  await using agent = await h.agent({ dataDir });
  t.ok(agent);
  await waitFor(async () => (await x2.get('*', plain!.id)).status === 'succeeded', 20_000, 'the plain request ran after the restart');
  t.same(readLines(target), ['plain'], 'it ran once; the secret one never ran');
});
