/**
 * The cluster bus (hub/cluster/bus.ts) and the store's change hook, on a real PostgreSQL: two
 * stores on one database stand for two hubs. Messages reach the other hub and not the sender
 * (unless asked), forged or oversize messages are refused or ignored, another hub's document
 * change is reported by `onChange` (own writes are not), and after a database restart the bus
 * listens again and `onResync` fires.
 */
import t, { type Test } from 'tap';
import pg from 'pg';
import { PostgresStore } from '../hub/store/index.js';
import { migrateDatabase } from '../hub/store/postgres/index.js';
import { LocalBus, PgBus, busFor, MAX_BUS_MESSAGE } from '../hub/cluster/bus.js';
import { MemoryStore } from '../hub/store/memory.js';
import { needs } from './helpers/needs.js';
import { postgresMissing, startPostgres, type Postgres } from './helpers/postgres.js';
import { waitFor, captureLogger } from './helpers/hub.js';

void t.test('cluster bus', needs(t, postgresMissing()), async (t) => {
  const server: Postgres = await startPostgres();
  t.teardown(() => server.close());
  const url = await server.createDatabase();
  await migrateDatabase({ url });
  async function open(t: Test): Promise<PostgresStore> {
    const s = await PostgresStore.open({ url, maxReconnectDelayMs: 300 });
    t.teardown(() => s.close());
    return s;
  }

  void t.test('a message reaches the other hub, not the sender; self only when asked', async (t) => {
    const { log } = captureLogger();
    const a = new PgBus('hub-a', await open(t), log);
    const b = new PgBus('hub-b', await open(t), log);
    const atB: Array<[unknown, string]> = [];
    const atA: unknown[] = [];
    const atASelf: unknown[] = [];
    await b.subscribe('dispatch', (m, from) => atB.push([m, from]));
    await a.subscribe('dispatch', (m) => atA.push(m));
    await a.subscribe('dispatch', (m) => atASelf.push(m), { self: true });
    await a.publish('dispatch', { id: 'x1' });
    await waitFor(() => atB.length === 1 && atASelf.length === 1, 5000, 'delivery');
    t.same(atB[0], [{ id: 'x1' }, 'hub-a']);
    t.same(atASelf, [{ id: 'x1' }]);
    t.same(atA, [], 'the sender does not hear itself by default');
    t.ok(a.clustered);
  });

  void t.test('bad topics and oversize messages are refused; forged payloads are ignored', async (t) => {
    const { log, lines } = captureLogger();
    const store = await open(t);
    const a = new PgBus('hub-a', store, log);
    await t.rejects(a.publish('Bad-Topic', {}), { code: 'TRELLIS_E_INVALID_ARGUMENT' });
    await t.rejects(a.publish('x', { big: 'y'.repeat(MAX_BUS_MESSAGE) }), { code: 'TRELLIS_E_INVALID_ARGUMENT' });
    await t.rejects(store.listen('trellis_store', () => undefined), { code: 'TRELLIS_E_INVALID_ARGUMENT' }, 'the store channel is not a bus channel');
    const got: unknown[] = [];
    await a.subscribe('forge', (m) => got.push(m));
    // Anyone who can NOTIFY can send garbage: it is dropped with a warning, the hub keeps going.
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    t.teardown(() => c.end());
    await c.query(`SELECT pg_notify('trellis_forge', 'not json')`);
    await c.query(`SELECT pg_notify('trellis_forge', '{"f":1,"m":{}}')`);
    await c.query(`SELECT pg_notify('trellis_forge', '{"f":"hub-z","m":[1]}')`);
    await c.query(`SELECT pg_notify('trellis_forge', '{"f":"hub-z","m":{"ok":true}}')`);
    await waitFor(() => got.length === 1, 5000, 'the valid message');
    t.same(got, [{ ok: true }]);
    t.ok(lines.filter((l) => /ignored a (malformed )?cluster message/.test(l)).length >= 3, 'the forged ones are logged');
  });

  void t.test("onChange reports another hub's changes, not this hub's own", async (t) => {
    const a = await open(t);
    const b = await open(t);
    const seenA: string[] = [];
    const seenB: string[] = [];
    a.onChange((c, id) => seenA.push(`${c}/${id}`));
    b.onChange((c, id) => seenB.push(`${c}/${id}`));
    await a.put('revocations', { id: 'serial-1', at: 1 });
    await waitFor(() => seenB.includes('revocations/serial-1'), 5000, 'b hears a change');
    await a.delete('revocations', 'serial-1');
    await waitFor(() => seenB.filter((s) => s === 'revocations/serial-1').length === 2, 5000, 'b hears the delete');
    t.equal(b.peek('revocations', 'serial-1'), undefined, 'and its cache has it gone when told');
    // A notice of this hub's own write arrives after the commit answered (almost always): it is
    // not reported. (Rarely it overtakes the answer and is reported: subscribers tolerate it.)
    for (let k = 0; k < 20; k++) {
      await a.put('revocations', { id: `own-${k}`, at: k });
      await a.delete('revocations', `own-${k}`);
    }
    await b.put('revocations', { id: 'from-b', at: 1 });
    await waitFor(() => seenA.includes('revocations/from-b'), 5000, 'a hears b');
    const own = seenA.filter((x) => x.startsWith('revocations/own-')).length;
    t.ok(own < 5, `a is not told about its own writes (${own} of 40 reported)`);
  });

  void t.test('after a database restart the bus listens again and onResync fires', async (t) => {
    const { log } = captureLogger();
    const sa = await open(t);
    const sb = await open(t);
    const a = new PgBus('hub-a', sa, log);
    const b = new PgBus('hub-b', sb, log);
    const got: unknown[] = [];
    let resyncs = 0;
    let wholes = 0;
    await b.subscribe('events', (m) => got.push(m));
    b.onResync(() => resyncs++);
    sb.onChange((_c, id) => { if (id === undefined) wholes++; });
    await server.stop();
    await server.start();
    await waitFor(() => resyncs >= 1 && sa.state === 'ready' && sb.state === 'ready', 20_000, 'both stores back');
    t.ok(wholes > 0, 'every collection is reported changed after the reload');
    await a.publish('events', { n: 1 });
    await waitFor(() => got.length === 1, 5000, 'a message after the restart');
    t.same(got, [{ n: 1 }]);
  });

  void t.test('one hub alone: LocalBus, nothing heard, same limits', async (t) => {
    const { log } = captureLogger();
    const bus = busFor(new MemoryStore(), 'hub-solo', log);
    t.ok(bus instanceof LocalBus);
    t.notOk(bus.clustered);
    await bus.publish('dispatch', { id: 'x' });
    await t.rejects(bus.publish('dispatch', { big: 'y'.repeat(MAX_BUS_MESSAGE) }), { code: 'TRELLIS_E_INVALID_ARGUMENT' });
    t.ok(busFor(await open(t), 'hub-a', log) instanceof PgBus);
  });
});
