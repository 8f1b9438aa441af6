/**
 * Webhooks (hub/webhooks, hub/web/webhooks.ts, AdminWebhooks, `trellis webhooks`): HMAC
 * signatures (good, wrong, stale, replayed, unknown webhook: all 401 alike), API keys with and
 * without webhooks:post (401 bad key, 403 no permission or tenant), size, type and method
 * limits, the event reaching c.events subscribers, audit without the body, the secret stored
 * only encrypted and never logged, and the real CLI.
 */
import t, { type Test } from 'tap';
import * as https from 'node:https';
import * as tls from 'node:tls';
import { readFileSync } from 'node:fs';
import { runCli } from './helpers/cli.js';
import { startHub, login, tempDir, waitFor, ADMIN_PASSWORD, type TestHub } from './helpers/hub.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import { writeProfile } from '../cli/profile.js';
import { signWebhook, webhookAad, type WebhookDoc } from '../hub/webhooks/index.js';
import { hubPaths } from '../hub/paths.js';
import type { HubEvent } from '../hub/events/index.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const PW = 'a-long-enough-password-1';

interface Reply { status: number; body: string; json: Record<string, unknown> }

function post(h: TestHub, path: string, o: { body?: string | Buffer; headers?: Record<string, string>; method?: string } = {}): Promise<Reply> {
  const body = o.body ?? '';
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: '127.0.0.1', port: h.hub.webPort, path, method: o.method ?? 'POST', ca: h.caPem, servername: 'localhost', agent: false,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...(o.headers ?? {}) },
    }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (d: string) => (text += d)).on('end', () => {
        let json: Record<string, unknown> = {};
        try { json = JSON.parse(text) as Record<string, unknown>; } catch { /* not JSON */ }
        resolve({ status: res.statusCode ?? 0, body: text, json });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

const now = () => Math.floor(Date.now() / 1000);
const signed = (secret: string, body: string, t = now()) => ({ 'x-trellis-signature': signWebhook(secret, body, t) });

/** Raw HTTP over TLS: for requests a normal client would not send (a lying or missing content-length). */
function raw(h: TestHub, head: string, chunks: (write: (s: string | Buffer) => boolean) => void): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port: h.hub.webPort, ca: h.caPem, servername: 'localhost' }, () => {
      s.write(head);
      chunks((b) => (s.destroyed ? false : s.write(b)));
    });
    let text = '';
    s.setEncoding('utf8').on('data', (d: string) => (text += d));
    s.on('close', () => resolve(text));
    s.on('error', (e: NodeJS.ErrnoException) => (text ? resolve(text) : e.code === 'ECONNRESET' || e.code === 'EPIPE' ? resolve(text) : reject(e)));
  });
}

async function clientsFor(t: Test, h: TestHub, username: string, password: string, tenant: string): Promise<AdminClients> {
  const r = await login(h, username, password);
  const c = adminClients(h.adminAddr, h.caPem, r.token, tenant);
  t.teardown(() => c.close());
  return c;
}

const create = (c: AdminClients, name: string, description = '') =>
  call<T.CreateWebhookRequest, T.CreateWebhookResponse__Output>(c, c.webhooks, c.webhooks.CreateWebhook, { name, description });
const list = async (c: AdminClients) => (await call<T.ListWebhooksRequest, T.ListWebhooksResponse__Output>(c, c.webhooks, c.webhooks.ListWebhooks, {})).webhooks;
const del = (c: AdminClients, name: string) => call<T.DeleteWebhookRequest, T.DeleteWebhookResponse__Output>(c, c.webhooks, c.webhooks.DeleteWebhook, { name });
async function codeOf(p: Promise<unknown>): Promise<string> {
  try { await p; return 'OK'; } catch (e) { return (e as { code?: string }).code ?? String(e); }
}

function collect(t: Test, h: TestHub): HubEvent[] {
  const seen: HubEvent[] = [];
  const off = h.hub.components.events.subscribe((b) => seen.push(...b));
  t.teardown(off);
  return seen;
}

async function auditOf(h: TestHub, target: string) {
  await h.hub.components.audit.flush();
  return (await h.hub.components.audit.query({ limit: 1000, methodContains: 'POST /webhooks' })).filter((r) => r.target === target);
}

