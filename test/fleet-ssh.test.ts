/**
 * `trellis agents install` end to end: a real hub, a real Debian sshd on loopback (throwaway host
 * and client keys), the real bundle copied over SSH, the real `trellis agent install --detach` on
 * the "server" (this machine, as root), agents online at the hub. Plus the SSH trust checks:
 * unknown and changed host keys, a server that refuses the key, servers that cannot take an agent,
 * token revocation. Host string validation and the bundle cache: test/fleet-hosts.test.ts.
 */
import t from 'tap';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { runCli, startCli } from './helpers/cli.js';
import { startHub, tempDir, ADMIN_PASSWORD, type TestHub } from './helpers/hub.js';
import { startSshd, sshdMissing, makeKey } from './helpers/sshd.js';
import { call } from '../cli/client.js';
import { writeBundle } from '../cli/bundle.js';
import { agentUninstall } from '../cli/fleet/remote.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';
import { needs } from './helpers/needs.js';

interface Fixture {
  h: TestHub;
  env: Record<string, string>;
  dir: string;
  bundle: string;
}

const missing = sshdMissing();

t.test('agents install over SSH: two agents on one server, online with their labels; rerun unchanged; host key and auth failures', needs(t, missing && `sshd cannot run here: ${missing}`), async (t) => {
  await using h = await startHub();
  await using tmp = await tempDir('trellis-fleet-');
  const dir = tmp.path;
  chmodSync(dir, 0o755); // the agents' service user reads the installation and its data dir below here
  const env = { TRELLIS_HOME: join(dir, 'home'), TRELLIS_PASSWORD: ADMIN_PASSWORD, XDG_CACHE_HOME: join(dir, 'cache') };
  const login = await runCli(['login', '--hub', h.adminAddr, '--user', 'admin', '--ca', join(h.dataDir, 'ca.pem')], env);
  t.equal(login.code, 0, login.err);
  const bundle = join(dir, 'bundle.tgz');
  await writeBundle({ out: bundle });
  const f: Fixture = { h, env, dir, bundle };

  const suffix = Math.random().toString(36).slice(2, 8);
  const plainUser = `tfu-${suffix}`; // a login without root
  t.equal(spawnSync('useradd', ['--system', '--no-create-home', '--shell', '/bin/sh', '--password', '*', plainUser]).status, 0, 'made a plain user');
  const sshd = await startSshd({ allowUsers: [plainUser] });
  const sshdB = await startSshd({ authorize: false }); // refuses our key
  const fakeBin = join(dir, 'fakebin');
  mkdirSync(fakeBin, { mode: 0o755 });
  // An old node; slow to answer while the file `slow` exists (for the Ctrl-C test).
  writeFileSync(join(fakeBin, 'node'), `#!/bin/sh\nif [ -e ${fakeBin}/slow ]; then sleep 20; fi\necho v18.19.1\n`, { mode: 0o755 });
  const sshdC = await startSshd({ clientKey: sshd.clientKey, extraConfig: [`SetEnv PATH=${fakeBin}:/usr/bin:/bin`] }); // an old node first on the PATH
  const svc = { a: `trellis-ft-a-${suffix}`, b: `trellis-ft-b-${suffix}`, c: `trellis-ft-c-${suffix}` };
  const prefix = join(dir, 'opt');
  const known = join(dir, 'known_hosts');
  writeFileSync(known, sshd.knownHostsLine + '\n' + sshdB.knownHostsLine + '\n');
  const hosts = join(dir, 'hosts');
  writeFileSync(hosts, [
    '# two agents on one server',
    `root@127.0.0.1:${sshd.port} --service ${svc.a} --data ${dir}/data-a --label slot=a`,
    `root@127.0.0.1:${sshd.port} --service ${svc.b} --data ${dir}/data-b --label slot=b --label role=db`,
    '',
  ].join('\n'));
  const user = `tft-${suffix}`; // the agents' service user, made by agent install, removed by --purge
  const base = ['agents', 'install', '--service-user', user, '--identity', sshd.clientKey, '--prefix', prefix, '--detach', '--bundle', bundle, '--label', 'role=fleet', '--timeout', '180s'];
  const remote = { target: { user: 'root', host: '127.0.0.1', port: sshd.port }, ssh: { identity: sshd.clientKey, knownHosts: known, acceptNewHostKeys: false }, sudo: false };
  const installDirs = new Set<string>();

  const cleanup = async () => {
    const inst = [...installDirs][0];
    // Newest first: the agents share the service user, which the first install created and its --purge removes.
    for (const [s, d] of [[svc.c, 'data-c'], [svc.b, 'data-b'], [svc.a, 'data-a']] as const) {
      if (inst) await agentUninstall(remote, { node: process.execPath, installDir: inst, service: s, data: join(dir, d), purge: true }).catch((e: Error) => t.comment(`cleanup of ${s}: ${e.message}`));
    }
    await sshd.stop();
    await sshdB.stop();
    await sshdC.stop();
    spawnSync('userdel', [plainUser]);
  };
  try {

  const tokens = async () => (await call<T.ListJoinTokensRequest, T.ListJoinTokensResponse__Output>(h.admin, h.admin.tokens, h.admin.tokens.ListJoinTokens, { includeInactive: true })).tokens;
  const agents = async () => (await call<T.ListAgentsRequest, T.ListAgentsResponse__Output>(h.admin, h.admin.agents, h.admin.agents.ListAgents, { selector: {} })).agents;

  await t.test('an unknown host key fails without --accept-new-host-keys: nothing copied, no token left usable', async (t) => {
    const empty = join(dir, 'known_hosts.empty');
    writeFileSync(empty, '');
    const r = await runCli([...base, '--hosts', hosts, '--known-hosts', empty], f.env);
    t.equal(r.code, 1, r.err);
    t.match(r.out, /TRELLIS_E_SSH_HOST_KEY: the SSH host key of root@127\.0\.0\.1:\d+ is not in .*known_hosts\.empty; nothing was sent/);
    t.match(r.out, /0 installed, 0 unchanged, 2 failed/);
    t.notOk(existsSync(prefix), 'nothing was copied');
    t.equal((await agents()).length, 0, 'no agent enrolled');
    t.equal((await tokens()).filter((x) => !x.revoked && x.used < x.uses).length, 0, 'no usable join token left');
    t.equal(readFileSync(empty, 'utf8'), '', 'the known_hosts file was not changed');
  });

  await t.test('a changed host key fails even with --accept-new-host-keys', async (t) => {
    const other = await makeKey(join(dir, 'other_host_key'));
    const changed = join(dir, 'known_hosts.changed');
    writeFileSync(changed, `[127.0.0.1]:${sshd.port} ${other.split(' ').slice(0, 2).join(' ')}\n`);
    const r = await runCli([...base, '--hosts', hosts, '--known-hosts', changed, '--accept-new-host-keys'], f.env);
    t.equal(r.code, 1, r.err);
    t.match(r.out, /TRELLIS_E_SSH_HOST_KEY: the SSH host key of root@127\.0\.0\.1:\d+ CHANGED/);
    t.notOk(existsSync(prefix), 'nothing was copied');
    t.equal((await agents()).length, 0);
  });

  let ids: string[] = [];
  await t.test('two agents on one server over SSH: installed, online at the hub with their labels, each token used once', async (t) => {
    const r = await runCli([...base, '--hosts', hosts, '--known-hosts', known, '--json'], f.env);
    t.equal(r.code, 0, r.err + r.out);
    const out = JSON.parse(r.out) as { hosts: Array<{ host: string; service: string; agentId: string; result: string; error: string; installDir: string }>; installed: number; unchanged: number; failed: number };
    t.same([out.installed, out.unchanged, out.failed], [2, 0, 0], r.out);
    ids = out.hosts.map((x) => x.agentId);
    for (const x of out.hosts) installDirs.add(x.installDir);
    t.equal(new Set(ids).size, 2);
    const byId = new Map((await agents()).map((a) => [a.id, a]));
    for (const x of out.hosts) {
      const a = byId.get(x.agentId);
      t.equal(a?.status, 'online', `${x.service} online`);
      t.same(a?.labels, x.service === svc.a ? { role: 'fleet', slot: 'a' } : { role: 'db', slot: 'b' }, `${x.service} labels from the flags and its host line`);
    }
    const mine = (await tokens()).filter((x) => x.description.startsWith('agents install'));
    t.equal(mine.length, 2, 'one token per agent');
    t.ok(mine.every((x) => x.uses === 1 && x.used === 1), 'each token used once');
    const inst = [...installDirs][0]!;
    t.ok(existsSync(join(inst, 'bin', 'trellis.js')), 'the bundle is unpacked in the versioned prefix');
    t.equal(readFileSync(join(inst, '.bundle-sha256'), 'utf8').trim().length, 64);
  });

  await t.test('a rerun changes nothing; TOFU records a new host key; a server refusing the key fails alone (exit 1)', async (t) => {
    const tofu = join(dir, 'known_hosts.tofu');
    writeFileSync(tofu, sshdB.knownHostsLine + '\n');
    const both = join(dir, 'hosts.both');
    writeFileSync(both, readFileSync(hosts, 'utf8') + `root@127.0.0.1:${sshdB.port} --service ${svc.a}\n`);
    const before = (await tokens()).length;
    const r = await runCli([...base, '--hosts', both, '--known-hosts', tofu, '--accept-new-host-keys'], f.env);
    t.equal(r.code, 1, r.err);
    t.match(r.out, new RegExp(`\\[${svc.a}\\]\\s+${ids[0]}\\s+unchanged`));
    t.match(r.out, new RegExp(`\\[${svc.b}\\]\\s+${ids[1]}\\s+unchanged`));
    t.match(r.out, new RegExp(`root@127\\.0\\.0\\.1:${sshdB.port} \\[${svc.a}\\]\\s+-\\s+failed\\s+TRELLIS_E_SSH: SSH authentication to root@127\\.0\\.0\\.1:${sshdB.port} failed`));
    t.match(r.out, /0 installed, 2 unchanged, 1 failed/);
    t.ok(readFileSync(tofu, 'utf8').includes(sshd.hostKey), 'the new host key was recorded');
    const all = await tokens();
    t.equal(all.filter((x) => !x.revoked && x.used < x.uses).length, 0, 'the unused tokens of the rerun were revoked');
    t.ok(all.length - before <= 2, 'no token for the server that refused the key');
    t.same((await agents()).map((a) => a.id).sort(), [...ids].sort(), 'no new agent');
  });

  await t.test('a host that fails after its token was made gets the token revoked', async (t) => {
    const one = join(dir, 'hosts.c');
    writeFileSync(one, `root@127.0.0.1:${sshd.port} --service ${svc.c} --data ${dir}/data-c\n`);
    const r = await runCli([...base, '--hosts', one, '--known-hosts', known, '--hub-address', '127.0.0.1:1', '--timeout', '60s'], f.env);
    t.equal(r.code, 1, r.out);
    t.match(r.out, /failed\s+TRELLIS_E_UNAVAILABLE: `trellis agent install` on root@127\.0\.0\.1:\d+: cannot reach (the hub at )?127\.0\.0\.1:1/, 'the server\'s own error code');
    const tok = (await tokens()).find((x) => x.description.includes(svc.c));
    t.ok(tok, 'a token was made for it');
    t.ok(tok?.revoked, 'and revoked');
    t.equal(tok?.used, 0);
  });

  await t.test('--dry-run connects nowhere and makes no token', async (t) => {
    const before = (await tokens()).length;
    const r = await runCli(['agents', 'install', '--hosts', hosts, '--dry-run', '--prefix', prefix], f.env);
    t.equal(r.code, 0, r.err);
    t.match(r.out, new RegExp(`\\[${svc.b}\\]: would: check node >= 20 and root over ssh`));
    t.match(r.out, /labels slot=b,role=db/);
    t.match(r.out, /dry run: 2 agent\(s\) on 1 server\(s\); nothing was done/);
    t.equal((await tokens()).length, before);
  });

  await t.test('servers that cannot take an agent fail with what is missing, before any token or copy', async (t) => {
    writeFileSync(known, [sshd.knownHostsLine, sshdC.knownHostsLine, ''].join('\n'));
    const before = (await tokens()).length;
    const unfit = join(dir, 'hosts.unfit');
    writeFileSync(unfit, `${plainUser}@127.0.0.1:${sshd.port} --service ${svc.c}\nroot@127.0.0.1:${sshdC.port} --service ${svc.c}\n`);
    const r = await runCli([...base, '--hosts', unfit, '--known-hosts', known], f.env);
    t.equal(r.code, 1, r.err);
    t.match(r.out, new RegExp(`${plainUser}@127\\.0\\.0\\.1:${sshd.port} \\[${svc.c}\\]\\s+-\\s+failed\\s+TRELLIS_E_HOST_NOT_READY: .*${plainUser} is not root .*pass --sudo`));
    t.match(r.out, /TRELLIS_E_HOST_NOT_READY: .*Node\.js v18\.19\.1 at .*fakebin\/node is too old: the agent needs Node\.js >= 20/);
    const sudo = await runCli([...base, '--ssh', `${plainUser}@127.0.0.1:${sshd.port}`, '--service', svc.c, '--known-hosts', known, '--sudo'], f.env);
    t.equal(sudo.code, 1);
    t.match(sudo.out, /TRELLIS_E_HOST_NOT_READY: .*`sudo -n` does not work/);
    t.equal((await tokens()).length, before, 'no token was made');
  });

  await t.test('Ctrl-C stops the hosts in flight: each is reported failed (interrupted), exit 1', async (t) => {
    writeFileSync(known, [sshd.knownHostsLine, sshdC.knownHostsLine, ''].join('\n'));
    writeFileSync(join(fakeBin, 'slow'), '');
    try {
      const p = startCli([...base, '--ssh', `root@127.0.0.1:${sshdC.port}`, '--known-hosts', known], f.env);
      const t0 = Date.now();
      while (!p.err().includes('installing 1 agent(s)') && Date.now() - t0 < 60_000) await new Promise((r) => setTimeout(r, 50));
      await new Promise((r) => setTimeout(r, 1000)); // the probe is in flight (the remote node sleeps)
      const t1 = Date.now();
      p.child.kill('SIGINT');
      const code = await p.done;
      t.equal(code, 1, p.err());
      t.ok(Date.now() - t1 < 15_000, 'it stopped without waiting for the server');
      t.match(p.out(), /failed\s+TRELLIS_E_SHUTDOWN: root@127\.0\.0\.1:\d+: interrupted/);
      t.match(p.out(), /0 installed, 0 unchanged, 1 failed/);
    } finally {
      rmSync(join(fakeBin, 'slow'), { force: true });
    }
  });
  } finally {
    await cleanup(); // before the temp dir and the hub go away
  }
  t.not(spawnSync('id', [user]).status, 0, 'the service user is gone after uninstall --purge');
});
