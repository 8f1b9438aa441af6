/** X.509 v2 CRLs (RFC 5280 section 5), built with forge.asn1 and signed with node:crypto. */
import crypto from 'node:crypto';
import { TrellisError } from '../common/errors.js';
import { OID, bitString, explicit, implicitPrim, octets, oid, pemEncode, raw, seq, time, toBuffer, uint, type Node } from './der.js';
import { algorithmIdentifier, sigAlgForKey, signWith, spkiDer } from './keys.js';
import { basicConstraints, decodeExt, keyUsage, parseCert, subjectKeyId } from './parse.js';
import { normalizeSerial } from './serial.js';

export interface RevokedEntry {
  /** Any form normalizeSerial accepts (certInfo().serialHex, tls serialNumber, colon-separated). */
  serialHex: string;
  revokedAt: Date;
}

export interface CreateCRLOptions {
  issuerCertPem: string;
  issuerKey: crypto.KeyObject;
  revoked: RevokedEntry[];
  crlNumber: number | bigint;
  /** Default: now. */
  thisUpdate?: Date;
  nextUpdate: Date;
}

const bad = (msg: string): TrellisError => new TrellisError('TRELLIS_E_INVALID_ARGUMENT', msg);

export function createCRL(opts: CreateCRLOptions): string {
  if (!opts || typeof opts !== 'object') throw bad('createCRL needs an options object');
  const { issuerKey, revoked, crlNumber } = opts;
  if (!(issuerKey instanceof crypto.KeyObject)) throw bad('issuerKey must be a crypto.KeyObject');
  if (!Array.isArray(revoked)) throw bad('revoked must be an array');
  const num = typeof crlNumber === 'bigint' ? crlNumber : Number.isSafeInteger(crlNumber) ? BigInt(crlNumber) : -1n;
  if (num < 0n || num >= 1n << 159n) throw bad('crlNumber must be a non-negative integer of at most 20 octets');
  const thisUpdate = opts.thisUpdate ?? new Date();
  const { nextUpdate } = opts;
  if (!(thisUpdate instanceof Date) || !(nextUpdate instanceof Date) || !(nextUpdate.getTime() > thisUpdate.getTime())) {
    throw bad('nextUpdate must be a Date after thisUpdate');
  }

  const issuer = parseCert(opts.issuerCertPem);
  const aki = decodeExt(() => {
    const bc = basicConstraints(issuer);
    const ku = keyUsage(issuer);
    if (!bc?.ca) throw new TrellisError('TRELLIS_E_CERT_INVALID', 'the CRL issuer certificate is not a CA');
    if (ku && !ku.includes('cRLSign')) throw new TrellisError('TRELLIS_E_CERT_INVALID', 'the CRL issuer keyUsage lacks cRLSign');
    return subjectKeyId(issuer);
  });
  const certSpki = spkiDer(crypto.createPublicKey({ key: issuer.spki, format: 'der', type: 'spki' }));
  if (!spkiDer(issuerKey).equals(certSpki)) {
    throw new TrellisError('TRELLIS_E_CERT_INVALID', 'the issuer key does not match the CRL issuer certificate');
  }

  // One entry per serial (the earliest revocation wins), in input order.
  const entries = new Map<string, Date>();
  for (const r of revoked) {
    if (!r || !(r.revokedAt instanceof Date) || !Number.isFinite(r.revokedAt.getTime())) {
      throw bad('every revoked entry needs a revokedAt Date');
    }
    const s = normalizeSerial(r.serialHex);
    if (s === '0') throw bad('a revoked serial must be positive');
    if (s.length > 40) throw bad(`revoked serial ${s} is longer than 20 octets`);
    const prev = entries.get(s);
    if (!prev || r.revokedAt < prev) entries.set(s, r.revokedAt);
  }
  const revokedList: Node[] = [...entries].map(([s, at]) =>
    seq(uint(Buffer.from(s.length % 2 ? '0' + s : s, 'hex')), time(at)),
  );

  const alg = sigAlgForKey(issuerKey);
  const tbs = toBuffer(
    seq(
      uint(1), // v2
      algorithmIdentifier(alg),
      raw(issuer.subjectRaw),
      time(thisUpdate),
      time(nextUpdate),
      revokedList.length ? seq(...revokedList) : undefined, // omitted when empty (RFC 5280 5.1.2.6)
      explicit(
        0,
        seq(
          seq(oid(OID.authorityKeyIdentifier), octets(toBuffer(seq(implicitPrim(0, aki))))),
          seq(oid(OID.cRLNumber), octets(toBuffer(uint(num)))),
        ),
      ),
    ),
  );
  const sig = signWith(issuerKey, alg, tbs);
  return pemEncode('X509 CRL', toBuffer(seq(raw(tbs), algorithmIdentifier(alg), bitString(sig))));
}
