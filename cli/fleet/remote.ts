/**
 * What `trellis agents install` runs on a managed server. Each step is one fixed POSIX sh script
 * run as `[sudo -n] sh -c SCRIPT sh ARG…` (values as positional arguments, each shell-quoted),
 * so no value is ever parsed as shell code. Output from the server is untrusted: parsed
 * strictly, cleaned before it is shown.
 */
import type { Readable } from 'node:stream';
import { z } from 'zod';
import { ERROR_CODES, TrellisError, type ErrorCode } from '../../common/errors.js';
import { SAFE_PATH_RE, formatTarget, type SshTarget } from './hosts.js';
import { lastLine, runSsh, shQuote, shScript, sshError, type SshOptions } from './ssh.js';

/** Lowest Node major the agent runs on. */
export const MIN_NODE_MAJOR = 20;

/** Read-only look at the server: node, uid, tools, sudo, and whether this bundle is unpacked already. */
const PROBE = `
n=$(command -v node 2>/dev/null || true)
echo "node=$n"
if [ -n "$n" ]; then echo "node_version=$("$n" --version 2>/dev/null | head -n 1)"; fi
echo "uid=$(id -u)"
for t in tar sha256sum shasum openssl mktemp; do if command -v "$t" >/dev/null 2>&1; then echo "has=$t"; fi; done
if [ "$1" = sudo ]; then if sudo -n true >/dev/null 2>&1; then echo "sudo=ok"; else echo "sudo=no"; fi; fi
if [ -f "$2/.bundle-sha256" ]; then echo "installed=$(head -c 64 "$2/.bundle-sha256")"; fi
exit 0
`;

/**
 * Receives the bundle on stdin into a private temp dir under the prefix, checks its SHA-256,
 * unpacks it and moves it into place as DIR (an immutable, content-named folder: never changed
 * in place, so a running agent keeps its files). Exit 65: the bundle is not what was sent.
 */
const UPLOAD = `
set -eu
umask 022
prefix=$1; dir=$2; root=$3; want=$4
mkdir -p "$prefix"
tmp=$(mktemp -d "$prefix/.incoming.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/bundle.tgz"
if command -v sha256sum >/dev/null 2>&1; then got=$(sha256sum "$tmp/bundle.tgz" | cut -d ' ' -f 1)
elif command -v shasum >/dev/null 2>&1; then got=$(shasum -a 256 "$tmp/bundle.tgz" | cut -d ' ' -f 1)
else got=$(openssl dgst -sha256 -r "$tmp/bundle.tgz" | cut -d ' ' -f 1); fi
if [ "$got" != "$want" ]; then echo "bundle checksum mismatch on the server: expected $want, got $got; nothing was unpacked" >&2; exit 65; fi
mkdir "$tmp/x"
tar -xzf "$tmp/bundle.tgz" -C "$tmp/x" --no-same-owner
if [ ! -f "$tmp/x/$root/bin/trellis.js" ]; then echo "the bundle holds no $root/bin/trellis.js; nothing was unpacked" >&2; exit 65; fi
echo "$want" > "$tmp/x/$root/.bundle-sha256"
chmod 755 "$tmp/x/$root"
if [ -d "$prefix/$dir" ] && [ "$(head -c 64 "$prefix/$dir/.bundle-sha256" 2>/dev/null)" = "$want" ]; then echo "unpacked=$prefix/$dir"; exit 0; fi
if [ -e "$prefix/$dir" ]; then mv "$prefix/$dir" "$tmp/old"; fi
mv "$tmp/x/$root" "$prefix/$dir"
echo "unpacked=$prefix/$dir"
`;

export interface Probe {
  node?: string;
  nodeVersion?: string;
  uid?: number;
  has: Set<string>;
  sudo?: 'ok' | 'no';
  /** SHA-256 of the bundle already unpacked at the install dir, if any. */
  installed?: string;
}

