/**
 * Lock-out per (account, source address): `maxFailures` failed logins for one name from one
 * address inside `windowMs` lock that name *at that address* for `durationMs`. Someone failing
 * logins for `admin` from their own address cannot lock the real admin out of theirs. Names that
 * are not users lock the same way (no user enumeration). The table lives in memory, bounded
 * (least recently touched entries go first), so a failed login never writes to disk; a restart
 * clears every lock-out.
 */
export interface LockoutOptions { maxFailures: number; windowMs: number; durationMs: number }

interface Entry { username: string; failures: number[]; lockedUntil: number }

/** Entries kept at most; past that the least recently touched go first. */
export const LOCKOUT_TABLE_MAX = 100_000;

export class LockoutTable {
  private readonly entries = new Map<string, Entry>();
  /** Keys of each name's entries, so an unlock or a summary does not scan the table. */
  private readonly byName = new Map<string, Set<string>>();

  constructor(private readonly opts: LockoutOptions, private readonly maxEntries = LOCKOUT_TABLE_MAX) {}

  private static key(username: string, source: string): string { return `${username}\u0000${source}`; }

  /** When the name is locked at this source until (0: not locked). */
  lockedUntil(username: string, source: string, now: number): number {
    const e = this.entries.get(LockoutTable.key(username, source));
    return e && e.lockedUntil > now ? e.lockedUntil : 0;
  }

  fail(username: string, source: string, now: number): void {
    const { maxFailures, windowMs, durationMs } = this.opts;
    const k = LockoutTable.key(username, source);
    const prev = this.entries.get(k);
    const failures = [...(prev?.failures ?? []).filter((t) => now - t < windowMs), now].slice(-maxFailures);
    this.entries.delete(k); // re-insert: most recently touched last
    this.entries.set(k, { username, failures, lockedUntil: failures.length >= maxFailures ? now + durationMs : 0 });
    let keys = this.byName.get(username);
    if (!keys) this.byName.set(username, (keys = new Set()));
    keys.add(k);
    while (this.entries.size > this.maxEntries) this.remove(this.entries.keys().next().value!);
  }

  /** A good login from this source clears its failures (other sources keep theirs). */
  succeed(username: string, source: string): void {
    this.remove(LockoutTable.key(username, source));
  }

  /** An administrator's unlock: every source. */
  unlock(username: string): void {
    for (const k of [...(this.byName.get(username) ?? [])]) this.remove(k);
  }

  private remove(k: string): void {
    const e = this.entries.get(k);
    if (!e) return;
    this.entries.delete(k);
    const keys = this.byName.get(e.username);
    keys?.delete(k);
    if (keys?.size === 0) this.byName.delete(e.username);
  }

  /** For `users show`: failures inside the window over all sources, and the latest lock-out end. */
  summary(username: string, now: number): { failures: number; lockedUntil: number; lockedSources: number } {
    let failures = 0;
    let lockedUntil = 0;
    let lockedSources = 0;
    for (const k of this.byName.get(username) ?? []) {
      const e = this.entries.get(k)!;
      failures += e.failures.filter((t) => now - t < this.opts.windowMs).length;
      if (e.lockedUntil > now) { lockedSources++; lockedUntil = Math.max(lockedUntil, e.lockedUntil); }
    }
    return { failures, lockedUntil, lockedSources };
  }
}