t.test('a signed call becomes a webhook.<name> event for c.events subscribers; counted, audited without its body', async (t) => {
  await using h = await startHub();
  const a = await clientsFor(t, h, 'admin', ADMIN_PASSWORD, 'default');
  const r = await create(a, 'deploy', 'CI deploys');
  t.match(r.secret, /^twh1_[0-9a-f]{64}$/, 'a 256-bit secret');
  t.equal(r.path, '/webhooks/deploy');
  t.same({ name: r.info!.name, tenant: r.info!.tenant, trigger: r.info!.trigger, createdBy: r.info!.createdBy }, { name: 'deploy', tenant: 'default', trigger: 'webhook.deploy', createdBy: 'admin' });

  const seen = collect(t, h);
  const body = JSON.stringify({ ref: 'main', marker: 'body-marker-7731' });
  const res = await post(h, '/webhooks/deploy', { body, headers: signed(r.secret, body) });
  t.equal(res.status, 202, res.body);
  t.match(res.json.id, /^[0-9A-HJKMNP-TV-Z]{26}$/, 'a ULID');
  await waitFor(() => seen.length === 1, 2000, 'the event');
  const e = seen[0]!;
  t.same({ id: e.id, type: e.type, agentId: e.agentId, tenant: e.tenant }, { id: res.json.id, type: 'webhook.deploy', agentId: '', tenant: 'default' });
  t.same(JSON.parse(e.payload.toString('utf8')), { ref: 'main', marker: 'body-marker-7731' });

  const [info] = await list(a);
  t.equal(info!.received, 1);
  t.ok(info!.lastReceivedMs > 0);

  const records = await auditOf(h, 'webhook:default/deploy');
  t.equal(records.length, 1);
  t.same({ actor: records[0]!.actor, result: records[0]!.result }, { actor: 'webhook:deploy', result: 'ok' });
  t.notOk(JSON.stringify(records).includes('body-marker-7731'), 'the audit record has no body');
});

t.test('wrong, stale, replayed and malformed signatures and unknown webhooks all get the same 401', async (t) => {
  await using h = await startHub();
  const a = await clientsFor(t, h, 'admin', ADMIN_PASSWORD, 'default');
  const { secret } = await create(a, 'hook');
  const seen = collect(t, h);
  const body = '{"n":1}';
  const answers: Record<string, Reply> = {};

  answers.wrongSecret = await post(h, '/webhooks/hook', { body, headers: signed('twh1_' + '0'.repeat(64), body) });
  answers.otherBody = await post(h, '/webhooks/hook', { body: '{"n":2}', headers: signed(secret, body) });
  answers.stale = await post(h, '/webhooks/hook', { body, headers: signed(secret, body, now() - 301) });
  answers.future = await post(h, '/webhooks/hook', { body, headers: signed(secret, body, now() + 301) });
  answers.malformed = await post(h, '/webhooks/hook', { body, headers: { 'x-trellis-signature': 'sha256=abc' } });
  answers.missing = await post(h, '/webhooks/hook', { body });
  answers.unknown = await post(h, '/webhooks/nope', { body, headers: signed(secret, body) });
  answers.badName = await post(h, '/webhooks/NO%20PE', { body, headers: signed(secret, body) });
  answers.otherTenant = await post(h, '/webhooks/hook', { body, headers: { ...signed(secret, body), 'x-trellis-tenant': 'blue' } });
  const once = signed(secret, body);
  t.equal((await post(h, '/webhooks/hook', { body, headers: once })).status, 202, 'the first delivery passes');
  answers.replayed = await post(h, '/webhooks/hook', { body, headers: once });

  for (const [why, r] of Object.entries(answers)) {
    t.equal(r.status, 401, `${why}: 401`);
    t.same(r.json, { error: 'webhook credentials or signature invalid' }, `${why}: the same answer`);
  }
  t.equal(seen.length, 1, 'only the good call made an event');
  const details = (await auditOf(h, 'webhook:default/hook')).map((r) => `${r.result} ${r.detail}`);
  t.ok(details.includes('unauthenticated signature: replayed'), 'the replay is audited');
  t.ok(details.includes('unauthenticated signature: stale'), 'the stale call is audited');
  t.ok(details.includes('unauthenticated signature: bad-signature'));
  t.equal((await auditOf(h, 'webhook:default/nope'))[0]?.detail, 'signature: unknown-webhook', 'the audit says why, the caller does not');
  t.equal((await list(a))[0]!.received, 1);
});

