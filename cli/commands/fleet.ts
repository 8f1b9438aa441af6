/** `trellis agents install`: agents on many servers at once, over SSH. */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { InvalidArgumentError, type Command } from 'commander';
import { TrellisError } from '../../common/errors.js';
import { parseDuration } from '../../common/duration.js';
import { formatHostPort, parseHostPort } from '../../common/grpc-options.js';
import { call, withClients, type AdminClients } from '../client.js';
import { readProfile } from '../profile.js';
import { clean, print, printErr } from '../format.js';
import { cachedBundle, openBundle, type Bundle } from '../fleet/bundle.js';
import { checkDuplicates, checkRemotePath, checkService, formatTarget, targetKey, parseHostsFile, parseLabels, parseTarget, type HostEntry } from '../fleet/hosts.js';
import { installFleet, planLine, type FleetHub, type HostReport } from '../fleet/install.js';
import { collect } from './util.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

/** FleetHub over the admin API, with the logged-in profile's credentials and tenant. */
export function adminFleetHub(c: AdminClients): FleetHub {
  return {
    async createToken(o) {
      const r = await call<T.CreateJoinTokenRequest, T.CreateJoinTokenResponse__Output>(c, c.tokens, c.tokens.CreateJoinToken, {
        tenant: '', uses: 1, ttlMs: o.ttlMs, labels: o.labels, description: o.description, private: false, allowLabelKeys: [],
      });
      return { id: r.info!.id, token: r.token };
    },
    async revokeToken(id) { await call(c, c.tokens, c.tokens.RevokeJoinToken, { id }); },
    async activeTokens(ids) {
      const r = await call<T.ListJoinTokensRequest, T.ListJoinTokensResponse__Output>(c, c.tokens, c.tokens.ListJoinTokens, { includeInactive: false });
      const want = new Set(ids);
      const now = Date.now();
      return new Set(r.tokens.filter((t) => want.has(t.id) && !t.revoked && t.used < t.uses && Number(t.expiresAtMs) > now).map((t) => t.id));
    },
    async agentStatus(id) {
      const a = await call<T.GetAgentRequest, T.AgentInfo__Output>(c, c.agents, c.agents.GetAgent, { id }, 10_000);
      return a.status;
    },
  };
}

/** A local file path handed to ssh as an option value: absolute, no whitespace, quotes or `%` (ssh expands %x). */
function sshPath(p: string, what: string): string {
  const abs = resolve(p.startsWith('~/') ? join(homedir(), p.slice(2)) : p);
  if (!/^\/[^\s"'%\\]*$/.test(abs) || /[\x00-\x1f\x7f]/.test(abs)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${what} ${JSON.stringify(p)}: a path without spaces, quotes, "%" or "\\" please`);
  return abs;
}

/** The hub admin address as the servers get it in their command line: HOST:PORT, plain characters. */
function checkHubAddress(raw: string): string {
  let hp: { host: string; port: number };
  try { hp = parseHostPort(raw, 7444); } catch (e) { throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `--hub-address: ${(e as Error).message}`); }
  const a = formatHostPort(hp.host, hp.port);
  if (!/^[A-Za-z0-9.:[\]-]+$/.test(a)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `--hub-address ${JSON.stringify(raw)}: HOST:PORT with a DNS name or an IP address`);
  return a;
}

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 1000) throw new InvalidArgumentError('a whole number from 1 to 1000');
  return n;
}

