/**
 * The hub's certificate authority at runtime: the issuing CA (with or without its key), the
 * hub's own serving certificate, agent certificate issuance, the CRL and hub-cert replacement.
 * Files are read once at start; replacements are written atomically and pushed to listeners.
 */
import { readFileSync, existsSync } from 'node:fs';
import { isIP } from 'node:net';
import { X509Certificate, type KeyObject } from 'node:crypto';
import {
  certInfo, createCRL, fingerprintSha256, generateKey, issueCertificate, keyMatchesCert, KEY_TYPES, loadPrivateKey,
  normalizeSerial, randomSerial, sanCovers, signedBy, type KeyType, splitPemBundle, verifyChain, verifyIssuedBy, type RevokedEntry,
} from '../../certs/index.js';
import { parseCert, type ParsedCert } from '../../certs/parse.js';
import { describeKey } from '../../certs/keys.js';
import { TrellisError } from '../../common/errors.js';
import { atomicWriteFile } from '../../common/fsutil.js';
import type { HubPaths } from '../paths.js';

export interface HubIdentity { certChainPem: string; keyPem: string }

export function spiffeId(trustDomain: string, tenant: string, agentId: string): string {
  return `spiffe://${trustDomain}/tenant/${tenant}/agent/${agentId}`;
}

const SPIFFE_RE = /^spiffe:\/\/([a-z0-9.-]+)\/tenant\/([a-z0-9][a-z0-9-]{0,62})\/agent\/([a-z0-9][a-z0-9-]{0,62})$/;

export function parseSpiffeId(uri: string): { trustDomain: string; tenant: string; agentId: string } | undefined {
  const m = SPIFFE_RE.exec(uri);
  return m ? { trustDomain: m[1]!, tenant: m[2]!, agentId: m[3]! } : undefined;
}

/** A CA the hub knows: its chain (issuing CA first, then parents) and, when the hub holds it, its key. */
export interface CaMaterial { chain: string[]; key: KeyObject | undefined }

/**
 * The CAs of a rotation (hub/pki/rotation.ts), as the PKI serves them: `next` issues agent
 * certificates and is trusted next to the current CA; `retired` (a rolled-back next CA) is
 * trusted for agent certificates only, until the agents it issued have renewed.
 */
export interface RotationTrust { next?: CaMaterial; retired?: string[] }

/** issuerOf() answers kept (least recently used dropped first): a large fleet's certificates. */
export const ISSUER_CACHE_MAX = 20_000;

export class HubPki {
  /** The CA the hub certificate chains to: issuing CA first, then any parents up to the operator's root. */
  private current: CaMaterial;
  private rotation: RotationTrust = {};
  private caNotAfterMs: number;
  private identity: HubIdentity;
  private listeners = new Set<(id: HubIdentity) => void>();
  private trustListeners = new Set<() => void>();

  private constructor(private readonly paths: HubPaths, readonly names: readonly string[], caChain: string[], caKey: KeyObject | undefined, identity: HubIdentity) {
    this.current = { chain: caChain, key: caKey };
    this.caNotAfterMs = certInfo(caChain[0]!).notAfter.getTime();
    this.identity = identity;
  }

  static load(paths: HubPaths, names: readonly string[]): HubPki {
    for (const f of [paths.caCert, paths.hubCert, paths.hubKey]) {
      if (!existsSync(f)) throw new TrellisError('TRELLIS_E_CONFIG', `missing ${f}: run \`trellis hub init\` for this data directory`);
    }
    const caChain = splitPemBundle(readFileSync(paths.caCert, 'utf8'));
    if (caChain.length === 0) throw new TrellisError('TRELLIS_E_CONFIG', `${paths.caCert} holds no certificate`);
    const caKey = existsSync(paths.caKey) ? loadPrivateKey(readFileSync(paths.caKey)) : undefined;
    if (caKey && !keyMatchesCert(caKey, caChain[0]!)) {
      throw new TrellisError('TRELLIS_E_CONFIG', `${paths.caKey} does not match the CA certificate in ${paths.caCert}`);
    }
    // A hub.pem written without its chain (older `certs replace`) is served completed: clients pin the CA from the served chain.
    const identity = { certChainPem: completeHubChain(readFileSync(paths.hubCert, 'utf8'), caChain, false), keyPem: readFileSync(paths.hubKey, 'utf8') };
    checkHubIdentity(identity, caChain, names);
    return new HubPki(paths, names, caChain, caKey, identity);
  }

