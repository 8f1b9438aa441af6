/** `trellis hub …` and `trellis agent …`: set up and run the daemons. */
import { Option, type Command } from 'commander';
// The daemons are imported when their command runs: every other `trellis` command starts
// without loading the whole hub and agent (about a second of start-up on a busy host).
import { KEY_TYPES, type KeyType } from '../../certs/index.js';
import { TrellisError } from '../../common/errors.js';
import { createLogger } from '../../common/log.js';
import { parseKeyValues } from '../format.js';
import { askHidden, isInteractive } from '../prompt.js';
import { runUntilSignal, intOption, collect } from './util.js';

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
    .option('--force', 'replace an existing hub in the data directory')
    .addHelpText('after', '\nThe admin password comes from TRELLIS_ADMIN_PASSWORD, a prompt on a terminal, or is generated and printed once.')
    .action(async (o) => {
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
    .action(async (o) => {
      const { Hub } = await import('../../hub/hub.js');
      const hubd = await Hub.start({ dataDir: o.data, flags: { bind: o.bind, agentPort: o.agentPort, adminPort: o.adminPort, webPort: o.webPort, logLevel: o.logLevel } });
      process.stderr.write(`trellis hub: agent port ${hubd.agentPort}, admin port ${hubd.adminPort}, web port ${hubd.webPort}, CA sha256:${hubd.components.pki.caFingerprint}\n`);
      await runUntilSignal(() => hubd.close());
    });

  const agent = program.command('agent').description('enroll and run an agent');

  agent.command('enroll')
    .description('enroll this host with a join token: pins the hub CA from the token, makes a key here, gets a certificate')
    .requiredOption('--hub <host:port>', 'hub admin address, e.g. hub.example.com:7444')
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

  agent.command('run')
    .description('run the agent daemon: keeps one mTLS stream to the hub, runs actions, renews its certificate')
    .requiredOption('--data <dir>', 'agent data directory')
    .option('--hub <host:port>', 'hub agent address (default: the one saved at enrollment)')
    .option('--cert <file>', 'operator-issued agent certificate (with --key, --ca and --hub)')
    .option('--key <file>', 'key of --cert')
    .option('--ca <file>', 'CA bundle that issued the hub certificate')
    .addOption(new Option('--label <k=v...>', 'removed: labels come from the join token or `trellis agents label`').hideHelp())
    .option('--log-level <level>', 'fatal|error|warn|info|debug|trace')
    .addHelpText('after', '\nLabels are not set here: they come from the join token (and keys it allows at `agent enroll --label`)\nand from `trellis agents label ID k=v`.')
    .action(async (o) => {
      if (o.label !== undefined) {
        throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT',
          '`agent run --label` was removed: a host cannot choose its own labels. Labels come from the join token (`tokens create --label`, or keys it allows with `--allow-label` at `agent enroll --label`) and from `trellis agents label ID k=v`');
      }
      const log = createLogger({ name: 'trellis-agent', level: o.logLevel });
      const { Agent } = await import('../../agent/agent.js');
      const a = await Agent.start({ dataDir: o.data, hub: o.hub, certFile: o.cert, keyFile: o.key, caFile: o.ca, log });
      const fatal = a.channel.closedPromise.then((err) => {
        if (err) { process.stderr.write(`trellis agent: ${err.message}\n`); process.exitCode = 3; }
      });
      await runUntilSignal(() => a.close(), fatal);
    });
}
