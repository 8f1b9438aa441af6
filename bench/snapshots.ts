/**
 * `npm run bench:snapshots [-- MIB]`: a snapshot of a hub holding MIB (default 192) MiB of audit
 * segments, made through the admin API, then restored offline. Prints
 *   snapshot_create_ms, snapshot_create_rss_growth_mb, snapshot_restore_ms,
 *   snapshot_restore_rss_growth_mb
 * RSS growth is sampled every 20 ms in this process (hub and restore both run in it); the flat
 * ~115 MB at any size is scrypt's working memory (N=2^17, r=8: 128 MiB): the payload streams.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initHub } from '../hub/init.js';
import { Hub } from '../hub/hub.js';
import { hubPaths } from '../hub/paths.js';
import { restoreSnapshot } from '../hub/snapshots/restore.js';
import { adminClients, call } from '../cli/client.js';
import { silentLogger } from '../common/log.js';
import { silenceIpServernameWarning } from '../common/warnings.js';
import { note } from './lib.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

silenceIpServernameWarning();
const MIB = Number(process.argv[2] ?? 192);
const PASS = 'bench passphrase, long enough';
const PW = 'bench-admin-password-1';

const dir = await mkdtemp(join(tmpdir(), 'trellis-bench-snap-'));
try {
  const dataDir = join(dir, 'hub');
  await initHub({ dataDir, names: ['127.0.0.1'], adminPassword: PW, config: { agentPort: 0, adminPort: 0, webPort: 0, bind: '127.0.0.1' } });
  const line = JSON.stringify({ id: '01j0000000000000000000000a', timeMs: Date.now(), actor: 'admin', tenant: 'default', method: '/trellis.v1.AdminKv/Set', target: `kv:${'x'.repeat(200)}`, result: 'ok', sourceAddress: '127.0.0.1', detail: '' }) + '\n';
  await mkdir(hubPaths(dataDir).audit, { recursive: true, mode: 0o700 });
  const seg = Buffer.from(line.repeat(Math.floor((16 * 2 ** 20) / line.length)));
  for (let i = 0; i < Math.ceil(MIB / 16); i++) await writeFile(join(hubPaths(dataDir).audit, `${String(100 + i).padStart(12, '0')}.jsonl`), seg, { mode: 0o600 });
  const hub = await Hub.start({ dataDir, log: silentLogger() });
  const caPem = hub.components.pki.trustBundle.join('');
  const anon = adminClients(`127.0.0.1:${hub.adminPort}`, caPem);
  const login = await call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username: 'admin', password: PW });
  anon.close();
  const admin = adminClients(`127.0.0.1:${hub.adminPort}`, caPem, login.token);
  let peak = 0;
  const base = process.memoryUsage().rss;
  const timer = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss); }, 20);
  note(`creating a snapshot of ${MIB} MiB of segments`);
  let t0 = performance.now();
  const info = await call<T.CreateSnapshotRequest, T.SnapshotInfo__Output>(admin, admin.snapshots, admin.snapshots.CreateSnapshot, { passphrase: PASS, note: 'bench' }, 600_000);
  const createMs = performance.now() - t0;
  const createPeak = peak;
  peak = 0;
  admin.close();
  await hub.close(1000);
  note(`restoring ${(Number(info.sizeBytes) / 2 ** 20).toFixed(0)} MiB`);
  t0 = performance.now();
  await restoreSnapshot({ file: join(hubPaths(dataDir).snapshots, `${info.id}.tsnap`), dataDir: join(dir, 'restored'), passphrase: PASS });
  const restoreMs = performance.now() - t0;
  clearInterval(timer);
  process.stdout.write(`snapshot_create_ms: ${createMs.toFixed(0)} ms\n`);
  process.stdout.write(`snapshot_create_rss_growth_mb: ${((createPeak - base) / 2 ** 20).toFixed(0)} MB\n`);
  process.stdout.write(`snapshot_restore_ms: ${restoreMs.toFixed(0)} ms\n`);
  process.stdout.write(`snapshot_restore_rss_growth_mb: ${((Math.max(peak, base) - base) / 2 ** 20).toFixed(0)} MB\n`);
} finally {
  await rm(dir, { recursive: true, force: true });
}
