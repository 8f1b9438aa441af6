/** `trellis hub …` and `trellis agent …`: set up and run the daemons. */
import { readFileSync } from 'node:fs';
import { Option, type Command } from 'commander';
// The daemons are imported when their command runs: every other `trellis` command starts
// without loading the whole hub and agent (about a second of start-up on a busy host).
import { KEY_TYPES, type KeyType } from '../../certs/index.js';
import { TrellisError, errorMessage, isTrellisError } from '../../common/errors.js';
import { createLogger, LOG_FORMATS, LOG_TIMES } from '../../common/log.js';
import { clean, parseKeyValues } from '../format.js';
import { askHidden, isInteractive } from '../prompt.js';
import { runUntilSignal, intOption, collect } from './util.js';

/**
 * `agent install|uninstall|status` are called by scripts and over SSH (`agents install --ssh`):
 * their failures are one line, `trellis: CODE: message`, exit 1.
 */
function contractErrors<A extends unknown[]>(fn: (...a: A) => Promise<void>): (...a: A) => Promise<void> {
  return async (...a: A) => {
    try {
      await fn(...a);
    } catch (e) {
      const code = (isTrellisError(e) && (e as TrellisError).code) || 'TRELLIS_E_INTERNAL';
      process.stderr.write(`trellis: ${code}: ${clean(errorMessage(e).replace(/\s*\n\s*/g, ' '))}\n`);
      process.exitCode = 1;
    }
  };
}

