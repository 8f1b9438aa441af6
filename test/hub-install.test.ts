/**
 * `trellis hub install | uninstall` for real, as root: a hub data dir from `hub init`, a system
 * user, the unit checked with `systemd-analyze verify`, and (systemd is not PID 1 here) the unit's
 * ExecStart started with --detach as that user, answering on its web port.
 */
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as https from 'node:https';
import { dirname, join } from 'node:path';
import { runCli } from './helpers/cli.js';
import { waitFor } from './helpers/hub.js';
import { needs } from './helpers/needs.js';
import { HUB_NODE_FLAGS, execStart } from '../common/service/unit.js';

const isRoot = process.getuid?.() === 0;

function alive(pid: number): boolean {
  try { process.kill(pid, 0); } catch { return false; }
  try { return !/^\d+ \(.*\) Z/s.test(readFileSync(`/proc/${pid}/stat`, 'utf8')); } catch { return false; }
}

t.test('hub install --detach runs the hub as a system user from a hardened, verified unit; idempotent; uninstall keeps the data', needs(t, isRoot ? undefined : 'needs root'), async (t) => {
  const id = randomBytes(4).toString('hex');
  const service = `trellis-h-${id}`, user = `trh-${id}`, data = `/var/lib/${service}`, unit = `/etc/systemd/system/${service}.service`;
  t.teardown(async () => {
    await runCli(['hub', 'uninstall', '--service', service]);
    rmSync(unit, { force: true });
    rmSync(data, { recursive: true, force: true });
    try { execFileSync('userdel', [user], { stdio: 'ignore' }); } catch { /* gone */ }
  });
  const notInit = await runCli(['hub', 'install', '--data', data, '--service', service, '--user', user]);
  t.match(notInit.err, /^trellis: TRELLIS_E_CONFIG: .* is not a hub data directory: run `trellis hub init/);
  const init = await runCli(['hub', 'init', '--data', data, '--name', '127.0.0.1', '--agent-port', '0', '--admin-port', '0', '--web-port', '0', '--bind', '127.0.0.1'], { TRELLIS_ADMIN_PASSWORD: 'hub-install-password-1' });
  t.equal(init.code, 0, init.err);

  const r = await runCli(['hub', 'install', '--data', data, '--service', service, '--user', user, '--detach', '--json']);
  t.equal(r.code, 0, r.err);
  t.match(JSON.parse(r.out), { service, unit, data, user, changed: true, started: 'detached', systemd: false });
  const text = readFileSync(unit, 'utf8');
  t.match(text, new RegExp(`\nExecStart=\\S+/node ${HUB_NODE_FLAGS.join(' ')} \\S+/bin/trellis\\.js hub run --data ${data}\n`), 'the unit runs node with the hub\'s flags');
  for (const line of [`User=${user}`, 'Restart=always', 'NoNewPrivileges=yes', 'ProtectSystem=strict', 'ProtectHome=yes', 'PrivateTmp=yes', `ReadWritePaths=${data}`]) t.match(text, `\n${line}\n`);
  t.equal(execFileSync('systemd-analyze', ['verify', unit], { encoding: 'utf8' }), '', 'systemd-analyze verify passes');
  const uid = Number(execFileSync('id', ['-u', user], { encoding: 'utf8' }));
  t.equal(statSync(data).uid, uid, 'data dir owned by the service user');
  t.equal(statSync(data).mode & 0o777, 0o700);
  t.equal(statSync(join(data, 'ca-key.pem')).uid, uid, 'and its files');

  const pid = Number(readFileSync(join(data, 'hub.pid'), 'utf8'));
  t.equal(Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]), uid, 'the hub runs as the service user');
  let webPort = 0;
  await waitFor(() => {
    const m = /web port (\d+)/.exec(existsSync(join(data, 'hub.log')) ? readFileSync(join(data, 'hub.log'), 'utf8') : '');
    webPort = m ? Number(m[1]) : 0;
    return webPort > 0;
  }, 60_000, 'hub listening');
  const health = await new Promise<string>((resolve, reject) => {
    https.get({ host: '127.0.0.1', port: webPort, path: '/healthz', ca: readFileSync(join(data, 'ca.pem')) }, (res) => {
      let b = ''; res.setEncoding('utf8').on('data', (d: string) => (b += d)).on('end', () => resolve(b));
    }).on('error', reject);
  });
  t.same(JSON.parse(health), { status: 'ok' }, 'the hub answers on its web port');

  const again = await runCli(['hub', 'install', '--data', data, '--service', service, '--user', user, '--detach']);
  t.equal(again.code, 0, again.err);
  t.match(again.out, /^already installed, nothing changed/);

  // The service user owns DATA: a symlink planted there must not make root chown what it points to.
  const victim = join(mkdtempSync(join(tmpdir(), 'trellis-victim-')), 'root-owned');
  writeFileSync(victim, 'root only\n', { mode: 0o600 });
  t.teardown(() => rmSync(dirname(victim), { recursive: true, force: true }));
  symlinkSync(victim, join(data, 'planted'));
  const third = await runCli(['hub', 'install', '--data', data, '--service', service, '--user', user, '--detach']);
  t.equal(third.code, 0, third.err);
  t.equal(statSync(victim).uid, 0, 'the target of a symlink in DATA is not given to the service user');
  t.equal(statSync(victim).gid, 0);

  const un = await runCli(['hub', 'uninstall', '--service', service]);
  t.equal(un.code, 0, un.err);
  t.notOk(alive(pid), 'hub stopped');
  t.notOk(existsSync(unit), 'unit removed');
  t.ok(existsSync(join(data, 'ca-key.pem')), 'the data directory is kept');
});

t.test('the hub runs with the same node flags from its unit and from bin/trellis.js', async (t) => {
  const shebang = readFileSync(new URL('../../bin/trellis.js', import.meta.url), 'utf8').split('\n')[0];
  t.equal(shebang, `#!/usr/bin/env -S node ${HUB_NODE_FLAGS.join(' ')}`, 'bin/trellis.js starts node with HUB_NODE_FLAGS');
  t.same(execStart({ kind: 'hub', node: '/n', bin: '/b', data: '/d' }), ['/n', ...HUB_NODE_FLAGS, '/b', 'hub', 'run', '--data', '/d'], 'the unit\'s ExecStart has them');
  t.ok(HUB_NODE_FLAGS.includes('--initial-old-space-size=128'), 'the old generation is sized (common/service/unit.ts says why)');
});
