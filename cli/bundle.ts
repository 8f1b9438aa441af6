/**
 * `trellis agent bundle`: an offline install bundle made from this installation.
 *
 * Layout of the archive (a gzipped tar with one top-level folder):
 *   trellis-<version>/bin/trellis        the command (a symlink to bin/trellis.js)
 *   trellis-<version>/bin/trellis.js
 *   trellis-<version>/dist/…             compiled code (no tests, benches or source maps)
 *   trellis-<version>/proto/…            the wire contract, loaded at runtime
 *   trellis-<version>/node_modules/…     the production dependencies, as installed here
 *   trellis-<version>/package.json, README.md
 * Unpacking it needs Node ≥ 20 and nothing else: no npm, no registry, no compiler.
 *
 * The dependencies are copied from the tree Node resolves them in on this host (a checkout's
 * node_modules, a global install's nested node_modules, or a prefix's hoisted one): the
 * closure of `dependencies` (and installed optional/peer ones), each package kept at the same
 * path relative to the node_modules folder it was found in, so resolution in the copy finds
 * the same versions. Dev dependencies are never reached by that walk.
 */
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative, resolve, sep } from 'node:path';
import * as tar from 'tar';
import { TrellisError } from '../common/errors.js';
import { sha256File } from '../common/fsutil.js';
import { PROTO_DIR } from '../common/proto.js';

/** What of the package itself goes into a bundle: the same set as package.json `files`. */
const OWN_ENTRIES = ['bin', 'proto', 'dist', 'package.json', 'README.md', 'LICENSE'];
/** Paths under dist/ left out (tests, benches, dev scripts, type-only generated code). */
const DIST_EXCLUDED = ['test', 'bench', 'scripts', join('common', 'proto-gen')].map((p) => join('dist', p));

interface PackageJson { name?: string; version?: string; dependencies?: Record<string, string>; optionalDependencies?: Record<string, string>; peerDependencies?: Record<string, string> }

export interface BundleResult { file: string; sha256: string; bytes: number; packages: number; root: string }

/** The installed package's root (where package.json and bin/ live). */
export function packageRoot(): string {
  return dirname(PROTO_DIR);
}

function readPackageJson(dir: string): PackageJson {
  return JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as PackageJson;
}

/** Node's lookup of a package directory from `fromDir`: ./node_modules/NAME, then each parent's. */
function findPackageDir(name: string, fromDir: string): string | undefined {
  for (let dir = fromDir; ; dir = dirname(dir)) {
    if (basename(dir) !== 'node_modules') {
      const candidate = join(dir, 'node_modules', name);
      if (existsSync(join(candidate, 'package.json'))) return candidate;
    }
    if (dirname(dir) === dir) return undefined;
  }
}

/** Every production dependency directory reachable from `root`, found as Node would. */
export function productionClosure(root: string): string[] {
  const seen = new Set<string>();
  const visit = (dir: string, deps: PackageJson, required: boolean): void => {
    const wanted: Array<[string, boolean]> = [
      ...Object.keys(deps.dependencies ?? {}).map((n) => [n, required] as [string, boolean]),
      ...Object.keys(deps.optionalDependencies ?? {}).map((n) => [n, false] as [string, boolean]),
      ...Object.keys(deps.peerDependencies ?? {}).map((n) => [n, false] as [string, boolean]),
    ];
    for (const [name, must] of wanted) {
      const found = findPackageDir(name, dir);
      if (!found) {
        if (must) throw new TrellisError('TRELLIS_E_NOT_FOUND', `dependency ${name} of ${deps.name ?? dir} is not installed; reinstall trellis (npm ci --omit=dev) and retry`);
        continue;
      }
      if (seen.has(found)) continue;
      seen.add(found);
      visit(found, readPackageJson(found), true);
    }
  };
  visit(root, readPackageJson(root), true);
  return [...seen].sort();
}

/**
 * Where a dependency goes in the bundle: its path below the nearest folder, from the package
 * root upwards, whose node_modules holds it (ROOT/node_modules/a/node_modules/b for a global
 * install, PREFIX/node_modules/b for a prefix install) → node_modules/a/node_modules/b.
 */
function layoutPath(root: string, depDir: string): string {
  for (let dir = root; ; dir = dirname(dir)) {
    const rel = relative(join(dir, 'node_modules'), depDir);
    if (basename(dir) !== 'node_modules' && rel && !rel.startsWith('..') && !rel.startsWith(sep)) return join('node_modules', rel);
    if (dirname(dir) === dir) throw new TrellisError('TRELLIS_E_INTERNAL', `dependency ${depDir} is not in a node_modules folder above ${root}`);
  }
}

function copyOwnFiles(root: string, dest: string): void {
  for (const entry of OWN_ENTRIES) {
    const src = join(root, entry);
    if (!existsSync(src)) {
      if (entry === 'dist') throw new TrellisError('TRELLIS_E_NOT_FOUND', `${src} is missing: build first (npm run build)`);
      continue;
    }
    cpSync(src, join(dest, entry), {
      recursive: true,
      filter: (p) => {
        const rel = relative(root, p);
        if (DIST_EXCLUDED.some((x) => rel === x || rel.startsWith(x + sep))) return false;
        if (rel.startsWith('dist' + sep) && rel.endsWith('.map')) return false;
        return !(statSync(p).isFile() && rel.endsWith('.ts') && !rel.endsWith('.d.ts'));
      },
    });
  }
}

/** Writes the bundle to `out` (a .tar.gz) and `out`.sha256, and returns its SHA-256. */
export async function writeBundle(opts: { out: string; root?: string }): Promise<BundleResult> {
  const root = opts.root ?? packageRoot();
  const pkg = readPackageJson(root);
  const top = `trellis-${pkg.version}`;
  const deps = productionClosure(root);
  const stage = mkdtempSync(join(tmpdir(), 'trellis-bundle-'));
  try {
    const dest = join(stage, top);
    mkdirSync(dest);
    copyOwnFiles(root, dest);
    const placed = new Map<string, string>();
    for (const dep of deps) {
      const at = layoutPath(root, dep);
      const other = placed.get(at);
      if (other) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `two installed copies of one dependency map to ${at} (${other}, ${dep}); bundle from a clean install (npm ci --omit=dev)`);
      placed.set(at, dep);
      // A package's own nested node_modules is copied only through the closure (its needed parts).
      cpSync(dep, join(dest, at), { recursive: true, filter: (p) => relative(dep, p).split(sep)[0] !== 'node_modules' });
    }
    if (!existsSync(join(dest, 'bin', 'trellis'))) symlinkSync('trellis.js', join(dest, 'bin', 'trellis'));
    const out = resolve(opts.out);
    mkdirSync(dirname(out), { recursive: true });
    await tar.c({ gzip: true, file: out, cwd: stage, portable: true }, [top]);
    const sha256 = await sha256File(out);
    writeFileSync(`${out}.sha256`, `${sha256}  ${basename(out)}\n`); // `sha256sum -c FILE.sha256` checks it
    return { file: out, sha256, bytes: statSync(out).size, packages: deps.length, root: top };
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}