/** The join token of `agent install`: --token, --token-file FILE|- (stdin), or TRELLIS_JOIN_TOKEN. */
async function readJoinToken(o: { token?: string; tokenFile?: string }): Promise<string> {
  if (o.token) return o.token.trim();
  if (o.tokenFile === '-') {
    const chunks: Buffer[] = [];
    for await (const c of process.stdin) chunks.push(c as Buffer);
    return Buffer.concat(chunks).toString('utf8').trim();
  }
  if (o.tokenFile) {
    try { return readFileSync(o.tokenFile, 'utf8').trim(); } catch (e) {
      throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `cannot read --token-file ${o.tokenFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  }
  return (process.env.TRELLIS_JOIN_TOKEN ?? '').trim();
}

export function addDaemonCommands(program: Command): void {
  const hub = program.command('hub').description('set up and run the hub');

  hub.command('init')
    .description('create a hub data directory: CA (generated or supplied), hub certificate, first admin')
    .requiredOption('--data <dir>', 'hub data directory (created 0700)')
    .requiredOption('--name <names...>', 'every host name and IP agents use to reach the hub (comma-separated or repeated)')
    .option('--trust-domain <domain>', 'SPIFFE trust domain for agent identities', 'trellis.local')
    .option('--ca-key-type <type>', `key type of a generated CA: ${KEY_TYPES.filter((k) => k !== 'rsa-2048').join('|')}`, 'ec-p256')
    .option('--ca-cert <file>', 'use this CA (PEM; issuing CA first, then its parents)')
    .option('--ca-key <file>', 'key of --ca-cert; without it, --hub-cert and --hub-key are required and the hub cannot issue')
    .option('--hub-cert <file>', 'hub serving certificate (PEM chain) signed by --ca-cert')
    .option('--hub-key <file>', 'key of --hub-cert')
    .option('--master-key <file>', 'hub master key for secrets (32 bytes raw, or 64 hex / 44 base64 characters); default: a random one')
    .option('--admin <name>', 'name of the first admin user', 'admin')
    .option('--bind <addr>', 'address every listener binds to')
    .option('--agent-port <port>', 'agent port (mTLS)', intOption)
    .option('--admin-port <port>', 'admin port (TLS)', intOption)
    .option('--web-port <port>', 'web port (HTTPS)', intOption)
    .option('--store <url>', 'keep the state in this empty PostgreSQL database (postgres://USER@HOST[:PORT]/DATABASE; password from TRELLIS_STORE_PASSWORD) instead of DATA/state.json')
    .option('--force', 'replace an existing hub in the data directory (a --store database must still be empty)')
    .option('--join <url>', 'make another hub of the cluster on this PostgreSQL database (postgres://USER@HOST[:PORT]/DATABASE; password from TRELLIS_STORE_PASSWORD) with the keys of --from')
    .option('--from <dir-or-snapshot>', 'with --join: a data directory of a hub of the cluster, or a snapshot file of one (`trellis snapshots download`)')
    .option('--passphrase-file <file>', 'with --join --from SNAPSHOT: the snapshot\'s passphrase (mode 0600; - for standard input); else asked in a terminal')
    .addHelpText('after', '\nThe admin password comes from TRELLIS_ADMIN_PASSWORD, a prompt on a terminal, or is generated and printed once.\nWith --store the database is migrated first; its password (TRELLIS_STORE_PASSWORD, or in the URL) is written to DATA/store-password (0600), never to hub.json.\n' +
      '\nAnother hub of a cluster (several hubs on one PostgreSQL database):\n' +
      '  trellis hub init --data DATA --name hub-b.example.com --join postgres://trellis@db.example/trellis --from /path/to/hub-a-data\n' +
      '  trellis hub init --data DATA --name hub-b.example.com --join postgres://trellis@db.example/trellis --from hub-a.tsnap --passphrase-file snap.pass\n' +
      'The CA (and its key when the hubs issue) and the master key come from --from (copied over a channel you trust, e.g. scp of the\n' +
      'directory or a snapshot); none of it goes through the database. The new hub gets its own certificate for --name from that CA\n' +
      '(or --hub-cert/--hub-key when the CA key is kept offline), the source\'s hub.json settings except names and store, and the\n' +
      'database password in DATA/store-password. Checked first: the database is migrated (`trellis hub migrate`) and its cluster\n' +
      'has this CA and master key; DATA must be new or empty. Users, agents and everything else come from the database.')
    .action(async (o, cmd: Command) => {
      if (o.join !== undefined || o.from !== undefined || o.passphraseFile !== undefined) {
        if (!o.join || !o.from) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', '--join URL and --from HUB-DATA-DIR-OR-SNAPSHOT go together');
        const notWith = ['caCert', 'caKey', 'caKeyType', 'masterKey', 'store', 'force', 'admin', 'trustDomain'].filter((k) => cmd.getOptionValueSource(k) === 'cli');
        if (notWith.length) {
          const flag = (k: string) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
          throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${notWith.map(flag).join(', ')}: not with --join (the CA, master key, trust domain and users are the cluster's)`);
        }
        const { statSync } = await import('node:fs');
        let passphrase: string | undefined;
        if (o.passphraseFile !== undefined || (statSync(o.from, { throwIfNoEntry: false })?.isFile() ?? false)) {
          const { readPassphrase } = await import('./snapshots.js');
          passphrase = await readPassphrase(o.passphraseFile, { confirm: false });
        }
        const config: Record<string, unknown> = {};
        if (o.bind) config.bind = o.bind;
        if (o.agentPort !== undefined) config.agentPort = o.agentPort;
        if (o.adminPort !== undefined) config.adminPort = o.adminPort;
        if (o.webPort !== undefined) config.webPort = o.webPort;
        const { joinHub } = await import('../../hub/join.js');
        const r = await joinHub({
          dataDir: o.data, names: o.name, storeUrl: o.join, storePassword: process.env.TRELLIS_STORE_PASSWORD || undefined, from: o.from, passphrase,
          hubCertFile: o.hubCert, hubKeyFile: o.hubKey, config,
        });
        process.stdout.write([
          `hub initialised in ${o.data}: joins the cluster on ${r.where}`,
          `CA fingerprint: sha256:${r.caFingerprint} (from the ${r.source} ${o.from}${r.canIssue ? ', with its key' : ', without its key: this hub does not issue'})`,
          `master key versions: ${r.masterKeyVersions.join(', ')}`,
          '',
          'next:',
          `  trellis hub run --data ${o.data}`,
          '',
        ].join('\n'));
        return;
      }
      if (o.caKeyType && !KEY_TYPES.includes(o.caKeyType) || o.caKeyType === 'rsa-2048') {
        throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `--ca-key-type must be one of ec-p256, ec-p384, rsa-3072, rsa-4096`);
      }
      let password = process.env.TRELLIS_ADMIN_PASSWORD || undefined;
      if (!password && isInteractive()) {
        password = await askHidden(`Password for ${o.admin} (empty to generate one): `) || undefined;
        if (password && password !== await askHidden('Again: ')) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'the passwords differ');
      }
      const config: Record<string, unknown> = {};
      if (o.bind) config.bind = o.bind;
      if (o.agentPort !== undefined) config.agentPort = o.agentPort;
      if (o.adminPort !== undefined) config.adminPort = o.adminPort;
      if (o.webPort !== undefined) config.webPort = o.webPort;
      const { initHub } = await import('../../hub/init.js');
      const r = await initHub({
        dataDir: o.data, names: o.name, trustDomain: o.trustDomain, caKeyType: o.caKeyType as KeyType, caCertFile: o.caCert, caKeyFile: o.caKey, masterKeyFile: o.masterKey,
        hubCertFile: o.hubCert, hubKeyFile: o.hubKey, admin: o.admin, adminPassword: password, force: o.force, config,
        storeUrl: o.store, storePassword: process.env.TRELLIS_STORE_PASSWORD || undefined,
      });
      const first = String(o.name[0]).split(',')[0];
      process.stdout.write([
        `hub initialised in ${o.data} (${r.mode})`,
        `CA fingerprint: sha256:${r.caFingerprint}`,
        ...(r.generatedPassword ? [`admin user: ${r.admin}`, `admin password (shown once, store it now): ${r.generatedPassword}`] : [`admin user: ${r.admin}`]),
        '',
        'next:',
        `  trellis hub run --data ${o.data}`,
        `  trellis login --hub ${first}:${o.adminPort ?? 7444} --user ${r.admin} --ca ${r.paths.caCert}`,
        '',
      ].join('\n'));
    });

  hub.command('run')
    .description('run the hub daemon')
    .requiredOption('--data <dir>', 'hub data directory')
    .option('--bind <addr>', 'address every listener binds to (default from hub.json, else 0.0.0.0)')
    .option('--agent-port <port>', 'agent port, mTLS (default 7443)', intOption)
    .option('--admin-port <port>', 'admin port, TLS (default 7444)', intOption)
    .option('--web-port <port>', 'web port, HTTPS (default 7445)', intOption)
    .option('--log-level <level>', 'fatal|error|warn|info|debug|trace')
    .addOption(new Option('--log-format <format>', 'log lines on stderr: json (one object per line) or pretty (one readable line each); default: TRELLIS_LOG_FORMAT, else hub.json logFormat, else json').choices(LOG_FORMATS))
    .addOption(new Option('--log-time <time>', 'time of a log line: epoch (milliseconds) or iso (ISO 8601, UTC); default: TRELLIS_LOG_TIME, else hub.json logTime, else epoch').choices(LOG_TIMES))
    .addHelpText('after', '\nOne process per data directory: the hub holds DATA/hub.lock while it runs; a second hub (or `hub init`)\n' +
      'on the same directory refuses with TRELLIS_E_LOCKED naming the holder (pid, host, start time). A lock left by a\n' +
      'killed hub on this host is taken over automatically.\n' +
      'Web port: GET /healthz (alive), GET /readyz (store reachable, ports bound, not draining), GET /metrics (Prometheus;\n' +
      'an API key with metrics:read, or an address in hub.json metrics.allow).')
    .action(async (o) => {
      const { Hub } = await import('../../hub/hub.js');
      const hubd = await Hub.start({ dataDir: o.data, flags: { bind: o.bind, agentPort: o.agentPort, adminPort: o.adminPort, webPort: o.webPort, logLevel: o.logLevel, logFormat: o.logFormat, logTime: o.logTime } });
      process.stderr.write(`trellis hub: agent port ${hubd.agentPort}, admin port ${hubd.adminPort}, web port ${hubd.webPort}, CA sha256:${hubd.components.pki.caFingerprint}\n`);
      await runUntilSignal(() => hubd.close());
    });

  hub.command('migrate')
    .description('bring the PostgreSQL state database to this release\'s schema; with --from-data, move a lowdb hub\'s state into it')
    .option('--data <dir>', 'hub data directory whose hub.json names the database (store.kind "postgres")')
    .option('--store <url>', 'the database instead: postgres://USER@HOST[:PORT]/DATABASE (password from TRELLIS_STORE_PASSWORD)')
    .option('--from-data <dir>', 'copy the state and execution history of this lowdb hub (stopped) into the database, and point its hub.json at it')
    .option('--force', 'with --from-data: replace what the database holds')
    .addHelpText('after', [
      '',
      'Migrations are numbered, each applied in one transaction under a lock: running it twice, or on two hubs at once, is safe.',
      'A hub refuses to start on a database with an older schema (run this) or a newer one (upgrade the hub).',
      '',
      'Examples:',
      '  trellis hub migrate --data /var/lib/trellis-hub',
      '  TRELLIS_STORE_PASSWORD=... trellis hub migrate --from-data /var/lib/trellis-hub --store postgres://trellis@db.example/trellis',
    ].join('\n'))
    .action(async (o) => {
      const { hubMigrate, describeMigrate } = await import('../../hub/migrate.js');
      const r = await hubMigrate({ dataDir: o.data, storeUrl: o.store, storePassword: process.env.TRELLIS_STORE_PASSWORD || undefined, fromData: o.fromData, force: o.force });
      process.stdout.write(describeMigrate(r, o.store));
    });

  hub.command('install')
    .description('run the hub as a systemd service (run as root): system user owning the data dir, hardened unit, start')
    .requiredOption('--data <dir>', 'hub data directory made by `trellis hub init` (given to the service user, 0700)')
    .option('--service <name>', 'systemd unit name (unit /etc/systemd/system/NAME.service)', 'trellis-hub')
    .option('--user <name>', 'service user, created as a system user (no login shell, no home) unless it exists', 'trellis-hub')
    .option('--no-start', 'write everything, start nothing')
    .option('--detach', 'where systemd is not running (containers, CI): start the unit\'s ExecStart as the service user in the background (pid in DATA/hub.pid, log in DATA/hub.log)')
    .option('--json', 'print one JSON object at the end: service, unit, data, user, changed, started, systemd')
    .addHelpText('after', '\nThe unit runs `node .../bin/trellis.js hub run --data DIR` with Restart=always, NoNewPrivileges, ProtectSystem=strict,\n' +
      'ProtectHome, PrivateTmp and ReadWritePaths=DIR. Ports: the defaults (7443-7445) need no privilege. Run again: nothing changes.')
    .action(contractErrors(async (o) => {
      const { installHub } = await import('../../hub/service/index.js');
      const r = await installHub({ data: o.data, service: o.service, user: o.user, noStart: o.start === false, detach: !!o.detach });
      if (o.json) {
        const { service, unit, data, user, changed, started, systemd } = r;
        process.stdout.write(JSON.stringify({ service, unit, data, user, changed, started, systemd }) + '\n');
      } else {
        process.stdout.write(r.changed ? `installed ${r.service} (hub in ${r.data}, user ${r.user}):\n${r.actions.map((a) => `  ${a}`).join('\n')}\n`
          : `already installed, nothing changed (${r.service}: hub in ${r.data})\n`);
      }
      if (r.hint) process.stderr.write(`${r.hint}\n`);
    }));

  hub.command('uninstall')
    .description('stop the hub service and remove its unit (run as root); the data directory and the user are kept')
    .option('--service <name>', 'systemd unit name', 'trellis-hub')
    .option('--data <dir>', 'hub data directory (default: the one in the unit)')
    .action(contractErrors(async (o) => {
      const { uninstallHub } = await import('../../hub/service/index.js');
      const r = await uninstallHub({ service: o.service, data: o.data });
      process.stdout.write(r.changed ? `uninstalled ${r.service}:\n${r.actions.map((a) => `  ${a}`).join('\n')}\n` : `${r.service} is not installed, nothing changed\n`);
    }));

  const agent = program.command('agent').description('enroll and run an agent');

  agent.command('enroll')
    .description('enroll this host with a join token: pins the hub CA from the token, makes a key here, gets a certificate')
    .requiredOption('--hub <host:port>', 'hub admin address, e.g. hub.example.com:7444; several hubs of a cluster: a:7444,b:7444 (the first reachable one enrolls)')
    .requiredOption('--token <token>', 'join token from `trellis tokens create` (or TRELLIS_JOIN_TOKEN)')
    .requiredOption('--data <dir>', 'agent data directory (created 0700)')
    .option('--label <k=v...>', 'labels this host asks for: only keys the token allows (`tokens create --allow-label KEY`); the token\'s labels win', collect, [])
    .option('--force', 'replace an existing identity in the data directory')
    .action(async (o) => {
      const t0 = performance.now();
      const { enroll } = await import('../../agent/enroll.js');
      const r = await enroll({ hub: o.hub, token: o.token, dataDir: o.data, force: o.force, labels: parseKeyValues(o.label, 'label') });
      process.stdout.write(`enrolled as agent ${r.agentId} (tenant ${r.tenant}) in ${Math.round(performance.now() - t0)} ms\n` +
        `identity: ${r.spiffeId}, certificate valid until ${r.notAfter.toISOString()}\n` +
        (r.hubs.length > 1 ? `hubs: ${r.hubs.join(', ')} (fails over in this order)\n` : '') +
        `next: trellis agent run --data ${o.data}\n`);
    });

  agent.command('bundle')
    .description('write an offline install bundle (tar.gz) of this installation with its production node_modules; prints its SHA-256')
    .requiredOption('--out <file>', 'bundle file to write, e.g. trellis-agent.tgz (FILE.sha256 is written next to it)')
    .addHelpText('after', '\nThe bundle holds one folder, trellis-<version>/ (bin/trellis, dist/, proto/, node_modules/). On a host with\n' +
      'Node >= 20 (no npm, no registry, no compiler needed):\n' +
      '  sha256sum -c trellis-agent.tgz.sha256 && tar -xzf trellis-agent.tgz -C /opt\n' +
      '  ln -s /opt/trellis-<version>/bin/trellis /usr/local/bin/trellis')
    .action(async (o) => {
      const { writeBundle } = await import('../bundle.js');
      const r = await writeBundle({ out: o.out });
      process.stdout.write(`bundle ${r.file}: ${r.root}/, ${r.packages} dependencies, ${(r.bytes / 1048576).toFixed(1)} MiB\n` +
        `sha256:${r.sha256}\n`);
    });

  agent.command('install')
    .description('install this host\'s agent as a systemd service (run as root): system user, data dir, enrollment, hardened unit, start')
    .requiredOption('--hub <host:port>', 'hub admin address (enrollment port), e.g. hub.example.com:7444')
    .option('--token <token>', 'join token (visible in ps while this command runs: prefer --token-file or TRELLIS_JOIN_TOKEN)')
    .option('--token-file <file>', 'read the join token from FILE, or from stdin with `-`')
    .option('--service <name>', 'systemd unit name (unit /etc/systemd/system/NAME.service)', 'trellis-agent')
    .option('--data <dir>', 'agent data directory, created 0700 and owned by the service user (default /var/lib/NAME)')
    .option('--user <name>', 'service user, created as a system user (no login shell, no home) unless it exists; `root` runs the agent as root (needed for run_as)', 'trellis-agent')
    .option('--label <k=v...>', 'labels this host asks for: only keys the token allows, as `agent enroll --label`', collect, [])
    .option('--read-write <path...>', 'another path the agent and its actions may write (ReadWritePaths=; everything else but the data dir and /tmp is read-only)', collect, [])
    .option('--no-start', 'write everything, start nothing')
    .option('--detach', 'where systemd is not running (containers, CI): start the unit\'s ExecStart as the service user in the background (pid in DATA/agent.pid, log in DATA/agent.log)')
    .option('--json', 'print one JSON object at the end: service, unit, data, user, agentId, tenant, changed, started, systemd')
    .addHelpText('after', [
      '',
      'The token is read from --token, --token-file FILE, --token-file - (stdin) or TRELLIS_JOIN_TOKEN, only when the host is',
      'not enrolled yet; it goes to the hub (pinned from the token) and is never written to disk nor passed to the agent.',
      'Run again with the same options: nothing changes ("already installed, nothing changed"); no token is needed.',
      '',
      'The unit runs `node .../bin/trellis.js agent run --data DIR` as the service user with Restart=always and',
      'NoNewPrivileges, ProtectSystem=strict, ProtectHome, PrivateTmp, ReadWritePaths=DIR (plus --read-write paths).',
      'Trade-off: actions run inside the same sandbox and as the same user. An action that runs as another user',
      '(run_as) needs the agent to run as root (--user root), and one that writes outside DIR and /tmp (packages, /etc)',
      'needs that path in --read-write. Without systemd (no /run/systemd/system) the unit is written and checked with',
      '`systemd-analyze verify`; pass --detach to start the agent anyway.',
      '',
      'Example:  TRELLIS_JOIN_TOKEN=tj1.… trellis agent install --hub hub.example.com:7444 --label role=web',
    ].join('\n'))
    .action(contractErrors(async (o) => {
      const { installAgent } = await import('../../agent/service/index.js');
      const r = await installAgent({
        hub: o.hub, service: o.service, data: o.data, user: o.user, labels: parseKeyValues(o.label, 'label'), readWrite: o.readWrite,
        noStart: o.start === false, detach: !!o.detach, token: () => readJoinToken(o),
      });
      if (o.json) {
        const { service, unit, data, user, agentId, tenant, changed, started, systemd } = r;
        process.stdout.write(JSON.stringify({ service, unit, data, user, agentId, tenant, changed, started, systemd }) + '\n');
      } else {
        process.stdout.write(r.changed
          ? `installed ${r.service} (agent ${r.agentId}, tenant ${r.tenant}, user ${r.user}, data ${r.data}):\n${r.actions.map((a) => `  ${a}`).join('\n')}\n`
          : `already installed, nothing changed (${r.service}: agent ${r.agentId}, data ${r.data})\n`);
      }
      if (r.hint) process.stderr.write(`${r.hint}\n`);
    }));

  agent.command('uninstall')
    .description('stop and remove the agent service (run as root); --purge also removes its data and the user install created')
    .option('--service <name>', 'systemd unit name', 'trellis-agent')
    .option('--data <dir>', 'agent data directory (default: the one in the unit, else /var/lib/NAME)')
    .option('--purge', 'also remove the data directory (the agent\'s key and identity) and the user `agent install` created')
    .action(contractErrors(async (o) => {
      const { uninstallAgent } = await import('../../agent/service/index.js');
      const r = await uninstallAgent({ service: o.service, data: o.data, purge: !!o.purge });
      process.stdout.write(r.changed ? `uninstalled ${r.service}:\n${r.actions.map((a) => `  ${a}`).join('\n')}\n` : `${r.service} is not installed, nothing changed\n`);
    }));

  agent.command('status')
    .description('service state, hub, agent id, certificate expiry and outbox depth of this host\'s agent')
    .option('--service <name>', 'systemd unit name', 'trellis-agent')
    .option('--data <dir>', 'agent data directory (default: the one in the unit, else /var/lib/NAME)')
    .option('--json', 'JSON output')
    .addHelpText('after', '\nExit code 0 when the service or an enrolled data directory is found, 3 when neither is.')
    .action(contractErrors(async (o) => {
      const { agentStatus } = await import('../../agent/service/index.js');
      const r = await agentStatus({ service: o.service, data: o.data });
      if (o.json) process.stdout.write(JSON.stringify(r) + '\n');
      else {
        const rows: Array<[string, string | number | undefined]> = [
          ['service', `${r.service} (${r.installed ? r.unit : 'no unit'})`], ['state', (r.pid ? `running (detached, pid ${r.pid})` : r.state) + (r.enabled ? `, ${r.enabled}` : '') + (r.systemd ? '' : ', systemd not running')],
          ['data', r.data], ['user', r.user], ['hub', r.hub], ['agent', r.agentId], ['tenant', r.tenant], ['certificate', r.certNotAfter && `valid until ${r.certNotAfter}`], ['outbox', r.outboxDepth !== undefined ? `${r.outboxDepth} event(s) waiting` : undefined],
        ];
        // agent.json and the outbox are in DATA, which the service user writes: cleaned before the terminal.
        process.stdout.write(rows.filter(([, v]) => v !== undefined).map(([k, v]) => `${k.padEnd(12)} ${clean(String(v))}`).join('\n') + '\n');
        if (r.error) process.stderr.write(`trellis: ${clean(r.error)}\n`);
      }
      if (!r.installed && !r.agentId) process.exitCode = 3;
    }));

  agent.command('run')
    .description('run the agent daemon: keeps one mTLS stream to the hub, runs actions, renews its certificate')
    .requiredOption('--data <dir>', 'agent data directory')
    .option('--hub <host:port>', 'hub agent address, or several hubs of a cluster a:7443,b:7443 (tried in order, fails over on a lost hub; default: the ones saved at enrollment)')
    .option('--cert <file>', 'operator-issued agent certificate (with --key, --ca and --hub)')
    .option('--key <file>', 'key of --cert')
    .option('--ca <file>', 'CA bundle that issued the hub certificate')
    .addOption(new Option('--label <k=v...>', 'removed: labels come from the join token or `trellis agents label`').hideHelp())
    .option('--log-level <level>', 'fatal|error|warn|info|debug|trace')
    .addOption(new Option('--log-format <format>', 'log lines on stderr: json (one object per line) or pretty (one readable line each); default TRELLIS_LOG_FORMAT, else json').choices(LOG_FORMATS))
    .addOption(new Option('--log-time <time>', 'time of a log line: epoch (milliseconds) or iso (ISO 8601, UTC); default TRELLIS_LOG_TIME, else epoch').choices(LOG_TIMES))
    .addHelpText('after', '\nLabels are not set here: they come from the join token (and keys it allows at `agent enroll --label`)\nand from `trellis agents label ID k=v`.')
    .action(async (o) => {
      if (o.label !== undefined) {
        throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT',
          '`agent run --label` was removed: a host cannot choose its own labels. Labels come from the join token (`tokens create --label`, or keys it allows with `--allow-label` at `agent enroll --label`) and from `trellis agents label ID k=v`');
      }
      const log = createLogger({ name: 'trellis-agent', level: o.logLevel, format: o.logFormat, time: o.logTime });
      const { Agent } = await import('../../agent/agent.js');
      const a = await Agent.start({ dataDir: o.data, hub: o.hub, certFile: o.cert, keyFile: o.key, caFile: o.ca, log });
      const fatal = a.channel.closedPromise.then((err) => {
        if (err) { process.stderr.write(`trellis agent: ${err.message}\n`); process.exitCode = 3; }
      });
      await runUntilSignal(() => a.close(), fatal);
    });
}
