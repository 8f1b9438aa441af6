/**
 * The template language's trust boundary, as pure functions (issue 10, findings 1, 3 and the
 * `shell: true` part of 18): event data substituted by a rule is escaped and never parsed again;
 * validation messages name a reference, never its value; every error of a run is masked with
 * its secrets; a shell command must quote every substitution, at pack validation and at render.
 */
import t from 'tap';
import type { ActionDef, RuleDef, TriggerEvent } from '../common/automation/types.js';
import { compileRule, escapeTemplate, findRefs, renderAction, renderKeepingRefs, resolveRefs, renderTemplate, shellTemplateProblem, type Ref } from '../common/rules/index.js';
import { maskText, maskError } from '../common/mask.js';
import { loadPack } from '../common/packs/index.js';
import { TrellisError } from '../common/errors.js';

const ev = (payload: unknown): TriggerEvent => ({ id: 'e1', type: 'test.x', payload, agent: 'a1', tenant: 'default', timeMs: 0 });
function errOf(f: () => unknown): { code: string; message: string } {
  try { f(); } catch (e) { return e as TrellisError; }
  throw new Error('expected an error');
}

const action = (over: Partial<ActionDef> = {}): ActionDef => ({
  ref: 'p.a', pack: 'p', name: 'a', description: '', runner: 'command', command: ['/bin/echo', '{{ msg }}'],
  parameters: {
    msg: { type: 'string', default: '' }, n: { type: 'integer', default: 1 }, mode: { type: 'string', enum: ['fast', 'safe'], default: 'safe' },
    pin: { type: 'string', secret: true }, num: { type: 'integer', secret: true },
  },
  timeoutMs: 1000, env: { MSG: '{{ msg }}' }, ...over,
});

const SECRET = 'S3CRET-VALUE-8a1f';
const resolve = (r: Ref) => (r.kind === 'secret' ? { value: SECRET, secret: true } : r.key === 'nested' ? { value: '{{ secret.x }}', secret: false } : { value: 'kv-value', secret: false });

t.test('escaped text renders back to itself, whatever it holds', async (t) => {
  for (const s of ['{{ secret.x }}', '{{{', 'a{{{{b}}', '{{ "{{" }}', '}}{{', '{{ kv.a | upper }} and {{ x }}', 'plain', '{', '{{"{{"}}']) {
    const e = escapeTemplate(s);
    t.same(findRefs(e), [], `${JSON.stringify(s)}: no reference survives escaping`);
    t.equal(resolveRefs(e, () => { throw new Error('must not be called'); }), s, `${JSON.stringify(s)} round-trips`);
  }
  t.equal(renderTemplate('{{ "{{" }} kv.x }}', {}), '{{ kv.x }}', 'Jinja\'s escape works in author text');
});

t.test('a rule renders event data escaped and keeps only the author\'s references for the run', async (t) => {
  const def = {
    ref: 'r', trigger: 'test.x', criteria: {}, enabled: true, cooldownMs: 0, target: { kind: 'local' },
    action: { ref: 'p.a', parameters: { msg: 'from {{ trigger.payload.m }} and {{ kv.host }}', obj: '{{ trigger.payload.o }}', lit: '{{ "{{" }} kv.host }}' } },
  } as unknown as RuleDef;
  const p = compileRule(def).parameters(ev({ m: '{{ secret.x }}', o: { deep: ['{{ kv.a }}'] } }));
  t.same(findRefs(p).map((r) => `${r.kind}.${r.key}`), ['kv.host'], 'only the author\'s reference is a reference');
  const opened = resolveRefs(p, (r) => (r.key === 'host' ? 'h1' : 'WRONG')) as Record<string, unknown>;
  t.same(opened, { msg: 'from {{ secret.x }} and h1', obj: { deep: ['{{ kv.a }}'] }, lit: '{{ kv.host }}' });
  t.same(renderKeepingRefs('{{ trigger.n }}', { trigger: { n: 5 } }), 5, 'typed values stay typed');
  // Two values that are harmless alone must not join into a reference: a = "{", b = "{ kv.x }}".
  const split = { ...def, action: { ref: 'p.a', parameters: { msg: '{{ trigger.payload.a }}{{ trigger.payload.b }}', tail: 'x{{ trigger.payload.a }}', head: '{{ trigger.payload.b }}' } } } as unknown as RuleDef;
  const q = compileRule(split).parameters(ev({ a: '{', b: '{ kv.host }}' }));
  t.same(findRefs(q), [], 'values split around a brace join into no reference');
  t.same(resolveRefs(q, () => { throw new Error('must not be called'); }), { msg: '{{ kv.host }}', tail: 'x{', head: '{ kv.host }}' }, 'they reach the run as the text they were');
});

