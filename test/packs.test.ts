/**
 * Packs: loading with file:line:field errors, reading directories and tarballs (traversal,
 * links, devices and size limits refused), hub storage and AdminPacks (re-validation,
 * ALREADY_EXISTS, permissions, tenant scope, restart), and the `trellis packs` CLI round trip.
 */
import t, { type Test } from 'tap';
import { cp, mkdir, symlink, writeFile } from 'node:fs/promises';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { create as tarCreate } from 'tar';
import { runCli } from './helpers/cli.js';
import { ADMIN_PASSWORD, startHub, tempDir, callError, type TestHub } from './helpers/hub.js';
import { adminClients, call, type AdminClients } from '../cli/client.js';
import { loadPack, readPackSource, readPackTarball, PACK_LIMITS, MAX_PROBLEMS, type PackFile } from '../common/packs/index.js';
import type { PackDef } from '../common/automation/types.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const DEMO = join(ROOT, 'test', 'fixtures', 'packs', 'demo');
const PW = 'a-long-enough-password-1';

function errorOf(fn: () => unknown): { code: string; message: string } {
  try { fn(); return { code: 'OK', message: '' }; } catch (e) { return { code: (e as { code?: string }).code ?? '?', message: (e as Error).message }; }
}
async function rejection(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  try { await p; return { code: 'OK', message: '' }; } catch (e) { return { code: (e as { code?: string }).code ?? '?', message: (e as Error).message }; }
}

/** The demo pack's files with some replaced (content `null` removes the file). */
async function demoWith(changes: Record<string, string | null> = {}): Promise<PackFile[]> {
  const files = (await readPackSource(DEMO)).filter((f) => !(f.path in changes) || changes[f.path] !== null);
  for (const [path, content] of Object.entries(changes)) {
    if (content === null) continue;
    const i = files.findIndex((f) => f.path === path);
    const f = { path, content: Buffer.from(content), mode: 0o644 };
    if (i >= 0) files[i] = f; else files.push(f);
  }
  return files;
}

/** A raw ustar archive, for entries the tar package would refuse to create. */
function rawTar(entries: { path: string; type?: string; body?: Buffer | string; mode?: number; linkpath?: string }[]): Buffer {
  const blocks: Buffer[] = [];
  for (const e of entries) {
    const body = Buffer.from(e.body ?? '');
    const h = Buffer.alloc(512);
    h.write(e.path, 0, 100, 'utf8');
    h.write(`${(e.mode ?? 0o644).toString(8).padStart(7, '0')}\0`, 100, 'ascii');
    h.write('0000000\0', 108, 'ascii');
    h.write('0000000\0', 116, 'ascii');
    h.write(`${body.length.toString(8).padStart(11, '0')}\0`, 124, 'ascii');
    h.write(`${Math.floor(Date.now() / 1000).toString(8).padStart(11, '0')}\0`, 136, 'ascii');
    h.write('        ', 148, 'ascii');
    h.write(e.type ?? '0', 156, 'ascii');
    if (e.linkpath) h.write(e.linkpath, 157, 100, 'utf8');
    h.write('ustar\0', 257, 'ascii');
    h.write('00', 263, 'ascii');
    let sum = 0;
    for (const b of h) sum += b;
    h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'ascii');
    blocks.push(h, body, Buffer.alloc((512 - (body.length % 512)) % 512));
  }
  blocks.push(Buffer.alloc(1024));
  return Buffer.concat(blocks);
}

