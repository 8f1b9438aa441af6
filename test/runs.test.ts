/**
 * `trellis run` end to end: AdminRuns.Run on a real hub, executed by real agents as real child
 * processes, and once through the real CLI binary.
 */
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ADMIN_PASSWORD, startHub, tempDir, waitFor, type TestHub } from './helpers/hub.js';
import { call } from '../cli/client.js';
import { writeProfile } from '../cli/profile.js';
import { CODE_KEY } from '../common/grpc-errors.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

interface RunOutcome {
  started: T.RunStarted__Output[];
  stdout: Buffer;
  stderr: Buffer;
  /** Output messages per stream, to see that output arrives in chunks. */
  chunks: { STDOUT: number; STDERR: number };
  /** Output per agent (both streams). */
  byAgent: Map<string, string>;
  finished: T.RunFinished__Output[];
  error?: grpc.ServiceError;
}

/** Starts AdminRuns.Run; `done` resolves when the stream ends, with the error if it failed. */
function startRun(h: TestHub, req: T.RunRequest): { stream: grpc.ClientReadableStream<T.RunUpdate__Output>; done: Promise<RunOutcome> } {
  const stream = h.admin.runs.Run(req, h.admin.metadata) as grpc.ClientReadableStream<T.RunUpdate__Output>;
  const out: Buffer[] = [], err: Buffer[] = [];
  const o: RunOutcome = { started: [], stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), chunks: { STDOUT: 0, STDERR: 0 }, byAgent: new Map(), finished: [] };
  const done = new Promise<RunOutcome>((resolve) => {
    stream.on('data', (u: T.RunUpdate__Output) => {
      if (u.started) o.started.push(u.started);
      if (u.output) {
        const s = u.output.stream === 'STDERR' ? 'STDERR' : 'STDOUT';
        (s === 'STDERR' ? err : out).push(Buffer.from(u.output.data));
        o.chunks[s]++;
        o.byAgent.set(u.output.agentId, (o.byAgent.get(u.output.agentId) ?? '') + Buffer.from(u.output.data).toString());
      }
      if (u.finished) o.finished.push(u.finished);
    });
    let settled = false;
    const settle = (e?: grpc.ServiceError) => {
      if (settled) return; // 'end' follows 'error'
      settled = true;
      o.stdout = Buffer.concat(out); o.stderr = Buffer.concat(err); o.error = e;
      resolve(o);
    };
    stream.on('error', (e: grpc.ServiceError) => settle(e));
    stream.on('end', () => settle());
  });
  return { stream, done };
}

const runOn = (h: TestHub, req: T.RunRequest) => startRun(h, { timeoutMs: 20_000, ...req }).done;

/**
 * True once the process no longer runs. A killed orphan is re-parented to the container's init,
 * which may never reap it: a zombie ('Z' in /proc/PID/stat) has been killed and counts as gone.
 */
