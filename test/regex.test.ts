/**
 * User regexes run in linear time (common/regex.ts, RE2 via re2js): the patterns that froze the
 * hub and agents on the backtracking engine (`^(\w|\d)+$`, `^(a|a)+$`, `^(a|ab|b)*c$`) answer in
 * milliseconds through rule criteria, `rules test`, saved hub rules fed by a webhook, edge rules
 * and the log and process sensors. Hubs and agents that might freeze run in child processes, so
 * a frozen one fails its 5 s deadline instead of hanging the test. What RE2 cannot run is refused
 * by name; the Python-style syntax rules are written in keeps working.
 */
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { appendFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { WebSocket } from 'ws';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { initHub } from '../hub/init.js';
import { signWebhook } from '../hub/webhooks/index.js';
import { enroll } from '../agent/enroll.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import { compileUserRegex, MATCH_INPUT_MAX, PROGRAM_MAX, RegexRefusedError } from '../common/regex.js';
import { compileCriteria } from '../common/rules/index.js';
import { log as logSensor } from '../agent/sensors/log.js';
import type { PollingUnit } from '../agent/sensors/types.js';
import { ADMIN_PASSWORD, captureLogger, tempDir } from './helpers/hub.js';
import { startCli, type CliProcess } from './helpers/cli.js';
import { file, markAction } from './helpers/admin.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

/**
 * The patterns of the finding, each with a 40-character input that makes a backtracking engine
 * take 2^39 steps (the first two) or 2^20 (the third: "ab" parses two ways; ~25-150 ms on V8);
 * the third again with 80 characters (2^40), so that every pattern hangs today's engine.
 */
const CASES = [
  { pattern: '^(\\w|\\d)+$', input: `${'1'.repeat(39)}!` },
  { pattern: '^(a|a)+$', input: `${'a'.repeat(39)}!` },
  { pattern: '^(a|ab|b)*c$', input: 'ab'.repeat(20) },
  { pattern: '^(a|ab|b)*c$', input: 'ab'.repeat(40) },
];
const PATTERNS = [...new Set(CASES.map((c) => c.pattern))];
const label = (c: (typeof CASES)[number]) => `${c.pattern} on ${c.input.length} characters`;
const BOUND_MS = 50;
const DEADLINE_MS = 5000;
const DIST = fileURLToPath(new URL('..', import.meta.url));

const best = (xs: number[]) => Math.min(...xs);

// ---------------------------------------------------------------------------------------------
// the engine through its real entry points, in a child process (a backtracking engine would hang it)

/** Runs every regex entry point on one case, printing one JSON line per check (best of 5 runs: the machine is shared). */
const PROBE = `
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
const [dist, pattern, input, dir] = process.argv.slice(2);
const { compileCriteria } = await import(dist + 'common/rules/index.js');
const { parseSensorConfig } = await import(dist + 'common/sensors/index.js');
const { log } = await import(dist + 'agent/sensors/log.js');
const { processSensor } = await import(dist + 'agent/sensors/process.js');
const silent = { info() {}, warn() {}, debug() {}, error() {}, child() { return silent; } };
const ctx = (config) => ({ config, log: silent, signal: new AbortController().signal });
const report = (check, ms, result) => process.stdout.write(JSON.stringify({ check, ms, result }) + '\\n');
async function time(check, f) {
  const ms = []; let result;
  for (let i = 0; i < 5; i++) { const t0 = performance.now(); result = await f(i); ms.push(performance.now() - t0); }
  report(check, Math.min(...ms), result);
}
const ev = { id: 'e', type: 'x.y', agent: '', tenant: 't', timeMs: 0, payload: { v: input } };
for (const type of ['regex', 'iregex', 'matchregex']) {
  await time('criteria ' + type, () => compileCriteria([{ path: 'trigger.payload.v', type, pattern }])(ev));
}
writeFileSync(dir + '/probe.log', input + '\\n');
await time('log sensor', async () => {
  const s = log.create(ctx(parseSensorConfig('log', { path: dir + '/probe.log', pattern, fromEnd: false })));
  const out = await s.poll(); await s.close(); return out.length;
});
const sleeper = spawn('sleep', ['30'], { argv0: input, stdio: 'ignore' });
await new Promise((r) => setTimeout(r, 200));
// Scanning /proc costs the same with any pattern and varies on a busy machine: the same scan
// with a literal pattern, interleaved, gives the baseline.
const scan = async (pattern) => { const t0 = performance.now(); const r = (await processSensor.create(ctx(parseSensorConfig('process', { pattern }))).poll())[0].payload.present; return [performance.now() - t0, r]; };
const base = [], probe = []; let present;
for (let i = 0; i < 5; i++) { base.push((await scan('zz-no-such-process'))[0]); const [ms, r] = await scan(pattern); probe.push(ms); present = r; }
report('process scan baseline', Math.min(...base), false);
report('process sensor', Math.min(...probe), present);
sleeper.kill();
process.exit(0);
`;

interface Check { check: string; ms: number; result: unknown }

/** Runs PROBE for one case; fails (and kills the child) when a check takes over 5 s. */
async function probe(t: Test, dir: string, c: (typeof CASES)[number]): Promise<Check[]> {
  const script = join(dir, 'probe.mjs');
  writeFileSync(script, PROBE);
  const child = spawn(process.execPath, [script, DIST, c.pattern, c.input, dir], { stdio: ['ignore', 'pipe', 'pipe'] });
  const checks: Check[] = [];
  let err = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  let buf = '';
  return new Promise((resolve) => {
    let timer: NodeJS.Timeout;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        t.fail(`${label(c)}: no answer within ${DEADLINE_MS} ms after ${checks.map((x) => x.check).join(', ') || 'start'} (the engine backtracks)`);
        child.kill('SIGKILL');
      }, DEADLINE_MS);
    };
    arm();
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        checks.push(JSON.parse(buf.slice(0, nl)) as Check);
        buf = buf.slice(nl + 1);
        arm();
      }
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code !== 0 && code !== null) t.fail(`probe exited ${code}: ${err.slice(0, 500)}`);
      resolve(checks);
    });
  });
}

