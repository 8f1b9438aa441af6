/**
 * `npm run soak -- --agents N [--duration 60s] [--kills K] [--seed S]`: the scale-and-faults
 * scenario runner (issue 13 §1). Options and `--help`: bench/soak/args.ts; the run:
 * bench/soak/run.ts (loaded only once the options parse, so usage errors answer at once).
 *
 * Exit codes: 0 every soak_* check is 0; 1 a check is not 0; 2 usage or harness error.
 */
import { HELP, parseArgs, UsageError, type SoakOptions } from './args.js';

async function main(): Promise<number> {
  let o: SoakOptions | undefined;
  try { o = parseArgs(process.argv.slice(2)); } catch (err) {
    if (err instanceof UsageError) { process.stderr.write(`soak: ${err.message}\n`); return 2; }
    throw err;
  }
  if (!o) { process.stdout.write(HELP); return 0; }
  const { runSoak } = await import('./run.js');
  return runSoak(o);
}

main().then((code) => process.exit(code), (err: Error) => { process.stderr.write(`[soak] fatal: ${err.stack ?? err}\n`); process.exit(2); });
