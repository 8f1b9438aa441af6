/**
 * Rules read only the payload fields their criteria name (hub/rules/payload-fields.ts). The
 * scanner must agree with JSON.parse(payload.toString('utf8')) on every payload: what is JSON,
 * and the value of every wanted top-level field. Differential tests over hand-picked edge cases
 * and seeded random mutations of real payloads; then the same rules matched against the reduced
 * and the whole event give the same answer. Both scanners: the WebAssembly one (hub/rules
 * payload-scan.c, the default) and the TypeScript one (the reference and its fallback); every
 * differential test also checks that the one it names answered, so that a silent fallback cannot
 * make it pass.
 */
import t, { type Test } from 'tap';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { FULL_PARSE, PayloadFields, type ScannerChoice } from '../hub/rules/payload-fields.js';
import { PAYLOAD_SCAN_SOURCE_SHA256 } from '../hub/rules/payload-scan-wasm.js';
import { reducedTrigger, triggerOf } from '../hub/rules/index.js';
import { compileRule, payloadKeysOf } from '../common/rules/index.js';
import type { RuleDef } from '../common/automation/types.js';
import type { HubEvent } from '../hub/events/index.js';
import { mulberry32 } from '../bench/prng.js';

const KEYS = ['percent', 'host', 'tags', 'nested', '__proto__', 'é', 'a"b', 'x', ''];

/** What rules saw before: the payload parsed whole, null when not JSON. */
function reference(buf: Buffer): unknown {
  try { return JSON.parse(buf.toString('utf8')); } catch { return null; }
}

const own = (o: unknown, k: string) => (o !== null && typeof o === 'object' && !Array.isArray(o) && Object.prototype.hasOwnProperty.call(o, k) ? (o as Record<string, unknown>)[k] : undefined);

/** Compares the scanner with JSON.parse on one payload; returns a description of the first difference, or ''. */
const answeredBy = { wasm: 0, typescript: 0 };
function differs(pf: PayloadFields, buf: Buffer): string {
  const ref = reference(buf);
  let got = pf.read(buf);
  answeredBy[pf.lastScanner!]++;
  if (got === FULL_PARSE) {
    if (ref === null || typeof ref !== 'object' || Array.isArray(ref)) return ''; // parsed whole by the caller: same by construction
    return 'FULL_PARSE for an object';
  }
  if (got === null) return ref === null ? '' : `not JSON, JSON.parse: ${JSON.stringify(ref).slice(0, 80)}`;
  if (ref === null || typeof ref !== 'object' || Array.isArray(ref)) return `fields for a non-object (${JSON.stringify(ref)?.slice(0, 40)})`;
  for (const k of pf.keys) {
    const a = own(got, k), b = own(ref, k);
    if (!Object.is(a, b) && JSON.stringify(a) !== JSON.stringify(b)) return `field ${JSON.stringify(k)}: ${JSON.stringify(a)} vs ${JSON.stringify(b)}`;
    if ((a === undefined) !== (b === undefined)) return `field ${JSON.stringify(k)} presence`;
  }
  got = null;
  return '';
}

