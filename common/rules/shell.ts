/**
 * `shell: true` commands are one template run by `/bin/sh -c`: every value substituted into it
 * is shell code unless it is quoted. The rule (checked when a pack is validated and again when
 * an action is rendered): every substitution ends in `| quote` (POSIX single-quoting) and stands
 * where the shell reads a word unquoted — not inside '…' or "…" (inside double quotes `$(…)`
 * still runs, inside single quotes the quoting of `| quote` is undone), not after `\` or `$`.
 * Refusing is chosen over quoting automatically: an author who wrote `"{{ x }}"` would get
 * different text than they meant, silently; a refusal names the field and the fix.
 */
import { templatePieces } from './template.js';

/** Why a shell command template is unsafe, or undefined when every substitution is quoted. */
export function shellTemplateProblem(tpl: string): string | undefined {
  let quote: '' | "'" | '"' = '';
  let escaped = false;
  let last = '';
  for (const p of templatePieces(tpl)) {
    if ('text' in p) {
      for (const ch of p.text) {
        if (escaped) escaped = false;
        else if (quote === "'") { if (ch === "'") quote = ''; }
        else if (ch === '\\') escaped = true;
        else if (quote === '"') { if (ch === '"') quote = ''; }
        else if (ch === "'" || ch === '"') quote = ch;
        last = ch;
      }
      continue;
    }
    if (!p.quoted) return `${p.src} is not quoted: with shell: true every substitution must end in | quote, e.g. {{ name | quote }}`;
    if (quote) return `${p.src} stands inside ${quote === '"' ? 'double' : 'single'} quotes, where | quote does not protect it: put it outside quotes`;
    if (escaped || last === '$') return `${p.src} follows ${escaped ? 'a backslash' : '$'}: put it where the shell reads a plain word`;
    last = "'";
  }
  return undefined;
}
