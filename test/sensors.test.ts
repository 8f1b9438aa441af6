/**
 * Sensors on agents (agent/sensors, common/sensors): config schemas (strict, ReDoS refused), a
 * contract every sensor kind passes, each sensor's payload against real files, processes, HTTP
 * servers and commands, and the SensorManager (apply swaps, no overlap, failures isolated).
 */
import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync, appendFileSync, renameSync, truncateSync, unlinkSync, chmodSync, mkdirSync } from 'node:fs';
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';
import {
  SENSOR_KINDS, SENSOR_CONFIG_SCHEMAS, SENSOR_DOCS, DEFAULT_TRIGGER, COMMAND_OUTPUT_CAP_BYTES, parseSensorConfig, type SensorKind,
} from '../common/sensors/index.js';
import { SENSORS, SensorManager, type Sensor, type SensorEvent, type PollingUnit, type Reading } from '../agent/sensors/index.js';
import { createCA, generateKey, issueCertificate } from '../certs/index.js';
import { isTrellisError } from '../common/errors.js';

// ---------------------------------------------------------------------------------------------
// helpers

process.env.TRELLIS_SENSOR_TEST_SECRET = 'planted'; // must not reach a command sensor's child

function captureLog(): { log: Logger; lines: () => Record<string, unknown>[] } {
  const raw: string[] = [];
  const dest = new Writable({ write(chunk, _e, cb) { raw.push(...String(chunk).split('\n').filter(Boolean)); cb(); } });
  return { log: pino({ level: 'debug' }, dest), lines: () => raw.map((l) => JSON.parse(l) as Record<string, unknown>) };
}
const quiet = (): Logger => pino({ level: 'silent' });

function tmp(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'trellis-sensors-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A polling unit of `kind` with `config`, stopped at teardown. */
function unit(t: Test, kind: SensorKind, config: unknown): PollingUnit & { abort: AbortController } {
  const abort = new AbortController();
  const u = SENSORS[kind].create({ config, log: quiet(), signal: abort.signal }) as PollingUnit;
  t.teardown(async () => { abort.abort(); await u.close?.(); });
  return Object.assign(u, { abort });
}
const payloads = (rs: Reading[]) => rs.map((r) => r.payload);

async function waitFor<T>(what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 8000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function listen(t: Test, server: Server): Promise<number> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }));
  return (server.address() as AddressInfo).port;
}

function manager(t: Test, opts: { sensors?: Record<string, Sensor>; log?: Logger } = {}) {
  const events: SensorEvent[] = [];
  const m = new SensorManager({ log: opts.log ?? quiet(), emit: (e) => events.push(...e), minIntervalMs: 10, ...(opts.sensors ? { sensors: opts.sensors } : {}) });
  t.teardown(() => m.close());
  return { m, events };
}
const spec = (name: string, kind: string, config: unknown, intervalMs = 50, trigger = '') =>
  ({ name, kind, trigger, intervalMs, configJson: Buffer.from(JSON.stringify(config)) });

function startChild(t: Test, argv: string[]): ChildProcess {
  const c = spawn(argv[0]!, argv.slice(1), { stdio: 'ignore' });
  t.teardown(() => { c.kill('SIGKILL'); });
  return c;
}
const exited = (c: ChildProcess) => new Promise<void>((r) => { if (c.exitCode !== null || c.signalCode !== null) r(); else c.once('exit', () => r()); });

function invalid(t: Test, kind: SensorKind, config: unknown, re: RegExp, msg: string) {
  try {
    parseSensorConfig(kind, config);
    t.fail(`${msg}: accepted`);
  } catch (err) {
    t.ok(isTrellisError(err, 'TRELLIS_E_INVALID_ARGUMENT'), `${msg}: TRELLIS_E_INVALID_ARGUMENT`);
    t.match((err as Error).message, re, msg);
  }
}

/** A minimal valid config for every kind, against local resources of this test. */
function minimalConfigs(dir: string, port: number): Record<SensorKind, Record<string, unknown>> {
  writeFileSync(join(dir, 'c.log'), '');
  return {
    cpu: {}, memory: {}, disk: { path: dir }, process: { name: 'no-such-process-trellis' },
    file: { path: join(dir, 'c.txt') }, log: { path: join(dir, 'c.log'), pattern: 'x' },
    http: { url: `http://127.0.0.1:${port}/` }, command: { argv: ['true'] },
  };
}

