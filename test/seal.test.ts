import t, { type Test } from 'tap';
import crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createCA, generateKey, issueCertificate, openSealed, sealAad, sealFor, SEAL_MAX_PLAINTEXT_BYTES, type KeyType } from '../certs/index.js';
import { isTrellisError } from '../common/errors.js';
import { SecretMasker, openSecretsForAction, runWithSecrets } from '../agent/secrets.js';
import type { RunResult } from '../agent/runner.js';

const ca = createCA({ commonName: 'seal test CA' });

function agent(keyType: KeyType, id: string): { certPem: string; key: crypto.KeyObject } {
  const k = generateKey(keyType);
  const certPem = issueCertificate({
    issuerCertPem: ca.certPem, issuerKey: ca.key, subjectPublicKey: k.publicKey, subject: { commonName: id },
    uris: [`spiffe://trellis.local/tenant/default/agent/${id}`], usage: 'client', notAfter: new Date(Date.now() + 86_400_000),
  });
  return { certPem, key: k.privateKey };
}

const invalid = (t: Test, fn: () => unknown, msg: RegExp, what: string): void => {
  try {
    fn();
    t.fail(`${what}: expected an error`);
  } catch (err) {
    t.ok(isTrellisError(err, 'TRELLIS_E_INVALID_ARGUMENT'), `${what}: TRELLIS_E_INVALID_ARGUMENT (${(err as Error).message})`);
    t.match((err as Error).message, msg, `${what}: message`);
  }
};

const A = sealAad('agent-a', 'exec', '01HEXEC1');
const agents = {
  'ec-p256': [agent('ec-p256', 'a256'), agent('ec-p256', 'b256')],
  'ec-p384': [agent('ec-p384', 'a384'), agent('ec-p384', 'b384')],
  'rsa-3072': [agent('rsa-3072', 'arsa'), agent('rsa-3072', 'brsa')],
} as const;
const ALG = { 'ec-p256': 'ecdh-p256', 'ec-p384': 'ecdh-p384', 'rsa-3072': 'rsa-oaep-256' } as const;

t.test('aad format', async (t) => {
  t.equal(sealAad('a1', 'exec', 'e1'), 'agent:a1|exec:e1');
  t.equal(sealAad('a1', 'rule', 'r1'), 'agent:a1|rule:r1');
  invalid(t, () => sealAad('a|b', 'exec', 'e'), /without '\|'/, 'pipe in id');
  invalid(t, () => sealAad('a', 'exec', ''), /non-empty/, 'empty id');
});

for (const [type, [a, b]] of Object.entries(agents)) {
  t.test(`${type}: seal and open`, async (t) => {
    const secret = Buffer.from('hunter2-\u00e9-' + crypto.randomBytes(8).toString('hex'));
    const s1 = sealFor(a.certPem, secret, A);
    const s2 = sealFor(a.certPem, secret, A);
    t.match(s1, new RegExp(`^s1\\.${ALG[type as keyof typeof ALG]}\\.[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]{16}\\.[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]{22}$`), 'format');
    t.not(s1, s2, 'each seal differs');
    t.not(s1.split('.')[2], s2.split('.')[2], 'fresh ephemeral key / wrapped key');
    t.not(s1.split('.')[3], s2.split('.')[3], 'fresh iv');
    t.same(openSealed(s1, a.key, A), secret);
    t.same(openSealed(s2, a.key, A), secret);
    t.same(openSealed(sealFor(a.certPem, Buffer.alloc(0), A), a.key, A), Buffer.alloc(0), 'empty value');
    const big = crypto.randomBytes(SEAL_MAX_PLAINTEXT_BYTES);
    t.same(openSealed(sealFor(a.certPem, big, A), a.key, A), big, '1 MiB value');

    t.same(independentOpen(s1, a.key, A), secret, 'the format opens with an independent implementation of the spec');
    invalid(t, () => openSealed(s1, b.key, A), /another key/, 'other agent key');
    invalid(t, () => openSealed(s1, a.key, sealAad('agent-a', 'exec', '01HEXEC2')), /authentication failed/, 'other execution id');
    invalid(t, () => openSealed(s1, a.key, sealAad('agent-a', 'rule', '01HEXEC1')), /authentication failed/, 'rule vs exec');

    const f = s1.split('.');
    const flip = (i: number): string => {
      const bytes = Buffer.from(f[i]!, 'base64url');
      bytes[Math.floor(bytes.length / 2)]! ^= 0x01;
      return [...f.slice(0, i), bytes.toString('base64url'), ...f.slice(i + 1)].join('.');
    };
    invalid(t, () => openSealed(flip(2), a.key, A), /ephemeral key|another key|tampered/, 'tampered ephemeral/wrapped key');
    invalid(t, () => openSealed(flip(3), a.key, A), /tampered/, 'tampered iv');
    invalid(t, () => openSealed(flip(4), a.key, A), /tampered/, 'tampered ciphertext');
    invalid(t, () => openSealed(flip(5), a.key, A), /tampered/, 'tampered tag');
    // the last character of the tag carries 4 unused bits: non-canonical forms are refused.
    const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    const alt = B64[B64.indexOf(f[5]!.at(-1)!) + 1]!; // sets an unused low bit: same bytes
    t.same(Buffer.from(f[5]!.slice(0, -1) + alt, 'base64url'), Buffer.from(f[5]!, 'base64url'), 'a non-canonical tag decodes to the same bytes');
    invalid(t, () => openSealed([...f.slice(0, 5), f[5]!.slice(0, -1) + alt].join('.'), a.key, A), /base64url/, 'non-canonical tag');
    invalid(t, () => openSealed([...f.slice(0, 5), f[5]!.slice(0, -2)].join('.'), a.key, A), /tag/, 'truncated tag');
    invalid(t, () => openSealed([...f.slice(0, 4), f[4]!.slice(0, -4), f[5]].join('.'), a.key, A), /tampered/, 'truncated ciphertext');
  });
}

