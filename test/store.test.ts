import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import t from 'tap';
import pg from 'pg';
import { LowdbStore, MemoryStore, openStore, PostgresStore, type Store } from '../hub/store/index.js';
import { migrate } from '../hub/store/postgres/index.js';
import { storeContract } from './contract/store.js';
import { needs } from './helpers/needs.js';
import { postgresMissing, startPostgres } from './helpers/postgres.js';

const root = await mkdtemp(join(tmpdir(), 'trellis-store-'));
t.teardown(() => rm(root, { recursive: true, force: true }));

let dirs = 0;
/** A fresh, not yet existing state file path (its directory is created by the store). */
function freshPath(): string {
  return join(root, `case-${++dirs}`, 'state', 'hub.json');
}

async function openLowdb(path: string, coalesceMs?: number): Promise<LowdbStore> {
  return (await openStore({ kind: 'lowdb', path, coalesceMs })) as LowdbStore;
}

storeContract(t, 'MemoryStore', async () => ({ store: new MemoryStore() }));

storeContract(t, 'LowdbStore', async () => {
  const path = freshPath();
  return { store: await openLowdb(path), reopen: () => openLowdb(path) };
});

void t.test('PostgresStore', needs(t, postgresMissing()), async (t) => {
  const server = await startPostgres();
  t.teardown(() => server.close());
  storeContract(t, 'PostgresStore', async () => {
    const url = await server.createDatabase('contract');
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try { await migrate(client); } finally { await client.end(); }
    const open = async () => (await openStore({ kind: 'postgres', url })) as PostgresStore;
    return { store: await open(), reopen: open };
  });
});

void t.test('openStore lists both backends', async (t) => {
  const mem = await openStore({ kind: 'memory' });
  t.ok(mem instanceof MemoryStore);
  await mem.close();
  const low = await openStore({ kind: 'lowdb', path: freshPath() });
  t.ok(low instanceof LowdbStore);
  await low.close();
});

void t.test('the state file is 0600 and a created directory 0700, whatever the umask', async (t) => {
  const old = process.umask(0o022);
  t.teardown(() => void process.umask(old));
  const path = freshPath();
  const store = await openLowdb(path);
  t.teardown(() => store.close());
  await store.put('users', { id: 'u' });
  t.equal((await stat(path)).mode & 0o777, 0o600, 'file mode');
  t.equal((await stat(join(path, '..'))).mode & 0o777, 0o700, 'directory mode');

  // A file someone made world-readable is tightened by the next write.
  const loose = join(root, `case-${++dirs}.json`);
  await writeFile(loose, '{"version":1,"collections":{}}', { mode: 0o644 });
  const again = await openLowdb(loose);
  t.teardown(() => again.close());
  await again.put('users', { id: 'u' });
  t.equal((await stat(loose)).mode & 0o777, 0o600, 'rewritten file mode');
});

void t.test('documents read from the file at open are deep-frozen in place: the store cannot be changed through a peek', async (t) => {
  const path = freshPath();
  const first = await openLowdb(path);
  await first.put('agents', { id: 'a', labels: { env: 'prod' }, serials: [{ serial: '01', notAfter: 1 }], ['__proto__' as string]: { x: 1 } } as never);
  await first.close();
  const store = await openLowdb(path);
  t.teardown(() => store.close());
  const doc = store.peek<{ id: string; labels: Record<string, string>; serials: Array<{ serial: string }> }>('agents', 'a')!;
  t.ok(Object.isFrozen(doc) && Object.isFrozen(doc.labels) && Object.isFrozen(doc.serials) && Object.isFrozen(doc.serials[0]), 'the document, its objects and arrays are frozen');
  t.throws(() => { 'use strict'; doc.labels.env = 'dev'; }, TypeError, 'a nested change throws');
  t.equal(Object.getPrototypeOf(doc), Object.prototype, 'a "__proto__" key in the file stays data, not a prototype');
  t.same((await store.get<{ id: string; labels: Record<string, string> }>('agents', 'a'))!.labels, { env: 'prod' }, 'the stored value is unchanged');
});

void t.test('a burst of 1,000 puts shares a handful of file writes', async (t) => {
  const path = freshPath();
  const store = await openLowdb(path);
  t.teardown(() => store.close());
  const puts: Promise<void>[] = [];
  for (let i = 0; i < 1000; i++) puts.push(store.put('agents', { id: `agent-${i}`, i }));
  await Promise.all(puts);
  t.ok(store.writes < 50, `${store.writes} writes for 1,000 puts`);
  const again = await openLowdb(path);
  t.teardown(() => again.close());
  t.equal(await again.count('agents'), 1000, 'every put is on disk');
});

void t.test('mutations made during a write share exactly one more write', async (t) => {
  const store = await openLowdb(freshPath(), 1);
  t.teardown(() => store.close());
  const first = store.put('kv', { id: 'first' });
  // Wait until the first write has started, then pile on.
  while (store.writes === 0) await new Promise((r) => setImmediate(r));
  const more = Array.from({ length: 50 }, (_, i) => store.put('kv', { id: `more-${i}` }));
  await Promise.all([first, ...more]);
  t.equal(store.writes, 2);
});