t.test('each ReDoS pattern on a 40-character (and 80-character) input answers in < 50 ms in criteria, the log sensor and the process sensor', async (t) => {
  await using d = await tempDir();
  for (const c of CASES) {
    const checks = await probe(t, d.path, c);
    t.same(checks.map((x) => x.check), ['criteria regex', 'criteria iregex', 'criteria matchregex', 'log sensor', 'process scan baseline', 'process sensor'], `${label(c)}: every check answered`);
    const scan = checks.find((x) => x.check === 'process scan baseline')?.ms ?? 0;
    for (const x of checks) {
      if (x.check === 'process scan baseline') continue;
      const extra = x.check === 'process sensor' ? scan : 0;
      t.ok(x.ms - extra < BOUND_MS, `${label(c)} ${x.check}: ${x.ms.toFixed(2)} ms${extra ? ` (scanning /proc with a literal pattern: ${scan.toFixed(2)} ms)` : ''}`);
      if (x.check !== 'process sensor') t.notOk(x.result, `${label(c)} ${x.check}: no match`); // other processes may match
    }
  }
});

// ---------------------------------------------------------------------------------------------
// a real hub and a real agent, each in its own process

interface HubProc { proc: CliProcess; adminAddr: string; webPort: number; caPem: string; dataDir: string; admin: AdminClients }