t.test('the demo pack loads from its directory: actions of each runner, sensor, rule, script body and mode', async (t) => {
  const files = await readPackSource(DEMO);
  const p = loadPack(files);
  t.equal(p.name, 'demo');
  t.equal(p.version, '1.0.0');
  t.same(p.actions.map((a) => `${a.ref}:${a.runner}`), ['demo.cleanup:script', 'demo.notify:http', 'demo.restart:command']);
  const restart = p.actions.find((a) => a.name === 'restart')!;
  t.same(restart.command, ['systemctl', 'restart', '{{ service }}']);
  t.equal(restart.timeoutMs, 120_000);
  t.equal(restart.runAs, 'root');
  t.same(restart.parameters.service, { type: 'string', description: 'The unit to restart', required: true, default: 'nginx', enum: ['nginx', 'apache2', 'haproxy'] });
  const cleanup = p.actions.find((a) => a.name === 'cleanup')!;
  t.equal(cleanup.script?.path, 'scripts/cleanup.sh');
  t.match(cleanup.script?.body, /^#!\/bin\/sh\n/);
  t.same(cleanup.args, ['{{ dir }}', '{{ days }}']);
  const notify = p.actions.find((a) => a.name === 'notify')!;
  t.equal(notify.http?.method, 'POST', 'the method is upper-cased');
  t.same(notify.http?.successStatus, [200, 201, 204]);
  t.equal(notify.timeoutMs, 15_000);
  t.same(p.sensors.map((s) => [s.ref, s.kind, s.trigger, s.intervalMs]), [['demo.root_disk', 'disk', 'core.disk', 60_000]]);
  t.same(p.sensors[0]!.on, { selector: { role: 'web' } });
  t.same(p.rules.map((r) => [r.ref, r.trigger, r.action.ref, r.target.kind]), [['demo.disk_full', 'core.disk', 'demo.cleanup', 'local']]);
  t.equal(p.files.find((f) => f.path === 'scripts/cleanup.sh')?.mode, 0o755, 'the script keeps its x bit');
});

t.test('a YAML syntax error is refused with the file and the line', async (t) => {
  const files = await demoWith({ 'actions/restart.yaml': 'name: restart\nrunner: command\ncommand: [systemctl, restart\nparameters: {}\n' });
  const err = errorOf(() => loadPack(files));
  t.equal(err.code, 'TRELLIS_E_PACK_INVALID');
  t.match(err.message, /^actions\/restart\.yaml:\d+: YAML syntax: /m);
  const dup = errorOf(() => loadPack(files.map((f) => (f.path === 'pack.yaml' ? { ...f, content: Buffer.from('name: demo\nversion: 1.0.0\nname: again\n') } : f))));
  t.match(dup.message, /^pack\.yaml:3: YAML syntax: .*unique/im, 'a duplicate key is a syntax error on its line');
});

t.test('a bad field is refused with the file, the line and the field; every problem shows in one round', async (t) => {
  const files = await demoWith({
    'actions/restart.yaml': [
      'name: restart', 'description: Restart', 'runner: command', 'command: [systemctl, restart, "{{ service }}"]',
      'parameters:', '  service:', '    type: strnig', '    required: true', 'timeout: 25h', 'envv: {}',
    ].join('\n'),
    'sensors/disk.yaml': 'name: root_disk\ntype: disk\nconfig:\n  threshold: 190\n',
    'actions/shell.yaml': 'name: shell\nrunner: command\ncommand: "echo hi"\n',
  });
  const err = errorOf(() => loadPack(files));
  t.equal(err.code, 'TRELLIS_E_PACK_INVALID');
  const lines = err.message.split('\n');
  t.match(lines[0], /^pack demo is invalid \(5 problems\):$/);
  t.ok(lines.includes('actions/restart.yaml:7: parameters.service.type: expected one of string, integer, number, boolean, object, array'), lines.join('\n'));
  t.ok(lines.includes('actions/restart.yaml:9: timeout: must be between 1s and 24h'));
  t.ok(lines.includes('actions/restart.yaml:10: envv: unknown field'));
  t.ok(lines.includes('sensors/disk.yaml:4: config.threshold: at most 100'), 'the sensor config is checked against its kind\'s schema');
  t.ok(lines.includes('actions/shell.yaml:3: command: a string is run by a shell: set shell: true, or give the arguments as a list'));

  const many: Record<string, string> = {};
  for (let i = 0; i < 30; i++) many[`actions/a${String(i).padStart(2, '0')}.yaml`] = `name: a${i}\nrunner: nope\n`;
  const capped = errorOf(() => loadPack(files.filter((f) => !f.path.startsWith('actions/restart')).concat(...Object.entries(many).map(([path, c]) => ({ path, content: Buffer.from(c), mode: 0o644 })))));
  const capLines = capped.message.split('\n');
  t.equal(capLines.length, 1 + MAX_PROBLEMS + 1, 'at most 20 problems, then a count of the rest');
  t.match(capLines.at(-1), /^\.\.\. and \d+ more$/);
});

t.test('pack-level problems: duplicates, undefined action refs, unknown files, missing pack.yaml, secrets in argv, scripts', async (t) => {
  const dupe = errorOf(() => loadPack([
    { path: 'pack.yaml', content: Buffer.from('name: p\nversion: "1.0"\n'), mode: 0o644 },
    { path: 'actions/a.yaml', content: Buffer.from('name: x\nrunner: command\ncommand: ["true"]\n'), mode: 0o644 },
    { path: 'actions/b.yaml', content: Buffer.from('description: second\nname: x\nrunner: command\ncommand: ["false"]\n'), mode: 0o644 },
    { path: 'rules/r.yaml', content: Buffer.from('name: r\ntrigger: core.cpu\naction:\n  ref: p.missing\n'), mode: 0o644 },
    { path: 'hooks/install.sh', content: Buffer.from('#!/bin/sh\n'), mode: 0o755 },
  ]));
  t.match(dupe.message, /^actions\/b\.yaml:2: name: duplicate action "x" \(also defined in actions\/a\.yaml\)$/m);
  t.match(dupe.message, /^rules\/r\.yaml:4: action\.ref: action "p\.missing" is not defined in this pack/m);
  t.match(dupe.message, /^hooks\/install\.sh: unknown file/m);
  const forms = errorOf(() => loadPack([
    { path: 'pack.yaml', content: Buffer.from('name: p\nversion: 1.0.0\n'), mode: 0o644 },
    { path: 'actions/c.yaml', content: Buffer.from('name: c\nrunner: command\ncommand: [echo, true]\n'), mode: 0o644 },
    { path: 'actions/d.yaml', content: Buffer.from('name: d\nrunner: command\ncommand: 5\n'), mode: 0o644 },
  ]));
  t.match(forms.message, /^actions\/c\.yaml:3: command\[1\]: expected string, got boolean$/m, 'an unquoted true is a boolean');
  t.match(forms.message, /^actions\/d\.yaml:3: command: expected a list or string, got number$/m);

  const noMeta = errorOf(() => loadPack([{ path: 'actions/a.yaml', content: Buffer.from('name: a\nrunner: command\ncommand: [true]\n'), mode: 0o644 }]));
  t.match(noMeta.message, /^pack\.yaml: missing/m);

  const secret = errorOf(() => loadPack([
    { path: 'pack.yaml', content: Buffer.from('name: p\nversion: 1.0.0\n'), mode: 0o644 },
    { path: 'actions/a.yaml', content: Buffer.from('name: a\nrunner: command\ncommand: [curl, "-u", "{{ password }}"]\nparameters:\n  password: { type: string, secret: true }\n'), mode: 0o644 },
    { path: 'actions/b.yaml', content: Buffer.from('name: b\nrunner: command\ncommand: [curl, "{{ secret.url }}"]\nenv: { TOKEN: "{{ secret.token }}" }\n'), mode: 0o644 },
  ]));
  t.match(secret.message, /^actions\/a\.yaml:3: command\[2\]: references secret parameter "password": pass secrets by env or stdin/m);
  t.match(secret.message, /^actions\/b\.yaml:3: command\[1\]: references secret values/m);
  t.notMatch(secret.message, /actions\/b\.yaml:4/, 'a secret in env is fine');

  const scripts = errorOf(() => loadPack([
    { path: 'pack.yaml', content: Buffer.from('name: p\nversion: 1.0.0\n'), mode: 0o644 },
    { path: 'actions/a.yaml', content: Buffer.from('name: a\nrunner: script\nscript: ../../etc/passwd\n'), mode: 0o644 },
    { path: 'actions/b.yaml', content: Buffer.from('name: b\nrunner: script\nscript: scripts/none.sh\n'), mode: 0o644 },
    { path: 'actions/c.yaml', content: Buffer.from('name: c\nrunner: script\nscript: scripts/big.sh\n'), mode: 0o644 },
    { path: 'scripts/big.sh', content: Buffer.alloc(PACK_LIMITS.scriptBytes + 1, 0x61), mode: 0o755 },
  ]));
  t.match(scripts.message, /^actions\/a\.yaml:3: script: path has an empty, "\." or "\.\." segment/m);
  t.match(scripts.message, /^actions\/b\.yaml:3: script: no file scripts\/none\.sh in the pack/m);
  t.match(scripts.message, /^actions\/c\.yaml:3: script: scripts\/big\.sh is 262145 bytes: a script is at most 256 KiB/m);

  const proto = errorOf(() => loadPack([{ path: 'pack.yaml', content: Buffer.from('name: p\nversion: 1.0.0\n__proto__: { x: 1 }\n'), mode: 0o644 }]));
  t.match(proto.message, /^pack\.yaml:3: __proto__: reserved key$/m);
  const nan = errorOf(() => loadPack([
    { path: 'pack.yaml', content: Buffer.from('name: p\nversion: 1.0.0\n'), mode: 0o644 },
    { path: 'actions/a.yaml', content: Buffer.from('name: a\nrunner: command\ncommand: [x]\nparameters:\n  n: { type: number, default: .nan }\n'), mode: 0o644 },
  ]));
  t.match(nan.message, /^actions\/a\.yaml:5: parameters\.n\.default: not a JSON value/m);
  const bomb = errorOf(() => loadPack([{ path: 'pack.yaml', content: Buffer.from(`a: &a [x,x,x,x,x,x,x,x,x,x]\n${Array.from({ length: 12 }, (_, i) => `b${i}: &b${i} [${Array(10).fill(i ? `*b${i - 1}` : '*a').join(',')}]`).join('\n')}\n`), mode: 0o644 }]));
  t.equal(bomb.code, 'TRELLIS_E_PACK_INVALID', 'an alias bomb is refused, not expanded');
});

t.test('a directory is read without dotfiles; links inside are followed, links leaving it are refused', async (t) => {
  await using d = await tempDir();
  const dir = join(d.path, 'demo');
  await cp(DEMO, dir, { recursive: true });
  await mkdir(join(dir, '.git'));
  await writeFile(join(dir, '.git', 'HEAD'), 'ref: refs/heads/main\n');
  await symlink(join(dir, 'scripts', 'cleanup.sh'), join(dir, 'scripts', 'alias.sh'));
  const files = await readPackSource(dir);
  t.notOk(files.some((f) => f.path.startsWith('.git')), '.git is skipped');
  t.ok(files.some((f) => f.path === 'scripts/alias.sh'), 'a link inside the pack is read');
  await symlink('/etc/hostname', join(dir, 'scripts', 'escape.sh'));
  const out = await rejection(readPackSource(dir));
  t.equal(out.code, 'TRELLIS_E_PACK_INVALID');
  t.match(out.message, /scripts\/escape\.sh is a symbolic link leaving the pack/);
  t.match((await rejection(readPackSource(join(d.path, 'nope')))).message, /cannot read .*nope: ENOENT/);
  t.match((await rejection(readPackSource(join(DEMO, 'pack.yaml')))).message, /is neither a directory nor a \.tar, \.tar\.gz or \.tgz file/);
});

t.test('a .tgz with one top-level folder reads the same as the directory; traversal, links and devices are refused', async (t) => {
  await using d = await tempDir();
  const tgz = join(d.path, 'demo.tgz');
  await tarCreate({ gzip: true, file: tgz, cwd: dirname(DEMO) }, ['demo']);
  const fromTar = await readPackSource(tgz);
  const fromDir = await readPackSource(DEMO);
  t.same(fromTar.map((f) => [f.path, f.content.toString('base64'), f.mode]), fromDir.map((f) => [f.path, f.content.toString('base64'), f.mode]));

  const meta = { path: 'p/pack.yaml', body: 'name: p\nversion: 1.0.0\n' };
  for (const [why, entry, re] of [
    ['a ".." path', { path: 'p/../../etc/cron.d/x', body: 'x' }, /"\.\." is not allowed/],
    ['an absolute path', { path: '/etc/passwd', body: 'x' }, /absolute paths are not allowed/],
    ['a symbolic link', { path: 'p/scripts/x.sh', type: '2', linkpath: '/etc/shadow' }, /is a symbolic link: links are not allowed/],
    ['a hard link', { path: 'p/scripts/y.sh', type: '1', linkpath: 'p/pack.yaml' }, /is a hard link/],
    ['a device', { path: 'p/dev', type: '3' }, /is a CharacterDevice entry/],
  ] as const) {
    const r = await rejection(readPackTarball(gzipSync(rawTar([meta, entry])), 'x.tgz'));
    t.equal(r.code, 'TRELLIS_E_PACK_INVALID', why);
    t.match(r.message, re, why);
  }
  const garbage = await rejection(readPackTarball(Buffer.from('this is not a tarball at all'), 'x.tar'));
  t.equal(garbage.code, 'TRELLIS_E_PACK_INVALID');
});

t.test('size limits: files, bytes per file and in total, on read and on load', async (t) => {
  const big = await rejection(readPackTarball(rawTar([{ path: 'pack.yaml', body: Buffer.alloc(PACK_LIMITS.fileBytes + 1, 0x20) }]), 'big.tar'));
  t.equal(big.code, 'TRELLIS_E_TOO_LARGE');
  t.match(big.message, /pack\.yaml is 1048577 bytes: a pack file is at most 1 MiB/);
  const many = await rejection(readPackTarball(rawTar(Array.from({ length: PACK_LIMITS.files + 1 }, (_, i) => ({ path: `scripts/${i}.sh`, body: 'x' }))), 'many.tar'));
  t.equal(many.code, 'TRELLIS_E_TOO_LARGE');
  t.match(many.message, /more than 512 files/);
  const total = await rejection(readPackTarball(rawTar(Array.from({ length: 9 }, (_, i) => ({ path: `scripts/${i}.bin`, body: Buffer.alloc(PACK_LIMITS.fileBytes) }))), 'total.tar'));
  t.equal(total.code, 'TRELLIS_E_TOO_LARGE');
  t.match(total.message, /more than 8 MiB/);

  await using d = await tempDir();
  await writeFile(join(d.path, 'pack.yaml'), Buffer.alloc(PACK_LIMITS.fileBytes + 1, 0x20));
  t.equal((await rejection(readPackSource(d.path))).code, 'TRELLIS_E_TOO_LARGE', 'the same on a directory');
  t.equal(errorOf(() => loadPack(Array.from({ length: PACK_LIMITS.files + 1 }, (_, i) => ({ path: `scripts/${i}`, content: Buffer.alloc(1), mode: 0o644 })))).code, 'TRELLIS_E_TOO_LARGE', 'loadPack checks too');
});

// ---- hub ---------------------------------------------------------------------------------

const toReq = (files: PackFile[], force = false): T.InstallPackRequest => ({ files: files.map((f) => ({ path: f.path, content: f.content, mode: f.mode })), force });
const install = (c: AdminClients, files: PackFile[], force = false) => call<T.InstallPackRequest, T.PackInfo__Output>(c, c.packs, c.packs.InstallPack, toReq(files, force));
const list = async (c: AdminClients) => (await call<T.ListPacksRequest, T.ListPacksResponse__Output>(c, c.packs, c.packs.ListPacks, {})).packs;
const get = (c: AdminClients, name: string) => call<T.GetPackRequest, T.PackInfo__Output>(c, c.packs, c.packs.GetPack, { name });
const remove = (c: AdminClients, name: string) => call<T.RemovePackRequest, T.RemovePackResponse__Output>(c, c.packs, c.packs.RemovePack, { name });

async function clientsFor(t: Test, h: TestHub, username: string, password: string, tenant: string): Promise<AdminClients> {
  const anon = adminClients(h.adminAddr, h.caPem);
  const r = await call<T.LoginRequest, T.LoginResponse__Output>(anon, anon.auth, anon.auth.Login, { username, password }).finally(() => anon.close());
  const c = adminClients(h.adminAddr, h.caPem, r.token, tenant);
  t.teardown(() => c.close());
  return c;
}

t.test('AdminPacks: install, list, get, replace with force, remove; tenant scope; permissions; survives a restart', async (t) => {
  await using h = await startHub();
  for (const name of ['red', 'blue']) await call(h.admin, h.admin.tenants, h.admin.tenants.CreateTenant, { name, description: '' });
  await call(h.admin, h.admin.users, h.admin.users.CreateUser, { username: 'rita', password: PW, roles: ['user'], tenants: ['red'] });
  await call(h.admin, h.admin.users, h.admin.users.CreateUser, { username: 'bob', password: PW, roles: ['admin'], tenants: ['blue'] });
  const admin = await clientsFor(t, h, 'admin', ADMIN_PASSWORD, 'red');
  const rita = await clientsFor(t, h, 'rita', PW, 'red');
  const demo = await readPackSource(DEMO);
  const packs = h.hub.components.packs;
  const changes: string[] = [];
  packs.on('change', (tenant: string) => changes.push(tenant));

  const info = await install(admin, demo);
  t.same([info.name, info.version, info.tenant, info.installedBy], ['demo', '1.0.0', 'red', 'admin']);
  t.same(info.actions, ['demo.cleanup', 'demo.notify', 'demo.restart']);
  t.same(info.sensors, ['demo.root_disk']);
  t.same(info.rules, ['demo.disk_full']);
  const def = JSON.parse(info.definitionJson.toString()) as PackDef;
  t.equal(def.actions.find((a) => a.name === 'cleanup')?.script?.path, 'scripts/cleanup.sh');
  t.same(changes, ['red'], 'change emitted for the tenant');
  t.equal(packs.action('red', 'demo.restart')?.runner, 'command', 'actions are served from memory');
  t.equal(packs.action('blue', 'demo.restart'), undefined);
  t.same(packs.rules('red').map((r) => r.ref), ['demo.disk_full']);
  t.same(packs.sensors('red').map((s) => s.ref), ['demo.root_disk']);
  t.same(packs.tenants(), ['red']);

  const again = await callError(install(admin, demo));
  t.equal(again?.code, 'TRELLIS_E_ALREADY_EXISTS', 'a second install without force');
  t.match(again?.message, /demo 1\.0\.0 is already installed \(by admin\); use --force/);
  const v2 = await demoWith({ 'pack.yaml': 'name: demo\nversion: 1.1.0\ndescription: v2\n' });
  t.equal((await install(admin, v2, true)).version, '1.1.0', 'force replaces');

  // Permissions: a user may list and show but not install or remove; refusals are audited.
  t.same((await list(rita)).map((p) => [p.name, p.version, p.definitionJson.length]), [['demo', '1.1.0', 0]], 'list carries no definition');
  t.equal((await get(rita, 'demo')).rules[0], 'demo.disk_full');
  t.equal((await callError(install(rita, demo, true)))?.code, 'TRELLIS_E_PERMISSION_DENIED');
  t.equal((await callError(remove(rita, 'demo')))?.code, 'TRELLIS_E_PERMISSION_DENIED');

  // Tenant scope: another tenant's pack does not exist for the caller.
  const bob = await clientsFor(t, h, 'bob', PW, 'blue');
  t.same(await list(bob), []);
  t.equal((await callError(get(bob, 'demo')))?.code, 'TRELLIS_E_NOT_FOUND');
  t.equal((await callError(remove(bob, 'demo')))?.code, 'TRELLIS_E_NOT_FOUND');
  t.equal((await callError(get(bob, '../red/demo')))?.code, 'TRELLIS_E_INVALID_ARGUMENT', 'a bad name is refused by name');
  t.same((await list(h.admin)).map((p) => `${p.tenant}/${p.name}`), ['red/demo'], 'an admin lists every tenant with *');

  // The hub validates again: a broken pack sent without the CLI is refused with file:line:field.
  const broken = await callError(install(admin, await demoWith({ 'sensors/disk.yaml': 'name: root_disk\ntype: disk\ninterval: 10ms\n' }), true));
  t.equal(broken?.code, 'TRELLIS_E_PACK_INVALID');
  t.match(broken?.message, /sensors\/disk\.yaml:3: interval: must be between 1s and 24h/);
  const traversal = await callError(install(admin, [...demo, { path: '../outside.sh', content: Buffer.from('x'), mode: 0o755 }], true));
  t.equal(traversal?.code, 'TRELLIS_E_PACK_INVALID');
  t.match(traversal?.message, /"\.\.\/outside\.sh": path has an empty, "\." or "\.\." segment/);
  const tooMany = await callError(install(admin, Array.from({ length: PACK_LIMITS.files + 1 }, (_, i) => ({ path: `scripts/${i}`, content: Buffer.alloc(1), mode: 0o644 }))));
  t.equal(tooMany?.code, 'TRELLIS_E_TOO_LARGE');

  await h.restart();
  t.equal(h.hub.components.packs.get('red', 'demo')?.version, '1.1.0', 'packs are loaded from the store at start');
  t.equal(h.hub.components.packs.action('red', 'demo.cleanup')?.script?.path, 'scripts/cleanup.sh');
  const admin2 = await clientsFor(t, h, 'admin', ADMIN_PASSWORD, 'red');
  await remove(admin2, 'demo');
  t.same(await list(admin2), []);
  t.equal(h.hub.components.packs.action('red', 'demo.restart'), undefined, 'removed from memory');
  t.equal((await callError(remove(admin2, 'demo')))?.code, 'TRELLIS_E_NOT_FOUND');
});

t.test('a request over the hub\'s maxMessageBytes is refused as too large', async (t) => {
  await using h = await startHub({ config: { maxMessageBytes: 64 * 1024 } });
  const c = await clientsFor(t, h, 'admin', ADMIN_PASSWORD, 'default');
  const files = await demoWith({ 'scripts/blob.bin': 'x'.repeat(100 * 1024) });
  const err = await callError(install(c, files));
  t.equal(err?.code, 'TRELLIS_E_TOO_LARGE');
  t.match(err?.message, /larger than max/i, 'the CLI recognises this message to explain the limit');
  t.same(await list(c), []);
});

// ---- CLI ---------------------------------------------------------------------------------

const trellis = runCli;

t.test('trellis packs: install a dir and a tgz, list, show, remove; a broken pack fails before reaching the hub', async (t) => {
  await using h = await startHub();
  await using home = await tempDir();
  const env = { TRELLIS_HOME: home.path, TRELLIS_PASSWORD: ADMIN_PASSWORD, TRELLIS_TENANT: '' };
  const login = await trellis(['login', '--hub', h.adminAddr, '--user', 'admin', '--ca', join(h.dataDir, 'ca.pem')], env);
  t.equal(login.code, 0, login.err);

  const inst = await trellis(['packs', 'install', DEMO], env);
  t.equal(inst.code, 0, inst.err);
  t.equal(inst.out.trim(), 'installed pack demo 1.0.0 in tenant default: 3 actions, 1 sensor, 1 rule');

  const tgz = join(home.path, 'demo.tgz');
  await tarCreate({ gzip: true, file: tgz, cwd: dirname(DEMO) }, ['demo']);
  const dup = await trellis(['packs', 'install', tgz], env);
  t.equal(dup.code, 1);
  t.match(dup.err, /already installed .*--force.*\(TRELLIS_E_ALREADY_EXISTS\)/);

  const ls = await trellis(['packs', 'list'], env);
  t.match(ls.out, /^NAME\s+VERSION\s+ACTIONS\s+SENSORS\s+RULES/);
  t.match(ls.out, /\ndemo\s+1\.0\.0\s+3\s+1\s+1\s/);

  const show = await trellis(['packs', 'show', 'demo'], env);
  t.equal(show.code, 0, show.err);
  t.match(show.out, /demo\.restart {2}\[command, timeout 2m, as root\]/);
  t.match(show.out, /service {2}string {2}required {2}default "nginx" {2}one of "nginx", "apache2", "haproxy"/);
  t.match(show.out, /demo\.disk_full {2}core\.disk \+ 1 criterion → demo\.cleanup locally/);
  t.match(show.out, /0755\s+\d+ {2}scripts\/cleanup\.sh/);
  const json = JSON.parse((await trellis(['packs', 'show', 'demo', '--json'], env)).out) as { name: string; definition: PackDef };
  t.equal(json.definition.actions.length, 3);

  await using d = await tempDir();
  const bad = join(d.path, 'bad');
  await cp(DEMO, bad, { recursive: true });
  await writeFile(join(bad, 'actions', 'restart.yaml'), 'name: restart\nrunner: command\ncommand: [a]\nparameters:\n  x: { type: text }\n');
  const before = h.logLines.filter((l) => l.includes('AdminPacks/InstallPack')).length;
  const refused = await trellis(['packs', 'install', bad, '--force'], env);
  t.equal(refused.code, 1);
  t.match(refused.err, /actions\/restart\.yaml:5: parameters\.x\.type: expected one of string/);
  t.match(refused.err, /TRELLIS_E_PACK_INVALID/);
  t.equal(h.logLines.filter((l) => l.includes('AdminPacks/InstallPack')).length, before, 'nothing was sent to the hub');

  const rm1 = await trellis(['packs', 'remove', 'demo'], env);
  t.equal(rm1.out.trim(), 'removed pack demo');
  t.equal(h.hub.components.packs.get('default', 'demo'), undefined);
  const again = await trellis(['packs', 'install', tgz], env);
  t.equal(again.code, 0, again.err);
  t.equal(again.out.trim(), 'installed pack demo 1.0.0 in tenant default: 3 actions, 1 sensor, 1 rule', 'from the tarball');
});
