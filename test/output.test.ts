/**
 * One output model: every list/show command takes `-o table|wide|json|yaml` (`--json` an alias
 * of `-o json`), through the real `trellis` binary against a real hub. json and yaml carry the
 * same records with times in RFC 3339; tables show local times; nothing colours a pipe.
 */
import t from 'tap';
import { join } from 'node:path';
import { parse as parseYaml, parseAllDocuments } from 'yaml';
import { runCli } from './helpers/cli.js';
import { startHub, tempDir, ADMIN_PASSWORD } from './helpers/hub.js';
import { localIso, toDocument, when } from '../cli/format.js';

const RFC3339 = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)$/;
const ESC = /\x1b/;

function trellis(args: string[], env: Record<string, string> = {}): Promise<{ code: number; out: string; err: string }> {
  return runCli(args, { TRELLIS_PASSWORD: '', TRELLIS_API_KEY: '', TRELLIS_TENANT: '', ...env });
}

/** Every key of a document, at any depth. */
function keys(v: unknown, out: string[] = []): string[] {
  if (Array.isArray(v)) for (const x of v) keys(x, out);
  else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) { out.push(k); keys(x, out); }
  return out;
}

t.test('toDocument: times become RFC 3339 under the key without Ms, durations stay, bytes become base64', async (t) => {
  const doc = toDocument({
    createdAtMs: 1_700_000_000_000, lastSeenMs: 0, timeMs: '1700000000000', notAfterMs: 1_700_000_000_000, ttlMs: 60_000, windowMs: 5,
    nested: [{ requestedMs: 1_700_000_000_123, intervalMs: 1000 }], data: Buffer.from('hi'), gone: undefined,
  });
  t.same(doc, {
    createdAt: '2023-11-14T22:13:20.000Z', lastSeen: null, time: '2023-11-14T22:13:20.000Z', notAfter: '2023-11-14T22:13:20.000Z', ttlMs: 60_000, windowMs: 5,
    nested: [{ requested: '2023-11-14T22:13:20.123Z', intervalMs: 1000 }], data: 'aGk=',
  });
  const agent = { id: 'a1', createdAtMs: 1_700_000_000_000, labels: { deployedAtMs: '1700000000000', role: 'web' }, env: { startedMs: '5' } };
  t.same(toDocument(agent), { id: 'a1', createdAt: '2023-11-14T22:13:20.000Z', labels: { deployedAtMs: '1700000000000', role: 'web' }, env: { startedMs: '5' } },
    'keys a host or user chose (labels, env, …) are data: kept as they are');
});

t.test('localIso: local time with its offset; when() shows - for no time', async (t) => {
  const tz = process.env.TZ;
  t.teardown(() => { if (tz === undefined) delete process.env.TZ; else process.env.TZ = tz; });
  process.env.TZ = 'UTC';
  t.equal(localIso(1_700_000_000_000), '2023-11-14T22:13:20Z');
  t.equal(localIso(1_700_000_000_123, { millis: true }), '2023-11-14T22:13:20.123Z');
  process.env.TZ = 'Asia/Kolkata';
  t.equal(localIso(1_700_000_000_000), '2023-11-15T03:43:20+05:30');
  process.env.TZ = 'America/New_York';
  t.equal(localIso(1_700_000_000_000), '2023-11-14T17:13:20-05:00');
  t.equal(when(0), '-');
});

