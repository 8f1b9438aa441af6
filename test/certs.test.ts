import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { spawnSync } from 'node:child_process';
import { parseCert } from '../certs/parse.js';
import {
  KEY_TYPES,
  signedBy,
  certInfo,
  createCA,
  createCRL,
  createCSR,
  fingerprintSha256,
  generateKey,
  issueCertificate,
  keyMatchesCert,
  loadPrivateKey,
  normalizeSerial,
  parseCSR,
  sanCovers,
  splitPemBundle,
  verifyChain,
  verifyIssuedBy,
  type IssueOptions,
} from '../certs/index.js';
import { spkiDer } from '../certs/keys.js';
import { isTrellisError } from '../common/errors.js';

const DAY = 86_400_000;
const inDays = (n: number): Date => new Date(Date.now() + n * DAY);

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'trellis-certs-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
let fileNo = 0;
function file(content: string | Buffer, name = `f${fileNo++}.pem`): string {
  const p = path.join(tmp, name);
  fs.writeFileSync(p, content);
  return p;
}

function openssl(...args: string[]): { ok: boolean; out: string } {
  const r = spawnSync('openssl', args, { encoding: 'utf8' });
  return { ok: r.status === 0, out: `${r.stdout}${r.stderr}` };
}

const pub = (k: crypto.KeyObject): crypto.KeyObject => crypto.createPublicKey(k);

function leafOf(ca: { certPem: string; key: crypto.KeyObject }, extra: Partial<IssueOptions> = {}, keyType = KEY_TYPES[0]) {
  const k = generateKey(keyType);
  const certPem = issueCertificate({
    issuerCertPem: ca.certPem,
    issuerKey: ca.key,
    subjectPublicKey: k.publicKey,
    subject: { commonName: 'leaf', organization: 'Trellis' },
    usage: 'server',
    notAfter: inDays(30),
    ...extra,
  });
  return { certPem, key: k.privateKey, keyPem: k.privateKeyPem };
}

const isCsrInvalid = (err: unknown): boolean => isTrellisError(err, 'TRELLIS_E_CSR_INVALID');

t.test('every key type makes a CA and a leaf that node:crypto and openssl accept', async (t) => {
  for (const type of KEY_TYPES) {
    const ca = createCA({ commonName: `CA ${type}`, keyType: type });
    const leaf = leafOf(ca, { dnsNames: ['svc.example'] }, type);
    t.ok(new crypto.X509Certificate(ca.certPem).verify(pub(ca.key)), `${type}: CA self-signature`);
    t.ok(new crypto.X509Certificate(leaf.certPem).verify(pub(ca.key)), `${type}: leaf signature`);
    t.ok(verifyIssuedBy(leaf.certPem, ca.certPem), `${type}: verifyIssuedBy`);
    // signedBy (the agent port's check, no X509Certificate): the same answer, and a CA of the same name with another key is refused.
    const leafDer = new crypto.X509Certificate(leaf.certPem).raw;
    const issuerKey = (c: { certPem: string; key: crypto.KeyObject }) => ({ subjectRaw: parseCert(c.certPem).subjectRaw, key: pub(c.key) });
    t.ok(signedBy(leafDer, parseCert(leafDer), issuerKey(ca)), `${type}: signedBy its CA`);
    const twin = createCA({ commonName: `CA ${type}`, keyType: type });
    t.notOk(signedBy(leafDer, parseCert(leafDer), issuerKey(twin)), `${type}: not signedBy a CA of the same name with another key`);
    t.notOk(verifyIssuedBy(leaf.certPem, twin.certPem), `${type}: (verifyIssuedBy agrees)`);
    const v = openssl('verify', '-CAfile', file(ca.certPem), file(leaf.certPem));
    t.ok(v.ok, `${type}: openssl verify (${v.out.trim()})`);
    t.equal(certInfo(leaf.certPem).keyType, type);
    t.equal(certInfo(ca.certPem).isCA, true);
    t.ok(keyMatchesCert(ca.key, ca.certPem) && keyMatchesCert(leaf.key, leaf.certPem), `${type}: keys match`);
    t.notOk(keyMatchesCert(leaf.key, ca.certPem), `${type}: wrong key does not match`);
    t.equal(loadPrivateKey(ca.keyPem).asymmetricKeyType, ca.key.asymmetricKeyType);
    const text = openssl('x509', '-in', file(leaf.certPem), '-noout', '-text').out;
    const alg = type === 'ec-p256' ? 'ecdsa-with-SHA256' : type === 'ec-p384' ? 'ecdsa-with-SHA384' : 'sha256WithRSAEncryption';
    t.match(text, `Signature Algorithm: ${alg}`, `${type}: signature algorithm`);
    t.match(text, type.startsWith('rsa') ? 'Digital Signature, Key Encipherment' : /Key Usage: critical\s+Digital Signature\n/);
    // our JWK-based SPKI equals what node:crypto exports
    t.same(spkiDer(leaf.key), pub(leaf.key).export({ type: 'spki', format: 'der' }), `${type}: spkiDer`);
  }
});

