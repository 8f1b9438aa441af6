/**
 * Hub logs: one `msg` (and one of every key) per JSON line, so a parser keeps a refusal's
 * reason; `--log-format json|pretty` and `--log-time epoch|iso` on a real `trellis hub run`.
 */
import t from 'tap';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { readFileSync, writeFileSync } from 'node:fs';
import { startCli } from './helpers/cli.js';
import { tempDir, ADMIN_PASSWORD, waitFor } from './helpers/hub.js';
import { initHub } from '../hub/init.js';
import { loadHubConfig } from '../hub/config.js';
import { adminClients, call } from '../cli/client.js';
import { createLogger } from '../common/log.js';
import { prettyLine } from '../common/log-pretty.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

/**
 * The keys of every object in a JSON text that appear twice in it, read from the raw text:
 * JSON.parse keeps the last of two equal keys without a word.
 */
export function duplicateKeys(text: string): string[] {
  const dups: string[] = [];
  const stack: Array<Set<string> | null> = [];
  let i = 0;
  let expectKey = false;
  while (i < text.length) {
    const c = text[i]!;
    if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      const s = JSON.parse(text.slice(i, j + 1)) as string;
      const top = stack[stack.length - 1];
      if (expectKey && top) { if (top.has(s)) dups.push(s); top.add(s); expectKey = false; }
      i = j + 1;
      continue;
    }
    if (c === '{') { stack.push(new Set()); expectKey = true; } else if (c === '[') stack.push(null);
    else if (c === '}' || c === ']') stack.pop();
    else if (c === ',') expectKey = stack[stack.length - 1] !== null && stack.length > 0;
    i++;
  }
  return dups;
}

function capture(): { lines: string[]; dest: { write(s: string): void } } {
  const lines: string[] = [];
  return { lines, dest: new Writable({ write(chunk, _e, cb) { lines.push(...String(chunk).split('\n').filter(Boolean)); cb(); } }) as unknown as { write(s: string): void } };
}

t.test('duplicateKeys reads the raw text', async (t) => {
  t.same(duplicateKeys('{"a":1,"msg":"x","b":{"msg":1},"msg":"y"}'), ['msg']);
  t.same(duplicateKeys('{"a":[{"k":1},{"k":2}],"s":"{\\"a\\":1,\\"a\\":2}"}'), []);
});

t.test('a logged field named like a key pino writes is kept under <key>_: each key once per line', async (t) => {
  const { lines, dest } = capture();
  const log = createLogger({ destination: dest as never, level: 'info' });
  log.warn({ code: 'X', msg: 'the reason', time: 5, level: 'high', name: 'n', pid: 1 }, 'request refused');
  log.info({ msg: 'the message itself' });
  log.child({ component: 'admin' }).info({ reqId: 'r' }, 'plain');
  await waitFor(() => lines.length >= 3, 5_000, 'three lines written');
  t.equal(lines.length, 3);
  for (const l of lines) t.same(duplicateKeys(l), [], l);
  const [a, b, c] = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  t.match(a, { msg: 'request refused', msg_: 'the reason', time_: 5, level_: 'high', name_: 'n', pid_: 1, code: 'X', level: 40 });
  t.equal(typeof a!.time, 'number');
  t.equal(b!.msg, 'the message itself', 'msg without a message is the message');
  t.match(c, { component: 'admin', reqId: 'r', msg: 'plain' });
});

t.test('pretty lines: time, level, component, message, fields; no raw escape sequence', async (t) => {
  const line = JSON.stringify({ level: 40, time: 1_700_000_000_000, pid: 1, hostname: 'h', name: 'trellis-hub', component: 'admin', reqId: 'r1', code: 'TRELLIS_E_X', reason: 'bad \x1b[31mred\x1b[0m thing', msg: 'request refused' });
  t.equal(prettyLine(line), '2023-11-14T22:13:20.000Z WARN  [admin] request refused  reqId=r1 code=TRELLIS_E_X reason="bad \\u001b[31mred\\u001b[0m thing"\n', 'a field value in JSON form: its escapes visible, never raw');
  const raw = prettyLine(JSON.stringify({ level: 30, time: 1_700_000_000_000, msg: 'sensor skipped: \x1b]0;title\x07bad' }));
  t.equal(raw, '2023-11-14T22:13:20.000Z INFO  sensor skipped: bad\n', 'a message is cleaned of escape sequences');
  const err = prettyLine(JSON.stringify({ level: 50, time: '2023-11-14T22:13:20.000Z', msg: 'request failed', err: { type: 'Error', message: 'boom', stack: 'Error: boom\n    at f (x.js:1:1)' } }));
  t.equal(err, '2023-11-14T22:13:20.000Z ERROR request failed  err=boom\n    at f (x.js:1:1)\n');
  t.equal(prettyLine('not json'), 'not json\n');
});

