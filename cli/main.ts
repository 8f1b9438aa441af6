/** The `trellis` command line: daemons (`hub`, `agent`) and admin commands. */
import { Command, CommanderError } from 'commander';
import { TRELLIS_VERSION } from '../common/version.js';
import { isTrellisError, type TrellisError } from '../common/errors.js';
import { printErr } from './format.js';

type AddCommands = (program: Command) => void;
/**
 * Every command module with the top-level commands it defines, in registration order (fleet adds
 * to `agents` from admin). They are imported when one of their commands runs: `trellis version`
 * or `trellis agents list` load neither the daemons nor yaml/tar/pino nor the other commands.
 */
const MODULES: Array<[string[], () => Promise<AddCommands>]> = [
  [['hub', 'agent'], async () => (await import('./commands/daemons.js')).addDaemonCommands],
  [['agents', 'certs', 'login', 'logout', 'run', 'tokens', 'whoami'], async () => (await import('./commands/admin.js')).addAdminCommands],
  [['version'], async () => (await import('./commands/version.js')).addVersionCommand],
  [['context'], async () => (await import('./commands/contexts.js')).addContextCommands],
  [['agents'], async () => (await import('./commands/fleet.js')).addFleetCommands],
  [['users', 'roles', 'tenants', 'groups', 'sessions', 'apikeys'], async () => (await import('./commands/iam.js')).addIamCommands],
  [['audit'], async () => (await import('./commands/audit.js')).addAuditCommands],
  [['kv', 'secrets'], async () => (await import('./commands/kv.js')).addKvCommands],
  [['executions'], async () => (await import('./commands/executions.js')).addExecutionCommands],
  [['webhooks'], async () => (await import('./commands/webhooks.js')).addWebhookCommands],
  [['events'], async () => (await import('./commands/events.js')).addEventCommands],
  [['packs'], async () => (await import('./commands/packs.js')).addPackCommands],
  [['rules'], async () => (await import('./commands/rules.js')).addRuleCommands],
  [['ca'], async () => (await import('./commands/ca.js')).addCaCommands],
  [['cluster'], async () => (await import('./commands/cluster.js')).addClusterCommands],
  [['actions'], async () => (await import('./commands/actions.js')).addActionCommands],
  [['snapshots'], async () => (await import('./commands/snapshots.js')).addSnapshotCommands],
  [['maintenance'], async () => (await import('./commands/maintenance.js')).addMaintenanceCommands],
  [['completion'], async () => (await import('./commands/completion.js')).addCompletionCommand],
];

/** The top-level command named in argv (the first word that is not an option or an option's value), if any. */
function commandOf(argv: string[]): string | undefined {
  const args = argv.slice(2);
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--') return undefined;
    if (a === '--tenant') { i++; continue; }
    if (!a.startsWith('-')) return a;
  }
  return undefined;
}

/** The program with every command, or (`only`) with the modules defining that top-level command (all when none does). */
export async function buildProgram(only?: string): Promise<Command> {
  const program = new Command('trellis')
    .description('Trellis: infrastructure orchestration over mutual-TLS gRPC')
    .version(TRELLIS_VERSION, '-V, --version-cli', 'print the CLI version')
    .showHelpAfterError('(run with --help for usage)')
    .configureHelp({ sortSubcommands: false })
    .option('--tenant <tenant>', 'tenant to work in (default: TRELLIS_TENANT, else the profile\'s; `*` lists every tenant for admins)')
    .option('--debug', 'on failure, also print the underlying transport error (gRPC/TLS text); or TRELLIS_DEBUG=1')
    .hook('preAction', (cmd) => {
      const t = cmd.opts().tenant as string | undefined;
      if (t) process.env.TRELLIS_TENANT = t;
    })
    .exitOverride(); // set before the subcommands so they inherit it
  // `completion` describes every command, so it needs them all.
  const wanted = only !== undefined && only !== 'completion' && MODULES.some(([names]) => names.includes(only)) ? MODULES.filter(([names]) => names.includes(only)) : MODULES;
  for (const add of await Promise.all(wanted.map(([, load]) => load()))) add(program);
  program.addHelpText('after', `
Start here:
  trellis hub init --data /var/lib/trellis-hub --name hub.example.com,10.0.0.5
  trellis hub run --data /var/lib/trellis-hub
  trellis login --hub hub.example.com:7444 --user admin --ca /var/lib/trellis-hub/ca.pem
  trellis tokens create --label role=web
  trellis agent enroll --hub hub.example.com:7444 --token TOKEN --data /var/lib/trellis-agent
  trellis agent run --data /var/lib/trellis-agent
  trellis run --selector role=web -- uptime
  trellis packs install ./mypack && trellis rules list
  trellis run mypack.restart --selector role=web service=nginx
  trellis events --follow --type 'core.*'`);
  return program;
}

/** The causes under an error (gRPC status and details, OpenSSL text), for --debug. */
function causeChain(err: unknown): string[] {
  const out: string[] = [];
  for (let e = (err as { cause?: unknown })?.cause, i = 0; e && i < 10; e = (e as { cause?: unknown }).cause, i++) {
    const c = e as { code?: unknown; details?: string; message?: string };
    out.push(`${c.code !== undefined ? `[${String(c.code)}] ` : ''}${(c.details || c.message || String(e)).trim().replace(/\s*\n\s*/g, ' ')}`);
  }
  return out;
}

export async function main(argv: string[]): Promise<void> {
  const program = await buildProgram(commandOf(argv));
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      process.exitCode = err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.exitCode === 0 ? 0 : 2;
      return;
    }
    if (isTrellisError(err)) {
      const e = err as TrellisError;
      printErr(`trellis: ${e.message} (${e.code})`);
    } else {
      printErr(`trellis: ${(err as Error)?.message ?? String(err)}`);
    }
    if (program.opts().debug || process.env.TRELLIS_DEBUG === '1') for (const line of causeChain(err)) printErr(`  caused by: ${line}`);
    process.exitCode = 1;
  }
}