// ---------------------------------------------------------------------------------------------
// schemas

t.test('every sensor kind has a strict schema, docs and a default trigger', async (t) => {
  t.same([...SENSOR_KINDS].sort(), Object.keys(SENSORS).sort(), 'one implementation per kind');
  t.same(Object.keys(SENSOR_CONFIG_SCHEMAS).sort(), [...SENSOR_KINDS].sort());
  const dir = tmp(t);
  const cfgs = minimalConfigs(dir, 1);
  for (const kind of SENSOR_KINDS) {
    t.ok(SENSOR_DOCS[kind].summary && SENSOR_DOCS[kind].payload && SENSOR_DOCS[kind].config, `${kind}: documented`);
    t.equal(DEFAULT_TRIGGER(kind), `core.${kind}`);
    t.ok(parseSensorConfig(kind, cfgs[kind]), `${kind}: minimal config accepted`);
    invalid(t, kind, { ...cfgs[kind], bogusKey: 1 }, /unknown key "bogusKey"/, `${kind}: unknown key refused by name`);
    const parsed = parseSensorConfig(kind, cfgs[kind]);
    t.same(parseSensorConfig(kind, parsed), parsed, `${kind}: parsing is idempotent`);
  }
});

t.test('config validation names the field and refuses bad values', async (t) => {
  invalid(t, 'log', { path: '/x', pattern: '(\\w+) \\1' }, /pattern: is not a usable regular expression: it uses a backreference/, 'backreference (not linear time)');
  invalid(t, 'log', { path: '/x', pattern: 'error(?!: ignored)' }, /pattern: .*uses lookahead/, 'lookahead (not linear time)');
  t.ok(parseSensorConfig('log', { path: '/x', pattern: 'code=(\\d+)?' }), 'a repetition inside an optional group is fine on RE2');
  invalid(t, 'log', { path: '/x', pattern: '(x' }, /pattern: is not a usable regular expression: it does not compile: missing closing \)/, 'broken regex');
  invalid(t, 'log', { path: '/x', pattern: 'a'.repeat(1025) }, /pattern: must be at most 1024/, 'pattern too long');
  invalid(t, 'process', { pattern: '(?<=x)a' }, /pattern: .*uses lookbehind/, 'process pattern with lookbehind');
  invalid(t, 'process', {}, /exactly one of name, pattern or pidFile/, 'process needs a selector');
  invalid(t, 'process', { name: 'a', pidFile: '/run/a.pid' }, /exactly one/, 'process takes only one selector');
  invalid(t, 'cpu', { threshold: 101 }, /threshold: must be between 0 and 100/, 'threshold range');
  invalid(t, 'memory', { emit: 'above' }, /threshold: is required when emit is "above"/, 'above needs a threshold');
  invalid(t, 'disk', { path: '' }, /path: must not be empty/, 'empty path');
  invalid(t, 'http', { url: 'ftp://x/' }, /url: must be an http/, 'non-http URL');
  invalid(t, 'http', { url: 'http://u:p@x/' }, /url: must not embed credentials/, 'credentials in URL');
  invalid(t, 'http', { url: 'http://x/', timeout: '5 parsecs' }, /timeout: bad duration/, 'bad duration');
  invalid(t, 'http', { url: 'http://x/', timeout: '1h' }, /timeout: must be between/, 'duration out of range');
  invalid(t, 'http', { url: 'http://x/', insecure: true, caFile: '/ca.pem' }, /insecure: cannot be combined/, 'insecure with caFile');
  invalid(t, 'command', { argv: [] }, /argv: must name a program/, 'empty argv');
  invalid(t, 'command', { argv: ['x'], emit: 'sometimes' }, /emit:/, 'unknown emit');
  invalid(t, 'command', 'not an object', /command sensor config/, 'config not an object');
  invalid(t, 'log', { path: '/x', pattern: 'a', maxLineBytes: 10 * 1024 * 1024 }, /maxLineBytes: must be at most/, 'line cap too large');
});

