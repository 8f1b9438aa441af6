/**
 * Managed servers for `trellis agents install`: `[USER@]HOST[:PORT]` targets and the hosts file.
 *
 * Everything here is validated strictly because it ends up in an `ssh` argv and in remote
 * command lines: a user, host or port that could be read as an option (`-oProxyCommand=…`) or
 * that holds a shell metacharacter is refused with the line it came from. Values that go into a
 * remote command (service name, data directory) get the same treatment; labels never reach the
 * host (they go into the join token).
 *
 * Hosts file format, one server per line:
 *
 *   # comment (also after a value: `web1 # the old one`)
 *   root@web1.example.com
 *   admin@10.0.0.7:2222 --label zone=b --label role=db
 *   root@10.0.0.8 --service trellis-a --data /var/lib/trellis-a
 *   root@10.0.0.8 --service trellis-b --data /var/lib/trellis-b --label slot=b
 */
import { isIPv6 } from 'node:net';
import { TrellisError } from '../../common/errors.js';

/** One SSH destination. */
export interface SshTarget {
  /** Login user; undefined leaves it to ssh (the local user, or ~/.ssh/config). */
  user?: string;
  /** Host name, IPv4 address, or IPv6 address without brackets. */
  host: string;
  /** Undefined leaves it to ssh (22, or ~/.ssh/config). */
  port?: number;
}

/** One agent to install: where, and the per-line overrides. */
export interface HostEntry {
  target: SshTarget;
  /** Where the entry came from (`--ssh`, or FILE:LINE), for error messages. */
  source: string;
  labels: Record<string, string>;
  service?: string;
  data?: string;
}

const USER_RE = /^[A-Za-z_][A-Za-z0-9_.-]{0,31}$/;
const LABEL_RE = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;
/** systemd unit name stem: letters, digits and `_.@-`, not starting with `-` or `.`. */
export const SERVICE_RE = /^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$/;
/** An absolute path made only of characters no shell or ssh treats specially. */
export const SAFE_PATH_RE = /^\/[A-Za-z0-9._/+@-]{0,255}$/;

