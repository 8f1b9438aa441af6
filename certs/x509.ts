/** Certificate issuance: TBSCertificate built with forge.asn1, signed with node:crypto. */
import crypto from 'node:crypto';
import { TrellisError } from '../common/errors.js';
import {
  OID,
  bitString,
  bool,
  explicit,
  implicitPrim,
  namedBits,
  octets,
  oid,
  pemEncode,
  seqOfDer,
  seq,
  time,
  toBuffer,
  uint,
  type Node,
} from './der.js';
import { algorithmIdentifier, generateKey, publicOf, sigAlgForKey, signWith, spkiDer, type KeyType } from './keys.js';
import { encodeGeneralNames, encodeName, isEmptyName, type Name } from './names.js';
import { basicConstraints, decodeExt, keyIdentifierOfSpki, keyUsage, parseCert, subjectKeyId } from './parse.js';

export type Usage = 'ca' | 'server' | 'client' | 'server-client';

export interface IssueOptions {
  /** null => self-signed (issuer = subject, signed by issuerKey which must match subjectPublicKey). */
  issuerCertPem: string | null;
  issuerKey: crypto.KeyObject;
  subjectPublicKey: crypto.KeyObject;
  subject: Name;
  dnsNames?: string[];
  ipAddresses?: string[];
  uris?: string[];
  usage: Usage;
  /** Only for 'ca'. */
  pathLength?: number;
  /** Default: now - 5 minutes (clock skew). */
  notBefore?: Date;
  notAfter: Date;
  /** Unsigned big-endian; default 16 random bytes, high bit cleared, nonzero first byte. */
  serial?: Buffer;
}

const bad = (msg: string): TrellisError => new TrellisError('TRELLIS_E_INVALID_ARGUMENT', msg);
const CLOCK_SKEW_MS = 5 * 60 * 1000;

/** Serials come from a pooled CSPRNG buffer: one getrandom call per 256 certificates. */
let serialPool = Buffer.alloc(0);
let serialPos = 0;

export function randomSerial(): Buffer {
  if (serialPos + 16 > serialPool.length) {
    serialPool = crypto.randomBytes(4096);
    serialPos = 0;
  }
  const s = Buffer.from(serialPool.subarray(serialPos, serialPos + 16));
  serialPool.fill(0, serialPos, serialPos + 16);
  serialPos += 16;
  s[0] = (s[0]! & 0x7f) || 0x01;
  return s;
}

function checkSerial(serial: Buffer): Buffer {
  if (!Buffer.isBuffer(serial)) throw bad('serial must be a Buffer');
  let i = 0;
  while (i < serial.length && serial[i] === 0) i++;
  const mag = serial.subarray(i);
  if (mag.length === 0) throw bad('serial must be positive');
  if (mag.length > 20 || (mag.length === 20 && mag[0]! & 0x80)) throw bad('serial must fit in 20 octets');
  return mag;
}

function extension(id: string, critical: boolean, value: Node): Node {
  return seq(oid(id), critical ? bool(true) : undefined, octets(toBuffer(value)));
}

interface IssuerInfo {
  nameDer: Buffer;
  keyId: Buffer;
  pathLen?: number;
  /** The issuer certificate's SPKI as node:crypto re-exports it (for comparing with the key). */
  spki: Buffer;
}

/** Parsed issuer certificates, keyed by PEM (a bounded memo: same input, same result). */
const issuerCache = new Map<string, IssuerInfo>();

/** Checks the issuer is a parseable CA certificate whose key is issuerKey. */
function issuerInfo(issuerCertPem: string, issuerKey: crypto.KeyObject): IssuerInfo {
  let info = issuerCache.get(issuerCertPem);
  if (!info) {
    const cert = parseCert(issuerCertPem);
    info = decodeExt((): IssuerInfo => {
      const bc = basicConstraints(cert);
      if (!bc?.ca) throw new TrellisError('TRELLIS_E_CERT_INVALID', 'the issuer certificate is not a CA (basicConstraints CA:TRUE missing)');
      const ku = keyUsage(cert);
      if (ku && !ku.includes('keyCertSign')) {
        throw new TrellisError('TRELLIS_E_CERT_INVALID', 'the issuer certificate keyUsage lacks keyCertSign');
      }
      const spki = spkiDer(crypto.createPublicKey({ key: cert.spki, format: 'der', type: 'spki' }));
      return { nameDer: cert.subjectRaw, keyId: subjectKeyId(cert), pathLen: bc.pathLen, spki };
    });
    if (issuerCache.size >= 16) issuerCache.delete(issuerCache.keys().next().value!);
    issuerCache.set(issuerCertPem, info);
  }
  if (!spkiDer(issuerKey).equals(info.spki)) {
    throw new TrellisError('TRELLIS_E_CERT_INVALID', 'the issuer key does not match the issuer certificate');
  }
  return info;
}