t.test('CA extensions, EKU per usage, validity encoding', async (t) => {
  const ca = createCA({ commonName: 'Root' });
  const caText = openssl('x509', '-in', file(ca.certPem), '-noout', '-text').out;
  t.match(caText, /Basic Constraints: critical\s+CA:TRUE\n/);
  t.match(caText, /Key Usage: critical\s+Digital Signature, Certificate Sign, CRL Sign/);
  t.notMatch(caText, 'Extended Key Usage');
  t.same(certInfo(ca.certPem).extKeyUsage, []);
  const caSki = /Subject Key Identifier:\s+(\S+)/.exec(caText)![1];
  t.match(caText, new RegExp(`Authority Key Identifier:\\s+(keyid:)?${caSki}`), 'self-signed AKI = own SKI');

  const usages = { client: ['clientAuth'], server: ['serverAuth'], 'server-client': ['serverAuth', 'clientAuth'] } as const;
  for (const [usage, eku] of Object.entries(usages)) {
    const leaf = leafOf(ca, { usage: usage as IssueOptions['usage'] });
    const info = certInfo(leaf.certPem);
    t.same(info.extKeyUsage, eku, `${usage} EKU`);
    t.equal(info.isCA, false);
    const purpose = usage === 'client' ? 'sslclient' : 'sslserver';
    t.ok(openssl('verify', '-purpose', purpose, '-CAfile', file(ca.certPem), file(leaf.certPem)).ok, `${usage}: openssl -purpose ${purpose}`);
    const text = openssl('x509', '-in', file(leaf.certPem), '-noout', '-text').out;
    t.match(text, new RegExp(`Authority Key Identifier:\\s+(keyid:)?${caSki}`), 'leaf AKI = CA SKI');
  }
  t.notOk(
    openssl('verify', '-purpose', 'sslserver', '-CAfile', file(ca.certPem), file(leafOf(ca, { usage: 'client' }).certPem)).ok,
    'a client cert is refused for sslserver',
  );

  const notBefore = new Date(Date.UTC(2049, 11, 31, 23, 59, 59));
  const notAfter = new Date(Date.UTC(2060, 5, 1, 12, 0, 0));
  const far = leafOf(ca, { notBefore, notAfter });
  const info = certInfo(far.certPem);
  t.equal(info.notBefore.toISOString(), notBefore.toISOString(), 'UTCTime for 2049');
  t.equal(info.notAfter.toISOString(), notAfter.toISOString(), 'GeneralizedTime for 2060');
  const der = new crypto.X509Certificate(far.certPem).raw;
  t.ok(der.includes(Buffer.from('\x17\x0d491231235959Z', 'latin1')), 'notBefore is UTCTime');
  t.ok(der.includes(Buffer.from('\x18\x0f20600601120000Z', 'latin1')), 'notAfter is GeneralizedTime');
  t.match(openssl('x509', '-in', file(far.certPem), '-noout', '-enddate').out, 'Jun  1 12:00:00 2060 GMT');

  const defaults = certInfo(leafOf(ca).certPem);
  t.ok(Math.abs(defaults.notBefore.getTime() - (Date.now() - 5 * 60_000)) < 10_000, 'default notBefore = now - 5 min');
});