const CASES = [
  '{"percent":42.5,"host":"web-01","tags":["a","b"],"nested":{"percent":1,"x":[1,{"host":2}]}}',
  '{}', ' { } ', '{"x":1}', '{"x":1,}', '{"x":1 "y":2}', '{"x"}', '{"x":}', '{x:1}', "{'x':1}", '{"x":1}}', '{"x":1} x', '{"x":[1,]}', '{"x":[,1]}',
  '{"x":01}', '{"x":-0}', '{"x":-}', '{"x":1.}', '{"x":.5}', '{"x":1e5}', '{"x":1E+5}', '{"x":1e}', '{"x":-1.5e-3}', '{"x":1e400}', '{"x":123456789012345678901234567890}',
  '{"x":true}', '{"x":tru}', '{"x":truex}', '{"x":null}', '{"x":nul}', '{"x":false}', '{"x":NaN}', '{"x":Infinity}', '{"x":+1}',
  '{"x":"a\\"b"}', '{"x":"\\u00e9\\ud83d\\ude00"}', '{"x":"\\u00G9"}', '{"x":"\\x41"}', '{"x":"\\/\\b\\f\\n\\r\\t"}', '{"x":"a\tb"}', '{"x":"a\nb"}', '{"x":"a\u007fb"}',
  '{"x":1,"x":2}', '{"x":{"a":1},"x":"last"}', '{"__proto__":{"polluted":1}}', '{"\\u0078":"escaped key"}', '{"\\u00e9":1,"é":2}', '{"é":"é"}', '{"a\\"b":3}', '{"":"empty key"}',
  '[1,2]', '"text"', '42', 'null', '', '   ', '\ufeff{"x":1}', '{"x":1}\u0000', '{"x":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}',
  '{"x":{"x":{"x":{"x":1}}},"percent":7}', '{"tags":[]}', '{"tags":[{}]}', '{"host":"\\"quoted\\""}', '{"x":"\u2028\u2029"}', '{ "x" : 1 , "percent" : 2 }', '{\r\n\t"x":1\r\n}', '{"x":1}\n',
];

for (const [name, scanner] of [['WebAssembly scanner', 'auto'], ['TypeScript scanner', 'typescript']] as [string, ScannerChoice][]) {
/** Checks that the scanner under test answered at least `share` of the reads since `before`. */
const answered = (t: Test, before: typeof answeredBy, share: number) => {
  const own = scanner === 'auto' ? 'wasm' : 'typescript';
  const reads = answeredBy.wasm + answeredBy.typescript - before.wasm - before.typescript;
  const mine = answeredBy[own] - before[own];
  t.ok(mine >= share * reads, `the ${own} scanner answered ${mine} of ${reads} reads`);
};
t.test(`${name}: agrees with JSON.parse on edge cases (validity, numbers, escapes, duplicate keys, __proto__, non-objects)`, async (t) => {
  const pf = new PayloadFields(KEYS, { scanner });
  const before = { ...answeredBy };
  const bad = CASES.map((c) => [c, differs(pf, Buffer.from(c, 'utf8'))]).filter(([, d]) => d);
  t.same(bad, [], 'no differences');
  // Invalid UTF-8 inside a string is accepted as U+FFFD (as toString + JSON.parse), outside a string it is not JSON.
  for (const b of [Buffer.from([0x7b, 0x22, 0x78, 0x22, 0x3a, 0x22, 0xff, 0xe2, 0x22, 0x7d]), Buffer.from([0x7b, 0x22, 0x78, 0x22, 0x3a, 0xff, 0x7d]), Buffer.from([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d])]) {
    t.equal(differs(new PayloadFields(['x', '\ufffd'], { scanner }), b), '', `bytes ${b.toString('hex')}`);
  }
  const got = pf.read(Buffer.from('{"__proto__":{"polluted":1}}')) as Record<string, unknown>;
  t.same(got.__proto__, { polluted: 1 }, '__proto__ is an ordinary field');
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'no prototype touched');
  answered(t, before, 0.8);
});

