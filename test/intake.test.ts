/**
 * What agents send the hub is data the hub judges (issue 10, findings 4, 11 and 15): which
 * event types an agent may publish, the facts of its Hello, and its edge-execution reports.
 * Real hub, real enrolled agents (or a raw mTLS client holding an enrolled agent's certificate),
 * the real CLI in a child process.
 */
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { existsSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ulid } from 'ulid';
import { startHub, tempDir, waitFor, type TestHub } from './helpers/hub.js';
import { runCli } from './helpers/cli.js';
import { v1 } from '../common/proto.js';
import { CLIENT_OPTIONS } from '../common/grpc-options.js';
import { cleanText } from '../common/text.js';
import { writeOutput } from '../cli/format.js';
import { agentPaths } from '../agent/identity.js';
import { hubPaths } from '../hub/paths.js';
import { agentMayPublish, type HubEvent } from '../hub/events/index.js';
import { file, markAction, install as installPack, createRule, getAgent, listExecutions, readLines as lines } from './helpers/admin.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

/** Pack `ops`: `mark` appends MSG to OUT; a file sensor with its own trigger `ops.custom`; an edge rule. */
function opsPack(dir: string): T.PackFile[] {
  return [
    file('pack.yaml', 'name: ops\nversion: 1.0.0\ndescription: test pack\n'),
    markAction('append a line to a file'),
    file('sensors/custom.yaml', `name: custom\ndescription: a flag file\ntype: file\ntrigger: ops.custom\ninterval: 1s\nconfig: { path: ${JSON.stringify(join(dir, 'never'))} }\n`),
    file('rules/on_flag.yaml', [
      'name: on_flag', 'trigger: ops.custom',
      'action:', '  ref: ops.mark', '  parameters:', '    msg: edge', `    out: ${JSON.stringify(join(dir, 'edge.out'))}`,
      'target: local', '',
    ].join('\n')),
  ];
}

const install = (h: TestHub) => installPack(h, opsPack(h.dir));

t.test('an agent publishing webhook.deploy (or another pack\'s or a hub type) fires no hub rule on another agent; the refusal is counted and logged', async (t) => {
  await using h = await startHub();
  await install(h);
  const victim = await h.agent();
  const attacker = await h.agent();
  const out = (n: string) => join(h.dir, `${n}.out`);
  const rule = (name: string, trigger: string) => createRule(h, {
    name, trigger, action: { ref: 'ops.mark', parameters: { msg: name, out: out(name) } }, target: { agent: victim.agentId },
  });
  await rule('deploy', 'webhook.deploy');
  await rule('billing', 'billing.charge');
  await rule('audit', 'trellis.audit');
  await rule('custom', 'ops.custom');
  await rule('core', 'core.thing');
  const seen: HubEvent[] = [];
  h.hub.components.events.subscribe((b) => { for (const e of b) if (e.agentId === attacker.agentId) seen.push(e); });

  for (const type of ['webhook.deploy', 'billing.charge', 'trellis.audit']) attacker.publishEvent(type, { ref: 'main' });
  attacker.publishEvent('ops.custom', { path: 'x' }); // its configured sensor's trigger: allowed
  attacker.publishEvent('core.thing', {}); // core.*: allowed
  await waitFor(() => lines(out('custom')).length === 1 && lines(out('core')).length === 1, 15_000, 'the allowed events fired their rules');
  await waitFor(() => attacker.channel.backlog === 0, 10_000, 'every batch acknowledged (refused ones too: the outbox does not retry them)');

  // (ops.custom also fired the pack's edge rule on the attacker: its report, trellis.execution, is allowed.)
  t.same(seen.map((e) => e.type).filter((x) => x !== 'trellis.execution').sort(), ['core.thing', 'ops.custom'], 'only the allowed types were published to the hub\'s listeners');
  for (const n of ['deploy', 'billing', 'audit']) t.notOk(existsSync(out(n)), `the ${n} rule did not fire on the victim`);
  t.equal(h.hub.components.events.refusedCount(attacker.agentId!), 3);
  t.equal(h.hub.components.events.refusedCount(victim.agentId!), 0);
  t.equal(attacker.channel.stats.eventsRefusedByHub, 3, 'the agent learns from the ack that they were refused');
  t.ok(h.agentLogLines().some((l) => l.includes('the hub refused events') && l.includes('webhook.deploy')), 'and says so in its log');
  const info = await getAgent(h, attacker.agentId!);
  t.equal(Number(info.eventsRefused), 3, '`agents show` reports the refused events');
  const logged = h.logLines.filter((l) => l.includes('agent published event types it may not'));
  t.equal(logged.length, 1, 'logged once (rate-limited per agent)');
  t.match(logged[0], attacker.agentId!);
  t.match(logged[0], /webhook\.deploy/);

  // The same rule fires for a webhook event published by the hub itself (the web port's path).
  h.hub.components.events.publish([{ id: ulid(), type: 'webhook.deploy', payload: Buffer.from('{}'), timeMs: Date.now(), agentId: '', tenant: 'default' }]);
  await waitFor(() => lines(out('deploy')).length === 1, 15_000, 'the hub-originated webhook.deploy fired the rule');
});

