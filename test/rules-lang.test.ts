/**
 * The rule language (common/rules): StackStorm criteria operators and their edge cases, regex
 * safety, paths, templates with kv/secret references, action rendering with secret placement,
 * the rule file schema, the trigger index and the rate gate. Pure code: no network.
 */
import t from 'tap';
import type { ActionDef, Criterion, RuleDef, TriggerEvent } from '../common/automation/types.js';
import {
  OPERATORS, RateGate, RuleIndex, actionRefs, compileCriteria, compileRule, explainCriteria, findRefs, getPath,
  hasTemplate, normalizeOperator, parseRule, renderAction, renderTemplate, ruleInputSchema, normalizeRule, ruleFileOf, type Ref,
} from '../common/rules/index.js';

const NOW = Date.parse('2025-01-01T12:00:00Z');
const now = () => NOW;

function ev(payload: unknown, over: Partial<TriggerEvent> = {}): TriggerEvent {
  return { id: 'ev-1', type: 'core.process', agent: 'agent-1', tenant: 'acme', timeMs: NOW, payload, ...over };
}
function errOf(f: () => unknown): { code: string; message: string; path?: unknown } {
  try { f(); return { code: 'OK', message: '' }; } catch (e) { return { code: (e as { code?: string }).code ?? String(e), message: (e as Error).message, path: (e as { path?: unknown }).path }; }
}
/** One criterion on trigger.payload.v against value. */
function one(type: string, pattern: unknown, value: unknown, extra: Partial<Criterion> = {}): boolean {
  const c: Criterion = { path: 'trigger.payload.v', type, ...extra };
  if (pattern !== undefined) c.pattern = pattern;
  return compileCriteria([c], now)(ev(value === undefined ? {} : { v: value }));
}

t.test('every operator matches its positive case and refuses its negative case', async (t) => {
  // [operator, pattern, value that matches, value that does not]
  const cases: [string, unknown, unknown, unknown][] = [
    ['equals', 'nginx', 'nginx', 'apache'],
    ['nequals', 'nginx', 'apache', 'nginx'],
    ['iequals', 'NGINX', 'nginx', 'nginx2'],
    ['lessthan', 10, 9, 10],
    ['greaterthan', 10, 11, 10],
    ['lessthan_or_equal', 10, 10, 11],
    ['greaterthan_or_equal', 10, 10, 9],
    ['contains', 'err', 'an error', 'fine'],
    ['ncontains', 'err', 'fine', 'an error'],
    ['icontains', 'ERR', 'an error', 'fine'],
    ['incontains', 'ERR', 'fine', 'an Error'],
    ['startswith', 'web', 'web-1', 'db-1'],
    ['istartswith', 'WEB', 'web-1', 'db-1'],
    ['endswith', '.log', 'a.log', 'a.txt'],
    ['iendswith', '.LOG', 'a.log', 'a.txt'],
    ['regex', 'err(or)?\\s\\d+', 'fatal error 42 here', 'no error here'],
    ['iregex', 'ERROR', 'an error', 'fine'],
    ['matchregex', 'web-\\d', 'web-1.example', 'the web-1'],
    ['matchwildcard', '*.log', 'var/log/a.log', 'a.log.gz'],
    ['exists', undefined, 'x', undefined],
    ['nexists', undefined, undefined, 'x'],
    ['inside', ['a', 'b'], 'a', 'c'],
    ['ninside', ['a', 'b'], 'c', 'a'],
    ['timediff_lt', 60, new Date(NOW - 10_000).toISOString(), new Date(NOW - 120_000).toISOString()],
    ['timediff_gt', 60, new Date(NOW - 120_000).toISOString(), new Date(NOW - 10_000).toISOString()],
  ];
  const seen = new Set(cases.map((c) => c[0]));
  seen.add('search'); // has its own test below
  t.same(OPERATORS.filter((o) => !seen.has(o)), [], 'every operator has a case');
  for (const [op, pattern, yes, no] of cases) {
    t.equal(one(op, pattern, yes), true, `${op} ${JSON.stringify(pattern)} matches ${JSON.stringify(yes)}`);
    t.equal(one(op, pattern, no), false, `${op} ${JSON.stringify(pattern)} refuses ${JSON.stringify(no)}`);
  }
});

t.test('operator names are case-insensitive and accept StackStorm and spaced aliases', async (t) => {
  const pairs: [string, string][] = [
    ['EQUALS', 'equals'], ['eq', 'equals'], ['Not Equals', 'nequals'], ['neq', 'nequals'], ['ieq', 'iequals'],
    ['lt', 'lessthan'], ['gt', 'greaterthan'], ['lte', 'lessthan_or_equal'], ['gte', 'greaterthan_or_equal'],
    ['not  contains', 'ncontains'], ['not exists', 'nexists'], ['in', 'inside'], ['nin', 'ninside'],
    ['not in', 'ninside'], ['td_lt', 'timediff_lt'], ['td_gt', 'timediff_gt'], ['less than', 'lessthan'],
  ];
  for (const [alias, canon] of pairs) t.equal(normalizeOperator(alias), canon, alias);
  t.equal(normalizeOperator('bogus'), undefined);
  t.equal(one('Not In', ['a'], 'b'), true);
  t.equal(one('GT', 1, 2), true);
});

t.test('values compare by type: no true == 1, numeric text patterns only coerce for number values', async (t) => {
  t.equal(one('equals', 1, true), false, 'true is not 1');
  t.equal(one('equals', true, 1), false, '1 is not true');
  t.equal(one('equals', 0, false), false);
  t.equal(one('equals', '5', 5), true, 'a text pattern matches the number');
  t.equal(one('equals', 5, '5'), false, 'a text value never matches a number pattern');
  t.equal(one('equals', 'true', true), true, 'a text pattern matches the boolean');
  t.equal(one('equals', { a: [1, 2] }, { a: [1, 2] }), true, 'objects compare deeply');
  t.equal(one('equals', { a: [1, 2] }, { a: [1, 3] }), false);
  t.equal(one('greaterthan', '90', 95), true, 'numeric text pattern vs number value compares numerically');
  t.equal(one('greaterthan', 90, '95'), false, 'text value vs number pattern does not apply');
  t.equal(one('greaterthan', '9', 10), true, 'numerically, not "9" > "10" as text');
  t.equal(one('lessthan', 'b', 'a'), true, 'text vs text compares as text');
  t.equal(one('lessthan', 10, null), false);
  t.equal(one('lessthan', 10, { n: 1 }), false);
});

t.test('an operator that does not apply to the value makes the criterion false, negations too', async (t) => {
  t.equal(one('startswith', 'a', 42), false);
  t.equal(one('iequals', 'a', 42), false);
  t.equal(one('regex', '\\d', 42), false, 'regex needs text');
  t.equal(one('contains', 'a', 42), false);
  t.equal(one('ncontains', 'a', 42), false, 'ncontains of a number is an error, not true');
  t.equal(one('incontains', 'a', undefined), false);
  t.equal(one('ninside', 'abc', 5), false, 'a number is not "in" a text');
  t.equal(one('timediff_lt', 60, 'not a date'), false);
  t.equal(one('timediff_gt', 60, 'not a date'), false);
  t.equal(one('search', { 'item.a': { type: 'equals', pattern: 1 } }, 'not a list', { condition: 'any' }), false);
});

