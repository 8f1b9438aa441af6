/**
 * Input generation for the protocol fuzzer: a seeded PRNG, the wire contract loaded with
 * protobufjs from proto/ (so every RPC in the contract, including ones added later, is a
 * target), and three kinds of request bytes:
 *
 *  - random: random bytes (sometimes empty, sometimes large);
 *  - typed: a message built from the schema with hostile values (huge, unicode and control-character
 *    strings, prototype-pollution map keys, deep JSON, extreme numbers, long repeated fields,
 *    several members of a oneof, unknown fields), encoded with protobufjs;
 *  - mutated: a valid example message, encoded, then bit flips, truncation, inserted bytes and
 *    corrupted length prefixes.
 *
 * Everything is a function of (seed, case index): a case can be regenerated, and its bytes are
 * also written out when it fails (bench/fuzz/run.ts).
 */
import { mulberry32 } from '../prng.js';
import protobuf from 'protobufjs';
import { isAbsolute, join } from 'node:path';
import { PROTO_DIR, PROTO_FILES } from '../../common/proto.js';

// ------------------------------------------------------------------ PRNG

export type Rng = () => number;

export { mulberry32 };

/** The RNG of one case: independent of every other case, so a case replays alone. */
export function caseRng(seed: number, index: number): Rng {
  return mulberry32((Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(index + 1, 0x85ebca6b)) >>> 0);
}

export const int = (r: Rng, n: number): number => Math.floor(r() * n);
export const pick = <T>(r: Rng, xs: readonly T[]): T => xs[int(r, xs.length)]!;
export const chance = (r: Rng, p: number): boolean => r() < p;

export function randomBytes(r: Rng, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = int(r, 256);
  return b;
}

// ------------------------------------------------------------------ contract

export interface MethodSpec {
  /** "/trellis.v1.AdminKv/Set" */
  path: string;
  service: string;
  name: string;
  requestType: protobuf.Type;
  requestStream: boolean;
  responseStream: boolean;
  /** false for the made-up paths that probe UNIMPLEMENTED. */
  known: boolean;
}

let rootCache: protobuf.Root | undefined;

/** The contract as protobufjs types (camelCase field names, like the hub's loader). */
export function loadRoot(): protobuf.Root {
  if (rootCache) return rootCache;
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => (isAbsolute(target) ? target : join(PROTO_DIR, target));
  root.loadSync(PROTO_FILES, { keepCase: false });
  root.resolveAll();
  rootCache = root;
  return root;
}

/** Every method of every service in proto/, enumerated from the schema. */
export function contractMethods(): MethodSpec[] {
  const ns = loadRoot().lookup('trellis.v1') as protobuf.Namespace;
  const out: MethodSpec[] = [];
  for (const svc of ns.nestedArray) {
    if (!(svc instanceof protobuf.Service)) continue;
    for (const m of svc.methodsArray) {
      m.resolve();
      out.push({
        path: `/trellis.v1.${svc.name}/${m.name}`, service: svc.name, name: m.name, requestType: m.resolvedRequestType!,
        requestStream: !!m.requestStream, responseStream: !!m.responseStream, known: true,
      });
    }
  }
  return out;
}

/** Paths that are not in the contract: the hub must answer UNIMPLEMENTED. */
export function unknownMethods(): MethodSpec[] {
  const empty = loadRoot().lookupType('trellis.v1.GetVersionRequest');
  return ['/trellis.v1.AdminKv/Nope', '/trellis.v1.NoSuchService/Get', '/x/y', '/trellis.v1.AdminAuth/login']
    .map((path) => ({ path, service: path.split('/')[1] ?? '', name: path.split('/')[2] ?? '', requestType: empty, requestStream: false, responseStream: false, known: false }));
}

// ------------------------------------------------------------------ hostile values

