/**
 * `trellis agent install | uninstall | status` for real, as root, on this host: a real hub on
 * loopback, a real system user (useradd), the unit in /etc/systemd/system checked with
 * `systemd-analyze verify`, and (systemd is not PID 1 here) the unit's ExecStart started with
 * --detach as the created user, proven by /proc/PID/status and the agent coming online.
 * Every test uses its own service, data dir and user, and removes them.
 */
import t, { type Test } from 'tap';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, cpSync, existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { TRELLIS_BIN, runCli } from './helpers/cli.js';
import { startHub, waitFor, type TestHub } from './helpers/hub.js';
import { getAgent } from './helpers/admin.js';
import { needs } from './helpers/needs.js';
import { AGENT_NODE_FLAGS } from '../common/service/unit.js';

const isRoot = process.getuid?.() === 0;
const ROOT = dirname(dirname(TRELLIS_BIN));

interface Names { service: string; user: string; data: string; unit: string }
function names(): Names {
  const id = randomBytes(4).toString('hex');
  const service = `trellis-t-${id}`;
  return { service, user: `trt-${id}`, data: `/var/lib/${service}`, unit: `/etc/systemd/system/${service}.service` };
}

function userEntry(name: string): string[] | undefined {
  try { return execFileSync('getent', ['passwd', name], { encoding: 'utf8' }).trim().split(':'); } catch { return undefined; }
}

/** Uninstall --purge through the CLI, then make sure nothing is left whatever happened. */
async function cleanup(n: Names): Promise<void> {
  await runCli(['agent', 'uninstall', '--service', n.service, '--data', n.data, '--purge']);
  rmSync(n.unit, { force: true });
  rmSync(n.data, { recursive: true, force: true });
  if (userEntry(n.user)) execFileSync('userdel', [n.user]);
}

/** Everything below `dir` with its mode and owner. */
function tree(dir: string): Array<{ path: string; mode: number; uid: number; dir: boolean }> {
  const out: Array<{ path: string; mode: number; uid: number; dir: boolean }> = [];
  const visit = (p: string): void => {
    const st = lstatSync(p);
    out.push({ path: p, mode: st.mode & 0o7777, uid: st.uid, dir: st.isDirectory() });
    if (st.isDirectory()) for (const e of readdirSync(p)) visit(join(p, e));
  };
  visit(dir);
  return out;
}

function procUid(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('Uid:'))!;
  return Number(line.split(/\s+/)[1]);
}

const alive = (pid: number): boolean => {
  try { process.kill(pid, 0); } catch { return false; }
  try { return !/^\d+ \(.*\) Z/s.test(readFileSync(`/proc/${pid}/stat`, 'utf8')); } catch { return false; }
};

function nothingLeft(t: Test, n: Names): void {
  t.notOk(existsSync(n.unit), 'no unit file');
  t.notOk(existsSync(n.data), 'no data directory');
  t.notOk(userEntry(n.user), 'no user');
}

async function online(h: TestHub, id: string): Promise<void> {
  await waitFor(async () => (await getAgent(h, id)).online, 60_000, `agent ${id} online`);
}

