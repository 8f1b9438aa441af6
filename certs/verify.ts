/** Key/cert matching, issuance checks, chain walking and SAN coverage (all via node:crypto X509Certificate). */
import crypto from 'node:crypto';
import { normalizeIp } from './names.js';
import { spkiDer, sigAlgByOid } from './keys.js';
import { basicConstraints, decodeExt, keyUsage, parseCert, signedParts, subjectAltNames, x509Of, type ParsedCert } from './parse.js';

/** True when key (private or public) is the key pair of the certificate's public key. */
export function keyMatchesCert(key: crypto.KeyObject, certPem: string): boolean {
  const x = x509Of(certPem);
  try {
    return spkiDer(key).equals(spkiDer(x.publicKey));
  } catch {
    return false;
  }
}

/** cert names issuerPem as its issuer and its signature verifies with the issuer's key. */
export function verifyIssuedBy(certPem: string, issuerPem: string): boolean {
  const cert = x509Of(certPem);
  const issuer = x509Of(issuerPem);
  try {
    return cert.checkIssued(issuer) && cert.verify(issuer.publicKey);
  } catch {
    return false;
  }
}

/** An issuer as signedBy() needs it: its subject Name as encoded and its public key. */
export interface IssuerKey { subjectRaw: Buffer; key: crypto.KeyObject }

/**
 * The certificate (DER, parsed) names `issuer` as its issuer (byte for byte) and its signature
 * verifies with the issuer's key, by an algorithm of that key's kind. No X509Certificate is built
 * (verifyIssuedBy's way costs several times more): the agent port checks every new connection's
 * certificate with this. Anything malformed or unsupported is false (callers may fall back to
 * verifyIssuedBy, which knows more encodings).
 */
export function signedBy(der: Buffer, cert: Pick<ParsedCert, 'issuerRaw'>, issuer: IssuerKey): boolean {
  try {
    if (!cert.issuerRaw.equals(issuer.subjectRaw)) return false;
    const parts = signedParts(der);
    const alg = sigAlgByOid(parts.sigAlgOid);
    if (!alg || (alg.kind === 'ec') !== (issuer.key.asymmetricKeyType === 'ec')) return false;
    return crypto.verify(alg.hash, parts.tbs, issuer.key, parts.signature);
  } catch {
    return false;
  }
}

export type ChainResult = { ok: true } | { ok: false; reason: string };

const MAX_DEPTH = 8;

interface Link {
  x: crypto.X509Certificate;
  label: string;
}

function describe(x: crypto.X509Certificate): string {
  return x.subject.split('\n').join(', ') || '(empty subject)';
}

/** Problems with x as an issuer of `below` non-self-issued CA certificates under it, or null. */
function issuerProblem(l: Link, below: number, at: Date): string | null {
  const c = parseCert(l.x.raw);
  const { bc, ku } = decodeExt(() => ({ bc: basicConstraints(c), ku: keyUsage(c) }));
  if (!bc?.ca) return `${l.label} ${describe(l.x)} is not a CA`;
  if (ku && !ku.includes('keyCertSign')) return `${l.label} ${describe(l.x)} keyUsage lacks keyCertSign`;
  if (bc.pathLen !== undefined && below > bc.pathLen) {
    return `${l.label} ${describe(l.x)} pathLen ${bc.pathLen} is exceeded`;
  }
  return validityProblem(l, at);
}

function validityProblem(l: Link, at: Date): string | null {
  const c = parseCert(l.x.raw);
  if (at < c.notBefore) return `${l.label} ${describe(l.x)} is not valid before ${c.notBefore.toISOString()}`;
  if (at > c.notAfter) return `${l.label} ${describe(l.x)} expired at ${c.notAfter.toISOString()}`;
  return null;
}

const issues = (child: crypto.X509Certificate, parent: crypto.X509Certificate): boolean => {
  try {
    return child.checkIssued(parent) && child.verify(parent.publicKey);
  } catch {
    return false;
  }
};

/**
 * Walks leaf -> intermediates -> one of anchors with X509Certificate: issuer name and signature
 * of every link, validity at `at` (default now) of every certificate including the anchor, and
 * CA flag / keyCertSign / pathLen on every issuer. For init-time sanity checks; TLS does its own.
 */
export function verifyChain(leafPem: string, intermediates: string[], anchors: string[], at: Date = new Date()): ChainResult {
  let leaf: Link;
  let pool: Link[];
  let roots: Link[];
  try {
    leaf = { x: x509Of(leafPem), label: 'leaf' };
    pool = intermediates.map((p) => ({ x: x509Of(p), label: 'intermediate' }));
    roots = anchors.map((p) => ({ x: x509Of(p), label: 'anchor' }));
  } catch (err) {
    return { ok: false, reason: err instanceof Error ? err.message : String(err) };
  }
  if (roots.length === 0) return { ok: false, reason: 'no trust anchors given' };
  const leafBad = validityProblem(leaf, at);
  if (leafBad) return { ok: false, reason: leafBad };
  if (roots.some((r) => r.x.raw.equals(leaf.x.raw))) return { ok: true };

  const used = new Set<Link>();
  let current = leaf;
  let caBelow = 0; // intermediate CA certificates between the current issuer and the leaf
  for (let depth = 0; depth <= MAX_DEPTH; depth++) {
    const root = roots.find((r) => issues(current.x, r.x));
    if (root) {
      const bad = issuerProblem(root, caBelow, at);
      return bad ? { ok: false, reason: bad } : { ok: true };
    }
    const next = pool.find((p) => !used.has(p) && issues(current.x, p.x));
    if (!next) {
      return { ok: false, reason: `no issuer found for ${current.label} ${describe(current.x)} (issuer ${describeIssuer(current.x)})` };
    }
    const bad = issuerProblem(next, caBelow, at);
    if (bad) return { ok: false, reason: bad };
    used.add(next);
    current = next;
    caBelow++;
  }
  return { ok: false, reason: `chain longer than ${MAX_DEPTH} certificates` };
}

function describeIssuer(x: crypto.X509Certificate): string {
  return x.issuer.split('\n').join(', ');
}

function dnsMatches(pattern: string, name: string): boolean {
  const p = pattern.toLowerCase().replace(/\.$/, '');
  const n = name.toLowerCase().replace(/\.$/, '');
  if (p === n) return true;
  if (!p.startsWith('*.')) return false;
  const dot = n.indexOf('.');
  return dot > 0 && n.slice(dot + 1) === p.slice(2) && p.slice(2).includes('.');
}

/**
 * The names the certificate does NOT cover. IP literals match iPAddress SANs by normalised form;
 * names with a scheme (e.g. spiffe://...) match URI SANs exactly; anything else matches dNSName
 * SANs case-insensitively, exactly or through a single-label leftmost wildcard. No CN fallback.
 */
export function sanCovers(certPem: string, names: string[]): string[] {
  const c = parseCert(x509Of(certPem).raw);
  const san = decodeExt(() => subjectAltNames(c));
  return names.filter((name) => {
    const ip = normalizeIp(name);
    if (ip) return !san.ipAddresses.includes(ip);
    if (/^[A-Za-z][A-Za-z0-9+.-]*:/.test(name)) return !san.uris.includes(name);
    return !san.dnsNames.some((d) => dnsMatches(d, name));
  });
}