const NASTY_STRINGS = [
  '', ' ', '*', '.', '..', '../../../../etc/passwd', '/', '\\', 'default', 'core', 'core.noop', 'admin', '__proto__', 'constructor',
  'prototype', 'toString', 'hasOwnProperty', 'null', 'undefined', 'NaN', 'true', '0', '-1', '1e309', '%s%n%x', '{{ secret.x }}',
  '{{ kv.a }}', '{{', '}}', '${PATH}', '$(id)', '`id`', "' OR '1'='1", '"', '\u0000', 'a\u0000b', '\n', '\r\n', '\u001b[2J',
  'valueOf', 'isPrototypeOf', '__defineGetter__', 'propertyIsEnumerable', '\u202e', '\ud800', '\udfff', '😀', 'Ω≈ç√', 'ǅ', '\ufeff', 'ﾟ', 'a'.repeat(64), 'a'.repeat(256), 'fz.action', 'pack:x', 'action:a.b',
  'spiffe://trellis/tenant/default/agent/x', 'tenant=default', 'a=b,c!=d', 'env in (prod, dev)', 'k', 'web.restart',
  '{"a":1}', '[]', '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n', '-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----',
  'trellis-join.v1.', 'tjt1_x', 'tak1_x', 'Bearer x', '0.0.0.0', '::1', 'localhost', 'file:///etc/passwd', 'http://169.254.169.254/',
];

const NASTY_JSON = [
  '{}', '[]', 'null', '0', '"x"', '{"__proto__":{"polluted":1}}', '{"constructor":{"prototype":{"x":1}}}', '{"a":', '{"a":1}{',
  '{"type":"core.cpu","payload":{"x":1},"agent":"a"}', '{"x":1e999}', '{"x":-0}', '\u0000', '\ufeff{}',
  '{"trigger":"core.cpu","action":"core.noop","name":"fz"}',
];

function randomString(r: Rng): string {
  switch (int(r, 10)) {
    case 0: case 1: return pick(r, NASTY_STRINGS);
    case 2: { // ascii
      const n = int(r, 40);
      let s = '';
      for (let i = 0; i < n; i++) s += String.fromCharCode(32 + int(r, 95));
      return s;
    }
    case 3: { // any code unit, lone surrogates included
      const n = int(r, 30);
      let s = '';
      for (let i = 0; i < n; i++) s += String.fromCharCode(int(r, 0x10000));
      return s;
    }
    case 4: { // control characters
      const n = 1 + int(r, 20);
      let s = '';
      for (let i = 0; i < n; i++) s += String.fromCharCode(int(r, 32));
      return s;
    }
    case 5: { // huge
      const n = pick(r, [1_000, 10_000, 70_000, 300_000]);
      return pick(r, ['a', 'é', '😀', '\u0000', '{{ kv.x }}', '../']).repeat(Math.ceil(n / 2));
    }
    case 6: return 'fz-' + Math.floor(r() * 1e9).toString(36);
    case 7: return pick(r, NASTY_JSON);
    case 8: return pick(r, NASTY_STRINGS) + pick(r, NASTY_STRINGS);
    default: return Math.floor(r() * 1e12).toString(36);
  }
}

function deepJson(r: Rng): string {
  const d = pick(r, [100, 5_000, 200_000]);
  return pick(r, [() => '['.repeat(d) + ']'.repeat(d), () => '{"a":'.repeat(d) + '1' + '}'.repeat(d)])();
}

function randomBytesField(r: Rng, name: string): Buffer {
  const jsonish = /json|payload|content|script|body|definition/i.test(name);
  switch (int(r, jsonish ? 6 : 3)) {
    case 0: return randomBytes(r, int(r, 64));
    case 1: return Buffer.from(randomString(r));
    case 2: return randomBytes(r, pick(r, [0, 1, 1024, 100_000]));
    case 3: return Buffer.from(deepJson(r));
    default: return Buffer.from(pick(r, NASTY_JSON));
  }
}

const INT32 = [0, 1, -1, 2 ** 31 - 1, -(2 ** 31), 1000, 86_400_000, 2 ** 30];
const INT64 = [0, 1, -1, 2 ** 53 - 1, -(2 ** 53) + 1, 2 ** 63, -(2 ** 63), 8.64e15, 1e18, 2 ** 31, 86_400_000];

