/**
 * The threshold prefilter (hub/rules/prefilter.ts) skips only rules that cannot match: over
 * random rule sets (thresholds of every direction and strictness on a few values, with other
 * criteria beside them and rules without a threshold) and random events (numbers on and around
 * the thresholds, texts, null, missing, nested), the rules it lets through and that match are
 * exactly the rules that match when every one is evaluated. Seeded: a failure is reproducible.
 */
import t from 'tap';
import { compileRule, thresholdOf } from '../common/rules/index.js';
import { Prefilter } from '../hub/rules/prefilter.js';
import { mulberry32 } from '../bench/prng.js';
import type { RuleDef, TriggerEvent } from '../common/automation/types.js';

const OPS = ['gt', 'gte', 'lt', 'lte', 'greater than', 'lessthan_or_equal', 'equals', 'startswith', 'exists'];
const PATHS = ['trigger.payload.a', 'trigger.payload.b', 'trigger.payload.n.x', 'trigger.payload["a"]'];

function ruleDef(i: number, rnd: () => number): RuleDef {
  const pick = <T>(l: readonly T[]) => l[Math.floor(rnd() * l.length)]!;
  const criteria = [];
  for (let k = Math.floor(rnd() * 3); k >= 0; k--) {
    const type = pick(OPS);
    const pattern = type === 'startswith' ? pick(['x', '1', 'web']) : type === 'exists' ? undefined : rnd() < 0.8 ? Math.floor(rnd() * 10) - 2 + (rnd() < 0.2 ? 0.5 : 0) : pick(['3', 'x', '']);
    criteria.push({ path: pick(PATHS), type, ...(pattern === undefined ? {} : { pattern }) });
  }
  return { ref: `p.r${i}`, name: `r${i}`, trigger: 'core.t', criteria, action: { ref: 'p.a', parameters: {} }, target: { kind: 'local' } } as unknown as RuleDef;
}

function event(j: number, rnd: () => number): TriggerEvent {
  const val = () => {
    const r = rnd();
    if (r < 0.55) return Math.floor(rnd() * 12) - 3 + (rnd() < 0.2 ? 0.5 : 0); // on and around the thresholds
    if (r < 0.65) return String(Math.floor(rnd() * 10));
    if (r < 0.72) return null;
    if (r < 0.8) return undefined;
    if (r < 0.85) return [1, 2];
    return rnd() < 0.5 ? 'web-1' : -Infinity;
  };
  const payload: Record<string, unknown> = {};
  for (const k of ['a', 'b']) { const v = val(); if (v !== undefined) payload[k] = v; }
  if (rnd() < 0.6) payload.n = { x: val() };
  return { id: `e${j}`, type: 'core.t', payload, agent: 'a1', tenant: 't', timeMs: 0 };
}

t.test('the prefilter never skips a rule that matches (random rule sets and events, seeded)', async (t) => {
  let checked = 0, skipped = 0, sets = 0;
  for (let seed = 1; seed <= 200; seed++) {
    const rnd = mulberry32(seed);
    const rules = Array.from({ length: 4 + Math.floor(rnd() * 20) }, (_, i) => compileRule(ruleDef(i, rnd)));
    const pre = Prefilter.of(rules.map((r) => r.threshold));
    if (!pre) continue;
    sets++;
    for (let j = 0; j < 100; j++) {
      const ev = event(j, rnd);
      const may = pre.candidates(ev);
      const all = rules.filter((r) => r.match(ev)).map((r) => r.def.ref);
      const through = rules.filter((r, i) => may[i] === 1 && r.match(ev)).map((r) => r.def.ref);
      if (all.join() !== through.join()) {
        t.fail(`seed ${seed}, event ${JSON.stringify(ev.payload)}: all ${all.join()} vs prefiltered ${through.join()}`);
        return;
      }
      checked++;
      skipped += may.length - may.reduce((n, x) => n + x, 0);
    }
  }
  t.ok(sets > 100, `most random sets have a prefilter (${sets})`);
  t.ok(checked > 10_000, `${checked} events checked`);
  t.ok(skipped > checked, `rules were skipped (${skipped}), not all evaluated`);
});