t.test('documented emit defaults: always, above with a threshold, http always, command change', async (t) => {
  t.equal(parseSensorConfig('cpu', {}).emit, 'always');
  t.equal(parseSensorConfig('cpu', { threshold: 90 }).emit, 'above');
  t.equal(parseSensorConfig('memory', { threshold: 90, emit: 'always' }).emit, 'always');
  t.same(parseSensorConfig('disk', {}), { path: '/', emit: 'always' });
  const h = parseSensorConfig('http', { url: 'https://example.test/health', timeout: '2s' });
  t.same(h, { url: 'https://example.test/health', method: 'GET', timeout: 2000, insecure: false, emit: 'always' });
  t.same(parseSensorConfig('command', { argv: ['true'] }), { argv: ['true'], timeout: 10_000, emit: 'change' });
  t.same(parseSensorConfig('log', { path: '/l', pattern: 'x' }), { path: '/l', pattern: 'x', fromEnd: true, maxLineBytes: 8192, maxLinesPerPoll: 1000 });
});

// ---------------------------------------------------------------------------------------------
// the contract every sensor kind passes

t.test('contract: every kind creates from a minimal config, polls JSON payloads and refuses a bad config', async (t) => {
  const dir = tmp(t);
  const port = await listen(t, createHttpServer((_q, s) => s.end('ok')));
  const cfgs = minimalConfigs(dir, port);
  for (const kind of SENSOR_KINDS) {
    const u = unit(t, kind, cfgs[kind]);
    t.equal(typeof u.poll, 'function', `${kind}: a polling unit`);
    await sleep(kind === 'cpu' ? 120 : 0);
    for (let i = 0; i < 2; i++) {
      const rs = await u.poll();
      t.ok(Array.isArray(rs), `${kind}: poll returns an array`);
      for (const r of rs) t.same(JSON.parse(JSON.stringify(r.payload)), r.payload, `${kind}: payload is plain JSON`);
    }
    t.throws(() => SENSORS[kind].create({ config: { ...cfgs[kind], nope: true }, log: quiet(), signal: new AbortController().signal }), /unknown key "nope"/, `${kind}: create refuses a bad config`);
  }
});

// ---------------------------------------------------------------------------------------------
// each sensor

t.test('cpu emits percent, load averages and cpu count; threshold filters', async (t) => {
  const u = unit(t, 'cpu', {});
  await sleep(150);
  const [r] = payloads(await u.poll());
  t.ok(r, 'a reading after a window');
  t.ok((r!.percent as number) >= 0 && (r!.percent as number) <= 100, 'percent in range');
  for (const k of ['load1', 'load5', 'load15', 'cpus']) t.type(r![k], 'number', k);
  t.ok((r!.cpus as number) >= 1);
  const hot = unit(t, 'cpu', { threshold: 0 });
  await sleep(150);
  t.equal((await hot.poll()).length, 1, 'at or above a 0% threshold: emits');
});

t.test('memory emits used, total and available bytes; a threshold of 100% stays quiet', async (t) => {
  const [r] = payloads(await unit(t, 'memory', {}).poll());
  t.ok(r);
  t.equal((r!.usedBytes as number) + (r!.availableBytes as number), r!.totalBytes, 'used + available = total');
  t.ok((r!.percent as number) > 0 && (r!.percent as number) < 100);
  t.same(await unit(t, 'memory', { threshold: 100 }).poll(), [], 'below threshold: nothing');
});

t.test('disk emits statfs usage of the path and fails on a missing path', async (t) => {
  const dir = tmp(t);
  const [r] = payloads(await unit(t, 'disk', { path: dir }).poll());
  t.equal(r!.path, dir);
  t.ok((r!.totalBytes as number) > 0 && (r!.usedBytes as number) <= (r!.totalBytes as number) && (r!.freeBytes as number) <= (r!.totalBytes as number));
  t.ok((r!.percent as number) >= 0 && (r!.percent as number) <= 100);
  await t.rejects(unit(t, 'disk', { path: join(dir, 'missing') }).poll(), /ENOENT/);
});

t.test('process by pattern: present at start, absent after the child is killed', async (t) => {
  const marker = `trellis-sensor-marker-${process.pid}-${Date.now()}`;
  const child = startChild(t, [process.execPath, '-e', 'setTimeout(() => {}, 60000)', marker]);
  const u = unit(t, 'process', { pattern: `${marker}$` });
  const first = await waitFor('child visible', async () => (await u.poll())[0]);
  t.same(first.payload, { name: `${marker}$`, present: true, pids: [child.pid], count: 1 });
  t.same(await u.poll(), [], 'no change: nothing');
  child.kill('SIGKILL');
  await exited(child);
  const [gone] = payloads(await u.poll());
  t.same(gone, { name: `${marker}$`, present: false, pids: [], count: 0 }, 'absent after kill');
});