function randomScalar(r: Rng, type: string, name: string): unknown {
  switch (type) {
    case 'string': return randomString(r);
    case 'bytes': return randomBytesField(r, name);
    case 'bool': return chance(r, 0.5);
    case 'double': case 'float': return pick(r, [0, -0, 1.5, -1, NaN, Infinity, -Infinity, 1e308, 5e-324, r() * 1e6]);
    case 'int32': case 'sint32': case 'sfixed32': return chance(r, 0.6) ? pick(r, INT32) : int(r, 2 ** 32) - 2 ** 31;
    case 'uint32': case 'fixed32': return chance(r, 0.6) ? pick(r, [0, 1, 2 ** 32 - 1, 0o777, 0o4755, 100]) : int(r, 2 ** 32);
    case 'int64': case 'sint64': case 'sfixed64': case 'uint64': case 'fixed64':
      return chance(r, 0.6) ? pick(r, INT64) : Math.floor((r() - 0.5) * 2 ** 53);
    default: return 0;
  }
}

function randomValue(r: Rng, f: protobuf.Field, depth: number): unknown {
  const t = f.resolvedType;
  if (t instanceof protobuf.Type) return depth >= 4 ? {} : randomMessage(r, t, depth + 1);
  if (t instanceof protobuf.Enum) return chance(r, 0.8) ? pick(r, Object.values(t.values)) : int(r, 2 ** 31);
  return randomScalar(r, f.type, f.name);
}

/** A hostile value for field `f`: a map, a list (sometimes long) or one value. */
function randomFieldValue(r: Rng, f: protobuf.Field, depth: number): unknown {
  if (f instanceof protobuf.MapField) {
    const m = Object.create(null) as Record<string, unknown>;
    const n = chance(r, 0.1) ? pick(r, [100, 2_000]) : int(r, 4);
    for (let i = 0; i < n; i++) {
      const k = chance(r, 0.3) ? pick(r, ['__proto__', 'constructor', 'toString', '', 'a'.repeat(300), 'x.y', 'k=v']) : String(randomScalar(r, f.keyType, f.name));
      m[k] = randomValue(r, f, depth);
    }
    return m;
  }
  if (f.repeated) {
    const n = chance(r, 0.1) ? pick(r, [100, 1_500]) : int(r, 4);
    return Array.from({ length: n }, () => randomValue(r, f, depth));
  }
  return randomValue(r, f, depth);
}

/** A message of `type` with hostile values: some fields unset, maps and lists sometimes long. */
export function randomMessage(r: Rng, type: protobuf.Type, depth = 0): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const f of type.fieldsArray) {
    if (chance(r, 0.35)) continue;
    out[f.name] = randomFieldValue(r, f, depth);
  }
  return out;
}

/** A plausible message: every field a sane value (names, small numbers): the base for mutations. */
export function plausibleMessage(r: Rng, type: protobuf.Type, depth = 0): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const f of type.fieldsArray) {
    if (chance(r, 0.3)) continue;
    const one = (): unknown => {
      const t = f.resolvedType;
      if (t instanceof protobuf.Type) return depth >= 3 ? {} : plausibleMessage(r, t, depth + 1);
      if (t instanceof protobuf.Enum) return pick(r, Object.values(t.values));
      if (f.type === 'string') return 'fz-' + int(r, 1000);
      if (f.type === 'bytes') return Buffer.from(pick(r, ['{}', '{"x":1}', 'hello']));
      if (f.type === 'bool') return chance(r, 0.5);
      return int(r, 100);
    };
    if (f instanceof protobuf.MapField) {
      const m = Object.create(null) as Record<string, unknown>;
      m[`k${int(r, 10)}`] = one();
      out[f.name] = m;
    } else out[f.name] = f.repeated ? [one()] : one();
  }
  return out;
}

// ------------------------------------------------------------------ wire-level