t.test('a forged edge-execution report (rule never given, other action, huge id, future or ancient time, non-final status) is refused and not in `executions list`', async (t) => {
  await using h = await startHub();
  await install(h);
  const agent = await h.agent();
  await waitFor(() => agent.edge.ruleNames.includes('ops.on_flag'), 10_000, 'edge config with ops.on_flag');
  const now = Date.now();
  const report = (over: Record<string, unknown>) => ({
    executionId: ulid().toLowerCase(), rule: 'ops.on_flag', action: 'ops.mark', triggerEventId: ulid(), parameters: { msg: 'edge' },
    status: 'succeeded', exitCode: 0, error: '', startedMs: now - 2000, finishedMs: now - 1000, output: 'forged\n', outputTruncated: false, ...over,
  });
  const forged = [
    report({ rule: 'ops.never_given' }),
    report({ rule: 'someone.elses_rule', action: 'core.command' }),
    report({ action: 'ops.other' }),
    report({ executionId: 'a'.repeat(64) }),
    report({ executionId: 'x'.repeat(4000) }),
    report({ startedMs: now + 86_400_000, finishedMs: now + 86_400_000 + 10 }),
    report({ startedMs: 1, finishedMs: 2 }),
    report({ status: 'running' }),
    report({ status: 'requested' }),
    report({ finishedMs: now - 3000 }), // finished before it started
  ];
  const good = report({ output: 'genuine\n' });
  const send = (p: object) => agent.channel.publish([{ id: ulid(), type: 'trellis.execution', payloadJson: Buffer.from(JSON.stringify(p)), timeMs: Date.now() }]);
  for (const p of forged) send(p);
  send(good);
  await waitFor(async () => (await listExecutions(h, { agentId: agent.agentId! })).executions.length >= 1, 15_000, 'the genuine report recorded');
  await waitFor(() => agent.channel.backlog === 0, 10_000, 'all reports acknowledged');
  const listed = (await listExecutions(h, { agentId: agent.agentId! })).executions;
  t.same(listed.map((x) => x.id), [good.executionId], 'only the genuine report is in the history');
  t.equal(h.hub.components.executions.edgeRefusedCount(agent.agentId!), forged.length);
  t.equal(Number((await getAgent(h, agent.agentId!)).edgeReportsRefused), forged.length, '`agents show` reports them');
  t.ok(h.logLines.some((l) => l.includes('edge execution report refused') && l.includes(agent.agentId!)), 'the refusal is logged');
  await using home = await tempDir();
  const env = { TRELLIS_HOME: home.path, TRELLIS_PASSWORD: 'test-admin-password-1' };
  t.equal((await runCli(['login', '--hub', h.adminAddr, '--user', 'admin', '--ca-fingerprint', h.hub.components.pki.caFingerprint], env)).code, 0);
  t.match((await runCli(['agents', 'show', agent.agentId!], env)).out, new RegExp(`refused: +0 event\\(s\\), ${forged.length} edge report\\(s\\)`), '`trellis agents show` prints the count');
  t.notOk(h.logLines.some((l) => l.includes('x'.repeat(200))), 'without echoing the forged id');
});

