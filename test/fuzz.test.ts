/**
 * The protocol fuzzer in CI (issue 13 §2): a fixed budget, a fixed seed, against a real hub child
 * process (`trellis hub run`): every admin RPC as an admin API key, a user with no roles and no
 * credentials, and every AgentChannel message from enrolled agents over mTLS. Asserts 0 hub
 * crashes or hangs, 0 unexpected statuses, 0 error lines in the hub log. The oracle itself is
 * tested against recorded bad outcomes and against a hub that is killed (it must report both).
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { status } from '@grpc/grpc-js';
import { tempDir } from './helpers/hub.js';
import { silenceIpServernameWarning } from '../common/warnings.js';
import { classify, judgeHealth } from '../bench/fuzz/oracle.js';
import { caseBytes, caseRng, contractMethods, mutate, loadRoot } from '../bench/fuzz/gen.js';
import { runFuzz, replayCases, SOAK_SPARED, type FuzzCase } from '../bench/fuzz/run.js';
import { startFuzzHub, preparePrincipals, PACKAGE_ROOT } from '../bench/fuzz/setup.js';
import { judgeWeb, runWebFuzz } from '../bench/fuzz/web.js';
import { runAgentSideFuzz } from '../bench/fuzz/agent-side.js';
import { enroll } from '../agent/enroll.js';
import { agentPaths, readState } from '../agent/identity.js';
import { allMethodPaths } from '../common/proto.js';

silenceIpServernameWarning();

/**
 * The CI budget: a fixed number of cases (the same bytes every run: seed and count are fixed),
 * ~40 s on an idle 2-core machine; the time cap only guards a machine so busy it cannot finish.
 */
const CASES = Number(process.env.TRELLIS_FUZZ_CASES ?? 480);
const SECONDS = Number(process.env.TRELLIS_FUZZ_SECONDS ?? 240);
const SEED = 1313;
const WEB_CASES = Number(process.env.TRELLIS_FUZZ_WEB_CASES ?? 300);
const AGENT_CASES = Number(process.env.TRELLIS_FUZZ_AGENT_CASES ?? 8);

