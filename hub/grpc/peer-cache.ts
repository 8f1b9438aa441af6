/**
 * What the agent port derived from a verified client certificate (identity, serial, expiry), by
 * the SHA-256 of its DER bytes: a reconnecting agent is not parsed and verified again. Bounded
 * (least recently used dropped first) and emptied when the CAs the hub accepts change. Revocation
 * and expiry are not cached: identifyPeer checks them on every stream.
 */
import { X509Certificate } from 'node:crypto';
import type { PeerCertificate, TLSSocket } from 'node:tls';

export interface CertFacts { agentId: string; tenant: string; serial: string; notAfter: number; certPem: string }

/** Entries kept: a large fleet (an entry of a connected agent shares its PEM with the link). */
export const PEER_CACHE_MAX = 20_000;

export class PeerCertCache {
  /** parsed: misses whose certificate had to be parsed from its DER bytes (not handed over by TLS, see answerPeerWithX509). */
  readonly stats = { hits: 0, misses: 0, parsed: 0 };
  #generation: object | undefined;
  readonly #map = new Map<string, CertFacts>();

  constructor(private readonly max = PEER_CACHE_MAX) {}

  get size(): number { return this.#map.size; }

  /** The facts of the certificate with this DER hash, verified under the CAs of `generation`. */
  get(key: string, generation: object): CertFacts | undefined {
    this.#sync(generation);
    const hit = this.#map.get(key);
    if (!hit) { this.stats.misses++; return undefined; }
    this.stats.hits++;
    this.#map.delete(key);
    this.#map.set(key, hit);
    return hit;
  }

  set(key: string, generation: object, facts: CertFacts): void {
    this.#sync(generation);
    if (this.#map.size >= this.max) this.#map.delete(this.#map.keys().next().value!);
    this.#map.set(key, facts);
  }

  #sync(generation: object): void {
    if (generation === this.#generation) return;
    this.#map.clear();
    this.#generation = generation;
  }
}

/**
 * What the agent port's TLS sockets answer to getPeerCertificate() once answerPeerWithX509 ran:
 * `x509` is the certificate OpenSSL parsed and verified in the handshake; `raw` its DER.
 */
export interface TlsPeerCertificate { readonly raw: Buffer; readonly x509: X509Certificate }

/** The peer certificate handed over by answerPeerWithX509, if `cert` is one. */
export function tlsPeerX509(cert: unknown): X509Certificate | undefined {
  const x = (cert as Partial<TlsPeerCertificate> | undefined)?.x509;
  return x instanceof X509Certificate ? x : undefined;
}

/**
 * grpc-js builds each call's auth context from `socket.getPeerCertificate()`: Node's legacy
 * object (subject, issuer, public key, three fingerprints, ...), which cost the hub ~0.3 ms per
 * stream on OpenSSL 3, and of which the agent port used only `raw`, to parse it AGAIN into an
 * X509Certificate (~0.3 ms more): the certificate was parsed twice per connection besides TLS's
 * own parse. This makes `socket` (one of the hub's own agent-port sockets, at secureConnection)
 * answer getPeerCertificate() with the certificate TLS already holds (getPeerX509Certificate(),
 * a handle on OpenSSL's object: nothing parsed) and its DER. Read again on every call (never
 * cached per socket). getPeerCertificate(true) and a socket without a peer certificate get
 * Node's own answer; a grpc-js that stops calling it falls back to parsing `raw` (slower, same
 * checks). `onUse` counts the calls.
 */
export function answerPeerWithX509(socket: TLSSocket, onUse?: () => void): void {
  const legacy = socket.getPeerCertificate;
  const answer = (detailed?: boolean): PeerCertificate | TlsPeerCertificate => {
    if (detailed) return legacy.call(socket, true);
    const x509 = socket.getPeerX509Certificate();
    if (!x509) return legacy.call(socket);
    onUse?.();
    return { get raw() { return x509.raw; }, x509 };
  };
  Object.defineProperty(socket, 'getPeerCertificate', { value: answer, configurable: true, writable: true });
}
