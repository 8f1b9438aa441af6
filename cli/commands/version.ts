/** `trellis version`: the CLI's version at once; the hub's when a context (or TRELLIS_HUB) says where it is. */
import { existsSync } from 'node:fs';
import type { Command } from 'commander';
import { TRELLIS_VERSION } from '../../common/version.js';
import { print } from '../format.js';
import { profilePath } from '../profile.js';

export function addVersionCommand(program: Command): void {
  program.command('version').description('show the CLI and hub versions').action(async () => {
    print(`trellis ${TRELLIS_VERSION}`);
    // Not logged in: the CLI version only, without loading gRPC and the wire contract.
    if (!process.env.TRELLIS_HUB && !existsSync(profilePath())) return;
    try {
      const { call, withClients } = await import('../client.js');
      await withClients(async (c) => {
        const r = await call<object, { version: string; api: string; caFingerprint: string; canIssue: boolean }>(c, c.version, c.version.GetVersion as never, {}, 5_000);
        print(`hub ${r.version} (${r.api}), CA sha256:${r.caFingerprint}${r.canIssue ? '' : ', cannot issue'}`);
      });
    } catch { /* hub unreachable or not logged in: CLI version only */ }
  });
}
