/**
 * The snapshot file format on its own: round trip, wrong passphrase, a flipped byte anywhere
 * (header, check, chunk length, body, tag), truncation, appended bytes, reordered chunks, a
 * hostile header asking for huge scrypt memory, and a hostile payload naming a file outside the
 * data directory: each refused with TRELLIS_E_SNAPSHOT_INVALID, and restore writes nothing.
 */
import t from 'tap';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { SnapshotReader, SnapshotWriter, bufferSource, MAGIC, type KdfParams } from '../hub/snapshots/format.js';
import { PayloadWriter } from '../hub/snapshots/payload.js';
import { restoreSnapshot, allowedFile } from '../hub/snapshots/restore.js';
import { tempDir } from './helpers/hub.js';

const PASS = 'correct horse battery staple';
const KDF: KdfParams = { N: 2 ** 14, r: 8, p: 1 }; // fast for tests; the default is N=2^17
const CHUNK = 4096;

async function encrypt(plain: Buffer, o: { chunk?: number } = {}): Promise<Buffer> {
  const parts: Buffer[] = [];
  const w = await SnapshotWriter.open(async (b) => { parts.push(Buffer.from(b)); }, PASS, { kdf: KDF, chunk: o.chunk ?? CHUNK });
  // In uneven pieces, so chunk boundaries fall inside writes.
  for (let off = 0; off < plain.length; off += 1000) await w.write(plain.subarray(off, off + 1000));
  await w.finish();
  return Buffer.concat(parts);
}

async function decrypt(file: Buffer, pass = PASS): Promise<Buffer> {
  const r = await SnapshotReader.open(bufferSource(file), pass);
  const out: Buffer[] = [];
  for (let c = await r.next(); c; c = await r.next()) out.push(c);
  return Buffer.concat(out);
}

async function codeAndMessage(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  try { await p; return { code: 'OK', message: '' }; } catch (e) { return { code: (e as { code?: string }).code ?? 'ERR', message: (e as Error).message }; }
}

/** Offsets of the chunk records: [length field offset, chunk plaintext length]. */
function chunkOffsets(file: Buffer): Array<[number, number]> {
  const hlen = file.readUInt16BE(8);
  let off = 8 + 2 + hlen + 32;
  const out: Array<[number, number]> = [];
  while (off < file.length) {
    const len = file.readUInt32BE(off);
    out.push([off, len]);
    off += 4 + len + 16;
  }
  return out;
}

t.test('round trip over several chunks, final chunk short', async (t) => {
  const plain = randomBytes(CHUNK * 3 + 123);
  const file = await encrypt(plain);
  t.ok(file.subarray(0, 8).equals(MAGIC));
  t.equal(chunkOffsets(file).length, 4);
  t.ok((await decrypt(file)).equals(plain));
  t.notOk(file.includes(Buffer.from(PASS)), 'the passphrase is nowhere in the file');
});

t.test('a payload that fills its last chunk exactly gets an empty final chunk', async (t) => {
  const plain = randomBytes(CHUNK * 2);
  const file = await encrypt(plain);
  const offs = chunkOffsets(file);
  t.equal(offs.length, 3);
  t.equal(offs[2]![1], 0);
  t.ok((await decrypt(file)).equals(plain));
  // Dropping the empty final chunk is truncation, though every remaining chunk is whole.
  const cut = await codeAndMessage(decrypt(file.subarray(0, offs[2]![0])));
  t.equal(cut.code, 'TRELLIS_E_SNAPSHOT_INVALID');
  t.match(cut.message, /truncated/);
});

t.test('wrong passphrase is refused before anything is decrypted, without echoing either passphrase', async (t) => {
  const file = await encrypt(randomBytes(100));
  const r = await codeAndMessage(decrypt(file, 'not the right passphrase'));
  t.equal(r.code, 'TRELLIS_E_SNAPSHOT_INVALID');
  t.match(r.message, /wrong passphrase/);
  t.notMatch(r.message, /not the right|horse/);
});

