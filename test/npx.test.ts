/**
 * `npx trellis …` in the source tree runs the built command without rebuilding the tree: npm links
 * the tree into its npx cache and runs its `prepare` script there, which used to be a full build
 * (~30 s, rewriting dist/); when that build failed (no node_modules yet) npm's cache was left half
 * made and every later `npx trellis` failed with "ENOENT … _npx/…/package.json". Real npm, real
 * processes, an npm cache of the test's own.
 */
import t from 'tap';
import { copyFileSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { TRELLIS_BIN, runProgram } from './helpers/cli.js';
import { tempDir } from './helpers/hub.js';

const ROOT = dirname(dirname(TRELLIS_BIN));
const PREPARE = join(ROOT, 'scripts', 'prepare.mjs');

const run = (cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}) => runProgram(cmd, args, { cwd: ROOT, ...opts });

t.test('prepare builds after npm ci / install / pack, and not under npm exec (npx)', async (t) => {
  await using d = await tempDir();
  // A stand-in for npm-cli.js: records its arguments, exits 3.
  const fakeNpm = join(d.path, 'npm-cli.js');
  const calls = join(d.path, 'calls');
  writeFileSync(fakeNpm, `require('fs').appendFileSync(${JSON.stringify(calls)}, JSON.stringify(process.argv.slice(2)) + '\\n'); process.exit(3);\n`);
  const env = (command: string) => ({ ...process.env, npm_command: command, npm_execpath: fakeNpm });
  const exec = await run(process.execPath, [PREPARE], { env: env('exec') });
  t.equal(exec.code, 0, 'under npm exec: nothing to do');
  t.throws(() => readFileSync(calls), { code: 'ENOENT' }, 'npm was not run');
  for (const command of ['ci', 'install', 'pack']) {
    const r = await run(process.execPath, [PREPARE], { env: env(command) });
    t.equal(r.code, 3, `${command}: the build's exit status`);
  }
  t.same(readFileSync(calls, 'utf8').trim().split('\n').map((l) => JSON.parse(l)), [['run', 'build'], ['run', 'build'], ['run', 'build']], 'npm run build, once each');
});

t.test('npx trellis --help in the source tree: the built command, at once, dist/ untouched', async (t) => {
  await using d = await tempDir();
  const main = join(ROOT, 'dist', 'cli', 'main.js');
  const before = statSync(main).mtimeMs;
  const env = { ...process.env, npm_config_cache: join(d.path, 'npm-cache'), npm_config_update_notifier: 'false', npm_config_yes: 'true' };
  for (const round of ['first (a fresh npx cache)', 'second']) {
    const r = await run('npx', ['trellis', '--help'], { env });
    t.equal(r.code, 0, `${round}: exit 0 (${r.err.slice(0, 300)})`);
    t.match(r.out, /^Usage: trellis /m, `${round}: the help`);
  }
  t.equal(statSync(main).mtimeMs, before, 'dist/ was not rebuilt');
});

t.test('bin/trellis.js in a tree that is not built says what to run', async (t) => {
  await using d = await tempDir();
  mkdirSync(join(d.path, 'bin'));
  copyFileSync(TRELLIS_BIN, join(d.path, 'bin', 'trellis.js'));
  writeFileSync(join(d.path, 'package.json'), '{"type":"module"}\n');
  const bare = await run(process.execPath, [join(d.path, 'bin', 'trellis.js'), '--help'], { cwd: d.path });
  t.equal(bare.code, 1);
  t.match(bare.err, /^trellis: not built yet; run `npm ci` in .* \(npm ci installs the dependencies and builds\)\n$/, 'no node_modules: npm ci');
  mkdirSync(join(d.path, 'node_modules'));
  const deps = await run(process.execPath, [join(d.path, 'bin', 'trellis.js'), '--help'], { cwd: d.path });
  t.match(deps.err, /^trellis: not built yet; run `npm run build` in /, 'dependencies installed: npm run build');
});
