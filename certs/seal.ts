/**
 * Sealing a secret value to one agent's public key (DESIGN.md, Trust model: Secrets).
 *
 * Formats (every field unpadded, canonical base64url; the version and algorithm are plain text):
 *
 *   s1.ecdh-p256.<epk>.<iv>.<ct>.<tag>    recipient key EC P-256
 *   s1.ecdh-p384.<epk>.<iv>.<ct>.<tag>    recipient key EC P-384
 *   s1.rsa-oaep-256.<wk>.<iv>.<ct>.<tag>  recipient key RSA (any size Node accepts, 2048+ in practice)
 *
 *   ECIES: epk is a fresh ephemeral public point on the recipient's curve, uncompressed
 *     (65 / 97 bytes). K = HKDF-SHA256(ikm = ECDH(ephemeral, recipient) x-coordinate,
 *     salt = epk, info = 'trellis-seal-v1|' + aad, 32 bytes).
 *   RSA: wk = RSA-OAEP(SHA-256, MGF1-SHA-256) encryption of a fresh random 32-byte K.
 *   Both: ct || tag = AES-256-GCM(K, iv = 12 random bytes, additional data = aad, plaintext);
 *     tag is 16 bytes.
 *
 * The aad binds a sealed value to where it may be opened. Format (see sealAad):
 *
 *   agent:<agentId>|exec:<executionId>    a value for one execution of an action
 *   agent:<agentId>|rule:<ruleId>         a value a rule on that agent uses
 *
 * A value sealed for one agent and execution opens nowhere else: another agent's key, another
 * execution id, or any changed byte fails with TRELLIS_E_INVALID_ARGUMENT (never a crash).
 * Plaintexts are at most 1 MiB.
 */
import crypto from 'node:crypto';
import { TrellisError } from '../common/errors.js';

export const SEAL_VERSION = 's1';
export const SEAL_MAX_PLAINTEXT_BYTES = 1024 * 1024;
const IV_BYTES = 12;
const TAG_BYTES = 16;
const KEY_BYTES = 32;
const INFO_PREFIX = 'trellis-seal-v1|';
/** Upper bound on a sealed string: 1 MiB of ciphertext plus a 4096-bit RSA wrapped key, in base64url. */
const SEAL_MAX_CHARS = Math.ceil(((SEAL_MAX_PLAINTEXT_BYTES + 1024 + IV_BYTES + TAG_BYTES) * 4) / 3) + 64;
const CACHE_MAX = 1024;

type EcAlg = 'ecdh-p256' | 'ecdh-p384';
type SealAlg = EcAlg | 'rsa-oaep-256';

/** Node (OpenSSL) curve name and uncompressed point length for each EC algorithm. */
const EC: Record<EcAlg, { curve: string; jwkCrv: string; pointLen: number }> = {
  'ecdh-p256': { curve: 'prime256v1', jwkCrv: 'P-256', pointLen: 65 },
  'ecdh-p384': { curve: 'secp384r1', jwkCrv: 'P-384', pointLen: 97 },
};

type Recipient = { alg: EcAlg; point: Buffer } | { alg: 'rsa-oaep-256'; key: crypto.KeyObject };

const bad = (msg: string, cause?: unknown): TrellisError =>
  new TrellisError('TRELLIS_E_INVALID_ARGUMENT', msg, cause === undefined ? undefined : { cause });

/**
 * The additional data binding a sealed value to an agent and an execution or a rule:
 * `agent:<agentId>|exec:<id>` or `agent:<agentId>|rule:<id>`. Ids may not contain '|'.
 */
export function sealAad(agentId: string, kind: 'exec' | 'rule' | 'secret', id: string): string {
  for (const [what, v] of [['agent id', agentId], [`${kind} id`, id]] as const) {
    if (typeof v !== 'string' || v.length === 0 || v.includes('|')) throw bad(`seal binding: ${what} must be a non-empty string without '|'`);
  }
  if (kind !== 'exec' && kind !== 'rule' && kind !== 'secret') throw bad(`seal binding: kind must be 'exec', 'rule' or 'secret'`);
  return `agent:${agentId}|${kind}:${id}`;
}

// ---- recipient public keys, cached per certificate PEM ---------------------------------------
const recipients = new Map<string, Recipient>();

