/**
 * The agent port's cache of verified client certificates (hub/grpc/peer-cache.ts): a reconnect
 * is not parsed again, yet a revoked certificate is refused at once, a foreign CA's is never
 * cached, and a change of the CAs the hub accepts empties it. Real hub, real certificates.
 */
import t, { type Test } from 'tap';
import tls, { type TLSSocket } from 'node:tls';
import type { AddressInfo } from 'node:net';
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { issueSimIdentities, SimAgent } from '../bench/simagent.js';
import { hubPaths } from '../hub/paths.js';
import { identifyPeer } from '../hub/grpc/agent-channel.js';
import { PeerCertCache } from '../hub/grpc/peer-cache.js';
import { startHub, waitFor } from './helpers/hub.js';

const callWith = (certPem: string) => ({ getAuthContext: () => ({ sslPeerCertificate: { raw: new X509Certificate(certPem).raw } }) });
const idsOf = (dataDir: string, n: number) => {
  const cfg = JSON.parse(readFileSync(join(dataDir, 'hub.json'), 'utf8')) as { names: string[]; trustDomain?: string };
  return issueSimIdentities({ hubDir: dataDir, names: cfg.names, trustDomain: cfg.trustDomain ?? 'trellis.local', n });
};

t.test('a cached certificate is identified without parsing; revocation, foreign CAs and CA changes still apply', async (t) => {
  await using h = await startHub();
  await using other = await startHub();
  const c = h.hub.components;
  const [a, b] = idsOf(h.dataDir, 2);
  const cache = new PeerCertCache();

  const first = identifyPeer(c, callWith(a!.certPem), { cache });
  t.same(cache.stats, { hits: 0, misses: 1, parsed: 1 }, 'first stream: parsed and verified');
  const again = identifyPeer(c, callWith(a!.certPem), { cache });
  t.same(cache.stats, { hits: 1, misses: 1, parsed: 1 }, 'reconnect: served from the cache');
  t.same(again, first, 'the same identity either way');
  t.equal(again.agentId, a!.agentId);
  t.equal(c.pki.issuerOf(again.certPem), c.pki.issuingFingerprint, 'the issuer found while identifying serves issuerOf');

  // Revocation is checked on every stream, cached or not.
  await c.agents.create({ id: a!.agentId, tenant: 'default', hostname: '', labels: {}, enrolledAt: Date.now(), tokenId: 't', spiffeId: '', certSerial: first.serial, certExpiresAt: first.notAfter, serials: [{ serial: first.serial, notAfter: first.notAfter }], revoked: false });
  await c.agents.revoke(a!.agentId, 'test');
  t.throws(() => identifyPeer(c, callWith(a!.certPem), { cache }), { code: 'TRELLIS_E_CERT_REVOKED' }, 'a revoked certificate in the cache is refused');
  t.equal(cache.stats.hits, 2, '(it was a cache hit)');

  // Another hub's CA: refused, and not cached (a second try is verified again and refused again).
  const [foreign] = idsOf(other.dataDir, 1);
  t.throws(() => identifyPeer(c, callWith(foreign!.certPem), { cache }), { code: 'TRELLIS_E_UNAUTHENTICATED' }, 'a certificate of another CA is refused');
  t.throws(() => identifyPeer(c, callWith(foreign!.certPem), { cache }), { code: 'TRELLIS_E_UNAUTHENTICATED' }, 'and again');
  t.equal(cache.stats.hits, 2, 'a refused certificate is never served from the cache');

  // The CAs the hub accepts change (rotation start, commit, rollback): everything is verified again.
  identifyPeer(c, callWith(b!.certPem), { cache });
  const hits = cache.stats.hits;
  c.pki.setRotation({ ...c.pki.rotationTrust });
  identifyPeer(c, callWith(b!.certPem), { cache });
  t.equal(cache.stats.hits, hits, 'after a trust change the certificate is verified again');
  t.equal(cache.size, 1, 'the old entries are gone');
});

t.test('the cache is bounded: least recently used first out', async (t) => {
  const cache = new PeerCertCache(2);
  const gen = {};
  const f = (id: string) => ({ agentId: id, tenant: 't', serial: id, notAfter: 1, certPem: id });
  cache.set('a', gen, f('a'));
  cache.set('b', gen, f('b'));
  t.ok(cache.get('a', gen), 'a used');
  cache.set('c', gen, f('c'));
  t.equal(cache.size, 2);
  t.notOk(cache.get('b', gen), 'b (least recently used) dropped');
  t.ok(cache.get('a', gen) && cache.get('c', gen), 'a and c kept');
  t.notOk(cache.get('a', {}), 'another trust generation: nothing cached');
});

/** A real TLS server with the hub's certificate asking for a client certificate (any CA: the check under test is identifyPeer's). */
async function tlsPair(t: Test, dataDir: string, client: { keyPem: string; certPem: string; caPem: string }): Promise<TLSSocket> {
  const p = hubPaths(dataDir);
  const server = tls.createServer({ key: readFileSync(p.hubKey), cert: readFileSync(p.hubCert), requestCert: true, rejectUnauthorized: false });
  const accepted = new Promise<TLSSocket>((r) => server.once('secureConnection', (s: TLSSocket) => r(s)));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  const c = tls.connect({ host: '127.0.0.1', port, key: client.keyPem, cert: client.certPem, ca: client.caPem, rejectUnauthorized: false }); // the server side is under test
  c.on('error', () => undefined);
  const s = await accepted;
  t.teardown(() => { c.destroy(); s.destroy(); server.close(); });
  return s;
}