t.test('the oracle refuses what would hide a bug', async (t) => {
  const kv = '/trellis.v1.AdminKv/Set';
  const bad = (path: string, principal: Parameters<typeof classify>[2], o: Parameters<typeof classify>[3], why: string) => {
    const v = classify(path, true, principal, o);
    t.notOk(v.ok, `${why}: reported${v.ok ? '' : ` (${v.reason})`}`);
  };
  bad(kv, 'admin', { code: status.INTERNAL, details: 'internal error (request abc)' }, 'a recorded INTERNAL');
  bad(kv, 'admin', { code: status.UNKNOWN, details: 'handler threw' }, 'UNKNOWN');
  bad(kv, 'admin', { code: status.DEADLINE_EXCEEDED, details: 'Deadline exceeded' }, 'a client deadline (hang)');
  bad(kv, 'admin', { code: status.UNAVAILABLE, details: 'Connection dropped' }, 'a dropped connection');
  bad(kv, 'admin', { code: status.CANCELLED, details: 'Cancelled' }, 'a cancel the fuzzer did not ask for');
  bad(kv, 'admin', { code: status.UNIMPLEMENTED, details: 'not served' }, 'a contract method not served');
  bad(kv, 'anon', { code: status.OK, details: '' }, 'a kv write without credentials that succeeds');
  bad('/trellis.v1.AdminUsers/CreateUser', 'low', { code: status.OK, details: '' }, 'an admin-only call by a user with no roles that succeeds');
  t.notOk(classify('/trellis.v1.Nope/X', false, 'admin', { code: status.OK, details: '' }).ok, 'an unknown method that succeeds');
  t.notOk(classify('/trellis.v1.Nope/X', false, 'admin', { code: status.INVALID_ARGUMENT, details: '' }).ok, 'an unknown method not refused with UNIMPLEMENTED');
  const good = (path: string, principal: Parameters<typeof classify>[2], o: Parameters<typeof classify>[3], why: string) => t.ok(classify(path, true, principal, o).ok, why);
  good(kv, 'admin', { code: status.INVALID_ARGUMENT, details: 'bad key' }, 'INVALID_ARGUMENT is allowed');
  good(kv, 'anon', { code: status.UNAUTHENTICATED, details: 'no credentials' }, 'UNAUTHENTICATED is allowed');
  good(kv, 'admin', { code: status.DEADLINE_EXCEEDED, details: 'timeout', trellisCode: 'TRELLIS_E_TIMEOUT' }, 'a deadline the hub reports is allowed');
  good('/trellis.v1.AdminSystem/Upgrade', 'admin', { code: status.UNIMPLEMENTED, details: 'not built', trellisCode: 'TRELLIS_E_UNIMPLEMENTED' }, 'TRELLIS_E_UNIMPLEMENTED is allowed');
  good('/trellis.v1.AdminAuth/WhoAmI', 'low', { code: status.OK, details: '' }, 'a self call by a user with no roles may succeed');
  t.notOk(judgeHealth({ processExit: 'signal SIGKILL' }).alive, 'a dead hub process is reported');
  t.notOk(judgeHealth({ version: 'DEADLINE_EXCEEDED' }).alive, 'a hub that does not answer Version is reported');
  t.notOk(judgeHealth({ authed: 'DEADLINE_EXCEEDED' }).alive, 'a hub that does not answer an authenticated call is reported');
  t.ok(judgeHealth({}).alive, 'a healthy hub is healthy');
  t.notOk(judgeWeb({ kind: 'malformed' }, { status: 500 }).ok, 'web: a 500 to any request is reported');
  t.notOk(judgeWeb({ kind: 'wellformed' }, { status: 502 }).ok, 'web: a 502 is reported');
  t.ok(judgeWeb({ kind: 'wellformed' }, { status: 503 }).ok, 'web: 503 (shedding) is allowed');
  t.notOk(judgeWeb({ kind: 'wellformed' }, { timedOut: true }).ok, 'web: a well-formed request left unanswered is reported (hang)');
  t.notOk(judgeWeb({ kind: 'wellformed' }, { closedWithoutAnswer: true }).ok, 'web: a well-formed request closed without an answer is reported');
  t.ok(judgeWeb({ kind: 'malformed' }, { closedWithoutAnswer: true }).ok, 'web: a malformed request may be closed');
  t.notOk(judgeWeb({ kind: 'wellformed', expect: 401 }, { status: 200 }).ok, 'web: a webhook without credentials that is accepted is reported');
});

t.test('cases are a function of (seed, index) and every contract method is a target', async (t) => {
  const methods = contractMethods();
  t.same(methods.map((m) => m.path).sort(), allMethodPaths().sort(), 'the fuzzer enumerates the same methods the hub serves (from proto/)');
  const type = loadRoot().lookupType('trellis.v1.KvSetRequest');
  for (const kind of ['random', 'typed', 'mutated'] as const) {
    t.same(caseBytes(caseRng(7, 42), kind, type, [{ key: 'a', value: 'b' }]), caseBytes(caseRng(7, 42), kind, type, [{ key: 'a', value: 'b' }]), `${kind}: same seed and index, same bytes`);
  }
  t.notSame(caseBytes(caseRng(7, 42), 'typed', type, []), caseBytes(caseRng(7, 43), 'typed', type, []), 'another index, other bytes');
  const paths = new Set(allMethodPaths());
  t.same([...SOAK_SPARED].filter((p) => !paths.has(p)), [], 'every method the soak\'s fuzzer spares is a method of the contract');
  const base = Buffer.from(type.encode({ key: 'abc', value: 'def' }).finish());
  t.notSame(mutate(caseRng(1, 1), base), base, 'a mutation changes the bytes');
});

