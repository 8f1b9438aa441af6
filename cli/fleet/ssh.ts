/**
 * The system OpenSSH client, run with argv arrays (never through a local shell), in batch mode:
 * keys or ssh-agent only, no prompt, host keys checked against a known_hosts file
 * (`StrictHostKeyChecking=yes`, or `accept-new` for trust on first use — a *changed* key is
 * refused either way). Remote commands are fixed scripts; every value is shell-quoted.
 */
import { spawn } from 'node:child_process';
import type { Readable } from 'node:stream';
import { isIPv6 } from 'node:net';
import { TrellisError, type ErrorCode } from '../../common/errors.js';
import { cleanText } from '../../common/text.js';
import { formatTarget, type SshTarget } from './hosts.js';

export interface SshOptions {
  /** Private key file (`ssh -i`, with IdentitiesOnly); default: ssh's own keys and ssh-agent. */
  identity?: string;
  /** known_hosts file checked (and, with acceptNewHostKeys, appended to). */
  knownHosts: string;
  /** Trust on first use: add unknown host keys; a changed key still fails. */
  acceptNewHostKeys: boolean;
  /** TCP connect timeout, seconds. @default 10 */
  connectTimeoutS?: number;
  /** The ssh binary. @default 'ssh' */
  sshBin?: string;
}

/** Quotes one value for a POSIX shell: '…' with each ' written as '"'"'. */
export function shQuote(s: string): string {
  if (/^[A-Za-z0-9_./:=@+-]+$/.test(s)) return s;
  return `'${s.replace(/'/g, `'"'"'`)}'`;
}

/** `sh -c SCRIPT sh ARG…` as one remote command line: the script is fixed, the values are arguments. */
export function shScript(script: string, args: string[], o: { sudo?: boolean } = {}): string {
  return [...(o.sudo ? ['sudo', '-n'] : []), 'sh', '-c', shQuote(script), 'sh', ...args.map(shQuote)].join(' ');
}

/** The ssh argv for running `remoteCommand` on `t`. */
export function sshArgv(t: SshTarget, o: SshOptions, remoteCommand: string): string[] {
  const opt = (kv: string) => ['-o', kv];
  return [
    '-T', '-x', '-a',
    ...opt('BatchMode=yes'),
    ...opt('PasswordAuthentication=no'),
    ...opt('KbdInteractiveAuthentication=no'),
    ...opt(`StrictHostKeyChecking=${o.acceptNewHostKeys ? 'accept-new' : 'yes'}`),
    ...opt(`UserKnownHostsFile=${o.knownHosts}`),
    ...opt('UpdateHostKeys=no'),
    ...opt(`ConnectTimeout=${o.connectTimeoutS ?? 10}`),
    ...opt('ServerAliveInterval=10'),
    ...opt('ServerAliveCountMax=3'),
    ...opt('ClearAllForwardings=yes'),
    ...opt('ForwardAgent=no'),
    ...opt('PermitLocalCommand=no'),
    ...opt('ControlMaster=no'),
    ...opt('ControlPath=none'),
    ...opt('LogLevel=ERROR'),
    ...(o.identity ? ['-i', o.identity, ...opt('IdentitiesOnly=yes')] : []),
    ...(t.port ? ['-p', String(t.port)] : []),
    ...(t.user ? ['-l', t.user] : []),
    '--', t.host,
    remoteCommand,
  ];
}

export interface SshResult { code: number; stdout: string; stderr: string }

const MAX_STDOUT = 1 << 20;
const MAX_STDERR = 64 << 10;

/**
 * Runs a remote command; `input` goes to its stdin (a Buffer, or a stream such as the bundle
 * file). Resolves with the exit status (255: ssh itself failed) and the captured output; kills
 * ssh when `signal` aborts.
 */
