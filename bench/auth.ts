/**
 * Authentication and authorization figures for bench/bench.ts: login latency, RBAC decisions
 * per second, and the per-call cost of an authenticated, authorized admin RPC. Notes go to
 * stderr; the caller prints the figures.
 */
import { CompiledGrants, PERMISSIONS, isAllowed, type Grant, type Permission, type Principal } from '../hub/authz/index.js';
import { hashPassword, verifyPassword } from '../hub/auth/passwords.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';
import { mean, note } from './lib.js';

const LOGIN_N = 10;
const ROLES = 1000;
const GRANTS = 10_000;
const AUTHZ_RUN_MS = 1000;
const RPC_N = 500;
const RPC_WARMUP = 50;

/** Mean wall time of AdminAuth.Login against the hub, end to end (one channel, after one warm-up). */
export async function benchLogin(adminAddr: string, caPem: string, password: string): Promise<number> {
  const stored = await hashPassword(password);
  const kdf: number[] = [];
  for (let i = 0; i < LOGIN_N; i++) {
    const t0 = performance.now();
    if (!(await verifyPassword(password, stored))) throw new Error('verifyPassword failed');
    kdf.push(performance.now() - t0);
  }
  note(`login: raw scrypt verify (N=2^15, r=8, p=1) in this process: mean ${mean(kdf).toFixed(2)} ms over ${LOGIN_N}`);
  const c = adminClients(adminAddr, caPem);
  try {
    const login = () => call<T.LoginRequest, T.LoginResponse__Output>(c, c.auth, c.auth.Login, { username: 'admin', password });
    await login(); // warm-up: channel, TLS, JIT
    const times: number[] = [];
    for (let i = 0; i < LOGIN_N; i++) {
      const t0 = performance.now();
      await login();
      times.push(performance.now() - t0);
    }
    note(`login: ${LOGIN_N} AdminAuth.Login calls, min ${Math.min(...times).toFixed(2)} ms, max ${Math.max(...times).toFixed(2)} ms`);
    return mean(times);
  } finally {
    c.close();
  }
}

/** A deterministic PRNG so every run builds the same roles and lookups. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => { s = (s + 0x6d2b79f5) >>> 0; let t = s; t = Math.imul(t ^ (t >>> 15), t | 1); t ^= t + Math.imul(t ^ (t >>> 7), t | 61); return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
}

/**
 * 1,000 roles with 10,000 grants in all (no `*`, so nothing short-circuits as admin): 5% at
 * platform scope (over 8 read permissions only, or every lookup would be allowed), 45% at pack
 * scope and 50% at action scope, over 500 packs of 20 actions. The principal holds every role:
 * the largest grant set, the worst case for memory; a decision is a few hash lookups whatever
 * the size. Half the lookups come from held grants (allowed), half are made up over twice the
 * packs (mostly denied).
 */
export function benchAuthz(): { perS: number } {
  const rand = rng(42);
  const perms = Object.keys(PERMISSIONS) as Permission[];
  const platformPerms = perms.filter((p) => /:(list|get|read)$/.test(p)).slice(0, 8);
  const pick = <X>(xs: readonly X[]): X => xs[Math.floor(rand() * xs.length)]!;
  const roles: Grant[][] = Array.from({ length: ROLES }, () => []);
  const held: Array<{ perm: Permission; resource?: { pack?: string; action?: string } }> = [];
  for (let i = 0; i < GRANTS; i++) {
    const x = rand();
    const perm = x < 0.05 ? pick(platformPerms) : pick(perms);
    const p = `p${Math.floor(rand() * 500)}`;
    const a = `a${Math.floor(rand() * 20)}`;
    const scope = x < 0.05 ? '' : x < 0.5 ? `pack:${p}` : `action:${p}.${a}`;
    roles[i % ROLES]!.push({ permission: perm, scope });
    held.push({ perm, resource: scope === '' ? undefined : { pack: p, action: scope.startsWith('pack:') ? `a${Math.floor(rand() * 20)}` : a } });
  }
  const compile = (n: number) => new CompiledGrants(roles.slice(0, n).flat());
  const principalOf = (grants: CompiledGrants): Principal => ({ kind: 'user', username: 'bench', roles: [], tenants: ['default'], groups: [], grants });
  const lookups = Array.from({ length: 8192 }, (_, i) => (i % 2 === 0
    ? held[Math.floor(rand() * held.length)]!
    : { perm: pick(perms), resource: rand() < 0.2 ? undefined : { pack: `p${Math.floor(rand() * 1000)}`, action: `a${Math.floor(rand() * 20)}` } }));
  const run = (principal: Principal, ms: number) => {
    let n = 0;
    let allowed = 0;
    const t0 = performance.now();
    let elapsed = 0;
    while (elapsed < ms) {
      for (let i = 0; i < lookups.length; i++) {
        const l = lookups[i]!;
        if (isAllowed(principal, l.perm, l.resource)) allowed++;
      }
      n += lookups.length;
      elapsed = performance.now() - t0;
    }
    return { perS: (n * 1000) / elapsed, allowedShare: allowed / n };
  };
  const t0 = performance.now();
  const all = principalOf(compile(ROLES));
  const compileMs = performance.now() - t0;
  run(all, 200); // warm-up
  const r = run(all, AUTHZ_RUN_MS);
  const few = run(principalOf(compile(20)), 300);
  note(`authz: principal holds all ${ROLES} roles (${GRANTS} grants, ${all.grants.size} distinct; compiled in ${compileMs.toFixed(1)} ms); `
    + `${(r.allowedShare * 100).toFixed(0)}% of lookups allowed; for comparison, holding 20 roles: ${Math.round(few.perS)} checks/s`);
  return { perS: r.perS };
}

/**
 * Mean latency of AdminAgents.ListAgents (token + authz) minus that of the open
 * Version.GetVersion, sequential calls on the admin clients' one shared channel, alternating
 * blocks of 50 so drift hits both alike. Run it while the hub has (almost) no agents.
 */
export async function benchAuthedRpc(admin: AdminClients): Promise<number> {
  const version = () => call<T.GetVersionRequest, T.VersionInfo__Output>(admin, admin.version, admin.version.GetVersion, {});
  const list = () => call<T.ListAgentsRequest, T.ListAgentsResponse__Output>(admin, admin.agents, admin.agents.ListAgents, {});
  for (let i = 0; i < RPC_WARMUP; i++) { await version(); await list(); }
  const agents = (await list()).agents.length;
  const tv: number[] = [];
  const tl: number[] = [];
  const block = async (fn: () => Promise<unknown>, into: number[]) => {
    for (let i = 0; i < 50; i++) { const t0 = performance.now(); await fn(); into.push(performance.now() - t0); }
  };
  while (tv.length < RPC_N) { await block(version, tv); await block(list, tl); }
  const v = mean(tv) * 1000;
  const l = mean(tl) * 1000;
  note(`authed rpc: ${RPC_N} calls each; GetVersion ${v.toFixed(0)} us, ListAgents ${l.toFixed(0)} us (${agents} agents listed)`);
  return l - v;
}