t.test('a flipped byte anywhere, truncation, appended or reordered data: refused', async (t) => {
  const plain = randomBytes(CHUNK * 3 + 50);
  const file = await encrypt(plain);
  const offs = chunkOffsets(file);
  const hlen = file.readUInt16BE(8);
  const flip = (at: number) => { const b = Buffer.from(file); b[at]! ^= 0x01; return b; };
  const cases: Array<[string, Buffer, RegExp]> = [
    ['magic', flip(0), /not a Trellis snapshot/],
    ['header length', flip(9), /header|truncated|damaged|passphrase/],
    ['header JSON (salt)', flip(10 + hlen - 20), /passphrase|header|damaged/],
    ['header check', flip(10 + hlen + 5), /wrong passphrase/],
    ['first chunk length', flip(offs[0]![0] + 3), /chunk 0|truncated|damaged/],
    ['first chunk body', flip(offs[0]![0] + 100), /chunk 0 failed authentication/],
    ['second chunk tag', flip(offs[1]![0] + 4 + CHUNK + 3), /chunk 1 failed authentication/],
    ['last byte', flip(file.length - 1), /chunk 3 failed authentication/],
    ['truncated tail (one byte)', file.subarray(0, file.length - 1), /truncated/],
    ['truncated at a chunk boundary', file.subarray(0, offs[3]![0]), /truncated/],
    ['a byte appended', Buffer.concat([file, Buffer.from([0])]), /after its final chunk/],
    ['chunks 1 and 2 swapped', Buffer.concat([file.subarray(0, offs[1]![0]), file.subarray(offs[2]![0], offs[3]![0]), file.subarray(offs[1]![0], offs[2]![0]), file.subarray(offs[3]![0])]), /chunk 1 failed authentication/],
    ['a chunk repeated', Buffer.concat([file.subarray(0, offs[2]![0]), file.subarray(offs[1]![0], offs[2]![0]), file.subarray(offs[2]![0])]), /chunk 2 failed authentication/],
    ['empty file', Buffer.alloc(0), /empty/],
  ];
  for (const [what, bad, re] of cases) {
    const r = await codeAndMessage(decrypt(bad));
    t.equal(r.code, 'TRELLIS_E_SNAPSHOT_INVALID', what);
    t.match(r.message, re, `${what}: ${r.message}`);
  }
});

t.test('a chunk from another snapshot with the same passphrase does not fit', async (t) => {
  const a = await encrypt(randomBytes(CHUNK * 2 + 10));
  const b = await encrypt(randomBytes(CHUNK * 2 + 10));
  const oa = chunkOffsets(a), ob = chunkOffsets(b);
  const mixed = Buffer.concat([a.subarray(0, oa[1]![0]), b.subarray(ob[1]![0], ob[2]![0]), a.subarray(oa[2]![0])]);
  const r = await codeAndMessage(decrypt(mixed));
  t.equal(r.code, 'TRELLIS_E_SNAPSHOT_INVALID');
  t.match(r.message, /chunk 1 failed authentication/);
});

