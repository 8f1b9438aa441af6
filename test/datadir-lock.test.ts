/**
 * The hub data directory lock (hub/lock): one process writes a data directory at a time; a
 * second refuses naming the holder; a kill -9 never leaves the lock stuck; the takeover of a
 * stale lock has exactly one winner.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { initHub } from '../hub/init.js';
import { lockDataDir, LOCK_FILE } from '../hub/lock/index.js';
import { isTrellisError } from '../common/errors.js';
import { tempDir, ADMIN_PASSWORD, captureLogger, waitFor } from './helpers/hub.js';
import { startCli, runCli, type CliProcess } from './helpers/cli.js';
import { Hub } from '../hub/hub.js';

const init = (dataDir: string) => initHub({ dataDir, names: ['localhost', '127.0.0.1'], adminPassword: ADMIN_PASSWORD, config: { agentPort: 0, adminPort: 0, webPort: 0, bind: '127.0.0.1' } });

/** Resolves once the hub child printed its ports; rejects if it exits first. */
async function running(p: CliProcess, ms = 60_000): Promise<void> {
  const end = Date.now() + ms;
  while (!/trellis hub: agent port \d+/.test(p.err())) {
    if (p.child.exitCode !== null) throw new Error(`hub exited ${p.child.exitCode}: ${p.err()}`);
    if (Date.now() > end) throw new Error(`hub did not start: ${p.err()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

t.test('a second hub on the same data dir is refused naming the holder; after kill -9 of the first a new hub starts', async (t) => {
  await using d = await tempDir();
  const dataDir = join(d.path, 'hub');
  await init(dataDir);
  const first = startCli(['hub', 'run', '--data', dataDir]);
  t.teardown(() => { first.child.kill('SIGKILL'); });
  await running(first);
  const holder = JSON.parse(readFileSync(join(dataDir, LOCK_FILE), 'utf8')) as { pid: number; host: string };
  t.equal(holder.pid, first.child.pid, 'the lock names the running hub');
  t.equal(holder.host, hostname());

  const second = await runCli(['hub', 'run', '--data', dataDir]);
  t.not(second.code, 0, 'the second hub exits with an error');
  t.match(second.err, /TRELLIS_E_LOCKED/);
  t.match(second.err, new RegExp(`in use by "hub run" pid ${first.child.pid} on ${hostname().replace(/[.]/g, '\\.')}, started \\d{4}-\\d\\d-\\d\\dT`), 'the message names pid, host and start time');
  t.notMatch(second.err, /trellis hub: agent port/, 'it never listened');

  const reinit = await runCli(['hub', 'init', '--data', dataDir, '--name', 'localhost', '--force'], { TRELLIS_ADMIN_PASSWORD: ADMIN_PASSWORD });
  t.not(reinit.code, 0, '`hub init --force` on a running hub is refused too');
  t.match(reinit.err, /TRELLIS_E_LOCKED/);
  t.ok(existsSync(join(dataDir, 'ca-key.pem')), 'and it removed nothing');

  first.child.kill('SIGKILL');
  await first.done;
  t.ok(existsSync(join(dataDir, LOCK_FILE)), 'kill -9 leaves the lock file behind');
  const third = startCli(['hub', 'run', '--data', dataDir]);
  t.teardown(() => { third.child.kill('SIGKILL'); });
  await running(third);
  t.equal((JSON.parse(readFileSync(join(dataDir, LOCK_FILE), 'utf8')) as { pid: number }).pid, third.child.pid, 'the new hub took the stale lock over');
  third.child.kill('SIGTERM');
  t.equal(await third.done, 0, 'it stops cleanly');
  t.notOk(existsSync(join(dataDir, LOCK_FILE)), 'a clean stop removes the lock');
});

t.test('in one process: a second Hub.start on a held dir is refused, the lock goes with close', async (t) => {
  await using d = await tempDir();
  const dataDir = join(d.path, 'hub');
  await init(dataDir);
  const hub = await Hub.start({ dataDir, log: captureLogger().log });
  const err = await Hub.start({ dataDir, log: captureLogger().log }).catch((e: unknown) => e);
  t.ok(isTrellisError(err, 'TRELLIS_E_LOCKED'), 'refused');
  t.match((err as Error).message, /already in use by this process/);
  t.equal(hub.state, 'running', 'the first hub is untouched');
  await hub.close(500);
  const again = await Hub.start({ dataDir, log: captureLogger().log });
  t.pass('started again after close');
  await again.close(500);
});

t.test('stale and foreign locks: a dead pid or a reused pid is taken over, another host\'s lock is not', async (t) => {
  await using d = await tempDir();
  // A dead pid: a finished child's.
  const child = spawn(process.execPath, ['-e', '0']);
  await new Promise((r) => child.on('close', r));
  writeFileSync(join(d.path, LOCK_FILE), JSON.stringify({ pid: child.pid, host: hostname(), startedAtMs: 1, procStart: '1', purpose: 'hub run' }));
  const a = lockDataDir(d.path, 'test');
  t.equal(a.holder.pid, process.pid, 'a dead holder\'s lock is taken over');
  a.release();
  t.notOk(existsSync(join(d.path, LOCK_FILE)));

  // A live pid whose start time differs: the pid was reused after a crash.
  writeFileSync(join(d.path, LOCK_FILE), JSON.stringify({ pid: process.ppid, host: hostname(), startedAtMs: 1, procStart: '1', purpose: 'hub run' }));
  const b = lockDataDir(d.path, 'test');
  t.pass('a reused pid does not keep the lock');
  b.release();

  // A zombie: killed, not reaped yet by its parent (a supervisor that restarts before it waits).
  // `exec sleep` replaces the shell with a process that never waits; the child is killed only once
  // that exec happened (a shell still running could reap it first: seen once under load).
  const zombieParent = spawn('sh', ['-c', 'sleep 60 & echo $!; exec sleep 20'], { stdio: ['ignore', 'pipe', 'ignore'] });
  t.teardown(() => { zombieParent.kill('SIGKILL'); });
  const zpid = Number(await new Promise<string>((resolve) => zombieParent.stdout!.setEncoding('utf8').once('data', resolve)));
  await waitFor(() => readFileSync(`/proc/${zombieParent.pid}/comm`, 'utf8').trim() === 'sleep', 10_000, 'the shell to exec sleep');
  process.kill(zpid, 'SIGKILL');
  await waitFor(() => /\) Z /.test(readFileSync(`/proc/${zpid}/stat`, 'utf8')), 10_000, 'the killed child to become a zombie');
  t.match(readFileSync(`/proc/${zpid}/stat`, 'utf8'), /\) Z /, 'the holder is a zombie');
  writeFileSync(join(d.path, LOCK_FILE), JSON.stringify({ pid: zpid, host: hostname(), startedAtMs: 1, procStart: '', purpose: 'hub run' }));
  lockDataDir(d.path, 'test').release();
  t.pass('a zombie holder\'s lock is taken over');

  // A torn lock file (killed between create and write).
  writeFileSync(join(d.path, LOCK_FILE), '{"pid":');
  lockDataDir(d.path, 'test').release();
  t.pass('a torn lock file is stale');

  writeFileSync(join(d.path, LOCK_FILE), JSON.stringify({ pid: 4242, host: 'other-host.example', startedAtMs: Date.parse('2026-01-02T03:04:05Z'), procStart: '9', purpose: 'hub run' }));
  t.throws(() => lockDataDir(d.path, 'test'), { code: 'TRELLIS_E_LOCKED', message: /pid 4242 on other-host\.example, started 2026-01-02T03:04:05\.000Z, another host.*remove .*hub\.lock/ });
  t.ok(existsSync(join(d.path, LOCK_FILE)), 'another host\'s lock is left alone');
});

t.test('racing takeovers of a stale lock: exactly one process wins', async (t) => {
  await using d = await tempDir();
  writeFileSync(join(d.path, LOCK_FILE), JSON.stringify({ pid: 999_999_999, host: hostname(), startedAtMs: 1, procStart: '', purpose: 'hub run' }));
  const mod = join(dirname(fileURLToPath(import.meta.url)), '..', 'hub', 'lock', 'index.js');
  const script = `import(${JSON.stringify(mod)}).then(async (m) => {
    try { const l = m.lockDataDir(${JSON.stringify(d.path)}, 'race'); process.stdout.write('won'); await new Promise((r) => setTimeout(r, 15000)); l.release(); }
    catch (e) { process.stdout.write(e.code === 'TRELLIS_E_LOCKED' ? 'lost' : 'error ' + e.message); }
  });`;
  const runs = Array.from({ length: 6 }, () => new Promise<string>((resolve) => {
    const c = spawn(process.execPath, ['-e', script]);
    let out = '';
    c.stdout.setEncoding('utf8').on('data', (s: string) => (out += s));
    c.on('close', () => resolve(out));
  }));
  const results = await Promise.all(runs);
  t.equal(results.filter((r) => r === 'won').length, 1, `one winner (${results.join(', ')})`);
  t.equal(results.filter((r) => r === 'lost').length, 5, 'the others are refused');
});