  /** The CA chain the hub certificate chains to (during a rotation: the old CA, until commit). */
  get caChain(): string[] { return this.current.chain; }
  get caKey(): KeyObject | undefined { return this.current.key; }
  get caFingerprint(): string { return fingerprintSha256(this.current.chain[0]!); }
  /** The CA agent certificates come from: the next CA while a rotation runs, else the current one. */
  get issuingCa(): CaMaterial { return this.rotation.next ?? this.current; }
  get issuingFingerprint(): string {
    // Read on every agent attach (is its certificate from the issuing CA?): computed once per CA.
    const pem = this.issuingCa.chain[0]!;
    if (this.issuingFp?.pem !== pem) this.issuingFp = { pem, fp: fingerprintSha256(pem) };
    return this.issuingFp.fp;
  }
  private issuingFp?: { pem: string; fp: string };
  /**
   * issuerOf() answers by certificate PEM, for a fleet's worth of certificates (an agent's is
   * asked as it is identified, attached and renewed; a 256-entry cache missed every time in a
   * reconnect storm and re-parsed each certificate). The keys of connected agents are the strings
   * their links hold, so an entry costs little more than the map slot.
   */
  private issuerCache = { memo: undefined as unknown, map: new Map<string, string | undefined>() };
  get canIssue(): boolean { return this.issuingCa.key !== undefined; }
  get caCertPem(): string { return this.current.chain[0]!; }
  /** PEM certificates peers (agents, admin clients) trust: the current CA chain, plus the next one during a rotation. */
  get trustBundle(): string[] { return [...this.derived().trust]; }
  /** What the agent port accepts client certificates from: the trust bundle plus a rolled-back CA still in use. */
  get clientTrust(): string[] { return [...this.derived().client]; }
  /** The CAs that may have issued a valid agent certificate (issuing CAs only, not their parents). */
  get agentIssuers(): string[] { return this.derived().issuers.map((i) => i.pem); }

  /**
   * The bundles and issuers above, computed once per CA change (current CA or rotation state;
   * both are replaced, never changed in place): every agent connection reads them, and parsing
   * the certificates each time cost more hub CPU than the TLS handshake.
   */
  private memo?: { current: CaMaterial; rotation: RotationTrust; trust: string[]; client: string[]; issuers: Array<{ pem: string; x509: X509Certificate; fingerprint: string; subjectRaw: Buffer; key: KeyObject }> };
  private derived(): NonNullable<HubPki['memo']> {
    const m = this.memo;
    if (m && m.current === this.current && m.rotation === this.rotation) return m;
    const trust = dedupe([...this.current.chain, ...(this.rotation.next?.chain ?? [])]);
    const client = dedupe([...trust, ...(this.rotation.retired ?? [])]);
    const issuers = dedupe([this.current.chain[0]!, ...(this.rotation.next ? [this.rotation.next.chain[0]!] : []), ...(this.rotation.retired?.length ? [this.rotation.retired[0]!] : [])])
      .map((pem) => { const x509 = new X509Certificate(pem); return { pem, x509, fingerprint: fingerprintSha256(pem), subjectRaw: parseCert(x509.raw).subjectRaw, key: x509.publicKey }; });
    this.memo = { current: this.current, rotation: this.rotation, trust, client, issuers };
    return this.memo;
  }
  get rotationTrust(): RotationTrust { return this.rotation; }
  get hubIdentity(): HubIdentity { return this.identity; }