t.test('StackStorm edge cases: missing values, null, lists and objects', async (t) => {
  t.equal(one('nequals', 'x', undefined), true, 'a missing value is not equal (None != pattern)');
  t.equal(one('equals', 'x', undefined), false);
  t.equal(one('exists', undefined, null), false, 'null counts as missing');
  t.equal(one('nexists', undefined, null), true);
  t.equal(one('exists', undefined, 0), true, 'zero exists');
  t.equal(one('exists', undefined, ''), true, 'empty text exists');
  t.equal(one('equals', null, null), true, 'pattern: null matches null');
  t.equal(one('nin', ['a'], undefined), true, 'a missing value is not in the list');
  t.equal(one('contains', 'b', ['a', 'b']), true, 'contains on a list is membership');
  t.equal(one('contains', 5, [1, 5]), true);
  t.equal(one('contains', 'b', ['abc']), false, 'membership, not substring of an element');
  t.equal(one('ncontains', 'z', ['a', 'b']), true);
  t.equal(one('contains', 'k', { k: 1 }), true, 'contains on an object tests a key');
  t.equal(one('icontains', 'B', ['a', 'b']), true, 'icontains on a list of texts');
  t.equal(one('inside', 'an error here', 'error'), true, 'inside a text is substring');
  t.equal(one('inside', [1, 2], '2'), false, 'text "2" is not the number 2');
  t.equal(one('inside', ['1', '2'], 2), true, 'text patterns coerce for number values');
  t.equal(one('iregex', '(?i)^web', 'WEB-1'), true);
  t.equal(one('regex', '(?i)^web', 'WEB-1'), true, 'Python inline flags are understood');
  t.equal(one('regex', '(?P<n>a)b', 'xab'), true, 'Python named groups are understood');
  t.equal(one('matchregex', 'a.b', 'a\nb'), true, 'matchregex is DOTALL like StackStorm');
  t.equal(one('regex', 'a.b', 'a\nb'), false, 'regex is not');
  t.equal(one('matchwildcard', 'web-?', 'web-1'), true);
  t.equal(one('matchwildcard', 'web-[!0-4]', 'web-7'), true);
  t.equal(one('matchwildcard', 'web-[!0-4]', 'web-3'), false);
  t.equal(one('matchwildcard', 'WEB*', 'web-1'), false, 'case-sensitive like fnmatch on POSIX');
  t.equal(one('matchwildcard', 'a[b', 'a[b'), true, 'an unclosed [ is literal');
});

t.test('a pattern is required except for exists/nexists, and bad patterns are refused at compile time', async (t) => {
  for (const [c, frag] of [
    [{ path: 'trigger.payload.v', type: 'equals' }, 'equals needs a pattern'],
    [{ path: 'trigger.payload.v', type: 'bogus', pattern: 1 }, 'unknown operator "bogus"'],
    [{ path: 'trigger.payload.v', type: 'lessthan', pattern: [1] }, 'must be a number or text'],
    [{ path: 'trigger.payload.v', type: 'timediff_lt', pattern: 'soon' }, 'number of seconds'],
    [{ path: 'trigger.payload.v', type: 'regex', pattern: '(' }, 'does not compile: missing closing )'],
    [{ path: 'trigger.payload.v', type: 'inside', pattern: 5 }, 'must be a list'],
    [{ path: 'trigger.payload.v', type: 'search', pattern: {} }, 'condition: any, all, any2any, all2any'],
    [{ path: 'trigger.foo', type: 'exists' }, 'trigger.payload.foo'],
    [{ path: 'other.x', type: 'exists' }, 'paths start with trigger.'],
    [{ path: 'trigger.type.x', type: 'exists' }, 'has no fields'],
    [{ path: 'trigger.payload..x', type: 'exists' }, 'empty segment'],
    [{ path: 'trigger.payload.v', type: 'equals', pattern: '{{ kv.threshold }}' }, 'templates'],
  ] as [Criterion, string][]) {
    const e = errOf(() => compileCriteria([c]));
    t.equal(e.code, 'TRELLIS_E_RULE_INVALID', `${c.type} ${c.path}`);
    t.match(e.message, frag);
    t.match(e.message, `criterion "${c.path}"`, 'the message names the criterion');
  }
  const many = Array.from({ length: 65 }, () => ({ path: 'trigger.id', type: 'exists' }));
  t.equal(errOf(() => compileCriteria(many)).code, 'TRELLIS_E_RULE_INVALID');
});

t.test('a regex over 1024 characters, or using what RE2 cannot run in linear time, is refused at compile time', async (t) => {
  for (const [p, frag] of [
    ['(a)\\1', 'backreference'], ['(?P<n>a)(?P=n)', 'backreference'], ['(?<n>a)\\k<n>', 'backreference'],
    ['a(?=b)', 'lookahead'], ['a(?!b)', 'lookahead'], ['(?<=a)b', 'lookbehind'], ['(?<!a)b', 'lookbehind'],
    ['(?>a+)b', 'atomic group'], ['a++b', 'possessive'], ['(?x) a b', 'verbose mode'], ['a\\Z', 'write \\z'],
    ['a{1001}', 'repeat count over 1000'], ['[ab]{1000}[ab]{1000}[ab]{1000}', 'too large'],
  ]) {
    for (const op of ['regex', 'iregex', 'matchregex']) {
      const e = errOf(() => compileCriteria([{ path: 'trigger.payload.v', type: op, pattern: p }]));
      t.equal(e.code, 'TRELLIS_E_RULE_INVALID', `${op} ${p}`);
      t.match(e.message, frag, `${op} ${p}: names the feature`);
      t.match(e.message, 'criterion "trigger.payload.v"');
    }
  }
  const long = errOf(() => compileCriteria([{ path: 'trigger.payload.v', type: 'regex', pattern: 'a'.repeat(1025) }]));
  t.equal(long.code, 'TRELLIS_E_RULE_INVALID');
  t.match(long.message, '1024');
  t.equal(errOf(() => compileCriteria([{ path: 'trigger.payload.v', type: 'matchwildcard', pattern: '*'.repeat(1025) }])).code, 'TRELLIS_E_RULE_INVALID');
});

t.test('regex and wildcard only look at the first 64 KiB and a wildcard cannot backtrack badly', async (t) => {
  const big = `${'a'.repeat(70 * 1024)}x`;
  t.equal(one('regex', 'x', big), false, 'the x past 64 KiB is not seen');
  t.equal(one('regex', 'a', big), true);
  const input = 'a'.repeat(64 * 1024);
  const start = Date.now();
  t.equal(one('matchwildcard', '*a*a*a*a*a*a*a*a*b', input), false);
  t.ok(Date.now() - start < 2000, 'pathological wildcard finishes quickly');
});

