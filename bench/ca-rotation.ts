/**
 * ca_rotation_1000_agents_s: `ca rotate start` → every agent renewed from the new CA and
 * reconnected with it → `ca rotate commit`, with 1,000 simulated agents (bench/simagent.ts, each
 * its own mTLS stream) connected to a child hub of its own (a committed rotation changes the CA,
 * so it does not share the main bench hub). Fails unless every agent is still connected at the
 * end, on a new-CA certificate, and none was refused for good.
 */
import crypto from 'node:crypto';
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { initHub } from '../hub/init.js';
import { hubPaths } from '../hub/paths.js';
import { verifyIssuedBy } from '../certs/index.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';
import { issueSimIdentities, SimAgent } from './simagent.js';
import { note, pool, sleep, startChildHub } from './lib.js';

export interface CaRotationBenchOptions {
  root: string;
  tmpRoot: string;
  names: string[];
  trustDomain: string;
  nodeArgs: string[];
  closers: Array<() => Promise<void>>;
  agents?: number;
  /** The --window agents renew within. @default 20 s */
  windowMs?: number;
}

async function login(addr: string, caPem: string, password: string): Promise<AdminClients> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const anon = adminClients(addr, caPem);
    try {
      const r = await call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username: 'admin', password }, 10_000);
      return adminClients(addr, caPem, r.token, 'default');
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await sleep(250);
    } finally {
      anon.close();
    }
  }
}

export async function benchCaRotation(o: CaRotationBenchOptions): Promise<number> {
  const N = o.agents ?? 1000;
  const windowMs = o.windowMs ?? Number(process.env.TRELLIS_BENCH_CA_WINDOW_MS ?? 20_000);
  const hubDir = join(o.tmpRoot, 'hub-ca-rotation');
  const password = crypto.randomBytes(18).toString('base64url');
  await initHub({ dataDir: hubDir, names: o.names, trustDomain: o.trustDomain, adminPassword: password, config: { bind: '127.0.0.1', agentChannel: { maxHandshakesPerAddress: 1_000_000 } } }); // simulated agents all connect from 127.0.0.1
  const child = await startChildHub(o.root, hubDir, o.nodeArgs);
  o.closers.push(() => child.stop());
  const caPem = await readFile(hubPaths(hubDir).caCert, 'utf8');
  const admin = await login(`127.0.0.1:${child.adminPort}`, caPem, password);
  o.closers.push(async () => admin.close());

  const ids = issueSimIdentities({ hubDir, names: o.names, trustDomain: o.trustDomain, n: N });
  const sims = ids.map((identity) => new SimAgent({ target: `127.0.0.1:${child.agentPort}`, identity }));
  const refused: string[] = [];
  for (const s of sims) s.channel.on('state', (st: string) => { if (st === 'closed') refused.push(s.agentId); });
  o.closers.push(() => pool(sims.length, 100, (i) => sims[i]!.close()));
  const tc = performance.now();
  await pool(N, 50, async (i) => {
    sims[i]!.start();
    const deadline = Date.now() + 60_000;
    while (sims[i]!.channel.state !== 'ready') {
      if (Date.now() > deadline) throw new Error(`agent ${i} not connected within 60 s`);
      await sleep(20);
    }
  });
  note(`ca rotation: ${N} simulated agents connected in ${Math.round(performance.now() - tc)} ms`);

  const status = () => call<T.GetRotationRequest, T.CaRotationStatus__Output>(admin, admin.ca, admin.ca.GetRotation, {}, 30_000);
  const t0 = performance.now();
  const started = await call<T.RotateStartRequest, T.CaRotationStatus__Output>(admin, admin.ca, admin.ca.RotateStart, { windowMs }, 60_000);
  note(`ca rotation: started (new CA ${started.nextCa?.fingerprintSha256.slice(0, 16)}, window ${windowMs / 1000}s, ${started.agentsActive} active agents)`);
  const deadline = Date.now() + windowMs + 180_000;
  let last = started;
  while (last.agentsOnNewCa < N) {
    if (Date.now() > deadline) throw new Error(`${last.agentsOnNewCa}/${N} agents on the new CA ${Math.round((performance.now() - t0) / 1000)} s after start`);
    if (refused.length) throw new Error(`${refused.length} agent(s) refused for good during the rotation (first ${refused[0]})`);
    await sleep(500);
    last = await status();
  }
  const tRenewed = performance.now();
  const committed = await call<T.RotateCommitRequest, T.CaRotationStatus__Output>(admin, admin.ca, admin.ca.RotateCommit, { force: false }, 60_000);
  const seconds = (performance.now() - t0) / 1000;
  note(`ca rotation: all ${N} renewed ${((tRenewed - t0) / 1000).toFixed(1)} s after start; committed at ${seconds.toFixed(1)} s (hub cert issuer ${committed.hubCertIssuerFingerprint.slice(0, 16)})`);

  // None lost: still connected a moment after commit, each on a new-CA certificate.
  await sleep(2_000);
  const down = sims.filter((s) => s.channel.state !== 'ready').length;
  const oldCert = sims.filter((s) => !verifyIssuedBy(s.identity.certPem, committed.currentCa!.pem)).length;
  const renewals = sims.reduce((n, s) => n + s.stats.renewals, 0);
  const failures = sims.reduce((n, s) => n + s.stats.renewFailures, 0);
  note(`ca rotation: ${renewals} renewals (${failures} retried), ${down} agent(s) not connected after commit, ${oldCert} on an old-CA certificate, ${refused.length} refused`);
  const why = new Map<string, number>();
  for (const s of sims) if (s.lastRenewError) { const k = s.lastRenewError.slice(0, 120); why.set(k, (why.get(k) ?? 0) + 1); }
  for (const [k, n] of [...why].sort((a, b) => b[1] - a[1]).slice(0, 3)) note(`ca rotation: ${n} agent(s) last retried after: ${k}`);
  if (down || oldCert || refused.length) throw new Error(`agents lost: ${down} not connected, ${oldCert} still on the old CA, ${refused.length} refused`);
  return seconds;
}
