import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import {
  atomicWriteFile,
  atomicWriteFileSync,
  ensureDir,
  readFileIfExists,
  removeStaleTempFiles,
} from '../common/fsutil.js';

const root = await mkdtemp(join(tmpdir(), 'trellis-fsutil-'));
t.teardown(() => rm(root, { recursive: true, force: true }));

let n = 0;
async function freshDir(): Promise<string> {
  const dir = join(root, `case-${++n}`);
  await mkdir(dir);
  return dir;
}

const variants = [
  ['atomicWriteFile', atomicWriteFile],
  ['atomicWriteFileSync', async (...args: Parameters<typeof atomicWriteFileSync>) => atomicWriteFileSync(...args)],
] as const;

for (const [name, write] of variants) {
  void t.test(`${name} creates the file 0600 under umask 0o022, and honours an explicit mode`, async (t) => {
    const old = process.umask(0o022);
    t.teardown(() => void process.umask(old));
    const dir = await freshDir();
    await write(join(dir, 'secret'), 'x');
    t.equal((await stat(join(dir, 'secret'))).mode & 0o777, 0o600);
    // 0666 would come out 0644 if the umask applied: the explicit chmod defeats it.
    await write(join(dir, 'shared'), 'x', { mode: 0o666 });
    t.equal((await stat(join(dir, 'shared'))).mode & 0o777, 0o666);
    // Replacing a looser file tightens it.
    await writeFile(join(dir, 'loose'), 'old', { mode: 0o644 });
    await write(join(dir, 'loose'), 'new');
    t.equal((await stat(join(dir, 'loose'))).mode & 0o777, 0o600);
  });

  void t.test(`${name} replaces content and leaves no temp files behind`, async (t) => {
    const dir = await freshDir();
    const path = join(dir, 'state.json');
    await write(path, 'first');
    await write(path, Buffer.from('second'));
    t.equal(await readFile(path, 'utf8'), 'second');
    t.same(await readdir(dir), ['state.json']);
  });

  void t.test(`${name} that fails leaves the target and the directory as they were`, async (t) => {
    const dir = await freshDir();
    // Renaming a file over a non-empty directory fails after the temp file was written.
    const target = join(dir, 'target');
    await mkdir(target);
    await writeFile(join(target, 'keep'), 'kept');
    await t.rejects(write(target, 'data'));
    t.same(await readdir(dir), ['target'], 'no temp file left');
    t.equal(await readFile(join(target, 'keep'), 'utf8'), 'kept');
    await t.rejects(write(join(dir, 'missing', 'file'), 'data'), { code: 'ENOENT' });
  });
}

void t.test('readers see the old or the new content, never a mix', async (t) => {
  const dir = await freshDir();
  const path = join(dir, 'big');
  const a = 'a'.repeat(1 << 20);
  const b = 'b'.repeat(1 << 20);
  await atomicWriteFile(path, a);
  let writing = true;
  const writer = (async () => {
    for (let i = 0; i < 30; i++) await atomicWriteFile(path, i % 2 ? a : b);
    writing = false;
  })();
  let reads = 0;
  let torn = 0;
  while (writing) {
    const text = await readFile(path, 'utf8');
    reads++;
    if (text !== a && text !== b) torn++;
  }
  await writer;
  t.equal(torn, 0, `${reads} reads during 30 replacements`);
  t.same(await readdir(dir), ['big']);
});

void t.test('ensureDir creates missing parents 0700 and accepts an existing directory', async (t) => {
  const dir = join(await freshDir(), 'a', 'b');
  await ensureDir(dir);
  t.equal((await stat(dir)).mode & 0o777, 0o700);
  await ensureDir(dir);
  t.ok((await stat(dir)).isDirectory());
});

void t.test('readFileIfExists returns undefined only for a missing file', async (t) => {
  const dir = await freshDir();
  t.equal(await readFileIfExists(join(dir, 'nope')), undefined);
  await writeFile(join(dir, 'yes'), 'hi');
  t.equal((await readFileIfExists(join(dir, 'yes')))?.toString(), 'hi');
  await t.rejects(readFileIfExists(dir), { code: 'EISDIR' });
});

void t.test('removeStaleTempFiles removes only that file\'s temp files', async (t) => {
  const dir = await freshDir();
  const path = join(dir, 'hub.json');
  await writeFile(path, '{}');
  await writeFile(join(dir, '.hub.json.1.aa.tmp'), 'torn');
  await writeFile(join(dir, '.other.json.1.aa.tmp'), 'not ours');
  t.equal(await removeStaleTempFiles(path), 1);
  t.same((await readdir(dir)).sort(), ['.other.json.1.aa.tmp', 'hub.json']);
  t.equal(await removeStaleTempFiles(join(dir, 'gone', 'x.json')), 0, 'a missing directory is fine');
});