t.test('paths reach nested values, array indexes, event fields and ignore criteria tags', async (t) => {
  const e = ev({ a: { b: [{ c: 'deep' }, { c: 'second' }] }, 'x.y': 1, list: [10, 20] }, { agent: 'web-7', id: 'id-9', type: 'core.cpu' });
  const m = (path: string, type: string, pattern?: unknown) => compileCriteria([{ path, type, pattern } as Criterion], now)(e);
  t.ok(m('trigger.payload.a.b.0.c', 'equals', 'deep'));
  t.ok(m('trigger.payload.a.b.1.c', 'equals', 'second'));
  t.ok(m('trigger.payload.a.b[1].c', 'equals', 'second'), 'bracket index');
  t.ok(m("trigger.payload['x.y']", 'equals', 1), 'quoted segment with a dot');
  t.ok(m('payload.list.1', 'equals', 20), 'payload.x means trigger.payload.x');
  t.ok(m('trigger.payload.a.b.5.c', 'nexists'), 'out of range index is missing');
  t.ok(m('trigger.payload.a.b.x', 'nexists'), 'a name on a list is missing');
  t.ok(m('trigger.payload.constructor', 'nexists'), 'prototype properties are not reachable');
  t.ok(m('trigger.payload.a.__proto__', 'nexists'));
  t.ok(m('trigger.agent', 'equals', 'web-7'));
  t.ok(m('trigger.id', 'equals', 'id-9'));
  t.ok(m('trigger.type', 'startswith', 'core.'));
  t.ok(m('trigger.timeMs', 'equals', NOW));
  t.ok(m('trigger.tenant', 'equals', 'acme'));
  const tagged = compileCriteria([
    { path: 'trigger.payload.list.0#low', type: 'gt', pattern: 5 },
    { path: 'trigger.payload.list.0#high', type: 'lt', pattern: 15 },
  ], now);
  t.ok(tagged(e), 'a #tag suffix is ignored (StackStorm criteria tags)');
  t.equal(getPath({ a: [{ b: 2 }] }, 'a.0.b'), 2);
  t.equal(getPath({ a: 1 }, 'a..b'), undefined, 'malformed path reads as missing');
  t.equal(getPath({}, 'toString'), undefined);
});

t.test('search applies nested criteria to list items with any or all', async (t) => {
  const fields = [{ name: 'Status', to: 'Approved' }, { name: 'Owner', to: 'bob' }];
  const pattern = { 'item.name': { type: 'equals', pattern: 'Status' }, 'item.to': { type: 'equals', pattern: 'Approved' } };
  t.equal(one('search', pattern, fields, { condition: 'any' }), true, 'one item matches all nested criteria');
  t.equal(one('search', pattern, fields, { condition: 'all' }), false, 'not every item does');
  t.equal(one('search', { 'item.to': { type: 'exists' } }, fields, { condition: 'all' }), true);
  t.equal(one('search', [{ path: 'item', type: 'gt', pattern: 2 }], [3, 4], { condition: 'all' }), true, 'list form, item itself');
  t.equal(one('search', pattern, [], { condition: 'any' }), false);
  t.equal(one('search', pattern, [], { condition: 'all' }), true, 'all of an empty list holds, as in StackStorm');
  t.equal(one('search', { 'item.name': { type: 'equals', pattern: 'Status' }, 'item.to': { type: 'equals', pattern: 'x' } }, fields, { condition: 'any' }), false, 'criteria must hold on the same item');
  const nested = { 'item.tags': { type: 'search', condition: 'any', pattern: { item: { type: 'equals', pattern: 'prod' } } } };
  t.equal(one('search', nested, [{ tags: ['dev'] }, { tags: ['prod'] }], { condition: 'any' }), true, 'search nests');
  t.equal(errOf(() => compileCriteria([{ path: 'trigger.payload.v', type: 'search', condition: 'any', pattern: { 'trigger.x': { type: 'exists' } } }])).code, 'TRELLIS_E_RULE_INVALID', 'nested paths start with item');
});

t.test('timediff measures seconds from ISO times and epoch seconds or milliseconds to now', async (t) => {
  const iso10 = new Date(NOW - 10_000).toISOString();
  t.equal(one('timediff_lt', 60, iso10), true);
  t.equal(one('timediff_gt', 5, iso10), true);
  t.equal(one('timediff_gt', '60', iso10), false, 'text pattern of seconds');
  t.equal(one('timediff_lt', 60, NOW - 10_000), true, 'epoch milliseconds');
  t.equal(one('timediff_lt', 60, (NOW - 10_000) / 1000), true, 'epoch seconds');
  t.equal(one('timediff_gt', 60, (NOW - 3_600_000) / 1000), true);
  t.equal(one('timediff_lt', 60, '2025-01-01 11:59:30'), true, 'a zone-less time is UTC');
  t.equal(one('timediff_lt', 60, '2025-01-01T11:59:30+01:00'), false, 'an explicit zone is honoured');
  t.equal(one('td_gt', 0, String(NOW - 5000)), true, 'epoch as text');
  let clock = NOW;
  const m = compileCriteria([{ path: 'trigger.payload.v', type: 'timediff_lt', pattern: 30 }], () => clock);
  const e = ev({ v: new Date(NOW).toISOString() });
  t.equal(m(e), true);
  clock += 31_000;
  t.equal(m(e), false, 'now is read at match time');
});

t.test('explainCriteria evaluates every criterion and says why', async (t) => {
  const crit: Criterion[] = [
    { path: 'trigger.payload.name', type: 'equals', pattern: 'nginx' },
    { path: 'trigger.payload.cpu', type: 'gt', pattern: 90 },
    { path: 'trigger.payload.missing', type: 'startswith', pattern: 'x' },
  ];
  const r = explainCriteria(crit, ev({ name: 'nginx', cpu: '95' }), now);
  t.equal(r.matched, false);
  t.equal(r.reasons.length, 3);
  t.match(r.reasons[0], /trigger\.payload\.name equals "nginx": matched \(value "nginx"\)/);
  t.match(r.reasons[1], /greaterthan 90: does not apply to this value \(value "95"\)/);
  t.match(r.reasons[2], /value missing/);
  t.equal(explainCriteria([], ev({}), now).matched, true);
});

t.test('templates render a lone expression to its typed value and anything else to text', async (t) => {
  const ctx = { trigger: ev({ host: 'web-1', port: 8080, tags: ['a', 'b'], obj: { k: 1 }, n: null }) };
  t.equal(renderTemplate('{{ trigger.payload.port }}', ctx), 8080);
  t.equal(renderTemplate('  {{trigger.payload.port}} ', ctx), 8080, 'whitespace around a lone expression');
  t.same(renderTemplate('{{ trigger.payload.tags }}', ctx), ['a', 'b']);
  t.equal(renderTemplate('http://{{ trigger.payload.host }}:{{ trigger.payload.port }}/', ctx), 'http://web-1:8080/');
  t.equal(renderTemplate('obj={{ trigger.payload.obj }}', ctx), 'obj={"k":1}');
  t.equal(renderTemplate('{{ trigger.payload.nope }}', ctx), '', 'missing is empty');
  t.equal(renderTemplate('x{{ trigger.payload.nope }}y{{ trigger.payload.n }}', ctx), 'xy');
  t.equal(renderTemplate('{{ trigger.payload.tags.1 }}', ctx), 'b');
  t.equal(renderTemplate('{{ trigger.payload.constructor }}', ctx), '', 'no prototype access');
  t.same(renderTemplate({ a: ['{{ trigger.agent }}', 5, true], b: { c: '{{ trigger.payload.port }}' } }, ctx), { a: ['agent-1', 5, true], b: { c: 8080 } }, 'recurses');
  t.equal(renderTemplate('no template here', ctx), 'no template here');
  t.equal(renderTemplate(42, ctx), 42);
});