function recipientOf(certPem: string): Recipient {
  let r = recipients.get(certPem);
  if (r) return r;
  let key: crypto.KeyObject;
  try {
    // A key parsed out of a certificate (not a freshly generated one): exporting it is safe.
    key = new crypto.X509Certificate(certPem).publicKey;
  } catch (err) {
    throw bad(`cannot seal: the recipient certificate does not parse: ${(err as Error).message}`, err);
  }
  if (key.asymmetricKeyType === 'ec') {
    const jwk = key.export({ format: 'jwk' });
    const alg = (Object.keys(EC) as EcAlg[]).find((a) => EC[a].jwkCrv === jwk.crv);
    if (!alg || !jwk.x || !jwk.y) throw bad(`cannot seal: unsupported EC curve ${jwk.crv ?? '?'} (P-256 and P-384 are supported)`);
    const point = Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x, 'base64url'), Buffer.from(jwk.y, 'base64url')]);
    if (point.length !== EC[alg].pointLen) throw bad('cannot seal: malformed EC public key in the certificate');
    r = { alg, point };
  } else if (key.asymmetricKeyType === 'rsa') {
    r = { alg: 'rsa-oaep-256', key };
  } else {
    throw bad(`cannot seal: unsupported recipient key type ${key.asymmetricKeyType ?? '?'} (EC P-256/P-384 or RSA)`);
  }
  if (recipients.size >= CACHE_MAX) recipients.delete(recipients.keys().next().value!);
  recipients.set(certPem, r);
  return r;
}

function checkAad(aad: unknown, what: string): asserts aad is string {
  if (typeof aad !== 'string' || aad.length === 0) throw bad(`cannot ${what}: the binding (aad) must be a non-empty string`);
}

function gcmSeal(key: Buffer, aad: string, plaintext: Buffer): { iv: Buffer; ct: Buffer; tag: Buffer } {
  const iv = crypto.randomBytes(IV_BYTES);
  const c = crypto.createCipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES });
  c.setAAD(Buffer.from(aad, 'utf8'));
  const ct = Buffer.concat([c.update(plaintext), c.final()]);
  return { iv, ct, tag: c.getAuthTag() };
}

const ONE = Buffer.from([1]);

/**
 * HKDF-SHA256 (RFC 5869) for one 32-byte output block: PRK = HMAC(salt, ikm), K = HMAC(PRK, info || 0x01).
 * Identical to crypto.hkdfSync('sha256', shared, epk, info, 32), at half its cost.
 */
function hkdf(shared: Buffer, epk: Buffer, aad: string): Buffer {
  const prk = crypto.createHmac('sha256', epk).update(shared).digest();
  const key = crypto.createHmac('sha256', prk).update(INFO_PREFIX + aad, 'utf8').update(ONE).digest();
  prk.fill(0);
  shared.fill(0);
  return key;
}

/**
 * Seals plaintext to the public key in recipientCertPem, bound to aad (see sealAad).
 * Every call uses a fresh ephemeral key (or AES key) and IV: equal plaintexts seal differently.
 */