t.test(`fuzzing a hub child process with ${CASES} cases (seed ${SEED}): 0 crashes, 0 unexpected statuses`, async (t) => {
  await using tmp = await tempDir('trellis-fuzz-');
  const hub = await startFuzzHub(join(tmp.path, 'run'));
  t.teardown(() => hub.stop(3000));
  const p = await preparePrincipals(hub);
  const notes: string[] = [];
  const r = await runFuzz({
    adminAddr: hub.adminAddr, agentAddr: hub.agentAddr, caPem: hub.caPem, ...p, seconds: SECONDS, maxCases: CASES, seed: SEED, target: 'all',
    hubExit: hub.exit, outDir: join(tmp.path, 'found'), note: (m) => notes.push(m),
  });
  t.comment(`fuzz_cases: ${r.cases} cases; statuses ${JSON.stringify(r.statuses)}; methods ${r.methodsCovered}/${r.methodsInContract}`);
  t.comment(`slowest: ${r.slowest.map((x) => `${x.method} ${x.ms} ms`).join('; ')}`);
  t.equal(r.crashes, 0, `fuzz_hub_crashes: 0${r.crash ? ` (${r.crash.reason}; hub log: ${readFileSync(hub.logFile, 'utf8').slice(-2000)})` : ''}`);
  t.same(r.unexpected.map((f) => `${f.case.method} as ${f.case.principal} case ${f.case.index}: ${f.reason}`), [], 'fuzz_unexpected_status: 0');
  t.same(hub.errorLines().map((l) => l.slice(0, 500)), [], 'no error lines in the hub log (unhandled errors)');
  if (r.cases < CASES) t.comment(`the machine was too busy: ${r.cases} of ${CASES} cases in ${SECONDS} s`);
  t.ok(r.cases >= Math.min(CASES, 100), `a real budget ran (${r.cases} cases)`);
  if (r.cases === CASES) t.ok(r.methodsCovered >= r.methodsInContract * 0.85, `most methods received cases (${r.methodsCovered}/${r.methodsInContract})`);
  for (const k of ['OK', 'INVALID_ARGUMENT', 'UNAUTHENTICATED', 'PERMISSION_DENIED']) t.ok((r.statuses[k] ?? 0) > 0, `some cases ended ${k}: the three principals and valid inputs are exercised`);
  t.equal(hub.exit(), undefined, 'the hub is still running');

  // A recorded case replays against the hub and is judged again.
  const cases: FuzzCase[] = [{ seed: SEED, index: 0, method: '/trellis.v1.AdminKv/Set', principal: 'admin', kind: 'random', frames: [Buffer.from([0x08]).toString('base64')] }];
  const replayed = await replayCases({ adminAddr: hub.adminAddr, caPem: hub.caPem, apiKey: p.apiKey, seconds: 1, seed: SEED }, cases);
  t.equal(replayed[0]?.outcome.code, status.INVALID_ARGUMENT, 'a replayed malformed Set is INVALID_ARGUMENT');
  t.ok(replayed[0]?.verdict.ok, 'and allowed');

  // The web port (webhooks, /stream, agent downloads): raw HTTP over TLS, malformed and truncated.
  const web = await runWebFuzz({ webAddr: hub.webAddr, caPem: hub.caPem, webhook: p.webhook, apiKey: p.apiKey, seconds: SECONDS, maxCases: WEB_CASES, seed: SEED, hubExit: hub.exit, outDir: join(tmp.path, 'web'), note: (m) => notes.push(m) });
  t.comment(`fuzz_web_cases: ${web.cases}; statuses ${JSON.stringify(web.statuses)}`);
  t.equal(web.crashes, 0, `web: 0 hub crashes${web.crash ? ` (${web.crash.reason})` : ''}`);
  t.same(web.unexpected.map((f) => `web case ${f.case.index} (${f.case.what}): ${f.reason}`), [], 'web: 0 unexpected answers (no 5xx but 503, no hang, the named 4xx)');
  t.ok(web.cases >= Math.min(WEB_CASES, 100), `web: a real budget ran (${web.cases} cases)`);
  for (const k of ['200', '400', '401', '404']) t.ok((web.statuses[k] ?? 0) > 0, `web: some cases answered ${k}`);
  t.same(hub.errorLines().map((l) => l.slice(0, 500)), [], 'web: no error lines in the hub log');

  // The oracle catches a dead hub: kill it, fuzz again, and the run must report a crash and keep the cases.
  hub.proc.kill('SIGKILL');
  await new Promise<void>((resolve) => { const i = setInterval(() => { if (hub.exit()) { clearInterval(i); resolve(); } }, 50); });
  const dead = await runFuzz({
    adminAddr: hub.adminAddr, caPem: hub.caPem, apiKey: p.apiKey, seconds: 30, seed: SEED, target: 'admin', maxCases: 20, batchSize: 10,
    hubExit: hub.exit, outDir: join(tmp.path, 'dead'), callDeadlineMs: 3000, probeDeadlineMs: 3000,
  });
  t.equal(dead.crashes, 1, `a killed hub is reported as a crash (${dead.crash?.reason})`);
  t.match(dead.crash?.reason ?? '', /hub process exited \(signal SIGKILL\)/, 'with how it ended');
  t.ok(dead.crash?.file && JSON.parse(readFileSync(dead.crash.file, 'utf8')).cases.length === 10, 'the batch that preceded it is kept for replay');
  t.ok(dead.cases <= 10, 'the run stops at the crash');
});