async function waitFor(what: string, ms: number, cond: () => boolean | Promise<boolean>): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function hubProcess(t: Test, dir: string): Promise<HubProc> {
  const dataDir = join(dir, 'hub');
  await initHub({ dataDir, names: ['localhost', '127.0.0.1'], adminPassword: ADMIN_PASSWORD, config: { agentPort: 0, adminPort: 0, webPort: 0, bind: '127.0.0.1' } });
  const proc = startCli(['hub', 'run', '--data', dataDir, '--log-level', 'warn']);
  t.teardown(() => { proc.child.kill('SIGKILL'); });
  await waitFor('the hub to listen', 60_000, () => /admin port \d+/.test(proc.err()) || proc.child.exitCode !== null);
  const m = /agent port (\d+), admin port (\d+), web port (\d+)/.exec(proc.err());
  if (!m) throw new Error(`hub did not start: ${proc.err()}`);
  const caPem = readFileSync(join(dataDir, 'ca.pem'), 'utf8');
  const adminAddr = `127.0.0.1:${m[2]}`;
  const anon = adminClients(adminAddr, caPem);
  const login = await call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username: 'admin', password: ADMIN_PASSWORD });
  anon.close();
  const admin = adminClients(adminAddr, caPem, login.token, 'default');
  t.teardown(() => admin.close());
  return { proc, adminAddr, webPort: Number(m[3]), caPem, dataDir, admin };
}

/**
 * Pack `rx`: an action appending MSG to OUT; a log sensor per ReDoS pattern and one emitting
 * every line as rx.line; an edge rule per ReDoS pattern on rx.line, and one marking "warm-up" and
 * "all-done" lines (which no ReDoS pattern matches).
 */
function rxPack(logPath: string, out: string): T.PackFile[] {
  const files = [
    file('pack.yaml', 'name: rx\nversion: 1.0.0\ndescription: regex probes\n'),
    markAction('append a line'),
    file('sensors/lines.yaml', `name: lines\ntype: log\ntrigger: rx.line\ninterval: 1s\nconfig: ${JSON.stringify({ path: logPath, pattern: '.', fromEnd: false })}\n`),
    file('rules/mark.yaml', [
      'name: mark', 'trigger: rx.line',
      `criteria: ${JSON.stringify({ 'trigger.payload.line': { type: 'inside', pattern: ['warm-up', 'all-done'] } })}`,
      `action: ${JSON.stringify({ ref: 'rx.mark', parameters: { msg: '{{ trigger.payload.line }}', out } })}`,
      'target: local', '',
    ].join('\n')),
  ];
  PATTERNS.forEach((pattern, i) => {
    files.push(file(`sensors/redos${i}.yaml`, `name: redos${i}\ntype: log\ninterval: 1s\nconfig: ${JSON.stringify({ path: logPath, pattern, fromEnd: false })}\n`));
    files.push(file(`rules/redos${i}.yaml`, [
      `name: redos${i}`, 'trigger: rx.line',
      `criteria: ${JSON.stringify({ 'trigger.payload.line': { type: 'regex', pattern } })}`,
      `action: ${JSON.stringify({ ref: 'rx.mark', parameters: { msg: `redos${i}`, out } })}`,
      'target: local', '',
    ].join('\n')));
  });
  return files;
}