t.test(`${name}: agrees with JSON.parse on 30,000 seeded random mutations of payloads`, async (t) => {
  const before = { ...answeredBy };
  const rnd = mulberry32(13);
  const bases = [
    JSON.stringify({ host: 'web-01.example.internal', percent: 42.5, load1: 0.7, cpus: 8, tags: ['prod', 'eu-west-1'], note: 'x'.repeat(40), nested: { percent: [1, 2, { host: 'h' }] } }),
    JSON.stringify({ 'é': 'ü\u2603', x: '\\"\n', percent: -1e-7, tags: [], a: null, b: true, c: false }),
    '{"x":1,"x":{"y":[1,2,3]},"percent":"95"}',
  ];
  const alphabet = '{}[]":,.-+eE0123456789 \\/tfnrlsua\n\t\u0000é';
  const pf = new PayloadFields(KEYS, { scanner });
  const diffs: string[] = [];
  for (let n = 0; n < 30_000; n++) {
    let s = bases[n % bases.length]!;
    for (let m = 1 + Math.floor(rnd() * 3); m > 0; m--) {
      const at = Math.floor(rnd() * (s.length + 1));
      const ch = alphabet[Math.floor(rnd() * alphabet.length)]!;
      const op = rnd();
      s = op < 0.4 ? s.slice(0, at) + s.slice(at + 1) : op < 0.8 ? s.slice(0, at) + ch + s.slice(at) : op < 0.9 ? s.slice(0, at) : s.slice(0, at) + ch + s.slice(at + 1);
    }
    const d = differs(pf, Buffer.from(s, 'utf8'));
    if (d && diffs.length < 5) diffs.push(`${JSON.stringify(s)}: ${d}`);
  }
  t.same(diffs, [], 'no differences');
  answered(t, before, 0.6); // a third of the payloads have a non-ASCII key: the TypeScript scanner decides those
});

t.test(`${name}: long strings (read 4 or 16 bytes at a time): every special byte at every offset and alignment`, async (t) => {
  // Strings are read a word at a time (TypeScript: 4 bytes, for payloads of 64 bytes and more;
  // WebAssembly: 16); a special byte (quote, backslash, control character, non-ASCII) at any
  // offset within a word, and a string starting at any alignment, must give what JSON.parse
  // gives (including "not JSON").
  const before = { ...answeredBy };
  const pf = new PayloadFields(['x', 'host', 'percent'], { scanner });
  const specials = ['\\"', '\\\\', '\\n', '\\u00e9', '\u00e9', '\u2603', '\ud83d\ude00', '\t', '\u0001', '\u001f', '\u007f', ' ', '~', '"', '\\', '\\x'];
  const diffs: string[] = [];
  let cases = 0;
  for (let pad = 0; pad < 16; pad++) {
    for (let len = 0; len < 18; len++) {
      for (const sp of specials) {
        for (let at = 0; at <= len; at++) {
          const body = 'a'.repeat(at) + sp + 'b'.repeat(len - at) + 'c'.repeat(70);
          const text = `{${' '.repeat(pad)}"host":"web-01","x":"${body}","percent":${len}.5}`;
          const d = differs(pf, Buffer.from(text, 'utf8'));
          cases++;
          if (d && diffs.length < 5) diffs.push(`${JSON.stringify(text)}: ${d}`);
        }
      }
    }
  }
  // Raw bytes a JS string cannot spell as UTF-8: lone continuation bytes and truncated sequences inside a long string.
  for (const bad of [[0x80], [0xff], [0xc3], [0xe2, 0x98], [0xf0, 0x9f, 0x98]]) {
    for (let at = 0; at < 20; at++) {
      const b = Buffer.concat([Buffer.from(`{"x":"${'a'.repeat(at)}`), Buffer.from(bad), Buffer.from(`${'z'.repeat(80)}","percent":1}`)]);
      const d = differs(new PayloadFields(['x', 'percent'], { scanner }), b);
      cases++;
      if (d && diffs.length < 5) diffs.push(`${b.toString('hex')}: ${d}`);
    }
  }
  t.ok(cases > 40_000, `${cases} payloads`);
  t.same(diffs, [], 'no differences');
  answered(t, before, 0.99);
});