t.test('process by name (argv[0] basename) and by pid file', async (t) => {
  const dir = tmp(t);
  const name = `tsl${process.pid % 100000}`;
  const bin = join(dir, name);
  copyFileSync('/bin/sleep', bin);
  chmodSync(bin, 0o755);
  const u = unit(t, 'process', { name });
  t.same(payloads(await u.poll()), [{ name, present: false, pids: [], count: 0 }], 'emits absence once at start');
  const child = startChild(t, [bin, '60']);
  const up = await waitFor('named child visible', async () => (await u.poll())[0]);
  t.same(up.payload, { name, present: true, pids: [child.pid], count: 1 });

  const pidFile = join(dir, 'x.pid');
  const p = unit(t, 'process', { pidFile });
  t.same(payloads(await p.poll()), [{ name: pidFile, present: false, pids: [], count: 0 }], 'missing pid file: absent');
  writeFileSync(pidFile, `${child.pid}\n`);
  t.same(payloads(await p.poll()), [{ name: pidFile, present: true, pids: [child.pid], count: 1 }]);
  child.kill('SIGKILL');
  await exited(child);
  t.same(payloads(await p.poll()), [{ name: pidFile, present: false, pids: [], count: 0 }], 'stale pid file: absent');
  writeFileSync(pidFile, 'garbage');
  t.same(await p.poll(), [], 'garbage pid file: still absent, no event');
});

t.test('file emits created, modified and deleted with size, mtime and sha256', async (t) => {
  const dir = tmp(t);
  const path = join(dir, 'watched.conf');
  const u = unit(t, 'file', { path });
  t.same(await u.poll(), [], 'baseline: nothing');
  writeFileSync(path, 'one');
  const [c] = payloads(await u.poll());
  t.match(c, { path, exists: true, change: 'created', size: 3, sha256: createHash('sha256').update('one').digest('hex') });
  t.ok((c!.mtimeMs as number) > 0);
  t.same(await u.poll(), [], 'unchanged: nothing');
  writeFileSync(path, 'two!');
  t.match(payloads(await u.poll()), [{ change: 'modified', size: 4, sha256: createHash('sha256').update('two!').digest('hex') }]);
  unlinkSync(path);
  t.same(payloads(await u.poll()), [{ path, exists: false, change: 'deleted', size: 0, mtimeMs: 0, sha256: '' }]);
  const d = unit(t, 'file', { path: join(dir, 'sub') });
  await d.poll();
  mkdirSync(join(dir, 'sub'));
  t.match(payloads(await d.poll()), [{ change: 'created', sha256: '' }], 'a directory is not hashed');
  const big = unit(t, 'file', { path, maxHashBytes: 2 });
  await big.poll();
  writeFileSync(path, 'larger than two');
  t.match(payloads(await big.poll()), [{ change: 'created', sha256: '' }], 'over maxHashBytes: not hashed');
});

t.test('log tails only new matching lines, with groups, across truncation and rotation', async (t) => {
  const dir = tmp(t);
  const path = join(dir, 'app.log');
  writeFileSync(path, 'ERROR old line before start\n');
  const u = unit(t, 'log', { path, pattern: 'ERROR (?<what>\\w+) code=(\\d*)(x)?' });
  t.same(await u.poll(), [], 'existing content skipped (fromEnd)');
  appendFileSync(path, 'INFO fine\nERROR disk code=28\r\nERROR net code=\nERROR par');
  t.same(payloads(await u.poll()), [
    { path, line: 'ERROR disk code=28', match: ['ERROR disk code=28', 'disk', '28', ''], groups: { what: 'disk' } },
    { path, line: 'ERROR net code=', match: ['ERROR net code=', 'net', '', ''], groups: { what: 'net' } },
  ], 'matching lines only, CRLF stripped, unmatched group ""');
  appendFileSync(path, 'tial code=1\n');
  t.match(payloads(await u.poll()), [{ line: 'ERROR partial code=1' }], 'a partial line waits for its newline');

  truncateSync(path, 0);
  t.same(await u.poll(), [], 'truncated: nothing yet');
  appendFileSync(path, 'ERROR after code=2\n');
  t.match(payloads(await u.poll()), [{ line: 'ERROR after code=2' }], 'after truncation: read from the start');

  appendFileSync(path, 'ERROR beforerotate code=3\n');
  renameSync(path, `${path}.1`);
  appendFileSync(`${path}.1`, 'ERROR lateold code=4\nERROR nonewline code=5');
  t.match(payloads(await u.poll()), [{ line: 'ERROR beforerotate code=3' }, { line: 'ERROR lateold code=4' }], 'rotated away, no new file yet: old file read to its end');
  writeFileSync(path, 'ERROR newfile code=6\n');
  t.match(payloads(await u.poll()), [{ line: 'ERROR nonewline code=5' }, { line: 'ERROR newfile code=6' }], 'new file followed from its start; old last line flushed');
  t.same(await u.poll(), [], 'nothing new: nothing');
});

