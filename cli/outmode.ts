/**
 * `-o table|wide|json|yaml` for the commands of the catalog (actions, rules show, packs show).
 * `--json` stays as an alias of `-o json`. YAML is loaded only when asked for.
 */
import { Option, type Command } from 'commander';
import { TrellisError } from '../common/errors.js';
import { print } from './format.js';

export type OutputMode = 'table' | 'wide' | 'json' | 'yaml';
const MODES: readonly OutputMode[] = ['table', 'wide', 'json', 'yaml'];

/** Adds `-o, --output` and `--json` to a command. */
export function withOutput(cmd: Command): Command {
  return cmd
    .addOption(new Option('-o, --output <format>', 'output format').choices([...MODES]).default('table'))
    .option('--json', 'the same as -o json');
}

/** The mode the options ask for. */
export function outputMode(o: { output?: string; json?: boolean }): OutputMode {
  if (o.json) return 'json';
  const m = (o.output ?? 'table') as OutputMode;
  if (!MODES.includes(m)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `-o ${String(o.output).slice(0, 20)}: use one of ${MODES.join(', ')}`);
  return m;
}

/** Prints a value as JSON or YAML; returns false for the table modes (the caller prints those). */
export async function printStructured(mode: OutputMode, value: unknown): Promise<boolean> {
  if (mode === 'json') { print(JSON.stringify(value, null, 2)); return true; }
  if (mode === 'yaml') {
    const { stringify } = await import('yaml');
    print(stringify(value, { lineWidth: 0 }));
    return true;
  }
  return false;
}