t.test(`${name}: every prefix and every one-byte change of a payload (ends of input, the 0 after it)`, async (t) => {
  const before = { ...answeredBy };
  const pf = new PayloadFields(['host', 'percent', 'tags', 'note'], { scanner });
  const text = Buffer.from(JSON.stringify({ host: 'web-01.example.internal', percent: -42.5e-1, tags: ['prod', 'eu'], ok: true, no: false, none: null, note: 'x'.repeat(40), u: '\u00e9\"' }));
  const diffs: string[] = [];
  for (let end = 0; end <= text.length; end++) {
    const d = differs(pf, text.subarray(0, end));
    if (d && diffs.length < 5) diffs.push(`prefix ${end}: ${d}`);
  }
  for (let at = 0; at < text.length; at++) {
    for (const byte of [0x00, 0x09, 0x20, 0x22, 0x2c, 0x30, 0x3a, 0x5c, 0x5d, 0x7d, 0x80, 0xff]) {
      const b = Buffer.from(text);
      b[at] = byte;
      const d = differs(pf, b);
      if (d && diffs.length < 5) diffs.push(`byte ${at} = ${byte}: ${d}`);
    }
  }
  t.same(diffs, [], 'no differences');
  answered(t, before, 0.9); // a key changed to hold a backslash or a byte ≥ 0x80: the TypeScript scanner decides it
});
}

t.test('values are decoded when read, from the payload of the last read only', async (t) => {
  const pf = new PayloadFields(['host', 'percent', 'tags']);
  const a = pf.read(Buffer.from(`{"host":"web-01","percent":42.5,"tags":["a"],"note":"${'n'.repeat(80)}"}`)) as Record<string, unknown>;
  t.same(Object.keys(a), ['host', 'percent', 'tags'], 'every wanted key is an own, enumerable property');
  t.equal(a.percent, 42.5);
  t.equal(a.percent, 42.5, 'read twice, same value');
  // A second read answers the same object, now with the second payload's values: also for a
  // field decoded from the first payload and one absent from the second.
  const b = pf.read(Buffer.from('{"host":"db-02","tags":{"k":1}}')) as Record<string, unknown>;
  t.equal(b, a, 'the answer object is reused');
  t.equal(b.percent, undefined, 'absent in the second payload: undefined, not the first payload\'s value');
  t.equal(b.host, 'db-02');
  t.same(b.tags, { k: 1 });
  t.ok(Object.prototype.hasOwnProperty.call(b, 'percent'), 'an absent key is still an own property (read as undefined)');
  // release() lets go of the payload (a slice of a gRPC message that may be megabytes): the
  // answer then reads every field as undefined, and a later read works as before.
  const big = Buffer.alloc(1 << 20, 0x20);
  big.write('{"host":"web-09","percent":7}', 1000);
  const c = pf.read(big.subarray(1000, 1000 + 29)) as Record<string, unknown>;
  t.equal(c.host, 'web-09');
  pf.release();
  t.equal((pf as unknown as { buf: Buffer }).buf.length, 0, 'no reference to the payload is kept');
  t.ok((pf as unknown as { values: unknown[] }).values.every((v) => v === undefined), 'nor any value decoded from it');
  t.equal(c.host, undefined, 'a released answer reads undefined');
  t.equal(c.percent, undefined);
  const d = pf.read(Buffer.from('{"percent":3}')) as Record<string, unknown>;
  t.equal(d.percent, 3, 'a read after release');
  pf.read(Buffer.from(`{"x":"${'y'.repeat(100)}"`)); // not JSON (no closing brace), 64 bytes and more
  t.equal((pf as unknown as { view?: DataView }).view, undefined, 'no view of a payload is kept after a read, whatever its answer');
});

