import t from 'tap';
import { writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { loadHubConfig, validateConfig } from '../hub/config.js';
import { parseDuration, formatDuration } from '../common/duration.js';
import { parseJoinToken, formatJoinToken, newJoinToken } from '../common/jointoken.js';
import { tempDir } from './helpers/hub.js';
import { AGENT_CONCURRENT_ACTIONS } from '../common/automation/request.js';
import { storeOptions } from '../hub/store/from-config.js';
import { poolConfig } from '../hub/store/postgres/index.js';

t.test('hub config: defaults, file, environment, flags, in that order', async (t) => {
  await using d = await tempDir();
  writeFileSync(join(d.path, 'hub.json'), JSON.stringify({ names: ['hub.example'], agentPort: 9000, sessionTtl: '2h' }));
  const c = loadHubConfig(d.path, { adminPort: 9100 }, { TRELLIS_HUB_AGENT_PORT: '9001' });
  t.equal(c.agentPort, 9001, 'environment beats file');
  t.equal(c.adminPort, 9100, 'flag');
  t.equal(c.webPort, 7445, 'default');
  t.equal(c.sessionTtl, 7_200_000, 'durations become milliseconds');
  t.equal(c.agentCertTtl, 7 * 86_400_000);
  t.ok(Object.isFrozen(c), 'frozen');
  t.equal(c.executions.perAgentConcurrency, AGENT_CONCURRENT_ACTIONS, 'the hub keeps as many executions in flight per agent as the agent runs at once');
  t.equal(AGENT_CONCURRENT_ACTIONS, 16);
});

t.test('hub config: an unknown key is rejected by name, with the file', async (t) => {
  await using d = await tempDir();
  writeFileSync(join(d.path, 'hub.json'), JSON.stringify({ names: ['h'], agentPrt: 1 }));
  t.throws(() => loadHubConfig(d.path, {}, {}), { code: 'TRELLIS_E_CONFIG', message: /agentPrt/ });
  t.throws(() => loadHubConfig(d.path, {}, {}), { message: new RegExp(join(d.path, 'hub.json').replace(/[/.]/g, '\\$&')) });
});

t.test('hub config: bad values and missing or broken files give clear errors', async (t) => {
  t.throws(() => validateConfig({ names: [] }, 'x'), { code: 'TRELLIS_E_CONFIG', message: /names/ });
  t.throws(() => validateConfig({ names: ['h'], agentPort: 70000 }, 'x'), { message: /agentPort/ });
  t.throws(() => validateConfig({ names: ['h'], sessionTtl: 'forever' }, 'x'), { message: /sessionTtl.*forever/ });
  t.throws(() => validateConfig({ names: ['h'], logLevel: 'loud' }, 'x'), { message: /logLevel/ });
  t.throws(() => validateConfig({ names: ['h'], joinTokenTtl: '8d' }, 'x'), { code: 'TRELLIS_E_CONFIG', message: /joinTokenTtl: .*longer than joinTokenMaxTtl/ }, 'a default join-token lifetime over the maximum is refused at start-up');
  t.throws(() => validateConfig({ names: ['h'], joinTokenMaxTtl: '400d' }, 'x'), { code: 'TRELLIS_E_CONFIG', message: /joinTokenMaxTtl: at most 365d/ });
  t.equal(validateConfig({ names: ['h'], joinTokenTtl: '30d', joinTokenMaxTtl: '30d' }, 'x').joinTokenTtl, 30 * 86_400_000);
  await using d = await tempDir();
  t.throws(() => loadHubConfig(d.path), { code: 'TRELLIS_E_CONFIG', message: /trellis hub init/ });
  mkdirSync(join(d.path, 'x'));
  writeFileSync(join(d.path, 'x', 'hub.json'), '{ not json');
  t.throws(() => loadHubConfig(join(d.path, 'x')), { code: 'TRELLIS_E_CONFIG', message: /cannot parse/ });
});

t.test('hub config: store is lowdb by default; a postgres store is checked, and its password never echoed', async (t) => {
  const secret = 'pw-Secret-123';
  t.same(validateConfig({ names: ['h'] }, 'x').store, { kind: 'lowdb' }, 'default: lowdb');
  const pgc = validateConfig({ names: ['h'], store: { kind: 'postgres', url: 'postgres://trellis@db.example/trellis' } }, 'x').store;
  t.match(pgc, { kind: 'postgres', poolSize: 10, statementTimeout: 10_000, connectTimeout: 5_000 }, 'postgres defaults');
  const bad: [unknown, RegExp][] = [
    [{ kind: 'postgres', url: `mysql://u:${secret}@h/db` }, /store\.url: postgres:\/\/USER@HOST/],
    [{ kind: 'postgres', url: `postgres://u:${secret}@h/db withspace` }, /store\.url/],
    [{ kind: 'postgres', url: 'postgres://u@h/db', poolsize: 3 }, /poolsize/],
    [{ kind: 'postgres', url: 'postgres://u@h/db', passwordFile: 'relative/pw' }, /passwordFile: an absolute path/],
    [{ kind: 'postgres', url: 'postgres://u@h/db', passwordFile: '/pw', passwordEnv: 'PW' }, /at most one of passwordFile and passwordEnv/],
    [{ kind: 'postgres', url: 'postgres://u@h/db', ssl: { mode: 'prefer' } }, /ssl\.mode/],
    [{ kind: 'mongo' }, /store\.kind/],
  ];
  for (const [store, msg] of bad) {
    const err = (() => { try { validateConfig({ names: ['h'], store }, 'x'); } catch (e) { return e as Error; } })();
    t.match(err, { code: 'TRELLIS_E_CONFIG', message: msg }, JSON.stringify(store).replace(secret, '***'));
    t.notMatch(err?.message ?? '', secret, 'the password is not echoed');
  }
  // Connection options: a password in the URL or its parameters is not echoed either.
  t.throws(() => poolConfig({ url: `postgres://u:${secret}@db.example/trellis?sslmode=require` }), { code: 'TRELLIS_E_CONFIG', message: /"sslmode" is not supported.*store\.ssl/ });
  try { poolConfig({ url: `postgres://u:${secret}@db.example/?x=1` }); } catch (e) { t.notMatch((e as Error).message, secret); }
  try { poolConfig({ url: `postgres://u:${secret}@db.example/` }); } catch (e) { t.match(e, { message: /names no database: postgres:\/\/u:\*\*\*@db\.example/ }); t.notMatch((e as Error).message, secret); }
  t.equal(poolConfig({ url: 'postgres://u@127.0.0.1/db' }).ssl, false, 'loopback: plain TCP by default');
  t.match(poolConfig({ url: 'postgres://u@db.example/db' }).ssl, { rejectUnauthorized: true, servername: 'db.example' }, 'elsewhere: TLS, verified, by default');
  t.match(poolConfig({ url: 'postgres://u@db.example/db', ssl: { mode: 'require' } }).ssl, { rejectUnauthorized: false });
  t.throws(() => poolConfig({ url: 'postgres://u@db.example/db', ssl: { mode: 'disable', ca: 'PEM' } }), { message: /need mode "require" or "verify-full"/ });

  // The password from a file (0600 only) or an environment variable.
  await using d = await tempDir();
  const pwFile = join(d.path, 'db.pw');
  writeFileSync(pwFile, `${secret}\n`, { mode: 0o644 });
  const cfg = validateConfig({ names: ['h'], store: { kind: 'postgres', url: 'postgres://u@h/db', passwordFile: pwFile } }, 'x').store;
  t.throws(() => storeOptions(cfg, '/unused'), { code: 'TRELLIS_E_CONFIG', message: /readable by others.*chmod 600/ });
  const { chmodSync } = await import('node:fs');
  chmodSync(pwFile, 0o600);
  t.match(storeOptions(cfg, '/unused'), { kind: 'postgres', password: secret }, 'the trailing newline is dropped');
  const envCfg = validateConfig({ names: ['h'], store: { kind: 'postgres', url: 'postgres://u@h/db', passwordEnv: 'TRELLIS_TEST_DB_PW' } }, 'x').store;
  t.match(storeOptions(envCfg, '/unused', { env: { TRELLIS_TEST_DB_PW: secret } }), { password: secret });
  t.throws(() => storeOptions(envCfg, '/unused', { env: {} }), { code: 'TRELLIS_E_CONFIG', message: /TRELLIS_TEST_DB_PW is not set/ });
});

t.test('durations', async (t) => {
  t.equal(parseDuration('15m'), 900_000);
  t.equal(parseDuration('1h30m'), 5_400_000);
  t.equal(parseDuration('500ms'), 500);
  t.equal(parseDuration('30'), 30_000, 'a bare number is seconds');
  for (const bad of ['', 'm', '10x', '1h 2m', '-5s', 'abc']) t.throws(() => parseDuration(bad), { code: 'TRELLIS_E_INVALID_ARGUMENT' }, `"${bad}"`);
  t.equal(formatDuration(93_784_000), '1d2h3m4s');
});

t.test('join tokens: round trip, and malformed ones refused', async (t) => {
  const tok = newJoinToken('a'.repeat(64));
  t.same(parseJoinToken(formatJoinToken(tok)), tok);
  t.same(parseJoinToken(`  ${formatJoinToken(tok)}\n`), tok, 'surrounding white space from copy-paste is ignored');
  const s = formatJoinToken(tok);
  for (const bad of ['', 'tj1', s.slice(0, -1), s.replace('tj1', 'tj2'), s + 'x', s.replace(/\.[^.]+\./, '..'), 'x'.repeat(10_000)]) {
    t.throws(() => parseJoinToken(bad), { code: 'TRELLIS_E_TOKEN_INVALID' });
  }
});

t.test('hub config: audit retention and the metrics allow-list are validated', async (t) => {
  const d = validateConfig({ names: ['h'] }, 'x');
  t.same(d.audit.retention, { maxAge: 90 * 86_400_000, maxSegments: 20, maxSegmentBytes: 16 * 1024 * 1024 }, 'audit retention defaults');
  t.same(d.metrics.allow, [], 'no address may read /metrics without a key by default');
  const c = validateConfig({ names: ['h'], audit: { retention: { maxAge: '365d', maxSegments: 50 } }, metrics: { allow: ['127.0.0.1/32', '10.0.0.0/8', '::1/128'] } }, 'x');
  t.equal(c.audit.retention.maxAge, 365 * 86_400_000);
  t.equal(c.audit.retention.maxSegments, 50);
  t.equal(c.audit.retention.maxSegmentBytes, 16 * 1024 * 1024, 'an unset key keeps its default');
  t.throws(() => validateConfig({ names: ['h'], audit: { retention: { maxAge: '10m' } } }, 'x'), { code: 'TRELLIS_E_CONFIG', message: /audit\.retention\.maxAge: at least 1h/ });
  t.throws(() => validateConfig({ names: ['h'], audit: { retention: { maxSegments: 1 } } }, 'x'), { message: /audit\.retention\.maxSegments/ });
  t.throws(() => validateConfig({ names: ['h'], audit: { retention: { maxCount: 5 } } }, 'x'), { message: /audit\.retention.*maxCount/ }, 'unknown keys named');
  t.throws(() => validateConfig({ names: ['h'], audit: { keep: 1 } }, 'x'), { message: /audit.*keep/ });
  for (const bad of ['10.0.0.0', '10.0.0.0/33', 'localhost/8', '::1/129', '', '1.2.3.4/8/8']) {
    t.throws(() => validateConfig({ names: ['h'], metrics: { allow: [bad] } }, 'x'), { code: 'TRELLIS_E_CONFIG', message: /metrics\.allow\.0: an address range in CIDR notation/ }, `"${bad}" refused`);
  }
  t.throws(() => validateConfig({ names: ['h'], metrics: { allowed: [] } }, 'x'), { message: /metrics.*allowed/ });
});