  onIdentityChange(fn: (id: HubIdentity) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Called after the trust bundle or the issuing CA changed (rotation start, commit, rollback). */
  onTrustChange(fn: () => void): () => void {
    this.trustListeners.add(fn);
    return () => this.trustListeners.delete(fn);
  }

  /** The fingerprint of the known issuing CA that signed `certPem` (agentIssuers), or undefined. */
  issuerOf(certPem: string): string | undefined {
    return this.issuerOfX509(certPem);
  }

  /**
   * issuerOf() for a certificate already parsed (`cert`, whose PEM is `certPem`): the agent port
   * parses each client certificate once and its answer serves the later issuerOf(certPem) calls.
   */
  issuerOfX509(certPem: string, cert?: X509Certificate): string | undefined {
    return this.issuerLookup(certPem, () => {
      if (!cert) try { cert = new X509Certificate(certPem); } catch { return undefined; }
      return this.issuerByX509(cert);
    });
  }

  /**
   * issuerOf() for a certificate given as DER and parsed by certs/parse.ts (`der`, `parsed`; its PEM
   * is `certPem`): the issuer's key checks the signature over the DER itself (certs signedBy), no
   * X509Certificate built, which is what the agent port does for every connection it has not seen.
   * A certificate no issuer signs that way (an encoding signedBy does not know) is checked the
   * X509Certificate way before it is refused.
   */
  issuerOfDer(certPem: string, der: Buffer, parsed: Pick<ParsedCert, 'issuerRaw'>): string | undefined {
    return this.issuerLookup(certPem, () => {
      for (const ca of this.derived().issuers) if (signedBy(der, parsed, ca)) return ca.fingerprint;
      let cert: X509Certificate;
      try { cert = new X509Certificate(der); } catch { return undefined; }
      return this.issuerByX509(cert);
    });
  }

  private issuerByX509(cert: X509Certificate): string | undefined {
    for (const ca of this.derived().issuers) {
      try { if (cert.checkIssued(ca.x509) && cert.verify(ca.key)) return ca.fingerprint; } catch { /* not this one */ }
    }
    return undefined;
  }

  /** The cached answer for certPem under the current CAs, else `find()`'s (then cached). */
  private issuerLookup(certPem: string, find: () => string | undefined): string | undefined {
    const d = this.derived();
    const cache = this.issuerCache;
    if (cache.memo !== d) { cache.memo = d; cache.map.clear(); } // the CAs changed: ask again
    if (cache.map.has(certPem)) {
      const hit = cache.map.get(certPem);
      cache.map.delete(certPem); // least recently used goes first
      cache.map.set(certPem, hit);
      return hit;
    }
    const found = find();
    if (cache.map.size >= ISSUER_CACHE_MAX) cache.map.delete(cache.map.keys().next().value!);
    cache.map.set(certPem, found);
    return found;
  }

  /** A new object whenever the CAs the hub accepts change (caches of verified certificates start over). */
  get trustGeneration(): object {
    return this.derived();
  }

  /** Sets the rotation's CAs (the current CA and the hub certificate are unchanged). */
  setRotation(r: RotationTrust): void {
    this.rotation = r;
    for (const fn of this.trustListeners) fn();
  }

  /**
   * Commit: `ca` becomes the current CA and `identity` (issued by it, already on disk) the served
   * hub certificate; the rotation ends. Files are written by the caller (hub/pki/rotation.ts).
   */
  adoptCa(ca: CaMaterial, identity: HubIdentity): void {
    checkHubIdentity(identity, ca.chain, this.names);
    this.current = ca;
    this.caNotAfterMs = certInfo(ca.chain[0]!).notAfter.getTime();
    this.rotation = {};
    this.identity = identity;
    for (const fn of this.listeners) fn(identity);
    for (const fn of this.trustListeners) fn();
  }

  issueAgentCertificate(opts: { publicKey: KeyObject; agentId: string; tenant: string; trustDomain: string; ttlMs: number; now?: Date }): { certPem: string; serial: string; notAfter: Date; caFingerprint: string } {
    const ca = this.issuingCa;
    if (!ca.key) {
      throw new TrellisError('TRELLIS_E_CA_NO_KEY',
        'this hub runs with an operator-supplied CA and no CA key, so it cannot issue agent certificates: issue them with your own CA (URI SAN spiffe://<trust-domain>/tenant/<tenant>/agent/<id>, EKU clientAuth) and start agents with `trellis agent run --cert --key --ca`');
    }
    const caNotAfter = ca === this.current ? this.caNotAfterMs : certInfo(ca.chain[0]!).notAfter.getTime();
    const now = opts.now ?? new Date();
    const notAfter = new Date(Math.min(now.getTime() + opts.ttlMs, caNotAfter));
    const serial = randomSerial();
    const certPem = issueCertificate({
      serial,
      issuerCertPem: ca.chain[0]!,
      issuerKey: ca.key,
      subjectPublicKey: opts.publicKey,
      subject: { commonName: opts.agentId, organization: opts.tenant },
      uris: [spiffeId(opts.trustDomain, opts.tenant, opts.agentId)],
      usage: 'client',
      // Backdated for clock skew, but by at most a tenth of the lifetime: agents renew at 2/3 of
      // notBefore..notAfter, and a 5-minute backdate on a short-lived certificate would put that
      // point in the past and make them renew in a loop.
      notBefore: new Date(now.getTime() - Math.min(5 * 60_000, Math.floor(opts.ttlMs / 10))),
      notAfter,
    });
    return { certPem, serial: normalizeSerial(serial.toString('hex')), notAfter, caFingerprint: fingerprintSha256(ca.chain[0]!) };
  }

  crl(revoked: RevokedEntry[], crlNumber: number): string {
    if (!this.caKey) throw new TrellisError('TRELLIS_E_CA_NO_KEY', 'no CA key on this hub: the CRL is kept by the operator of the supplied CA');
    const now = new Date();
    return createCRL({ issuerCertPem: this.caCertPem, issuerKey: this.caKey, revoked, crlNumber, thisUpdate: now, nextUpdate: new Date(now.getTime() + 7 * 86_400_000) });
  }

  /**
   * Validates, persists (atomically, key 0600) and starts serving a new hub certificate. A leaf
   * given without its chain is completed from the hub CA chain; a chain that holds certificates
   * outside the hub CA chain is refused (clients pin the CA in the served chain).
   */
  async replaceHubIdentity(certChainPem: string, keyPem: string): Promise<void> {
    const identity = { certChainPem: completeHubChain(certChainPem, this.caChain, true), keyPem };
    checkHubIdentity(identity, this.caChain, this.names);
    await atomicWriteFile(this.paths.hubKey, keyPem, { mode: 0o600 });
    await atomicWriteFile(this.paths.hubCert, identity.certChainPem, { mode: 0o644 });
    this.identity = identity;
    for (const fn of this.listeners) fn(identity);
  }
}

/**
 * Issues a hub serving certificate from the internal CA: a fresh key of the CA's type, every name
 * in subjectAltName, `ttlMs` of life (never past the CA's notAfter). Returns the served chain.
 */
export function issueHubCertificate(pki: HubPki, names: readonly string[], ttlMs: number, now = new Date(), ca: CaMaterial = { chain: pki.caChain, key: pki.caKey }): HubIdentity {
  if (!ca.key) {
    throw new TrellisError('TRELLIS_E_CA_NO_KEY',
      'this hub has no CA key (operator-supplied CA), so it cannot issue its own certificate: issue one with your CA (server usage, every hub name in subjectAltName) and install it with `trellis certs replace --hub-cert --hub-key`');
  }
  const kt = describeKey(ca.key);
  const key = generateKey((KEY_TYPES as readonly string[]).includes(kt) ? kt as KeyType : 'ec-p256');
  const dns = names.filter((n) => !isIP(n)), ips = names.filter((n) => isIP(n));
  // Backdated for clock skew by at most a tenth of the life, so that 2/3 of it stays ahead.
  const notBefore = new Date(now.getTime() - Math.min(5 * 60_000, Math.floor(ttlMs / 10)));
  const leaf = issueCertificate({
    issuerCertPem: ca.chain[0]!, issuerKey: ca.key, subjectPublicKey: key.publicKey,
    subject: { commonName: names[0]!, organization: 'Trellis hub' }, dnsNames: dns, ipAddresses: ips, usage: 'server',
    notBefore, notAfter: new Date(Math.min(notBefore.getTime() + ttlMs, certInfo(ca.chain[0]!).notAfter.getTime())),
  });
  return { certChainPem: [leaf, ...ca.chain].join(''), keyPem: key.privateKeyPem };
}

function dedupe(pems: string[]): string[] {
  const seen = new Set<string>();
  return pems.filter((p) => { const f = fingerprintSha256(p); if (seen.has(f)) return false; seen.add(f); return true; });
}

const DNS_NAME_RE = /^(?=.{1,253}$)(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i;

/** Checks names for a hub certificate: DNS names or IP addresses, at most 100, each configured name among them. */
export function checkHubNames(names: readonly string[], configured: readonly string[]): string[] {
  const out = [...new Set(names.map((n) => n.trim()).filter(Boolean))];
  if (out.length === 0) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'give at least one hub name');
  if (out.length > 100) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${out.length} names: at most 100`);
  for (const n of out) {
    if (!isIP(n) && !DNS_NAME_RE.test(n)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `bad hub name ${JSON.stringify(n.slice(0, 80))}: use a DNS name or an IP address`);
  }
  const missing = configured.filter((c) => !out.some((n) => n.toLowerCase() === c.toLowerCase()));
  if (missing.length > 0) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `the names leave out configured hub name(s) ${missing.join(', ')} that agents dial: list them too (or change \`names\` in the hub config first)`);
  }
  return out;
}