const HELP = `
Hosts: --ssh [USER@]HOST[:PORT] (repeatable; IPv6 as [ADDR]:PORT) and/or --hosts FILE, one server per line:
  # comment
  root@web1.example.com
  admin@10.0.0.7:2222 --label zone=b
  root@10.0.0.8 --service trellis-a --data /var/lib/trellis-a
  root@10.0.0.8 --service trellis-b --data /var/lib/trellis-b --label slot=b
A line may carry --label k=v (repeatable; wins over the command's --label), --service NAME and --data DIR.
Lines for the same server run one after the other; different servers run --parallel at a time.

Per host: check Node >= 20 on the PATH and root (or passwordless sudo with --sudo); copy the agent bundle
(built from this installation and cached under ~/.cache/trellis/bundles, or --bundle FILE) over SSH unless
that exact bundle is there already, check its SHA-256 there and unpack it to PREFIX/trellis-<version>-<sha>/;
create a fresh one-use join token (labels from --label and the host line, tenant from --tenant); run
\`trellis agent install --hub HUB --token-file -\` there with the token on stdin (never in argv); wait until
the agent is online at the hub. Prints one line per host and "N installed, M unchanged, K failed";
exits 1 if any host failed. Tokens of failed hosts (and unused ones) are revoked.

SSH: the system OpenSSH client in batch mode (keys or ssh-agent only, never a password prompt). Host keys
are checked against --known-hosts (default ~/.ssh/known_hosts): an unknown host fails unless
--accept-new-host-keys (trust on first use, recorded in that file); a changed key always fails.

Examples:
  trellis agents install --ssh root@web1 --ssh root@web2 --label role=web
  trellis agents install --hosts servers.txt --identity ~/.ssh/fleet_ed25519 --sudo --parallel 50
  trellis agents install --hosts servers.txt --dry-run`;