t.test('SANs round-trip: DNS, IPv4, IPv6, URI', async (t) => {
  const ca = createCA({ commonName: 'Root' });
  const uri = 'spiffe://td/tenant/t1/agent/a1';
  const leaf = leafOf(ca, {
    dnsNames: ['hub.example.com', '*.agents.example.com'],
    ipAddresses: ['10.1.2.3', '::1', '2001:0db8:0000:0000:0000:0000:0000:0042'],
    uris: [uri],
    usage: 'server-client',
  });
  const info = certInfo(leaf.certPem);
  t.same(info.dnsNames, ['hub.example.com', '*.agents.example.com']);
  t.same(info.ipAddresses, ['10.1.2.3', '::1', '2001:db8::42']);
  t.same(info.uris, [uri]);
  const x = new crypto.X509Certificate(leaf.certPem);
  t.ok(x.checkIP('10.1.2.3') && x.checkIP('::1') && x.checkIP('2001:db8::42'), 'node checkIP');
  t.equal(x.checkHost('a1.agents.example.com'), '*.agents.example.com', 'node checkHost via wildcard');
  const text = openssl('x509', '-in', file(leaf.certPem), '-noout', '-ext', 'subjectAltName').out;
  t.match(text, `URI:${uri}`);
  t.match(text, 'IP Address:10.1.2.3');
  t.match(text, 'IP Address:2001:DB8:0:0:0:0:0:42');

  t.same(
    sanCovers(leaf.certPem, ['hub.example.com', 'HUB.example.com.', 'x.agents.example.com', 'a.b.agents.example.com', 'agents.example.com', '10.1.2.3', '0:0::1', '10.1.2.4', uri, 'spiffe://td/other', 'other.example.com']),
    ['a.b.agents.example.com', 'agents.example.com', '10.1.2.4', 'spiffe://td/other', 'other.example.com'],
    'sanCovers reports the missing names',
  );
  t.same(sanCovers(ca.certPem, ['Root']), ['Root'], 'no CN fallback');

  const empty = leafOf(ca, { subject: {}, dnsNames: ['only-san.example'] });
  t.match(openssl('x509', '-in', file(empty.certPem), '-noout', '-text').out, /Subject Alternative Name: critical/, 'SAN critical when subject empty');

  for (const bad of [{ ipAddresses: ['1.2.3'] }, { ipAddresses: ['fe80::1%eth0'] }, { dnsNames: ['bad name'] }, { dnsNames: ['a.*.b'] }, { uris: ['no scheme'] }]) {
    t.throws(() => leafOf(ca, bad), { code: 'TRELLIS_E_INVALID_ARGUMENT' }, JSON.stringify(bad));
  }
});

t.test('root -> intermediate -> leaf chain', async (t) => {
  const root = createCA({ commonName: 'Root', keyType: 'ec-p384' });
  const ik = generateKey('ec-p256');
  const interPem = issueCertificate({
    issuerCertPem: root.certPem,
    issuerKey: root.key,
    subjectPublicKey: ik.publicKey,
    subject: { commonName: 'Intermediate', organization: 'Trellis', organizationalUnit: 'agents' },
    usage: 'ca',
    pathLength: 0,
    notAfter: inDays(365),
  });
  const inter = { certPem: interPem, key: ik.privateKey };
  const leaf = leafOf(inter, { usage: 'client', uris: ['spiffe://td/tenant/t1/agent/a1'] });

  const rootF = file(root.certPem);
  const v = openssl('verify', '-CAfile', rootF, '-untrusted', file(interPem), file(leaf.certPem));
  t.ok(v.ok, `openssl verify -untrusted (${v.out.trim()})`);
  t.notOk(openssl('verify', '-CAfile', rootF, file(leaf.certPem)).ok, 'openssl fails without the intermediate');
  t.match(openssl('x509', '-in', file(interPem), '-noout', '-text').out, /CA:TRUE, pathlen:0/);

  t.same(verifyChain(leaf.certPem, [interPem], [root.certPem]), { ok: true });
  t.ok(verifyIssuedBy(leaf.certPem, interPem) && verifyIssuedBy(interPem, root.certPem));
  t.notOk(verifyIssuedBy(leaf.certPem, root.certPem));
  t.equal(certInfo(leaf.certPem).issuer, 'O=Trellis, OU=agents, CN=Intermediate');

  const missing = verifyChain(leaf.certPem, [], [root.certPem]);
  t.equal(missing.ok, false, 'no intermediate');
  t.match(missing.ok ? '' : missing.reason, /no issuer found/);
  const other = createCA({ commonName: 'Other' });
  t.equal(verifyChain(leaf.certPem, [interPem], [other.certPem]).ok, false, 'wrong anchor');
  const late = verifyChain(leaf.certPem, [interPem], [root.certPem], inDays(60));
  t.match(late.ok ? '' : late.reason, /expired/, 'leaf expired at a later date');
  t.same(verifyChain(root.certPem, [], [root.certPem]), { ok: true }, 'anchor itself');

  // A leaf cannot act as an issuer, a wrong key is refused, and pathLen 0 forbids a sub-CA.
  t.throws(() => leafOf(leaf), { code: 'TRELLIS_E_CERT_INVALID', message: /not a CA/ });
  t.throws(() => leafOf({ certPem: interPem, key: root.key }), { code: 'TRELLIS_E_CERT_INVALID', message: /does not match/ });
  t.throws(() => leafOf(inter, { usage: 'ca' }), { code: 'TRELLIS_E_INVALID_ARGUMENT', message: /pathLen 0/ });
  t.throws(() => leafOf(inter, { pathLength: 1 }), { code: 'TRELLIS_E_INVALID_ARGUMENT' }, 'pathLength only for ca');
  t.throws(() => leafOf(inter, { notAfter: new Date(Date.now() - DAY) }), { code: 'TRELLIS_E_INVALID_ARGUMENT' });
});

