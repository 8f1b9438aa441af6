/** Runner `command` (also the default, runner ''): argv run directly, without a shell. */
import { runProcess } from './process.js';
import { resolveRunAs } from './users.js';
import { errorOutcome, type Outcome, type RunContext } from './types.js';

export async function runCommand(ctx: RunContext): Promise<Outcome> {
  const { argv } = ctx.req;
  if (argv.length === 0 || !argv[0]) return errorOutcome('argv: the command is empty (runner command needs argv[0])');
  const runAs = await resolveRunAs(ctx.req.runAs);
  return runProcess(ctx, { file: argv[0], args: argv.slice(1), cwd: ctx.req.cwd, runAs });
}
