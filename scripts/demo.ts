/**
 * `npm run demo`: a hub and an agent on localhost in a temp dir, driven through the real
 * `trellis` CLI exactly as an operator would: init, login, token, enroll, run, revoke. It prints
 * the web console's URL and the credentials it uses; `npm run demo -- --keep` leaves the hub up
 * afterwards (until Ctrl-C) to look around in the console.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, mkdirSync, writeFileSync, existsSync, readFileSync } from 'node:fs';
import { request } from 'node:https';
import { createHmac } from 'node:crypto';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const bin = join(root, 'bin', 'trellis.js');
const dir = mkdtempSync(join(tmpdir(), 'trellis-demo-'));
const env: NodeJS.ProcessEnv = { ...process.env, TRELLIS_HOME: join(dir, 'cli'), TRELLIS_ADMIN_PASSWORD: randomBytes(12).toString('base64url'), TRELLIS_LOG_LEVEL: 'info' };
env.TRELLIS_PASSWORD = env.TRELLIS_ADMIN_PASSWORD;
const children: ChildProcess[] = [];
const t0 = Date.now();
const keep = process.argv.includes('--keep') || process.env.TRELLIS_DEMO_KEEP === '1';

const bold = (s: string) => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
function step(title: string): void { process.stdout.write(`\n${bold(`== ${title}`)}\n`); }

function trellis(args: string[], opts: { allowFail?: boolean; quiet?: boolean; silent?: boolean } = {}): { code: number; out: string; err: string } {
  const shown = args.map((a) => (a.length > 60 ? a.slice(0, 24) + '…' + a.slice(-12) : /[\s"$;&|<>()]/.test(a) ? `'${a}'` : a));
  if (!opts.silent) process.stdout.write(`$ trellis ${shown.join(' ')}\n`);
  const r = spawnSync(process.execPath, [bin, ...args], { env, encoding: 'utf8', timeout: 30_000 });
  const out = r.stdout ?? '';
  const err = r.stderr ?? '';
  if (!opts.quiet) { process.stdout.write(out); if (err.trim()) process.stdout.write(err.split('\n').map((l) => (l ? `  ${l}` : l)).join('\n')); }
  const code = r.status ?? 1;
  if (code !== 0 && !opts.allowFail) throw new Error(`trellis ${args[0]} exited ${code}: ${err.trim()}`);
  return { code, out, err };
}

function daemon(args: string[], logName: string): ChildProcess {
  process.stdout.write(`$ trellis ${args.join(' ')} &\n`);
  const c = spawn(process.execPath, [bin, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  c.stdout!.resume(); // drained unless a caller listens
  const lines: string[] = [];
  c.stderr!.setEncoding('utf8').on('data', (d: string) => lines.push(...d.split('\n').filter(Boolean)));
  (c as ChildProcess & { lines: string[] }).lines = lines;
  children.push(c);
  return c;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => resolve(p)); });
    s.on('error', reject);
  });
}

async function until(what: string, fn: () => boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function main(): Promise<void> {
  const [agentPort, adminPort, webPort] = [await freePort(), await freePort(), await freePort()];
  const hubAddr = `127.0.0.1:${adminPort}`;

  step('1. Set up the hub: a new CA, a hub certificate for localhost and 127.0.0.1, the first admin');
  trellis(['hub', 'init', '--data', join(dir, 'hub'), '--name', 'localhost,127.0.0.1', '--bind', '127.0.0.1',
    '--agent-port', String(agentPort), '--admin-port', String(adminPort), '--web-port', String(webPort)]);
  const hub = daemon(['hub', 'run', '--data', join(dir, 'hub')], 'hub');
  await until('the hub to listen', () => (hub as ChildProcess & { lines: string[] }).lines.some((l) => l.includes('hub running')));

  step('2. Log in (the CLI pins the hub CA from ca.pem; the token is time-limited)');
  trellis(['login', '--hub', hubAddr, '--user', 'admin', '--ca', join(dir, 'hub', 'ca.pem')]);

  const consoleUrl = `https://localhost:${webPort}/console/`;
  const consoleStatus = await getStatus(webPort, '/console/', readFileSync(join(dir, 'hub', 'ca.pem'), 'utf8'));
  if (consoleStatus !== 200) throw new Error(`the web console answered ${consoleStatus}`);
  const consoleHelp = () => process.stdout.write([
    `Web console: ${consoleUrl}`,
    `  user: admin   password: ${env.TRELLIS_ADMIN_PASSWORD}`,
    `  the hub's certificate is from its own CA (${join(dir, 'hub', 'ca.pem')}): trust that CA in the browser, or accept the warning for this demo`,
    '',
  ].join('\n'));
  consoleHelp();

  step('3. Create a one-use join token (it carries the CA fingerprint)');
  const token = trellis(['tokens', 'create', '--label', 'role=demo', '--ttl', '10m'], { quiet: true }).out.trim();
  process.stdout.write(`${token.slice(0, 40)}…\n`);

  step('4. Enroll an agent: its key is made on the agent; the hub signs a CSR');
  trellis(['agent', 'enroll', '--hub', hubAddr, '--token', token, '--data', join(dir, 'agent')]);
  const agent = daemon(['agent', 'run', '--data', join(dir, 'agent')], 'agent');
  let agentId = '';
  await until('the agent to come online', () => {
    const r = spawnSync(process.execPath, [bin, 'agents', 'list', '--json'], { env, encoding: 'utf8' });
    const list = r.status === 0 ? (JSON.parse(r.stdout) as Array<{ id: string; status: string }>) : [];
    agentId = list[0]?.id ?? '';
    return list[0]?.status === 'online';
  });
  trellis(['agents', 'list']);
  trellis(['agents', 'show', agentId]);

  step('5. Run commands on the agent over the mTLS stream (argv, no shell; the exit code comes back)');
  trellis(['run', '--selector', 'role=demo', '--', 'uname', '-srm']);
  const r = trellis(['run', '--agent', agentId, '--timeout', '10s', '--', 'sh', '-c', 'echo "hello from $(hostname)"; echo "a warning" >&2; exit 3'], { allowFail: true });
  process.stdout.write(`(exit code ${r.code}, the remote command's)\n`);
  if (r.code !== 3) throw new Error(`expected exit code 3, got ${r.code}`);

  await automation(agentId, webPort);

  step('8. Revoke the agent: its live stream is cut and it may not come back');
  const revokedAt = Date.now();
  trellis(['agents', 'revoke', agentId, '--reason', 'demo']);
  await until('the agent to be cut off', () => agent.exitCode !== null, 5_000);
  // Time from the hub's revocation to the agent seeing its stream refused, from both daemons' logs.
  const logTime = (c: ChildProcess, needle: string) => {
    const line = (c as ChildProcess & { lines: string[] }).lines.find((l) => l.includes(needle));
    try { return line ? (JSON.parse(line) as { time: number; err?: string }) : undefined; } catch { return undefined; }
  };
  const revoked = logTime(hub, 'agent revoked');
  const refused = logTime(agent, 'TRELLIS_E_CERT_REVOKED');
  const cutMs = revoked && refused ? refused.time - revoked.time : Date.now() - revokedAt;
  process.stdout.write(`the agent's stream was cut ${cutMs} ms after the hub revoked it; the agent exited (code ${agent.exitCode}) saying:\n  ${refused?.err ?? '(no message)'}\n`);
  trellis(['agents', 'list']);
  const again = trellis(['run', '--agent', agentId, '--', 'true'], { allowFail: true });
  if (again.code === 0) throw new Error('a revoked agent still ran a command');
  trellis(['certs', 'crl', '--out', join(dir, 'crl.pem')]);
  const openssl = spawnSync('openssl', ['crl', '-in', join(dir, 'crl.pem'), '-CAfile', join(dir, 'hub', 'ca.pem'), '-noout'], { encoding: 'utf8' });
  if (openssl.status === 0) process.stdout.write(`openssl: ${(openssl.stderr || openssl.stdout).trim()} (the CRL is signed by the hub CA)\n`);

  step(`Done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  if (keep) {
    process.stdout.write('The hub stays up (--keep): look at the agents, executions, rules and audit log in the web console. Ctrl-C ends the demo.\n');
    consoleHelp();
    await new Promise<void>((resolve) => { process.once('SIGINT', () => resolve()); process.once('SIGTERM', () => resolve()); });
  } else {
    process.stdout.write(`(\`npm run demo -- --keep\` leaves the hub up afterwards to look around in the web console)\n`);
  }
}

function getStatus(webPort: number, path: string, ca: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: webPort, path, ca, servername: 'localhost' }, (res) => { res.resume(); resolve(res.statusCode ?? 0); });
    req.on('error', reject);
    req.end();
  });
}

/** A pack: a file sensor, an edge rule that remediates on the agent, a hub rule fed by a webhook. */
function writePack(packDir: string, watched: string, marker: string): void {
  for (const d of ['actions', 'sensors', 'rules']) mkdirSync(join(packDir, d), { recursive: true });
  writeFileSync(join(packDir, 'pack.yaml'), 'name: demo\nversion: 1.0.0\ndescription: Trellis demo pack\n');
  writeFileSync(join(packDir, 'actions', 'remediate.yaml'), [
    'name: remediate', 'description: write a remediation record (the API token reaches it by env only)', 'runner: command',
    'command: ["/bin/sh", "-c", "echo \\"remediated: $REASON (token ${#API_TOKEN} chars)\\" | tee -a \\"$MARKER\\""]',
    'parameters:', '  reason: { type: string, required: true }', '  token: { type: string, secret: true }',
    'env:', `  MARKER: ${JSON.stringify(marker)}`, '  REASON: "{{ reason }}"', '  API_TOKEN: "{{ token }}"', 'timeout: 10s', '',
  ].join('\n'));
  writeFileSync(join(packDir, 'sensors', 'incident.yaml'), `name: incident\ndescription: an incident file appears\ntype: file\ninterval: 1s\nconfig: { path: ${JSON.stringify(watched)} }\n`);
  writeFileSync(join(packDir, 'rules', 'fix_incident.yaml'), [
    'name: fix_incident', 'description: remediate on the agent itself, even with the hub down', 'trigger: core.file',
    'criteria:', '  trigger.payload.change: { type: equals, pattern: created }',
    'action:', '  ref: demo.remediate', '  parameters:', '    reason: "incident file {{ trigger.payload.path }}"', '    token: "{{ secret.demo_token }}"',
    'target: local', 'cooldown: 10s', '',
  ].join('\n'));
}