function bad(source: string, msg: string): TrellisError {
  return new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${source}: ${msg}`);
}

function validHostName(h: string): boolean {
  if (h.length === 0 || h.length > 253) return false;
  const labels = (h.endsWith('.') ? h.slice(0, -1) : h).split('.');
  return labels.every((l) => LABEL_RE.test(l));
}

/** Parses `[USER@]HOST[:PORT]` (IPv6 as `[ADDR]` or `[ADDR]:PORT`); refuses anything else. */
export function parseTarget(text: string, source = '--ssh'): SshTarget {
  const shown = JSON.stringify(text.length > 80 ? text.slice(0, 80) + '…' : text);
  const fail = (why: string) => bad(source, `bad host ${shown}: ${why}; use [USER@]HOST[:PORT]`);
  if (text.startsWith('-')) throw fail('it starts with "-" (it would be read as an ssh option)');
  let rest = text;
  let user: string | undefined;
  const at = rest.lastIndexOf('@');
  if (at >= 0) {
    user = rest.slice(0, at);
    rest = rest.slice(at + 1);
    if (!USER_RE.test(user)) throw fail('the user may hold only letters, digits and "_.-", and start with a letter or "_"');
  }
  let host: string;
  let portText: string | undefined;
  if (rest.startsWith('[')) {
    const end = rest.indexOf(']');
    if (end < 0) throw fail('unclosed "["');
    host = rest.slice(1, end);
    const after = rest.slice(end + 1);
    if (after) {
      if (!after.startsWith(':')) throw fail('expected ":PORT" after "]"');
      portText = after.slice(1);
    }
    if (!isIPv6(host)) throw fail('only an IPv6 address goes in brackets');
  } else {
    const colon = rest.indexOf(':');
    if (colon >= 0) {
      if (rest.indexOf(':', colon + 1) >= 0) throw fail('an IPv6 address goes in brackets: [ADDR]:PORT');
      host = rest.slice(0, colon);
      portText = rest.slice(colon + 1);
    } else host = rest;
    if (!validHostName(host)) throw fail('the host must be a DNS name or an IP address (letters, digits, "-" and "." only)');
  }
  let port: number | undefined;
  if (portText !== undefined) {
    if (!/^[0-9]{1,5}$/.test(portText) || Number(portText) < 1 || Number(portText) > 65535) throw fail('the port must be a number from 1 to 65535');
    port = Number(portText);
  }
  return { user, host, port };
}

/** `user@host:port` as given (IPv6 in brackets). */
export function formatTarget(t: SshTarget): string {
  const h = isIPv6(t.host) ? `[${t.host}]` : t.host;
  return `${t.user ? `${t.user}@` : ''}${h}${t.port ? `:${t.port}` : ''}`;
}

/** One key per SSH server and login (entries with the same key run one after the other). */
export function targetKey(t: SshTarget): string {
  return `${t.user ?? ''}@${t.host.toLowerCase()}:${t.port ?? 22}`;
}

export function checkService(name: string, source: string): string {
  if (!SERVICE_RE.test(name)) throw bad(source, `bad --service ${JSON.stringify(name)}: letters, digits and "_.@-" only (at most 64), not starting with "-" or "."`);
  return name;
}

export function checkRemotePath(p: string, what: string, source: string): string {
  if (!SAFE_PATH_RE.test(p) || p.split('/').some((s) => s === '..' || s === '.')) {
    throw bad(source, `bad ${what} ${JSON.stringify(p)}: an absolute path of letters, digits and "._/+@-" only, without "." or ".." parts`);
  }
  return p.length > 1 && p.endsWith('/') ? p.slice(0, -1) : p;
}

/** Adds `k=v[,k=v…]` to `into`. */
export function parseLabels(kv: string, source: string, into: Record<string, string>): void {
  for (const part of kv.split(',')) {
    if (!part) continue;
    const i = part.indexOf('=');
    if (i <= 0) throw bad(source, `bad --label ${JSON.stringify(part)}: use key=value`);
    into[part.slice(0, i)] = part.slice(i + 1);
  }
}

/** Parses one hosts-file line (comments already removed, not empty). */
export function parseHostLine(line: string, source: string): HostEntry {
  const words = line.trim().split(/\s+/);
  const entry: HostEntry = { target: parseTarget(words[0]!, source), source, labels: {} };
  for (let i = 1; i < words.length; i++) {
    const w = words[i]!;
    const eq = w.startsWith('--') ? w.indexOf('=') : -1;
    const name = eq > 0 ? w.slice(0, eq) : w;
    const value = eq > 0 ? w.slice(eq + 1) : words[++i];
    if (!['--label', '--service', '--data'].includes(name)) throw bad(source, `unknown option ${JSON.stringify(name)} (a host line may carry --label k=v, --service NAME, --data DIR)`);
    if (value === undefined || value === '') throw bad(source, `${name} needs a value`);
    if (name === '--label') parseLabels(value, source, entry.labels);
    else if (name === '--service') entry.service = checkService(value, source);
    else entry.data = checkRemotePath(value, '--data', source);
  }
  return entry;
}

/** Parses a hosts file's text; `name` is used in error messages (FILE:LINE). */
export function parseHostsFile(text: string, name: string): HostEntry[] {
  const out: HostEntry[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const hash = raw.indexOf('#');
    const line = (hash >= 0 ? raw.slice(0, hash) : raw).trim();
    if (line) out.push(parseHostLine(line, `${name}:${i + 1}`));
  });
  return out;
}

/**
 * Refuses two entries that would install the same service, or two services on the same data
 * directory (one identity run twice), on the same server.
 */
export function checkDuplicates(entries: HostEntry[], defaultService: string, defaultData?: string): void {
  const seen = new Map<string, string>();
  for (const e of entries) {
    const server = `${e.target.host.toLowerCase()}:${e.target.port ?? 22}`;
    const service = e.service ?? defaultService;
    const data = e.data ?? defaultData ?? `/var/lib/${service}`;
    for (const [k, what] of [[`${server} service ${service}`, `with service ${service}`], [`${server} data ${data}`, `with data directory ${data}`]] as const) {
      const prev = seen.get(k);
      if (prev) throw bad(e.source, `${formatTarget(e.target)} ${what} is already listed (${prev}); give each agent on one server its own --service and --data`);
      seen.set(k, e.source);
    }
  }
}
