/**
 * Rule cooldowns and rate limits that hold across every hub on one PostgreSQL. A hub rule with a
 * cooldown or a rate limit claims each firing in the database (table trellis_rule_gates,
 * migration 4) with one conditional upsert, under the row's lock and in the database's clock, so
 * two hubs matching the same rule at once fire it once, and hub clocks that disagree do not
 * matter:
 *
 *   INSERT … ON CONFLICT (gate) DO UPDATE SET last_ms = now, times = (times || now)[last count]
 *     WHERE now - last_ms >= cooldown AND (fewer than count firings OR the count-th last is perMs old)
 *
 * The answer also says when the gate opens next (the last firing + cooldown, the oldest of the
 * last `count` firings + perMs). Until then this hub refuses locally without asking the database:
 * other hubs' firings only ever move that time later, so a local refusal is never wrong. A storm
 * of matching events costs one round trip per gate per opening, not one per event.
 *
 * The gate of a rule is its tenant, name and last-edit time (editing a rule starts its limits
 * afresh, as on one hub). Rows past their horizon restrict nothing and are swept hourly.
 * With one hub (lowdb, memory) this is not used: the rules engine's in-memory RateGate decides.
 */
import type { Logger } from '../../common/log.js';
import type { PostgresStore } from '../store/postgres/index.js';
import type { Store } from '../store/index.js';

export interface GateLimits {
  cooldownMs: number;
  rateLimit?: { count: number; perMs: number } | undefined;
}

/** What the rules engine asks (hub/rules): may this gate fire now, cluster-wide? */
export interface SharedRuleGates {
  /** Resolves true when the firing was claimed; false when the cooldown or rate limit holds. Rejects when the database is away. */
  tryFire(gate: string, limits: GateLimits): Promise<boolean>;
  close(): void;
}

const CLAIM = `
WITH clock AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms),
claimed AS (
  INSERT INTO trellis_rule_gates AS g (gate, last_ms, times, expires_ms)
  SELECT $1, clock.ms, ARRAY[clock.ms], clock.ms + $5 FROM clock
  ON CONFLICT (gate) DO UPDATE
    SET last_ms = EXCLUDED.last_ms,
        times = (g.times || EXCLUDED.last_ms)[greatest(1, cardinality(g.times) + 2 - greatest($3::int, 1)):],
        expires_ms = EXCLUDED.expires_ms
    WHERE EXCLUDED.last_ms - g.last_ms >= $2
      AND ($3::int = 0 OR cardinality(g.times) < $3::int OR EXCLUDED.last_ms - g.times[cardinality(g.times) - $3::int + 1] >= $4)
  RETURNING g.last_ms, g.times
)
SELECT true AS fired, last_ms, times, (SELECT ms FROM clock) AS now_ms FROM claimed
UNION ALL
SELECT false, g.last_ms, g.times, (SELECT ms FROM clock) FROM trellis_rule_gates g
  WHERE g.gate = $1 AND NOT EXISTS (SELECT 1 FROM claimed)`;

const SWEEP = `DELETE FROM trellis_rule_gates WHERE expires_ms < (extract(epoch FROM clock_timestamp()) * 1000)::bigint`;

/** Gates remembered as closed (local refusals); over this, the memory is dropped (it is only a shortcut). */
const MAX_CLOSED = 10_000;

export class PgRuleGates implements SharedRuleGates {
  /** gate → local time (Date.now()) before which it is known closed. */
  private readonly closedUntil = new Map<string, number>();
  private readonly sweeper: NodeJS.Timeout;
  /** Round trips to the database (tests, metrics). */
  claims = 0;

  constructor(private readonly store: PostgresStore, private readonly log: Logger, sweepEveryMs = 3_600_000) {
    this.sweeper = setInterval(() => {
      this.store.query(SWEEP).catch((err: Error) => this.log.warn({ err: err.message }, 'sweeping expired rule gates failed; retried in an hour'));
    }, sweepEveryMs);
    this.sweeper.unref();
  }

  async tryFire(gate: string, limits: GateLimits): Promise<boolean> {
    const local = Date.now();
    const until = this.closedUntil.get(gate);
    if (until !== undefined) {
      if (local < until) return false;
      this.closedUntil.delete(gate);
    }
    const cooldownMs = Math.max(0, Math.floor(limits.cooldownMs || 0));
    const count = limits.rateLimit ? Math.max(1, Math.floor(limits.rateLimit.count)) : 0;
    const perMs = limits.rateLimit ? Math.max(0, Math.floor(limits.rateLimit.perMs)) : 0;
    this.claims++;
    const r = await this.store.query<{ fired: boolean; last_ms: string; times: string[]; now_ms: string }>(CLAIM, [gate, cooldownMs, count, perMs, Math.max(cooldownMs, perMs)]);
    const row = r.rows[0];
    if (!row) return false; // another hub created the gate this instant: it fired
    const last = Number(row.last_ms);
    const times = (row.times ?? []).map(Number);
    let opens = last + cooldownMs;
    if (count > 0 && times.length >= count) opens = Math.max(opens, times[times.length - count]! + perMs);
    const wait = opens - Number(row.now_ms);
    if (wait > 0) {
      if (this.closedUntil.size >= MAX_CLOSED) this.closedUntil.clear();
      this.closedUntil.set(gate, local + wait);
    }
    return row.fired;
  }

  close(): void {
    clearInterval(this.sweeper);
  }
}

/** The shared gates for this hub's store: on PostgreSQL, PgRuleGates; otherwise none (in-memory gates). */
export function ruleGatesFor(store: Store, log: Logger): SharedRuleGates | undefined {
  const pg = store as Partial<PostgresStore>;
  if (typeof pg.query === 'function' && typeof pg.notify === 'function') return new PgRuleGates(store as PostgresStore, log);
  return undefined;
}
