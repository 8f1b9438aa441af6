/**
 * Datastore figures, in-process: KvStore get+decrypt throughput, and a master key rotation of
 * 10,000 secrets with the lowdb store in a temp dir. Notes go to stderr; the caller prints.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore } from '../hub/store/index.js';
import { Keyring } from '../hub/secrets/keyring.js';
import { KvStore } from '../hub/kv/index.js';
import { note } from './lib.js';

const WHO = { username: 'bench', isAdmin: true };

async function seeded(n: number): Promise<{ kv: KvStore; close(): Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'trellis-bench-kv-'));
  const store = await openStore({ kind: 'lowdb', path: join(dir, 'state.json') });
  const kv = new KvStore(store, await Keyring.open(dir));
  for (let i = 0; i < n; i += 1000) {
    await Promise.all(Array.from({ length: Math.min(1000, n - i) }, (_, j) => kv.set('default', WHO, { key: `bench/${i + j}`, value: `secret-value-${i + j}-${'x'.repeat(32)}`, secret: true })));
  }
  return { kv, close: async () => { await kv.close(); await store.close(); await rm(dir, { recursive: true, force: true }); } };
}

/** Gets with decrypt per second over ~1 s (1,000 secrets, round robin). */
export async function benchKvGetDecrypt(): Promise<{ perS: number }> {
  const { kv, close } = await seeded(1000);
  try {
    for (let i = 0; i < 2000; i++) await kv.get('default', WHO, `bench/${i % 1000}`, { decrypt: true }); // warm-up
    let n = 0;
    const t0 = performance.now();
    while (performance.now() - t0 < 1000) {
      for (let j = 0; j < 100; j++, n++) await kv.get('default', WHO, `bench/${n % 1000}`, { decrypt: true });
    }
    const s = (performance.now() - t0) / 1000;
    note(`kv: ${n} get+decrypt calls in ${s.toFixed(2)} s`);
    return { perS: n / s };
  } finally {
    await close();
  }
}

/** Seconds to rotate the master key over 10,000 secrets (lowdb store, durable writes). */
export async function benchKvRotate(n = 10_000): Promise<{ seconds: number }> {
  const { kv, close } = await seeded(n);
  try {
    const t0 = performance.now();
    const p = await kv.rotate();
    const seconds = (performance.now() - t0) / 1000;
    if (!p.finished || p.done !== n) throw new Error(`rotation re-encrypted ${p.done}/${p.total}`);
    note(`kv: rotated ${n} secrets to key v${p.keyVersion} in ${seconds.toFixed(2)} s`);
    return { seconds };
  } finally {
    await close();
  }
}
