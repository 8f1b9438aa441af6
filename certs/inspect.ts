/** Read-only views of certificates: fingerprints, PEM bundles, certInfo. */
import crypto from 'node:crypto';
import { pemBlocks, pemEncode } from './der.js';
import { describeKey } from './keys.js';
import { basicConstraints, decodeExt, extKeyUsage, parseCert, subjectAltNames, x509Of } from './parse.js';
import { normalizeSerial } from './serial.js';

/** Lowercase hex SHA-256 over the certificate DER, no colons. */
export function fingerprintSha256(certPem: string | Buffer): string {
  return crypto.createHash('sha256').update(x509Of(certPem).raw).digest('hex');
}

/** Every CERTIFICATE block of a PEM bundle, in order, re-encoded (64-column base64, LF, trailing newline). */
export function splitPemBundle(pem: string): string[] {
  return pemBlocks(pem)
    .filter((b) => b.label === 'CERTIFICATE')
    .map((b) => pemEncode('CERTIFICATE', b.der));
}

export interface CertInfo {
  /** normalizeSerial() form: lowercase hex, leading zeros stripped. */
  serialHex: string;
  /** Node's X509Certificate DN text with its lines joined by ", " (display only). */
  subject: string;
  issuer: string;
  notBefore: Date;
  notAfter: Date;
  dnsNames: string[];
  /** Canonical text (dotted IPv4, RFC 5952 IPv6). */
  ipAddresses: string[];
  uris: string[];
  isCA: boolean;
  /** serverAuth / clientAuth / ... (unknown purposes as dotted OIDs). */
  extKeyUsage: string[];
  /** fingerprintSha256() form. */
  fingerprint: string;
  /** ec-p256, ec-p384, rsa-2048, ... */
  keyType: string;
}

export function certInfo(certPem: string): CertInfo {
  const x = x509Of(certPem);
  const c = parseCert(x.raw);
  const { san, eku, bc } = decodeExt(() => ({ san: subjectAltNames(c), eku: extKeyUsage(c), bc: basicConstraints(c) }));
  return {
    serialHex: normalizeSerial(x.serialNumber),
    subject: x.subject.split('\n').join(', '),
    issuer: x.issuer.split('\n').join(', '),
    notBefore: c.notBefore,
    notAfter: c.notAfter,
    dnsNames: san.dnsNames,
    ipAddresses: san.ipAddresses,
    uris: san.uris,
    isCA: bc?.ca ?? false,
    extKeyUsage: eku,
    fingerprint: crypto.createHash('sha256').update(x.raw).digest('hex'),
    keyType: describeKey(x.publicKey),
  };
}
