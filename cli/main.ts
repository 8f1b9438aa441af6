/** The `trellis` command line: daemons (`hub`, `agent`) and admin commands. */
import { Command, CommanderError } from 'commander';
import { TRELLIS_VERSION } from '../common/version.js';
import { isTrellisError, type TrellisError } from '../common/errors.js';
import { printErr } from './format.js';
import { addDaemonCommands } from './commands/daemons.js';
import { addAdminCommands } from './commands/admin.js';
import { addIamCommands } from './commands/iam.js';
import { addAuditCommands } from './commands/audit.js';
import { addKvCommands } from './commands/kv.js';
import { addExecutionCommands } from './commands/executions.js';
import { addWebhookCommands } from './commands/webhooks.js';
import { addEventCommands } from './commands/events.js';
import { addPackCommands } from './commands/packs.js';
import { addRuleCommands } from './commands/rules.js';
import { addFleetCommands } from './commands/fleet.js';
import { addCaCommands } from './commands/ca.js';
import { addActionCommands } from './commands/actions.js';
import { addCompletionCommand } from './commands/completion.js';
import { addContextCommands } from './commands/contexts.js';

export function buildProgram(): Command {
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
  addDaemonCommands(program);
  addAdminCommands(program);
  addContextCommands(program);
  addFleetCommands(program);
  addIamCommands(program);
  addAuditCommands(program);
  addKvCommands(program);
  addExecutionCommands(program);
  addWebhookCommands(program);
  addEventCommands(program);
  addPackCommands(program);
  addRuleCommands(program);
  addActionCommands(program);
  addCaCommands(program);
  addCompletionCommand(program);
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
  const program = buildProgram();
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