t.test('the agent side: a real agent against a fake hub (real mTLS) sending random and mutated HubMessages keeps running and reconnecting', async (t) => {
  await using tmp = await tempDir('trellis-fuzz-agent-');
  const hub = await startFuzzHub(join(tmp.path, 'run'));
  t.teardown(() => hub.stop(3000));
  const p = await preparePrincipals(hub, 1);
  const dataDir = join(tmp.path, 'agent');
  await enroll({ hub: hub.adminAddr, token: p.examples.joinToken!, dataDir });
  const agentId = readState(agentPaths(dataDir)).agentId;
  await hub.stop(3000); // the fake hub takes its agent port, certificate and CA
  const notes: string[] = [];
  const r = await runAgentSideFuzz({ dataDir, agentId, agentAddr: hub.agentAddr, hubDir: hub.dataDir, seconds: 90, maxCases: AGENT_CASES, seed: SEED, outDir: join(tmp.path, 'cases'), note: (m) => notes.push(m), reconnectMs: 45_000 });
  t.comment(`fuzz_agent_cases: ${r.cases}, connects ${r.connects}`);
  t.equal(r.crashes, 0, `the agent kept running and reconnected${r.crash ? ` (${r.crash})` : ''}`);
  t.same(r.bogus, [], 'every frame the agent sent decodes as an AgentMessage with a known member');
  t.same(r.agentErrors, [], 'no fatal or unhandled error in the agent log');
  t.ok(r.cases >= Math.min(AGENT_CASES, 3), `a real budget ran (${r.cases} streams of fuzzed frames)`);
});

t.test('npm run fuzz: help and argument errors', async (t) => {
  const bin = join(PACKAGE_ROOT, 'dist', 'bench', 'fuzz', 'main.js');
  const help = spawnSync(process.execPath, [bin, '--help'], { encoding: 'utf8' });
  t.equal(help.status, 0);
  t.match(help.stdout, /--seconds N[\s\S]*--seed S[\s\S]*--target T[\s\S]*web \(the hub's HTTPS web port[\s\S]*--replay FILE/, 'help names the options and the web target');
  for (const [args, re] of [[['--seconds', 'x'], /--seconds must be/], [['--target', 'nope'], /--target must be admin, agent, all, web or agent-side/], [['--seed', '1.5'], /--seed must be an integer/], [['--nope'], /Unknown option/]] as const) {
    const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8' });
    t.equal(r.status, 2, `${args.join(' ')}: exit 2`);
    t.match(r.stderr, re, `${args.join(' ')}: says why`);
  }
});
