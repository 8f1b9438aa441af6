/**
 * The one-liner that installs an agent from the hub's web port (and its cloud-init form), as
 * `trellis tokens create --install-command | --cloud-init` print them.
 *
 * Trust: nothing runs before the hub CA is pinned. The one-liner fetches /agent/ca.pem without
 * trusting it (-k), keeps its first certificate alone (an impostor may append its own CA), compares
 * the SHA-256 of its DER with the fingerprint written into the command (the join token's last field), and only then fetches install.sh with
 * `curl --cacert` and runs it; install.sh checks the same pin against the token again before it
 * downloads the bundle, and checks the bundle's SHA-256. The token travels in an environment
 * variable, never in argv.
 */
import { parseJoinToken } from './jointoken.js';
import { TrellisError } from './errors.js';
import { stringify } from 'yaml';

export interface InstallCommandOptions {
  token: string;
  /** Hub admin address HOST:PORT (enrollment). */
  hub: string;
  /** Hub web address, https://HOST:PORT. */
  web: string;
  /** Arguments for `trellis agent install` (e.g. --label role=web). */
  args?: string[];
}

/** Single-quotes a value for sh. */
export function shQuote(v: string): string {
  return /^[A-Za-z0-9_.:/@=,+-]+$/.test(v) ? v : `'${v.replace(/'/g, `'\\''`)}'`;
}

export function installCommand(o: InstallCommandOptions): string {
  const pin = parseJoinToken(o.token).caFingerprint;
  let web: URL;
  try { web = new URL(o.web); } catch { throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `--web ${o.web.slice(0, 200)} is not a URL (https://HOST:PORT)`); }
  if (web.protocol !== 'https:' || web.pathname !== '/' || web.search || web.username) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `--web must be https://HOST[:PORT] (got ${o.web.slice(0, 200)})`);
  const base = web.origin;
  const script = [
    'set -e',
    'd=$(mktemp -d)',
    'trap "rm -rf $d" EXIT',
    'curl -fsSk --proto =https "$TRELLIS_WEB/agent/ca.pem" -o "$d/served.pem"',
    // Only the first certificate (the pinned one) is kept: curl --cacert trusts all in its file.
    'awk "/-----BEGIN CERTIFICATE-----/{f=1} f{print} /-----END CERTIFICATE-----/{exit}" "$d/served.pem" > "$d/ca.pem"',
    `[ "$(awk "/-----/{next} {print}" "$d/ca.pem" | base64 -d | sha256sum | cut -c1-64)" = ${pin} ] || { echo "trellis: the hub does not present the pinned CA; nothing installed" >&2; exit 1; }`,
    'curl -fsS --proto =https --cacert "$d/ca.pem" "$TRELLIS_WEB/agent/install.sh" -o "$d/install.sh"',
    'TRELLIS_CA_FILE="$d/ca.pem" sh "$d/install.sh" "$@"',
  ].join('; ');
  return [
    `TRELLIS_JOIN_TOKEN=${shQuote(o.token)}`, `TRELLIS_HUB=${shQuote(o.hub)}`, `TRELLIS_WEB=${shQuote(base)}`,
    'sh', '-c', shQuote(script), 'sh', ...(o.args ?? []).map(shQuote),
  ].join(' ');
}

/** cloud-init user-data running the same command once, at first boot (as root). */
export function cloudInit(o: InstallCommandOptions): string {
  return '#cloud-config\n' +
    '# Installs and enrolls a Trellis agent at first boot (needs curl and Node.js >= 20 on the image).\n' +
    '# The join token is in this user-data: give it one use and a TTL that covers the boot (tokens create --ttl).\n' +
    stringify({ runcmd: [installCommand(o)] }, { lineWidth: 0 });
}
