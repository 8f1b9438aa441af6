/**
 * A throwaway OpenSSH server for tests (and the bench): Debian's sshd on 127.0.0.1 and a free
 * port, with its own sshd_config, a fresh ed25519 host key, an authorized_keys file and a pid
 * file in a temp dir; root may log in with a key only (PermitRootLogin prohibit-password), no
 * passwords, no PAM; run in the foreground (`-D -e`) and stopped by `stop()`. A throwaway client
 * key and a known_hosts line for the server come with it. `.ci/run` installs openssh-server;
 * `sshdMissing()` says why a test is skipped where it cannot run.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort } from './net.js';

const run = promisify(execFile);

export const SSHD = '/usr/sbin/sshd';
const KEYGEN = '/usr/bin/ssh-keygen';

export interface Sshd extends AsyncDisposable {
  port: number;
  dir: string;
  /** Client private key authorized for root (unless started with `authorize: false`). */
  clientKey: string;
  /** The server's host public key line (`ssh-ed25519 AAAA…`). */
  hostKey: string;
  /** A known_hosts line for this server (`[127.0.0.1]:PORT ssh-ed25519 AAAA…`). */
  knownHostsLine: string;
  /** sshd's stderr so far (its log, `-e`). */
  log(): string;
  stop(): Promise<void>;
}

/** Why sshd cannot run here, or undefined when it can. */
export function sshdMissing(): string | undefined {
  if (process.getuid?.() !== 0) return 'not root: sshd needs root to switch users';
  for (const bin of [SSHD, KEYGEN, '/usr/bin/ssh']) {
    if (!existsSync(bin)) return `${bin} is not installed (apt-get install openssh-server openssh-client; .ci/run does it)`;
  }
  return undefined;
}

/** Makes an ed25519 key pair at `file` (and file.pub); returns the public key line. */
export async function makeKey(file: string, comment = 'trellis-test'): Promise<string> {
  await run(KEYGEN, ['-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', file]);
  return (await readFile(`${file}.pub`, 'utf8')).trim();
}

function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection({ host: '127.0.0.1', port }, () => { s.destroy(); resolve(true); });
    s.on('error', () => resolve(false));
  });
}

/**
 * Starts sshd. `authorize: false` leaves authorized_keys empty (a server that refuses the key);
 * `clientKey` authorizes an existing key instead of making one; `allowUsers` lets users other
 * than root log in (with the same key); `extraConfig` adds sshd_config lines.
 */
export async function startSshd(o: { authorize?: boolean; clientKey?: string; allowUsers?: string[]; extraConfig?: string[] } = {}): Promise<Sshd> {
  const missing = sshdMissing();
  if (missing) throw new Error(missing);
  // The privilege-separation directory sshd insists on.
  mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
  const dir = await mkdtemp(join(tmpdir(), 'trellis-sshd-'));
  let child: ChildProcess | undefined;
  let log = '';
  const stop = async () => {
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child!.once('exit', r));
      child.kill('SIGTERM');
      const t = setTimeout(() => child!.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(t);
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const hostKeyFile = join(dir, 'host_ed25519');
    const hostKey = (await makeKey(hostKeyFile, 'trellis-test-host')).split(' ').slice(0, 2).join(' ');
    let clientKey = o.clientKey;
    let pub = '';
    if (!clientKey) {
      clientKey = join(dir, 'client_ed25519');
      pub = await makeKey(clientKey);
    } else pub = (await readFile(`${clientKey}.pub`, 'utf8')).trim();
    // sshd reads authorized_keys as the user logging in: world-readable, in a traversable dir (public keys only).
    await writeFile(join(dir, 'authorized_keys'), o.authorize === false ? '' : pub + '\n', { mode: 0o644 });
    const port = await freePort();
    const conf = [
      `Port ${port}`,
      'ListenAddress 127.0.0.1',
      `HostKey ${hostKeyFile}`,
      `PidFile ${join(dir, 'sshd.pid')}`,
      `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
      'PermitRootLogin prohibit-password',
      'PubkeyAuthentication yes',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'UsePAM no',
      'StrictModes no',
      `AllowUsers ${['root', ...(o.allowUsers ?? [])].join(' ')}`,
      'X11Forwarding no',
      'AllowTcpForwarding no',
      'PrintMotd no',
      'LogLevel VERBOSE',
      ...(o.extraConfig ?? []),
      '',
    ].join('\n');
    await writeFile(join(dir, 'sshd_config'), conf);
    await chmod(dir, 0o755); // the private keys in it are 0600
    // Check the config first: a clear error instead of a server that never listens.
    await run(SSHD, ['-t', '-f', join(dir, 'sshd_config')]).catch((e: { stderr?: string }) => { throw new Error(`sshd -t: ${e.stderr ?? e}`); });
    child = spawn(SSHD, ['-D', '-e', '-f', join(dir, 'sshd_config')], { stdio: ['ignore', 'ignore', 'pipe'] });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => { if (log.length < 1 << 20) log += d; });
    const end = Date.now() + 15_000;
    while (!(await listening(port))) {
      if (child.exitCode !== null) throw new Error(`sshd exited (${child.exitCode}): ${log.slice(-500)}`);
      if (Date.now() > end) throw new Error(`sshd did not listen on ${port} within 15 s: ${log.slice(-500)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    return {
      port, dir, clientKey, hostKey, knownHostsLine: `[127.0.0.1]:${port} ${hostKey}`,
      log: () => log, stop, [Symbol.asyncDispose]: stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}