t.test('CRL', async (t) => {
  for (const keyType of ['ec-p256', 'rsa-2048'] as const) {
    const ca = createCA({ commonName: `CRL CA ${keyType}`, keyType });
    const a = leafOf(ca);
    const b = leafOf(ca, { serial: Buffer.from('000abc', 'hex') });
    const revokedAt = new Date(Date.UTC(2025, 0, 2, 3, 4, 5));
    const crlPem = createCRL({
      issuerCertPem: ca.certPem,
      issuerKey: ca.key,
      revoked: [
        { serialHex: certInfo(a.certPem).serialHex, revokedAt },
        { serialHex: new crypto.X509Certificate(b.certPem).serialNumber, revokedAt }, // "0ABC" form
      ],
      crlNumber: 42n,
      nextUpdate: inDays(7),
    });
    t.match(crlPem, /^-----BEGIN X509 CRL-----\n/);
    const caF = file(ca.certPem);
    const crlF = file(crlPem);
    const v = openssl('crl', '-in', crlF, '-CAfile', caF, '-noout');
    t.ok(v.ok, `${keyType}: openssl crl verifies (${v.out.trim()})`);
    const text = openssl('crl', '-in', crlF, '-noout', '-text').out;
    t.match(text, 'Version 2');
    t.match(text, new RegExp(`Serial Number: 0?${certInfo(a.certPem).serialHex.toUpperCase()}`)); // openssl pads to whole bytes
    t.match(text, 'Serial Number: 0ABC');
    t.match(text, /CRL Number:\s+42/);
    t.match(text, 'Authority Key Identifier');
    t.match(text, 'Revocation Date: Jan  2 03:04:05 2025 GMT');
    const chk = openssl('verify', '-crl_check', '-CAfile', caF, '-CRLfile', crlF, file(a.certPem));
    t.notOk(chk.ok, 'revoked cert fails crl_check');
    t.match(chk.out, /revoked/);
    t.ok(openssl('verify', '-crl_check', '-CAfile', caF, '-CRLfile', crlF, file(leafOf(ca).certPem)).ok, 'unrevoked passes crl_check');
  }
  const ca = createCA({ commonName: 'Empty CRL' });
  const empty = createCRL({ issuerCertPem: ca.certPem, issuerKey: ca.key, revoked: [], crlNumber: 1, nextUpdate: inDays(1) });
  t.ok(openssl('crl', '-in', file(empty), '-CAfile', file(ca.certPem), '-noout').ok, 'empty CRL verifies');
  t.match(openssl('crl', '-in', file(empty), '-noout', '-text').out, 'No Revoked Certificates');
  const other = generateKey();
  t.throws(() => createCRL({ issuerCertPem: ca.certPem, issuerKey: other.privateKey, revoked: [], crlNumber: 1, nextUpdate: inDays(1) }), {
    code: 'TRELLIS_E_CERT_INVALID',
  });
  t.throws(() => createCRL({ issuerCertPem: ca.certPem, issuerKey: ca.key, revoked: [{ serialHex: 'xyz', revokedAt: new Date() }], crlNumber: 1, nextUpdate: inDays(1) }), {
    code: 'TRELLIS_E_INVALID_ARGUMENT',
  });
});