/** Opens s1 values straight from the format description in certs/seal.ts (hkdfSync, diffieHellman). */
function independentOpen(sealed: string, key: crypto.KeyObject, aad: string): Buffer {
  const [v, alg, f2, iv, ct, tag] = sealed.split('.').map((x, i) => (i < 2 ? x : Buffer.from(x, 'base64url'))) as [string, string, Buffer, Buffer, Buffer, Buffer];
  if (v !== 's1') throw new Error('version');
  let k: Buffer;
  if (alg === 'rsa-oaep-256') {
    k = crypto.privateDecrypt({ key, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, f2);
  } else {
    const prefix = alg === 'ecdh-p256' ? '3059301306072a8648ce3d020106082a8648ce3d030107034200' : '3076301006072a8648ce3d020106052b81040022036200';
    const epk = crypto.createPublicKey({ key: Buffer.concat([Buffer.from(prefix, 'hex'), f2]), format: 'der', type: 'spki' });
    const shared = crypto.diffieHellman({ privateKey: key, publicKey: epk });
    k = Buffer.from(crypto.hkdfSync('sha256', shared, f2, Buffer.from('trellis-seal-v1|' + aad), 32));
  }
  const d = crypto.createDecipheriv('aes-256-gcm', k, iv);
  d.setAAD(Buffer.from(aad));
  d.setAuthTag(tag);
  return Buffer.concat([d.update(ct), d.final()]);
}

t.test('cross-algorithm and malformed input', async (t) => {
  const [p256] = agents['ec-p256'];
  const [p384] = agents['ec-p384'];
  const [rsa] = agents['rsa-3072'];
  const s = sealFor(p256.certPem, Buffer.from('x'), A);
  invalid(t, () => openSealed(s, p384.key, A), /sealed with ecdh-p256.*ecdh-p384/, 'P-256 blob, P-384 key');
  invalid(t, () => openSealed(s, rsa.key, A), /another key/, 'EC blob, RSA key');
  invalid(t, () => openSealed(sealFor(rsa.certPem, Buffer.from('x'), A), p256.key, A), /another key/, 'RSA blob, EC key');
  // a point not on the curve
  const f = s.split('.');
  const offCurve = Buffer.alloc(65, 7);
  offCurve[0] = 4;
  invalid(t, () => openSealed([f[0], f[1], offCurve.toString('base64url'), ...f.slice(3)].join('.'), p256.key, A), /not a valid point/, 'point off the curve');
  for (const [what, garbage] of [
    ['empty', ''], ['text', 'hello'], ['other version', 's2.ecdh-p256.a.b.c.d'], ['unknown alg', 's1.xyz.a.b.c.d'], ['inherited name as alg', 's1.constructor.a.b.c.d'],
    ['too few fields', 's1.ecdh-p256.AAAA'], ['too many fields', `${s}.AAAA`], ['bad chars', s.replace(/\.[^.]+$/, '.+/+/+/+/+/+/+/+/+/+/+/')],
  ] as const) {
    invalid(t, () => openSealed(garbage, p256.key, A), /cannot open sealed value/, `garbage: ${what}`);
  }
  invalid(t, () => openSealed(42 as unknown as string, p256.key, A), /must be a string/, 'not a string');
  invalid(t, () => openSealed(s, p256.certPem as unknown as crypto.KeyObject, A), /private key is required/, 'not a key');
  invalid(t, () => openSealed(s, crypto.createPublicKey(p256.certPem), A), /private key is required/, 'public key');
  invalid(t, () => openSealed(s, p256.key, ''), /aad/, 'empty aad');
  invalid(t, () => openSealed('s1.ecdh-p256.' + 'A'.repeat(2 * 1024 * 1024), p256.key, A), /size limit/, 'oversized blob');
  invalid(t, () => openSealed(`s1.ecdh-p256.${f[2]}.${f[3]}.${'A'.repeat(1_400_000)}.${f[5]}`, p256.key, A), /size limit|base64url/, 'oversized ciphertext');
  invalid(t, () => sealFor(p256.certPem, Buffer.alloc(SEAL_MAX_PLAINTEXT_BYTES + 1), A), /over the 1048576-byte limit/, 'oversized plaintext');
  invalid(t, () => sealFor('not a cert', Buffer.from('x'), A), /does not parse/, 'bad recipient cert');
  invalid(t, () => sealFor(p256.certPem, 'x' as unknown as Buffer, A), /Buffer/, 'plaintext not a Buffer');
  invalid(t, () => sealFor(p256.certPem, Buffer.from('x'), ''), /aad/, 'empty aad (seal)');
});

// ---- masking ------------------------------------------------------------------------------------
/** Reference: mask a whole string by merging all occurrence intervals. */
function reference(values: string[], text: string): string {
  const pats = new Set<string>();
  for (const v of values) {
    const b64 = Buffer.from(v).toString('base64');
    for (const p of [v, b64, b64.replace(/=+$/, ''), Buffer.from(v).toString('base64url')]) pats.add(p);
  }
  const hits: Array<[number, number]> = [];
  for (const p of pats) for (let i = text.indexOf(p); i !== -1; i = text.indexOf(p, i + 1)) hits.push([i, i + p.length]);
  hits.sort((a, b) => a[0] - b[0]);
  let out = '';
  let pos = 0;
  let end = -1;
  for (const [s, e] of hits) {
    if (s <= end) { end = Math.max(end, e); continue; }
    if (end >= 0) { out += '****'; pos = end; }
    out += text.slice(pos, s);
    end = e;
  }
  if (end >= 0) { out += '****'; pos = end; }
  return out + text.slice(pos);
}

function streamed(values: string[], chunks: string[]): string {
  const m = new SecretMasker(values);
  const parts = chunks.map((c) => m.mask(Buffer.from(c)));
  parts.push(m.flush());
  return Buffer.concat(parts).toString();
}

t.test('SecretMasker', async (t) => {
  const pw = 's3cr3t-pa55';
  t.equal(streamed([pw], [`password=${pw}\n`]), 'password=****\n', 'inside a chunk');
  t.equal(streamed([pw], ['password=s3cr', '3t-pa55 done\n']), 'password=**** done\n', 'across a chunk boundary');
  t.equal(streamed([pw], ['password=s', '3', 'c', 'r3t-p', 'a55', '\n']), 'password=****\n', 'across many chunks');
  t.equal(streamed([pw, 'tok-xyz'], [`a ${pw} b tok-xyz c ${pw}\n`]), 'a **** b **** c ****\n', 'several values');
  t.equal(streamed(['abcdef', 'defghi'], ['xx abcdefghi yy']), 'xx **** yy', 'overlapping values');
  t.equal(streamed(['abcdef', 'defghi'], ['xx abcdef', 'ghi yy']), 'xx **** yy', 'overlapping values across a boundary');
  t.equal(streamed(['abc', 'abcdef'], ['1 abc 2 abcdef 3']), '1 **** 2 **** 3', 'one value a prefix of another');
  t.equal(streamed(['aa'], ['aaaaa']), '****', 'self-overlapping');
  const b64 = Buffer.from(pw).toString('base64');
  t.equal(streamed([pw], [`Authorization: Basic ${b64}\n`]), 'Authorization: Basic ****\n', 'base64 form');
  t.equal(streamed([pw], [`x=${b64.slice(0, 5)}`, `${b64.slice(5)}.`]), 'x=****.', 'base64 form across a boundary');
  const plain = 'nothing secret here\nline 2 s3cr3t-pa5 (almost)\n';
  t.equal(streamed([pw], [plain.slice(0, 7), plain.slice(7)]), plain, 'other output untouched');
  t.equal(streamed([], ['abc']), 'abc', 'no values');
  const m = new SecretMasker(['a-long-secret-value']);
  t.equal(m.mask(Buffer.from('hi')).length, 0, 'short output is held back until flush');
  t.equal(m.flush().toString(), 'hi');
  const bin = Buffer.from([0, 255, 1, 2, 3]);
  const mb = new SecretMasker(['xyz']);
  t.same(Buffer.concat([mb.mask(bin), mb.flush()]), bin, 'binary output passes through');
  mb.clear();
  t.equal(Buffer.concat([mb.mask(Buffer.from('xyz')), mb.flush()]).toString(), 'xyz', 'cleared masker holds no values');

  // Every two-way and a sample of three-way splits of a busy text agree with the reference.
  const values = ['pa55w0rd', 'w0rd-2', 'tok', 'ZZZ'];
  const text = `tok pa55w0rd-2 xx pa55w0rd ${Buffer.from('tok').toString('base64')} ZZZZ tokpa55w0rd ${Buffer.from('pa55w0rd').toString('base64')} end`;
  const want = reference(values, text);
  t.equal(streamed(values, [text]), want, 'whole text matches the reference');
  let bad = 0;
  for (let i = 0; i <= text.length; i++) {
    if (streamed(values, [text.slice(0, i), text.slice(i)]) !== want) bad++;
    for (let j = i; j <= text.length; j += 3) if (streamed(values, [text.slice(0, i), text.slice(i, j), text.slice(j)]) !== want) bad++;
  }
  t.equal(bad, 0, 'every split matches the reference');
  let r = 0x1234;
  const rnd = (n: number) => { r = (r * 1103515245 + 12345) & 0x7fffffff; return r % n; };
  for (let k = 0; k < 300 && bad === 0; k++) {
    const alpha = 'ab';
    const vals = [0, 1, 2].map(() => Array.from({ length: 1 + rnd(4) }, () => alpha[rnd(2)]).join('') + 'c');
    const txt = Array.from({ length: 40 }, () => 'abc'[rnd(3)]).join('');
    const chunks: string[] = [];
    for (let p = 0; p < txt.length;) { const n = 1 + rnd(5); chunks.push(txt.slice(p, p + n)); p += n; }
    if (streamed(vals, chunks) !== reference(vals, txt)) { bad++; t.fail(`random case ${JSON.stringify({ vals, chunks })}`); }
  }
  t.equal(bad, 0, 'random streams match the reference');
});

t.test('openSecretsForAction', async (t) => {
  const [a, b] = agents['ec-p256'];
  const sealed = { DB_PASS: sealFor(a.certPem, Buffer.from('pw-1'), A), API_TOKEN: sealFor(a.certPem, Buffer.from('tok-2'), A) };
  t.same(openSecretsForAction(sealed, a.key, A), { DB_PASS: 'pw-1', API_TOKEN: 'tok-2' });
  invalid(t, () => openSecretsForAction(sealed, b.key, A), /secret env DB_PASS: .*another key/, 'other key');
  invalid(t, () => openSecretsForAction({ 'BAD NAME': sealed.DB_PASS }, a.key, A), /not a valid variable name/, 'bad env name');
  t.same(openSecretsForAction({}, a.key, A), {});
});

t.test('runWithSecrets: env only, masked output', async (t) => {
  const secret = `pw-${crypto.randomBytes(6).toString('hex')}`;
  const out: Record<'STDOUT' | 'STDERR', Buffer[]> = { STDOUT: [], STDERR: [] };
  let cmdline = '';
  let environ = '';
  const req = {
    executionId: 'e1', argv: ['sh', '-c', `echo $DB_PASS; echo "$DB_PASS" >&2; echo "pid $$"; echo ${'-'.repeat(64)}; sleep 1; echo "tail $DB_PASS"`],
    timeoutMs: 10_000, env: { OTHER: 'visible' }, cwd: '', sealedEnv: {},
    runner: '', runAs: '', script: Buffer.alloc(0), scriptName: '', http: null, sealedStdin: '', action: '',
  };
  const result = await new Promise<RunResult>((resolve) => {
    runWithSecrets(req, { DB_PASS: secret }, {
      output(stream, data) {
        out[stream].push(data);
        const m = /pid (\d+)\n/.exec(Buffer.concat(out.STDOUT).toString());
        if (m && !cmdline) {
          cmdline = readFileSync(`/proc/${m[1]}/cmdline`).toString();
          environ = readFileSync(`/proc/${m[1]}/environ`).toString();
        }
      },
      done: resolve,
    });
  });
  t.equal(result.status, 'succeeded');
  t.ok(cmdline.includes('sleep 1'), 'read the running child\'s cmdline');
  t.notOk(cmdline.includes(secret), 'argv does not hold the secret');
  t.ok(environ.split('\0').includes(`DB_PASS=${secret}`), 'the secret reached the child via env');
  const stdout = Buffer.concat(out.STDOUT).toString();
  const stderr = Buffer.concat(out.STDERR).toString();
  t.notOk(stdout.includes(secret) || stderr.includes(secret), 'output never holds the secret');
  t.match(stdout, /^\*\*\*\*\npid \d+\n-{64}\ntail \*\*\*\*\n$/, 'stdout masked');
  t.equal(stderr, '****\n', 'stderr masked');
  t.throws(() => runWithSecrets({ ...req, argv: ['echo', secret] }, { DB_PASS: secret }, { output() {}, done() {} }), /environment only/, 'secret in argv refused');
});