export function addFleetCommands(program: Command): void {
  const agents = program.commands.find((c) => c.name() === 'agents') ?? program.command('agents').description('enrolled agents');
  agents.command('install')
    .description('install agents as services on many servers over SSH: copy the bundle, enroll with a one-use token each, wait until online')
    .option('--ssh <[user@]host[:port]>', 'a server to install on (repeatable)', collect, [])
    .option('--hosts <file>', 'a file of servers, one per line (format below)')
    .option('--identity <key>', 'SSH private key (default: ssh\'s own keys and ssh-agent)')
    .option('--known-hosts <file>', 'known_hosts file host keys are checked against (default ~/.ssh/known_hosts)')
    .option('--accept-new-host-keys', 'trust and record host keys seen for the first time (TOFU); a changed key still fails')
    .option('--parallel <n>', 'servers worked on at once', positiveInt, 20)
    .option('--label <k=v...>', 'labels for every agent, set in its join token (repeatable)', collect, [])
    .option('--sudo', 'log in as a normal user and run the install with `sudo -n` (passwordless sudo)')
    .option('--dry-run', 'print what would be done per host: no token, no copy, no change, no connection')
    .option('--bundle <file>', 'the agent bundle to copy (`trellis agent bundle --out FILE`; checked against FILE.sha256 if present); default: built from this installation and cached')
    .option('--hub-address <host:port>', 'the hub admin address the servers enroll against, as they reach it (default: the profile\'s hub)')
    .option('--service <name>', 'systemd unit name for every agent (a host line\'s --service wins)', 'trellis-agent')
    .option('--data <dir>', 'agent data directory (default /var/lib/SERVICE; a host line\'s --data wins)')
    .option('--service-user <name>', 'the user the agent runs as (agent install --user; default trellis-agent, `root` for run_as)')
    .option('--prefix <dir>', 'where the bundle is unpacked on the servers', '/opt/trellis')
    .option('--detach', 'where systemd is not running (containers, CI): start the agent in the background (agent install --detach)')
    .option('--timeout <duration>', 'per host, from connecting to the agent online', '120s')
    .option('--json', 'print one JSON document at the end instead of lines')
    .addHelpText('after', HELP)
    .action(async (o) => {
      // --ssh is a target only (per-host options go in a --hosts file).
      const entries: HostEntry[] = (o.ssh as string[]).map((s) => ({ target: parseTarget(s, '--ssh'), source: '--ssh', labels: {} }));
      if (o.hosts) {
        let text: string;
        try { text = readFileSync(o.hosts, 'utf8'); } catch (e) { throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `cannot read --hosts ${o.hosts}: ${(e as Error).message}`); }
        entries.push(...parseHostsFile(text, o.hosts));
      }
      if (entries.length === 0) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'name the servers: --ssh [USER@]HOST[:PORT] (repeatable) or --hosts FILE');
      const defaultService = checkService(o.service, '--service');
      const defaultData = o.data ? checkRemotePath(o.data, '--data', '--data') : undefined;
      if (o.serviceUser && !/^[a-z_][a-z0-9_-]{0,31}$/.test(o.serviceUser)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `bad --service-user ${JSON.stringify(o.serviceUser)}`);
      checkDuplicates(entries, defaultService, defaultData);
      const prefix = checkRemotePath(o.prefix, '--prefix', '--prefix');
      const timeoutMs = parseDuration(o.timeout, '--timeout');
      const labels: Record<string, string> = {};
      for (const l of o.label as string[]) parseLabels(l, '--label', labels);
      const knownHosts = sshPath(o.knownHosts ?? join(homedir(), '.ssh', 'known_hosts'), '--known-hosts');
      const identity = o.identity ? sshPath(o.identity, '--identity') : undefined;
      if (identity && !existsSync(identity)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `--identity ${identity}: no such file`);

      const hubAddress = checkHubAddress(o.hubAddress ?? readProfile().hub);
      let bundle: Bundle | undefined;
      if (o.bundle) bundle = await openBundle(o.bundle);

      const shown = (host: string, service: string) => `${host}${service !== 'trellis-agent' ? ` [${service}]` : ''}`;
      const base = {
        entries, hubAddress, bundle, labels, prefix, defaultService, sudo: !!o.sudo, detach: !!o.detach,
        defaultData: defaultData ? () => defaultData : undefined, serviceUser: o.serviceUser,
        ssh: { identity, knownHosts, acceptNewHostKeys: !!o.acceptNewHostKeys }, parallel: o.parallel as number, timeoutMs,
      };
      if (o.dryRun) { // no hub, no SSH, no file touched
        if (o.json) { print(JSON.stringify({ dryRun: true, hosts: entries.map((e) => ({ host: formatTarget(e.target), service: e.service ?? defaultService, plan: planLine(base, e) })) }, null, 2)); return; }
        for (const e of entries) print(`${shown(formatTarget(e.target), e.service ?? defaultService)}: ${planLine(base, e)}`);
        print(`dry run: ${entries.length} agent(s) on ${new Set(entries.map((e) => targetKey(e.target))).size} server(s); nothing was done`);
        return;
      }
      bundle ??= await cachedBundle({ note: (s) => printErr(s) });
      if (o.acceptNewHostKeys) mkdirSync(dirname(knownHosts), { recursive: true, mode: 0o700 });

      await withClients(async (c) => {
        const hostWidth = Math.max(...entries.map((e) => shown(formatTarget(e.target), e.service ?? defaultService).length));
        const line = (r: HostReport) => [
          shown(r.host, r.service).padEnd(hostWidth),
          (r.agentId || '-').padEnd(26), r.result.padEnd(9), r.error ? `${r.code}: ${r.error}` : '',
        ].join('  ').trimEnd();
        const controller = new AbortController();
        const onSig = () => { printErr('interrupted: stopping, revoking the join tokens of unfinished hosts (Ctrl-C again to quit now)'); controller.abort(); };
        process.once('SIGINT', onSig);
        try {
          if (!o.json) printErr(`installing ${entries.length} agent(s) on ${new Set(entries.map((e) => targetKey(e.target))).size} server(s), up to ${o.parallel} at a time; bundle ${bundle!.root} (${(bundle!.bytes / 1048576).toFixed(1)} MiB, sha256 ${bundle!.sha256.slice(0, 16)}…), hub ${hubAddress}`);
          const s = await installFleet({
            ...base, bundle, hub: adminFleetHub(c), dryRun: false, signal: controller.signal,
            note: (m: string) => printErr(m),
            onResult: o.json ? undefined : (r: HostReport) => print(line(r)),
          });
          if (o.json) print(JSON.stringify({ hosts: s.hosts.map(({ copied: _c, ...h }) => ({ ...h, host: clean(h.host), seconds: Math.round(h.seconds * 10) / 10 })), installed: s.installed, unchanged: s.unchanged, failed: s.failed }, null, 2));
          else print(`${s.installed} installed, ${s.unchanged} unchanged, ${s.failed} failed`);
          if (s.failed > 0) process.exitCode = 1;
        } finally {
          process.off('SIGINT', onSig);
        }
      });
    });
}