export function issueCertificate(opts: IssueOptions): string {
  if (!opts || typeof opts !== 'object') throw bad('issueCertificate needs an options object');
  const { usage, subject } = opts;
  if (!['ca', 'server', 'client', 'server-client'].includes(usage)) throw bad(`unknown usage '${String(usage)}'`);
  if (!(opts.issuerKey instanceof crypto.KeyObject) || !(opts.subjectPublicKey instanceof crypto.KeyObject)) {
    throw bad('issuerKey and subjectPublicKey must be crypto.KeyObject');
  }
  if (opts.pathLength !== undefined) {
    if (usage !== 'ca') throw bad('pathLength is only allowed for usage ca');
    if (!Number.isInteger(opts.pathLength) || opts.pathLength < 0 || opts.pathLength > 255) {
      throw bad('pathLength must be an integer 0..255');
    }
  }
  const notBefore = opts.notBefore ?? new Date(Date.now() - CLOCK_SKEW_MS);
  const notAfter = opts.notAfter;
  if (!(notAfter instanceof Date) || !(notBefore instanceof Date)) throw bad('notBefore / notAfter must be Dates');
  if (!(notAfter.getTime() > notBefore.getTime())) throw bad('notAfter must be after notBefore');
  const serial = opts.serial === undefined ? randomSerial() : checkSerial(opts.serial);

  const alg = sigAlgForKey(opts.issuerKey);
  const subjectSpki = spkiDer(opts.subjectPublicKey);
  const ski = keyIdentifierOfSpki(subjectSpki);
  const subjectName = toBuffer(encodeName(subject ?? {}));

  let issuerName: Buffer;
  let aki: Buffer;
  if (opts.issuerCertPem === null) {
    if (!spkiDer(opts.issuerKey).equals(subjectSpki)) {
      throw bad('self-signed certificate: issuerKey must be the private key of subjectPublicKey');
    }
    issuerName = subjectName;
    aki = ski;
  } else {
    if (typeof opts.issuerCertPem !== 'string') throw bad('issuerCertPem must be a PEM string or null');
    const info = issuerInfo(opts.issuerCertPem, opts.issuerKey);
    if (usage === 'ca' && info.pathLen === 0) {
      throw bad('the issuer CA has pathLen 0 and cannot issue intermediate CAs');
    }
    issuerName = info.nameDer;
    aki = info.keyId;
  }

  const sans = encodeGeneralNames({ dnsNames: opts.dnsNames, ipAddresses: opts.ipAddresses, uris: opts.uris });
  const subjectIsRsa = publicOf(opts.subjectPublicKey).asymmetricKeyType === 'rsa';
  const exts: Node[] = [];
  if (usage === 'ca') {
    exts.push(
      extension(OID.basicConstraints, true, seq(bool(true), opts.pathLength === undefined ? undefined : uint(opts.pathLength))),
      extension(OID.keyUsage, true, namedBits([0, 5, 6])), // digitalSignature, keyCertSign, cRLSign
    );
  } else {
    exts.push(
      extension(OID.basicConstraints, true, seq()),
      extension(OID.keyUsage, true, namedBits(subjectIsRsa ? [0, 2] : [0])), // + keyEncipherment for RSA
    );
    const ekus = usage === 'server' ? [OID.serverAuth] : usage === 'client' ? [OID.clientAuth] : [OID.serverAuth, OID.clientAuth];
    exts.push(extension(OID.extKeyUsage, false, seq(...ekus.map(oid))));
  }
  if (sans) exts.push(extension(OID.subjectAltName, isEmptyName(subject ?? {}), sans));
  exts.push(
    extension(OID.subjectKeyIdentifier, false, octets(ski)),
    extension(OID.authorityKeyIdentifier, false, seq(implicitPrim(0, aki))),
  );

  // Pieces we encoded ourselves (names, SPKI, the TBS) are joined as DER without a re-parse.
  const algDer = toBuffer(algorithmIdentifier(alg));
  const tbs = seqOfDer([
    toBuffer(explicit(0, uint(2))), // v3
    toBuffer(uint(serial)),
    algDer,
    issuerName,
    toBuffer(seq(time(notBefore), time(notAfter))),
    subjectName,
    subjectSpki,
    toBuffer(explicit(3, seq(...exts))),
  ]);
  const signature = signWith(opts.issuerKey, alg, tbs);
  const cert = seqOfDer([tbs, algDer, toBuffer(bitString(signature))]);
  return pemEncode('CERTIFICATE', cert);
}

export interface CreatedCA {
  certPem: string;
  keyPem: string;
  key: crypto.KeyObject;
}

/** A new self-signed root CA (no pathLen limit), valid from now - 5 min for validityDays (3650). */
export function createCA(opts: { commonName: string; keyType?: KeyType; validityDays?: number; now?: Date }): CreatedCA {
  const { commonName, keyType = 'ec-p256', validityDays = 3650 } = opts ?? ({} as typeof opts);
  if (typeof commonName !== 'string' || commonName.length === 0) throw bad('createCA needs a commonName');
  if (!(validityDays > 0) || !Number.isFinite(validityDays)) throw bad('validityDays must be a positive number');
  const now = opts.now ?? new Date();
  const k = generateKey(keyType);
  const certPem = issueCertificate({
    issuerCertPem: null,
    issuerKey: k.privateKey,
    subjectPublicKey: k.publicKey,
    subject: { commonName },
    usage: 'ca',
    notBefore: new Date(now.getTime() - CLOCK_SKEW_MS),
    notAfter: new Date(now.getTime() + validityDays * 86_400_000),
  });
  return { certPem, keyPem: k.privateKeyPem, key: k.privateKey };
}