function postWebhook(h: HubProc, path: string, body: string, headers: Record<string, string>): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: '127.0.0.1', port: h.webPort, path, method: 'POST', ca: h.caPem, servername: 'localhost', agent: false, timeout: DEADLINE_MS,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers },
    }, (res) => { res.resume(); res.on('end', () => resolve(res.statusCode ?? 0)); });
    req.on('timeout', () => req.destroy(new Error(`no answer from the web port within ${DEADLINE_MS} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}

async function timed<R>(f: () => Promise<R>): Promise<{ ms: number; r?: R; err?: Error }> {
  const t0 = performance.now();
  try { const r = await f(); return { ms: performance.now() - t0, r }; } catch (err) { return { ms: performance.now() - t0, err: err as Error }; }
}

t.test('hub in its own process: rules test from an observer answers as fast with a ReDoS pattern as with a literal', async (t) => {
  await using d = await tempDir();
  const h = await hubProcess(t, d.path);
  const PW = 'observer-password-1';
  await call(h.admin, h.admin.users, h.admin.users.CreateUser, { username: 'watcher', password: PW, roles: ['observer'], tenants: ['default'] });
  const anon = adminClients(h.adminAddr, h.caPem);
  const tok = await call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username: 'watcher', password: PW });
  anon.close();
  const observer = adminClients(h.adminAddr, h.caPem, tok.token, 'default');
  t.teardown(() => observer.close());

  // (1) rules test (AdminRules/TestRule, rules:read) with a rule definition and an event, from an observer.
  const testRule = (type: string, pattern: string, v: string) => call<T.TestRuleRequest, T.TestRuleResponse__Output>(observer, observer.rules, observer.rules.TestRule, {
    name: '', definition: JSON.stringify({ name: 'probe', trigger: 'x.y', criteria: { 'trigger.payload.v': { type, pattern } }, action: { ref: 'rx.mark', parameters: {} } }),
    eventJson: Buffer.from(JSON.stringify({ v })),
  }, DEADLINE_MS);
  // The gRPC round trip on a busy machine varies more than the regex costs: compare the best of
  // 5 calls with the best of 5 calls of the same shape with a literal pattern.
  const bestOf5 = async (type: string, pattern: string, v: string): Promise<number | Error> => {
    const runs = [];
    for (let i = 0; i < 5; i++) {
      const x = await timed(() => testRule(type, pattern, v));
      if (x.err) return x.err;
      if (x.r!.matched) return new Error('matched');
      runs.push(x.ms);
    }
    return best(runs);
  };
  for (const c of CASES) {
    for (const type of ['regex', 'iregex', 'matchregex']) {
      const base = await bestOf5(type, 'zz-literal', c.input);
      const ms = await bestOf5(type, c.pattern, c.input);
      if (ms instanceof Error || base instanceof Error) { t.fail(`rules test ${type} ${label(c)}: ${(ms instanceof Error ? ms : base as Error).message}`); return; } // a frozen hub: nothing more to learn
      t.ok(ms - base < BOUND_MS, `rules test ${type} ${label(c)}: ${ms.toFixed(1)} ms, ${base.toFixed(1)} ms with a literal pattern (best of 5 round trips)`);
    }
  }
  const yes = await testRule('matchregex', '(?i)(?P<word>ab)+$', 'ABab');
  t.ok(yes.matched, 'Python-style inline flags and named groups work through the hub');
  const refused = await timed(() => testRule('regex', '(\\w+) \\1', 'a a'));
  t.equal((refused.err as { code?: string } | undefined)?.code, 'TRELLIS_E_RULE_INVALID', 'a backreference is refused');
  t.match(refused.err?.message, /backreference/);
});

t.test('hub in its own process: saved rules fed ReDoS events by a webhook; admin calls answer meanwhile', async (t) => {
  await using d = await tempDir();
  const h = await hubProcess(t, d.path);
  await call(h.admin, h.admin.packs, h.admin.packs.InstallPack, { files: rxPack(join(d.path, 'unused.log'), join(d.path, 'unused.out')), force: true });
  const hook = await call<T.CreateWebhookRequest, T.CreateWebhookResponse__Output>(h.admin, h.admin.webhooks, h.admin.webhooks.CreateWebhook, { name: 'probe', description: '' });
  for (const [i, pattern] of PATTERNS.entries()) {
    await call(h.admin, h.admin.rules, h.admin.rules.CreateRule, {
      definition: JSON.stringify({ name: `hub-redos${i}`, trigger: 'webhook.probe', criteria: { 'trigger.payload.v': { type: 'regex', pattern } }, action: { ref: 'rx.mark', parameters: { msg: 'm', out: '/dev/null' } } }),
      replace: true, source: 'test',
    });
  }
  for (const c of CASES) {
    const body = JSON.stringify({ v: c.input });
    const [posted, during] = await Promise.all([
      timed(() => postWebhook(h, '/webhooks/probe', body, { 'x-trellis-signature': signWebhook(hook.secret, body, Math.floor(Date.now() / 1000)) })),
      timed(() => call(h.admin, h.admin.rules, h.admin.rules.ListRules, { pack: '', trigger: '' }, DEADLINE_MS)),
    ]);
    if (posted.err) { t.fail(`webhook with ${label(c)}: ${posted.err.message}`); return; }
    t.equal(posted.r, 202, `${label(c)}: the event is accepted`);
    const after = await timed(() => call(h.admin, h.admin.rules, h.admin.rules.ListRules, { pack: '', trigger: '' }, DEADLINE_MS));
    if (during.err || after.err) { t.fail(`admin call while rules run ${label(c)}: ${(during.err ?? after.err)!.message}`); return; }
    t.ok(Math.max(during.ms, after.ms) < 1000, `${label(c)}: admin calls answer in ${during.ms.toFixed(0)} / ${after.ms.toFixed(0)} ms while the rules match the event`);
  }
});

t.test('hub in its own process: a /stream type glob that backtracks in a regex engine matches in linear time', async (t) => {
  await using d = await tempDir();
  const h = await hubProcess(t, d.path);
  const name = 'a'.repeat(40);
  const hook = await call<T.CreateWebhookRequest, T.CreateWebhookResponse__Output>(h.admin, h.admin.webhooks, h.admin.webhooks.CreateWebhook, { name, description: '' });
  const anon = adminClients(h.adminAddr, h.caPem);
  const { token } = await call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username: 'admin', password: ADMIN_PASSWORD });
  anon.close();
  // `*a*a…*b` compiled to a backtracking regex takes C(48, 12) steps on webhook.aaaa… (minutes);
  // the second glob matches, so the event must arrive.
  const glob = `${'*a'.repeat(12)}b,webhook.a*`;
  const messages: { type?: string }[] = [];
  const ws = new WebSocket(`wss://127.0.0.1:${h.webPort}/stream?type=${encodeURIComponent(glob)}`, ['trellis.v1'], { ca: h.caPem, headers: { authorization: `Bearer ${token}`, 'x-trellis-tenant': 'default' }, perMessageDeflate: false });
  t.teardown(() => ws.terminate());
  ws.on('message', (m) => messages.push(JSON.parse(m.toString()) as { type?: string }));
  await new Promise<void>((resolve, reject) => { ws.on('open', () => resolve()); ws.on('error', reject); });
  const body = '{"n":1}';
  const posted = await timed(() => postWebhook(h, `/webhooks/${name}`, body, { 'x-trellis-signature': signWebhook(hook.secret, body, Math.floor(Date.now() / 1000)) }));
  if (posted.err) { t.fail(`webhook: ${posted.err.message}`); return; }
  t.equal(posted.r, 202);
  const after = await timed(() => call(h.admin, h.admin.rules, h.admin.rules.ListRules, { pack: '', trigger: '' }, DEADLINE_MS));
  if (after.err) { t.fail(`admin call after the event: ${after.err.message}: the hub froze matching the glob`); return; }
  t.ok(after.ms < 1000, `an admin call answers in ${after.ms.toFixed(0)} ms after the event`);
  await waitFor('the event on the stream', DEADLINE_MS, () => messages.some((m) => m.type === `webhook.${name}`)).catch((err: Error) => t.fail(err.message));
  t.ok(messages.some((m) => m.type === `webhook.${name}`), 'the event matched the second glob and was delivered');
});

t.test('agent in its own process: log sensors and edge rules with ReDoS patterns on 40- and 80-character lines keep it responsive', async (t) => {
  await using d = await tempDir();
  const h = await hubProcess(t, d.path);
  const logPath = join(d.path, 'app.log');
  const out = join(d.path, 'marks.out');
  writeFileSync(logPath, '');
  await call(h.admin, h.admin.packs, h.admin.packs.InstallPack, { files: rxPack(logPath, out), force: true });

  const { token } = await call<T.CreateJoinTokenRequest, T.CreateJoinTokenResponse__Output>(h.admin, h.admin.tokens, h.admin.tokens.CreateJoinToken, { tenant: 'default', uses: 1, ttlMs: 600_000 } as T.CreateJoinTokenRequest);
  const agentDir = join(d.path, 'agent');
  await enroll({ hub: h.adminAddr, token, dataDir: agentDir });
  const agent = startCli(['agent', 'run', '--data', agentDir, '--log-level', 'warn']);
  t.teardown(() => { agent.child.kill('SIGKILL'); });
  const marks = () => (existsSync(out) ? readFileSync(out, 'utf8').split('\n').filter(Boolean) : []);

  // The pipeline works end to end before the probe lines (config pushed, sensors polling).
  appendFileSync(logPath, 'warm-up\n');
  await waitFor('the agent to mark the warm-up line', 60_000, () => marks().includes('warm-up') || agent.child.exitCode !== null);
  t.same(marks(), ['warm-up'], `warm-up marked (agent stderr: ${agent.err().slice(0, 300)})`);

  // Each probe line runs through 3 pathological log sensors and 3 edge rules; then "done".
  const t0 = Date.now();
  appendFileSync(logPath, `${CASES.map((c) => c.input).join('\n')}\nall-done\n`);
  await waitFor('the all-done line', DEADLINE_MS, () => marks().includes('all-done')).catch((err: Error) => t.fail(`${err.message}: the agent froze on a pathological regex`));
  t.ok(marks().includes('all-done'), `the line after the probes was handled ${Date.now() - t0} ms after writing (1 s sensor interval)`);
  await new Promise((r) => setTimeout(r, 500));
  t.same(marks().sort(), ['all-done', 'redos0', 'redos0', 'warm-up'], 'the rules decided right: only ^(\\w|\\d)+$ matches a line (the two abab…ab)');
  t.equal(agent.child.exitCode, null, 'the agent is still running');
});

// ---------------------------------------------------------------------------------------------
// semantics

const re = (p: string, o = {}) => compileUserRegex(p, o);
const refusal = (p: string) => { try { compileUserRegex(p); return ''; } catch (e) { return e instanceof RegexRefusedError ? e.message : `not a RegexRefusedError: ${String(e)}`; } };

t.test('refused by name: backreferences, lookaround, atomic groups, possessive quantifiers, oversize', async (t) => {
  t.match(refusal('(a)\\1'), /backreference/);
  t.match(refusal('(?P<q>[\'"]).*(?P=q)'), /backreference/);
  t.match(refusal('(?<n>a)\\k<n>'), /backreference/);
  t.match(refusal('foo(?=bar)'), /lookahead/);
  t.match(refusal('foo(?!bar)'), /lookahead/);
  t.match(refusal('(?<=foo)bar'), /lookbehind/);
  t.match(refusal('(?<!foo)bar'), /lookbehind/);
  t.match(refusal('(?>a+)b'), /atomic group/);
  t.match(refusal('a*+b'), /possessive/);
  t.match(refusal('(?(1)a|b)'), /conditional/);
  t.match(refusal('a\\Z'), /write \\z/);
  t.match(refusal('\\u0041'), /\\x\{XXXX\}/);
  t.match(refusal('a{1001}'), /repeat count over 1000/);
  t.match(refusal('(?:[a-z]{100}){100}'), /repeat count over 1000/, 'nested counts multiply');
  t.match(refusal('(?:(?:ab){40}){25}'), /too large: it compiles to 2002 steps/);
  const t0 = performance.now();
  t.match(refusal('[ab]{1000}'.repeat(102)), /too large: it would compile to about 1020\d\d steps/, 'a clearly oversize pattern is refused from its text');
  t.ok(performance.now() - t0 < 50, `without compiling it (${(performance.now() - t0).toFixed(1)} ms; compiling takes ~200 ms)`);
  t.equal(refusal('(?:(?:a|b|c|d|e|f|g|h){10}){100}'), '', 'the estimate leaves room for what RE2 simplifies');
  t.match(refusal('x'.repeat(1025)), /1025 characters; the limit is 1024/);
  t.match(refusal('(unclosed'), /does not compile: missing closing \)/);
  t.match(refusal('[[:alpha:]]{2000}'), /repeat count|too large/);
  t.ok(PROGRAM_MAX >= 1000, 'ordinary long patterns fit');
  t.equal(refusal(Array.from({ length: 40 }, (_, i) => `host-${i}\\.example\\.com`).join('|')), '', 'an alternation of 40 host names (869 characters) fits');
});

