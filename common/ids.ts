/**
 * ULIDs for hot paths (event ids on the agent, execution and audit ids on the hub).
 *
 * The `ulid` package, given no PRNG, looks its PRNG up again on every call and then asks the
 * platform for one random byte per character: 16 crypto calls per id. Profiles of
 * event_to_action_p99_ms put that at ~10% of the agent's CPU at 1,000 events/s. This PRNG draws
 * the same bytes (crypto.randomFillSync, the OS CSPRNG) 4 KiB at a time and hands them out one by
 * one. ULID randomness is for uniqueness and ordering, not a secret: pooling it is safe.
 */
import { randomFillSync } from 'node:crypto';
import { monotonicFactory, ulid, type ULIDFactory } from 'ulid';

const POOL_BYTES = 4096;

/** A PRNG for ulid: a fraction in [0, 1) from one pooled random byte. */
export function pooledPrng(poolBytes = POOL_BYTES): () => number {
  const pool = Buffer.allocUnsafe(poolBytes);
  let next = poolBytes;
  return () => {
    if (next >= poolBytes) { randomFillSync(pool); next = 0; }
    return pool[next++]! / 256;
  };
}

/** A ULID generator (upper case, as `ulid()`), with its own pooled PRNG. */
export function ulidFactory(): (timeMs?: number) => string {
  const prng = pooledPrng();
  return (timeMs?: number) => ulid(timeMs, prng);
}

/** ulid's monotonicFactory (strictly increasing within a millisecond) with a pooled PRNG. */
export function monotonicUlidFactory(): ULIDFactory {
  return monotonicFactory(pooledPrng());
}
