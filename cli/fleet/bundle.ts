/**
 * The agent bundle `agents install` copies: a given file (checked against FILE.sha256 when that
 * exists), or one built from this installation by `writeBundle` and cached per version and build
 * under $XDG_CACHE_HOME/trellis/bundles (~/.cache/…), so repeated runs do not rebuild it (~12 s).
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, relative } from 'node:path';
import * as tar from 'tar';
import { TrellisError } from '../../common/errors.js';
import { sha256File } from '../../common/fsutil.js';
import { packageRoot, writeBundle } from '../bundle.js';

export interface Bundle {
  file: string;
  sha256: string;
  bytes: number;
  /** The archive's top folder, `trellis-<version>`. */
  root: string;
  /** The folder it is unpacked to under the prefix: `<root>-<first 12 hex of its SHA-256>`. */
  dir: string;
  cached?: boolean;
}

const ROOT_RE = /^trellis-[0-9A-Za-z.+_-]{1,64}$/;

/** The top-level folder of a bundle archive (every entry must be under one folder). */
async function bundleRoot(file: string): Promise<string> {
  const tops = new Set<string>();
  await tar.t({ file, onReadEntry: (e) => { tops.add(e.path.replace(/^\.\//, '').split('/')[0]!); } });
  const [root] = [...tops];
  if (tops.size !== 1 || !root || !ROOT_RE.test(root)) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${file} is not a trellis agent bundle (expected one top folder trellis-<version>/; make one with \`trellis agent bundle --out FILE\`)`);
  }
  return root;
}

const describe = (file: string, sha256: string, root: string, cached?: boolean): Bundle =>
  ({ file, sha256, bytes: statSync(file).size, root, dir: `${root}-${sha256.slice(0, 12)}`, cached });

/** A bundle file given with --bundle: its SHA-256 (checked against FILE.sha256 if present) and root. */
export async function openBundle(file: string): Promise<Bundle> {
  if (!existsSync(file) || !statSync(file).isFile()) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `--bundle ${file}: no such file`);
  const sha256 = await sha256File(file);
  const sidecar = `${file}.sha256`;
  if (existsSync(sidecar)) {
    const want = readFileSync(sidecar, 'utf8').trim().split(/\s+/)[0]?.toLowerCase();
    if (want !== sha256) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${file} does not match ${sidecar} (sha256 ${sha256}, expected ${want}): the file is damaged or not the one that was checksummed`);
  }
  return describe(file, sha256, await bundleRoot(file));
}

export function bundleCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'trellis', 'bundles');
}

/** A key for this installation's build: version, and name, size and mtime of every compiled file. */
function buildKey(root: string): { version: string; key: string } {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string };
  const h = createHash('sha256').update(pkg.version);
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const p = join(dir, e.name);
      const rel = relative(root, p);
      if (e.isDirectory()) { if (!/^dist\/(test|bench|scripts)$/.test(rel)) walk(p); } else if (e.isFile()) {
        const s = statSync(p);
        h.update(`${rel}\0${s.size}\0${s.mtimeMs}\n`);
      }
    }
  };
  for (const d of ['dist', 'bin', 'proto']) if (existsSync(join(root, d))) walk(join(root, d));
  for (const f of ['package.json', 'package-lock.json']) if (existsSync(join(root, f))) h.update(`${f}\0${statSync(join(root, f)).mtimeMs}\n`);
  return { version: pkg.version, key: h.digest('hex').slice(0, 16) };
}

/**
 * This installation's bundle, from the cache or built now (into the cache, atomically; older
 * cached builds of the same version are removed). `note` reports progress (stderr).
 */
export async function cachedBundle(o: { env?: NodeJS.ProcessEnv; note?: (s: string) => void; root?: string } = {}): Promise<Bundle> {
  const root = o.root ?? packageRoot();
  const { version, key } = buildKey(root);
  const dir = bundleCacheDir(o.env);
  const name = `trellis-${version}-${key}.tgz`;
  const file = join(dir, name);
  if (existsSync(file) && existsSync(`${file}.sha256`)) {
    const sha256 = readFileSync(`${file}.sha256`, 'utf8').trim().split(/\s+/)[0]!;
    if ((await sha256File(file)) === sha256) return describe(file, sha256, `trellis-${version}`, true);
  }
  await mkdir(dir, { recursive: true, mode: 0o700 });
  o.note?.(`building the agent bundle of trellis ${version} (once per build; cached in ${dir})`);
  const tmp = join(dir, `.${name}.${process.pid}.tmp`);
  try {
    const r = await writeBundle({ out: tmp, root });
    renameSync(`${tmp}.sha256`, `${file}.sha256.tmp`);
    renameSync(tmp, file);
    renameSync(`${file}.sha256.tmp`, `${file}.sha256`);
    for (const old of readdirSync(dir)) {
      if (old.startsWith(`trellis-${version}-`) && !old.startsWith(name)) rmSync(join(dir, old), { force: true });
    }
    return describe(file, r.sha256, r.root);
  } finally {
    rmSync(tmp, { force: true });
    rmSync(`${tmp}.sha256`, { force: true });
  }
}