t.test('event data that reached a parameter is literal in the rendered action; a datastore value is not expanded', async (t) => {
  const def = { ref: 'r', trigger: 'test.x', criteria: {}, enabled: true, cooldownMs: 0, target: { kind: 'local' }, action: { ref: 'p.a', parameters: { msg: '{{ trigger.payload.m }}' } } } as unknown as RuleDef;
  const params = compileRule(def).parameters(ev({ m: '{{ secret.x }}' }));
  const r = renderAction(action(), params, { resolve });
  t.same(r.argv, ['/bin/echo', '{{ secret.x }}']);
  t.same(r.env, { MSG: '{{ secret.x }}' });
  t.same(r.secretValues, []);
  const nested = renderAction(action(), { msg: '{{ kv.nested }}' }, { resolve });
  t.same(nested.argv, ['/bin/echo', '{{ secret.x }}'], 'a kv value holding a reference stays text');
});

t.test('validation messages name where a value came from, never the value', async (t) => {
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ['integer from a secret', { n: '{{ secret.x }}' }, /^parameter "n": got a value from secret x that is not an integer$/],
    ['integer from text and a secret', { n: '7{{ secret.x }}' }, /^parameter "n": got a value from secret x that is not an integer$/],
    ['enum from a secret', { mode: '{{ secret.x }}' }, /^parameter "mode": got a value from secret x that is not one of "fast", "safe"$/],
    ['integer from a kv value', { n: '{{ kv.y }}' }, /^parameter "n": got a value from kv key y that is not an integer$/],
    ['a literal secret parameter', { num: 'S3CRET-VALUE-8a1f' }, /^parameter "num": got a secret value that is not an integer$/],
  ];
  for (const [name, params, re] of cases) {
    const e = errOf(() => renderAction(action(), params, { resolve }));
    t.equal(e.code, 'TRELLIS_E_INVALID_ARGUMENT', name);
    t.match(e.message, re, name);
    t.notOk(e.message.includes(SECRET) || e.message.includes('kv-value'), `${name}: the value is not in the message`);
  }
  t.match(errOf(() => renderAction(action(), { n: 'abc' })).message, /expected an integer, got "abc"/, 'a plain literal is still shown');
});

t.test('the run\'s masker covers every error of renderAction, and masks values in their encoded forms', async (t) => {
  // Any message that quotes a secret the run opened (here a resolver that quotes it) leaves masked.
  const quoting = (r: Ref) => {
    if (r.key === 'x') return { value: SECRET, secret: true };
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `cannot open ${r.key} next to "${SECRET}" (base64 ${Buffer.from(SECRET).toString('base64')})`);
  };
  const e = errOf(() => renderAction(action(), { msg: '{{ secret.x }}', n: '{{ kv.other }}' }, { resolve: quoting }));
  t.equal(e.code, 'TRELLIS_E_INVALID_ARGUMENT');
  t.equal(e.message, 'cannot open other next to "****" (base64 ****)');
  const literal = errOf(() => renderAction(action(), { pin: SECRET, n: '{{ kv.other }}' }, { resolve: quoting }));
  t.notOk(literal.message.includes(SECRET), 'a literal value of a secret parameter is masked too');
  const malformed = errOf(() => renderAction(action(), { pin: `{{ | ${SECRET} }}` }, { resolve }));
  t.match(malformed.message, /^template "\*\*\*\*": empty expression/, 'a malformed secret parameter is quoted masked');
  t.equal(maskText(`a ${SECRET} b ${Buffer.from(SECRET).toString('base64')} c ${JSON.stringify(SECRET)}`, [SECRET]), 'a **** b **** c "****"');
  const masked = maskError(new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `got ${SECRET}`), [SECRET]) as TrellisError;
  t.same([masked.code, masked.message], ['TRELLIS_E_INVALID_ARGUMENT', 'got ****'], 'the code survives');
});

