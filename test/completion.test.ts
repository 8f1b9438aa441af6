/**
 * `trellis completion bash|zsh|fish`: scripts generated from the commander tree, loaded in real
 * shells. bash always; zsh and fish when installed (else those checks are skipped).
 */
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runCli } from './helpers/cli.js';
import { tempDir } from './helpers/hub.js';
import { buildProgram } from '../cli/main.js';
import { commandTree } from '../cli/commands/completion.js';
import { needs } from './helpers/needs.js';

const has = (shell: string) => spawnSync('sh', ['-c', `command -v ${shell}`]).status === 0;

function sh(shell: string, args: string[], script: string): { code: number; out: string; err: string } {
  const r = spawnSync(shell, [...args, script], { encoding: 'utf8', env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/tmp' }, timeout: 60_000 });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

/** `trellis completion SHELL` written to FILE (the command must succeed). */
async function writeScript(t: Test, shell: string, file: string): Promise<string> {
  const r = await runCli(['completion', shell]);
  t.equal(r.code, 0, r.err);
  writeFileSync(file, r.out);
  return file;
}

t.test('the tree: every visible command and its flags, with -o choices', async (t) => {
  const nodes = commandTree(await buildProgram());
  const root = nodes.find((n) => n.path === '')!;
  for (const c of ['agents', 'agent', 'tokens', 'rules', 'completion']) t.ok(root.subs.some((s) => s.name === c), `trellis ${c}`);
  const list = nodes.find((n) => n.path === 'agents list')!;
  t.same(list.flags.find((f) => f.long === '--output')?.choices, ['table', 'wide', 'json', 'yaml']);
  t.ok(list.flags.some((f) => f.long === '--json'));
  t.ok(nodes.some((n) => n.path === 'ca rotate status'), 'nested subcommands');
  t.notOk(nodes.find((n) => n.path === 'agent run')!.flags.some((f) => f.long === '--label'), 'hidden flags are not offered');
});

t.test('bash: the script loads and completes commands, subcommands, flags and flag values', async (t) => {
  await using d = await tempDir();
  const file = await writeScript(t, 'bash', join(d.path, 'trellis.bash'));
  const complete = (words: string[]) => {
    const w = words.map((x) => `'${x}'`).join(' ');
    const b = sh('bash', ['-c'], `source '${file}' || exit 9; COMP_WORDS=(${w}); COMP_CWORD=${words.length - 1}; _trellis; echo "\${COMPREPLY[*]}"`);
    t.equal(b.code, 0, b.err);
    t.equal(b.err, '', 'no error loading or running it');
    return b.out.trim();
  };
  t.equal(complete(['trellis', 'ag']), 'agent agents');
  t.equal(complete(['trellis', 'agents', 'l']), 'list label');
  t.same(complete(['trellis', 'agents', 'list', '-']).split(' ').sort(), ['--all', '--facts', '--help', '--json', '--output', '--selector', '--status', '-h', '-o']);
  t.equal(complete(['trellis', 'agents', 'list', '-o', '']), 'table wide json yaml');
  t.equal(complete(['trellis', 'agents', 'list', '--selector', 'list', '-o', 'y']), 'yaml', 'a flag value is not taken for a command');
  t.equal(complete(['trellis', '--tenant', 'agents', 'ag']), 'agent agents', 'a value of a global flag is skipped');
  t.equal(complete(['trellis', 'ca', 'rotate', 's']), 'start status');
  t.equal(complete(['trellis', 'completion', '']), 'bash zsh fish');
  t.equal(complete(['trellis', 'run', '--agent', 'x', '--', 'ag']), '', 'nothing after -- (a command for the agent)');
  const loaded = sh('bash', ['-c'], `source '${file}'; complete -p trellis`);
  t.match(loaded.out, /complete -o default -F _trellis trellis/);
});

t.test('zsh: the script parses, registers itself and completes', needs(t, has('zsh') ? undefined : 'zsh is not installed (apt-get install zsh; .ci/run does it)'), async (t) => {
  await using d = await tempDir();
  const file = await writeScript(t, 'zsh', join(d.path, '_trellis'));
  t.equal(sh('zsh', ['-n'], file).code, 0, 'zsh -n');
  const reg = sh('zsh', ['-f', '-c'], `HOME='${d.path}'; autoload -Uz compinit; compinit -u -d '${d.path}/.zcd'; source '${file}'; print -r -- \${_comps[trellis]}`);
  t.equal(reg.out.trim(), '_trellis', 'compdef registered');
  // The completion builtins stubbed to print what they are given.
  const complete = (words: string[]) => sh('zsh', ['-f', '-c'], `compdef() { :; }; source '${file}'
_describe() { print -r -- "\${(j: :)\${(@)\${(P)4}%%:*}}"; }
compadd() { print -r -- "\${(j: :)\${(P)2}}"; }
_files() { print FILES; }
words=(${words.map((x) => `'${x}'`).join(' ')}); CURRENT=$#words; PREFIX=$words[-1]; _trellis`).out.trim();
  t.match(complete(['trellis', 'ag']), /(^| )agents( |$)/);
  t.match(complete(['trellis', 'agents', 'list', '-']), /--output/);
  t.equal(complete(['trellis', 'agents', 'list', '-o', '']), 'table wide json yaml');
  t.equal(complete(['trellis', 'completion', '']), 'bash zsh fish');
  t.equal(complete(['trellis', 'packs', 'install', '']), 'FILES', 'files where an argument is a path');
});

t.test('fish: the script parses and completes', needs(t, has('fish') ? undefined : 'fish is not installed (apt-get install fish; .ci/run does it)'), async (t) => {
  await using d = await tempDir();
  const file = await writeScript(t, 'fish', join(d.path, 'trellis.fish'));
  t.equal(sh('fish', ['-n'], file).code, 0, 'fish -n');
  const complete = (line: string) => sh('fish', ['--no-config', '-c'], `source '${file}'; complete -C '${line}'`).out.trim().split('\n').map((l) => l.split('\t')[0]);
  t.same(complete('trellis ag'), ['agent', 'agents']);
  t.same(complete('trellis agents list -o ').sort(), ['json', 'table', 'wide', 'yaml']);
  t.ok(complete('trellis agents list -').includes('--output'));
  t.same(complete('trellis ca rotate s'), ['start', 'status']);
});

t.test('completion for an unknown shell is a usage error naming the shells', async (t) => {
  const r = await runCli(['completion', 'tcsh']);
  t.equal(r.code, 2);
  t.match(r.err, /'tcsh' is invalid for argument 'shell'\. Allowed choices are bash, zsh, fish/);
  const help = await runCli(['completion', '--help']);
  t.match(help.out, /source <\(trellis completion bash\)/);
});
