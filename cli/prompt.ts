/** Terminal prompts: a visible question and a hidden password entry. */
import { createInterface } from 'node:readline';
import { TrellisError } from '../common/errors.js';

export function isInteractive(): boolean {
  return Boolean(process.stdin.isTTY && process.stderr.isTTY);
}

export function ask(question: string): Promise<string> {
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  return new Promise((resolve) => rl.question(question, (a) => { rl.close(); resolve(a); }));
}

export function askHidden(question: string): Promise<string> {
  if (!isInteractive()) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'no terminal to prompt for a password: set TRELLIS_PASSWORD');
  return new Promise((resolve, reject) => {
    const stdin = process.stdin;
    process.stderr.write(question);
    stdin.setRawMode(true);
    stdin.resume();
    let value = '';
    const onData = (buf: Buffer) => {
      for (const ch of buf.toString('utf8')) {
        if (ch === '\r' || ch === '\n') { done(); resolve(value); return; }
        if (ch === '\u0003') { done(); reject(new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'interrupted')); return; }
        if (ch === '\u007f' || ch === '\b') value = value.slice(0, -1);
        else value += ch;
      }
    };
    const done = () => { stdin.off('data', onData); stdin.setRawMode(false); stdin.pause(); process.stderr.write('\n'); };
    stdin.on('data', onData);
  });
}

/** Reads all of stdin (for --password-stdin style input). */
export async function readStdin(max = 1024 * 1024): Promise<string> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of process.stdin) {
    n += (c as Buffer).length;
    if (n > max) throw new TrellisError('TRELLIS_E_TOO_LARGE', `standard input is over ${max} bytes`);
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}