t.test('template filters: json, default, upper, lower, int, string, quote', async (t) => {
  const ctx = { trigger: ev({ host: 'Web-1', n: '42abc', f: 3.9, obj: { a: 1 }, q: "it's" }) };
  t.equal(renderTemplate('{{ trigger.payload.obj | json }}', ctx), '{"a":1}');
  t.equal(renderTemplate('{{ trigger.payload.host | json }}', ctx), '"Web-1"');
  t.equal(renderTemplate('{{ trigger.payload.nope | default("x|y") }}', ctx), 'x|y', 'a | inside quotes is not a filter');
  t.equal(renderTemplate("{{ trigger.payload.nope | default('single') }}", ctx), 'single');
  t.equal(renderTemplate('{{ trigger.payload.nope | default(5) }}', ctx), 5, 'typed default');
  t.equal(renderTemplate('{{ trigger.payload.host | default("x") }}', ctx), 'Web-1');
  t.equal(renderTemplate('{{ trigger.payload.host | upper }}', ctx), 'WEB-1');
  t.equal(renderTemplate('{{ trigger.payload.host | lower }}', ctx), 'web-1');
  t.equal(renderTemplate('{{ trigger.payload.n | int }}', ctx), 42);
  t.equal(renderTemplate('{{ trigger.payload.f | int }}', ctx), 3);
  t.equal(renderTemplate('{{ trigger.payload.host | int }}', ctx), 0);
  t.equal(renderTemplate('{{ trigger.payload.f | string }}', ctx), '3.9');
  t.equal(renderTemplate('{{ trigger.payload.nope | default("a b") | upper }}', ctx), 'A B', 'filters chain');
  t.equal(renderTemplate('echo {{ trigger.payload.q | quote }}', ctx), `echo 'it'\\''s'`);
});

t.test('malformed templates are refused naming the text; size is capped', async (t) => {
  const ctx = {};
  for (const [tpl, frag] of [
    ['hello {{ trigger.x', 'unterminated'],
    ['{{ }}', 'empty expression'],
    ['{{ a | shout }}', 'unknown filter'],
    ['{{ a | default }}', 'default takes one argument'],
    ['{{ a | upper(1) }}', 'takes no argument'],
    ['{{ a b }}', 'bad segment'],
    ['{{ secret.bad key! }}', 'bad secret key'],
    ['{{ kv. }}', 'bad kv key'],
  ]) {
    const e = errOf(() => renderTemplate(tpl, ctx));
    t.equal(e.code, 'TRELLIS_E_INVALID_ARGUMENT', tpl);
    t.match(e.message, frag);
    t.match(e.message, `template "${tpl.slice(0, 10)}`, 'names the text');
  }
  t.equal(errOf(() => renderTemplate(`{{ a }}${'x'.repeat(16 * 1024)}`, ctx)).code, 'TRELLIS_E_TOO_LARGE');
  t.equal(renderTemplate('x'.repeat(20 * 1024), ctx), 'x'.repeat(20 * 1024), 'plain text has no template limit');
  t.equal(errOf(() => findRefs({ a: ['{{ x'] })).code, 'TRELLIS_E_INVALID_ARGUMENT');
});

t.test('kv and secret references go to the resolver, or stay as written', async (t) => {
  const ctx = { trigger: ev({ host: 'h' }) };
  const tpl = { token: '{{ secret.api_token }}', url: 'https://{{ kv.base/url:1 }}/{{ trigger.payload.host }}', n: '{{ kv.count | int }}' };
  t.same(renderTemplate(tpl, ctx), { token: '{{ secret.api_token }}', url: 'https://{{ kv.base/url:1 }}/h', n: '{{ kv.count | int }}' }, 'no resolver: references kept, the rest rendered');
  t.same(renderTemplate(tpl, ctx, () => undefined), { token: '{{ secret.api_token }}', url: 'https://{{ kv.base/url:1 }}/h', n: '{{ kv.count | int }}' });
  const asked: Ref[] = [];
  const r = renderTemplate(tpl, ctx, (ref) => { asked.push(ref); return ref.kind === 'secret' ? 's3cr3t' : ref.key === 'count' ? '7' : 'example.com'; });
  t.same(r, { token: 's3cr3t', url: 'https://example.com/h', n: 7 });
  t.same(findRefs([tpl, '{{ secret.api_token }} again', 'plain']), [
    { kind: 'secret', key: 'api_token' }, { kind: 'kv', key: 'base/url:1' }, { kind: 'kv', key: 'count' },
  ], 'each reference once, in order');
  t.ok(hasTemplate('a {{ b }}'));
  t.notOk(hasTemplate('a {{ b'));
  t.notOk(hasTemplate('plain'));
});

t.test('event data substituted into a template is never rendered again', async (t) => {
  let calls = 0;
  const ctx = { trigger: ev({ evil: '{{ secret.root_password }}' }) };
  t.equal(renderTemplate('value: {{ trigger.payload.evil }}', ctx, () => { calls++; return 'LEAK'; }), 'value: {{ secret.root_password }}');
  t.equal(renderTemplate('{{ trigger.payload.evil }}', ctx, () => { calls++; return 'LEAK'; }), '{{ secret.root_password }}');
  t.equal(calls, 0, 'the resolver was never asked');
});

const baseAction = (over: Partial<ActionDef> = {}): ActionDef => ({
  ref: 'web.restart', pack: 'web', name: 'restart', description: '', runner: 'command',
  command: ['/usr/bin/systemctl', 'restart', '{{ service }}'],
  parameters: {
    service: { type: 'string', required: true },
    port: { type: 'integer', default: 80 },
    ratio: { type: 'number' },
    force: { type: 'boolean', default: false },
    opts: { type: 'object' },
    hosts: { type: 'array' },
    mode: { type: 'string', enum: ['fast', 'safe'], default: 'safe' },
    token: { type: 'string', secret: true },
  },
  timeoutMs: 30_000, env: {}, ...over,
});
const secrets: Record<string, string> = { api_token: 'S3CRET-VALUE', db_pw: 'pw-123456' };
const resolve = (ref: Ref) => (ref.kind === 'secret' ? (secrets[ref.key] !== undefined ? { value: secrets[ref.key]!, secret: true } : undefined) : ref.key === 'region' ? { value: 'eu-1', secret: false } : ref.key === 'port' ? { value: '8443', secret: false } : undefined);

