/**
 * The shipped artifacts, installed as an operator would: `npm pack` → `npm install` into a
 * temp prefix (offline, no compiler on PATH), and `trellis agent bundle` → unpack → run with
 * node alone on PATH. Real processes, real npm, real tar.
 */
import t from 'tap';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, symlinkSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { TRELLIS_BIN, runCli, runProgram as run } from './helpers/cli.js';
import { tempDir } from './helpers/hub.js';

const ROOT = dirname(dirname(TRELLIS_BIN));
const PKG = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
/** Dev dependencies (and their own packages) that must never reach an installed tree. */
const DEV_ONLY = ['typescript', 'tap', '@tapjs', '@types/node-forge', '@types/ws'];


/** Every file below `dir`, relative to it; `skip` names folders not entered. */
function walk(dir: string, skip: (rel: string) => boolean = () => false, base = dir): string[] {
  const files: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    const rel = relative(base, p);
    if (e.isDirectory()) { if (!skip(rel)) files.push(...walk(p, skip, base)); } else files.push(rel);
  }
  return files;
}

/** Package folders named in DEV_ONLY anywhere in a node_modules tree. */
function devPackagesIn(tree: string): string[] {
  const found: string[] = [];
  const visit = (nm: string): void => {
    if (!existsSync(nm)) return;
    for (const name of readdirSync(nm)) {
      const names = name.startsWith('@') ? readdirSync(join(nm, name)).map((n) => `${name}/${n}`) : [name];
      for (const n of names) {
        if (DEV_ONLY.some((d) => n === d || n.startsWith(d + '/'))) found.push(relative(tree, join(nm, n)));
        visit(join(nm, n, 'node_modules'));
      }
    }
  };
  visit(join(tree, 'node_modules'));
  return found;
}

/** npm with node and npm alone on PATH: no node_modules/.bin, so no `tsc` to find. */
const npmEnv = (): NodeJS.ProcessEnv => ({ ...process.env, PATH: dirname(process.execPath) + ':/usr/bin:/bin', npm_config_update_notifier: 'false' });

t.test('npm pack holds compiled code only; installing it offline needs no compiler, runs no build and brings no dev dependencies', async (t) => {
  await using tmp = await tempDir('trellis-pack-');
  // The test run has built dist/ already; --ignore-scripts skips the clean rebuild `npm pack` does.
  const pack = await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', tmp.path], { cwd: ROOT, env: npmEnv() });
  t.equal(pack.code, 0, pack.err);
  const [info] = JSON.parse(pack.out) as Array<{ filename: string; files: Array<{ path: string }>; bundled: string[] }>;
  t.equal(info.filename, `trellis-${PKG.version}.tgz`);
  const files = info.files.map((f) => f.path);
  for (const must of ['bin/trellis.js', 'dist/cli/main.js', 'dist/agent/agent.js', 'dist/hub/hub.js', 'proto/trellis/v1/agent_channel.proto', 'package.json', 'README.md']) {
    t.ok(files.includes(must), `the tarball holds ${must}`);
  }
  const own = files.filter((f) => !f.startsWith('node_modules/'));
  t.same(own.filter((f) => /\.ts$|\.map$/.test(f) || /^dist\/(test|bench|scripts)\//.test(f) || !/^(bin|dist|proto)\/|^(package\.json|README\.md|LICENSE)$/.test(f)), [],
    'no TypeScript sources, source maps, tests, benches or other files of its own');
  t.ok(info.bundled.includes('@grpc/grpc-js') && !info.bundled.some((b) => DEV_ONLY.some((d) => b === d || b.startsWith(d + '/'))), 'production dependencies are bundled, dev ones are not');

  const prefix = join(tmp.path, 'prefix');
  const install = await run('npm', ['install', '--prefix', prefix, '--offline', '--no-audit', '--no-fund', '--foreground-scripts', join(tmp.path, info.filename)], { cwd: tmp.path, env: npmEnv() });
  t.equal(install.code, 0, `npm install of the tarball, offline: ${install.err.slice(-2000)}`);
  t.notMatch(install.out + install.err, /> trellis@[^ ]+ (prepare|build)|\btsc\b/, 'npm ran no build script of trellis');

  const pkgDir = join(prefix, 'node_modules', 'trellis');
  t.same(walk(pkgDir, (rel) => rel === 'node_modules').filter((f) => f.endsWith('.ts')), [], 'no .ts file in the installed package');
  t.same(devPackagesIn(prefix), [], 'no dev dependency in the installed tree');
  t.same(devPackagesIn(pkgDir), [], 'no dev dependency bundled in the package');

  await using home = await tempDir('trellis-pack-home-');
  const env = { PATH: dirname(process.execPath), HOME: home.path, TRELLIS_HOME: home.path };
  const help = await run(join(prefix, 'node_modules', '.bin', 'trellis'), ['--help'], { env });
  t.equal(help.code, 0, help.err);
  t.match(help.out, /Usage: trellis/);
  const version = await run(join(prefix, 'node_modules', '.bin', 'trellis'), ['version'], { env });
  t.equal(version.code, 0, version.err);
  t.match(version.out, `trellis ${PKG.version}`);
});

t.test('agent bundle: unpacked with tar, it runs with node alone on PATH (no npm, no registry)', async (t) => {
  await using tmp = await tempDir('trellis-bundle-');
  const out = join(tmp.path, 'trellis-agent.tgz');
  const r = await runCli(['agent', 'bundle', '--out', out]);
  t.equal(r.code, 0, r.err);
  const sha = createHash('sha256').update(readFileSync(out)).digest('hex');
  t.match(r.out, `sha256:${sha}`, 'prints the SHA-256 of the file it wrote');
  t.equal(readFileSync(`${out}.sha256`, 'utf8'), `${sha}  trellis-agent.tgz\n`, 'and writes FILE.sha256 in sha256sum format');

  const dest = join(tmp.path, 'opt');
  mkdirSync(dest);
  const untar = await run('tar', ['-xzf', out, '-C', dest]);
  t.equal(untar.code, 0, untar.err);
  t.same(readdirSync(dest), [`trellis-${PKG.version}`], 'one top-level folder, trellis-<version>/');
  const top = join(dest, `trellis-${PKG.version}`);
  t.same(walk(top, (rel) => rel === 'node_modules').filter((f) => f.endsWith('.ts') || f.endsWith('.map') || /^dist\/(test|bench|scripts)\//.test(f)), [],
    'no TypeScript sources, source maps, tests or benches');
  t.same(devPackagesIn(top), [], 'no dev dependency (the checkout it came from has them)');

  // node alone on PATH: a folder holding only a link to this node binary.
  const nodeOnly = join(tmp.path, 'node-only');
  mkdirSync(nodeOnly);
  symlinkSync(process.execPath, join(nodeOnly, 'node'));
  await using home = await tempDir('trellis-bundle-home-');
  const env = { PATH: nodeOnly, HOME: home.path, TRELLIS_HOME: home.path };
  const bin = join(top, 'bin', 'trellis');
  const version = await run(bin, ['version'], { env });
  t.equal(version.code, 0, version.err);
  t.match(version.out, `trellis ${PKG.version}`);
  // Loading the hub's init code exercises the bundled dependencies (PKI, store, config).
  const init = await run(bin, ['hub', 'init', '--data', join(home.path, 'hub'), '--name', '127.0.0.1'], { env: { ...env, TRELLIS_ADMIN_PASSWORD: 'bundle-test-password-1' } });
  t.equal(init.code, 0, init.err);
  t.match(init.out, /CA fingerprint: sha256:[0-9a-f]{64}/);
});