t.test('size, type, method and body limits: 413 by content-length and by counted bytes, 415, 405, 400', async (t) => {
  await using h = await startHub();
  const a = await clientsFor(t, h, 'admin', ADMIN_PASSWORD, 'default');
  const { secret } = await create(a, 'limits');
  const seen = collect(t, h);

  const big = JSON.stringify({ pad: 'x'.repeat(256 * 1024) });
  const r413 = await post(h, '/webhooks/limits', { body: big, headers: signed(secret, big) });
  t.equal(r413.status, 413, 'a declared content-length over 256 KiB');

  // No content-length (chunked): the hub counts what it reads and stops at the limit.
  let sent = 0;
  const chunked = await raw(h, 'POST /webhooks/limits HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n', (write) => {
    const data = Buffer.alloc(16 * 1024, 'a');
    const chunk = Buffer.concat([Buffer.from(`${data.length.toString(16)}\r\n`), data, Buffer.from('\r\n')]);
    const pump = () => {
      while (sent < 4 * 1024 * 1024) {
        sent += data.length;
        if (!write(chunk)) { setTimeout(pump, 5); return; }
      }
    };
    pump();
  });
  t.match(chunked, /^HTTP\/1\.1 413 /, 'a streamed body over 256 KiB');
  t.ok(sent < 4 * 1024 * 1024, `the hub stopped reading (the client got to send ${sent} bytes)`);

  const lying = await raw(h, `POST /webhooks/limits HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\nConnection: close\r\n\r\n`, () => undefined);
  t.match(lying, /^HTTP\/1\.1 413 /, 'an absurd content-length is refused before reading');

  const text = 'not json';
  t.equal((await post(h, '/webhooks/limits', { body: text, headers: signed(secret, text) })).status, 400, 'not JSON');
  for (const b of ['[1,2]', 'null', '"s"', '']) t.equal((await post(h, '/webhooks/limits', { body: b, headers: signed(secret, b) })).status, 400, `not an object: ${b || '(empty)'}`);
  t.equal((await post(h, '/webhooks/limits', { body: '{}', headers: { ...signed(secret, '{}'), 'content-type': 'text/plain' } })).status, 415);
  t.equal((await post(h, '/webhooks/limits', { body: '{}', headers: { ...signed(secret, '{}'), 'content-type': 'application/vnd.github+json' } })).status, 202, '+json types are JSON');
  const get = await post(h, '/webhooks/limits', { method: 'GET' });
  t.equal(get.status, 405);
  t.equal(seen.length, 1);
  t.equal((await post(h, '/webhooks/a/b/c', { body: '{}' })).status, 404, 'not a webhook path');
  t.equal((await post(h, '/healthz', { method: 'GET' })).status, 200, 'the web port still serves');
});

