/**
 * `.ci/run`, the CI entry point, run for real (bash) in a copy of the checkout layout with `npm`
 * and `apt-get` replaced by stubs on PATH: its last line is "N passed, M failed, K skipped" from
 * tap's summary (skip and todo counted), it exports CI=true to the tests, and a failed install
 * fails the run. And `needs()`: under CI a missing service fails the test instead of skipping it.
 */
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, readFileSync, symlinkSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tempDir } from './helpers/hub.js';
import { needs, underCi } from './helpers/needs.js';

const CI_RUN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '.ci', 'run');
const TOOLS = ['bash', 'env', 'mktemp', 'tee', 'grep', 'sed', 'rm', 'tail', 'cat', 'dirname'];

interface Stub { summary?: string; testRc?: number; ciRc?: number; aptRc?: number; aptInstallRc?: number; hide?: string[] }

/** Runs a copy of .ci/run with stub npm/apt-get; `hide` keeps those commands off PATH. */
async function ciRun(t: Test, s: Stub): Promise<{ code: number; out: string; lines: string[]; calls: string[] }> {
  const d = await tempDir('trellis-ci-run-');
  t.teardown(() => d[Symbol.asyncDispose]());
  mkdirSync(join(d.path, '.ci'));
  copyFileSync(CI_RUN, join(d.path, '.ci', 'run'));
  const bin = join(d.path, 'bin');
  mkdirSync(bin);
  const which = (c: string) => spawnSync('sh', ['-c', `command -v ${c}`], { encoding: 'utf8' }).stdout.trim();
  for (const tool of TOOLS) symlinkSync(which(tool), join(bin, tool));
  for (const c of ['openssl', 'slapd', 'ldapadd', 'ssh', 'zsh', 'fish']) {
    if (!(s.hide ?? []).includes(c)) writeFileSync(join(bin, c), '#!/bin/sh\nexit 0\n', { mode: 0o755 });
  }
  const calls = join(d.path, 'calls');
  writeFileSync(join(bin, 'apt-get'), `#!/bin/sh\necho "apt-get $*" >> ${calls}\nif [ "$1" = update ]; then exit ${s.aptRc ?? 0}; fi\nexit ${s.aptInstallRc ?? 0}\n`, { mode: 0o755 });
  writeFileSync(join(d.path, 'summary'), s.summary ?? '');
  writeFileSync(join(bin, 'npm'), [
    '#!/bin/sh',
    `echo "npm $* CI=$CI" >> ${calls}`,
    `if [ "$1" = ci ]; then exit ${s.ciRc ?? 0}; fi`,
    'echo "TAP version 14"',
    'echo "ok 1 - a test"',
    `cat ${join(d.path, 'summary')}`,
    `exit ${s.testRc ?? 0}`,
    '',
  ].join('\n'), { mode: 0o755 });
  chmodSync(join(d.path, '.ci', 'run'), 0o755);
  const r = spawnSync(which('bash'), [join(d.path, '.ci', 'run')], { encoding: 'utf8', env: { PATH: bin, HOME: d.path }, timeout: 60_000 });
  const out = r.stdout;
  return { code: r.status ?? -1, out, lines: out.trim().split('\n'), calls: existsSync(calls) ? readFileSync(calls, 'utf8').trim().split('\n') : [] };
}

t.test('a green run: the last line counts passed, failed and skipped (skip + todo) from the tap summary; CI=true reaches the tests', async (t) => {
  const r = await ciRun(t, { summary: '# { total: 10, pass: 6, todo: 1, skip: 3 }\n# time=1ms\n' });
  t.equal(r.code, 0);
  t.equal(r.lines.at(-1), '6 passed, 0 failed, 4 skipped');
  t.same(r.calls, ['npm ci --no-audit --no-fund CI=true', 'npm test CI=true'], 'no install needed, npm ci then npm test, both with CI=true');
});

t.test('failures: counted from the summary and the run exits non-zero', async (t) => {
  const r = await ciRun(t, { summary: '# { total: 6, pass: 3, fail: 2, skip: 1 }\n', testRc: 1 });
  t.not(r.code, 0);
  t.equal(r.lines.at(-1), '3 passed, 2 failed, 1 skipped');
});

t.test('npm test fails with no failed test in the summary: still a failure', async (t) => {
  const r = await ciRun(t, { summary: '# { total: 2, pass: 2 }\n', testRc: 1 });
  t.not(r.code, 0);
  t.equal(r.lines.at(-1), '2 passed, 1 failed, 0 skipped');
});

