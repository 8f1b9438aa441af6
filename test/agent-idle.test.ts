/**
 * An agent is on every managed server, so an idle one must stay small and asleep:
 * - `trellis agent run` (a real child process, enrolled to a real hub, no sensors, no edge rules)
 *   loads neither hub code, nor the whole wire contract, nor node-forge's PKI/TLS modules, nor
 *   zod, the rules engine (RE2, templates), the sensors, yaml, tar, ldapts, ws or lowdb; the list
 *   comes from the process itself (an ESM load hook and require.cache at exit);
 * - once connected its main thread wakes up rarely (voluntary context switches from /proc: every
 *   timer, heartbeat or keepalive that wakes the event loop counts one). Before the outbox timer
 *   was armed only on demand it woke ~620 times a minute (a 100 ms poll); now ~15-40.
 * - agent.json is checked by hand (no zod): every bad field is named, with TRELLIS_E_CONFIG.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startHub, tempDir } from './helpers/hub.js';
import { TRELLIS_BIN } from './helpers/cli.js';
import { agentPaths, checkAgentState, readState } from '../agent/identity.js';
import { isTrellisError } from '../common/errors.js';

const linux = process.platform === 'linux';

/** A field of /proc/PID/status. */
function statusField(pid: number, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(m[1]);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Preloaded into the agent: logs every ESM module it loads, and at exit every CommonJS one, to LOG. */
function preloadScript(log: string): string {
  const hooks = `import { appendFileSync } from 'node:fs';
export async function load(url, context, next) { appendFileSync(${JSON.stringify(log)}, 'esm ' + url + '\\n'); return next(url, context); }`;
  return `const { appendFileSync } = require('node:fs');
require('node:module').register('data:text/javascript,' + encodeURIComponent(${JSON.stringify(hooks)}));
process.on('exit', () => appendFileSync(${JSON.stringify(log)}, Object.keys(require.cache).map((k) => 'cjs ' + k + '\\n').join('')));
`;
}

t.test('an idle `agent run` loads only what it uses and rarely wakes up', { skip: linux ? false : '/proc is Linux only' }, async (t) => {
  await using h = await startHub();
  await using tmp = await tempDir();
  const { dataDir } = await h.enroll();
  const log = join(tmp.path, 'modules.log');
  const preload = join(tmp.path, 'preload.cjs');
  writeFileSync(preload, preloadScript(log));
  writeFileSync(log, '');

  const child = spawn(process.execPath, ['-r', preload, TRELLIS_BIN, 'agent', 'run', '--data', dataDir], { stdio: ['ignore', 'ignore', 'pipe'] });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); });
  let err = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`agent not connected within 60 s: ${err.slice(-500)}`)), 60_000);
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      err += d;
      if (err.includes('connected to the hub')) { clearTimeout(timer); resolve(); }
    });
    child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`agent exited (${code}): ${err.slice(-500)}`)); });
  });

  // Wake-ups of the main thread while idle. Voluntary switches count sleeps (epoll_wait), not CPU
  // contention, so a busy machine does not inflate them. The hub's heartbeat (10 s), the gRPC
  // keepalive (15 s) and V8's memory reducer account for the ~15-40 a minute left.
  await sleep(3_000);
  const pid = child.pid!;
  const w0 = statusField(pid, 'voluntary_ctxt_switches');
  const t0 = performance.now();
  await sleep(20_000);
  const perMin = ((statusField(pid, 'voluntary_ctxt_switches') - w0) * 60_000) / (performance.now() - t0);
  t.ok(perMin < 120, `idle agent main thread wakes ${perMin.toFixed(0)} times a minute (< 120; a 100 ms poll is 600)`);

  child.kill('SIGTERM');
  t.equal(await exited, 0, 'the agent stops cleanly on SIGTERM');
  const lines = readFileSync(log, 'utf8').split('\n').filter(Boolean);
  const esm = lines.filter((l) => l.startsWith('esm ')).map((l) => decodeURIComponent(l.slice(4)));
  const cjs = lines.filter((l) => l.startsWith('cjs ')).map((l) => l.slice(4));
  const all = [...esm, ...cjs];
  // The log works: it saw the agent and the gRPC library.
  t.ok(esm.some((u) => u.includes('/dist/agent/agent.js')), 'the module log saw dist/agent/agent.js');
  t.ok(all.some((u) => u.includes('/node_modules/@grpc/grpc-js/')), 'the module log saw @grpc/grpc-js');
  t.ok(all.some((u) => u.includes('/dist/common/proto-channel.js')), 'the agent loads the channel-only contract');

  const forbidden: Array<[string, string]> = [
    ['/dist/hub/', 'hub code'],
    ['/dist/common/proto.js', 'the whole wire contract (every admin service)'],
    ['/dist/common/rules/', 'the rules engine (no edge rule configured)'],
    ['/dist/common/regex.js', 'RE2 (no edge rule configured)'],
    ['/dist/agent/sensors/', 'sensor code (no sensor configured)'],
    ['/dist/common/sensors/', 'sensor schemas (no sensor configured)'],
    ['/dist/common/packs/', 'pack loading'],
    ['/dist/cli/client.js', 'the admin client'],
    ['/node_modules/node-forge/lib/index.js', 'all of node-forge'],
    ['/node_modules/node-forge/lib/x509.js', 'node-forge PKI'],
    ['/node_modules/node-forge/lib/tls.js', 'node-forge TLS'],
    ['/node_modules/zod/', 'zod'],
    ['/node_modules/re2js/', 're2js'],
    ['/node_modules/yaml/', 'yaml'],
    ['/node_modules/tar/', 'tar'],
    ['/node_modules/ldapts/', 'ldapts'],
    ['/node_modules/ws/', 'ws'],
    ['/node_modules/lowdb/', 'lowdb'],
  ];
  for (const [part, what] of forbidden) {
    const hit = all.find((u) => u.includes(part));
    t.notOk(hit, `agent run does not load ${what}${hit ? ` (loaded ${hit})` : ''}`);
  }
});

