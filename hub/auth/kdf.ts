/**
 * The password KDF (scrypt) on a small pool of worker threads with a bounded queue.
 *
 * Node's async `crypto.scrypt` runs on libuv's threadpool (4 threads by default), the same
 * threads that serve file I/O: a burst of logins there stalls every disk write of the hub (a
 * `kv set` went from 30 ms to seconds). Here scrypt runs synchronously on dedicated threads, so
 * the threadpool stays free for I/O; the number of threads bounds the CPU logins can take, and
 * a full queue refuses at once (TRELLIS_E_RATE_LIMITED) instead of piling up work.
 */
import { Worker } from 'node:worker_threads';
import type { ScryptOptions } from 'node:crypto';
import { TrellisError } from '../../common/errors.js';
import type { KdfJob, KdfResult } from './kdf-worker.js';

/** scrypt, the way passwords.ts calls it. */
export type Kdf = (password: string, salt: Buffer, keylen: number, opts: Required<Pick<ScryptOptions, 'N' | 'r' | 'p' | 'maxmem'>>) => Promise<Buffer>;

export interface KdfPoolOptions {
  /** Worker threads. @default 1 */
  workers: number;
  /** Jobs waiting for a thread at most; past that, TRELLIS_E_RATE_LIMITED. @default 32 */
  maxQueue: number;
}

interface Pending { job: KdfJob; resolve: (b: Buffer) => void; reject: (e: Error) => void }

export class KdfPool {
  private readonly idle: Worker[] = [];
  private readonly busy = new Map<Worker, Pending>();
  private readonly queue: Pending[] = [];
  private nextId = 1;
  private closed = false;

  constructor(private readonly opts: KdfPoolOptions = { workers: 1, maxQueue: 32 }) {
    for (let i = 0; i < Math.max(1, opts.workers); i++) this.idle.push(this.spawn());
  }

  /** The pool as a Kdf function (for passwords.ts and the backends). */
  readonly kdf: Kdf = (password, salt, keylen, o) => this.run({ id: 0, password, salt, keylen, N: o.N, r: o.r, p: o.p, maxmem: o.maxmem });

  private spawn(): Worker {
    const w = new Worker(new URL('./kdf-worker.js', import.meta.url));
    w.unref(); // an idle worker never keeps a process alive; close() ends them
    w.on('message', (m: KdfResult) => {
      const p = this.busy.get(w);
      this.busy.delete(w);
      w.unref();
      if (p) {
        if ('key' in m) p.resolve(Buffer.from(m.key.buffer, m.key.byteOffset, m.key.byteLength));
        else p.reject(new TrellisError('TRELLIS_E_INTERNAL', `password KDF failed: ${m.error}`));
      }
      this.idle.push(w);
      this.pump();
    });
    w.on('error', (err) => {
      // A crashed worker: fail its job, replace it.
      const p = this.busy.get(w);
      this.busy.delete(w);
      p?.reject(new TrellisError('TRELLIS_E_INTERNAL', `password KDF worker failed: ${err.message}`));
      if (!this.closed) { this.idle.push(this.spawn()); this.pump(); }
    });
    return w;
  }

  private run(job: KdfJob): Promise<Buffer> {
    if (this.closed) return Promise.reject(new TrellisError('TRELLIS_E_SHUTDOWN', 'the hub is shutting down'));
    if (this.queue.length >= this.opts.maxQueue) {
      return Promise.reject(new TrellisError('TRELLIS_E_RATE_LIMITED', 'too many password checks in progress: retry in a moment'));
    }
    job.id = this.nextId++;
    return new Promise<Buffer>((resolve, reject) => {
      this.queue.push({ job, resolve, reject });
      this.pump();
    });
  }

  private pump(): void {
    while (this.idle.length > 0 && this.queue.length > 0) {
      const w = this.idle.pop()!;
      const p = this.queue.shift()!;
      this.busy.set(w, p);
      w.ref(); // a job in flight keeps the process alive until its answer
      w.postMessage(p.job);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const p of this.queue.splice(0)) p.reject(new TrellisError('TRELLIS_E_SHUTDOWN', 'the hub is shutting down'));
    for (const p of this.busy.values()) p.reject(new TrellisError('TRELLIS_E_SHUTDOWN', 'the hub is shutting down'));
    const all = [...this.idle, ...this.busy.keys()];
    this.idle.length = 0;
    this.busy.clear();
    await Promise.all(all.map((w) => w.terminate()));
  }
}
