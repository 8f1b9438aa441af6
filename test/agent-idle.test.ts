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
import { channelV1 } from '../common/proto-channel.js';
import { v1 } from '../common/proto.js';
import { caseBytes, caseRng, loadRoot } from '../bench/fuzz/gen.js';
import { agentMessages, helloMessage, hubMessages } from '../bench/fuzz/examples.js';
import type { MethodDefinition } from '@grpc/grpc-js';

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
    ['/node_modules/@grpc/proto-loader/', '@grpc/proto-loader and its protobufjs descriptor extension (~0.9 MB of heap)'],
    ['/node_modules/protobufjs/ext/descriptor', "protobufjs' descriptor extension"],
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

const ONEOF = ['hello', 'heartbeat', 'events', 'started', 'output', 'result', 'configAck', 'welcome', 'action', 'cancel', 'eventAck', 'caBundle', 'config', 'resultAck'];
/** How many members of the frame's oneof a decoded frame has. */
function members(o: object): number {
  return ONEOF.filter((k) => (o as Record<string, unknown>)[k] != null).length;
}

/** A decoded frame as its reader sees it: `msg` and the member it names. */
function oneof(o: object | undefined): unknown {
  const m = (o as { msg?: string } | undefined)?.msg;
  return m ? { msg: m, [m]: (o as Record<string, unknown>)[m] } : o;
}

t.test('the channel-only contract (protobufjs, no proto-loader) encodes and decodes the same messages as the full contract', async (t) => {
  type Def = MethodDefinition<object, object>;
  const mine = (channelV1.AgentChannel as unknown as { service: Record<string, Def> }).service;
  const full = (v1.AgentChannel as unknown as { service: Record<string, Def> }).service;
  t.same(Object.keys(mine).sort(), Object.keys(full).sort(), 'the same methods');
  const root = loadRoot();
  let compared = 0;
  for (const [name, a] of Object.entries(mine)) {
    const b = full[name]!;
    t.same([a.path, a.requestStream, a.responseStream, a.originalName], [b.path, b.requestStream, b.responseStream, b.originalName], `${name}: path, streaming and name`);
    const sides: Array<[string, (x: object) => Buffer, (x: object) => Buffer, (x: Buffer) => object, (x: Buffer) => object]> = [
      ['request', a.requestSerialize, b.requestSerialize, a.requestDeserialize, b.requestDeserialize],
      ['response', a.responseSerialize, b.responseSerialize, a.responseDeserialize, b.responseDeserialize],
    ];
    for (const [side, serA, serB, deA, deB] of sides) {
      // The message type of this side, for typed (schema-valid) random messages.
      const svc = root.lookupService('trellis.v1.AgentChannel').methods[name]!;
      const type = root.lookupType(side === 'response' ? svc.responseType : svc.requestType);
      const examples = type.name === 'AgentMessage' ? [...agentMessages(), helloMessage()] : type.name === 'HubMessage' ? hubMessages() : [];
      for (const ex of examples) {
        t.same(deB(serA(ex)), deB(serB(ex)), `${name} ${side}: ${Object.keys(ex)[0]} encodes to the same message`);
        t.same(deA(serA(ex)), deB(serB(ex)), `${name} ${side}: ${Object.keys(ex)[0]} decodes to the same object`);
      }
      // Mutated valid frames and random bytes: where both decode a frame, to the same object. A few
      // frames only one of them refuses: protobufjs 8 (ours) refuses a string that is not UTF-8 (7
      // decodes it with U+FFFD) and reads some truncated unknown fields that 7 refuses. A frame with
      // several members of the oneof: 8 keeps the last (the protobuf rule), 7 keeps them all and its
      // `msg` may name another; such frames (no encoder writes them) are counted, not compared.
      let onlyOne = 0, several = 0;
      for (let i = 0; i < 400; i++) {
        const bytes = caseBytes(caseRng(77, i), i % 4 === 0 ? 'random' : 'mutated', type, examples);
        let objA: object | undefined, objB: object | undefined, errA = '', errB = '';
        try { objA = deA(bytes); } catch (e) { errA = String(e); }
        try { objB = deB(bytes); } catch (e) { errB = String(e); }
        if (!!errA !== !!errB) { if (!/not valid for encoding utf-8/.test(errA)) onlyOne++; continue; }
        if (objB && members(objB) > 1) { several++; continue; }
        if (JSON.stringify(oneof(objA)) !== JSON.stringify(oneof(objB))) { t.fail(`${name} ${side} case ${i}: decoded differently`); return; }
        if (objA) {
          // protobufjs 8 leaves out proto3 default values that 7 writes: the same message, not the same bytes.
          const read = oneof(objA) as object;
          const ea = oneof(deB(serA(read))), eb = oneof(deB(serB(read)));
          if (JSON.stringify(ea) !== JSON.stringify(eb)) { t.fail(`${name} ${side} case ${i}: encoded differently`); return; }
        }
        compared++;
      }
      t.comment(`${name} ${side}: ${several} of 400 mutated frames set several members of the oneof`);
      if (examples.length > 0) t.ok(onlyOne <= 20, `${name} ${side}: ${onlyOne} of 400 mutated frames with valid UTF-8 refused by only one of the two (truncated unknown fields)`);
    }
  }
  t.ok(compared >= 600, `${compared} messages decoded and encoded the same way by both`);
});

t.test('agent code uses neither fetch nor WebAssembly (the agent runs with --lite-mode, which has no WebAssembly)', async (t) => {
  const { readdirSync, statSync } = await import('node:fs');
  const { AGENT_NODE_FLAGS } = await import('../common/service/unit.js');
  t.ok(AGENT_NODE_FLAGS.includes('--lite-mode'), 'the unit runs the agent with --lite-mode');
  const root = join(TRELLIS_BIN, '..', '..', 'dist', 'agent');
  const files: string[] = [];
  const walk = (d: string) => { for (const f of readdirSync(d)) { const p = join(d, f); if (statSync(p).isDirectory()) walk(p); else if (p.endsWith('.js')) files.push(p); } };
  walk(root);
  t.ok(files.length > 10, `${files.length} files of dist/agent`);
  for (const f of files) {
    const src = readFileSync(f, 'utf8');
    t.notOk(/\bfetch\(|\bWebAssembly\b/.test(src), `${f.slice(root.length + 1)}: no fetch( or WebAssembly`);
  }
});