t.test('API keys: webhooks:post in the tenant posts; no permission or another tenant is 403; a bad key or unknown webhook 401', async (t) => {
  await using h = await startHub();
  for (const name of ['red', 'blue']) await call(h.admin, h.admin.tenants, h.admin.tenants.CreateTenant, { name, description: '' });
  await call(h.admin, h.admin.roles, h.admin.roles.CreateRole, { name: 'poster', description: '', grants: [{ permission: 'webhooks:post', scope: '' }, { permission: 'apikeys:create', scope: '' }] });
  await call(h.admin, h.admin.users, h.admin.users.CreateUser, { username: 'ci', password: PW, roles: ['poster'], tenants: ['red'] });
  await call(h.admin, h.admin.users, h.admin.users.CreateUser, { username: 'dev', password: PW, roles: ['user'], tenants: ['red'] });
  const ci = await clientsFor(t, h, 'ci', PW, 'red');
  const dev = await clientsFor(t, h, 'dev', PW, 'red');
  const keyOf = async (c: AdminClients) => (await call<T.CreateApiKeyRequest, T.CreateApiKeyResponse__Output>(c, c.apikeys, c.apikeys.CreateApiKey, { name: 'k' })).key;
  const ciKey = await keyOf(ci);
  const devKey = await keyOf(dev);
  const redAdmin = await clientsFor(t, h, 'admin', ADMIN_PASSWORD, 'red');
  const blueAdmin = await clientsFor(t, h, 'admin', ADMIN_PASSWORD, 'blue');
  const red = await create(redAdmin, 'build');
  t.equal(red.path, '/webhooks/red/build');
  await create(blueAdmin, 'build');
  const seen = collect(t, h);

  const ok = await post(h, '/webhooks/red/build', { body: '{"a":1}', headers: { 'x-api-key': ciKey } });
  t.equal(ok.status, 202, ok.body);
  const bearer = await post(h, '/webhooks/build', { body: '{"a":2}', headers: { authorization: `Bearer ${ciKey}`, 'x-trellis-tenant': 'red' } });
  t.equal(bearer.status, 202, 'Authorization: Bearer and the tenant header work too');
  await waitFor(() => seen.length === 2, 2000, 'two events');
  t.same(seen.map((e) => [e.tenant, e.type]), [['red', 'webhook.build'], ['red', 'webhook.build']]);

  const noPerm = await post(h, '/webhooks/red/build', { body: '{}', headers: { 'x-api-key': devKey } });
  t.equal(noPerm.status, 403, 'a key without webhooks:post');
  t.match(noPerm.json.error, /lacks the permission webhooks:post/);
  t.equal((await post(h, '/webhooks/blue/build', { body: '{}', headers: { 'x-api-key': ciKey } })).status, 403, 'another tenant');
  t.equal((await post(h, '/webhooks/red/build', { body: '{}', headers: { 'x-api-key': ciKey.slice(0, -2) + 'xx' } })).status, 401, 'a wrong key');
  t.equal((await post(h, '/webhooks/red/build', { body: '{}', headers: { 'x-api-key': 'tls1_whatever' } })).status, 401, 'a login token is not an API key');
  t.equal((await post(h, '/webhooks/red/nope', { body: '{}', headers: { 'x-api-key': ciKey } })).status, 401, 'an unknown webhook');
  t.equal((await post(h, '/webhooks/red/build', { body: '{}', headers: { 'x-api-key': ciKey, 'x-trellis-tenant': 'blue' } })).status, 400, 'path and header disagree');

  await call(h.admin, h.admin.users, h.admin.users.SetUserActive, { username: 'ci', active: false });
  t.equal((await post(h, '/webhooks/red/build', { body: '{}', headers: { 'x-api-key': ciKey } })).status, 401, 'the key of a deactivated user');
  t.equal(seen.length, 2);
  const denied = (await auditOf(h, 'webhook:blue/build'))[0];
  t.same({ actor: denied?.actor.replace(/[0-9a-f]{16}/, 'ID'), result: denied?.result }, { actor: 'apikey:ID@ci', result: 'denied' });

  t.equal(await codeOf(create(dev, 'mine')), 'TRELLIS_E_PERMISSION_DENIED', 'creating needs webhooks:manage');
  t.equal(await codeOf(list(dev)), 'TRELLIS_E_PERMISSION_DENIED', 'listing needs webhooks:manage');
  t.equal((await list(redAdmin)).length, 1, 'a tenant sees its own webhooks');
  t.equal((await list(h.admin)).length, 2, 'an administrator with `*` sees all');
  t.equal(await codeOf(create(redAdmin, 'build')), 'TRELLIS_E_ALREADY_EXISTS');
  t.equal(await codeOf(create(redAdmin, 'Bad Name')), 'TRELLIS_E_INVALID_ARGUMENT');
  t.equal(await codeOf(create(redAdmin, 'x', 'd'.repeat(513))), 'TRELLIS_E_INVALID_ARGUMENT', 'description over 512');
  t.equal(await codeOf(create(h.admin, 'star')), 'TRELLIS_E_INVALID_ARGUMENT', 'creating needs one tenant, not `*`');
  await del(redAdmin, 'build');
  t.equal(await codeOf(del(redAdmin, 'build')), 'TRELLIS_E_NOT_FOUND');
  t.equal((await post(h, '/webhooks/red/build', { body: '{}', headers: signed(red.secret, '{}') })).status, 401, 'a deleted webhook answers 401');
});

