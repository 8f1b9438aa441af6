/**
 * What the agent port derived from a verified client certificate (identity, serial, expiry), by
 * the SHA-256 of its DER bytes: a reconnecting agent is not parsed and verified again. Bounded
 * (least recently used dropped first) and emptied when the CAs the hub accepts change. Revocation
 * and expiry are not cached: identifyPeer checks them on every stream.
 */

export interface CertFacts { agentId: string; tenant: string; serial: string; notAfter: number; certPem: string }

/** Entries kept: a large fleet (an entry of a connected agent shares its PEM with the link). */
export const PEER_CACHE_MAX = 20_000;

export class PeerCertCache {
  /** parsed: misses (their certificate parsed from its DER bytes and its issuer's signature checked). */
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
