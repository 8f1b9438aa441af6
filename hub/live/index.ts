/**
 * Live streams and the rights they still hold. Every long-lived stream (the admin port's server
 * streams: `audit --follow`, `executions follow`, `run`, ...; the web port's `/stream`) registers
 * here with the principal it started with and a check of what it needs (permissions, tenant).
 *
 * One mechanism for all of them: on any change that can affect rights (the IAM directory's
 * `changed` event: users, groups, roles, grants, tenants; credentials revoked: sessions, API
 * keys, deactivation) and on a periodic backstop, each stream's principal is re-resolved from
 * its own credentials (the same session or API key, read again from the store) and its check
 * re-run. A stream whose credentials are gone ends with TRELLIS_E_UNAUTHENTICATED; one that lost
 * a permission or its tenant ends with TRELLIS_E_PERMISSION_DENIED. Revocations also cut at once
 * (synchronously), before the re-resolution.
 */
import type { EventEmitter } from 'node:events';
import { TrellisError, isTrellisError } from '../../common/errors.js';
import type { Principal } from '../authz/index.js';
import type { Revocation } from '../auth/index.js';
import type { Logger } from '../../common/log.js';

/** What the registry needs of hub/auth: re-resolution of a principal's own credentials. */
export interface CredentialSource extends EventEmitter {
  current(p: Principal): Promise<Principal>;
}

export interface LiveStream {
  /** The principal the stream started with (replaced by the re-resolved one on each pass). */
  principal: Principal;
  /** Throws (PERMISSION_DENIED) when `p` no longer qualifies for this stream. */
  check(p: Principal): void;
  /** Ends the stream with `err`; called at most once. */
  cut(err: TrellisError): void;
}

export interface LiveStreamsOptions {
  auth: CredentialSource;
  /** Emits `changed` on any change to users, groups, roles or tenants (hub/iam). */
  iam: EventEmitter;
  log: Logger;
  /** Backstop: every stream is re-checked this often even without a change. @default 15000 */
  recheckIntervalMs?: number;
}

const REVOKED = 'the credentials of this stream were revoked (user deactivated or deleted, session ended or API key disabled)';

function matches(p: Principal, r: Revocation): boolean {
  return ('username' in r && p.username === r.username) || ('sessionId' in r && p.sessionId === r.sessionId) || ('apiKeyId' in r && p.apiKeyId === r.apiKeyId);
}

/** The identity of a principal's credentials: one re-resolution per pass however many streams share them. */
function credentialKey(p: Principal): string {
  return p.apiKeyId ? `k:${p.apiKeyId}` : `s:${p.sessionId ?? ''}:${p.username}`;
}

export class LiveStreams {
  private readonly streams = new Set<LiveStream>();
  private readonly timer: NodeJS.Timeout;
  private running?: Promise<void>;
  private again = false;
  /** Counts changes (IAM changes and revocations); see `add`. */
  private changes = 0;
  private readonly onChanged = () => { this.changes++; void this.recheck(); };
  private readonly onRevoked = (r: Revocation) => {
    this.changes++;
    for (const s of [...this.streams]) if (matches(s.principal, r)) this.end(s, new TrellisError('TRELLIS_E_UNAUTHENTICATED', REVOKED));
    void this.recheck();
  };

  constructor(private readonly o: LiveStreamsOptions) {
    o.auth.on('revoked', this.onRevoked);
    o.iam.on('changed', this.onChanged);
    this.timer = setInterval(this.onChanged, o.recheckIntervalMs ?? 15_000);
    this.timer.unref();
  }

  get size(): number { return this.streams.size; }

  /** Read before authenticating a stream and pass to `add`: a change in between is not missed. */
  get generation(): number { return this.changes; }

  /**
   * Registers a stream; the returned function unregisters it (call it when the stream ends).
   * `since`: the generation read before its principal was resolved; if rights changed since,
   * the stream is re-checked at once.
   */
  add(s: LiveStream, since?: number): () => void {
    this.streams.add(s);
    if (since !== undefined && since !== this.changes) void this.recheck();
    return () => { this.streams.delete(s); };
  }

  /**
   * Re-resolves every stream's principal and re-runs its check. Single-flight: a change during a
   * pass runs one more pass after it, so the last change is always seen.
   */
  recheck(): Promise<void> {
    if (this.running) { this.again = true; return this.running; }
    this.running = (async () => {
      do { this.again = false; await this.pass(); } while (this.again);
    })().finally(() => { this.running = undefined; });
    return this.running;
  }

  private async pass(): Promise<void> {
    const resolved = new Map<string, Promise<Principal>>();
    for (const s of [...this.streams]) {
      const key = credentialKey(s.principal);
      let p = resolved.get(key);
      if (!p) { p = this.o.auth.current(s.principal); p.catch(() => undefined); resolved.set(key, p); }
      try {
        const now = await p;
        if (!this.streams.has(s)) continue;
        s.check(now);
        s.principal = now;
      } catch (e) {
        if (!this.streams.has(s)) continue;
        if (isTrellisError(e, 'TRELLIS_E_UNAUTHENTICATED') || isTrellisError(e, 'TRELLIS_E_PERMISSION_DENIED')) this.end(s, e as TrellisError);
        else this.o.log.warn({ err: e, user: s.principal.username }, 'live stream re-check failed; kept until the next one');
      }
    }
  }

  private end(s: LiveStream, err: TrellisError): void {
    if (!this.streams.delete(s)) return;
    this.o.log.info({ user: s.principal.username, code: err.code, reason: err.message }, 'live stream cut');
    try { s.cut(err); } catch (e) { this.o.log.warn({ err: e }, 'cutting a live stream failed'); }
  }

  close(): void {
    clearInterval(this.timer);
    this.o.auth.off('revoked', this.onRevoked);
    this.o.iam.off('changed', this.onChanged);
  }
}
