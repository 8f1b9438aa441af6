import { InvalidArgumentError } from 'commander';

export function intOption(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError('not a port number');
  return n;
}

export function collect(v: string, prev: string[]): string[] {
  return [...prev, v];
}

/**
 * The one place a daemon handles OS signals: SIGINT/SIGTERM run `stop` (drain → flush → close)
 * with a force timeout; a second signal exits at once. Also returns when `until` settles.
 */
export async function runUntilSignal(stop: () => Promise<void>, until?: Promise<unknown>): Promise<void> {
  let stopping: Promise<void> | undefined;
  await new Promise<void>((resolve) => {
    const onSignal = (sig: NodeJS.Signals) => {
      if (stopping) { process.stderr.write(`second ${sig}: exiting now\n`); process.exit(130); }
      process.stderr.write(`${sig}: shutting down\n`);
      const force = setTimeout(() => { process.stderr.write('shutdown took over 10s: forcing exit (TRELLIS_E_SHUTDOWN)\n'); process.exit(1); }, 10_000);
      force.unref();
      stopping = stop().finally(() => resolve());
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    until?.then(() => { stopping ??= stop(); void stopping.finally(() => resolve()); });
  });
}
