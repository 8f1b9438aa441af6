/**
 * Unauthenticated load on the admin port, for bench/bench.ts:
 *  - kv_set_p99_ms / login_flood_kv_set_p99_ms: latency of an authenticated `kv set` (a write to
 *    the hub's state file) alone, then while 16 clients flood Login for `admin` with wrong
 *    passwords, each from its own source address (127.0.0.2..17 through a TCP relay), so a
 *    per-address limit does not make the flood vanish: what is left is the KDF's cost.
 *  - preauth_rss_40x4mib_mb: growth of the hub's RSS while 40 Login calls carrying a 4 MiB
 *    password arrive at once.
 * Notes go to stderr; the caller prints the figures. Run it last: on a hub without per-address
 * lock-out the flood locks `admin` out.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import { CLIENT_OPTIONS } from '../common/grpc-options.js';
import { v1 } from '../common/proto.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';
import { sourceProxy, type SourceProxy } from '../test/helpers/proxy.js';
import { note, percentile, sleep } from './lib.js';

const FLOOD_CLIENTS = 16;
const KV_N = 150;
const KV_CAP_MS = 30_000;
const PREAUTH_CALLS = 40;
const PREAUTH_BYTES = 4 * 1024 * 1024 - 1024;

/**
 * Sequential kv sets: up to n samples or capMs, whichever comes first. A set that misses its
 * deadline counts with the time it took (at least the deadline) and ends the series.
 */
async function kvSetTimes(admin: AdminClients, n: number, capMs: number): Promise<number[]> {
  const times: number[] = [];
  const end = performance.now() + capMs;
  for (let i = 0; i < n && performance.now() < end; i++) {
    const t0 = performance.now();
    try {
      await call<T.KvSetRequest, T.KvEntry__Output>(admin, admin.kv, admin.kv.Set, { key: `bench/flood-${i % 10}`, value: `v${i}`, secret: false, ttlMs: 0, scope: 'tenant', private: false }, capMs);
    } catch (e) {
      if ((e as { code?: string }).code !== 'TRELLIS_E_TIMEOUT') throw e;
      times.push(performance.now() - t0);
      note(`kv set missed its ${capMs} ms deadline`);
      break;
    }
    times.push(performance.now() - t0);
  }
  return times;
}

function describe(what: string, xs: number[]): string {
  return `${what}: n=${xs.length}, median ${percentile(xs, 50).toFixed(1)} ms, p99 ${percentile(xs, 99).toFixed(1)} ms, max ${Math.max(...xs).toFixed(1)} ms`;
}

export async function benchLoginFlood(o: { admin: AdminClients; adminPort: number; caPem: string }): Promise<{ quiet: number; flood: number }> {
  await kvSetTimes(o.admin, 20, 5_000); // warm-up
  const quiet = await kvSetTimes(o.admin, KV_N, KV_CAP_MS);
  note(describe('kv set, no flood', quiet));

  const proxies: SourceProxy[] = [];
  const clients: AdminClients[] = [];
  const outcomes = new Map<string, number>();
  let stop = false;
  const flooders: Promise<void>[] = [];
  try {
    for (let i = 0; i < FLOOD_CLIENTS; i++) {
      const p = await sourceProxy({ host: '127.0.0.1', port: o.adminPort }, `127.0.0.${2 + i}`);
      proxies.push(p);
      const c = adminClients(p.addr, o.caPem);
      clients.push(c);
      flooders.push((async () => {
        while (!stop) {
          let outcome = 'OK';
          try {
            await call<T.LoginRequest, T.LoginResponse__Output>(c, c.auth, c.auth.Login, { username: 'admin', password: randomBytes(12).toString('base64url') }, 10_000);
          } catch (e) {
            outcome = (e as { code?: string }).code ?? 'error';
          }
          outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
        }
      })());
    }
    await sleep(1000); // let the flood fill the hub's queues
    const flood = await kvSetTimes(o.admin, KV_N, KV_CAP_MS);
    note(describe(`kv set during a Login flood (${FLOOD_CLIENTS} clients, ${FLOOD_CLIENTS} source addresses)`, flood));
    stop = true;
    await Promise.all(flooders);
    note(`login flood outcomes: ${[...outcomes].map(([k, v]) => `${k} ${v}`).join(', ')}`);
    return { quiet: percentile(quiet, 99), flood: percentile(flood, 99) };
  } finally {
    stop = true;
    for (const c of clients) c.close();
    for (const p of proxies) await p.close();
  }
}

function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

/** Peak RSS growth of the hub while 40 unauthenticated 4 MiB Login calls are in flight. */
export async function benchPreAuthRss(o: { pid: number; adminAddr: string; caPem: string }): Promise<number> {
  const creds = grpc.credentials.createSsl(Buffer.from(o.caPem));
  const clients = Array.from({ length: 4 }, () => new v1.AdminAuth(o.adminAddr, creds, { ...CLIENT_OPTIONS, 'grpc.max_send_message_length': 8 * 1024 * 1024 }));
  const password = 'x'.repeat(PREAUTH_BYTES);
  try {
    await sleep(500);
    const before = rssMb(o.pid);
    let peak = before;
    const poll = setInterval(() => { peak = Math.max(peak, rssMb(o.pid)); }, 10);
    const codes = new Map<string, number>();
    await Promise.all(Array.from({ length: PREAUTH_CALLS }, (_, i) => new Promise<void>((resolve) => {
      clients[i % clients.length]!.Login({ username: 'admin', password }, new grpc.Metadata(), { deadline: Date.now() + 60_000 }, (err: grpc.ServiceError | null) => {
        const k = err ? grpc.status[err.code] ?? String(err.code) : 'OK';
        codes.set(k, (codes.get(k) ?? 0) + 1);
        resolve();
      });
    })));
    await sleep(200);
    clearInterval(poll);
    peak = Math.max(peak, rssMb(o.pid));
    note(`pre-auth 4 MiB logins: ${PREAUTH_CALLS} calls answered ${[...codes].map(([k, v]) => `${k} ${v}`).join(', ')}; hub RSS ${before.toFixed(0)} MB before, peak ${peak.toFixed(0)} MB`);
    return peak - before;
  } finally {
    for (const c of clients) c.close();
  }
}