t.test('a header asking for huge scrypt memory or odd parameters is refused before deriving anything', async (t) => {
  const mk = (h: object) => {
    const json = Buffer.from(JSON.stringify(h));
    const len = Buffer.alloc(2);
    len.writeUInt16BE(json.length);
    return Buffer.concat([MAGIC, len, json, randomBytes(32), randomBytes(64)]);
  };
  const base = { v: 1, kdf: 'scrypt', N: 2 ** 14, r: 8, p: 1, salt: randomBytes(32).toString('base64'), cipher: 'aes-256-gcm', chunk: 4096, nonce: randomBytes(4).toString('base64') };
  const cases: Array<[string, object, RegExp]> = [
    ['N=2^30 (128 GiB)', { ...base, N: 2 ** 30 }, /more than Trellis allows/],
    ['r=64 N=2^20', { ...base, N: 2 ** 20, r: 64 }, /more than Trellis allows|bad scrypt/],
    ['N not a power of two', { ...base, N: 20000 }, /bad scrypt/],
    ['p=1000', { ...base, p: 1000 }, /bad scrypt/],
    ['a newer format', { ...base, v: 2 }, /newer Trellis/],
    ['unknown cipher', { ...base, cipher: 'rot13' }, /unknown/],
    ['huge chunk', { ...base, chunk: 2 ** 30 }, /chunk size/],
    ['short salt', { ...base, salt: 'AAAA' }, /salt/],
  ];
  for (const [what, h, re] of cases) {
    const started = Date.now();
    const r = await codeAndMessage(decrypt(mk(h)));
    t.equal(r.code, 'TRELLIS_E_SNAPSHOT_INVALID', what);
    t.match(r.message, re, `${what}: ${r.message}`);
    t.ok(Date.now() - started < 5000, `${what}: refused without deriving a key`);
  }
});

t.test('restore refuses a payload naming a file outside a hub data directory, and writes nothing', async (t) => {
  for (const name of ['../evil', '/etc/passwd', 'keys/../../x', 'agent-bundle/../hub.json', 'state.json', 'snapshots/x', 'agent-bundle/trellis.tgz']) t.notOk(allowedFile(name), name);
  for (const name of ['hub.json', 'ca-key.pem', 'keys/master-3.key']) t.ok(allowedFile(name), name);

  await using dir = await tempDir();
  const hostile = async (entries: (p: PayloadWriter) => Promise<void>) => {
    const parts: Buffer[] = [];
    const w = await SnapshotWriter.open(async (b) => { parts.push(Buffer.from(b)); }, PASS, { kdf: KDF });
    const p = new PayloadWriter(w);
    await p.entry({ kind: 'manifest', name: 'manifest.json' }, Buffer.from(JSON.stringify({ format: 1, createdAtMs: 1, createdBy: 'x', trellisVersion: '0', note: '', caFingerprint: '', collections: {}, files: [], segments: { audit: [], executions: [] }, keyVersions: [] })));
    await entries(p);
    await p.end();
    const f = join(dir.path, `hostile-${randomBytes(4).toString('hex')}.tsnap`);
    writeFileSync(f, Buffer.concat(parts));
    return f;
  };
  const target = join(dir.path, 'hub');
  const cases: Array<[string, (p: PayloadWriter) => Promise<void>, RegExp]> = [
    ['file ../escape', (p) => p.entry({ kind: 'file', name: '../escape' }, Buffer.from('x')), /not part of a hub data directory/],
    ['segment with a path', (p) => p.entry({ kind: 'segment', area: 'audit', name: '../../000000000001.jsonl' }, Buffer.from('x')), /not one/],
    ['segment of another area', (p) => p.entry({ kind: 'segment', area: 'keys' as 'audit', name: '000000000001.jsonl' }, Buffer.from('x')), /not one/],
    ['unknown collection', (p) => p.entry({ kind: 'collection', name: '__proto__' }, Buffer.from('')), /unknown store collection/],
    ['no hub files', async () => undefined, /has no hub.json/],
  ];
  for (const [what, fn, re] of cases) {
    const file = await hostile(fn);
    const r = await codeAndMessage(restoreSnapshot({ file, dataDir: target, passphrase: PASS }));
    t.equal(r.code, 'TRELLIS_E_SNAPSHOT_INVALID', what);
    t.match(r.message, re, `${what}: ${r.message}`);
    t.notOk(existsSync(target), `${what}: the target was not created`);
    t.notOk(existsSync(join(dir.path, 'escape')), `${what}: nothing escaped`);
    t.same(readdirSync(dir.path).filter((f) => f.startsWith('.')), [], `${what}: no temp directory left behind`);
  }
});