t.test('agent install --detach: user, data dir, verified unit, the agent online as that user; idempotent; status; uninstall --purge', needs(t, isRoot ? undefined : 'needs root (useradd, /etc/systemd/system)'), async (t) => {
  await using h = await startHub();
  const n = names();
  t.teardown(() => cleanup(n));
  const token = await h.token({ labels: { role: 'web' } });
  const secret = token.split('.')[2]!;

  // The token on stdin (--token-file -): never in argv.
  const r = await runCli(['agent', 'install', '--hub', h.adminAddr, '--token-file', '-', '--service', n.service, '--data', n.data, '--user', n.user, '--detach', '--json'], {}, token + '\n');
  t.equal(r.code, 0, r.err);
  const j = JSON.parse(r.out) as Record<string, unknown>;
  t.match(j, { service: n.service, unit: n.unit, data: n.data, user: n.user, tenant: 'default', changed: true, started: 'detached', systemd: false });
  t.match(j.agentId, /\S/);
  t.same(Object.keys(j).sort(), ['agentId', 'changed', 'data', 'service', 'started', 'systemd', 'tenant', 'unit', 'user'], 'the contract\'s fields');

  // The user: a system user with no login shell and no home.
  const u = userEntry(n.user)!;
  t.ok(u, 'user created');
  const uid = Number(u[2]);
  t.ok(uid > 0 && uid < 1000, `a system uid (${uid})`);
  t.match(u[6], /nologin$/, 'no login shell');
  t.notOk(existsSync(u[5]!), `no home directory (${u[5]})`);

  // The unit: 0644, hardened, absolute ExecStart of this installation, and systemd-analyze verify is silent.
  const unit = readFileSync(n.unit, 'utf8');
  t.equal(statSync(n.unit).mode & 0o777, 0o644, 'unit 0644');
  const bin = join(ROOT, 'bin', 'trellis.js');
  t.match(unit, `\nExecStart=${execFileSync('realpath', [process.execPath], { encoding: 'utf8' }).trim()} ${AGENT_NODE_FLAGS.join(' ')} ${execFileSync('realpath', [bin], { encoding: 'utf8' }).trim()} agent run --data ${n.data}\n`);
  for (const line of ['Environment=MALLOC_ARENA_MAX=2', `User=${n.user}`, 'Restart=always', 'NoNewPrivileges=yes', 'ProtectSystem=strict', 'ProtectHome=yes', 'PrivateTmp=yes', `ReadWritePaths=${n.data}`, 'WantedBy=multi-user.target']) {
    t.match(unit, `\n${line}\n`, line);
  }
  const verify = execFileSync('systemd-analyze', ['verify', n.unit], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  t.equal(verify, '', 'systemd-analyze verify passes');

  // The data directory: 0700, every file 0600, all the service user's.
  const files = tree(n.data);
  t.ok(files.some((f) => f.path.endsWith('agent-key.pem')), 'enrolled (key in the data dir)');
  t.same(files.filter((f) => f.uid !== uid || f.mode !== (f.dir ? 0o700 : 0o600)).map((f) => `${f.path} ${f.mode.toString(8)} uid ${f.uid}`), [], 'dirs 0700, files 0600, owned by the service user');

  // The agent: started from the unit's ExecStart, as the created user, online at the hub.
  const pid = Number(readFileSync(join(n.data, 'agent.pid'), 'utf8'));
  t.ok(alive(pid), `agent process ${pid} runs`);
  t.equal(procUid(pid), uid, 'it runs as the created user (/proc/PID/status Uid)');
  await online(h, j.agentId as string);
  t.same((await getAgent(h, j.agentId as string)).labels, { role: 'web' }, 'with the token\'s labels');

  // The token is nowhere: not in the data dir, the unit, the agent's argv or environment.
  for (const f of files.filter((x) => !x.dir)) t.notMatch(readFileSync(f.path, 'latin1'), secret, `token not in ${f.path}`);
  t.notMatch(unit, secret, 'token not in the unit');
  t.notMatch(readFileSync(`/proc/${pid}/cmdline`, 'latin1'), secret, 'token not in the agent\'s argv');
  t.notMatch(readFileSync(`/proc/${pid}/environ`, 'latin1'), /TRELLIS_JOIN_TOKEN|tj1\./, 'token not in the agent\'s environment');

  // Again, with no token at all: nothing changes.
  const again = await runCli(['agent', 'install', '--hub', h.adminAddr, '--service', n.service, '--data', n.data, '--user', n.user, '--detach', '--json'], { TRELLIS_JOIN_TOKEN: '' });
  t.equal(again.code, 0, again.err);
  t.match(JSON.parse(again.out), { changed: false, started: 'detached', agentId: j.agentId });
  const plain = await runCli(['agent', 'install', '--hub', h.adminAddr, '--service', n.service, '--data', n.data, '--user', n.user, '--detach']);
  t.equal(plain.code, 0, plain.err);
  t.match(plain.out, /^already installed, nothing changed/);
  t.equal(readFileSync(n.unit, 'utf8'), unit, 'unit unchanged');
  t.equal(Number(readFileSync(join(n.data, 'agent.pid'), 'utf8')), pid, 'same agent process');

  // status
  const st = await runCli(['agent', 'status', '--service', n.service, '--json']);
  t.equal(st.code, 0, st.err);
  const s = JSON.parse(st.out) as Record<string, unknown>;
  t.match(s, { service: n.service, installed: true, data: n.data, user: n.user, state: 'running (detached)', pid, hub: h.agentAddr, agentId: j.agentId, tenant: 'default', outboxDepth: Number });
  t.ok(Date.parse(s.certNotAfter as string) > Date.now(), 'certificate expiry');
  const stText = await runCli(['agent', 'status', '--service', n.service]);
  t.match(stText.out, /state\s+running \(detached, pid \d+\)[\s\S]*agent\s+\S+[\s\S]*certificate\s+valid until[\s\S]*outbox\s+\d+ event/);

  // uninstall --purge: the process stops, unit, data and the user it created go.
  const un = await runCli(['agent', 'uninstall', '--service', n.service, '--purge']);
  t.equal(un.code, 0, un.err);
  t.notOk(alive(pid), 'agent process stopped');
  nothingLeft(t, n);
  await waitFor(async () => !(await getAgent(h, j.agentId as string)).online, 30_000, 'agent offline at the hub');
  const un2 = await runCli(['agent', 'uninstall', '--service', n.service, '--purge']);
  t.equal(un2.code, 0, un2.err);
  t.match(un2.out, /not installed, nothing changed/);
});

t.test('two agents sharing one service user: uninstall --purge of one keeps the user the other still runs as', needs(t, isRoot ? undefined : 'needs root'), async (t) => {
  await using h = await startHub();
  const a = names();
  const b = { ...names(), user: a.user };
  t.teardown(async () => { await cleanup(b); await cleanup(a); });
  for (const n of [a, b]) {
    const r = await runCli(['agent', 'install', '--hub', h.adminAddr, '--token-file', '-', '--service', n.service, '--data', n.data, '--user', n.user, '--detach', '--json'], {}, (await h.token()) + '\n');
    t.equal(r.code, 0, r.err);
  }
  const pidB = Number(readFileSync(join(b.data, 'agent.pid'), 'utf8'));
  const un = await runCli(['agent', 'uninstall', '--service', a.service, '--purge']);
  t.equal(un.code, 0, un.err);
  t.match(un.out, `kept user ${a.user}: ${b.service}.service still runs as it`);
  t.ok(userEntry(a.user), 'the shared user is still there');
  t.ok(alive(pidB), 'the other agent still runs');
  t.equal(procUid(pidB), Number(userEntry(a.user)![2]), 'as that user');
  t.notOk(existsSync(a.unit) || existsSync(a.data), 'the purged agent is gone');
});

t.test('agent install --no-start writes and verifies the unit, says how to start; --user root runs the agent as root', needs(t, isRoot ? undefined : 'needs root'), async (t) => {
  await using h = await startHub();
  const n = names();
  t.teardown(() => cleanup(n));
  const token = await h.token();
  const r = await runCli(['agent', 'install', '--hub', h.adminAddr, '--service', n.service, '--data', n.data, '--user', 'root', '--no-start', '--read-write', '/etc/nginx'], { TRELLIS_JOIN_TOKEN: token });
  t.equal(r.code, 0, r.err);
  t.match(r.err, `systemctl enable --now ${n.service}`, 'says how to start it');
  t.notOk(existsSync(join(n.data, 'agent.pid')), 'nothing started');
  const unit = readFileSync(n.unit, 'utf8');
  t.match(unit, '\nUser=root\n');
  t.match(unit, `\nReadWritePaths=${n.data} /etc/nginx\n`);
  t.notOk(userEntry(n.user), 'no user created');
  t.equal(statSync(n.data).uid, 0, 'data dir owned by root');
  t.equal(execFileSync('systemd-analyze', ['verify', n.unit], { encoding: 'utf8' }), '');
  const un = await runCli(['agent', 'uninstall', '--service', n.service, '--purge']);
  t.equal(un.code, 0, un.err);
  t.ok(userEntry('root'), 'root is never removed');
  t.notOk(existsSync(n.unit));
});

t.test('a bad join token: a clear error and nothing left behind', needs(t, isRoot ? undefined : 'needs root'), async (t) => {
  await using h = await startHub();
  const n = names();
  t.teardown(() => cleanup(n));
  const good = await h.token();
  const [, , , fp] = good.split('.');
  // Well formed, right CA, unknown to the hub: refused by the hub after the user and dir were made.
  const unknown = `tj1.${randomBytes(8).toString('hex')}.${randomBytes(32).toString('base64url')}.${fp}`;
  const r = await runCli(['agent', 'install', '--hub', h.adminAddr, '--service', n.service, '--data', n.data, '--user', n.user, '--detach'], { TRELLIS_JOIN_TOKEN: unknown });
  t.not(r.code, 0);
  t.match(r.err, /^trellis: TRELLIS_E_TOKEN_INVALID: .+\n$/, 'one line: trellis: CODE: message');
  t.notMatch(r.err, unknown.split('.')[2]!, 'the secret is not echoed');
  nothingLeft(t, n);
  // Pinned to another CA: refused before the token is sent.
  const otherCa = `tj1.${randomBytes(8).toString('hex')}.${randomBytes(32).toString('base64url')}.${'ab'.repeat(32)}`;
  const r2 = await runCli(['agent', 'install', '--hub', h.adminAddr, '--service', n.service, '--data', n.data, '--user', n.user], { TRELLIS_JOIN_TOKEN: otherCa });
  t.match(r2.err, /^trellis: TRELLIS_E_CA_PIN_MISMATCH: /);
  nothingLeft(t, n);
  // Malformed, and missing.
  const r3 = await runCli(['agent', 'install', '--hub', h.adminAddr, '--service', n.service, '--data', n.data, '--user', n.user, '--token', 'not-a-token']);
  t.match(r3.err, /^trellis: TRELLIS_E_TOKEN_INVALID: malformed join token/);
  const r4 = await runCli(['agent', 'install', '--hub', h.adminAddr, '--service', n.service, '--data', n.data, '--user', n.user], { TRELLIS_JOIN_TOKEN: '' });
  t.match(r4.err, /^trellis: TRELLIS_E_INVALID_ARGUMENT: a join token is needed/);
  nothingLeft(t, n);
});

t.test('bad input is refused before anything changes: service name, relative --data, user name, non-root caller', needs(t, isRoot ? undefined : 'needs root'), async (t) => {
  const n = names();
  t.teardown(() => cleanup(n));
  const token = `tj1.${'0'.repeat(16)}.${'A'.repeat(43)}.${'0'.repeat(64)}`;
  const base = ['agent', 'install', '--hub', '127.0.0.1:1', '--user', n.user];
  const cases: Array<[string[], RegExp]> = [
    [['--service', `${n.service}.service`, '--data', n.data], /TRELLIS_E_INVALID_ARGUMENT: --service .* is not a valid service name/],
    [['--service', 'a b', '--data', n.data], /TRELLIS_E_INVALID_ARGUMENT: --service/],
    [['--service', '../etc/passwd', '--data', n.data], /TRELLIS_E_INVALID_ARGUMENT: --service/],
    [['--service', n.service, '--data', `var/lib/${n.service}`], /TRELLIS_E_INVALID_ARGUMENT: --data must be an absolute path/],
    [['--service', n.service, '--data', '/var'], /TRELLIS_E_INVALID_ARGUMENT: --data \/var is too close to the root/],
    [['--service', n.service, '--data', `/var/lib/a b`], /TRELLIS_E_INVALID_ARGUMENT: --data .* holds characters/],
  ];
  for (const [args, want] of cases) {
    const r = await runCli([...base, ...args], { TRELLIS_JOIN_TOKEN: token });
    t.equal(r.code, 1, args.join(' '));
    t.match(r.err, want, args.join(' '));
  }
  const badUser = await runCli(['agent', 'install', '--hub', '127.0.0.1:1', '--service', n.service, '--data', n.data, '--user', 'Bad;User'], { TRELLIS_JOIN_TOKEN: token });
  t.match(badUser.err, /TRELLIS_E_INVALID_ARGUMENT: --user/);
  nothingLeft(t, n);
});

t.test('non-root caller: refused with PERMISSION_DENIED', needs(t, isRoot ? undefined : 'needs root (to run as nobody)'), async (t) => {
  const n = names();
  let err = '';
  let code = 0;
  try {
    execFileSync(process.execPath, [TRELLIS_BIN, 'agent', 'install', '--hub', '127.0.0.1:1', '--service', n.service, '--data', n.data, '--user', n.user], {
      uid: 65534, gid: 65534, env: { PATH: process.env.PATH, HOME: '/' }, stdio: ['ignore', 'pipe', 'pipe'],
    });
  } catch (e) {
    err = String((e as { stderr: Buffer }).stderr);
    code = (e as { status: number }).status;
  }
  t.equal(code, 1);
  t.match(err, /^trellis: TRELLIS_E_PERMISSION_DENIED: trellis agent install must run as root/);
  nothingLeft(t, n);
});

t.test('an installation the service user cannot read: a clear error, nothing created', needs(t, isRoot ? undefined : 'needs root'), async (t) => {
  const n = names();
  t.teardown(() => cleanup(n));
  // A copy of this installation inside a 0700 directory (as an install under /root would be).
  const priv = mkdtempSync(join(tmpdir(), 'trellis-private-'));
  t.teardown(() => rmSync(priv, { recursive: true, force: true }));
  chmodSync(priv, 0o700);
  const copy = join(priv, 'trellis');
  for (const e of ['bin', 'dist', 'proto', 'package.json']) cpSync(join(ROOT, e), join(copy, e), { recursive: true, filter: (p) => !p.includes(`${join(ROOT, 'dist', 'test')}`) });
  symlinkSync(join(ROOT, 'node_modules'), join(copy, 'node_modules'));
  const token = `tj1.${'0'.repeat(16)}.${'A'.repeat(43)}.${'0'.repeat(64)}`;
  const r = await new Promise<{ code: number; err: string }>((resolve) => {
    try {
      execFileSync(process.execPath, [join(copy, 'bin', 'trellis.js'), 'agent', 'install', '--hub', '127.0.0.1:1', '--service', n.service, '--data', n.data, '--user', n.user], {
        env: { ...process.env, TRELLIS_JOIN_TOKEN: token }, stdio: ['ignore', 'pipe', 'pipe'],
      });
      resolve({ code: 0, err: '' });
    } catch (e) {
      resolve({ code: (e as { status: number }).status, err: String((e as { stderr: Buffer }).stderr) });
    }
  });
  t.equal(r.code, 1);
  t.match(r.err, new RegExp(`^trellis: TRELLIS_E_PERMISSION_DENIED: the service user ${n.user} cannot run .*${copy}.*install trellis where every user can read it`));
  nothingLeft(t, n);
});
