/**
 * Issue 10, findings 1 and 12.
 * 1: a validation error never shows a value that came from a reference or a value of a
 *    `secret: true` parameter — not in the CLI's output, the hub log, the audit log, the
 *    execution history, nor (edge rules) the agent's log, outbox and reports.
 * 12: a secret spliced into a larger env or header value on a hub-dispatched run is masked in
 *    the output by itself (and in base64), not only as the whole value.
 */
import t, { type Test } from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import { runCli } from './helpers/cli.js';
import { startHub, login, tempDir, waitFor, ADMIN_PASSWORD, type TestHub } from './helpers/hub.js';
import { writeProfile } from '../cli/profile.js';
import { file, tenantMd, install, createRule, listExecutions, getExecution, setSecret, walk } from './helpers/admin.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

/** Pack `sec`: `num` takes typed parameters; `bearer` splices a secret into an env value. */
function secPack(): T.PackFile[] {
  return [
    file('pack.yaml', 'name: sec\nversion: 1.0.0\n'),
    file('actions/num.yaml', JSON.stringify({
      name: 'num', runner: 'command', command: ['/bin/sh', '-c', 'echo "n=$N level=$LEVEL"'],
      parameters: {
        n: { type: 'integer', default: 1 }, level: { type: 'string', enum: ['low', 'high'], default: 'low' },
        pin: { type: 'integer', secret: true },
      },
      env: { N: '{{ n }}', LEVEL: '{{ level }}', PIN: '{{ pin }}' }, timeout: '10s',
    })),
    file('actions/bearer.yaml', JSON.stringify({
      name: 'bearer', runner: 'command',
      command: ['/bin/sh', '-c', 'T="${TOKEN#Bearer }"; echo "token=$T"; printf %s "$T" | base64; echo "whole=$TOKEN"'],
      env: { TOKEN: 'Bearer {{ secret.tok }}' }, timeout: '10s',
    })),
  ];
}


/** The value and the encodings a careless message or file could carry it in. */
const formsOf = (v: string) => [v, JSON.stringify(v), Buffer.from(v).toString('base64').replace(/=+$/, ''), Buffer.from(v).toString('hex')];

/** Fails for every file under root (and every text given) holding any form of any planted value. */
function assertNowhere(t: Test, planted: string[], root: string, texts: Record<string, string>): void {
  const forms = planted.flatMap(formsOf);
  let scanned = 0;
  for (const f of walk(root)) {
    scanned++;
    const text = readFileSync(f).toString('latin1');
    for (const v of forms) if (text.includes(v)) t.fail(`a planted secret is in ${f.slice(root.length)}`);
  }
  for (const [what, text] of Object.entries(texts)) for (const v of forms) if (text.includes(v)) t.fail(`a planted secret is in ${what}`);
  t.ok(scanned > 10, `scanned ${scanned} files`);
}

t.test('trellis run PACK.ACTION with a secret of the wrong type (integer, enum, secret parameter) names the secret, never its value, anywhere', async (t) => {
  const h = await startHub();
  t.teardown(() => h.close());
  await using home = await tempDir();
  const NUM = 'planted-num-secret-71c2e9';
  const PIN = 'planted-literal-pin-3b8a';
  await setSecret(h, 'numsec', NUM);
  await install(h, secPack());
  const agent = await h.agent();
  const env = { TRELLIS_HOME: home.path, TRELLIS_TENANT: '' };
  const l = await login(h, 'admin', ADMIN_PASSWORD);
  await writeProfile({ hub: h.adminAddr, caPem: h.caPem, username: 'admin', token: l.token, expiresAtMs: Number(l.expiresAtMs), tenant: 'default' }, { TRELLIS_HOME: home.path });

  const cli: Record<string, string> = {};
  const integer = await runCli(['run', 'sec.num', '--agent', agent.agentId!, 'n={{ secret.numsec }}'], env);
  t.not(integer.code, 0, 'refused');
  t.match(integer.err, /parameter "n": got a value from secret numsec that is not an integer/);
  const enumCase = await runCli(['run', 'sec.num', '--agent', agent.agentId!, 'level={{ secret.numsec }}'], env);
  t.not(enumCase.code, 0, 'refused');
  t.match(enumCase.err, /parameter "level": got a value from secret numsec that is not one of "low", "high"/);
  const literal = await runCli(['run', 'sec.num', '--agent', agent.agentId!, `pin=${PIN}`], env);
  t.not(literal.code, 0, 'refused');
  t.match(literal.err, /parameter "pin": got a secret value that is not an integer/);
  const mixed = await runCli(['run', 'sec.num', '--agent', agent.agentId!, 'n=12{{ secret.numsec }}'], env);
  t.not(mixed.code, 0, 'refused');
  t.match(mixed.err, /parameter "n": got a value from secret numsec that is not an integer/);
  for (const [k, r] of Object.entries({ integer, enumCase, literal, mixed })) { cli[`cli ${k} stdout`] = r.out; cli[`cli ${k} stderr`] = r.err; }
  // The same parameters through a hub rule: the rule's error goes to the hub log.
  await createRule(h, { name: 'wrong-type', trigger: 'core.test_go', target: { agent: agent.agentId }, action: { ref: 'sec.num', parameters: { n: '{{ secret.numsec }}' } } });
  agent.publishEvent('core.test_go', {});
  await waitFor(() => h.logLines.some((l) => l.includes('wrong-type') && l.includes('got a value from secret numsec that is not an integer')), 10_000, 'the rule error logged');

  await h.hub.components.audit.flush();
  const audit = await h.hub.components.audit.query({ limit: 1000 });
  t.ok(audit.some((r) => JSON.stringify(r).includes('not an integer')), 'the refusal is audited');
  await h.stop(); // flushes history, audit and the store to disk
  assertNowhere(t, [NUM, PIN], h.dir, { ...cli, 'the hub log': h.logLines.join('\n') });
});