export function parseProbe(stdout: string): Probe {
  const p: Probe = { has: new Set() };
  for (const line of stdout.split('\n')) {
    const i = line.indexOf('=');
    if (i <= 0) continue;
    const k = line.slice(0, i), v = line.slice(i + 1).trim();
    if (k === 'node' && v) p.node = v;
    else if (k === 'node_version') p.nodeVersion = v;
    else if (k === 'uid' && /^[0-9]+$/.test(v)) p.uid = Number(v);
    else if (k === 'has') p.has.add(v);
    else if (k === 'sudo' && (v === 'ok' || v === 'no')) p.sudo = v;
    else if (k === 'installed' && /^[0-9a-f]{64}$/.test(v)) p.installed = v;
  }
  return p;
}

export interface RemoteCtx { target: SshTarget; ssh: SshOptions; sudo: boolean; signal?: AbortSignal }

/** Runs the probe and checks the server can take an agent; returns the absolute node path. */
export async function probe(c: RemoteCtx, installDir: string): Promise<{ node: string; probe: Probe }> {
  const who = formatTarget(c.target);
  const r = await runSsh(c.target, c.ssh, shScript(PROBE, [c.sudo ? 'sudo' : 'nosudo', installDir]), { signal: c.signal });
  if (r.code === 255) throw sshError(c.target, c.ssh, r);
  if (r.code !== 0) throw new TrellisError('TRELLIS_E_SSH', `probing ${who} failed (exit ${r.code}): ${lastLine(r.stderr) || 'no message'}`);
  const p = parseProbe(r.stdout);
  const notReady = (m: string) => new TrellisError('TRELLIS_E_HOST_NOT_READY', `${who}: ${m}`);
  if (!p.node) throw notReady(`no \`node\` on the PATH of ${c.target.user ?? 'the login user'}'s non-interactive shell; install Node.js >= ${MIN_NODE_MAJOR} (e.g. the distribution's nodejs package or NodeSource)`);
  if (!SAFE_PATH_RE.test(p.node)) throw notReady(`node is at an unusual path (${JSON.stringify(lastLine(p.node))}); install it under /usr or /usr/local`);
  const major = /^v(\d+)\./.exec(p.nodeVersion ?? '')?.[1];
  if (!major) throw notReady(`${p.node} --version printed ${JSON.stringify(lastLine(p.nodeVersion ?? ''))}, not a Node.js version`);
  if (Number(major) < MIN_NODE_MAJOR) throw notReady(`Node.js ${lastLine(p.nodeVersion ?? '')} at ${p.node} is too old: the agent needs Node.js >= ${MIN_NODE_MAJOR}`);
  if (!p.has.has('tar')) throw notReady('no `tar` on the server');
  if (!p.has.has('mktemp')) throw notReady('no `mktemp` on the server');
  if (!p.has.has('sha256sum') && !p.has.has('shasum') && !p.has.has('openssl')) throw notReady('no sha256sum, shasum or openssl on the server to check the bundle');
  if (c.sudo) {
    if (p.sudo !== 'ok') throw notReady(`\`sudo -n\` does not work for ${c.target.user ?? 'the login user'} (no sudo, it wants a password, or requiretty is set): allow it without a password and a tty for this user, or log in as root`);
  } else if (p.uid !== 0) {
    throw notReady(`${c.target.user ?? 'the login user'} is not root (uid ${p.uid ?? '?'}); installing a service needs root: pass --sudo (passwordless sudo) or log in as root`);
  }
  return { node: p.node, probe: p };
}

/** Copies the bundle (stdin of the remote script), checked against `sha256` there, into PREFIX/DIR. */
export async function upload(c: RemoteCtx, o: { bundle: Readable; prefix: string; dir: string; root: string; sha256: string }): Promise<string> {
  const who = formatTarget(c.target);
  const r = await runSsh(c.target, c.ssh, shScript(UPLOAD, [o.prefix, o.dir, o.root, o.sha256], { sudo: c.sudo }), { input: o.bundle, signal: c.signal });
  if (r.code === 255) throw sshError(c.target, c.ssh, r);
  if (r.code !== 0) throw new TrellisError('TRELLIS_E_SSH', `copying the bundle to ${who} failed (exit ${r.code}): ${lastLine(r.stderr) || 'no message'}`);
  return `${o.prefix}/${o.dir}`;
}

/**
 * A failed remote `trellis` command: its own `trellis: CODE: message` line keeps its code (so
 * `TRELLIS_E_TOKEN_EXPIRED` on a server reads as such here); anything else is TRELLIS_E_SSH.
 */