export function runSsh(t: SshTarget, o: SshOptions, remoteCommand: string, x: { input?: Buffer | Readable; signal?: AbortSignal } = {}): Promise<SshResult> {
  return new Promise((resolve, reject) => {
    if (x.signal?.aborted) { reject(abortError(x.signal)); return; }
    const child = spawn(o.sshBin ?? 'ssh', sshArgv(t, o, remoteCommand), { stdio: ['pipe', 'pipe', 'pipe'], env: sshEnv() });
    let stdout = '', stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { if (stdout.length < MAX_STDOUT) stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { if (stderr.length < MAX_STDERR) stderr += d; });
    child.stdin.on('error', () => undefined); // ssh exited before reading all of stdin: its status says why
    if (x.input === undefined) child.stdin.end();
    else if (Buffer.isBuffer(x.input)) child.stdin.end(x.input);
    else { x.input.on('error', (e) => { child.kill('SIGTERM'); reject(e); }); x.input.pipe(child.stdin); }
    let killTimer: NodeJS.Timeout | undefined;
    const onAbort = () => {
      child.kill('SIGTERM');
      killTimer = setTimeout(() => child.kill('SIGKILL'), 2000);
      killTimer.unref();
    };
    x.signal?.addEventListener('abort', onAbort, { once: true });
    child.on('error', (e) => {
      x.signal?.removeEventListener('abort', onAbort);
      reject((e as NodeJS.ErrnoException).code === 'ENOENT'
        ? new TrellisError('TRELLIS_E_SSH', `${o.sshBin ?? 'ssh'} is not installed here: install the OpenSSH client (apt-get install openssh-client)`)
        : e);
    });
    child.on('close', (code) => {
      x.signal?.removeEventListener('abort', onAbort);
      if (killTimer) clearTimeout(killTimer);
      if (x.input && !Buffer.isBuffer(x.input)) x.input.unpipe(child.stdin);
      if (x.signal?.aborted) { reject(abortError(x.signal)); return; }
      resolve({ code: code ?? 255, stdout, stderr });
    });
  });
}

/** The environment ssh runs with: ours, minus variables that could make it prompt. */
function sshEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.SSH_ASKPASS;
  delete env.SSH_ASKPASS_REQUIRE;
  delete env.DISPLAY;
  return env;
}

function abortError(signal: AbortSignal): Error {
  const r: unknown = signal.reason;
  return r instanceof Error ? r : new TrellisError('TRELLIS_E_TIMEOUT', 'interrupted');
}

/** The last meaningful line of remote or ssh stderr, cleaned (one line, no control characters, bounded). */
export function lastLine(text: string): string {
  // Not commander's trailing "(run with --help for usage)": the line before it says what was wrong.
  const lines = text.split(/\r?\n/).map((l) => cleanText(l).trim()).filter((l) => l && !/^\(run with --help/.test(l));
  const l = lines[lines.length - 1] ?? '';
  return l.length > 300 ? l.slice(0, 300) + '…' : l;
}

/**
 * Turns a failed ssh run (exit 255: ssh's own failure) into a clear error; other statuses are the
 * remote command's and are reported by the caller.
 */
export function sshError(t: SshTarget, o: SshOptions, r: SshResult): TrellisError {
  const who = formatTarget(t);
  const err = r.stderr;
  const keyscan = `ssh-keyscan ${t.port ? `-p ${t.port} ` : ''}${t.host}`;
  let code: ErrorCode = 'TRELLIS_E_SSH';
  let msg: string;
  if (/REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for .* has changed/i.test(err)) {
    code = 'TRELLIS_E_SSH_HOST_KEY';
    msg = `the SSH host key of ${who} CHANGED since it was recorded in ${o.knownHosts} (a reinstalled server, or someone in the middle); nothing was sent. ` +
      `If the change is expected, check the new key's fingerprint and remove the old one: ssh-keygen -f ${o.knownHosts} -R '${t.port ? `[${t.host}]:${t.port}` : t.host}'`;
  } else if (/Host key verification failed|No \S+ host key is known/i.test(err)) {
    code = 'TRELLIS_E_SSH_HOST_KEY';
    msg = `the SSH host key of ${who} is not in ${o.knownHosts}; nothing was sent. Add it after checking its fingerprint (${keyscan} >> ${o.knownHosts}) ` +
      'or pass --accept-new-host-keys to trust keys seen for the first time';
  } else if (/Permission denied|Too many authentication failures/i.test(err)) {
    msg = `SSH authentication to ${who} failed (keys and ssh-agent only, no passwords): ${lastLine(err)}; check --identity and the server's authorized_keys`;
  } else if (/Connection refused|Connection timed out|timed out|No route to host|Could not resolve|Name or service not known|Network is unreachable|Connection closed|Connection reset/i.test(err)) {
    msg = `cannot connect to ${who}: ${lastLine(err)}`;
  } else {
    msg = `ssh to ${who} failed: ${lastLine(err) || `exit status ${r.code}`}`;
  }
  return new TrellisError(code, msg);
}