t.test('rules match the reduced event exactly as the whole event', async (t) => {
  const defs: RuleDef[] = [
    { 'trigger.payload.percent': { type: 'gt', pattern: 90 } },
    { 'payload.host': { type: 'startswith', pattern: 'web-' }, 'trigger.payload.tags': { type: 'contains', pattern: 'prod' } },
    { 'trigger.payload.nested.percent.2.host': { type: 'equals', pattern: 'h' } },
    { 'trigger.payload.x': { type: 'exists' } },
    { 'trigger.payload.x': { type: 'nexists' }, 'trigger.agent': { type: 'equals', pattern: 'a1' } },
    { 'trigger.payload.0': { type: 'equals', pattern: 1 } },
  ].map((criteria, i) => ({ ref: `r${i}`, trigger: 't', criteria, action: { ref: 'p.a', parameters: {} }, target: { kind: 'agent', agent: 'x' }, enabled: true, cooldownMs: 0 }) as unknown as RuleDef);
  const rules = defs.map((d) => compileRule(d));
  const keys = [...new Set(defs.flatMap((d) => payloadKeysOf(d.criteria)!))];
  t.same(keys.sort(), ['0', 'host', 'nested', 'percent', 'tags', 'x'], 'the fields the criteria read');
  t.equal(payloadKeysOf([{ path: 'trigger.payload', type: 'exists' }] as never), undefined, 'a criterion on the whole payload needs it whole');
  const plan = new PayloadFields(keys);
  const payloads = ['{"percent":95,"host":"web-1","tags":["prod"],"x":null}', '{"percent":"95"}', '{"percent":95', '[1,2]', '{"nested":{"percent":[0,0,{"host":"h"}]}}', '{"x":0}', 'null', '{"0":1}', '{"host":"web-2","tags":{"prod":1}}', ''];
  const diffs: string[] = [];
  for (const p of payloads) {
    const e: HubEvent = { id: 'e', type: 't', payload: Buffer.from(p), timeMs: 1, agentId: 'a1', tenant: 'default' };
    const seen = reducedTrigger(e, plan) ?? triggerOf(e);
    const whole = triggerOf(e);
    rules.forEach((r, i) => { if (r.match(seen) !== r.match(whole)) diffs.push(`rule ${i} on ${p}`); });
  }
  t.same(diffs, [], 'same answers');
});

t.test('engine: a rule matched on the reduced payload fires with the whole event (parameters read fields its criteria do not); bad JSON never matches', async (t) => {
  const { RulesEngine } = await import('../hub/rules/index.js');
  const { MemoryStore } = await import('../hub/store/index.js');
  const { pino } = await import('pino');
  const requests: Array<{ parameters: Record<string, unknown>; triggerEventId?: string }> = [];
  const action = { ref: 'p.a', pack: 'p', name: 'a', description: '', runner: 'command', command: ['true'], parameters: {} };
  const engine = new RulesEngine({
    store: new MemoryStore(),
    packs: { rules: () => [], action: () => action as never, tenants: () => [], get: () => undefined, on: () => undefined },
    executions: { request: async (r) => { requests.push(r); return []; } },
    agents: { peek: (id: string) => ({ id, tenant: 'default', revoked: false }) } as never,
    log: pino({ level: 'silent' }),
  });
  await engine.load();
  const rule = (name: string, criteria: object) => ({ ref: name, trigger: 'cpu', criteria, action: { ref: 'p.a', parameters: { host: '{{ trigger.payload.host }}', pct: '{{ trigger.payload.percent }}' } }, target: { kind: 'agent', agent: '{{ trigger.agent }}' }, enabled: true, cooldownMs: 0 });
  await engine.create('default', rule('hot', { 'trigger.payload.percent': { type: 'gt', pattern: 90 } }) as never, { by: 'admin' });
  const ev = (id: string, payload: string) => ({ id, type: 'cpu', payload: Buffer.from(payload), timeMs: 1, agentId: 'a1', tenant: 'default' });
  await engine.onEvents([
    ev('e1', '{"host":"web-1","percent":95,"note":"x"}'),
    ev('e2', '{"host":"web-2","percent":95'), // not JSON
    ev('e3', '{"percent":50,"host":"web-3","percent":99}'), // the last of a key given twice
    ev('e4', '{"percent":10}'),
    ev('e5', '[95]'),
  ]);
  t.same(requests.map((r) => [r.triggerEventId, r.parameters.host, r.parameters.pct]), [['e1', 'web-1', '95'], ['e3', 'web-3', '99']], 'fired on e1 and e3 with fields outside the criteria');
  // A rule that reads the payload whole joins the list: the whole payload is parsed for every rule of the type.
  await engine.create('default', rule('any', { 'trigger.payload': { type: 'exists' } }) as never, { by: 'admin' });
  requests.length = 0;
  await engine.onEvents([ev('e6', '{"host":"web-6","percent":91}'), ev('e7', 'not json')]);
  t.same(requests.map((r) => r.triggerEventId).sort(), ['e6', 'e6'], 'both rules fired on e6; nothing on the non-JSON e7');
});

