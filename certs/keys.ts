/** Key generation, loading and the key -> signature-algorithm mapping. All crypto is node:crypto. */
import crypto from 'node:crypto';
import { TrellisError } from '../common/errors.js';
import { bitString, looksLikePem, nul, oid, seq, toBuffer, uint, type Node } from './der.js';

export type KeyType = 'ec-p256' | 'ec-p384' | 'rsa-2048' | 'rsa-3072' | 'rsa-4096';
export const KEY_TYPES: readonly KeyType[] = Object.freeze(['ec-p256', 'ec-p384', 'rsa-2048', 'rsa-3072', 'rsa-4096']);

export interface GeneratedKey {
  privateKey: crypto.KeyObject;
  publicKey: crypto.KeyObject;
  /** PKCS#8 PEM ("PRIVATE KEY"). */
  privateKeyPem: string;
}

/**
 * A new key pair, generated with its encodings requested up front: the key objects handed out
 * are made from those bytes, never exported from the generator's own objects. (Exporting a
 * freshly generated KeyObject while the garbage collector finalises its key-generation job can
 * deadlock Node 20's crypto; this path never does it, and the SPKI is known without an export.)
 */
export function generateKey(type: KeyType = 'ec-p256'): GeneratedKey {
  let pair: { publicKey: Buffer; privateKey: string };
  switch (type) {
    case 'ec-p256':
      pair = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256', publicKeyEncoding: { type: 'spki', format: 'der' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' } });
      break;
    case 'ec-p384':
      pair = crypto.generateKeyPairSync('ec', { namedCurve: 'P-384', publicKeyEncoding: { type: 'spki', format: 'der' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' } });
      break;
    case 'rsa-2048':
    case 'rsa-3072':
    case 'rsa-4096':
      pair = crypto.generateKeyPairSync('rsa', {
        modulusLength: Number(type.slice(4)), publicExponent: 0x10001,
        publicKeyEncoding: { type: 'spki', format: 'der' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
      });
      break;
    default:
      throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `unknown key type '${String(type)}' (expected one of ${KEY_TYPES.join(', ')})`);
  }
  const privateKey = crypto.createPrivateKey({ key: pair.privateKey, format: 'pem' });
  const publicKey = crypto.createPublicKey({ key: pair.publicKey, format: 'der', type: 'spki' });
  spkiCache.set(privateKey, pair.publicKey);
  spkiCache.set(publicKey, pair.publicKey);
  return { privateKey, publicKey, privateKeyPem: pair.privateKey };
}

/** Loads a private key: PEM (PKCS#8, PKCS#1 "RSA PRIVATE KEY", SEC1 "EC PRIVATE KEY") or DER. */
export function loadPrivateKey(pem: string | Buffer): crypto.KeyObject {
  try {
    if (looksLikePem(pem)) {
      const text = typeof pem === 'string' ? pem : pem.toString('utf8');
      if (text.includes('ENCRYPTED')) throw new Error('the key is encrypted; supply an unencrypted key');
      return crypto.createPrivateKey({ key: text, format: 'pem' });
    }
    if (typeof pem === 'string') throw new Error('no PEM "-----BEGIN ... PRIVATE KEY-----" block found');
    for (const type of ['pkcs8', 'pkcs1', 'sec1'] as const) {
      try {
        return crypto.createPrivateKey({ key: pem, format: 'der', type });
      } catch {
        /* try the next encoding */
      }
    }
    throw new Error('not a PKCS#8, PKCS#1 or SEC1 DER private key');
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    throw new TrellisError('TRELLIS_E_CERT_INVALID', `cannot load private key: ${why}`, { cause: err });
  }
}

/** Public half of a key object (a public key is returned as is). */
export function publicOf(key: crypto.KeyObject): crypto.KeyObject {
  return key.type === 'private' ? crypto.createPublicKey(key) : key;
}

const EC_CURVES: Record<string, string> = {
  'P-256': '1.2.840.10045.3.1.7',
  'P-384': '1.3.132.0.34',
  'P-521': '1.3.132.0.35',
};
const spkiCache = new WeakMap<crypto.KeyObject, Buffer>();

/**
 * SubjectPublicKeyInfo DER of a key (private or public), byte-identical to Node's
 * export({ type: 'spki' }). EC and RSA keys are assembled from the JWK export because
 * OpenSSL 3's SPKI encoder costs ~200 us per call; results are memoised per KeyObject.
 */
export function spkiDer(key: crypto.KeyObject): Buffer {
  let out = spkiCache.get(key);
  if (out) return out;
  const t = key.asymmetricKeyType;
  if (t === 'ec' || t === 'rsa') {
    const jwk = key.export({ format: 'jwk' });
    const b = (v: string | undefined): Buffer => Buffer.from(v ?? '', 'base64url');
    if (t === 'ec' && jwk.crv && EC_CURVES[jwk.crv]) {
      const point = Buffer.concat([Buffer.from([4]), b(jwk.x), b(jwk.y)]);
      out = toBuffer(seq(seq(oid('1.2.840.10045.2.1'), oid(EC_CURVES[jwk.crv]!)), bitString(point)));
    } else if (t === 'rsa') {
      const rsaKey = toBuffer(seq(uint(b(jwk.n)), uint(b(jwk.e))));
      out = toBuffer(seq(seq(oid('1.2.840.113549.1.1.1'), nul()), bitString(rsaKey)));
    }
  }
  out ??= publicOf(key).export({ type: 'spki', format: 'der' });
  spkiCache.set(key, out);
  return out;
}

/** The fixed DER prefix of an uncompressed P-256 SubjectPublicKeyInfo (91 bytes in all). */
const P256_SPKI_PREFIX = Buffer.from('3059301306072a8648ce3d020106082a8648ce3d030107034200', 'hex');

/**
 * A public key object from SPKI DER (e.g. out of a CSR). When the bytes are the canonical
 * P-256 form, they are remembered as the key's SPKI so issuing a certificate for it needs no
 * export (the hot path of enrollment).
 */
export function keyFromSpki(der: Buffer): crypto.KeyObject {
  const key = crypto.createPublicKey({ key: der, format: 'der', type: 'spki' });
  if (der.length === 91 && der[26] === 0x04 && der.subarray(0, 26).equals(P256_SPKI_PREFIX)) spkiCache.set(key, Buffer.from(der));
  else spkiCache.set(key, key.export({ type: 'spki', format: 'der' })); // canonical re-encoding, no JWK
  return key;
}

/** 'ec-p256', 'ec-p384', 'rsa-2048', ...; other keys as 'ec-<curve>', 'rsa-<bits>' or Node's key type name. */
export function describeKey(key: crypto.KeyObject): string {
  const t = key.asymmetricKeyType;
  const d = key.asymmetricKeyDetails ?? {};
  if (t === 'ec') {
    const curve = d.namedCurve ?? 'unknown';
    if (curve === 'prime256v1' || curve === 'P-256') return 'ec-p256';
    if (curve === 'secp384r1' || curve === 'P-384') return 'ec-p384';
    if (curve === 'secp521r1' || curve === 'P-521') return 'ec-p521';
    return `ec-${curve}`;
  }
  if (t === 'rsa') return `rsa-${d.modulusLength ?? 0}`;
  return t ?? 'unknown';
}

export type Hash = 'sha256' | 'sha384' | 'sha512';

export interface SigAlg {
  oid: string;
  hash: Hash;
  kind: 'ec' | 'rsa';
}

const SIG_ALGS: Record<string, SigAlg> = {
  '1.2.840.10045.4.3.2': { oid: '1.2.840.10045.4.3.2', hash: 'sha256', kind: 'ec' },
  '1.2.840.10045.4.3.3': { oid: '1.2.840.10045.4.3.3', hash: 'sha384', kind: 'ec' },
  '1.2.840.10045.4.3.4': { oid: '1.2.840.10045.4.3.4', hash: 'sha512', kind: 'ec' },
  '1.2.840.113549.1.1.11': { oid: '1.2.840.113549.1.1.11', hash: 'sha256', kind: 'rsa' },
  '1.2.840.113549.1.1.12': { oid: '1.2.840.113549.1.1.12', hash: 'sha384', kind: 'rsa' },
  '1.2.840.113549.1.1.13': { oid: '1.2.840.113549.1.1.13', hash: 'sha512', kind: 'rsa' },
};

/** Signature algorithm identifiers we accept when verifying (undefined if unsupported). */
export function sigAlgByOid(o: string): SigAlg | undefined {
  return SIG_ALGS[o];
}

/** The algorithm a private (signing) key signs with: P-256 -> ES256, P-384 -> ES384, RSA -> sha256WithRSA. */
const sigAlgCache = new WeakMap<crypto.KeyObject, SigAlg>();

export function sigAlgForKey(key: crypto.KeyObject): SigAlg {
  let alg = sigAlgCache.get(key);
  if (!alg) {
    alg = pickSigAlg(key);
    sigAlgCache.set(key, alg);
  }
  return alg;
}

function pickSigAlg(key: crypto.KeyObject): SigAlg {
  if (key.type !== 'private') {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'a private key is required for signing');
  }
  switch (describeKey(key)) {
    case 'ec-p256':
      return SIG_ALGS['1.2.840.10045.4.3.2']!;
    case 'ec-p384':
      return SIG_ALGS['1.2.840.10045.4.3.3']!;
    case 'ec-p521':
      return SIG_ALGS['1.2.840.10045.4.3.4']!;
    default:
      if (key.asymmetricKeyType === 'rsa') return SIG_ALGS['1.2.840.113549.1.1.11']!;
      throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `unsupported signing key type ${describeKey(key)}`);
  }
}

/** AlgorithmIdentifier: ECDSA without parameters, RSA with NULL parameters (RFC 5758 / RFC 4055). */
export function algorithmIdentifier(alg: SigAlg): Node {
  return alg.kind === 'ec' ? seq(oid(alg.oid)) : seq(oid(alg.oid), nul());
}

/** Signs data with node:crypto; for ECDSA Node returns the DER Ecdsa-Sig-Value X.509 expects. */
export function signWith(key: crypto.KeyObject, alg: SigAlg, data: Buffer): Buffer {
  return crypto.sign(alg.hash, data, key);
}
