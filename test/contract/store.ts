/**
 * The one contract every Store backend passes (STYLE.md: "A new backend passes it or does not
 * exist"). Call it from a test file with a factory that returns a fresh, empty store, and a
 * `reopen` that opens a second store on the same data when the backend is durable.
 */
import type tap from 'tap';
import type { Collection, Doc, Store } from '../../hub/store/index.js';

/** tap's subtest type (what `t.test(name, (t) => ...)` hands its callback); the root `t` fits too. */
export type ContractTest = Parameters<Parameters<typeof tap.test>[0]>[0];

export interface StoreUnderTest {
  store: Store;
  /** Opens another store over the same data; given only for durable backends. */
  reopen?: () => Promise<Store>;
}

interface Counter extends Doc {
  n: number;
}

interface User extends Doc {
  name: string;
  roles?: string[];
  profile?: { email: string; tags: string[] };
}

export function storeContract(t: ContractTest, name: string, make: () => Promise<StoreUnderTest>): void {
  /** A fresh store, closed when the subtest ends. */
  async function setup(st: ContractTest): Promise<StoreUnderTest> {
    const s = await make();
    st.teardown(() => s.store.close());
    return s;
  }
  async function reopen(st: ContractTest, s: StoreUnderTest): Promise<Store> {
    const again = await s.reopen!();
    st.teardown(() => again.close());
    return again;
  }

  void t.test(`${name}: store contract`, async (t) => {
    void t.test('a stored document reads back equal, in its own collection only', async (t) => {
      const { store } = await setup(t);
      const alice: User = { id: 'alice', name: 'Alice', roles: ['admin'], profile: { email: 'a@x', tags: [] } };
      await store.insert('users', alice);
      t.same(await store.get('users', 'alice'), alice);
      t.equal(await store.get('agents', 'alice'), undefined, 'collections are separate');
      t.equal(await store.get('users', 'bob'), undefined, 'a missing id reads as undefined');
      t.equal(await store.count('users'), 1);
      t.equal(await store.count('agents'), 0);
      t.same(await store.list('webhooks'), [], 'an untouched collection lists empty');
    });

    void t.test('put adds or replaces a document', async (t) => {
      const { store } = await setup(t);
      await store.put<User>('users', { id: 'bob', name: 'Bob' });
      await store.put<User>('users', { id: 'bob', name: 'Robert', roles: ['ops'] });
      t.same(await store.get('users', 'bob'), { id: 'bob', name: 'Robert', roles: ['ops'] });
      t.equal(await store.count('users'), 1);
    });

    void t.test('insert refuses an id that exists and leaves the stored document alone', async (t) => {
      const { store } = await setup(t);
      await store.insert<User>('users', { id: 'carol', name: 'Carol' });
      await t.rejects(store.insert<User>('users', { id: 'carol', name: 'Impostor' }), {
        code: 'TRELLIS_E_ALREADY_EXISTS',
      });
      t.same(await store.get('users', 'carol'), { id: 'carol', name: 'Carol' });
    });

    void t.test('list keeps insertion order and applies the filter', async (t) => {
      const { store } = await setup(t);
      // Number-like ids would come first, sorted, if the order came from a plain object.
      for (const id of ['b', '10', 'a', '2', 'c']) await store.put('kv', { id, even: id.length % 2 === 0 });
      const ids = async (filter?: (d: Doc) => boolean) => (await store.list('kv', filter)).map((d) => d.id);
      t.same(await ids(), ['b', '10', 'a', '2', 'c']);
      await store.put('kv', { id: '10', even: true, replaced: true });
      t.same(await ids(), ['b', '10', 'a', '2', 'c'], 'put over an id keeps its place');
      await store.delete('kv', 'b');
      await store.insert('kv', { id: 'b', even: false });
      t.same(await ids(), ['10', 'a', '2', 'c', 'b'], 'delete then insert moves it to the end');
      t.same(await ids((d) => d.even === true), ['10']);
      t.same(await ids(() => false), []);
    });

    void t.test('documents are copies: callers cannot change stored state by accident', async (t) => {
      const { store } = await setup(t);
      const doc: User = { id: 'dave', name: 'Dave', profile: { email: 'd@x', tags: ['a'] } };
      await store.put('users', doc);
      doc.name = 'changed after put';
      doc.profile!.tags.push('changed after put');
      const got = (await store.get<User>('users', 'dave'))!;
      got.name = 'changed after get';
      got.profile!.tags.push('changed after get');
      const [listed] = await store.list<User>('users');
      listed!.profile!.email = 'changed after list';
      const updated = await store.update<User>('users', 'dave', (cur) => ({ ...cur!, roles: ['r'] }));
      updated!.roles!.push('changed after update');
      t.same(await store.get('users', 'dave'), {
        id: 'dave',
        name: 'Dave',
        profile: { email: 'd@x', tags: ['a'] },
        roles: ['r'],
      });
      await t.rejects(
        store.list<User>('users', (d) => {
          d.name = 'changed in a filter';
          return true;
        }),
        TypeError,
        'a filter that writes to the document throws',
      );
      t.equal((await store.get<User>('users', 'dave'))!.name, 'Dave');
    });

    void t.test('update is atomic: 100 concurrent increments end at exactly 100', async (t) => {
      const { store } = await setup(t);
      const results = await Promise.all(
        Array.from({ length: 100 }, () =>
          store.update<Counter>('meta', 'counter', (cur) => ({ id: 'counter', n: (cur?.n ?? 0) + 1 })),
        ),
      );
      t.equal((await store.get<Counter>('meta', 'counter'))!.n, 100);
      t.same(results.map((r) => r!.n).sort((a, b) => a - b), Array.from({ length: 100 }, (_, i) => i + 1),
        'each update resolves to the value it stored');
    });

    void t.test('an update whose function throws changes nothing and its error propagates', async (t) => {
      const { store } = await setup(t);
      await store.put<Counter>('meta', { id: 'c', n: 1 });
      const boom = new Error('boom');
      await t.rejects(
        store.update<Counter>('meta', 'c', (cur) => {
          cur!.n = 99; // mutating the argument must not leak into the store
          throw boom;
        }),
        boom,
      );
      t.same(await store.get('meta', 'c'), { id: 'c', n: 1 });
      await t.rejects(store.update('meta', 'missing', () => { throw boom; }), boom);
      t.equal(await store.get('meta', 'missing'), undefined);
      await t.rejects(
        store.update<Counter>('meta', 'c', () => ({ id: 'other', n: 2 })),
        { code: 'TRELLIS_E_INVALID_ARGUMENT' },
        'an update cannot change the id',
      );
      t.same(await store.list('meta'), [{ id: 'c', n: 1 }]);
    });

    void t.test('update creates, replaces and deletes', async (t) => {
      const { store } = await setup(t);
      t.same(await store.update<Counter>('meta', 'x', (cur) => cur ?? { id: 'x', n: 0 }), { id: 'x', n: 0 });
      t.same(await store.update<Counter>('meta', 'x', (cur) => ({ ...cur!, n: cur!.n + 5 })), { id: 'x', n: 5 });
      t.same(await store.get('meta', 'x'), { id: 'x', n: 5 });
      t.equal(await store.update('meta', 'x', () => undefined), undefined);
      t.equal(await store.get('meta', 'x'), undefined, 'returning undefined deletes');
      t.equal(await store.update('meta', 'x', () => undefined), undefined, 'deleting nothing is fine');
    });

    void t.test('an update function cannot change the store itself', async (t) => {
      const { store } = await setup(t);
      let inner: Promise<unknown> | undefined;
      await store.update<Counter>('meta', 'a', () => {
        // Settled into a value at once, so the rejection is never unhandled.
        inner = store.put('meta', { id: 'b' }).then(() => 'stored', (err: unknown) => err);
        return { id: 'a', n: 1 };
      });
      t.match(await inner, { code: 'TRELLIS_E_INTERNAL' });
      t.equal(await store.get('meta', 'b'), undefined);
    });

    void t.test('delete reports whether there was a document', async (t) => {
      const { store } = await setup(t);
      t.equal(await store.delete('users', 'nobody'), false);
      await store.put('users', { id: 'erin' });
      t.equal(await store.delete('users', 'erin'), true);
      t.equal(await store.get('users', 'erin'), undefined);
      t.equal(await store.delete('users', 'erin'), false);
      t.equal(await store.count('users'), 0);
    });

    void t.test('values that are not plain JSON are rejected, not silently changed', async (t) => {
      const { store } = await setup(t);
      const circular: Record<string, unknown> = { id: 'circ' };
      circular.self = circular;
      const bad: [string, unknown][] = [
        ['a Date', { id: 'd', at: new Date() }],
        ['NaN', { id: 'd', n: NaN }],
        ['a function', { id: 'd', f: () => 1 }],
        ['a Map', { id: 'd', m: new Map() }],
        ['a bigint', { id: 'd', b: 1n }],
        ['undefined in an array', { id: 'd', a: [1, undefined] }],
        ['a circular reference', circular],
        ['an empty id', { id: '' }],
        ['a missing id', { name: 'x' }],
        ['a non-object', 'str'],
      ];
      for (const [what, doc] of bad) {
        await t.rejects(store.put('kv', doc as Doc), { code: 'TRELLIS_E_INVALID_ARGUMENT' }, what);
      }
      await t.rejects(store.get('nope' as Collection, 'x'), { code: 'TRELLIS_E_INVALID_ARGUMENT' }, 'unknown collection');
      t.equal(await store.count('kv'), 0);
      await store.put('kv', { id: 'u', gone: undefined, kept: null });
      t.same(await store.get('kv', 'u'), { id: 'u', kept: null }, 'undefined properties are dropped, as JSON does');
    });

    void t.test('a closed store refuses every call', async (t) => {
      const { store } = await setup(t);
      await store.put('kv', { id: 'k' });
      await store.close();
      const calls: [string, () => Promise<unknown>][] = [
        ['get', () => store.get('kv', 'k')],
        ['list', () => store.list('kv')],
        ['count', () => store.count('kv')],
        ['insert', () => store.insert('kv', { id: 'n' })],
        ['put', () => store.put('kv', { id: 'n' })],
        ['delete', () => store.delete('kv', 'k')],
        ['update', () => store.update('kv', 'k', (d) => d)],
        ['flush', () => store.flush()],
      ];
      for (const [what, call] of calls) {
        await t.rejects(call(), { code: 'TRELLIS_E_SHUTDOWN', message: /closed/ }, what);
      }
      await store.close();
      t.ok(true, 'closing twice is harmless');
    });

    // Durability checks only for backends that can reopen their data.
    const probe = await make();
    await probe.store.close();
    if (!probe.reopen) return;

    void t.test('awaited writes are in the store reopened from disk', async (t) => {
      const s = await setup(t);
      const { store } = s;
      for (const id of ['b', '10', 'a', '2']) await store.insert('kv', { id, v: id });
      await store.put('kv', { id: 'a', v: 'replaced' });
      await store.delete('kv', 'b');
      await store.update<Counter>('meta', 'counter', () => ({ id: 'counter', n: 7 }));
      await store.insert('users', { id: 'u1', profile: { tags: ['x', 'y'] }, nothing: null });
      // The first store stays open: what was awaited must already be on disk.
      const again = await reopen(t, s);
      t.same(await again.list('kv'), [{ id: '10', v: '10' }, { id: 'a', v: 'replaced' }, { id: '2', v: '2' }],
        'contents and insertion order survive');
      t.same(await again.get('meta', 'counter'), { id: 'counter', n: 7 });
      t.same(await again.get('users', 'u1'), { id: 'u1', profile: { tags: ['x', 'y'] }, nothing: null });
    });

    void t.test('flush makes un-awaited writes durable', async (t) => {
      const s = await setup(t);
      const pending = Array.from({ length: 20 }, (_, i) => s.store.put('kv', { id: `k${i}`, i }));
      await s.store.flush();
      const again = await reopen(t, s);
      t.equal(await again.count('kv'), 20);
      await Promise.all(pending);
    });

    void t.test('close writes what is pending', async (t) => {
      const s = await setup(t);
      const pending = s.store.put('kv', { id: 'last' });
      await s.store.close();
      await pending;
      const again = await reopen(t, s);
      t.same(await again.get('kv', 'last'), { id: 'last' });
    });
  });
}