t.test('renderAction validates parameters: defaults, coercion from text, enum, required, unknown, types', async (t) => {
  const r = renderAction(baseAction(), { service: 'nginx', port: '8080', force: 'true', ratio: '0.5', opts: '{"a":1}', hosts: '["a","b"]' }, { resolve });
  t.same(r.parameters, { service: 'nginx', port: 8080, ratio: 0.5, force: true, opts: { a: 1 }, hosts: ['a', 'b'], mode: 'safe' });
  t.same(r.argv, ['/usr/bin/systemctl', 'restart', 'nginx']);
  t.equal(r.timeoutMs, 30_000);
  t.equal(r.runAs, '');
  t.same(renderAction(baseAction(), { service: 'x' }).parameters, { service: 'x', port: 80, force: false, mode: 'safe' }, 'defaults applied');
  t.equal(renderAction(baseAction(), { service: 5 }).parameters.service, '5', 'a number for a string parameter becomes text');
  for (const [params, frag] of [
    [{}, 'parameter "service" is required'],
    [{ service: 'x', bogus: 1 }, 'unknown parameter "bogus"'],
    [{ service: 'x', port: 'eighty' }, 'parameter "port": expected an integer'],
    [{ service: 'x', port: 1.5 }, 'parameter "port": expected an integer'],
    [{ service: 'x', ratio: 'NaN' }, 'parameter "ratio": expected a number'],
    [{ service: 'x', force: 'yes' }, 'parameter "force": expected true or false'],
    [{ service: 'x', opts: '[1]' }, 'parameter "opts": expected an object'],
    [{ service: 'x', hosts: '{bad json' }, 'parameter "hosts": expected a list'],
    [{ service: 'x', mode: 'reckless' }, 'parameter "mode": "reckless" is not one of "fast", "safe"'],
    [{ service: { a: 1 } }, 'parameter "service": expected text'],
  ] as [Record<string, unknown>, string][]) {
    const e = errOf(() => renderAction(baseAction(), params, { resolve }));
    t.equal(e.code, 'TRELLIS_E_INVALID_ARGUMENT', frag);
    t.match(e.message, frag);
  }
  t.equal(errOf(() => renderAction(baseAction(), { service: 'x'.repeat(70 * 1024) })).code, 'TRELLIS_E_TOO_LARGE');
});

t.test('a secret never reaches argv, script args, cwd, url or body', async (t) => {
  const msg = 'secrets reach a process by env, stdin or a header, never argv';
  const cases: [string, ActionDef, Record<string, unknown>][] = [
    ['secret parameter in argv', baseAction({ command: ['/bin/login', '{{ token }}'] }), { service: 'x', token: 'tok-abcdef' }],
    ['secret parameter through a filter', baseAction({ command: ['/bin/login', '--t={{ token | upper }}'] }), { service: 'x', token: 'tok-abcdef' }],
    ['secret parameter via parameters.', baseAction({ command: ['/bin/login', '{{ parameters.token }}'] }), { service: 'x', token: 'tok' }],
    ['all parameters as json', baseAction({ command: ['/bin/x', '{{ parameters | json }}'] }), { service: 'x', token: 'tok' }],
    ['secret reference in the command', baseAction({ command: ['/bin/login', '{{ secret.api_token }}'] }), { service: 'x' }],
    ['a plain parameter holding a secret reference', baseAction(), { service: '{{ secret.api_token }}' }],
    ['shell command', baseAction({ shell: true, command: ['curl -H "t: {{ secret.api_token }}" x'] }), { service: 'x' }],
    ['script args', baseAction({ runner: 'script', command: undefined, script: { path: 'scripts/a.sh', body: '#!/bin/sh\n' }, args: ['{{ token }}'] }), { service: 'x', token: 't' }],
    ['cwd', baseAction({ cwd: '/srv/{{ secret.api_token }}' }), { service: 'x' }],
    ['http url', baseAction({ runner: 'http', command: undefined, http: { method: 'GET', url: 'https://h/?t={{ secret.api_token }}', headers: {} } }), { service: 'x' }],
    ['http body', baseAction({ runner: 'http', command: undefined, http: { method: 'POST', url: 'https://h/', headers: {}, body: '{"t":"{{ token }}"}' } }), { service: 'x', token: 't' }],
  ];
  for (const [name, action, params] of cases) {
    const e = errOf(() => renderAction(action, params, { resolve }));
    t.equal(e.code, 'TRELLIS_E_SECRET_INVALID', name);
    t.match(e.message, msg, name);
    t.notMatch(e.message, 'S3CRET-VALUE', 'the message does not carry the secret');
  }
});

t.test('secrets in env, stdin and headers go to the secret fields and are listed for masking', async (t) => {
  const action = baseAction({
    command: ['/usr/bin/deploy', '--region', '{{ kv.region }}', '{{ service }}'],
    env: { API_TOKEN: '{{ secret.api_token }}', TOKEN_UPPER: '{{ token | upper }}', REGION: '{{ kv.region }}', PORT: '{{ port }}' },
    stdin: 'password={{ secret.db_pw }}\n',
  });
  const r = renderAction(action, { service: 'nginx', token: 'tok-abcdef' }, { resolve });
  t.same(r.argv, ['/usr/bin/deploy', '--region', 'eu-1', 'nginx'], 'a plain kv value may reach argv');
  t.same(r.env, { REGION: 'eu-1', PORT: '80' });
  t.same(r.secretEnv, { API_TOKEN: 'S3CRET-VALUE', TOKEN_UPPER: 'TOK-ABCDEF' });
  t.equal(r.stdin, undefined);
  t.equal(r.secretStdin, 'password=pw-123456\n');
  t.same(r.secretValues.sort(), ['S3CRET-VALUE', 'pw-123456', 'tok-abcdef'].sort());
  t.same(r.parameters, { service: 'nginx', port: 80, force: false, mode: 'safe', token: 'tok-abcdef' });

  const plain = renderAction(baseAction({ stdin: 'hello {{ service }}' }), { service: 'nginx' }, { resolve });
  t.equal(plain.stdin, 'hello nginx');
  t.equal(plain.secretStdin, undefined);
  t.same(plain.secretValues, []);

  const http = renderAction(baseAction({
    runner: 'http', command: undefined,
    http: { method: 'post', url: 'https://api.example.com/{{ service }}?r={{ kv.region }}', headers: { Authorization: 'Bearer {{ secret.api_token }}', 'X-Service': '{{ service }}' }, body: '{"port": {{ port }}}', successStatus: [200, 202] },
  }), { service: 'nginx' }, { resolve });
  t.same(http.http, { method: 'POST', url: 'https://api.example.com/nginx?r=eu-1', headers: { 'X-Service': 'nginx' }, body: '{"port": 80}', insecure: false, successStatus: [200, 202] });
  t.same(http.secretHeaders, { Authorization: 'Bearer S3CRET-VALUE' });
  t.same(http.argv, []);
});