t.test('no tap summary (the runner died): the TAP lines are counted and the run fails', async (t) => {
  const r = await ciRun(t, { summary: 'not ok 2 - b\nok 3 - c # SKIP no\n', testRc: 1 });
  t.not(r.code, 0);
  t.equal(r.lines.at(-1), '1 passed, 1 failed, 1 skipped');
});

t.test('failed tests are named again just above the summary line (a long log is read from its end)', async (t) => {
  const r = await ciRun(t, { summary: '    not ok 4 - the inner assertion\n      ---\n      at: x.ts:3\nnot ok 7 - dist/test/x.test.js\n# { total: 9, pass: 7, fail: 2 }\n', testRc: 1 });
  const start = r.lines.indexOf('# ---- failures (from the log above) ----');
  const end = r.lines.indexOf('# ---- end of failures ----');
  t.ok(start > 0 && end === r.lines.length - 2, 'the digest ends just above the summary line');
  const digest = r.lines.slice(start, end).join('\n');
  t.match(digest, /not ok 4 - the inner assertion/);
  t.match(digest, /at: x\.ts:3/, 'with the lines tap printed around it');
  t.match(digest, /not ok 7 - dist\/test\/x\.test\.js/);
  t.equal(r.lines.at(-1), '7 passed, 2 failed, 0 skipped');
  const green = await ciRun(t, { summary: '# { total: 1, pass: 1 }\n' });
  t.notOk(green.out.includes('---- failures'), 'a green run prints no digest');
});

t.test('a failed apt-get fails CI before any test runs, with a failed summary line', async (t) => {
  const r = await ciRun(t, { hide: ['openssl'], aptRc: 100, summary: '# { total: 1, pass: 1 }\n' });
  t.equal(r.code, 1);
  t.equal(r.lines.at(-1), '0 passed, 1 failed, 0 skipped');
  t.same(r.calls, ['apt-get update -qq'], 'stopped at the failed update: npm never ran');
});

t.test('a missing tool is installed by apt-get; a failed apt-get install (update fine) fails CI', async (t) => {
  for (const [hide, pkg] of [['ldapadd', 'slapd ldap-utils'], ['ssh', 'openssh-server openssh-client'], ['zsh', 'zsh fish']] as const) {
    const ok = await ciRun(t, { hide: [hide], summary: '# { total: 1, pass: 1 }\n' });
    t.equal(ok.code, 0, `${hide} missing, apt-get works: green`);
    t.match(ok.calls.join('\n'), new RegExp(`apt-get install -y -qq .*${pkg}`), `${pkg} installed`);
    t.equal(ok.lines.at(-1), '1 passed, 0 failed, 0 skipped');
    const bad = await ciRun(t, { hide: [hide], aptInstallRc: 100, summary: '# { total: 1, pass: 1 }\n' });
    t.equal(bad.code, 1, `${hide} missing, apt-get install fails: CI fails`);
    t.equal(bad.lines.at(-1), '0 passed, 1 failed, 0 skipped');
    t.notOk(bad.calls.some((c) => c.startsWith('npm')), 'npm never ran');
  }
});

t.test('npm ci fails: a failed summary line and a non-zero exit', async (t) => {
  const r = await ciRun(t, { ciRc: 1, summary: '# { total: 1, pass: 1 }\n' });
  t.equal(r.code, 1);
  t.equal(r.lines.at(-1), '0 passed, 1 failed, 0 skipped');
});

t.test('needs(): skipped with the reason outside CI; a recorded failure under CI; nothing when nothing is missing', async (t) => {
  const fails: string[] = [];
  const fake = { fail: (m: string) => { fails.push(m); return false; } } as unknown as Test;
  t.same(needs(fake, undefined, { CI: 'true' }), { skip: false }, 'nothing missing: runs, even under CI');
  t.same(needs(fake, '/usr/sbin/slapd is not installed', {}), { skip: '/usr/sbin/slapd is not installed' }, 'outside CI: skipped with the reason');
  t.same(fails, [], 'and no failure outside CI');
  const ci = needs(fake, '/usr/sbin/slapd is not installed', { CI: 'true' });
  t.equal(fails.length, 1, 'under CI: one failure recorded');
  t.match(fails[0], /CI=true and a required service or privilege is missing: \/usr\/sbin\/slapd is not installed/);
  t.match(ci.skip, /counted as a failure/);
  t.equal(underCi({ CI: 'false' }), false);
  t.equal(underCi({ CI: '0' }), false);
  t.equal(underCi({}), false);
  t.equal(underCi({ CI: '1' }), true);
});