/** An AgentChannel stream driven by hand with an enrolled agent's certificate. */
async function rawHello(h: TestHub, dataDir: string, hello: T.Hello): Promise<{ welcome: T.Welcome__Output | undefined; close(): void }> {
  const p = agentPaths(dataDir);
  const creds = grpc.credentials.createSsl(Buffer.from(await readFile(p.ca, 'utf8')), Buffer.from(await readFile(p.key, 'utf8')), Buffer.from(await readFile(p.cert, 'utf8')));
  const client = new v1.AgentChannel(h.agentAddr, creds, CLIENT_OPTIONS) as unknown as grpc.Client & {
    Connect(md: grpc.Metadata, opts: grpc.CallOptions): grpc.ClientDuplexStream<T.AgentMessage, T.HubMessage__Output>;
  };
  const c = client.Connect(new grpc.Metadata(), { deadline: Date.now() + 60_000 });
  const welcome = await new Promise<T.Welcome__Output | undefined>((resolve) => {
    c.on('data', (m: T.HubMessage__Output) => { if (m.welcome) resolve(m.welcome); });
    c.on('error', () => resolve(undefined));
    c.write({ hello });
  });
  return { welcome, close: () => { c.cancel(); client.close(); } };
}

const ESC = /[\x1b\x07\x9b\x9d]/; // eslint-disable-line no-control-regex

t.test('an agent with a 1 MB hostname full of escape sequences: stored bounded, `agents list` and `agents show` work and print no control character', async (t) => {
  await using h = await startHub();
  const { dataDir, agentId } = await h.enroll();
  const hostname = '\x1b]0;owned-title\x07\x1b[2J\x1b[31m' + 'h'.repeat(1024 * 1024) + '\x1b[0m';
  const raw = await rawHello(h, dataDir, {
    facts: { hostname, os: 'linux\x1b[1A\x1b[2Kfake line', arch: 'x64\u202e', osRelease: 'r'.repeat(100_000), cpus: 4, memoryBytes: 1 << 30, agentVersion: '1.0\x9b31m' },
    labels: {},
  });
  t.teardown(() => raw.close());
  t.ok(raw.welcome, 'welcomed: bad facts are cleaned, not a reason to refuse the agent');
  await h.hub.components.store.flush();
  const state = hubPaths(h.dataDir).store;
  t.ok(statSync(state).size < 64 * 1024, `state.json stays small (${statSync(state).size} bytes)`);
  const info = await getAgent(h, agentId);
  t.ok(info.facts!.hostname.length <= 253, 'hostname truncated to 253 characters');
  t.ok(info.facts!.osRelease.length <= 1024, 'other facts to 1 KiB');
  for (const v of [info.hostname, info.facts!.hostname, info.facts!.os, info.facts!.arch, info.facts!.agentVersion]) t.notMatch(v, ESC, 'no control character stored');
  t.ok(h.logLines.some((l) => l.includes('agent facts cleaned') && l.includes(agentId) && l.includes('truncated to 253')), 'the cleaning is logged');

  await using home = await tempDir();
  const env = { TRELLIS_HOME: home.path, TRELLIS_PASSWORD: 'test-admin-password-1' };
  const login = await runCli(['login', '--hub', h.adminAddr, '--user', 'admin', '--ca-fingerprint', h.hub.components.pki.caFingerprint], env);
  t.equal(login.code, 0, login.err);
  const list = await runCli(['agents', 'list'], env);
  t.equal(list.code, 0, list.err);
  t.match(list.out, agentId);
  t.match(list.out, /hhhhhhhh/);
  t.notMatch(list.out, ESC, '`agents list` prints no escape sequence');
  t.ok(list.out.length < 4096, 'and stays short');
  const show = await runCli(['agents', 'show', agentId], env);
  t.equal(show.code, 0, show.err);
  t.notMatch(show.out, ESC, '`agents show` prints no escape sequence');
  t.match(show.out, /linux.*fake line/, 'the text around the sequence is kept');
  const json = await runCli(['agents', 'show', agentId, '--json'], env);
  t.notMatch(json.out, ESC, '--json output escapes them (JSON \\u forms)');
});

