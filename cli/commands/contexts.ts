/** `trellis context list|use|delete`: named logins (hub, pinned CA, token), one current. */
import type { Command } from 'commander';
import { TrellisError } from '../../common/errors.js';
import { adminClients, call } from '../client.js';
import { currentContext, deleteContext, listContexts, readContext, checkContextName, useContext, type Profile } from '../profile.js';
import { print, printErr, table, when } from '../format.js';

/** Revokes a context's login token at its hub (best effort: an expired or revoked one is fine; a hub that is down is said). */
export async function revokeToken(p: Profile): Promise<void> {
  if (!p.token || p.token.startsWith('tak1_')) return;
  const c = adminClients(p.hub, p.caPem, p.token);
  try {
    await call(c, c.auth, c.auth.Logout, {}, 5_000);
  } catch (e) {
    const code = (e as TrellisError).code;
    if (code !== 'TRELLIS_E_UNAUTHENTICATED') printErr(`trellis: could not revoke the previous token of context ${p.context ?? '-'} at ${p.hub} (${code}); it expires ${when(p.expiresAtMs)}`);
  } finally { c.close(); }
}

export function addContextCommands(program: Command): void {
  const ctx = program.command('context').description('named logins: each a hub, its pinned CA and a token (`trellis login --context NAME`)')
    .addHelpText('after', '\nTRELLIS_CONTEXT=NAME picks a context for one command. Context `default` is the file profile.json.');

  ctx.command('list').description('list contexts; * marks the current one').option('--json', 'JSON output').action((o) => {
    const cur = currentContext();
    const rows = listContexts().map((n) => ({ n, p: readContext(n) }));
    if (o.json) {
      print(JSON.stringify(rows.map(({ n, p }) => ({ name: n, current: n === cur, hub: p?.hub, user: p?.username, tenant: p?.tenant, loggedIn: !!p?.token && (p?.expiresAtMs ?? 0) > Date.now(), expiresAtMs: p?.expiresAtMs })), null, 2));
      return;
    }
    if (rows.length === 0) { print('no contexts: log in with `trellis login --hub HOST:7444 --user NAME [--context NAME]`'); return; }
    print(table(rows.map(({ n, p }) => [n === cur ? '*' : '', n, p?.hub ?? '-', p?.username || '-', p?.tenant || '-',
      !p?.token ? 'logged out' : p.expiresAtMs <= Date.now() ? 'expired' : `valid until ${when(p.expiresAtMs)}`]), ['', 'NAME', 'HUB', 'USER', 'TENANT', 'TOKEN']));
  });

  ctx.command('use <name>').description('make NAME the current context').action(async (name: string) => {
    if (!readContext(checkContextName(name))) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no context ${name}: see \`trellis context list\`, or create it with \`trellis login --context ${name} --hub HOST:7444 --user NAME\``);
    await useContext(name);
    print(`current context: ${name}`);
  });

  ctx.command('delete <name>').description('revoke the context\'s token at its hub (if reachable) and forget the context').action(async (name: string) => {
    const p = readContext(checkContextName(name));
    if (!p) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no context ${name}: see \`trellis context list\``);
    await revokeToken(p);
    deleteContext(name);
    print(`context ${name} deleted (current context: ${currentContext()})`);
  });
}