t.test('thresholds: which criteria give one, and the boundary of each direction', async (t) => {
  const th = (criteria: unknown[]) => thresholdOf(criteria as never);
  t.equal(th([{ path: 'trigger.payload.a', type: 'equals', pattern: 3 }]), undefined, 'equals is no threshold');
  t.equal(th([{ path: 'trigger.payload.a', type: 'gt', pattern: '3' }]), undefined, 'a text pattern is no threshold (texts compare as texts)');
  const x = th([{ path: 'trigger.type', type: 'exists' }, { path: 'trigger.payload.a', type: 'gte', pattern: 3 }])!;
  t.match({ key: x.key, above: x.above, strict: x.strict, pattern: x.pattern }, { key: 'trigger.payload.a', above: true, strict: false, pattern: 3 }, 'the first threshold criterion');
  const mk = (op: string, p: number, i: number) => compileRule({ ref: `p.${op}${i}`, name: `${op}${i}`, trigger: 'core.t', criteria: [{ path: 'trigger.payload.a', type: op, pattern: p }], action: { ref: 'p.a', parameters: {} }, target: { kind: 'local' } } as unknown as RuleDef);
  const rules = [mk('gt', 5, 0), mk('gte', 5, 1), mk('lt', 5, 2), mk('lte', 5, 3), mk('gt', 9, 4)];
  const pre = Prefilter.of(rules.map((r) => r.threshold))!;
  const at = (a: unknown) => [...pre.candidates({ id: 'e', type: 'core.t', payload: { a }, agent: '', tenant: '', timeMs: 0 })].join('');
  t.equal(at(5), '01010', 'at 5: gte and lte');
  t.equal(at(6), '11000', 'at 6: gt 5 and gte 5');
  t.equal(at(4), '00110');
  t.equal(at(10), '11001');
  t.equal(at('6'), '00000', 'a text value passes no numeric threshold');
  t.equal(at(undefined), '00000');
  t.equal(Prefilter.of(rules.slice(0, 3).map((r) => r.threshold)), undefined, 'under 4 rules: no prefilter');
});

t.test('engine: with the prefilter active (5 threshold rules, one without), the rules an event passes fire, in order, and only they', async (t) => {
  const { RulesEngine } = await import('../hub/rules/index.js');
  const { MemoryStore } = await import('../hub/store/index.js');
  const { pino } = await import('pino');
  const fired: string[] = [];
  const action = { ref: 'p.a', pack: 'p', name: 'a', description: '', runner: 'command', command: ['true'], parameters: {} };
  const engine = new RulesEngine({
    store: new MemoryStore(),
    packs: { rules: () => [], action: () => action as never, tenants: () => [], get: () => undefined, on: () => undefined },
    executions: { request: async (r: { rule?: string; triggerEventId?: string }) => { fired.push(`${r.triggerEventId}:${r.rule}`); return []; } },
    agents: { peek: (id: string) => ({ id, tenant: 'default', revoked: false }) } as never,
    log: pino({ level: 'silent' }),
  } as never);
  await engine.load();
  const rule = (name: string, criteria: object) => ({ ref: name, trigger: 'cpu', criteria, action: { ref: 'p.a', parameters: {} }, target: { kind: 'agent', agent: '{{ trigger.agent }}' }, enabled: true, cooldownMs: 0 });
  for (const [name, criteria] of [
    ['warn', { 'trigger.payload.percent': { type: 'gt', pattern: 80 } }],
    ['crit', { 'trigger.payload.percent': { type: 'gte', pattern: 95 }, 'trigger.payload.host': { type: 'startswith', pattern: 'web-' } }],
    ['idle', { 'trigger.payload.percent': { type: 'lt', pattern: 5 } }],
    ['low', { 'trigger.payload.load': { type: 'lte', pattern: 0.5 } }],
    ['any-web', { 'trigger.payload.host': { type: 'startswith', pattern: 'web-' } }],
  ] as const) await engine.create('default', rule(name, criteria) as never, { by: 'admin' });
  const ev = (id: string, payload: object) => ({ id, type: 'cpu', payload: Buffer.from(JSON.stringify(payload)), timeMs: 1, agentId: 'a1', tenant: 'default' });
  await engine.onEvents([
    ev('e1', { host: 'web-1', percent: 95, load: 0.5 }),
    ev('e2', { host: 'db-1', percent: 96 }),
    ev('e3', { host: 'web-2', percent: 3, load: 2 }),
    ev('e4', { host: 'web-3', percent: '99' }),
    ev('e5', { percent: 80 }),
  ]);
  t.same(fired, ['e1:warn', 'e1:crit', 'e1:low', 'e1:any-web', 'e2:warn', 'e3:idle', 'e3:any-web', 'e4:any-web'], 'each event fires the rules it passes, in rule order');
});
