/**
 * Batched writers (the audit log, the execution history) write from one queue: jobs run one
 * after another, never overlapping, and a flush is coalesced on a short timer — or run at once
 * (delay 0) when the queue is long.
 */
export class SerialFlusher {
  private timer?: NodeJS.Timeout;
  private chain: Promise<unknown> = Promise.resolve();

  constructor(private readonly write: () => Promise<void>) {}

  /** Runs job after every job queued before it; resolves or rejects with its own result. */
  run<T>(job: () => Promise<T>): Promise<T> {
    const next = this.chain.then(job);
    this.chain = next.catch(() => undefined);
    return next;
  }

  /** Writes everything queued so far. */
  flush(): Promise<void> {
    return this.run(this.write);
  }

  /** A flush in `ms`; an earlier pending one stands, unless `ms` is 0 (then it runs now). */
  schedule(ms: number): void {
    if (this.timer && ms > 0) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => { this.timer = undefined; void this.flush().catch(() => undefined); }, ms);
  }

  /** Cancels a pending timer (close: the caller flushes itself). */
  cancel(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Resolves when every job queued so far has ended. */
  async idle(): Promise<void> {
    await this.chain;
  }
}
