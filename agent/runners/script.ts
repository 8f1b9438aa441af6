/**
 * Runner `script`: the script body is written to a private temp dir (0700; file 0700; owned by
 * the run_as user when the agent drops privileges) and run with argv as its arguments. A `#!`
 * line picks the interpreter; without one the script runs under /bin/sh. The dir is removed
 * afterwards, whatever happened.
 */
import { chown, mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { runProcess } from './process.js';
import { resolveRunAs } from './users.js';
import { errorOutcome, type Outcome, type RunContext } from './types.js';

export const MAX_SCRIPT_BYTES = 1024 * 1024;
export const SCRIPT_DIR_PREFIX = 'trellis-script-';
const SAFE_NAME = /^[A-Za-z0-9._-]{1,128}$/;

/** The file name inside the temp dir: the basename of script_name when it is tame, else "script". */
function fileName(scriptName: string): string {
  const b = basename(scriptName || 'script');
  return SAFE_NAME.test(b) && b !== '.' && b !== '..' ? b : 'script';
}

export async function runScript(ctx: RunContext): Promise<Outcome> {
  const body = ctx.req.script;
  if (!body || body.length === 0) return errorOutcome('script: the script body is empty');
  if (body.length > MAX_SCRIPT_BYTES) return errorOutcome(`script: ${body.length} bytes, over the ${MAX_SCRIPT_BYTES}-byte limit`);
  const runAs = await resolveRunAs(ctx.req.runAs);
  const owner = runAs?.switchIds ? runAs.user : undefined;
  const dir = await mkdtemp(join(tmpdir(), SCRIPT_DIR_PREFIX)); // created 0700
  try {
    const file = join(dir, fileName(ctx.req.scriptName));
    const fh = await open(file, 'wx', 0o700);
    try {
      await fh.writeFile(body);
      await fh.chmod(0o700); // the umask may have narrowed the mode given to open
      if (owner) await fh.chown(owner.uid, owner.gid);
    } finally {
      await fh.close();
    }
    if (owner) await chown(dir, owner.uid, owner.gid);
    const shebang = body[0] === 0x23 && body[1] === 0x21; // "#!"
    const args = ctx.req.argv;
    return await runProcess(ctx, shebang
      ? { file, args, cwd: ctx.req.cwd, runAs }
      : { file: '/bin/sh', args: [file, ...args], cwd: ctx.req.cwd, runAs });
  } finally {
    await rm(dir, { recursive: true, force: true, maxRetries: 3 }).catch((err: Error) => {
      ctx.log?.warn({ executionId: ctx.req.executionId, dir, err: err.message }, 'could not remove the script temp dir');
    });
  }
}