t.test('shell: true: every substitution must be quoted and stand outside quotes', async (t) => {
  const ok = ['systemctl restart {{ service | quote }} && echo ok', 'echo {{ a | default("x") | quote }}', 'echo plain', 'echo {{ "{{" }}'];
  for (const s of ok) t.equal(shellTemplateProblem(s), undefined, s);
  const bad: [string, RegExp][] = [
    ['echo {{ msg }}', /\{\{ msg \}\} is not quoted/],
    ['echo {{ msg | quote | upper }}', /is not quoted/],
    ['echo "{{ msg | quote }}"', /inside double quotes/],
    ["echo '{{ msg | quote }}'", /inside single quotes/],
    ['echo ${{ msg | quote }}', /follows \$/],
    ['echo \\{{ msg | quote }}', /follows a backslash/],
    ['echo {{ kv.x }}', /is not quoted/],
  ];
  for (const [s, re] of bad) t.match(shellTemplateProblem(s), re, s);
  // At render time, for an action stored before this rule existed.
  const sh = action({ shell: true, command: ['echo {{ msg }}'] });
  const e = errOf(() => renderAction(sh, { msg: '$(id)' }));
  t.equal(e.code, 'TRELLIS_E_INVALID_ARGUMENT');
  t.match(e.message, /action p\.a: command: \{\{ msg \}\} is not quoted/);
  t.same(renderAction(action({ shell: true, command: ['echo {{ msg | quote }}'] }), { msg: "$(id) 'x'" }).argv, ['/bin/sh', '-c', `echo '$(id) '\\''x'\\'''`]);
});

t.test('a pack whose shell: true command substitutes a value without | quote is refused, naming the file and the field', async (t) => {
  const f = (path: string, text: string) => ({ path, content: Buffer.from(text), mode: 0o644 });
  const files = [
    f('pack.yaml', 'name: demo\nversion: 1.0.0\n'),
    f('actions/bad.yaml', 'name: bad\nrunner: command\nshell: true\ncommand: "echo {{ msg }}"\nparameters:\n  msg: { type: string }\n'),
    f('actions/inquotes.yaml', 'name: inquotes\nrunner: command\nshell: true\ncommand: "echo \\"{{ msg | quote }}\\""\nparameters:\n  msg: { type: string }\n'),
    f('actions/good.yaml', 'name: good\nrunner: command\nshell: true\ncommand: "echo {{ msg | quote }}"\nparameters:\n  msg: { type: string }\n'),
  ];
  const e = errOf(() => loadPack(files));
  t.equal(e.code, 'TRELLIS_E_PACK_INVALID');
  const lines = e.message.split('\n');
  t.ok(lines.some((l) => /^actions\/bad\.yaml:4: command: \{\{ msg \}\} is not quoted: with shell: true every substitution must end in \| quote/.test(l)), e.message);
  t.ok(lines.some((l) => /^actions\/inquotes\.yaml:4: command: .* inside double quotes/.test(l)), e.message);
  t.notOk(lines.some((l) => l.includes('good.yaml')), 'the quoted one passes');
  t.ok(loadPack(files.filter((x) => !/bad|inquotes/.test(x.path))), 'a pack with only quoted substitutions loads');
});
