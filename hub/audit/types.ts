/** One audit record: who did what, where, to what, with what result. Never a credential. */
export interface AuditEntry {
  timeMs: number;
  /** User name; `apikey:<id>@<owner>` for API keys; `-` when unauthenticated. */
  actor: string;
  tenant: string;
  method: string;
  target: string;
  result: 'ok' | 'denied' | 'unauthenticated' | 'invalid' | 'error';
  sourceAddress: string;
  detail: string;
}

export interface AuditSink {
  record(entry: AuditEntry): void;
}

/** An audit entry as stored: with its time-ordered id. */
export interface AuditRecord extends AuditEntry { id: string }

export interface AuditQuery {
  /** Only records at or after this time (ms since the epoch). */
  sinceMs?: number;
  /** The most recent N matching records. @default 100 (at most 10,000) */
  limit?: number;
  /** Exact actor. */
  actor?: string;
  /** Case-insensitive substring of the full method name. */
  methodContains?: string;
}

/**
 * Where the hub keeps its audit log: files in the data directory (hub/audit/index.ts, one hub)
 * or a table in the shared PostgreSQL database (hub/audit/postgres.ts, every hub of a cluster).
 * Both queue records in memory and write them in batches; both promise the same: a crash loses
 * at most the batch not yet written, a failing backend queues (bounded, the overflow counted).
 */
export interface AuditBackend extends AuditSink {
  /** Writes everything queued so far; resolves when it is durable. */
  flush(): Promise<void>;
  /** The most recent `limit` matching records, oldest first (what is queued is written first). */
  query(q?: AuditQuery): Promise<AuditRecord[]>;
  /** Calls `onRecord` for every record from now on (of every hub sharing the log); returns the unsubscribe function. */
  follow(onRecord: (r: AuditRecord) => void, onEnd?: () => void): () => void;
  /** Live followers (a test hook). */
  readonly followerCount: number;
  /** Ends every follower, now and later (before a drain). */
  endFollowers(): void;
  /** Flushes and closes; later records are dropped with a warning. */
  close(): Promise<void>;
  /** Records waiting to be written (metrics). */
  readonly queued: number;
  /** Records dropped because the queue overflowed while the backend failed. */
  readonly dropped: number;
}