function isGone(pid: number): boolean {
  try { process.kill(pid, 0); } catch (e) { return (e as NodeJS.ErrnoException).code === 'ESRCH'; }
  try { return /^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8')); } catch { return true; }
}

async function readPid(file: string): Promise<number> {
  await waitFor(() => existsSync(file) && /^\d+\n/.test(readFileSync(file, 'utf8')), 10_000, `pid in ${file}`);
  return Number((await readFile(file, 'utf8')).trim());
}

/** `sh` that starts a long sleep in the background (a grandchild of the agent) and waits for it. */
const sleeperArgv = (pidFile: string) => ['sh', '-c', `sleep 300 & echo $! > '${pidFile}'; wait`];

t.test('stdout and stderr come back in chunks on their own streams with the remote exit code', async (t) => {
  await using h = await startHub();
  const { dataDir, agentId } = await h.enroll();
  await h.agent({ dataDir });
  const r = await runOn(h, { agentId, argv: ['sh', '-c', 'head -c 300000 /dev/zero | tr "\\000" x; echo to-stderr >&2; exit 3'] });
  t.equal(r.error, undefined);
  t.equal(r.started.length, 1);
  t.equal(r.started[0]!.agentId, agentId);
  t.equal(r.stdout.length, 300_000, 'every stdout byte');
  t.ok(/^x+$/.test(r.stdout.toString()), 'stdout holds only stdout');
  t.ok(r.chunks.STDOUT > 1, `stdout arrived in chunks (${r.chunks.STDOUT})`);
  t.equal(r.stderr.toString(), 'to-stderr\n', 'stderr on its own stream');
  t.equal(r.finished.length, 1);
  t.equal(r.finished[0]!.exitCode, 3, 'the remote exit code');
  t.equal(r.finished[0]!.status, 'failed');
});

t.test('argv is not passed through a shell', async (t) => {
  await using h = await startHub();
  await using dir = await tempDir();
  await mkdir(join(dir.path, 'x'));
  const { dataDir, agentId } = await h.enroll();
  await h.agent({ dataDir });
  const r = await runOn(h, { agentId, argv: ['echo', '$HOME; rm -rf x'], cwd: dir.path });
  t.equal(r.stdout.toString(), '$HOME; rm -rf x\n', 'the literal text, no expansion, no second command');
  t.equal(r.finished[0]!.status, 'succeeded');
  t.equal(r.finished[0]!.exitCode, 0);
  t.ok(existsSync(join(dir.path, 'x')), 'nothing was removed');
});

t.test('a timeout kills the whole process group', async (t) => {
  await using h = await startHub();
  await using dir = await tempDir();
  const { dataDir, agentId } = await h.enroll();
  await h.agent({ dataDir });
  const pidFile = join(dir.path, 'grandchild.pid');
  const started = Date.now();
  const r = await runOn(h, { agentId, argv: sleeperArgv(pidFile), timeoutMs: 1_000 });
  t.equal(r.error, undefined);
  t.equal(r.finished[0]!.status, 'timeout');
  t.match(r.finished[0]!.error, /timed out/);
  t.ok(Date.now() - started < 15_000, 'the run ends soon after its timeout, not with the sleep');
  const pid = await readPid(pidFile);
  await waitFor(() => isGone(pid), 5_000, `grandchild ${pid} to be gone`);
  t.ok(isGone(pid), `grandchild ${pid} (sleep 300) was killed with the group`);
});

t.test('cancelling the client stream kills the remote process group', async (t) => {
  await using h = await startHub();
  await using dir = await tempDir();
  const { dataDir, agentId } = await h.enroll();
  await h.agent({ dataDir });
  const pidFile = join(dir.path, 'grandchild.pid');
  const { stream, done } = startRun(h, { agentId, argv: sleeperArgv(pidFile), timeoutMs: 120_000 });
  const pid = await readPid(pidFile);
  t.notOk(isGone(pid), 'the grandchild runs before the cancel');
  stream.cancel();
  const r = await done;
  t.equal(r.error?.code, grpc.status.CANCELLED, 'the caller sees its own cancel');
  await waitFor(() => isGone(pid), 10_000, `grandchild ${pid} to be gone`);
  t.ok(isGone(pid), `grandchild ${pid} (sleep 300) was killed with the group`);
  await waitFor(() => h.logLines.some((l) => l.includes('"status":"canceled"') && l.includes('run finished')), 10_000, 'the agent to report the cancel');
  t.ok(h.logLines.some((l) => l.includes('"status":"canceled"') && l.includes('run finished')), 'the agent reported status canceled');
});

t.test('a command that does not exist gives status error, exit 127 and a clear message', async (t) => {
  await using h = await startHub();
  const { dataDir, agentId } = await h.enroll();
  await h.agent({ dataDir });
  const r = await runOn(h, { agentId, argv: ['trellis-no-such-command-xyz', '--flag'] });
  t.equal(r.error, undefined);
  t.equal(r.finished.length, 1);
  t.equal(r.finished[0]!.status, 'error');
  t.equal(r.finished[0]!.exitCode, 127);
  t.equal(r.finished[0]!.error, 'command not found: trellis-no-such-command-xyz');
});

t.test('a selector runs on every matching online agent and no other', async (t) => {
  await using h = await startHub();
  const web1 = await h.enroll({ token: await h.token({ labels: { role: 'web' } }) });
  const web2 = await h.enroll({ token: await h.token({ labels: { role: 'web' } }) });
  const db = await h.enroll({ token: await h.token({ labels: { role: 'db' } }) });
  for (const a of [web1, web2, db]) await h.agent({ dataDir: a.dataDir });
  const r = await runOn(h, { selector: { role: 'web' }, argv: ['echo', 'hi'] });
  t.equal(r.error, undefined);
  const want = [web1.agentId, web2.agentId].sort();
  t.same(r.started.map((s) => s.agentId).sort(), want, 'started on both web agents');
  t.same(r.finished.map((f) => f.agentId).sort(), want, 'finished on both web agents');
  t.ok(r.finished.every((f) => f.status === 'succeeded' && f.exitCode === 0));
  t.same([...r.byAgent.keys()].sort(), want);
  for (const id of want) t.equal(r.byAgent.get(id), 'hi\n', `output of ${id}`);
  t.notOk(r.started.some((s) => s.agentId === db.agentId), 'not on the db agent');
});

t.test('as many concurrent runs as an agent allows (16) all reach it and succeed', async (t) => {
  await using h = await startHub();
  const { dataDir, agentId } = await h.enroll();
  await h.agent({ dataDir, maxConcurrentActions: 16 });
  const all = await Promise.all(Array.from({ length: 16 }, (_, i) => runOn(h, { agentId, argv: ['echo', `run-${i}`] })));
  t.same(all.map((r) => r.error), all.map(() => undefined), 'no stream failed');
  t.same(all.map((r) => `${r.finished[0]?.status} ${r.finished[0]?.error}`), all.map(() => 'succeeded '), 'every run was delivered and succeeded');
  t.same(all.map((r) => r.stdout.toString()), all.map((_, i) => `run-${i}\n`), 'each run got its own output');
});

t.test('runs on an unknown or offline agent, or with an empty argv, are refused with specific codes', async (t) => {
  await using h = await startHub();
  const offline = await h.enroll();
  const online = await h.enroll();
  await h.agent({ dataDir: online.dataDir });

  const unknown = await runOn(h, { agentId: 'no-such-agent', argv: ['true'] });
  t.equal(unknown.error?.code, grpc.status.NOT_FOUND, 'unknown agent: NOT_FOUND');
  t.equal(unknown.error?.metadata.get(CODE_KEY)[0], 'TRELLIS_E_NOT_FOUND');

  const down = await runOn(h, { agentId: offline.agentId, argv: ['true'] });
  t.equal(down.error?.code, grpc.status.FAILED_PRECONDITION, 'enrolled but not running: FAILED_PRECONDITION');
  t.equal(down.error?.metadata.get(CODE_KEY)[0], 'TRELLIS_E_AGENT_OFFLINE');
  t.match(down.error?.details, offline.agentId);
  t.same(down.started, [], 'nothing started');

  const empty = await runOn(h, { agentId: online.agentId, argv: [] });
  t.equal(empty.error?.code, grpc.status.INVALID_ARGUMENT, 'empty argv: INVALID_ARGUMENT');
  t.equal(empty.error?.metadata.get(CODE_KEY)[0], 'TRELLIS_E_INVALID_ARGUMENT');
  t.same(empty.started, [], 'nothing started');
});

t.test('the trellis CLI runs a command end to end: output on the right streams, remote exit code', async (t) => {
  await using h = await startHub();
  await using home = await tempDir();
  const { dataDir, agentId } = await h.enroll();
  await h.agent({ dataDir });
  const login = await call<T.LoginRequest, T.LoginResponse__Output>(h.admin, h.admin.auth, h.admin.auth.Login, { username: 'admin', password: ADMIN_PASSWORD });
  const env = { ...process.env, TRELLIS_HOME: home.path };
  await writeProfile({ hub: h.adminAddr, caPem: h.caPem, username: 'admin', token: login.token, expiresAtMs: login.expiresAtMs, tenant: 'default' }, env);

  const bin = fileURLToPath(new URL('../../bin/trellis.js', import.meta.url));
  const child = spawn(process.execPath, [bin, 'run', '--agent', agentId, '--', 'sh', '-c', 'echo out; echo err >&2; exit 5'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '', stderr = '';
  child.stdout.on('data', (d: Buffer) => { stdout += d; });
  child.stderr.on('data', (d: Buffer) => { stderr += d; });
  const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
  t.equal(stdout, 'out\n', 'stdout carries only the remote stdout');
  t.match(stderr, /^err\n/, 'stderr carries the remote stderr');
  t.notMatch(stderr, /out/);
  t.equal(code, 5, 'the CLI exits with the remote exit code');
});
