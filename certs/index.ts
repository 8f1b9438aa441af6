/**
 * Trellis PKI library: keys, certificates, CSRs and CRLs as pure functions over PEM/DER.
 * ASN.1 structures are built with node-forge's asn1 layer; every key generation, signature and
 * verification goes through node:crypto.
 */
export { KEY_TYPES, generateKey, loadPrivateKey, type KeyType, type GeneratedKey } from './keys.js';
export type { Name } from './names.js';
export { issueCertificate, createCA, randomSerial, type IssueOptions, type Usage, type CreatedCA } from './x509.js';
export { createCSR, parseCSR, CSR_MAX_BYTES, type ParsedCSR, type CreateCSROptions } from './csr.js';
export { createCRL, type RevokedEntry, type CreateCRLOptions } from './crl.js';
export { fingerprintSha256, splitPemBundle, certInfo, type CertInfo } from './inspect.js';
export { keyMatchesCert, verifyIssuedBy, signedBy, verifyChain, sanCovers, type ChainResult, type IssuerKey } from './verify.js';
export { normalizeSerial } from './serial.js';
export { sealFor, openSealed, sealAad, SEAL_MAX_PLAINTEXT_BYTES } from './seal.js';
