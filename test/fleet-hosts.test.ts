/**
 * `trellis agents install` without a server: host strings and hosts files (everything that could
 * reach an ssh argv or a remote shell is validated), quoting, the remote command line (no token in
 * it), and the bundle cache. The end-to-end run over a real sshd is test/fleet-ssh.test.ts.
 */
import t from 'tap';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import * as tar from 'tar';
import { runCli } from './helpers/cli.js';
import { tempDir } from './helpers/hub.js';
import { checkDuplicates, parseTarget, parseHostsFile, formatTarget } from '../cli/fleet/hosts.js';
import { shQuote, sshArgv } from '../cli/fleet/ssh.js';
import { agentInstallCommand } from '../cli/fleet/remote.js';
import { cachedBundle, openBundle } from '../cli/fleet/bundle.js';

t.test('host strings that could be read as ssh options or shell code are refused', async (t) => {
  for (const bad of ['-oProxyCommand=touch /tmp/x', '-p', 'root@-oProxyCommand=x', 'root@host;id', 'host:22;id', 'ro ot@host', 'root@host$(id)',
    'root@host:0', 'root@host:65536', 'root@host:22x', '`id`@host', 'host/x', '[::1', '[notv6]:22', 'a..b', 'host\nother', '']) {
    t.throws(() => parseTarget(bad), { code: 'TRELLIS_E_INVALID_ARGUMENT' }, `refused: ${JSON.stringify(bad)}`);
  }
  t.same(parseTarget('root@web-1.example.com:2222'), { user: 'root', host: 'web-1.example.com', port: 2222 });
  t.same(parseTarget('10.0.0.5'), { user: undefined, host: '10.0.0.5', port: undefined });
  t.same(parseTarget('admin@[::1]:22'), { user: 'admin', host: '::1', port: 22 });
  t.equal(formatTarget(parseTarget('admin@[::1]:22')), 'admin@[::1]:22');
  t.throws(() => parseHostsFile('root@a --service x;rm\n', 'hosts'), /hosts:1: bad --service/);
  t.throws(() => parseHostsFile('# c\n\nroot@a --data /var/lib/$(id)\n', 'hosts'), /hosts:3: bad --data/);
  t.throws(() => parseHostsFile('root@a --shell /bin/sh\n', 'hosts'), /hosts:1: unknown option "--shell"/);
  t.throws(() => parseHostsFile('root@a --data /var/lib/../etc\n', 'hosts'), /without "\." or "\.\." parts/);
  const ok = parseHostsFile('root@a:2200 --label a=1 --service s1 --data /d/1 # first\n  root@a:2200 --label=b=2,c=3 --service=s2 --data=/d/2\n', 'hosts');
  t.same(ok.map((e) => [e.target.port, e.service, e.data, e.labels]), [[2200, 's1', '/d/1', { a: '1' }], [2200, 's2', '/d/2', { b: '2', c: '3' }]]);

  // The host is the operand after `--`; nothing from it reaches an option.
  const argv = sshArgv(parseTarget('root@h:2'), { knownHosts: '/k', acceptNewHostKeys: false }, 'true');
  t.same(argv.slice(-3), ['--', 'h', 'true']);
  t.ok(argv.includes('BatchMode=yes') && argv.includes('StrictHostKeyChecking=yes'));
  t.ok(sshArgv(parseTarget('h'), { knownHosts: '/k', acceptNewHostKeys: true }, 'true').includes('StrictHostKeyChecking=accept-new'));

  // Values quoted for the remote shell come back as the same single word.
  for (const v of [`it's`, 'a b', '$(id)', '`id`', '"x"', 'a\'"b', ';|&<>*?']) {
    const r = spawnSync('/bin/sh', ['-c', `printf %s ${shQuote(v)}`], { encoding: 'utf8' });
    t.equal(r.stdout, v, `quoted: ${v}`);
  }
  // The join token is never in the remote command line: it goes to stdin.
  const cmd = agentInstallCommand({ node: '/usr/bin/node', installDir: '/opt/trellis/x', hub: 'hub:7444', service: 's', data: '/d', detach: true }, true);
  t.match(cmd, /^sudo -n \/usr\/bin\/node \/opt\/trellis\/x\/bin\/trellis\.js agent install --hub hub:7444 --token-file - --json/);

  // Through the CLI: refused before anything runs (no profile needed, nothing executed).
  await using home = await tempDir();
  const marker = join(home.path, 'pwned');
  const r = await runCli(['agents', 'install', '--ssh', `-oProxyCommand=touch ${marker}`, '--dry-run'], { TRELLIS_HOME: home.path });
  t.equal(r.code, 1, r.err);
  t.match(r.err, /--ssh: bad host .*starts with "-"/);
  writeFileSync(join(home.path, 'hosts'), `root@ok\n-oProxyCommand=touch${marker}\n`);
  const r2 = await runCli(['agents', 'install', '--hosts', join(home.path, 'hosts'), '--dry-run'], { TRELLIS_HOME: home.path });
  t.equal(r2.code, 1);
  t.match(r2.err, /hosts:2: bad host/);
  t.notOk(existsSync(marker), 'no command ran');
});