t.test('Python and StackStorm syntax still works: (?i), (?P<name>), named groups, anchors, classes', async (t) => {
  t.ok(re('(?i)^web-\\d+$').test('WEB-12'), '(?i) inline flag');
  t.ok(re('web', { ignoreCase: true }).test('a WEB host'), 'iregex option');
  t.ok(re('^(?P<host>[a-z]+)-(?P<n>\\d+)$').test('web-7'), '(?P<name>…)');
  t.same(re('^(?P<host>[a-z]+)-(?<n>\\d+)(x)?$').exec('web-7'), { match: ['web-7', 'web', '7', ''], groups: { host: 'web', n: '7' } }, 'match list and named groups');
  t.equal(re('^(?P<host>[a-z]+)$').exec('web-7'), null);
  t.ok(re('\\Aabc\\z').test('abc'));
  t.ok(re('abc$').test('abc\n'), '$ also matches before one trailing newline (Python\'s rule; no multiline)');
  t.notOk(re('abc$').test('abc\n\n'), '... one newline only');
  t.notOk(re('abc$').test('abc\nx'), '... and only at the end of the text');
  t.notOk(re('abc\\z').test('abc\n'), '\\z is the very end');
  t.ok(re('(?m)^b$').test('a\nb\nc'), '(?m) multiline');
  t.notOk(re('a.b').test('a\nb'), '. does not match a newline by default');
  t.ok(re('(?s)a.b').test('a\nb'), '(?s) DOTALL');
  t.ok(re('a.b', { dotAll: true, anchorStart: true }).test('a\nbzz'), 'matchregex: DOTALL, anchored at the start only');
  t.notOk(re('b', { anchorStart: true }).test('ab'), 'matchregex does not search');
  t.ok(re('a|b', { anchorStart: true }).test('bz'), 'anchoring wraps the whole alternation');
  t.notOk(re('x|^b', { anchorStart: true }).test('ab'));
  t.ok(re('[[:digit:]]+\\s\\p{L}+\\b').test('42 élan'), 'POSIX classes, Unicode classes, word boundary');
  t.ok(re('\\Qa.b\\E').test('xa.bx') && !re('\\Qa.b\\E').test('axb'), '\\Q…\\E quoting');
  t.ok(re('caf\\x{e9}').test('café'), '\\x{…} escapes');
  t.ok(re('^.$').test('😀'), '. is one code point');
  t.ok(re('a{2,3}?b').test('aaab'), 'lazy counted repetition');
});