function varint(n: number): Buffer {
  const out: number[] = [];
  let v = BigInt.asUintN(64, BigInt(Math.trunc(n)));
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) b |= 0x80;
    out.push(b);
  } while (v > 0n);
  return Buffer.from(out);
}

/** An unknown field (number ≥ 1000 or a reserved-looking one) with a random wire type. */
export function unknownField(r: Rng): Buffer {
  const num = pick(r, [1000 + int(r, 100_000), 19_000, 536_870_911, 15 + int(r, 20)]);
  const wt = pick(r, [0, 1, 2, 5, 3, 4, 6, 7]); // 3/4 are groups, 6/7 are invalid wire types
  const tag = varint(num * 8 + wt);
  switch (wt) {
    case 0: return Buffer.concat([tag, varint(int(r, 2 ** 31))]);
    case 1: return Buffer.concat([tag, randomBytes(r, 8)]);
    case 5: return Buffer.concat([tag, randomBytes(r, 4)]);
    case 2: { const body = randomBytes(r, int(r, 40)); return Buffer.concat([tag, varint(body.length), body]); }
    default: return Buffer.concat([tag, randomBytes(r, int(r, 8))]);
  }
}

/** Offsets of the length prefixes of top-level length-delimited fields (for length corruption). */
export function lengthPrefixes(buf: Buffer): Array<{ at: number; len: number; size: number }> {
  const out: Array<{ at: number; len: number; size: number }> = [];
  let i = 0;
  const readVarint = (): number | undefined => {
    let v = 0, shift = 0;
    while (i < buf.length && shift < 64) {
      const b = buf[i++]!;
      v += (b & 0x7f) * 2 ** shift;
      if (!(b & 0x80)) return v;
      shift += 7;
    }
    return undefined;
  };
  while (i < buf.length) {
    const tag = readVarint();
    if (tag === undefined) break;
    const wt = tag % 8;
    if (wt === 0) { if (readVarint() === undefined) break; }
    else if (wt === 1) i += 8;
    else if (wt === 5) i += 4;
    else if (wt === 2) {
      const at = i;
      const len = readVarint();
      if (len === undefined) break;
      out.push({ at, len, size: i - at });
      i += len;
    } else break;
  }
  return out;
}

/** 1–4 mutations of `buf`. */
export function mutate(r: Rng, buf: Buffer): Buffer {
  let b = Buffer.from(buf);
  const n = 1 + int(r, 4);
  for (let k = 0; k < n; k++) {
    switch (int(r, 8)) {
      case 0: if (b.length) { const i = int(r, b.length); b[i] = b[i]! ^ (1 << int(r, 8)); } break; // bit flip
      case 1: if (b.length) b[int(r, b.length)] = pick(r, [0, 0xff, 0x7f, 0x80, int(r, 256)]); break;
      case 2: b = b.subarray(0, int(r, b.length + 1)); break; // truncation
      case 3: { const i = int(r, b.length + 1); b = Buffer.concat([b.subarray(0, i), randomBytes(r, 1 + int(r, 16)), b.subarray(i)]); break; }
      case 4: { // length-prefix corruption
        const lp = lengthPrefixes(b);
        if (!lp.length) break;
        const p = pick(r, lp);
        const len = pick(r, [0, p.len + 1, p.len - 1, p.len * 2 + 7, 2 ** 31 - 1, 2 ** 32 + 5, 2 ** 62]);
        b = Buffer.concat([b.subarray(0, p.at), varint(Math.max(0, len)), b.subarray(p.at + p.size)]);
        break;
      }
      case 5: b = Buffer.concat([b, unknownField(r)]); break;
      case 6: { if (!b.length) break; const i = int(r, b.length), j = i + int(r, b.length - i + 1); b = Buffer.concat([b, b.subarray(i, j)]); break; } // duplicate a region
      default: { if (!b.length) break; const i = int(r, b.length); b = Buffer.concat([b.subarray(0, i), b.subarray(i + 1 + int(r, 8))]); } // delete bytes
    }
  }
  return b;
}