t.test('WebAssembly scanner: one instance serves every key list; payloads over 64 KiB go to the TypeScript scanner; built from the C source in the tree', async (t) => {
  // Two plans read alternately (the module's key table is laid out again at each change), one
  // with thousands of long keys (the module's memory grows for them).
  const a = new PayloadFields(['percent', 'host']);
  const many = Array.from({ length: 3000 }, (_, i) => `key-${i}-${'k'.repeat(40)}`);
  const b = new PayloadFields([...many, 'host']);
  for (let i = 0; i < 5; i++) {
    const ra = a.read(Buffer.from(`{"host":"a${i}","percent":${i}}`)) as Record<string, unknown>;
    t.same([ra.host, ra.percent, a.lastScanner], [`a${i}`, i, 'wasm'], `plan a, read ${i}`);
    const rb = b.read(Buffer.from(`{"host":"b${i}",${JSON.stringify(many[2999])}:${i},"percent":1}`)) as Record<string, unknown>;
    t.same([rb.host, rb[many[2999]!], rb[many[0]!], rb.percent, b.lastScanner], [`b${i}`, i, undefined, undefined, 'wasm'], `plan b, read ${i}`);
  }
  const at = (size: number) => {
    const head = '{"percent":5,"x":"';
    return Buffer.from(`${head}${'y'.repeat(size - head.length - 2)}"}`);
  };
  for (const [size, by] of [[64 * 1024, 'wasm'], [64 * 1024 + 1, 'typescript'], [1 << 20, 'typescript']] as const) {
    const r = a.read(at(size)) as Record<string, unknown>;
    t.same([r.percent, a.lastScanner], [5, by], `a payload of ${size} bytes`);
  }
  const src = readFileSync(fileURLToPath(new URL('../../hub/rules/payload-scan.c', import.meta.url)));
  t.equal(createHash('sha256').update(src).digest('hex'), PAYLOAD_SCAN_SOURCE_SHA256,
    'hub/rules/payload-scan-wasm.ts was built from hub/rules/payload-scan.c as it is (after editing it: node scripts/build-payload-scan.mjs)');
});

t.test('where WebAssembly is off (node --jitless) the TypeScript scanner reads every payload', async (t) => {
  const { execFileSync } = await import('node:child_process');
  const mod = new URL('../hub/rules/payload-fields.js', import.meta.url).href;
  const out = execFileSync(process.execPath, ['--jitless', '--input-type=module', '-e', `
    import { PayloadFields } from ${JSON.stringify(mod)};
    const pf = new PayloadFields(['percent', 'host']);
    const r = pf.read(Buffer.from('{"host":"web-01","percent":42.5}'));
    const got = { host: r.host, percent: r.percent, by: pf.lastScanner };
    const bad = pf.read(Buffer.from('{"host":"web-01",'));
    process.stdout.write(JSON.stringify({ wasm: typeof WebAssembly, ...got, bad }));
  `], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }); // its warning that --jitless turns WebAssembly off stays out of the log
  t.same(JSON.parse(out), { wasm: 'undefined', host: 'web-01', percent: 42.5, bad: null, by: 'typescript' });
});
