/**
 * The service user owns DATA; a hostile one must not steer root through it. `--detach` opens
 * DATA/agent.log as root: a symlink or hard link planted there must not make root create or
 * append to a file elsewhere; `agent status` prints agent.json: no escape sequence gets through.
 */
import t, { type Test } from 'tap';
import { existsSync, linkSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { processAlive, spawnDetached } from '../common/service/system.js';
import { runCli } from './helpers/cli.js';

const uid = process.getuid?.() ?? 0;
const gid = process.getgid?.() ?? 0;

function dirs(t: Test): { data: string; elsewhere: string } {
  const data = mkdtempSync(join(tmpdir(), 'trellis-logfile-'));
  const elsewhere = mkdtempSync(join(tmpdir(), 'trellis-elsewhere-'));
  t.teardown(() => { rmSync(data, { recursive: true, force: true }); rmSync(elsewhere, { recursive: true, force: true }); });
  return { data, elsewhere };
}

const opts = (data: string) => ({ uid, gid, cwd: data, home: data, logFile: join(data, 'agent.log') });

t.test('a symlinked agent.log is refused: root creates nothing where it points', async (t) => {
  const { data, elsewhere } = dirs(t);
  const target = join(elsewhere, 'planted');
  symlinkSync(target, join(data, 'agent.log'));
  t.throws(() => spawnDetached(['/bin/true'], opts(data)), { code: 'TRELLIS_E_PERMISSION_DENIED' });
  t.notOk(existsSync(target), 'the symlink target was not created');
});

t.test('a symlink to an existing file is refused: nothing is appended to it', async (t) => {
  const { data, elsewhere } = dirs(t);
  const target = join(elsewhere, 'precious');
  writeFileSync(target, 'keep\n');
  symlinkSync(target, join(data, 'agent.log'));
  t.throws(() => spawnDetached(['/bin/echo', 'pwned'], opts(data)), { code: 'TRELLIS_E_PERMISSION_DENIED' });
  await new Promise((r) => setTimeout(r, 200));
  t.equal(readFileSync(target, 'utf8'), 'keep\n');
});

t.test('a hard-linked agent.log is refused', async (t) => {
  const { data, elsewhere } = dirs(t);
  const target = join(elsewhere, 'precious');
  writeFileSync(target, 'keep\n');
  linkSync(target, join(data, 'agent.log'));
  t.throws(() => spawnDetached(['/bin/echo', 'pwned'], opts(data)), { code: 'TRELLIS_E_PERMISSION_DENIED' });
  await new Promise((r) => setTimeout(r, 200));
  t.equal(readFileSync(target, 'utf8'), 'keep\n');
});

t.test('a plain agent.log (new or existing) gets the output appended', async (t) => {
  const { data } = dirs(t);
  const log = join(data, 'agent.log');
  writeFileSync(log, 'before\n');
  const pid = spawnDetached(['/bin/echo', 'hello'], opts(data));
  const end = Date.now() + 5000;
  while (processAlive(pid) && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  t.equal(readFileSync(log, 'utf8'), 'before\nhello\n');
});

t.test('agent status cleans what the service user wrote in DATA before it reaches the terminal', async (t) => {
  const { data } = dirs(t);
  const evil = 'x\u001b]0;owned\u0007\u001b[2J';
  writeFileSync(join(data, 'agent.json'), JSON.stringify({ hub: `h${evil}:7443`, agentId: `a${evil}`, tenant: `t${evil}`, trustDomain: 'td' }));
  const r = await runCli(['agent', 'status', '--service', 'trellis-t-hostile-status', '--data', data]);
  t.match(r.out, /agent\s+a/);
  t.notMatch(r.out + r.err, /\u001b|\u0007/, 'no escape sequence reaches the terminal');
});