/**
 * The chain the hub serves: the leaf, then the hub CA chain. A file holding the leaf alone is
 * completed; with `strict`, a certificate after the leaf that is not part of the hub CA chain is
 * refused (a chain that does not lead to the CA agents trust).
 */
export function completeHubChain(certChainPem: string, caChain: string[], strict: boolean): string {
  const certs = splitPemBundle(certChainPem);
  if (certs.length === 0) return certChainPem; // checkHubIdentity names the problem
  const norm = (p: string) => fingerprintSha256(p);
  const ca = new Set(caChain.map(norm));
  if (strict) {
    for (let i = 1; i < certs.length; i++) {
      if (!ca.has(norm(certs[i]!))) {
        const subject = certInfo(certs[i]!).subject.replace(/\n/g, ', ');
        throw new TrellisError('TRELLIS_E_CERT_INVALID',
          `certificate ${i + 1} in the chain (${subject}) is not part of the hub CA chain agents trust (sha256 ${fingerprintSha256(caChain[0]!)}): give the leaf alone or the leaf followed by the hub CA chain`);
      }
    }
    return [certs[0]!, ...caChain].join('');
  }
  const served = [...certs];
  for (const c of caChain) if (!served.some((s) => norm(s) === norm(c))) served.push(c);
  return served.join('');
}

