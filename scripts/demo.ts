/**
 * `npm run demo`: a hub and an agent on localhost in a temp dir, driven through the real
 * `trellis` CLI exactly as an operator would: init, login, token, enroll, run, revoke.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
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

const bold = (s: string) => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
function step(title: string): void { process.stdout.write(`\n${bold(`== ${title}`)}\n`); }

function trellis(args: string[], opts: { allowFail?: boolean; quiet?: boolean } = {}): { code: number; out: string; err: string } {
  const shown = args.map((a) => (a.length > 60 ? a.slice(0, 24) + '…' + a.slice(-12) : /[\s"$;&|<>()]/.test(a) ? `'${a}'` : a));
  process.stdout.write(`$ trellis ${shown.join(' ')}\n`);
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
  const c = spawn(process.execPath, [bin, ...args], { env, stdio: ['ignore', 'ignore', 'pipe'] });
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

  step('6. Revoke the agent: its live stream is cut and it may not come back');
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
}

main().then(
  () => cleanup(0),
  (err: Error) => { process.stderr.write(`demo failed: ${err.message}\n`); for (const c of children) process.stderr.write(((c as ChildProcess & { lines: string[] }).lines ?? []).slice(-10).join('\n') + '\n'); cleanup(1); },
);

function cleanup(code: number): void {
  for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
  setTimeout(() => { for (const c of children) if (c.exitCode === null) c.kill('SIGKILL'); rmSync(dir, { recursive: true, force: true }); process.exit(code); }, 500);
}
