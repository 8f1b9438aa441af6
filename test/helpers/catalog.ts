/** What test/catalog.test.ts and test/catalog-refs.test.ts share: packs, logins, webhook calls. */
import type { Test } from 'tap';
import https from 'node:https';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runCli } from './cli.js';
import { ADMIN_PASSWORD, tempDir, login, type TestHub } from './hub.js';
import { adminClients, call, type AdminClients } from '../../cli/client.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const DEMO = join(ROOT, 'test', 'fixtures', 'packs', 'demo');
export const PW = 'a-long-enough-password-1';

export async function clientsAs(t: Test, h: TestHub, username: string, tenant: string): Promise<AdminClients> {
  const c = adminClients(h.adminAddr, h.caPem, (await login(h, username, PW)).token, tenant);
  t.teardown(() => c.close());
  return c;
}
export const installPack = (c: AdminClients, files: T.PackFile[], force = true) =>
  call<T.InstallPackRequest, T.PackInfo__Output>(c, c.packs, c.packs.InstallPack, { files, force });

/** POST to the hub's web port. */
export function postWebhook(h: TestHub, path: string, body: string, headers: Record<string, string>): Promise<{ status: number }> {
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: '127.0.0.1', port: h.hub.webPort, path, method: 'POST', ca: h.caPem, servername: 'localhost', agent: false,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers },
    }, (res) => { res.resume().on('end', () => resolve({ status: res.statusCode ?? 0 })); });
    req.on('error', reject);
    req.end(body);
  });
}

/** A logged-in CLI environment (TRELLIS_HOME in a temp dir) for the test hub's admin. */
export async function cliLogin(t: Test, h: TestHub): Promise<Record<string, string>> {
  const home = await tempDir();
  t.teardown(() => home[Symbol.asyncDispose]());
  const env = { TRELLIS_HOME: home.path, TRELLIS_PASSWORD: ADMIN_PASSWORD, TRELLIS_TENANT: '' };
  const r = await runCli(['login', '--hub', h.adminAddr, '--user', 'admin', '--ca', join(h.dataDir, 'ca.pem')], env);
  t.equal(r.code, 0, r.err);
  return env;
}

export const pf = (path: string, text: string): T.PackFile => ({ path, content: Buffer.from(text), mode: 0o644 });
export const opsPack = (version = '1.0.0', actions = ['page', 'log']) => [
  pf('pack.yaml', `name: ops\nversion: ${version}\ndescription: ops\n`),
  ...actions.map((a) => pf(`actions/${a}.yaml`, `name: ${a}\ndescription: ${a}\nrunner: command\ncommand: [/bin/true]\n`)),
];
export const webPack = () => [
  pf('pack.yaml', 'name: web\nversion: 1.0.0\ndescription: web\n'),
  pf('actions/noop.yaml', 'name: noop\ndescription: noop\nrunner: command\ncommand: [/bin/true]\n'),
  pf('rules/page.yaml', 'name: page\ntrigger: webhook.x\naction: { ref: ops.page }\ntarget: { selector: { role: web } }\n'),
];