void t.test('a corrupt file fails open with TRELLIS_E_CONFIG naming it, and is left untouched', async (t) => {
  const cases: [string, string][] = [
    ['not JSON', '{"version":1,"collections":{"users":{"a":{"id":"a"}'],
    ['not an object', '[]'],
    ['an unknown format version', '{"version":2,"collections":{}}'],
    ['no collections', '{"version":1}'],
    ['a document whose id does not match its key', '{"version":1,"collections":{"users":{"a":{"id":"b"}}}}'],
    ['an empty file', ''],
  ];
  for (const [what, text] of cases) {
    const dir = join(root, `case-${++dirs}`);
    await mkdir(dir);
    const path = join(dir, 'hub.json');
    await writeFile(path, text, { mode: 0o600 });
    const before = await stat(path);
    await t.rejects(openStore({ kind: 'lowdb', path }), { code: 'TRELLIS_E_CONFIG', message: path }, what);
    t.equal(await readFile(path, 'utf8'), text, `${what}: content unchanged`);
    t.equal((await stat(path)).mtimeMs, before.mtimeMs, `${what}: not rewritten`);
    t.same(await readdir(dir), ['hub.json'], `${what}: nothing else written`);
  }
});

void t.test('a failed write rejects its callers, keeps the change, and the next flush retries', async (t) => {
  const path = freshPath();
  const store = await openLowdb(path);
  t.teardown(() => store.close());
  await store.put('kv', { id: 'before' });
  const dir = join(path, '..');
  await rm(dir, { recursive: true });
  await t.rejects(store.put('kv', { id: 'during' }), { code: 'ENOENT' });
  t.same(await store.get('kv', 'during'), { id: 'during' }, 'the change stays in memory');
  await mkdir(dir);
  await store.flush();
  const again = await openLowdb(path);
  t.teardown(() => again.close());
  t.same((await again.list('kv')).map((d) => d.id), ['before', 'during']);
});

void t.test('temp files left by a writer killed mid-write are removed on open', async (t) => {
  const path = freshPath();
  const store = await openLowdb(path);
  await store.put('kv', { id: 'a' });
  await store.close();
  const stale = join(path, '..', '.hub.json.12345.abcdef.tmp');
  await writeFile(stale, '{"torn');
  const again = await openLowdb(path);
  t.teardown(() => again.close());
  t.same(await readdir(join(path, '..')), ['hub.json']);
  t.same(await again.get('kv', 'a'), { id: 'a' });
});

void t.test('every put acknowledged before a SIGKILL is in the file', async (t) => {
  const storeUrl = pathToFileURL(fileURLToPath(new URL('../hub/store/index.js', import.meta.url))).href;
  const dir = join(root, `case-${++dirs}`);
  await mkdir(dir);
  const path = join(dir, 'hub.json');
  const script = join(dir, 'writer.mjs');
  // Four concurrent loops of awaited puts, so writes coalesce and overlap with new mutations.
  await writeFile(
    script,
    `import { openStore } from ${JSON.stringify(storeUrl)};
const [path, round] = process.argv.slice(2);
const store = await openStore({ kind: 'lowdb', path, coalesceMs: 1 });
process.stdout.write('ready\\n');
const pad = 'x'.repeat(500);
await Promise.all([0, 1, 2, 3].map(async (w) => {
  for (let i = 0; ; i++) {
    const id = round + '-' + w + '-' + i;
    await store.put('kv', { id, pad });
    process.stdout.write(id + '\\n');
  }
}));
`,
  );

  const acked: string[] = [];
  for (let round = 0; round < 3; round++) {
    acked.push(...(await runAndKill(script, path, `r${round}`)));
    const text = await readFile(path, 'utf8');
    t.doesNotThrow(() => JSON.parse(text), `round ${round}: the file parses`);
  }
  t.ok(acked.length > 0, `${acked.length} acknowledged puts`);
  const store: Store = await openLowdb(path);
  t.teardown(() => store.close());
  const stored = new Set((await store.list('kv')).map((d) => d.id));
  const missing = acked.filter((id) => !stored.has(id));
  t.same(missing, [], 'no acknowledged put is lost');
});

/** Runs the writer until ~300 ms after it is ready, SIGKILLs it, returns the ids it acknowledged. */
function runAndKill(script: string, path: string, round: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, path, round], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let killTimer: NodeJS.Timeout | undefined;
    const giveUp = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      out += chunk;
      if (!killTimer && out.startsWith('ready\n')) killTimer = setTimeout(() => child.kill('SIGKILL'), 300);
    });
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (err += chunk));
    child.on('error', reject);
    child.on('close', (_code, signal) => {
      clearTimeout(giveUp);
      clearTimeout(killTimer);
      if (signal !== 'SIGKILL' || !killTimer) {
        reject(new Error(`writer exited early (signal ${signal}): ${err}`));
        return;
      }
      // Only complete lines: a torn last line was never fully acknowledged.
      const lines = out.slice(0, out.lastIndexOf('\n') + 1).split('\n').filter((l) => l !== '' && l !== 'ready');
      resolve(lines);
    });
  });
}
