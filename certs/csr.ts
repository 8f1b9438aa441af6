/** PKCS#10 certification requests: creation (signed, proof of possession) and strict parsing. */
import crypto from 'node:crypto';
import { TrellisError } from '../common/errors.js';
import {
  OID,
  TAG,
  bitString,
  children,
  content,
  expectTag,
  implicitCons,
  looksLikePem,
  octets,
  oid,
  parseDer,
  pemBlocks,
  pemEncode,
  raw,
  readBitStringBytes,
  readOid,
  readUint,
  seq,
  set,
  toBuffer,
  uint,
  whole,
  type Tlv,
} from './der.js';
import { algorithmIdentifier, describeKey, sigAlgByOid, sigAlgForKey, signWith, spkiDer, keyFromSpki } from './keys.js';
import { decodeGeneralNames, decodeName, encodeGeneralNames, encodeName, type Name } from './names.js';

export interface CreateCSROptions {
  privateKey: crypto.KeyObject;
  subject: Name;
  dnsNames?: string[];
  uris?: string[];
}

export function createCSR(opts: CreateCSROptions): string {
  if (!opts || !(opts.privateKey instanceof crypto.KeyObject) || opts.privateKey.type !== 'private') {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'createCSR needs a private KeyObject');
  }
  const alg = sigAlgForKey(opts.privateKey);
  const sans = encodeGeneralNames({ dnsNames: opts.dnsNames, uris: opts.uris });
  const attributes = sans
    ? [seq(oid(OID.extensionRequest), set(seq(seq(oid(OID.subjectAltName), octets(toBuffer(sans))))))]
    : [];
  const cri = toBuffer(
    seq(uint(0), encodeName(opts.subject ?? {}), raw(spkiDer(opts.privateKey)), implicitCons(0, attributes)),
  );
  const sig = signWith(opts.privateKey, alg, cri);
  return pemEncode('CERTIFICATE REQUEST', toBuffer(seq(raw(cri), algorithmIdentifier(alg), bitString(sig))));
}

export interface ParsedCSR {
  subject: Name;
  publicKey: crypto.KeyObject;
  requestedDnsNames: string[];
  requestedUris: string[];
}

export const CSR_MAX_BYTES = 16384;

class CsrError extends Error {}

const fail = (msg: string): never => {
  throw new CsrError(msg);
};

function csrDer(input: string | Buffer): Buffer {
  if (!looksLikePem(input)) {
    if (typeof input === 'string') fail('expected PEM with a -----BEGIN CERTIFICATE REQUEST----- block');
    return input as Buffer;
  }
  const text = typeof input === 'string' ? input : input.toString('utf8');
  const blocks = pemBlocks(text, 'TRELLIS_E_CSR_INVALID').filter((b) => /^(NEW )?CERTIFICATE REQUEST$/.test(b.label));
  if (blocks.length !== 1) fail(`expected exactly one CERTIFICATE REQUEST PEM block, found ${blocks.length}`);
  return blocks[0]!.der;
}

/** Checks the public key is one we are willing to certify. */
function checkKey(key: crypto.KeyObject): void {
  const kind = describeKey(key);
  if (key.asymmetricKeyType === 'rsa') {
    const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
    if (bits < 2048 || bits > 8192) fail(`RSA key size ${bits} is not allowed (2048..8192)`);
  } else if (!['ec-p256', 'ec-p384', 'ec-p521'].includes(kind)) {
    fail(`unsupported public key type ${kind} (use EC P-256/P-384/P-521 or RSA)`);
  }
}