/** A hub certificate must match its key, chain to the CA and cover every configured name. */
export function checkHubIdentity(id: HubIdentity, caChain: string[], names: readonly string[]): void {
  const certs = splitPemBundle(id.certChainPem);
  if (certs.length === 0) throw new TrellisError('TRELLIS_E_CERT_INVALID', 'the hub certificate file holds no certificate');
  const leaf = certs[0]!;
  const key = loadPrivateKey(id.keyPem);
  if (!keyMatchesCert(key, leaf)) throw new TrellisError('TRELLIS_E_CERT_INVALID', 'the hub key does not match the hub certificate');
  const anchors = [caChain[caChain.length - 1]!];
  const chain = verifyChain(leaf, [...certs.slice(1), ...caChain], anchors);
  if (!chain.ok) throw new TrellisError('TRELLIS_E_CERT_INVALID', `the hub certificate does not chain to the hub CA: ${chain.reason}`);
  if (!certs.concat(caChain).some((c) => c === leaf ? false : verifyIssuedBy(leaf, c))) {
    throw new TrellisError('TRELLIS_E_CERT_INVALID', 'the hub certificate was not issued by the hub CA chain');
  }
  const missing = sanCovers(leaf, [...names]);
  if (missing.length > 0) {
    throw new TrellisError('TRELLIS_E_CERT_INVALID', `the hub certificate's subjectAltName lacks ${missing.join(', ')}: issue one that names every --name`);
  }
  const info = certInfo(leaf);
  if (info.notAfter.getTime() <= Date.now()) throw new TrellisError('TRELLIS_E_CERT_INVALID', `the hub certificate expired on ${info.notAfter.toISOString()}`);
}