function postWebhook(webPort: number, name: string, secret: string, body: object, ca: string): Promise<number> {
  const raw = Buffer.from(JSON.stringify(body));
  const ts = Math.floor(Date.now() / 1000);
  const sig = createHmac('sha256', secret).update(`${ts}.`).update(raw).digest('hex');
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: webPort, path: `/webhooks/${name}`, method: 'POST', ca, servername: 'localhost',
      headers: { 'content-type': 'application/json', 'content-length': raw.length, 'x-trellis-signature': `t=${ts},v1=${sig}` } }, (res) => { res.resume(); res.on('end', () => resolve(res.statusCode ?? 0)); });
    req.on('error', reject);
    req.end(raw);
  });
}

async function automation(agentId: string, webPort: number): Promise<void> {
  step('6. Automation at the edge: a pack with a sensor, an action and an edge rule; the secret it uses travels sealed');
  const packDir = join(dir, 'pack-demo');
  const watched = join(dir, 'incident');
  const marker = join(dir, 'remediated.log');
  writePack(packDir, watched, marker);
  writeFileSync(join(dir, 'token.txt'), randomBytes(16).toString('hex'));
  trellis(['kv', 'set', 'demo_token', '--secret', '--file', join(dir, 'token.txt')]);
  trellis(['packs', 'install', packDir]);
  trellis(['rules', 'list']);
  await until('the agent to receive its edge rule', () => existsSync(join(dir, 'agent', 'edge-config.json')) && readFileSync(join(dir, 'agent', 'edge-config.json'), 'utf8').includes('fix_incident'));
  process.stdout.write(`$ echo disk full > ${watched}    # the file sensor sees it; the edge rule runs demo.remediate on the agent\n`);
  writeFileSync(watched, 'disk full\n');
  await until('the remediation to run', () => existsSync(marker));
  process.stdout.write(readFileSync(marker, 'utf8'));
  await until('the edge run to reach the history', () => trellis(['executions', 'list', '--rule', 'demo.fix_incident', '--json'], { quiet: true, silent: true }).out.includes('succeeded'));
  trellis(['executions', 'list']);

  step('7. Automation on the hub: a webhook event fires a hub rule that runs the action on agents by label');
  writeFileSync(join(dir, 'deploy-rule.yaml'), [
    'name: on-deploy', 'trigger: webhook.deploy', 'criteria:', '  trigger.payload.env: { type: equals, pattern: prod }',
    'action:', '  ref: demo.remediate', '  parameters:', '    reason: "deploy of {{ trigger.payload.service }}"',
    'target: { selector: { role: demo } }', 'rate_limit: { count: 5, per: 1m }', '',
  ].join('\n'));
  trellis(['rules', 'create', join(dir, 'deploy-rule.yaml')]);
  writeFileSync(join(dir, 'event.json'), JSON.stringify({ env: 'prod', service: 'api' }));
  trellis(['rules', 'test', 'on-deploy', join(dir, 'event.json')]);
  const created = trellis(['webhooks', 'create', 'deploy', '--json'], { quiet: true, silent: true });
  const secret = (JSON.parse(created.out) as { secret: string }).secret;
  process.stdout.write(`$ trellis webhooks create deploy   # secret shown once: ${secret.slice(0, 9)}…\n`);
  // A live follower of the event stream (wss://…:web-port/stream) sees the webhook's event.
  const follower = daemon(['events', '--follow', '--type', 'webhook.*'], 'events');
  const followed: string[] = [];
  follower.stdout?.setEncoding('utf8').on('data', (d: string) => followed.push(...d.split('\n').filter(Boolean)));
  await new Promise((r) => setTimeout(r, 1500));
  const status = await postWebhook(webPort, 'deploy', secret, { env: 'prod', service: 'api' }, readFileSync(join(dir, 'hub', 'ca.pem'), 'utf8'));
  process.stdout.write(`POST https://127.0.0.1:${webPort}/webhooks/deploy (HMAC-signed) → ${status}\n`);
  const bad = await postWebhook(webPort, 'deploy', 'twh1_wrong', { env: 'prod' }, readFileSync(join(dir, 'hub', 'ca.pem'), 'utf8'));
  process.stdout.write(`the same with a wrong signature → ${bad}\n`);
  await until('the follower to print the event', () => followed.length > 0, 5_000).catch(() => undefined);
  process.stdout.write(`trellis events --follow printed:\n${followed.map((l) => `  ${l}`).join('\n')}\n`);
  follower.kill('SIGINT');
  await until('the hub rule to run', () => trellis(['executions', 'list', '--rule', 'on-deploy', '--json'], { quiet: true, silent: true }).out.includes('succeeded'));
  trellis(['executions', 'list', '--rule', 'on-deploy']);
  trellis(['run', 'demo.remediate', '--agent', agentId, 'reason=by hand']);
}

main().then(
  () => cleanup(0),
  (err: Error) => { process.stderr.write(`demo failed: ${err.message}\n`); for (const c of children) process.stderr.write(((c as ChildProcess & { lines: string[] }).lines ?? []).slice(-10).join('\n') + '\n'); cleanup(1); },
);

function cleanup(code: number): void {
  for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
  setTimeout(() => { for (const c of children) if (c.exitCode === null) c.kill('SIGKILL'); rmSync(dir, { recursive: true, force: true }); process.exit(code); }, 500);
}