function remoteTrellisError(what: string, r: { code: number; stdout: string; stderr: string }): TrellisError {
  const last = lastLine(r.stderr) || lastLine(r.stdout);
  // `trellis: CODE: message` (agent install/uninstall) or `trellis: message (CODE)` (the CLI's usual form)
  const a = /^trellis: (TRELLIS_E_[A-Z_]+): (.*)$/.exec(last);
  const b = /^trellis: (.*) \((TRELLIS_E_[A-Z_]+)\)$/.exec(last);
  const [code, msg] = a ? [a[1]!, a[2]!] : b ? [b[2]!, b[1]!] : [];
  if (code && msg && Object.hasOwn(ERROR_CODES, code)) return new TrellisError(code as ErrorCode, `${what}: ${msg}`);
  return new TrellisError('TRELLIS_E_SSH', `${what} failed (exit ${r.code}): ${last || 'no message'}`);
}

/** The JSON line `trellis agent install --json` prints (fields this side needs). */
const InstallJson = z.object({
  service: z.string(),
  unit: z.string().optional(),
  data: z.string(),
  user: z.string().optional(),
  agentId: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/),
  tenant: z.string().optional(),
  changed: z.boolean(),
  started: z.enum(['systemd', 'detached', 'no']),
  systemd: z.boolean().optional(),
});
export type InstallResult = z.output<typeof InstallJson>;

export interface AgentInstallArgs {
  node: string;
  installDir: string;
  hub: string;
  token: string;
  service: string;
  data: string;
  serviceUser?: string;
  detach: boolean;
}

/** The remote command line of `trellis agent install` (the token is not in it: it goes to stdin). */
export function agentInstallCommand(a: Omit<AgentInstallArgs, 'token'>, sudo: boolean): string {
  const argv = [a.node, `${a.installDir}/bin/trellis.js`, 'agent', 'install', '--hub', a.hub, '--token-file', '-', '--json',
    '--service', a.service, '--data', a.data, ...(a.serviceUser ? ['--user', a.serviceUser] : []), ...(a.detach ? ['--detach'] : [])];
  return [...(sudo ? ['sudo', '-n'] : []), ...argv.map(shQuote)].join(' ');
}

/** Runs `trellis agent install` on the server with the join token on its stdin (never in argv). */
export async function agentInstall(c: RemoteCtx, a: AgentInstallArgs): Promise<InstallResult> {
  const who = formatTarget(c.target);
  const r = await runSsh(c.target, c.ssh, agentInstallCommand(a, c.sudo), { input: Buffer.from(a.token + '\n'), signal: c.signal });
  if (r.code === 255) throw sshError(c.target, c.ssh, r);
  if (r.code !== 0) throw remoteTrellisError(`\`trellis agent install\` on ${who}`, r);
  const line = r.stdout.split('\n').map((l) => l.trim()).filter((l) => l.startsWith('{')).pop();
  let parsed: unknown;
  try { parsed = JSON.parse(line ?? ''); } catch { /* reported below */ }
  const res = InstallJson.safeParse(parsed);
  if (!res.success) throw new TrellisError('TRELLIS_E_SSH', `\`trellis agent install\` on ${who} printed no valid JSON result (${lastLine(r.stdout) || 'nothing'})`);
  return res.data;
}

/** `trellis agent uninstall` over SSH (used by tests and benches to clean up). */
export async function agentUninstall(c: RemoteCtx, a: { node: string; installDir: string; service: string; data: string; purge: boolean }): Promise<void> {
  const argv = [a.node, `${a.installDir}/bin/trellis.js`, 'agent', 'uninstall', '--service', a.service, '--data', a.data, ...(a.purge ? ['--purge'] : [])];
  const r = await runSsh(c.target, c.ssh, [...(c.sudo ? ['sudo', '-n'] : []), ...argv.map(shQuote)].join(' '), { signal: c.signal });
  if (r.code === 255) throw sshError(c.target, c.ssh, r);
  if (r.code !== 0) throw remoteTrellisError(`\`trellis agent uninstall\` on ${formatTarget(c.target)}`, r);
}