t.test('references in parameters are kept in parameters and opened for rendering', async (t) => {
  const action = baseAction({ command: ['/bin/x', '{{ port }}', '{{ service }}'], env: { TOKEN: '{{ token }}' } });
  const r = renderAction(action, { service: 'svc-{{ kv.region }}', port: '{{ kv.port }}', token: '{{ secret.api_token }}' }, { resolve });
  t.same(r.parameters, { service: 'svc-{{ kv.region }}', port: '{{ kv.port }}', force: false, mode: 'safe', token: '{{ secret.api_token }}' }, 'references not resolved in parameters');
  t.same(r.argv, ['/bin/x', '8443', 'svc-eu-1'], 'kv text coerced to the integer type');
  t.same(r.secretEnv, { TOKEN: 'S3CRET-VALUE' });
  t.same(r.secretValues, ['S3CRET-VALUE']);
  const missing = errOf(() => renderAction(action, { service: 'x', token: '{{ secret.nope }}' }, { resolve }));
  t.equal(missing.code, 'TRELLIS_E_NOT_FOUND');
  t.match(missing.message, 'parameter "token": secret "nope" not found');
  t.equal(errOf(() => renderAction(baseAction({ env: { A: '{{ kv.nope }}' } }), { service: 'x' }, { resolve })).code, 'TRELLIS_E_NOT_FOUND');
  t.equal(errOf(() => renderAction(action, { service: 'x', port: '{{ kv.region }}' }, { resolve })).code, 'TRELLIS_E_INVALID_ARGUMENT', 'a resolved value is type-checked');
  t.same(actionRefs(baseAction({ env: { A: '{{ secret.db_pw }}', B: '{{ kv.region }}' } }), { service: '{{ kv.region }}', token: '{{ secret.api_token }}' }),
    [{ kind: 'kv', key: 'region' }, { kind: 'secret', key: 'api_token' }, { kind: 'secret', key: 'db_pw' }]);
});

t.test('shell: true runs one string with /bin/sh -c; plain commands expand a list parameter into arguments', async (t) => {
  const sh = renderAction(baseAction({ shell: true, command: ['systemctl restart {{ service | quote }} && echo ok'] }), { service: 'a b' });
  t.same(sh.argv, ['/bin/sh', '-c', "systemctl restart 'a b' && echo ok"]);
  t.equal(errOf(() => renderAction(baseAction({ shell: true, command: ['a', 'b'] }), { service: 'x' })).code, 'TRELLIS_E_INVALID_ARGUMENT');
  const list = renderAction(baseAction({ command: ['/usr/bin/ping', '-c', '1', '{{ hosts }}'] }), { service: 'x', hosts: ['a', 'b; rm -rf /'] });
  t.same(list.argv, ['/usr/bin/ping', '-c', '1', 'a', 'b; rm -rf /'], 'each item is one argument, never shell-parsed');
  t.equal(errOf(() => renderAction(baseAction({ command: ['{{ opts }}'] }), { service: 'x' })).code, 'TRELLIS_E_INVALID_ARGUMENT', 'an empty program is refused');
});

t.test('script runner hands over the script and the rendered args', async (t) => {
  const r = renderAction(baseAction({ runner: 'script', command: undefined, script: { path: 'scripts/check.sh', body: '#!/bin/sh\necho "$@"\n' }, args: ['--svc', '{{ service }}'], runAs: 'deploy', cwd: '/srv/{{ service }}' }), { service: 'nginx' });
  t.same(r.script, { name: 'check.sh', body: '#!/bin/sh\necho "$@"\n' });
  t.same(r.argv, ['--svc', 'nginx']);
  t.equal(r.runAs, 'deploy');
  t.equal(r.cwd, '/srv/nginx');
});

t.test('renderAction limits: argv count and size, env names and count, NUL bytes', async (t) => {
  const many = Array.from({ length: 257 }, (_, i) => `a${i}`);
  t.equal(errOf(() => renderAction(baseAction({ command: ['/bin/echo', ...many] }), { service: 'x' })).code, 'TRELLIS_E_TOO_LARGE');
  t.equal(errOf(() => renderAction(baseAction({ command: ['/bin/echo', '{{ hosts }}'] }), { service: 'x', hosts: many })).code, 'TRELLIS_E_TOO_LARGE', 'a list expansion counts too');
  t.equal(errOf(() => renderAction(baseAction({ command: ['/bin/echo', '{{ service }}{{ service }}'] }), { service: 'x'.repeat(20 * 1024) })).code, 'TRELLIS_E_TOO_LARGE');
  const badEnv = errOf(() => renderAction(baseAction({ env: { '1BAD': 'x' } }), { service: 'x' }));
  t.equal(badEnv.code, 'TRELLIS_E_INVALID_ARGUMENT');
  t.match(badEnv.message, '1BAD');
  const env129 = Object.fromEntries(Array.from({ length: 129 }, (_, i) => [`V${i}`, 'x']));
  t.equal(errOf(() => renderAction(baseAction({ env: env129 }), { service: 'x' })).code, 'TRELLIS_E_INVALID_ARGUMENT');
  t.equal(errOf(() => renderAction(baseAction(), { service: 'a\0b' })).code, 'TRELLIS_E_INVALID_ARGUMENT');
  t.equal(errOf(() => renderAction(baseAction({ runner: 'http', command: undefined, http: { method: 'GET', url: 'file:///etc/passwd', headers: {} } }), { service: 'x' })).code, 'TRELLIS_E_INVALID_ARGUMENT');
  t.equal(errOf(() => renderAction(baseAction({ runner: 'http', command: undefined, http: { method: 'GET', url: 'https://h/', headers: { 'X-A': '{{ service }}' } } }), { service: 'a\r\nInjected: 1' })).code, 'TRELLIS_E_INVALID_ARGUMENT', 'no header injection');
});

const ruleYaml = {
  name: 'restart-nginx',
  description: 'Restart nginx when it dies',
  trigger: 'core.process',
  criteria: { 'trigger.payload.name': { type: 'equals', pattern: 'nginx' }, 'trigger.payload.state': { type: 'equals', pattern: 'stopped' } },
  action: { ref: 'web.restart', parameters: { service: '{{ trigger.payload.name }}', token: '{{ secret.api_token }}' } },
  cooldown: '30s',
  rate_limit: { count: 10, per: '1m' },
};