t.test('log bounds lines per poll and cuts long lines', async (t) => {
  const dir = tmp(t);
  const path = join(dir, 'busy.log');
  writeFileSync(path, '');
  const u = unit(t, 'log', { path, pattern: '^x', maxLinesPerPoll: 3, maxLineBytes: 16 });
  await u.poll();
  appendFileSync(path, `x1\nx2\nx3\nx4\nx5\n${'x'.repeat(100)}\n`);
  t.same(payloads(await u.poll()).map((p) => p.line), ['x1', 'x2', 'x3'], 'at most maxLinesPerPoll');
  t.same(payloads(await u.poll()).map((p) => p.line), ['x4', 'x5', 'x'.repeat(16)], 'the rest next poll; a long line cut to maxLineBytes');
  const whole = unit(t, 'log', { path, pattern: '^x5', fromEnd: false });
  t.same(payloads(await whole.poll()).map((p) => p.line), ['x5'], 'fromEnd false reads existing lines');
  const missing = unit(t, 'log', { path: join(dir, 'later.log'), pattern: 'y' });
  t.same(await missing.poll(), [], 'missing file: nothing');
  writeFileSync(join(dir, 'later.log'), 'y1\n');
  t.match(payloads(await missing.poll()), [{ line: 'y1' }], 'a file that appears later is read from its start');
});

t.test('http reports status, ok and latency; change and failure modes; down server', async (t) => {
  let status = 200;
  const server = createHttpServer((_q, s) => { s.statusCode = status; s.end('body'); });
  const port = await listen(t, server);
  const url = `http://127.0.0.1:${port}/health`;
  const always = unit(t, 'http', { url });
  const [a] = payloads(await always.poll());
  t.match(a, { url, status: 200, ok: true });
  t.type(a!.latencyMs, 'number');
  t.notOk('error' in a!, 'no error field when there is a response');

  const change = unit(t, 'http', { url, emit: 'change' });
  t.equal((await change.poll()).length, 1, 'first probe emits');
  t.same(await change.poll(), [], 'same status: nothing');
  status = 503;
  t.match(payloads(await change.poll()), [{ status: 503, ok: false }], 'status change emits');

  const failure = unit(t, 'http', { url, emit: 'failure', expectStatus: [503] });
  t.same(await failure.poll(), [], '503 expected: ok, nothing emitted');
  status = 200;
  t.match(payloads(await failure.poll()), [{ status: 200, ok: false }], 'not in expectStatus: failure');

  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
  const [down] = payloads(await always.poll());
  t.match(down, { url, status: 0, ok: false, error: /ECONNREFUSED/ }, 'server down: status 0 with error');
});

t.test('http times out a server that never answers', async (t) => {
  const server = createHttpServer(() => { /* never answers */ });
  const port = await listen(t, server);
  const started = Date.now();
  const [r] = payloads(await unit(t, 'http', { url: `http://127.0.0.1:${port}/`, timeout: 200 }).poll());
  t.match(r, { status: 0, ok: false, error: 'timed out after 200 ms' });
  t.ok(Date.now() - started < 3000, 'bounded by the timeout');
});

t.test('https: an untrusted certificate fails unless caFile or insecure', async (t) => {
  const dir = tmp(t);
  const ca = createCA({ commonName: 'Sensor Test CA' });
  const k = generateKey();
  const cert = issueCertificate({
    issuerCertPem: ca.certPem, issuerKey: ca.key, subjectPublicKey: k.publicKey, subject: { commonName: '127.0.0.1' },
    ipAddresses: ['127.0.0.1'], usage: 'server', notAfter: new Date(Date.now() + 86_400_000),
  });
  const port = await listen(t, createHttpsServer({ key: k.privateKeyPem, cert }, (_q, s) => s.end('ok')) as unknown as Server);
  const url = `https://127.0.0.1:${port}/`;
  const [bad] = payloads(await unit(t, 'http', { url }).poll());
  t.match(bad, { status: 0, ok: false, error: /certificate/i }, 'untrusted: no response');
  writeFileSync(join(dir, 'ca.pem'), ca.certPem);
  t.match(payloads(await unit(t, 'http', { url, caFile: join(dir, 'ca.pem') }).poll()), [{ status: 200, ok: true }], 'caFile trusts it');
  t.match(payloads(await unit(t, 'http', { url, insecure: true }).poll()), [{ status: 200, ok: true }], 'insecure skips verification');
  await t.rejects(unit(t, 'http', { url, caFile: join(dir, 'nope.pem') }).poll(), /ENOENT/, 'a missing caFile is a sensor error');
});

