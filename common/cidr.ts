/**
 * Address ranges in CIDR notation ("10.0.0.0/8", "::1/128"), checked with node:net's BlockList.
 * An IPv4 client seen as an IPv4-mapped IPv6 address (::ffff:10.1.2.3) matches IPv4 ranges.
 */
import { BlockList, isIP } from 'node:net';

export interface Cidr { address: string; prefix: number; family: 'ipv4' | 'ipv6' }

/** The range, or undefined when `text` is not one (a bare address is not accepted: say /32 or /128). */
export function parseCidr(text: string): Cidr | undefined {
  const m = /^([0-9a-fA-F:.]+)\/(\d{1,3})$/.exec(text.trim());
  if (!m) return undefined;
  const v = isIP(m[1]!);
  const prefix = Number(m[2]);
  if (v === 0 || prefix > (v === 4 ? 32 : 128)) return undefined;
  return { address: m[1]!, prefix, family: v === 4 ? 'ipv4' : 'ipv6' };
}

/** A matcher over ranges; `matches(addr)` is false for anything that is not an IP address. */
export function cidrMatcher(ranges: readonly string[]): { matches(address: string | undefined): boolean; readonly empty: boolean } {
  const list = new BlockList();
  let n = 0;
  for (const r of ranges) {
    const c = parseCidr(r);
    if (!c) throw new RangeError(`not a CIDR range: ${r.slice(0, 64)}`);
    list.addSubnet(c.address, c.prefix, c.family);
    n++;
  }
  return {
    empty: n === 0,
    matches(address) {
      if (!address || n === 0) return false;
      const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
      const a = mapped ? mapped[1]! : address;
      const v = isIP(a);
      if (v === 0) return false;
      return list.check(a, v === 4 ? 'ipv4' : 'ipv6');
    },
  };
}
