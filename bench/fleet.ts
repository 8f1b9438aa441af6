/**
 * agent_install_wall_s for bench/bench.ts: one server over SSH on loopback, as
 * `trellis agents install` does it (installFleet): probe, bundle copy and checksum, one-use join
 * token, `trellis agent install --detach` there, until the agent is online at the hub. The bundle
 * is built beforehand and not counted. Needs root and Debian's sshd (test/helpers/sshd.ts); where
 * they are missing the caller prints `agent_install_wall_s: error` with the reason.
 */
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeBundle } from '../cli/bundle.js';
import type { AdminClients } from '../cli/client.js';
import { adminFleetHub } from '../cli/commands/fleet.js';
import { openBundle } from '../cli/fleet/bundle.js';
import { installFleet } from '../cli/fleet/install.js';
import { agentUninstall } from '../cli/fleet/remote.js';
import { sshdMissing, startSshd } from '../test/helpers/sshd.js';
import { note } from './lib.js';

export async function benchAgentInstall(o: { admin: AdminClients; adminAddr: string }): Promise<number> {
  const missing = sshdMissing();
  if (missing) throw new Error(`sshd cannot run here: ${missing}`);
  const dir = await mkdtemp(join(tmpdir(), 'trellis-bench-install-'));
  await chmod(dir, 0o755); // the agent's service user reads the installation below here
  const sshd = await startSshd();
  const tag = Math.random().toString(36).slice(2, 8);
  const service = `trellis-bench-${tag}`;
  const data = join(dir, 'data');
  const target = { user: 'root', host: '127.0.0.1', port: sshd.port };
  const known = join(dir, 'known_hosts');
  writeFileSync(known, sshd.knownHostsLine + '\n');
  const ssh = { identity: sshd.clientKey, knownHosts: known, acceptNewHostKeys: false };
  let installDir: string | undefined;
  try {
    const t0 = performance.now();
    await writeBundle({ out: join(dir, 'bundle.tgz') });
    const bundle = await openBundle(join(dir, 'bundle.tgz'));
    note(`agent_install_wall_s: bundle ${(bundle.bytes / 1048576).toFixed(1)} MiB built in ${((performance.now() - t0) / 1000).toFixed(1)} s (not counted)`);
    const s = await installFleet({
      entries: [{ target, source: 'bench', labels: { bench: 'install' } }],
      ssh, hub: adminFleetHub(o.admin), hubAddress: o.adminAddr, bundle, labels: {}, prefix: join(dir, 'opt'),
      defaultService: service, defaultData: () => data, serviceUser: `tbench-${tag}`, sudo: false, detach: true,
      parallel: 1, timeoutMs: 180_000, dryRun: false, pollMs: 50,
    });
    const r = s.hosts[0]!;
    installDir = r.installDir || undefined;
    if (r.result !== 'installed') throw new Error(`install failed: ${r.code}: ${r.error}`);
    note(`agent_install_wall_s: agent ${r.agentId} online ${r.seconds.toFixed(2)} s after the first SSH connection (${Object.entries(r.phases).map(([k, v]) => `${k} ${v.toFixed(2)} s`).join(', ')})`);
    return r.seconds;
  } finally {
    if (installDir) await agentUninstall({ target, ssh, sudo: false }, { node: process.execPath, installDir, service, data, purge: true }).catch((e: Error) => note(`agent_install_wall_s cleanup: ${e.message}`));
    await sshd.stop();
    await rm(dir, { recursive: true, force: true });
  }
}
