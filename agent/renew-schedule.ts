/**
 * When an agent renews its certificate: at `fraction` (2/3 by default) of the certificate's life,
 * counted from its own notBefore to its notAfter, or earlier when the hub ordered a renewal (a CA
 * rotation). Pure, so tests check it with a real certificate's dates.
 */

/** Renew at this fraction of the certificate's life unless configured otherwise (AgentOptions.renewAt). */
export const DEFAULT_RENEW_AT = 2 / 3;

/** The renewal moment in ms since the epoch. */
export function renewalTime(cert: { notBefore: Date; notAfter: Date }, fraction = DEFAULT_RENEW_AT, orderedAtMs?: number): number {
  const nb = cert.notBefore.getTime();
  const at = nb + (cert.notAfter.getTime() - nb) * fraction;
  return Math.min(at, orderedAtMs ?? Infinity);
}