function requestedNames(attrs: Tlv | undefined): { dns: string[]; uris: string[] } {
  const out = { dns: [] as string[], uris: [] as string[] };
  if (!attrs) return out;
  for (const attr of children(attrs)) {
    const [type, values] = children(expectTag(attr, TAG.SEQUENCE, 'Attribute'));
    if (readOid(type!) !== OID.extensionRequest) continue;
    const [exts, more] = children(expectTag(values, TAG.SET, 'extensionRequest values'));
    if (!exts || more) fail('extensionRequest must hold exactly one Extensions value');
    for (const ext of children(expectTag(exts, TAG.SEQUENCE, 'Extensions'))) {
      const parts = children(expectTag(ext, TAG.SEQUENCE, 'Extension'));
      if (readOid(parts[0]!) !== OID.subjectAltName) continue;
      const value = content(expectTag(parts[parts.length - 1], TAG.OCTET_STRING, 'extnValue'));
      const names = decodeGeneralNames(parseDer(value));
      out.dns.push(...names.dnsNames);
      out.uris.push(...names.uris);
    }
  }
  return out;
}

/**
 * Parses and verifies a PEM (or DER) CSR. The self-signature is checked with node:crypto over
 * the CertificationRequestInfo bytes exactly as received. Every failure is TRELLIS_E_CSR_INVALID.
 */
export function parseCSR(pem: string | Buffer, opts?: { maxBytes?: number }): ParsedCSR {
  const maxBytes = opts?.maxBytes ?? CSR_MAX_BYTES;
  try {
    if (typeof pem !== 'string' && !Buffer.isBuffer(pem)) fail('the CSR must be a PEM string or a Buffer');
    const size = typeof pem === 'string' ? Buffer.byteLength(pem) : pem.length;
    if (size === 0) fail('the CSR is empty');
    if (size > maxBytes) fail(`the CSR is too large (${size} bytes; the limit is ${maxBytes})`);
    const der = csrDer(pem);
    const [cri, algId, sigBits, extra] = children(parseDer(der, TAG.SEQUENCE));
    expectTag(cri, TAG.SEQUENCE, 'CertificationRequestInfo');
    if (extra) fail('trailing element after the signature');

    const [algOid, params, extraParam] = children(expectTag(algId, TAG.SEQUENCE, 'signatureAlgorithm'));
    const algName = readOid(algOid!);
    const alg = sigAlgByOid(algName);
    if (!alg) return fail(`unsupported signature algorithm ${algName} (use ECDSA or RSA PKCS#1 v1.5 with SHA-2)`);
    const paramsOk = alg.kind === 'ec' ? !params : !params || (params.tag === TAG.NULL && params.end === params.cstart);
    if (!paramsOk || extraParam) fail(`bad parameters for signature algorithm ${algName}`);
    const signature = readBitStringBytes(expectTag(sigBits, TAG.BIT_STRING, 'signature'));

    const [version, subject, spki, attrs, more] = children(cri!);
    if (readUint(version!) !== 0n) fail('unsupported CSR version (expected v1)');
    if (more || (attrs && attrs.tag !== 0xa0)) fail('unexpected element in CertificationRequestInfo');
    let publicKey: crypto.KeyObject;
    try {
      publicKey = keyFromSpki(whole(expectTag(spki, TAG.SEQUENCE, 'subjectPKInfo')));
    } catch (err) {
      return fail(`the public key cannot be read (${err instanceof Error ? err.message : String(err)})`);
    }
    if (publicKey.asymmetricKeyType !== alg.kind) fail(`signature algorithm ${algName} does not fit a ${describeKey(publicKey)} key`);
    checkKey(publicKey);
    if (!crypto.verify(alg.hash, whole(cri!), publicKey, signature)) {
      fail('the CSR signature does not verify (the request was altered or not signed by its key)');
    }
    const names = requestedNames(attrs);
    return { subject: decodeName(subject!), publicKey, requestedDnsNames: names.dns, requestedUris: names.uris };
  } catch (err) {
    if (err instanceof TrellisError && err.code === 'TRELLIS_E_CSR_INVALID') throw err;
    const why = err instanceof Error ? err.message : String(err);
    throw new TrellisError('TRELLIS_E_CSR_INVALID', `invalid certificate signing request: ${why}`, { cause: err });
  }
}