t.test('the bundle: built once per build and cached; a given file is checked against its .sha256', async (t) => {
  await using tmp = await tempDir();
  const env = { XDG_CACHE_HOME: tmp.path };
  const first = await cachedBundle({ env });
  t.notOk(first.cached);
  t.match(first.file, new RegExp(`^${tmp.path}/trellis/bundles/trellis-\\d+\\.\\d+\\.\\d+.*\\.tgz$`));
  t.match(first.dir, /^trellis-\d+\.\d+\.\d+.*-[0-9a-f]{12}$/);
  const again = await cachedBundle({ env });
  t.ok(again.cached, 'the second run uses the cache');
  t.equal(again.sha256, first.sha256);
  const opened = await openBundle(first.file);
  t.equal(opened.sha256, first.sha256);
  t.equal(opened.root, first.root);
  // A damaged copy: FILE.sha256 no longer matches.
  const copy = join(tmp.path, 'copy.tgz');
  writeFileSync(copy, Buffer.concat([readFileSync(first.file), Buffer.from('x')]));
  writeFileSync(`${copy}.sha256`, `${first.sha256}  copy.tgz\n`);
  await t.rejects(openBundle(copy), /does not match .*copy\.tgz\.sha256/);
  // Not a trellis bundle at all.
  const other = join(tmp.path, 'other.tgz');
  await tar.c({ gzip: true, file: other, cwd: tmp.path }, ['copy.tgz']);
  await t.rejects(openBundle(other), { code: 'TRELLIS_E_INVALID_ARGUMENT', message: /not a trellis agent bundle/ });
});


t.test('two agents on one server may share neither a service nor a data directory', async (t) => {
  const two = (a: string, b: string) => parseHostsFile(`${a}\n${b}\n`, 'hosts');
  t.doesNotThrow(() => checkDuplicates(two('root@h --service a', 'root@h --service b'), 'trellis-agent'), 'each its own /var/lib/SERVICE');
  t.doesNotThrow(() => checkDuplicates(two('root@h', 'root@h2'), 'trellis-agent', '/srv/agent'), 'one --data on different servers');
  t.throws(() => checkDuplicates(two('root@h', 'admin@H'), 'trellis-agent'), { code: 'TRELLIS_E_INVALID_ARGUMENT', message: /hosts:2: .*service trellis-agent is already listed \(hosts:1\)/ });
  t.throws(() => checkDuplicates(two('root@h --service a --data /srv/x', 'root@h --service b --data /srv/x'), 'trellis-agent'),
    { code: 'TRELLIS_E_INVALID_ARGUMENT', message: /hosts:2: .*data directory \/srv\/x is already listed \(hosts:1\)/ });
  t.throws(() => checkDuplicates(two('root@h --service a', 'root@h --service b'), 'trellis-agent', '/srv/agent'),
    { code: 'TRELLIS_E_INVALID_ARGUMENT', message: /data directory \/srv\/agent is already listed/ }, 'the command\'s --data applies to every line without its own');
  t.throws(() => checkDuplicates(two('root@h --service a --data /var/lib/b', 'root@h --service b'), 'trellis-agent'),
    { code: 'TRELLIS_E_INVALID_ARGUMENT', message: /data directory \/var\/lib\/b/ }, 'an explicit --data against another line\'s default');
});