t.test('command emits on change, on nonzero, and reports timeouts and missing programs', async (t) => {
  const dir = tmp(t);
  const f = join(dir, 'state');
  writeFileSync(f, 'a');
  const change = unit(t, 'command', { argv: ['cat', f] });
  t.same(payloads(await change.poll()), [{ argv: ['cat', f], exitCode: 0, stdout: 'a', stderr: '' }], 'first run emits');
  t.same(await change.poll(), [], 'same output: nothing');
  writeFileSync(f, 'b');
  t.match(payloads(await change.poll()), [{ exitCode: 0, stdout: 'b' }], 'output changed: emits');

  const code = join(dir, 'code');
  writeFileSync(code, '0');
  const nonzero = unit(t, 'command', { argv: ['sh', '-c', 'printf e >&2; exit "$(cat "$1")"', 'sh', code], emit: 'nonzero' });
  t.same(await nonzero.poll(), [], 'exit 0: nothing');
  writeFileSync(code, '3');
  t.match(payloads(await nonzero.poll()), [{ exitCode: 3, stderr: 'e' }], 'exit 3: emits');
  t.equal((await nonzero.poll()).length, 1, 'still nonzero: emits again');

  const started = Date.now();
  t.match(payloads(await unit(t, 'command', { argv: ['sleep', '30'], timeout: 200, emit: 'always' }).poll()),
    [{ exitCode: -1, error: /timed out after 200 ms/ }], 'timeout kills it');
  t.ok(Date.now() - started < 5000);
  t.match(payloads(await unit(t, 'command', { argv: [join(dir, 'no-such-program')] }).poll()),
    [{ exitCode: -1, error: /command not found/ }], 'missing program');
  const [big] = payloads(await unit(t, 'command', { argv: ['sh', '-c', 'yes | head -c 100000'] }).poll());
  t.equal((big!.stdout as string).length, COMMAND_OUTPUT_CAP_BYTES, 'stdout capped');
  const [env] = payloads(await unit(t, 'command', { argv: ['sh', '-c', 'printf %s "${TRELLIS_SENSOR_TEST_SECRET-unset}"'] }).poll());
  t.equal(env!.stdout, 'unset', 'the agent environment is not passed through');
});
t.test('command stopped by its signal kills the child', async (t) => {
  const u = unit(t, 'command', { argv: ['sleep', '30'], emit: 'always' });
  const p = u.poll();
  await sleep(100);
  u.abort.abort();
  t.same(await p, [], 'a stopped run emits nothing');
});

// ---------------------------------------------------------------------------------------------
// the manager

t.test('manager: events carry type, time and sensor name; apply swaps and stops removed sensors', async (t) => {
  const dir = tmp(t);
  const { m, events } = manager(t);
  const fa = join(dir, 'a');
  const fb = join(dir, 'b');
  m.apply([spec('p.a', 'file', { path: fa }), spec('p.b', 'file', { path: fb }, 50, 'custom.b')]);
  await sleep(120); // baselines taken
  writeFileSync(fa, '1');
  writeFileSync(fb, '1');
  await waitFor('both events', () => events.length >= 2);
  const a = events.find((e) => e.sensor === 'p.a')!;
  t.match(a, { type: 'core.file', sensor: 'p.a', payload: { path: fa, change: 'created', sensor: 'p.a' } });
  t.ok(Math.abs(a.timeMs - Date.now()) < 5000);
  t.match(events.find((e) => e.sensor === 'p.b'), { type: 'custom.b', payload: { sensor: 'p.b' } }, 'trigger from the spec');

  m.apply([spec('p.b', 'file', { path: fb }, 50, 'custom.b')]);
  t.same(m.status().map((s) => s.name), ['p.b'], 'p.a removed');
  events.length = 0;
  writeFileSync(fa, '22');
  writeFileSync(fb, '22');
  await waitFor('b modified', () => events.some((e) => e.sensor === 'p.b'));
  await sleep(200);
  t.notOk(events.some((e) => e.sensor === 'p.a'), 'no events from a removed sensor');

  // changed spec (new trigger) restarts; the restarted file sensor takes a new baseline
  m.apply([spec('p.b', 'file', { path: fb }, 50, 'custom.b2')]);
  await sleep(120); // the restarted sensor takes its baseline
  events.length = 0;
  writeFileSync(fb, '333');
  const e = await waitFor('restarted b', () => events.find((x) => x.sensor === 'p.b'));
  t.equal(e.type, 'custom.b2', 'restarted with the changed spec');
  const st = m.status()[0]!;
  t.match(st, { name: 'p.b', kind: 'file', lastError: '' });
  t.ok(st.events >= 1 && st.lastRunMs > 0);
});

