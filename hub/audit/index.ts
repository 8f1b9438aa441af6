/** The audit log. (Placeholder sink until the file-backed log lands: keeps records in memory.) */
import type { AuditEntry, AuditSink } from './types.js';
export type { AuditEntry, AuditSink } from './types.js';

export class MemoryAudit implements AuditSink {
  readonly entries: AuditEntry[] = [];
  record(e: AuditEntry): void {
    this.entries.push(e);
    if (this.entries.length > 10_000) this.entries.shift();
  }
}