t.test('list and show commands: -o json/yaml parse to the same records, --json is -o json, times RFC 3339, bad -o is a usage error', async (t) => {
  await using h = await startHub();
  await using home = await tempDir();
  const env = { TRELLIS_HOME: home.path };
  const login = await trellis(['login', '--hub', h.adminAddr, '--user', 'admin', '--ca', join(h.dataDir, 'ca.pem')], { ...env, TRELLIS_PASSWORD: ADMIN_PASSWORD });
  t.equal(login.code, 0, login.err);
  const made = await Promise.all([
    trellis(['tokens', 'create', '--label', 'role=web', '--description', 'for the output test'], env),
    trellis(['kv', 'set', 'colour', 'blue', '--ttl', '1h'], env),
    trellis(['roles', 'create', 'ops', '--grant', 'agents:list', '--description', 'operators'], env),
    h.enroll(), // one agent, enrolled, not running
  ]);
  for (const r of made.slice(0, 3) as Array<{ code: number; err: string }>) t.equal(r.code, 0, r.err);

  // Each command's forms run at once: the machine is shared, a spawn takes seconds.
  const commands: Array<{ args: string[]; times: string[]; alias?: boolean; table?: boolean }> = [
    { args: ['agents', 'list'], times: ['enrolledAt', 'certExpiresAt'], alias: true, table: true },
    { args: ['tokens', 'list'], times: ['createdAt', 'expiresAt'] },
    { args: ['users', 'show', 'admin'], times: ['createdAt', 'lastLogin'], alias: true },
    { args: ['sessions', 'list'], times: ['createdAt', 'expiresAt'] },
    { args: ['kv', 'list'], times: ['expiresAt', 'updatedAt'], table: true },
    { args: ['certs', 'show'], times: ['notBefore', 'notAfter'], alias: true, table: true },
  ];
  for (const { args, times, alias, table } of commands) {
    const name = args.join(' ');
    const [j, y, a, tb, wd] = await Promise.all([
      trellis([...args, '-o', 'json'], env), trellis([...args, '-o', 'yaml'], env), alias ? trellis([...args, '--json'], env) : undefined,
      table ? trellis([...args, '-o', 'table'], { ...env, FORCE_COLOR: '3' }) : undefined, table ? trellis([...args, '-o', 'wide'], { ...env, FORCE_COLOR: '3' }) : undefined,
    ]);
    t.equal(j.code, 0, `${name} -o json: ${j.err}`);
    const doc = JSON.parse(j.out) as unknown;
    if (a) {
      t.equal(a.code, 0, a.err);
      t.same(JSON.parse(a.out), doc, `${name}: --json is -o json`);
    }
    t.equal(y.code, 0, `${name} -o yaml: ${y.err}`);
    t.same(parseYaml(y.out), doc, `${name}: yaml holds the same records as json`);
    t.notOk(keys(doc).some((k) => /(?:At|Seen|Login|Until|Before|After|Created|Time)Ms$/.test(k)), `${name}: no epoch-millisecond time key is left`);
    for (const k of times) {
      const found = JSON.stringify(doc).match(new RegExp(`"${k}":("[^"]*"|null)`, 'g')) ?? [];
      t.ok(found.length > 0, `${name}: ${k} is there`);
      for (const f of found) {
        const v = JSON.parse(f.slice(k.length + 3)) as string | null;
        if (v !== null) t.match(v, RFC3339, `${name}: ${k} ${v} is RFC 3339`);
      }
    }
    for (const [o, r] of [['table', tb], ['wide', wd]] as const) {
      if (!r) continue;
      t.equal(r.code, 0, `${name} -o ${o}: ${r.err}`);
      t.notMatch(r.out, ESC, `${name} -o ${o}: no escape sequence to a pipe`);
      t.throws(() => JSON.parse(r.out), `${name} -o ${o} is not JSON`);
    }
  }

  // Lists: wide shows more columns than table; the table is what it was.
  const [table, wide] = await Promise.all([trellis(['tokens', 'list'], env), trellis(['tokens', 'list', '-o', 'wide'], env)]);
  t.match(table.out.split('\n')[0], /^ID +TENANT +USED +STATE +EXPIRES +LABELS +HOST MAY SET +BY$/);
  t.match(wide.out.split('\n')[0], /CREATED +PRIVATE +DESCRIPTION$/, 'wide adds columns');
  t.match(wide.out, /for the output test/);

  // Tables show local time (with its offset), json RFC 3339 in UTC.
  const ist = { ...env, TZ: 'Asia/Kolkata' };
  const [local, utc, kvValue, kvYaml, aj, ay] = await Promise.all([
    trellis(['users', 'show', 'admin'], ist), trellis(['users', 'show', 'admin', '-o', 'json'], ist),
    trellis(['kv', 'get', 'colour'], env), trellis(['kv', 'get', 'colour', '-o', 'yaml'], env),
    trellis(['audit', '-o', 'json', '--method', 'CreateRole'], env), trellis(['audit', '-o', 'yaml', '--method', 'AdminJoinTokens/'], env),
  ]);
  t.match(local.out, /created: +\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+05:30/, 'a table time is local');
  t.match((JSON.parse(utc.out) as { createdAt: string }).createdAt, /Z$/, 'a json time is UTC');

  // kv get: the value alone, or the whole entry.
  t.equal(kvValue.out, 'blue\n');
  t.match(parseYaml(kvYaml.out), { key: 'colour', value: 'blue', expiresAt: RFC3339 });

  // The audit log: JSON Lines and YAML documents, one per record.
  t.equal(aj.code, 0, aj.err);
  const recs = aj.out.trim().split('\n').map((l) => JSON.parse(l) as { time: string; method: string });
  t.equal(recs.length, 1);
  t.match(recs[0], { time: RFC3339, method: /CreateRole$/ });
  t.equal(ay.code, 0, ay.err);
  const docs = parseAllDocuments(ay.out).map((d) => d.toJS() as { time: string; method: string });
  t.ok(docs.length >= 1 && docs.every((d) => RFC3339.test(d.time) && d.method.includes('AdminJoinTokens/')), 'yaml: one document per record');

  // Bad formats: a usage error naming the choices; nothing reaches the hub.
  const bads = [['agents', 'list'], ['rules', 'show', 'x'], ['audit']];
  for (const [i, bad] of (await Promise.all(bads.map((args) => trellis([...args, '-o', 'xml'], env)))).entries()) {
    const args = bads[i]!;
    t.equal(bad.code, 2, `${args.join(' ')} -o xml: exit 2`);
    t.match(bad.err, /argument 'xml' is invalid\. Allowed choices are table, wide, json, yaml/, 'the error lists the choices');
    t.equal(bad.out, '');
  }
  const both = await trellis(['tokens', 'list', '--json', '-o', 'yaml'], env);
  t.equal(both.code, 2, '--json and -o yaml exclude each other');
  t.match(both.err, /--json' cannot be used with option '-o, --output/);
});