t.test('CSR create / parse', async (t) => {
  const uri = 'spiffe://td/tenant/t1/agent/a1';
  for (const keyType of ['ec-p256', 'ec-p384', 'rsa-2048'] as const) {
    const k = generateKey(keyType);
    const csr = createCSR({ privateKey: k.privateKey, subject: { commonName: 'agent-a1', organization: 'tenant t1' }, dnsNames: ['a1.local'], uris: [uri] });
    t.match(csr, /^-----BEGIN CERTIFICATE REQUEST-----\n/);
    const parsed = parseCSR(csr);
    t.same(parsed.subject, { commonName: 'agent-a1', organization: 'tenant t1' }, `${keyType}: subject`);
    t.same(parsed.requestedDnsNames, ['a1.local']);
    t.same(parsed.requestedUris, [uri]);
    t.ok(parsed.publicKey.equals(k.publicKey), `${keyType}: public key`);
    const v = openssl('req', '-in', file(csr), '-verify', '-noout', '-text');
    t.ok(v.ok && /verify OK/i.test(v.out), `${keyType}: openssl req -verify`);
    t.match(v.out, `URI:${uri}`);
    t.same(parseCSR(Buffer.from(csr)).subject.commonName, 'agent-a1', 'Buffer PEM');
  }
  const plain = parseCSR(createCSR({ privateKey: generateKey().privateKey, subject: { commonName: 'x' } }));
  t.same([plain.requestedDnsNames, plain.requestedUris], [[], []], 'no SAN attribute');

  // Interop: a CSR made by openssl parses (and its DER form too).
  const keyF = path.join(tmp, 'ossl.key');
  const csrF = path.join(tmp, 'ossl.csr');
  const made = openssl('req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', keyF, '-out', csrF,
    '-subj', '/O=Org/OU=Unit/CN=openssl agent', '-addext', 'subjectAltName=DNS:o.example,URI:spiffe://td/x');
  t.ok(made.ok, made.out);
  const ossl = parseCSR(fs.readFileSync(csrF, 'utf8'));
  t.same(ossl.subject, { organization: 'Org', organizationalUnit: 'Unit', commonName: 'openssl agent' });
  t.same([ossl.requestedDnsNames, ossl.requestedUris], [['o.example'], ['spiffe://td/x']]);
  const osslKey = loadPrivateKey(fs.readFileSync(keyF));
  t.ok(ossl.publicKey.equals(crypto.createPublicKey(osslKey)), 'openssl CSR public key');
  t.ok(keyMatchesCert(osslKey, selfSigned(ossl.publicKey, osslKey)));

  // Rejections, all TRELLIS_E_CSR_INVALID.
  const good = createCSR({ privateKey: generateKey().privateKey, subject: { commonName: 'victim' } });
  const der = Buffer.from(good.replace(/-----[^-]+-----|\s/g, ''), 'base64');
  const flipped = Buffer.from(der);
  flipped[flipped.length - 1]! ^= 0x01; // last byte is inside the signature
  const tamperedCri = Buffer.from(der);
  const at = tamperedCri.indexOf(Buffer.from('victim'));
  tamperedCri[at] = 'V'.charCodeAt(0);
  const pem = (d: Buffer) => `-----BEGIN CERTIFICATE REQUEST-----\n${d.toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
  const cases: [string, string | Buffer, RegExp][] = [
    ['flipped signature byte', pem(flipped), /signature does not verify/],
    ['altered subject', pem(tamperedCri), /signature does not verify/],
    ['garbage bytes', crypto.randomBytes(300), /invalid certificate signing request/],
    ['garbage PEM', pem(crypto.randomBytes(300)), /invalid certificate signing request/],
    ['empty string', '', /empty/],
    ['1 MB blob', Buffer.alloc(1024 * 1024, 0x41), /too large/],
    ['not PEM text', 'hello', /PEM/],
    ['a certificate', createCA({ commonName: 'x' }).certPem, /CERTIFICATE REQUEST/],
    ['bad base64', '-----BEGIN CERTIFICATE REQUEST-----\n@@@\n-----END CERTIFICATE REQUEST-----', /base64/],
    ['trailing bytes', pem(Buffer.concat([der, Buffer.from([0])])), /trailing/],
    ['truncated', pem(der.subarray(0, der.length - 5)), /invalid certificate signing request/],
  ];
  for (const [what, input, msg] of cases) {
    t.throws(() => parseCSR(input), { code: 'TRELLIS_E_CSR_INVALID', message: msg }, what);
  }
  t.throws(() => parseCSR(good, { maxBytes: 100 }), { code: 'TRELLIS_E_CSR_INVALID', message: /too large/ }, 'maxBytes option');
  let caught: unknown;
  try {
    parseCSR(pem(flipped));
  } catch (err) {
    caught = err;
  }
  t.ok(isCsrInvalid(caught), 'isTrellisError(err, TRELLIS_E_CSR_INVALID)');
});

/** A throwaway self-signed leaf for a key (used to cross-check keys parsed from CSRs). */
function selfSigned(publicKey: crypto.KeyObject, privateKey: crypto.KeyObject): string {
  return issueCertificate({ issuerCertPem: null, issuerKey: privateKey, subjectPublicKey: publicKey, subject: { commonName: 'self' }, usage: 'client', notAfter: inDays(1) });
}

t.test('TLS handshake with issued certificates', async (t) => {
  const ca = createCA({ commonName: 'TLS Root' });
  const server = leafOf(ca, { dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], usage: 'server', serial: Buffer.from('00ab00', 'hex') });
  const client = leafOf(ca, { usage: 'client', uris: ['spiffe://td/tenant/t1/agent/a1'] });
  const other = createCA({ commonName: 'Other Root' });

  const srv = tls.createServer({ key: server.keyPem, cert: server.certPem, ca: ca.certPem, requestCert: true, rejectUnauthorized: false }, (s) => {
    const peer = s.getPeerCertificate();
    s.end(s.authorized ? `hello ${normalizeSerial(peer.serialNumber)}` : 'anonymous');
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  t.teardown(() => srv.close());
  const port = (srv.address() as AddressInfo).port;

  const connect = (opts: tls.ConnectionOptions) =>
    new Promise<{ sock: tls.TLSSocket; data: string }>((resolve, reject) => {
      const sock = tls.connect({ host: '127.0.0.1', port, ...opts }, () => {
        let data = '';
        sock.on('data', (d) => (data += d)).on('end', () => resolve({ sock, data }));
      });
      sock.on('error', reject);
    });

  const byIp = await connect({ ca: ca.certPem, key: client.keyPem, cert: client.certPem });
  t.ok(byIp.sock.authorized, 'client trusts the server cert for 127.0.0.1');
  const peerSerial = byIp.sock.getPeerCertificate().serialNumber;
  t.equal(normalizeSerial(peerSerial), certInfo(server.certPem).serialHex, `peer serial ${peerSerial} normalises to certInfo's`);
  t.equal(certInfo(server.certPem).serialHex, 'ab00');
  t.equal(byIp.data, `hello ${certInfo(client.certPem).serialHex}`, 'server authenticated the client cert (mTLS)');

  const byName = await connect({ ca: ca.certPem, servername: 'localhost' });
  t.ok(byName.sock.authorized, 'name localhost verifies');
  t.equal(byName.data, 'anonymous');

  // The server also sends its CA (it is in its `ca` option), so OpenSSL may report either code.
  await t.rejects(connect({ ca: other.certPem }), { code: /^(UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED_CERT_IN_CHAIN)$/ }, 'client trusting another CA fails');
  await t.rejects(connect({ ca: ca.certPem, servername: 'evil.example' }), { code: 'ERR_TLS_CERT_ALTNAME_INVALID' }, 'wrong name fails');
});