t.test('a StackStorm-style rule file becomes a RuleDef with defaults', async (t) => {
  const d = parseRule(ruleYaml, 'web');
  t.same(d, {
    ref: 'web.restart-nginx', pack: 'web', name: 'restart-nginx', description: 'Restart nginx when it dies', enabled: true,
    trigger: 'core.process',
    criteria: [{ path: 'trigger.payload.name', type: 'equals', pattern: 'nginx' }, { path: 'trigger.payload.state', type: 'equals', pattern: 'stopped' }],
    action: { ref: 'web.restart', parameters: { service: '{{ trigger.payload.name }}', token: '{{ secret.api_token }}' } },
    target: { kind: 'agent', agent: '{{ trigger.agent }}' }, cooldownMs: 30_000, rateLimit: { count: 10, perMs: 60_000 },
  });
  const minimal = parseRule({ name: 'r', trigger: { type: 'webhook.deploy' }, action: { ref: 'ops.deploy' } });
  t.equal(minimal.ref, 'r');
  t.equal(minimal.pack, '');
  t.same(minimal.criteria, []);
  t.same(minimal.action.parameters, {});
  t.equal(minimal.cooldownMs, 0);
  t.equal(minimal.rateLimit, undefined);
  const list = parseRule({ ...ruleYaml, criteria: [{ path: 'payload.cpu', type: 'gt', pattern: 90 }], target: 'local', on: { selector: { role: 'web' } }, cooldown: 1.5, enabled: false });
  t.same(list.criteria, [{ path: 'payload.cpu', type: 'gt', pattern: 90 }]);
  t.same(list.target, { kind: 'local' });
  t.same(list.on, { selector: { role: 'web' } });
  t.equal(list.cooldownMs, 1500, 'a bare number is seconds');
  t.equal(list.enabled, false);
  t.same(parseRule({ ...ruleYaml, target: { selector: { role: 'db' } } }).target, { kind: 'selector', selector: { role: 'db' } });
  t.same(parseRule({ ...ruleYaml, target: { agent: 'agent-7' } }).target, { kind: 'agent', agent: 'agent-7' });
  t.equal(parseRule({ ...ruleYaml, pack: 'web' }, 'web').pack, 'web', 'a StackStorm pack key naming the same pack is accepted');
});

t.test('ruleFileOf keeps a selector expression target: the file reads back to the same targets, not every agent', async (t) => {
  const expr = 'role in (web,api),!canary';
  const d = parseRule({ ...ruleYaml, target: { selector: expr } }, 'web');
  t.same(d.target, { kind: 'selector', selector: {}, expr });
  const file = ruleFileOf(d);
  t.same(file.target, { selector: expr });
  t.same(parseRule(file, 'web').target, d.target, 'read back: the same expression (an empty label map would match every agent)');
  const labels = parseRule({ ...ruleYaml, target: { selector: { role: 'db' } } }, 'web');
  t.same(parseRule(ruleFileOf(labels), 'web').target, labels.target, 'a label map stays a label map');
});

t.test('rule schema errors name the field', async (t) => {
  const cases: [Record<string, unknown>, string, string][] = [
    [{ ...ruleYaml, foo: 1 }, 'Unrecognized key', 'foo'],
    [{ ...ruleYaml, name: 'Bad Name' }, 'name:', 'a-z'],
    [{ ...ruleYaml, trigger: 'nodot' }, 'trigger:', 'dotted name'],
    [{ ...ruleYaml, trigger: { type: 'core.cpu', parameters: {} } }, 'trigger:', 'parameters'],
    [{ ...ruleYaml, criteria: { 'trigger.payload.x': { type: 'bogus', pattern: 1 } } }, 'criteria.trigger.payload.x:', 'unknown operator "bogus"'],
    [{ ...ruleYaml, criteria: { 'trigger.payload.x': { type: 'regex', pattern: '(a)\\1' } } }, 'criteria.trigger.payload.x:', 'backreference'],
    [{ ...ruleYaml, criteria: { 'trigger.payload.x': { type: 'equals', pattern: 1, extra: 2 } } }, 'criteria.trigger.payload.x:', 'extra'],
    [{ ...ruleYaml, criteria: [{ path: 'trigger.payload.x', type: 5 }] }, 'criteria[0].type:', ''],
    [{ ...ruleYaml, criteria: 'x' }, 'criteria:', 'map'],
    [{ ...ruleYaml, action: { ref: 'noref' } }, 'action.ref:', '<pack>.<action>'],
    [{ ...ruleYaml, action: { ref: 'web.restart', parameters: { service: '{{ trigger.payload.name' } } }, 'action.parameters.service:', 'unterminated'],
    [{ ...ruleYaml, target: 'remote' }, 'target:', 'local'],
    [{ ...ruleYaml, target: { agent: 5 } }, 'target.agent:', ''],
    [{ ...ruleYaml, target: { agent: '{{ kv.host }}' } }, 'target.agent:', 'reference'],
    [{ ...ruleYaml, target: { selector: { 'bad key!': 'x' } } }, 'target.selector', 'label keys'],
    [{ ...ruleYaml, cooldown: 'soon' }, 'cooldown:', 'bad cooldown'],
    [{ ...ruleYaml, cooldown: -1 }, 'cooldown:', ''],
    [{ ...ruleYaml, rate_limit: { count: 0, per: '1m' } }, 'rate_limit.count:', ''],
    [{ ...ruleYaml, rate_limit: { count: 1, per: 'x' } }, 'rate_limit.per:', ''],
    [{ ...ruleYaml, enabled: 'yes' }, 'enabled:', ''],
    [{ ...ruleYaml, on: { selector: { role: 'web' } } }, 'on:', 'edge rules only'],
    [{ ...ruleYaml, pack: 'other' }, 'pack:', 'in pack "web"'],
  ];
  for (const [input, at, frag] of cases) {
    const e = errOf(() => parseRule(input, 'web'));
    t.equal(e.code, 'TRELLIS_E_RULE_INVALID', at);
    t.match(e.message, at, `message names ${at}`);
    if (frag) t.match(e.message, frag);
    t.ok(Array.isArray(e.path), 'the error carries the field path');
  }
  t.equal(errOf(() => parseRule('name: x')).code, 'TRELLIS_E_RULE_INVALID');
  const e = errOf(() => parseRule({ ...ruleYaml, rate_limit: { count: 1, per: 0 } }, 'web'));
  t.equal(e.code, 'TRELLIS_E_RULE_INVALID');
  t.same(e.path, ['rate_limit', 'per']);
});

t.test('ruleInputSchema reports issue paths the packs loader can map to YAML lines', async (t) => {
  const r = ruleInputSchema.safeParse({ ...ruleYaml, criteria: { 'trigger.payload.x': { type: 'regex', pattern: 'a(?=b)' } }, action: { ref: 'web.restart', parameters: { a: '{{ x' } } });
  t.notOk(r.success);
  const paths = r.error!.issues.map((i) => i.path);
  t.same(paths, [['criteria', 'trigger.payload.x'], ['action', 'parameters', 'a']]);
  const ok = ruleInputSchema.safeParse(ruleYaml);
  t.ok(ok.success);
  t.equal(normalizeRule(ok.data!, 'web').ref, 'web.restart-nginx');
});

t.test('compileRule matches its trigger type and renders parameters keeping references', async (t) => {
  const def = parseRule(ruleYaml, 'web');
  const rule = compileRule(def, now);
  const hit = ev({ name: 'nginx', state: 'stopped' });
  t.ok(rule.match(hit));
  t.notOk(rule.match({ ...hit, type: 'core.cpu' }), 'another trigger type never matches');
  t.notOk(rule.match(ev({ name: 'nginx', state: 'running' })));
  t.same(rule.parameters(hit), { service: 'nginx', token: '{{ secret.api_token }}' });
  const ex = rule.explain({ ...hit, type: 'core.cpu' });
  t.equal(ex.matched, false);
  t.match(ex.reasons[0], 'trigger type');
  t.equal(rule.explain(hit).matched, true);
  t.equal(errOf(() => compileRule({ ...def, criteria: [{ path: 'trigger.payload.x', type: 'nope' }] })).code, 'TRELLIS_E_RULE_INVALID');
});