t.test('agent.json is checked field by field, without zod', async (t) => {
  const good = { hub: 'hub:7443', enrollHub: 'hub:7444', agentId: 'a1', tenant: 'default', trustDomain: 'trellis.local', labels: { role: 'web' }, enrolledAt: 5 };
  t.same(checkAgentState(good).state, good, 'a complete file');
  t.same(checkAgentState({ hub: 'h:1', agentId: 'a', tenant: 't', trustDomain: 'd' }).state,
    { hub: 'h:1', enrollHub: '', agentId: 'a', tenant: 't', trustDomain: 'd', labels: {}, enrolledAt: 0 }, 'defaults for the optional fields');
  const bad: Array<[unknown, RegExp]> = [
    [null, /expected an object/],
    [[good], /expected an object/],
    [{ ...good, hub: '' }, /^hub: must not be empty$/],
    [{ ...good, agentId: 7 }, /^agentId: expected a string$/],
    [{ ...good, tenant: undefined }, /^tenant: expected a string$/],
    [{ ...good, extra: 1 }, /^extra: unknown key$/],
    [{ ...good, labels: { role: 1 } }, /^labels\.role: expected a string$/],
    [{ ...good, labels: 'x' }, /^labels: expected an object$/],
    [{ ...good, enrolledAt: 'now' }, /^enrolledAt: expected a number$/],
    [{ ...good, enrollHub: 3 }, /^enrollHub: expected a string$/],
  ];
  for (const [raw, re] of bad) {
    const r = checkAgentState(raw);
    t.equal(r.state, undefined, `refused: ${JSON.stringify(raw)}`);
    t.ok(r.problems.some((p) => re.test(p)), `names the problem: ${r.problems.join('; ')}`);
  }

  await using tmp = await tempDir();
  const paths = agentPaths(tmp.path);
  writeFileSync(paths.state, JSON.stringify({ ...good, hub: '', agentId: 1 }));
  const thrown = (): unknown => { try { readState(paths); } catch (e) { return e; } return undefined; };
  let e = thrown();
  t.ok(isTrellisError(e, 'TRELLIS_E_CONFIG'), 'readState: TRELLIS_E_CONFIG');
  t.match((e as Error).message, /invalid .*agent\.json: hub: must not be empty; agentId: expected a string/, 'naming the file and every bad field');
  writeFileSync(paths.state, '{not json');
  e = thrown();
  t.ok(isTrellisError(e, 'TRELLIS_E_CONFIG'), 'unparsable: TRELLIS_E_CONFIG');
  t.match((e as Error).message, /cannot parse .*agent\.json/);
  writeFileSync(paths.state, JSON.stringify(good));
  t.same(readState(paths), good, 'a good file reads back');
});