t.test('cleanText: escape sequences removed, controls visible, JSON kept lossless', async (t) => {
  t.equal(cleanText('a\x1b[31mred\x1b[0m'), 'ared');
  t.equal(cleanText('x\x1b]0;title\x07y'), 'xy', 'OSC up to BEL');
  t.equal(cleanText('x\x1b]8;;http://e\x1b\\link\x1b]8;;\x1b\\y'), 'xlinky', 'OSC 8 hyperlinks up to ST');
  t.equal(cleanText('a\x9b2Jb'), 'a\\u009b2Jb', '8-bit CSI made visible and inert');
  t.equal(cleanText('a\u202eb'), 'a\\u202eb', 'bidi override made visible');
  t.equal(cleanText('a\rb\nc\td'), 'a\uFFFDb\uFFFDc\uFFFDd', 'one line: CR, LF, TAB replaced');
  t.equal(cleanText('a\r\nb\nc\td\re', { multiline: true }), 'a\nb\nc\td\uFFFDe', 'multi-line keeps LF and TAB');
  const v = { s: 'a\x1b[2J\x9b\u2028\u202eb\x00' };
  t.same(JSON.parse(cleanText(JSON.stringify(v))), v, 'JSON text passes through losslessly');
  t.equal(cleanText('plain text, ünïcödé'), 'plain text, ünïcödé');
});

t.test('the CLI cleans remote metadata it prints (execution error, rule) even when the hub stored it as sent; program output is cleaned on a terminal unless --raw', async (t) => {
  await using h = await startHub();
  await install(h);
  const agent = await h.agent();
  await waitFor(() => agent.edge.ruleNames.includes('ops.on_flag'), 10_000, 'edge config with ops.on_flag');
  const id = ulid().toLowerCase();
  const now = Date.now();
  agent.channel.publish([{ id: ulid(), type: 'trellis.execution', timeMs: now, payloadJson: Buffer.from(JSON.stringify({
    executionId: id, rule: 'ops.on_flag', action: 'ops.mark', triggerEventId: ulid(), parameters: { msg: 'edge' }, status: 'failed', exitCode: 1,
    error: 'boom\x1b]0;owned\x07\x1b[2J\x1b[1A\x9b2Kcleared', startedMs: now - 1000, finishedMs: now - 500, output: 'out \x1b[31mred\x1b[0m\n', outputTruncated: false,
  })) }]);
  await waitFor(async () => (await listExecutions(h, { agentId: agent.agentId! })).executions.length === 1, 15_000, 'the report recorded');
  await using home = await tempDir();
  const env = { TRELLIS_HOME: home.path, TRELLIS_PASSWORD: 'test-admin-password-1' };
  t.equal((await runCli(['login', '--hub', h.adminAddr, '--user', 'admin', '--ca-fingerprint', h.hub.components.pki.caFingerprint], env)).code, 0);
  const show = await runCli(['executions', 'show', id], env);
  t.equal(show.code, 0, show.err);
  const [meta, output] = show.out.split('--- output');
  t.match(meta, /error: +boom.*cleared/, 'the error is shown');
  t.notMatch(meta, ESC, 'with no escape sequence or control character');
  t.match(output, /\x1b\[31mred/, 'program output to a pipe is the bytes as run (no terminal reads it)');

  // To a terminal: cleaned, unless --raw.
  const tty = () => { const chunks: string[] = []; return { chunks, s: { isTTY: true, write: (d: string | Uint8Array) => { chunks.push(String(d)); return true; } } as unknown as NodeJS.WriteStream }; };
  const a = tty();
  writeOutput(a.s, Buffer.from('out \x1b[31mred\x1b[0m\x1b]0;t\x07\n'));
  t.equal(a.chunks.join(''), 'out red\n', 'a terminal gets the output without escape sequences');
  const b = tty();
  writeOutput(b.s, Buffer.from('out \x1b[31mred\n'), { raw: true });
  t.equal(b.chunks.join(''), 'out \x1b[31mred\n', '--raw passes it through');
});

t.test('the source policy: core.*, trellis.execution and the configured sensor triggers; never webhook.* or another trellis.* type', async (t) => {
  const sensors = new Set(['ops.custom', 'webhook.sneaky', 'trellis.audit']); // the last two: a pack named webhook/trellis
  for (const type of ['core.cpu', 'core.anything', 'trellis.execution', 'ops.custom']) t.ok(agentMayPublish(type, sensors), `${type} allowed`);
  for (const type of ['webhook.deploy', 'webhook.sneaky', 'trellis.audit', 'ops.other', 'billing.charge', 'core', 'corex.y']) t.notOk(agentMayPublish(type, sensors), `${type} refused`);
  t.notOk(agentMayPublish('ops.custom', new Set()), 'a trigger of a sensor configured on another agent is refused');
});