t.test('RuleIndex serves rules by trigger type, unaffected by unrelated rules', async (t) => {
  const mk = (name: string, trigger: string) => ({ def: { ...parseRule({ name, trigger, action: { ref: 'a.b' } }) } as RuleDef });
  const idx = new RuleIndex<{ def: RuleDef }>();
  const a1 = mk('a1', 'core.cpu'), a2 = mk('a2', 'core.cpu'), b1 = mk('b1', 'core.disk');
  idx.add('a1', a1); idx.add('a2', a2); idx.add('b1', b1);
  for (let i = 0; i < 5000; i++) idx.add(`x${i}`, mk(`x${i}`, `other.t${i % 50}`));
  t.same(idx.forTrigger('core.cpu'), [a1, a2]);
  t.same(idx.forTrigger('core.disk'), [b1]);
  t.same(idx.forTrigger('core.none'), []);
  const snapshot = idx.forTrigger('core.cpu');
  idx.remove('a1');
  t.same(snapshot, [a1, a2], 'a returned list is not changed by later edits');
  t.same(idx.forTrigger('core.cpu'), [a2]);
  const a2moved = mk('a2', 'core.disk');
  idx.add('a2', a2moved);
  t.same(idx.forTrigger('core.cpu'), [], 'replacing under the same key moves the rule');
  t.same(idx.forTrigger('core.disk'), [b1, a2moved]);
  t.equal(idx.remove('nope'), false);
  t.equal(idx.size, 5002);
  t.equal(idx.get('b1'), b1);
});

t.test('RateGate: cooldown and a sliding-window rate limit, per key, counting suppressed', async (t) => {
  let clock = 1_000_000;
  const cool = new RateGate({ cooldownMs: 30_000 }, () => clock);
  t.ok(cool.tryFire());
  t.notOk(cool.tryFire(), 'inside the cooldown');
  clock += 29_999;
  t.notOk(cool.tryFire());
  t.ok(cool.tryFire('agent-2'), 'another key has its own cooldown');
  clock += 1;
  t.ok(cool.tryFire(), 'after the cooldown');
  t.equal(cool.suppressed, 2);

  clock = 0;
  const rate = new RateGate({ cooldownMs: 0, rateLimit: { count: 3, perMs: 60_000 } }, () => clock);
  t.ok(rate.tryFire()); clock += 10_000;
  t.ok(rate.tryFire()); clock += 10_000;
  t.ok(rate.tryFire()); clock += 10_000;
  t.notOk(rate.tryFire(), 'a fourth in the minute is refused');
  clock = 59_999;
  t.notOk(rate.tryFire());
  clock = 60_000;
  t.ok(rate.tryFire(), 'the first firing left the window');
  t.notOk(rate.tryFire(), 'the second is still inside');
  clock = 70_000;
  t.ok(rate.tryFire());
  t.equal(rate.suppressed, 3);

  const open = new RateGate({ cooldownMs: 0 });
  let fired = 0;
  for (let i = 0; i < 100; i++) if (open.tryFire()) fired++;
  t.equal(fired, 100, 'a gate with no cooldown and no rate limit lets every firing through');
  t.equal(open.suppressed, 0);
  const both = new RateGate({ cooldownMs: 5_000, rateLimit: { count: 2, perMs: 60_000 } }, () => clock);
  clock = 0; t.ok(both.tryFire());
  clock = 5_000; t.ok(both.tryFire());
  clock = 10_000; t.notOk(both.tryFire(), 'cooldown passed but the rate limit holds');
  t.equal(both.suppressed, 1);
});

t.test('http.url: only http and https, and only a URL; a URL from the datastore that is not one is not quoted', async (t) => {
  const http = (url: string) => baseAction({ runner: 'http', command: undefined, http: { method: 'GET', url, headers: {} } });
  for (const url of ['https://h.example/x?y={{ service }}', 'HTTP://h.example/', 'http://127.0.0.1:8080/{{ service }}']) {
    t.equal(errOf(() => renderAction(http(url), { service: 'a' }, { resolve })).code, 'OK', `accepted: ${url}`);
  }
  for (const [url, msg] of [
    ['file:///etc/passwd', /use http or https, not file:/], ['ftp://h.example/', /use http or https, not ftp:/],
    ['javascript:alert(1)', /use http or https, not javascript:/], [' gopher://h/', /use http or https, not gopher:/],
    ['http://', /is not a URL/], ['https://[::1/', /is not a URL/], ['{{ service }}', /is not a URL/],
  ] as const) {
    const e = errOf(() => renderAction(http(url), { service: 'x y' }, { resolve }));
    t.equal(e.code, 'TRELLIS_E_INVALID_ARGUMENT', `refused: ${url}`);
    t.match(e.message, msg);
  }
  // The service name came from an event: a rendered value that makes the URL another scheme is refused too.
  t.match(errOf(() => renderAction(http('{{ service }}://h/'), { service: 'file' }, { resolve })).message, /use http or https, not file:/);
  const fromKv = errOf(() => renderAction(http('{{ kv.region }}'), { service: 'a' }, { resolve }));
  t.match(fromKv.message, /does not render to a URL \(the message does not quote it/);
  t.notOk(fromKv.message.includes('eu-1'), 'the datastore value is not in the message');
});

t.test('jsonSurelyWithin never says "small" for a value whose JSON is over the bound (bytes and characters), seeded', async (t) => {
  const { jsonSurelyWithin } = await import('../common/rules/render.js');
  let seed = 7;
  const rnd = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
  const chars = ['a', '"', '\\', '\n', '\u0001', 'é', '€', '😀', '\u2028', '\ud800'];
  const str = (n: number) => Array.from({ length: n }, () => chars[Math.floor(rnd() * chars.length)]).join('');
  let yes = 0;
  for (let i = 0; i < 3000; i++) {
    const max = 8 + Math.floor(rnd() * 400);
    const r = rnd();
    const v: unknown = r < 0.4 ? str(Math.floor(rnd() * 80)) : r < 0.5 ? [1] : r < 0.55 ? -1.2345678901234567e-300 : Object.fromEntries(Array.from({ length: Math.floor(rnd() * 6) }, (_, k) => [str(k + 1), rnd() < 0.7 ? str(Math.floor(rnd() * 30)) : rnd() < 0.5 ? null : { x: 1 }]));
    if (!jsonSurelyWithin(v, max)) continue;
    yes++;
    const json = JSON.stringify(v);
    if (Buffer.byteLength(json, 'utf8') > max || json.length > max) { t.fail(`said within ${max}: ${json}`); return; }
  }
  t.ok(yes > 500, `often known small without serializing (${yes} of 3000)`);
  t.notOk(jsonSurelyWithin('x'.repeat(100), 100), 'a long string is not known small');
  t.notOk(jsonSurelyWithin({ a: { b: 1 } }, 1000), 'nested objects are measured by the caller');
});
