/**
 * Audit retention from hub.json (`audit.retention`) reaches the audit log: segments older than
 * `maxAge` and beyond `maxSegments` are dropped when the hub starts; with the defaults they stay.
 */
import t from 'tap';
import { existsSync, mkdirSync, readdirSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { initHub } from '../hub/init.js';
import { Hub } from '../hub/hub.js';
import { tempDir, ADMIN_PASSWORD, captureLogger } from './helpers/hub.js';

const seg = (n: number) => `${String(n).padStart(12, '0')}.jsonl`;

async function hubWith(dir: string, audit?: object): Promise<string> {
  const dataDir = join(dir, 'hub');
  await initHub({ dataDir, names: ['localhost'], adminPassword: ADMIN_PASSWORD, config: { agentPort: 0, adminPort: 0, webPort: 0, bind: '127.0.0.1', ...(audit ? { audit } : {}) } });
  const auditDir = join(dataDir, 'audit');
  mkdirSync(auditDir, { recursive: true, mode: 0o700 });
  const line = JSON.stringify({ id: '01', timeMs: 1, actor: 'x', tenant: '', method: 'm', target: '', result: 'ok', sourceAddress: '', detail: '' }) + '\n';
  const threeHoursAgo = (Date.now() - 3 * 3_600_000) / 1000;
  for (let n = 1; n <= 5; n++) {
    writeFileSync(join(auditDir, seg(n)), line, { mode: 0o600 });
    if (n <= 2) utimesSync(join(auditDir, seg(n)), threeHoursAgo, threeHoursAgo);
  }
  return dataDir;
}

t.test('audit.retention in hub.json: maxAge and maxSegments apply at start', async (t) => {
  await using d = await tempDir();
  const dataDir = await hubWith(d.path, { retention: { maxAge: '2h', maxSegments: 3 } });
  const hub = await Hub.start({ dataDir, log: captureLogger().log });
  await hub.close(500);
  const left = readdirSync(join(dataDir, 'audit')).sort();
  t.notOk(existsSync(join(dataDir, 'audit', seg(1))), 'a segment older than maxAge is gone');
  t.notOk(existsSync(join(dataDir, 'audit', seg(2))), 'and the other one');
  t.equal(left.length, 3, `at most maxSegments kept (${left.join(', ')})`);
});

t.test('audit retention defaults (90 days, 20 segments) keep the same segments', async (t) => {
  await using d = await tempDir();
  const dataDir = await hubWith(d.path);
  const hub = await Hub.start({ dataDir, log: captureLogger().log });
  await hub.close(500);
  t.ok(existsSync(join(dataDir, 'audit', seg(1))), 'a three-hour-old segment stays');
  t.ok(readdirSync(join(dataDir, 'audit')).length >= 5, 'nothing dropped');
});
