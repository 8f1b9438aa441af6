/** Distinguished names, subjectAltName GeneralNames and IP address normalisation. */
import net from 'node:net';
import { TrellisError } from '../common/errors.js';
import {
  OID,
  TAG,
  children,
  content,
  expectTag,
  DerError,
  implicitPrim,
  oid,
  readOid,
  readString,
  seq,
  set,
  utf8,
  type Node,
  type Tlv,
} from './der.js';

export interface Name {
  commonName?: string;
  organization?: string;
  organizationalUnit?: string;
}

const NAME_FIELDS: [keyof Name, string][] = [
  ['organization', OID.organization],
  ['organizationalUnit', OID.organizationalUnit],
  ['commonName', OID.commonName],
];

const bad = (msg: string): TrellisError => new TrellisError('TRELLIS_E_INVALID_ARGUMENT', msg);

/** Name as RDNSequence, most significant first (O, OU, CN), each value a UTF8String. */
export function encodeName(name: Name): Node {
  const rdns: Node[] = [];
  for (const [field, o] of NAME_FIELDS) {
    const v = name[field];
    if (v === undefined) continue;
    if (typeof v !== 'string' || v.length === 0 || v.length > 64 || v.includes('\0')) {
      throw bad(`subject ${field} must be a string of 1..64 characters without NUL`);
    }
    rdns.push(set(seq(oid(o), utf8(v))));
  }
  return seq(...rdns);
}

export const isEmptyName = (n: Name): boolean =>
  n.commonName === undefined && n.organization === undefined && n.organizationalUnit === undefined;

/** Decodes CN / O / OU from a Name; other attribute types are ignored, duplicates rejected. */
export function decodeName(t: Tlv): Name {
  expectTag(t, TAG.SEQUENCE, 'Name');
  const out: Name = {};
  for (const rdn of children(t)) {
    expectTag(rdn, TAG.SET, 'RelativeDistinguishedName');
    for (const atv of children(rdn)) {
      const [type, value, extra] = children(expectTag(atv, TAG.SEQUENCE, 'AttributeTypeAndValue'));
      if (!type || !value || extra) throw new DerError('malformed AttributeTypeAndValue');
      const field = NAME_FIELDS.find(([, o]) => o === readOid(type))?.[0];
      if (!field) continue;
      if (out[field] !== undefined) throw new DerError(`duplicate ${field} in name`);
      out[field] = readString(value);
    }
  }
  return out;
}

// ---------------------------------------------------------------- IP addresses

/** 4 or 16 raw bytes for an IPv4 / IPv6 literal, or null when s is not one (zone ids rejected). */
export function parseIp(s: string): Buffer | null {
  if (net.isIPv4(s)) return Buffer.from(s.split('.').map(Number));
  if (!net.isIPv6(s) || s.includes('%')) return null;
  let text = s;
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (v4) {
    const [a, b, c, d] = v4.slice(1, 5).map(Number) as [number, number, number, number];
    text = text.slice(0, v4.index) + ((a << 8) | b).toString(16) + ':' + ((c << 8) | d).toString(16);
  }
  const [headS, tailS] = text.includes('::') ? text.split('::') : [text, undefined];
  const parse = (p: string | undefined): number[] => (p ? p.split(':').map((h) => parseInt(h, 16)) : []);
  const head = parse(headS);
  const rest = parse(tailS);
  const fill = 8 - head.length - rest.length;
  if (tailS !== undefined && fill < 1) return null;
  const groups = tailS === undefined ? head : [...head, ...new Array<number>(fill).fill(0), ...rest];
  if (groups.length !== 8 || groups.some((g) => !(g >= 0 && g <= 0xffff))) return null;
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(g, i * 2));
  return out;
}

/** Canonical text: dotted IPv4, RFC 5952 IPv6 (lowercase, longest zero run compressed). */
export function formatIp(b: Buffer): string {
  if (b.length === 4) return [...b].join('.');
  if (b.length !== 16) return `<invalid ${b.length}-byte address ${b.toString('hex')}>`;
  const g: number[] = [];
  for (let i = 0; i < 16; i += 2) g.push(b.readUInt16BE(i));
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j;
  }
  const hex = (xs: number[]): string => xs.map((x) => x.toString(16)).join(':');
  if (best < 0) return hex(g);
  return `${hex(g.slice(0, best))}::${hex(g.slice(best + bestLen))}`;
}

/** Normalised form of an IP literal (for comparisons), or null. */
export function normalizeIp(s: string): string | null {
  const b = parseIp(s);
  return b ? formatIp(b) : null;
}

// ---------------------------------------------------------------- GeneralNames

export interface SanNames {
  dnsNames: string[];
  ipAddresses: string[];
  uris: string[];
}

const DNS_RE = /^(\*\.)?([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*$/;
const URI_RE = /^[A-Za-z][A-Za-z0-9+.-]*:[\x21-\x7e]+$/;

export function validateDnsName(n: string): void {
  if (typeof n !== 'string' || n.length > 253 || !DNS_RE.test(n)) {
    throw bad(`invalid DNS name '${String(n)}' (ASCII labels; a wildcard only as the whole leftmost label)`);
  }
}

export function validateUri(u: string): void {
  if (typeof u !== 'string' || u.length > 2048 || !URI_RE.test(u)) {
    throw bad(`invalid URI '${String(u)}' (needs a scheme, printable ASCII, no spaces)`);
  }
}

/** GeneralNames SEQUENCE (undefined when there are no names). Validates every entry. */
export function encodeGeneralNames(names: Partial<SanNames>): Node | undefined {
  const items: Node[] = [];
  for (const d of names.dnsNames ?? []) {
    validateDnsName(d);
    items.push(implicitPrim(2, Buffer.from(d, 'latin1')));
  }
  for (const ip of names.ipAddresses ?? []) {
    const b = typeof ip === 'string' ? parseIp(ip) : null;
    if (!b) throw bad(`invalid IP address '${String(ip)}'`);
    items.push(implicitPrim(7, b));
  }
  for (const u of names.uris ?? []) {
    validateUri(u);
    items.push(implicitPrim(6, Buffer.from(u, 'latin1')));
  }
  return items.length ? seq(...items) : undefined;
}

/** Decodes GeneralNames; types other than dNSName / iPAddress / URI are skipped. */
export function decodeGeneralNames(t: Tlv): SanNames {
  const out: SanNames = { dnsNames: [], ipAddresses: [], uris: [] };
  for (const gn of children(expectTag(t, TAG.SEQUENCE, 'GeneralNames'))) {
    const c = content(gn);
    if (gn.tag === 0x82) out.dnsNames.push(c.toString('latin1'));
    else if (gn.tag === 0x86) out.uris.push(c.toString('latin1'));
    else if (gn.tag === 0x87) {
      if (c.length !== 4 && c.length !== 16) throw new DerError(`iPAddress of ${c.length} bytes`);
      out.ipAddresses.push(formatIp(c));
    }
  }
  return out;
}
