/**
 * `trellis completion bash|zsh|fish`: shell completion scripts generated from the commander tree
 * itself (commands, subcommands, flags, flag choices such as `-o table|wide|json|yaml`), so they
 * never drift from the CLI. Each script walks the words typed so far the same way: words that
 * name a subcommand of the current command descend into it, flags are skipped (with the value
 * of a flag that takes one), and `--` ends completion (a command line for an agent follows).
 */
import { Argument, type Command, type Option } from 'commander';
import { print } from '../format.js';

export const SHELLS = ['bash', 'zsh', 'fish'] as const;
type Shell = (typeof SHELLS)[number];

interface Flag { names: string[]; short?: string; long?: string; description: string; takesValue: boolean; choices: string[] }
interface Node { path: string; subs: Array<{ name: string; description: string }>; flags: Flag[]; argChoices: string[] }

const HELP_FLAG: Flag = { names: ['-h', '--help'], short: '-h', long: '--help', description: 'display help for command', takesValue: false, choices: [] };

/** The first sentence of a description, on one line, at most 70 characters. */
function brief(s: string): string {
  const one = s.replace(/\s+/g, ' ').trim();
  const cut = one.split(/;|: | \(|\. /)[0]!.trim();
  return cut.length > 70 ? `${cut.slice(0, 67)}...` : cut;
}

function flagOf(o: Option): Flag {
  const names = [o.short, o.long].filter((n): n is string => !!n);
  return { names, short: o.short, long: o.long, description: brief(o.description), takesValue: o.required || o.optional, choices: o.argChoices ?? [] };
}

const hidden = (c: Command) => (c as unknown as { _hidden?: boolean })._hidden === true;

/** Every command of the tree, depth first, with its visible subcommands and flags. */
export function commandTree(program: Command): Node[] {
  const out: Node[] = [];
  const walk = (cmd: Command, path: string) => {
    const subs = cmd.commands.filter((c) => !hidden(c));
    out.push({
      path,
      subs: subs.map((c) => ({ name: c.name(), description: brief(c.description()) })),
      flags: [...cmd.options.filter((o) => !o.hidden).map(flagOf), HELP_FLAG],
      argChoices: (cmd.registeredArguments as readonly Argument[])[0]?.argChoices ?? [],
    });
    for (const c of subs) walk(c, path ? `${path} ${c.name()}` : c.name());
  };
  walk(program, '');
  return out;
}

/** Every flag anywhere that takes a value: the walk skips the word after it. */
const valued = (nodes: Node[]) => [...new Set(nodes.flatMap((n) => n.flags.filter((f) => f.takesValue).flatMap((f) => f.names)))].sort();

const sq = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

export function bashScript(nodes: Node[]): string {
  const cases = (f: (n: Node) => string[]) => nodes.map((n) => [n.path, f(n)] as const).filter(([, w]) => w.length)
    .map(([p, w]) => `    ${sq(p)}) REPLY=${sq(w.join(' '))} ;;`).join('\n');
  const choices = nodes.flatMap((n) => n.flags.filter((f) => f.choices.length).flatMap((f) => f.names.map((name) => `    ${sq(`${n.path}|${name}`)}) REPLY=${sq(f.choices.join(' '))} ;;`))).join('\n');
  return `# trellis completion for bash. Load it with:
#   source <(trellis completion bash)
# or for every shell: trellis completion bash > /etc/bash_completion.d/trellis
_trellis_subs() {
  case "$1" in
${cases((n) => n.subs.map((s) => s.name))}
    *) REPLY='' ;;
  esac
}
_trellis_flags() {
  case "$1" in
${cases((n) => n.flags.flatMap((f) => f.names))}
    *) REPLY='' ;;
  esac
}
_trellis_args() {
  case "$1" in
${cases((n) => n.argChoices)}
    *) REPLY='' ;;
  esac
}
_trellis_choices() {
  case "$1|$2" in
${choices}
    *) REPLY='' ;;
  esac
}
_trellis_valued=${sq(` ${valued(nodes).join(' ')} `)}
_trellis() {
  local cur=\${COMP_WORDS[COMP_CWORD]} prev=\${COMP_WORDS[COMP_CWORD-1]} path='' w i skip=0 REPLY
  COMPREPLY=()
  for ((i = 1; i < COMP_CWORD; i++)); do
    w=\${COMP_WORDS[i]}
    if ((skip)); then skip=0; continue; fi
    [[ $w == -- ]] && return 0
    if [[ $w == -* ]]; then
      [[ $w != *=* && $_trellis_valued == *" $w "* ]] && skip=1
      continue
    fi
    _trellis_subs "$path"
    [[ " $REPLY " == *" $w "* ]] && path=\${path:+$path }$w
  done
  if ((skip)); then
    _trellis_choices "$path" "$prev"
  elif [[ $cur == -* ]]; then
    _trellis_flags "$path"
  else
    _trellis_subs "$path"
    [[ -z $REPLY ]] && _trellis_args "$path"
  fi
  [[ -n $REPLY ]] && COMPREPLY=($(compgen -W "$REPLY" -- "$cur"))
  return 0
}
complete -o default -F _trellis trellis
`;
}

export function zshScript(nodes: Node[]): string {
  const esc = (s: string) => s.replace(/\\/g, '\\\\').replace(/:/g, '\\:');
  // Keys are '.' + the command path ('.' for trellis itself, '.agents list'), choices '.PATH|FLAG'.
  const assoc = (name: string, f: (n: Node) => string[]) => `${name}=(\n${nodes.map((n) => [n.path, f(n)] as const).filter(([, w]) => w.length)
    .map(([p, w]) => `  ${sq(`.${p}`)} ${sq(w.join('\n'))}`).join('\n')}\n)`;
  const choices = `_trellis_choices=(\n${nodes.flatMap((n) => n.flags.filter((f) => f.choices.length)
    .flatMap((f) => f.names.map((name) => `  ${sq(`.${n.path}|${name}`)} ${sq(f.choices.join('\n'))}`))).join('\n')}\n)`;
  return `#compdef trellis
# trellis completion for zsh. Load it with:
#   source <(trellis completion zsh)
# or save it as _trellis in a directory of $fpath (before compinit runs).
typeset -gA _trellis_subs _trellis_flags _trellis_args _trellis_choices
${assoc('_trellis_subs', (n) => n.subs.map((s) => `${esc(s.name)}:${s.description}`))}
${assoc('_trellis_flags', (n) => n.flags.flatMap((f) => f.names.map((x) => `${esc(x)}:${f.description}`)))}
${assoc('_trellis_args', (n) => n.argChoices)}
${choices}
typeset -ga _trellis_valued
_trellis_valued=(${valued(nodes).map(sq).join(' ')})
_trellis() {
  local p='' w i skip=0
  local -a items subs
  for ((i = 2; i < CURRENT; i++)); do
    w=$words[i]
    if ((skip)); then skip=0; continue; fi
    [[ $w == -- ]] && { _files; return; }
    if [[ $w == -* ]]; then
      [[ $w != *=* && \${_trellis_valued[(Ie)$w]} -gt 0 ]] && skip=1
      continue
    fi
    subs=(\${(f)_trellis_subs[.$p]})
    subs=(\${subs%%:*})
    (( \${subs[(Ie)$w]} )) && p=\${p:+$p }$w
  done
  if ((skip)); then
    items=(\${(f)_trellis_choices[.$p|$words[CURRENT-1]]})
    if (( $#items )); then compadd -a items; else _files; fi
  elif [[ $PREFIX == -* ]]; then
    items=(\${(f)_trellis_flags[.$p]})
    _describe -t options option items
  else
    items=(\${(f)_trellis_subs[.$p]})
    if (( $#items )); then
      _describe -t commands command items
    else
      items=(\${(f)_trellis_args[.$p]})
      if (( $#items )); then compadd -a items; else _files; fi
    fi
  fi
}
if [[ $funcstack[1] == _trellis ]]; then
  _trellis "$@"
else
  (( $+functions[compdef] )) || { autoload -Uz compinit && compinit; }
  compdef _trellis trellis
fi
`;
}

export function fishScript(nodes: Node[]): string {
  const fq = (s: string) => `'${s.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
  const subs = nodes.filter((n) => n.subs.length)
    .map((n) => `    case ${fq(n.path)}\n      printf '%s\\n' ${n.subs.map((s) => fq(s.name)).join(' ')}`).join('\n');
  const lines: string[] = [];
  for (const n of nodes) {
    const at = `-n ${fq(`__trellis_at ${fq(n.path)}`)}`;
    if (n.subs.length) lines.push(`complete -c trellis ${at} -f`);
    for (const s of n.subs) lines.push(`complete -c trellis ${at} -a ${fq(s.name)} -d ${fq(s.description)}`);
    if (n.argChoices.length) lines.push(`complete -c trellis ${at} -f -a ${fq(n.argChoices.join(' '))}`);
    for (const f of n.flags) {
      const names = [f.short && f.short.length === 2 ? `-s ${f.short.slice(1)}` : '', f.long ? `-l ${f.long.slice(2)}` : ''].filter(Boolean).join(' ');
      const value = f.choices.length ? ` -x -a ${fq(f.choices.join(' '))}` : f.takesValue ? ' -r' : '';
      lines.push(`complete -c trellis ${at} ${names}${value} -d ${fq(f.description)}`);
    }
  }
  return `# trellis completion for fish. Load it with:
#   trellis completion fish | source
# or for good: trellis completion fish > ~/.config/fish/completions/trellis.fish
set -g __trellis_valued ${valued(nodes).map(fq).join(' ')}
function __trellis_subs
  switch $argv[1]
${subs}
  end
end
function __trellis_path
  set -l tokens (commandline -opc)
  set -e tokens[1]
  set -l p ''
  set -l skip 0
  for w in $tokens
    if test $skip = 1
      set skip 0
      continue
    end
    if test "$w" = '--'
      echo ' --'
      return
    end
    if string match -q -- '-*' $w
      if not string match -q -- '*=*' $w; and contains -- $w $__trellis_valued
        set skip 1
      end
      continue
    end
    if contains -- $w (__trellis_subs $p)
      set p (string trim -- "$p $w")
    end
  end
  echo $p
end
function __trellis_at
  set -l p (__trellis_path)
  test "$p" = "$argv[1]"
end
${lines.join('\n')}
`;
}

export function completionScript(program: Command, shell: Shell): string {
  const nodes = commandTree(program);
  return shell === 'bash' ? bashScript(nodes) : shell === 'zsh' ? zshScript(nodes) : fishScript(nodes);
}

export function addCompletionCommand(program: Command): void {
  program.command('completion')
    .description('print a shell completion script (commands, subcommands, flags and their choices)')
    .addArgument(new Argument('<shell>', 'bash, zsh or fish').choices(SHELLS))
    .addHelpText('after', `
Load it in the current shell:
  bash:  source <(trellis completion bash)
  zsh:   source <(trellis completion zsh)
  fish:  trellis completion fish | source
For every new shell: add that line to ~/.bashrc or ~/.zshrc, or for fish
  trellis completion fish > ~/.config/fish/completions/trellis.fish`)
    .action((shell: Shell) => { print(completionScript(program, shell).trimEnd()); });
}