export function sealFor(recipientCertPem: string, plaintext: Buffer, aad: string): string {
  if (typeof recipientCertPem !== 'string') throw bad('cannot seal: the recipient certificate must be a PEM string');
  if (!Buffer.isBuffer(plaintext)) throw bad('cannot seal: the plaintext must be a Buffer');
  if (plaintext.length > SEAL_MAX_PLAINTEXT_BYTES) throw bad(`cannot seal: the value is ${plaintext.length} bytes, over the ${SEAL_MAX_PLAINTEXT_BYTES}-byte limit`);
  checkAad(aad, 'seal');
  const r = recipientOf(recipientCertPem);
  let first: Buffer;
  let key: Buffer;
  if (r.alg === 'rsa-oaep-256') {
    key = crypto.randomBytes(KEY_BYTES);
    first = crypto.publicEncrypt({ key: r.key, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, key);
  } else {
    const eph = crypto.createECDH(EC[r.alg].curve);
    first = eph.generateKeys();
    key = hkdf(eph.computeSecret(r.point), first, aad);
  }
  const { iv, ct, tag } = gcmSeal(key, aad, plaintext);
  key.fill(0);
  return [SEAL_VERSION, r.alg, first, iv, ct, tag].map((f) => (typeof f === 'string' ? f : f.toString('base64url'))).join('.');
}

// ---- opening -----------------------------------------------------------------------------------
/** Per private key: its ECDH object (private scalar set once) or its RSA modulus length. */
const openers = new WeakMap<crypto.KeyObject, { alg: SealAlg; ecdh?: crypto.ECDH; modBytes?: number }>();

function openerOf(key: crypto.KeyObject): { alg: SealAlg; ecdh?: crypto.ECDH; modBytes?: number } {
  let o = openers.get(key);
  if (o) return o;
  if (!(key instanceof crypto.KeyObject) || key.type !== 'private') throw bad('cannot open sealed value: a private key is required');
  if (key.asymmetricKeyType === 'ec') {
    const jwk = key.export({ format: 'jwk' });
    const alg = (Object.keys(EC) as EcAlg[]).find((a) => EC[a].jwkCrv === jwk.crv);
    if (!alg || !jwk.d) throw bad(`cannot open sealed value: unsupported EC curve ${jwk.crv ?? '?'}`);
    const ecdh = crypto.createECDH(EC[alg].curve);
    ecdh.setPrivateKey(Buffer.from(jwk.d, 'base64url'));
    o = { alg, ecdh };
  } else if (key.asymmetricKeyType === 'rsa') {
    o = { alg: 'rsa-oaep-256', modBytes: Math.ceil((key.asymmetricKeyDetails?.modulusLength ?? 0) / 8) };
  } else {
    throw bad(`cannot open sealed value: unsupported key type ${key.asymmetricKeyType ?? '?'}`);
  }
  openers.set(key, o);
  return o;
}

const B64URL = /^[A-Za-z0-9_-]*$/;

/** Strict base64url: only canonical encodings (no padding, no stray trailing bits). */
function field(s: string, name: string, len?: number): Buffer {
  const b = B64URL.test(s) ? Buffer.from(s, 'base64url') : undefined;
  if (!b || b.toString('base64url') !== s) throw bad(`cannot open sealed value: the ${name} field is not valid base64url`);
  if (len !== undefined && b.length !== len) throw bad(`cannot open sealed value: the ${name} field is ${b.length} bytes, expected ${len}`);
  return b;
}

/**
 * Opens a value sealed by sealFor with the recipient's private key and the same aad.
 * Any mismatch (other key, other aad, changed bytes, malformed input) throws
 * TRELLIS_E_INVALID_ARGUMENT.
 */
export function openSealed(sealed: string, recipientKey: crypto.KeyObject, aad: string): Buffer {
  if (typeof sealed !== 'string') throw bad('cannot open sealed value: it must be a string');
  if (sealed.length > SEAL_MAX_CHARS) throw bad(`cannot open sealed value: ${sealed.length} characters, over the size limit`);
  checkAad(aad, 'open sealed value');
  const parts = sealed.split('.');
  if (parts[0] !== SEAL_VERSION) throw bad(`cannot open sealed value: not a '${SEAL_VERSION}.' sealed value`);
  if (parts.length !== 6) throw bad('cannot open sealed value: malformed (expected 6 dot-separated fields)');
  const alg = parts[1]!;
  if (alg !== 'rsa-oaep-256' && !Object.hasOwn(EC, alg)) throw bad(`cannot open sealed value: unknown algorithm '${alg.slice(0, 32)}'`);
  const o = openerOf(recipientKey);
  if (o.alg !== alg) throw bad(`cannot open sealed value: it was sealed with ${alg}, but the key is for ${o.alg} (sealed for another key)`);
  const iv = field(parts[3]!, 'iv', IV_BYTES);
  const ct = field(parts[4]!, 'ciphertext');
  const tag = field(parts[5]!, 'tag', TAG_BYTES);
  if (ct.length > SEAL_MAX_PLAINTEXT_BYTES) throw bad('cannot open sealed value: the ciphertext is over the size limit');
  let key: Buffer;
  if (alg === 'rsa-oaep-256') {
    const wk = field(parts[2]!, 'wrapped key', o.modBytes);
    try {
      key = crypto.privateDecrypt({ key: recipientKey, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, wk);
    } catch (err) {
      throw bad('cannot open sealed value: the key does not unwrap it (sealed for another key, or tampered)', err);
    }
    if (key.length !== KEY_BYTES) throw bad('cannot open sealed value: the unwrapped key has the wrong length');
  } else {
    const epk = field(parts[2]!, 'ephemeral key', EC[alg as EcAlg].pointLen);
    if (epk[0] !== 4) throw bad('cannot open sealed value: the ephemeral key is not an uncompressed point');
    let shared: Buffer;
    try {
      shared = o.ecdh!.computeSecret(epk);
    } catch (err) {
      throw bad('cannot open sealed value: the ephemeral key is not a valid point on the curve', err);
    }
    key = hkdf(shared, epk, aad);
  }
  try {
    const d = crypto.createDecipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES });
    d.setAAD(Buffer.from(aad, 'utf8'));
    d.setAuthTag(tag);
    return Buffer.concat([d.update(ct), d.final()]);
  } catch (err) {
    throw bad('cannot open sealed value: authentication failed (sealed for another key or binding, or tampered)', err);
  } finally {
    key.fill(0);
  }
}