/** Encodes a plain object as `type` (protobufjs writes every set field, oneof siblings included). */
export function encode(type: protobuf.Type, obj: Record<string, unknown>): Buffer {
  return Buffer.from(type.encode(obj as unknown as protobuf.Message).finish());
}

/** Replaces one token of a YAML/JSON text (a rule or pack file) with a hostile one. */
export function mutateText(r: Rng, text: string): string {
  const parts = text.split(/(\s+|[:,{}\[\]"])/);
  const n = 1 + int(r, 3);
  for (let k = 0; k < n; k++) {
    const i = int(r, parts.length);
    parts[i] = chance(r, 0.5) ? randomString(r) : pick(r, ['', '*', '(a+)+$', '{{ secret.x }}', '{{ kv.a }}{{', '!!js/function', '&a [*a, *a]', '<<: *x', '1e999', '-1', 'null', '[]', '{}',
      '"' + 'a'.repeat(100_000) + '"', '\u0000', '\n- x\n- y', '${HOME}', 'trigger.payload.__proto__.x', '(?=a)*', '^(a|a)*$']);
  }
  return parts.join('');
}

function isTextField(v: unknown): v is string | Buffer {
  const t = typeof v === 'string' ? v : Buffer.isBuffer(v) ? v.toString('utf8') : '';
  return t.length > 20 && /[\n{:]/.test(t);
}

/**
 * A valid example with one field (top level or one level down) replaced by a hostile value, or its
 * YAML/JSON text mutated: passes the decoder and most validation, reaches the code behind it.
 */
export function tweak(r: Rng, type: protobuf.Type, base: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  const fields = type.fieldsArray;
  if (!fields.length) return out;
  const f = pick(r, fields);
  const cur = out[f.name];
  if (isTextField(cur) && chance(r, 0.7)) {
    const text = mutateText(r, Buffer.isBuffer(cur) ? cur.toString('utf8') : cur);
    out[f.name] = Buffer.isBuffer(cur) ? Buffer.from(text) : text;
  } else if (Array.isArray(cur) && cur.length && f.resolvedType instanceof protobuf.Type && chance(r, 0.6)) {
    const i = int(r, cur.length);
    const copy = [...cur];
    copy[i] = tweak(r, f.resolvedType, cur[i] as Record<string, unknown>);
    out[f.name] = copy;
  } else if (cur && typeof cur === 'object' && !Array.isArray(cur) && !Buffer.isBuffer(cur) && f.resolvedType instanceof protobuf.Type && chance(r, 0.6)) {
    out[f.name] = tweak(r, f.resolvedType, cur as Record<string, unknown>);
  } else if (f.type === 'string' && !f.repeated && !(f instanceof protobuf.MapField) && chance(r, 0.5)) {
    out[f.name] = pick(r, NASTY_STRINGS); // names: lookups, prototypes, paths, templates
  } else {
    out[f.name] = randomFieldValue(r, f, 2);
  }
  return out;
}

export type CaseKind = 'random' | 'typed' | 'mutated' | 'tweaked';

/**
 * Request bytes of one case. `examples` are valid messages of the type (plain objects) to mutate;
 * when none are given a plausible message is generated.
 */
export function caseBytes(r: Rng, kind: CaseKind, type: protobuf.Type, examples: Array<Record<string, unknown>>): Buffer {
  switch (kind) {
    case 'random': return randomBytes(r, chance(r, 0.1) ? pick(r, [0, 5_000, 60_000]) : int(r, 200));
    case 'typed': {
      let b = encode(type, randomMessage(r, type));
      if (chance(r, 0.3)) b = Buffer.concat([b, unknownField(r)]);
      return b;
    }
    case 'mutated': {
      const base = examples.length && chance(r, 0.8) ? pick(r, examples) : plausibleMessage(r, type);
      return mutate(r, encode(type, base));
    }
    case 'tweaked': {
      const base = examples.length && chance(r, 0.85) ? pick(r, examples) : plausibleMessage(r, type);
      return encode(type, tweak(r, type, base));
    }
  }
}