t.test('an edge rule whose parameter is a secret of the wrong type: the secret is in no agent log line, outbox record or history', async (t) => {
  const h = await startHub();
  t.teardown(() => h.close());
  const NUM = 'planted-edge-secret-c40d17';
  await setSecret(h, 'numsec', NUM);
  await install(h, secPack());
  await createRule(h, { name: 'edge-wrong', trigger: 'core.test_edge', target: 'local', action: { ref: 'sec.num', parameters: { n: '{{ secret.numsec }}' } } });
  await createRule(h, { name: 'edge-enum', trigger: 'core.test_edge', target: 'local', action: { ref: 'sec.num', parameters: { level: '{{ secret.numsec }}' } } });
  // The test agent logs for real, to a file in the test directory (scanned below).
  const logFile = join(h.dir, 'agent.log');
  const log = pino({ level: 'debug' }, pino.destination({ dest: logFile, sync: true }));
  const agent = await h.agent({ log });
  await waitFor(() => agent.edge.ruleNames.length === 2, 10_000, 'edge rules on the agent');
  agent.publishEvent('core.test_edge', { n: 1 });
  await waitFor(async () => (await listExecutions(h, {})).executions.filter((x) => x.edge).length === 2, 15_000, 'both edge runs reported');
  for (const x of (await listExecutions(h, {})).executions) {
    const rec = await getExecution(h, x.id);
    t.equal(rec.status, 'error');
    t.match(rec.error, /got a value from secret numsec that is not (an integer|one of)/, 'the error names the secret');
  }
  t.match(readFileSync(logFile, 'utf8'), /edge rule could not run its action/, 'the agent logged the failure');
  await agent.close();
  await h.stop();
  assertNowhere(t, [NUM], h.dir, { 'the hub log': h.logLines.join('\n') });
});

/** A Run stream (what `trellis run -- CMD` shows) to its end. */
function run(h: TestHub, req: Partial<T.RunRequest>): Promise<{ out: string; finished?: T.RunFinished__Output; error?: grpc.ServiceError }> {
  return new Promise((resolve) => {
    let out = '';
    let finished: T.RunFinished__Output | undefined;
    const s = h.admin.runs.Run({ timeoutMs: 10_000, ...req }, tenantMd(h));
    s.on('data', (u: T.RunUpdate__Output) => { if (u.output) out += String(u.output.data); if (u.finished) finished = u.finished; });
    s.on('error', (error: grpc.ServiceError) => resolve({ out, finished, error }));
    s.on('end', () => resolve({ out, finished }));
  });
}

t.test('a secret spliced into a larger env value is masked by itself in the output of hub-dispatched runs (command and pack action)', async (t) => {
  await using h = await startHub();
  const P = 'planted-splice-pass-9e44a0';
  const TOK = 'planted-bearer-tok-17fd2c';
  await setSecret(h, 'p', P);
  await setSecret(h, 'tok', TOK);
  await install(h, secPack());
  const agent = await h.agent();
  const b64 = (v: string) => Buffer.from(v).toString('base64');

  const r = await run(h, {
    agentId: agent.agentId!, env: { X: 'user:{{ secret.p }}@host' },
    argv: ['sh', '-c', 'P="${X#user:}"; P="${P%@host}"; echo "cut=$P"; printf %s "$P" | base64; echo "len=${#P}"'],
  });
  t.notOk(r.error, r.error?.message ?? 'no error');
  t.equal(r.finished?.status, 'succeeded');
  t.match(r.out, 'cut=****\n', 'the secret alone is masked');
  t.match(r.out, `len=${P.length}\n`, 'the process had the real value');
  t.notOk(r.out.includes(P) || r.out.includes(b64(P).replace(/=+$/, '')), 'neither the secret nor its base64 is in the output');

  // A pack action whose env is "Bearer {{ secret.tok }}": what `executions show` and follow see.
  const updates: string[] = [];
  const id = await new Promise<string>((resolve, reject) => {
    let xid = '';
    const s = h.admin.executions.RunAction({ action: 'sec.bearer', agentId: agent.agentId!, selector: {}, parameters: {}, follow: true }, tenantMd(h));
    s.on('data', (u: T.ExecutionUpdate__Output) => { if (u.state) xid = u.state.id; if (u.output) updates.push(Buffer.from(u.output.data).toString()); });
    s.on('error', reject);
    s.on('end', () => resolve(xid));
  });
  const rec = await getExecution(h, id);
  t.equal(rec.status, 'succeeded', rec.error);
  const shown = Buffer.from(rec.output).toString();
  t.match(shown, 'token=****\n', 'the token alone is masked in what executions show prints');
  t.match(shown, /whole=(Bearer )?\*\*\*\*\n/);
  const followed = updates.join('');
  for (const [what, text] of Object.entries({ 'executions show': shown, 'the follow stream': followed })) {
    t.notOk(text.includes(TOK) || text.includes(b64(TOK).replace(/=+$/, '')), `${what}: neither the token nor its base64`);
  }
});