t.test('manager: an unchanged spec keeps running with its state (a log offset)', async (t) => {
  const dir = tmp(t);
  const path = join(dir, 'l.log');
  writeFileSync(path, '');
  const { m, events } = manager(t);
  const s = spec('p.log', 'log', { path, pattern: 'hit' });
  m.apply([s]);
  await sleep(100);
  appendFileSync(path, 'hit 1\n');
  await waitFor('first hit', () => events.length === 1);
  m.apply([{ ...s, configJson: Buffer.from(s.configJson) }, spec('p.cpu', 'cpu', {}, 1000)]);
  appendFileSync(path, 'hit 2\n');
  await waitFor('second hit', () => events.filter((e) => e.sensor === 'p.log').length === 2);
  await sleep(150);
  t.same(events.filter((e) => e.sensor === 'p.log').map((e) => e.payload.line), ['hit 1', 'hit 2'], 'no line re-emitted');
});

t.test('manager: bad specs are logged and skipped, never thrown, others still run', async (t) => {
  const cap = captureLog();
  const { m, events } = manager(t, { log: cap.log });
  let skipped: { name: string; error: string }[] = [];
  t.doesNotThrow(() => {
    skipped = m.apply([
      spec('bad.kind', 'teleport', {}),
      { ...spec('bad.json', 'cpu', {}), configJson: Buffer.from('{nope') },
      spec('bad.config', 'log', { path: '/x', pattern: '(a)\\1' }),
      spec('', 'cpu', {}),
      { ...spec('big', 'cpu', {}), configJson: Buffer.alloc(70 * 1024, 0x20) },
      { ...spec('weird', 'cpu', {}), configJson: 42 as unknown as Buffer },
      { ...spec('bad.trigger', 'cpu', {}), trigger: { x: 1 } as unknown as string },
      null as unknown as ReturnType<typeof spec>,
      spec('good', 'memory', {}),
      spec('good', 'cpu', {}),
    ]);
  });
  t.same(skipped.map((s) => s.name).sort(), ['', '', 'bad.config', 'bad.json', 'bad.kind', 'bad.trigger', 'big', 'good', 'weird'], 'every bad spec reported');
  t.match(skipped.find((s) => s.name === 'bad.config'), { error: /pattern: is not a usable regular expression: it uses a backreference/ });
  await waitFor('good emits', () => events.some((e) => e.sensor === 'good'));
  t.same(m.status().map((s) => s.name), ['good']);
  t.equal(m.status()[0]!.kind, 'memory', 'the first of duplicate names wins');
  const msgs = cap.lines().map((l) => String(l.msg));
  t.ok(msgs.some((x) => /unknown kind "teleport"/.test(x)), 'unknown kind logged');
  t.ok(msgs.some((x) => /config is not JSON/.test(x)), 'bad JSON logged');
  t.ok(msgs.some((x) => /pattern: is not a usable regular expression/.test(x)), 'bad config logged with the field');
  t.ok(msgs.some((x) => /name must be/.test(x)), 'empty name logged');
  t.ok(msgs.some((x) => /malformed spec/.test(x)), 'malformed configJson logged');
  t.ok(msgs.some((x) => /trigger must be a string/.test(x)), 'bad trigger logged');
  t.ok(msgs.some((x) => /over the 65536-byte limit/.test(x)), 'oversized config logged');
  t.ok(msgs.some((x) => /already in the config/.test(x)), 'duplicate logged');
});

