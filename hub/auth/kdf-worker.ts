/**
 * A worker thread of the KDF pool (hub/auth/kdf.ts): runs scrypt synchronously on its own
 * thread, so password checks never occupy libuv's threadpool, which file I/O needs.
 */
import { parentPort } from 'node:worker_threads';
import { scryptSync } from 'node:crypto';

export interface KdfJob { id: number; password: string; salt: Uint8Array; keylen: number; N: number; r: number; p: number; maxmem: number }
export type KdfResult = { id: number; key: Uint8Array } | { id: number; error: string };

parentPort?.on('message', (job: KdfJob) => {
  let out: KdfResult;
  try {
    const key = scryptSync(job.password, job.salt, job.keylen, { N: job.N, r: job.r, p: job.p, maxmem: job.maxmem });
    out = { id: job.id, key };
  } catch (e) {
    out = { id: job.id, error: (e as Error).message };
  }
  parentPort!.postMessage(out);
});