t.test('logFormat and logTime: hub.json keys, environment, flags; bad values named', async (t) => {
  await using d = await tempDir();
  writeFileSync(join(d.path, 'hub.json'), JSON.stringify({ names: ['h'], logFormat: 'pretty' }));
  t.match(loadHubConfig(d.path, {}, {}), { logFormat: 'pretty', logTime: 'epoch' });
  t.match(loadHubConfig(d.path, {}, { TRELLIS_LOG_TIME: 'iso', TRELLIS_LOG_FORMAT: 'json' }), { logFormat: 'json', logTime: 'iso' });
  t.match(loadHubConfig(d.path, { logTime: 'epoch' }, { TRELLIS_LOG_TIME: 'iso' }), { logTime: 'epoch' });
  t.throws(() => loadHubConfig(d.path, {}, { TRELLIS_LOG_TIME: 'unix' }), { code: 'TRELLIS_E_CONFIG', message: /logTime/ });
  const env = process.env.TRELLIS_LOG_FORMAT;
  t.teardown(() => { if (env === undefined) delete process.env.TRELLIS_LOG_FORMAT; else process.env.TRELLIS_LOG_FORMAT = env; });
  process.env.TRELLIS_LOG_FORMAT = 'fancy';
  t.throws(() => createLogger(), { code: 'TRELLIS_E_CONFIG', message: /TRELLIS_LOG_FORMAT is json or pretty, not "fancy"/ });
});

/** Runs `trellis hub run` with `flags`, makes one refused login, stops it; returns its stderr lines. */
async function hubRun(flags: string[]): Promise<string[]> {
  await using d = await tempDir();
  const dataDir = join(d.path, 'hub');
  await initHub({ dataDir, names: ['localhost', '127.0.0.1'], adminPassword: ADMIN_PASSWORD, config: { agentPort: 0, adminPort: 0, webPort: 0, bind: '127.0.0.1' } });
  const p = startCli(['hub', 'run', '--data', dataDir, ...flags], { TRELLIS_LOG_FORMAT: '', TRELLIS_LOG_TIME: '', TRELLIS_LOG_LEVEL: '' });
  try {
    const deadline = Date.now() + 120_000;
    let port = 0;
    while (!port) {
      if (Date.now() > deadline) throw new Error(`the hub did not start: ${p.err()}`);
      port = Number(/admin port (\d+)/.exec(p.err())?.[1] ?? 0);
      await new Promise((r) => setTimeout(r, 100));
    }
    const c = adminClients(`127.0.0.1:${port}`, readFileSync(join(dataDir, 'ca.pem'), 'utf8'));
    try {
      await call<T.LoginRequest, T.LoginResponse__Output>(c, c.auth, c.auth.Login, { username: 'admin', password: 'not-the-password-1' }).then(
        () => { throw new Error('a wrong password logged in'); }, () => undefined);
    } finally { c.close(); }
    // The refusal is logged when the call ends; wait for its line.
    while (!/request refused/.test(p.err())) {
      if (Date.now() > deadline) throw new Error(`no refusal line: ${p.err()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    p.child.kill('SIGTERM');
    await p.done;
  }
  return p.err().split('\n').filter(Boolean);
}

t.test('`hub run`: JSON lines with one msg each, the refusal keeps its reason; --log-time iso', async (t) => {
  const lines = (await hubRun(['--log-time', 'iso'])).filter((l) => l.startsWith('{'));
  t.ok(lines.length >= 3, 'JSON log lines');
  for (const l of lines) t.same(duplicateKeys(l), [], `each key once: ${l.slice(0, 120)}`);
  const refused = lines.map((l) => JSON.parse(l) as Record<string, unknown>).find((o) => o.msg === 'request refused');
  t.match(refused, { msg: 'request refused', method: /AdminAuth\/Login$/, code: 'TRELLIS_E_UNAUTHENTICATED', reason: /wrong user name or password/ });
  t.match(refused!.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, 'ISO time');
});

t.test('`hub run --log-format pretty`: one readable line per entry, no JSON', async (t) => {
  const lines = await hubRun(['--log-format', 'pretty']);
  t.notOk(lines.some((l) => l.startsWith('{')), 'no JSON line');
  t.ok(lines.some((l) => /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARN  \[admin\] request refused  .*code=TRELLIS_E_UNAUTHENTICATED reason="wrong user name or password"/.test(l)), 'the refusal line');
  t.ok(lines.some((l) => /^trellis hub: agent port \d+/.test(l)), 'the start line is kept');
});

t.test('bad --log-format is a usage error naming the choices', async (t) => {
  const p = startCli(['hub', 'run', '--data', '/nonexistent', '--log-format', 'xml']);
  t.equal(await p.done, 2);
  t.match(p.err(), /Allowed choices are json, pretty/);
});