t.test('manager: a sensor whose poll throws does not stop others, and backs off', async (t) => {
  const cap = captureLog();
  const pollTimes: number[] = [];
  const boom: Sensor = { kind: 'cpu', create: () => ({ poll: async () => { pollTimes.push(Date.now()); throw new Error('sensor exploded'); } }) };
  const { m, events } = manager(t, { log: cap.log, sensors: { ...SENSORS, cpu: boom } });
  const dir = tmp(t);
  m.apply([spec('boom', 'cpu', {}, 20), spec('disk.missing', 'disk', { path: join(dir, 'gone') }, 20), spec('mem', 'memory', {}, 20)]);
  await waitFor('memory keeps emitting', () => events.filter((e) => e.sensor === 'mem').length >= 10 && pollTimes.length >= 5);
  const byName = Object.fromEntries(m.status().map((s) => [s.name, s]));
  t.equal(byName.boom!.lastError, 'sensor exploded');
  t.match(byName['disk.missing']!.lastError, /ENOENT/);
  t.equal(byName.mem!.lastError, '');
  // interval 20 ms; backoff steps 20, 40, 80, 160 ms with jitter in [step/2, step]: the 4th gap is >= 80 ms.
  const gaps = pollTimes.slice(1).map((x, i) => x - pollTimes[i]!);
  t.ok(gaps[3]! >= 75, `backoff: gaps between failing polls grow (${gaps.join(', ')} ms)`);
  const warns = cap.lines().filter((l) => /sensor poll failed: sensor exploded/.test(String(l.msg)));
  t.equal(warns.length, 1, 'a steady failure is logged once');
});

t.test('manager: polls never overlap, a throwing sink is contained, close waits for the in-flight poll', async (t) => {
  let active = 0;
  let maxActive = 0;
  let polls = 0;
  let closed = 0;
  const slow: Sensor = {
    kind: 'cpu',
    create: () => ({
      poll: async () => { active++; polls++; maxActive = Math.max(maxActive, active); await sleep(80); active--; return [{ payload: { n: polls } }]; },
      close: () => { closed++; },
    }),
  };
  let calls = 0;
  const m = new SensorManager({ log: quiet(), emit: () => { calls++; throw new Error('sink down'); }, minIntervalMs: 1, sensors: { cpu: slow } });
  m.apply([spec('slow', 'cpu', {}, 1)]);
  await waitFor('several polls', () => polls >= 4);
  t.equal(maxActive, 1, 'one poll at a time');
  t.ok(calls >= 3, 'the sink kept being called after it threw');
  await m.close();
  t.equal(active, 0, 'close waited for the in-flight poll');
  t.equal(closed, 1, 'unit closed once');
  const after = polls;
  await sleep(150);
  t.equal(polls, after, 'no polls after close');
  m.apply([spec('slow', 'cpu', {}, 1)]);
  t.same(m.status(), [], 'apply after close is ignored');
});

t.test('manager: watch-style sensors get events through and stop on removal', async (t) => {
  let stopped = false;
  const watcher: Sensor = {
    kind: 'file',
    create: (ctx) => ({
      watch(emit) {
        const timer = setInterval(() => emit([{ payload: { tick: true } }]), 20);
        ctx.signal.addEventListener('abort', () => { clearInterval(timer); stopped = true; }, { once: true });
      },
    }),
  };
  const { m, events } = manager(t, { sensors: { file: watcher } });
  m.apply([spec('w', 'file', {})]);
  await waitFor('watch events', () => events.length >= 2);
  t.match(events[0], { type: 'core.file', sensor: 'w', payload: { tick: true, sensor: 'w' } });
  m.apply([]);
  t.ok(stopped, 'its signal aborted on removal');
  const n = events.length;
  await sleep(100);
  t.equal(events.length, n, 'no events after removal');
});

t.test('manager: an interval below the minimum is raised to it', async (t) => {
  let polls = 0;
  const counter: Sensor = { kind: 'cpu', create: () => ({ poll: async () => { polls++; return []; } }) };
  const m = new SensorManager({ log: quiet(), emit: () => {}, minIntervalMs: 100, sensors: { cpu: counter } });
  t.teardown(() => m.close());
  m.apply([spec('fast', 'cpu', {}, 1)]);
  await sleep(450);
  t.ok(polls >= 2 && polls <= 6, `about 5 polls in 450 ms at 100 ms (got ${polls})`);
});
