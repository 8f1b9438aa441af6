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