t.test('the secret is stored only encrypted (bound to tenant and name), never logged, and survives restarts and key rotation', async (t) => {
  await using h = await startHub();
  const a = await clientsFor(t, h, 'admin', ADMIN_PASSWORD, 'default');
  const { secret } = await create(a, 'vault');
  const body = '{"x":1}';
  t.equal((await post(h, '/webhooks/vault', { body, headers: signed(secret, body) })).status, 202);
  await h.hub.components.store.flush();
  const state = readFileSync(hubPaths(h.dataDir).store, 'utf8');
  t.ok(state.includes('"vault"'), 'the webhook is in the state file');
  t.notOk(state.includes(secret) || state.includes(secret.slice(5)), 'the secret is not in the state file');
  const doc = (await h.hub.components.store.get<WebhookDoc>('webhooks', 'default/vault'))!;
  t.match(doc.secret, /^v1:/, 'a keyring ciphertext');
  const kr = h.hub.components.kv.keyring;
  t.equal(kr.decrypt(doc.secret, webhookAad('default', 'vault')), secret);
  t.throws(() => kr.decrypt(doc.secret, webhookAad('other', 'vault')), /failed authentication/, 'bound to the tenant');
  t.throws(() => kr.decrypt(doc.secret, webhookAad('default', 'other')), /failed authentication/, 'bound to the name');
  t.notOk(h.logLines.some((l) => l.includes(secret.slice(5))), 'the secret is in no log line');
  t.notOk(JSON.stringify(await list(a)).includes(secret.slice(5)), 'list never shows it');

  await h.restart();
  t.equal((await post(h, '/webhooks/vault', { body: '{"y":1}', headers: signed(secret, '{"y":1}') })).status, 202, 'the secret survives a restart');

  // A master key rotation drops the old key file; the webhook secret moves to the new key.
  const p = await h.hub.components.kv.rotate();
  t.equal(p.keyVersion, 2);
  t.same(h.hub.components.kv.keyring.versions(), [2], 'the old key version is gone');
  await waitFor(async () => (await h.hub.components.store.get<WebhookDoc>('webhooks', 'default/vault'))!.secret.startsWith('v2:'), 15_000, 're-encryption under v2');
  t.equal((await post(h, '/webhooks/vault', { body: '{"z":1}', headers: signed(secret, '{"z":1}') })).status, 202, 'after the rotation');
  await h.restart();
  t.equal((await post(h, '/webhooks/vault', { body: '{"z":2}', headers: signed(secret, '{"z":2}') })).status, 202, 'and after a restart with only the new key');
});

const trellis = runCli;

t.test('trellis webhooks create shows the secret once; list and delete; a signed call with it works', async (t) => {
  await using h = await startHub();
  await using home = await tempDir();
  const env = { TRELLIS_HOME: home.path, TRELLIS_TENANT: '' };
  const l = await login(h, 'admin', ADMIN_PASSWORD);
  await writeProfile({ hub: h.adminAddr, caPem: h.caPem, username: 'admin', token: l.token, expiresAtMs: Number(l.expiresAtMs), tenant: 'default' }, { TRELLIS_HOME: home.path });

  const c = await trellis(['webhooks', 'create', 'gh-push', '--description', 'GitHub pushes'], env);
  t.equal(c.code, 0, c.err);
  const secret = /secret:\s+(twh1_[0-9a-f]{64})/.exec(c.out)?.[1];
  t.ok(secret, 'the secret is printed');
  t.match(c.out, new RegExp(`url:\\s+https://127\\.0\\.0\\.1:${h.hub.webPort}/webhooks/gh-push`), 'with the full URL on the web port');
  const body = '{"ref":"refs/heads/main"}';
  t.equal((await post(h, '/webhooks/gh-push', { body, headers: signed(secret!, body) })).status, 202);

  const ls = await trellis(['webhooks', 'list'], env);
  t.equal(ls.code, 0, ls.err);
  t.match(ls.out, /^NAME\s+TENANT\s+TRIGGER\s+RECEIVED/);
  t.match(ls.out, /gh-push\s+default\s+webhook\.gh-push\s+1\s/);
  t.notOk(ls.out.includes(secret!), 'list does not show the secret');

  const d = await trellis(['webhooks', 'delete', 'gh-push'], env);
  t.equal(d.code, 0, d.err);
  t.match(d.out, /deleted webhook gh-push/);
  const again = await trellis(['webhooks', 'delete', 'gh-push'], env);
  t.equal(again.code, 1);
  t.match(again.err, /no webhook gh-push in tenant default.*TRELLIS_E_NOT_FOUND/);
  t.notOk(h.logLines.some((line) => line.includes(secret!.slice(5))), 'the secret is in no hub log line');
});
