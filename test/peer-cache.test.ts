/**
 * The agent port's cache of verified client certificates (hub/grpc/peer-cache.ts): a reconnect
 * is not parsed again, yet a revoked certificate is refused at once, a foreign CA's is never
 * cached, and a change of the CAs the hub accepts empties it. Real hub, real certificates.
 */
import t from 'tap';
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { issueSimIdentities } from '../bench/simagent.js';
import { identifyPeer } from '../hub/grpc/agent-channel.js';
import { PeerCertCache } from '../hub/grpc/peer-cache.js';
import { startHub } from './helpers/hub.js';

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
  t.same(cache.stats, { hits: 0, misses: 1 }, 'first stream: parsed and verified');
  const again = identifyPeer(c, callWith(a!.certPem), { cache });
  t.same(cache.stats, { hits: 1, misses: 1 }, 'reconnect: served from the cache');
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