t.test('over TLS: identified from the DER bytes with OpenSSL\'s fingerprint as the cache key; the same identity and checks as from DER', async (t) => {
  await using h = await startHub();
  await using other = await startHub();
  const c = h.hub.components;
  const [a] = idsOf(h.dataDir, 1);
  const s = await tlsPair(t, h.dataDir, a!);
  // What grpc-js's getAuthContext does: socket.getPeerCertificate(), no argument.
  const grpcJsCall = (sock: TLSSocket) => ({ getAuthContext: () => ({ sslPeerCertificate: sock.getPeerCertificate() }) });
  const handed = s.getPeerCertificate();
  t.same(handed.raw, new X509Certificate(a!.certPem).raw, 'getPeerCertificate() carries the DER bytes of the very certificate the client sent');
  t.equal(handed.fingerprint256, new X509Certificate(a!.certPem).fingerprint256, 'and OpenSSL\'s SHA-256 of them');
  t.ok((s.getPeerCertificate(true) as { subject?: unknown }).subject, 'getPeerCertificate(true) is Node\'s own answer');

  const cache = new PeerCertCache();
  const id = identifyPeer(c, grpcJsCall(s), { cache });
  t.same(cache.stats, { hits: 0, misses: 1, parsed: 1 }, 'the first stream: parsed and verified');
  t.same(id, identifyPeer(c, callWith(a!.certPem), {}), 'the same identity as from the DER bytes alone');
  const x = new X509Certificate(a!.certPem);
  t.equal(id.serial, x.serialNumber.toLowerCase().replace(/^0+/, ''), 'the serial Node reads');
  t.equal(id.notAfter, new Date(x.validTo).getTime(), 'the expiry Node reads');
  t.equal(id.certPem, x.toString(), 'the PEM Node writes (issuerOf and sealing read it)');
  identifyPeer(c, grpcJsCall(s), { cache });
  t.equal(cache.stats.hits, 1, 'a second stream is served from the cache');

  // Negative: a certificate of another hub's CA (TLS here lets any through) is refused on this path too, and never cached.
  const [foreign] = idsOf(other.dataDir, 1);
  const fs2 = await tlsPair(t, h.dataDir, foreign!);
  t.throws(() => identifyPeer(c, grpcJsCall(fs2), { cache }), { code: 'TRELLIS_E_UNAUTHENTICATED' }, 'another CA\'s certificate is refused');
  t.throws(() => identifyPeer(c, grpcJsCall(fs2), { cache }), { code: 'TRELLIS_E_UNAUTHENTICATED' }, 'and again (not cached)');
  // Negative: revocation still applies on every stream.
  await c.agents.create({ id: id.agentId, tenant: 'default', hostname: '', labels: {}, enrolledAt: Date.now(), tokenId: 't', spiffeId: '', certSerial: id.serial, certExpiresAt: id.notAfter, serials: [{ serial: id.serial, notAfter: id.notAfter }], revoked: false });
  await c.agents.revoke(id.agentId, 'test');
  t.throws(() => identifyPeer(c, grpcJsCall(s), { cache }), { code: 'TRELLIS_E_CERT_REVOKED' }, 'a revoked certificate is refused');
});

t.test('the issuer\'s signature is checked over the DER: a changed signature or a changed identity is refused', async (t) => {
  await using h = await startHub();
  const c = h.hub.components;
  const [a] = idsOf(h.dataDir, 1);
  const der = new X509Certificate(a!.certPem).raw;
  const withRaw = (raw: Buffer) => ({ getAuthContext: () => ({ sslPeerCertificate: { raw } }) });
  t.equal(identifyPeer(c, withRaw(der), { cache: new PeerCertCache() }).agentId, a!.agentId, 'the certificate as issued is accepted');
  // The last byte of the signature (an ECDSA s value): still well-formed DER, no longer a signature of the CA.
  const badSig = Buffer.from(der);
  badSig[badSig.length - 1] ^= 0x01;
  t.throws(() => identifyPeer(c, withRaw(badSig), { cache: new PeerCertCache() }), { code: 'TRELLIS_E_UNAUTHENTICATED' }, 'a certificate whose signature was changed is refused');
  // Another agent id in the URI SAN (same length): the CA never signed that identity.
  const uri = Buffer.from(`/agent/${a!.agentId}`);
  const at = der.indexOf(uri);
  t.ok(at > 0, '(the agent id is in the DER)');
  const forged = Buffer.from(der);
  forged[at + uri.length - 1] = forged[at + uri.length - 1] === 0x30 ? 0x31 : 0x30;
  t.throws(() => identifyPeer(c, withRaw(forged), { cache: new PeerCertCache() }), { code: 'TRELLIS_E_UNAUTHENTICATED' }, 'a certificate naming another agent than the CA signed is refused');
  t.throws(() => identifyPeer(c, withRaw(Buffer.from('not a certificate')), {}), { code: 'TRELLIS_E_UNAUTHENTICATED' }, 'bytes that are no certificate are refused');
});

t.test('hub: agents are identified from the peer certificate grpc-js takes from TLS', async (t) => {
  await using h = await startHub();
  const ids = idsOf(h.dataDir, 3);
  const sims = ids.map((identity) => new SimAgent({ target: h.agentAddr, identity }));
  t.teardown(() => Promise.all(sims.map((s) => s.close())));
  for (const s of sims) s.start();
  await waitFor(() => sims.every((s) => s.channel.state === 'ready'), 60_000, 'three agents welcomed');
  const peers = h.hub.peerCache!.stats;
  t.ok(peers.misses >= 3 && peers.parsed >= 3, `each agent identified from the DER grpc-js took from TLS, parsed and its issuer checked (${peers.parsed} parsed)`);
});
