import t from 'tap';
import * as https from 'node:https';
import { startHub } from './helpers/hub.js';
import { createCA } from '../certs/index.js';

function get(port: number, path: string, ca?: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port, path, ca, rejectUnauthorized: ca !== undefined || false, servername: 'localhost' }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d)).on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
  });
}

t.test('the web port serves health and version over TLS with the hub certificate', async (t) => {
  await using h = await startHub();
  const port = h.hub.webPort;
  const health = await get(port, '/healthz', h.caPem);
  t.equal(health.status, 200);
  t.same(JSON.parse(health.body), { status: 'ok' });
  const version = JSON.parse((await get(port, '/version', h.caPem)).body) as { caFingerprint: string };
  t.equal(version.caFingerprint, h.hub.components.pki.caFingerprint);
  t.equal((await get(port, '/nothing', h.caPem)).status, 404);
  // A client that trusts another CA refuses the hub's certificate.
  const other = createCA({ commonName: 'other' });
  await t.rejects(get(port, '/healthz', other.certPem), /self[- ]signed|unable to verify|certificate/i);
});