t.test('serials, fingerprints, bundles, keys', async (t) => {
  t.equal(normalizeSerial('00AB:CD'), 'abcd');
  t.equal(normalizeSerial('0x0F'), 'f');
  t.equal(normalizeSerial('000'), '0');
  t.throws(() => normalizeSerial('zz'), { code: 'TRELLIS_E_INVALID_ARGUMENT' });

  const ca = createCA({ commonName: 'Bundle', validityDays: 10, now: new Date(Date.UTC(2030, 0, 1)) });
  t.equal(certInfo(ca.certPem).notAfter.toISOString(), '2030-01-11T00:00:00.000Z', 'validityDays and now');
  for (let i = 0; i < 50; i++) {
    // default serial: 16 bytes, high bit clear, nonzero first byte
    const s = certInfo(leafOf(ca, { notAfter: new Date(Date.UTC(2030, 0, 5)) }).certPem).serialHex;
    const raw = Buffer.from(s.padStart(32, '0'), 'hex');
    if (raw.length !== 16 || raw[0]! & 0x80 || raw[0] === 0) t.fail(`bad default serial ${s}`);
  }
  const x = new crypto.X509Certificate(ca.certPem);
  t.equal(fingerprintSha256(ca.certPem), x.fingerprint256.replace(/:/g, '').toLowerCase());
  t.equal(fingerprintSha256(x.raw), fingerprintSha256(ca.certPem), 'DER input');
  t.equal(certInfo(ca.certPem).fingerprint, fingerprintSha256(ca.certPem));

  const leaf = leafOf(ca, { notAfter: new Date(Date.UTC(2030, 0, 5)) });
  const messy = `junk\r\n${leaf.certPem.replace(/\n/g, '\r\n')}${leaf.keyPem}${ca.certPem.replace(/\n(?!-)/g, '')}`;
  const parts = splitPemBundle(messy);
  t.same(parts, [leaf.certPem, ca.certPem], 'bundle split and normalised');
  t.same(splitPemBundle('nothing here'), []);

  t.throws(() => loadPrivateKey('not a key'), { code: 'TRELLIS_E_CERT_INVALID', message: /cannot load private key/ });
  t.throws(() => loadPrivateKey('-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n'), { code: 'TRELLIS_E_CERT_INVALID' });
  const sec1 = generateKey('ec-p384').privateKey.export({ type: 'sec1', format: 'pem' });
  t.equal(loadPrivateKey(sec1).asymmetricKeyDetails?.namedCurve, 'secp384r1', 'SEC1 PEM');
  const k = generateKey('rsa-2048');
  t.ok(loadPrivateKey(k.privateKey.export({ type: 'pkcs1', format: 'der' })).equals(k.privateKey), 'PKCS#1 DER');
  t.throws(() => generateKey('dsa' as never), { code: 'TRELLIS_E_INVALID_ARGUMENT' });
  t.throws(() => certInfo('garbage'), { code: 'TRELLIS_E_CERT_INVALID' });
  t.throws(() => selfSigned(generateKey().publicKey, k.privateKey), { code: 'TRELLIS_E_INVALID_ARGUMENT', message: /self-signed/ });
});

t.test('ECDSA P-256 issuing speed (informational, not asserted)', async (t) => {
  const ca = createCA({ commonName: 'Speed' });
  const keys = Array.from({ length: 50 }, () => generateKey().publicKey);
  const started = process.hrtime.bigint();
  const n = 500;
  const issued: string[] = [];
  for (let i = 0; i < n; i++) {
    issued.push(issueCertificate({ issuerCertPem: ca.certPem, issuerKey: ca.key, subjectPublicKey: keys[i % keys.length]!, subject: { commonName: `a${i}` }, usage: 'client', notAfter: inDays(30) }));
  }
  const secs = Number(process.hrtime.bigint() - started) / 1e9;
  t.comment(`issued ${n} P-256 certificates in ${secs.toFixed(2)} s (~${Math.round(n / secs)}/s)`);
  t.equal(new Set(issued).size, n, `${n} distinct certificates issued`);
  t.match(certInfo(issued[n - 1]!).subject, new RegExp(`CN=a${n - 1}\\b`), 'the last one names its subject');
});
