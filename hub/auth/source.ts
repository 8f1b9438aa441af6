/**
 * The source of a call, as limits, lock-outs and the refusal throttles (hub/audit/throttle.ts,
 * hub/grpc/refusals.ts) count it: the one place a peer string becomes a source. The peer's IP
 * address without its port (and without grpc-js's `ipv4:`/`ipv6:` scheme). An IPv4-mapped IPv6
 * address counts as the IPv4 address; an IPv6 address counts by its /64 (one host or site usually
 * holds a whole /64, so counting single addresses would give it 2^64 tries, or 2^64 distinct
 * refusals to record).
 */
import { isIPv4, isIPv6 } from 'node:net';

/** "1.2.3.4:567", "[::1]:567", "::ffff:1.2.3.4", "1.2.3.4", "ipv4:1.2.3.4:567" → the key limits count by. */
export function sourceKey(peer: string | undefined): string {
  peer = peer?.replace(/^ipv[46]:/, '');
  if (!peer) return 'unknown';
  let host = peer;
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(peer);
  if (bracketed) host = bracketed[1]!;
  else if (/^[^:]+:\d+$/.test(peer)) host = peer.slice(0, peer.lastIndexOf(':'));
  else if (!isIPv6(peer)) {
    const v6WithPort = /^(.*):\d+$/.exec(peer); // an unbracketed IPv6 address followed by a port
    if (v6WithPort && isIPv6(v6WithPort[1]!)) host = v6WithPort[1]!;
  }
  host = host.replace(/%.*$/, ''); // zone index
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(host);
  if (mapped) host = mapped[1]!;
  if (isIPv4(host)) return host;
  if (isIPv6(host)) return `${ipv6Prefix64(host)}::/64`;
  return host.slice(0, 100);
}

/** The first four 16-bit groups of an IPv6 address, written in full. */
function ipv6Prefix64(addr: string): string {
  const [head, tail] = addr.includes('::') ? addr.split('::') as [string, string] : [addr, undefined];
  const h = head ? head.split(':') : [];
  const t = tail === undefined ? [] : (tail ? tail.split(':') : []);
  // An embedded IPv4 tail counts as two groups.
  const groups = (xs: string[]) => xs.flatMap((g) => (g.includes('.') ? ['0', '0'] : [g]));
  const hg = groups(h);
  const tg = groups(t);
  const full = tail === undefined ? hg : [...hg, ...Array(8 - hg.length - tg.length).fill('0'), ...tg];
  return full.slice(0, 4).map((g) => (parseInt(g, 16) || 0).toString(16)).join(':');
}
