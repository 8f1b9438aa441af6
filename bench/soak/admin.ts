/**
 * The soak's admin client: the admin gRPC clients the CLI uses (cli/client.ts), logged in with
 * the admin password, logging in again after a hub restart. It writes datastore values and
 * creates rules throughout the run and remembers every write that got an OK, so the end of the
 * run can check each one is still there with its value.
 */
import crypto from 'node:crypto';
import { adminClients, call, type AdminClients } from '../../cli/client.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

export class SoakAdmin {
  private clients: AdminClients | undefined;
  /** Writes that got an OK: kv key → value, and rule names. */
  readonly ackedKv = new Map<string, string>();
  readonly ackedRules = new Set<string>();
  failed = 0;
  private n = 0;

  constructor(private readonly addr: string, private readonly caPem: string, private readonly password: string) {}

  /** The logged-in clients (logging in first when needed). */
  async get(timeoutMs = 10_000): Promise<AdminClients> {
    if (this.clients) return this.clients;
    const anon = adminClients(this.addr, this.caPem);
    try {
      const r = await call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username: 'admin', password: this.password }, timeoutMs);
      this.clients = adminClients(this.addr, this.caPem, r.token);
      return this.clients;
    } finally { anon.close(); }
  }

  /** Drops the session (after a hub restart, or an error that may mean it is gone). */
  reset(): void { this.clients?.close(); this.clients = undefined; }

  async run<Res>(fn: (c: AdminClients) => Promise<Res>): Promise<Res> {
    const c = await this.get();
    try { return await fn(c); } catch (err) { this.reset(); throw err; }
  }

  /** Waits until the hub answers an authenticated call. */
  async waitUp(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try { await this.run((c) => call<T.ListRulesRequest, T.ListRulesResponse__Output>(c, c.rules, c.rules.ListRules, {}, 5_000)); return; } catch (err) {
        if (Date.now() > deadline) throw new Error(`the hub did not answer the admin API within ${timeoutMs / 1000} s: ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }

  /** One write: mostly kv set, every 8th a rule create (a hub rule on a trigger nobody publishes). */
  async writeOne(): Promise<void> {
    const i = ++this.n;
    try {
      if (i % 8 === 0) {
        const name = `soak-extra-${i}`;
        const def = { name, trigger: 'core.soak_never', action: { ref: 'soak.run', parameters: { t: String(i) } }, target: { agent: '{{ trigger.agent }}' } };
        await this.run((c) => call<T.CreateRuleRequest, T.RuleInfo__Output>(c, c.rules, c.rules.CreateRule, { definition: JSON.stringify(def), replace: false, source: 'soak' }, 5_000));
        this.ackedRules.add(name);
      } else {
        const key = `soak/k${i % 500}`;
        const value = `v${i}-${crypto.randomBytes(6).toString('hex')}`;
        await this.run((c) => call<T.KvSetRequest, T.KvEntry__Output>(c, c.kv, c.kv.Set, { key, value, secret: i % 3 === 0, ttlMs: 0, scope: 'tenant', private: false }, 5_000));
        this.ackedKv.set(key, value); // the last OK'd value of a key is the one that must be there
      }
    } catch {
      this.failed++; // no OK: nothing to check (it may or may not have been applied)
    }
  }

  /** Acknowledged writes missing or with another value now. */
  async verify(): Promise<{ lost: string[]; checked: number }> {
    const lost: string[] = [];
    for (const [key, value] of this.ackedKv) {
      try {
        const e = await this.run((c) => call<T.KvGetRequest, T.KvEntry__Output>(c, c.kv, c.kv.Get, { key, scope: 'tenant', decrypt: true }, 10_000));
        if (e.value !== value) lost.push(`kv ${key}: expected ${value}, found ${e.value}`);
      } catch (err) { lost.push(`kv ${key}: ${(err as Error).message}`); }
    }
    const rules = await this.run((c) => call<T.ListRulesRequest, T.ListRulesResponse__Output>(c, c.rules, c.rules.ListRules, {}, 10_000));
    const names = new Set(rules.rules.map((r) => r.name));
    for (const name of this.ackedRules) if (!names.has(name)) lost.push(`rule ${name}: missing`);
    return { lost, checked: this.ackedKv.size + this.ackedRules.size };
  }

  close(): void { this.reset(); }
}