t.test('a literal pattern takes the substring path with the same answers as the engine', async (t) => {
  for (const [p, s] of [['error 42', 'fatal error 42 here'], ['error 42', 'error 4'], ['#tag=x', 'a #tag=x'], ['é,ü', 'é,ü!'], ['', 'x']]) {
    t.equal(re(p).test(s), s.includes(p), `regex ${p} on ${s}`);
    t.equal(re(p, { anchorStart: true, dotAll: true }).test(s), s.startsWith(p), `matchregex ${p} on ${s}`);
  }
});

t.test('regexes see the first 64 KiB of a value, and of a log line', async (t) => {
  const big = `${'a'.repeat(MATCH_INPUT_MAX + 10)}x`;
  t.notOk(re('x').test(big), 'a literal past 64 KiB is not seen');
  t.notOk(re('a+x').test(big), 'a pattern past 64 KiB is not seen');
  t.ok(re('a{1000}').test(big));
  t.notOk(compileCriteria([{ path: 'trigger.payload.v', type: 'regex', pattern: 'a+x' }])({ id: 'e', type: 'x', agent: '', tenant: 't', timeMs: 0, payload: { v: big } }));
  await using d = await tempDir();
  const path = join(d.path, 'big.log');
  writeFileSync(path, `${big}\nshort x\n`);
  const { log } = captureLogger();
  const s = logSensor.create({ config: { path, pattern: 'x$', fromEnd: false, maxLineBytes: 1024 * 1024 }, log, signal: new AbortController().signal }) as PollingUnit;
  const events = await s.poll();
  await s.close?.();
  t.same(events.map((e) => (e.payload as { line: string }).line), ['short x'], 'the x at the end of a 64 KiB+ line is not seen');
});
