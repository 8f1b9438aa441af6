/** `trellis cluster status`: the hubs of a cluster (several hubs on one PostgreSQL store), from the hubs registry. */
import type { Command } from 'commander';
import { call, withClients } from '../client.js';
import { ago, clean, table, when } from '../format.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

export function renderClusterStatus(s: T.ClusterStatusResponse__Output, now = Date.now()): string {
  const rows = s.hubs.map((h) => [
    `${clean(h.name)}${h.self ? ' *' : ''}`, h.id, h.addresses.map(clean).join(','), String(h.agents),
    `${ago(Number(h.lastHeartbeatMs), now)}${h.stale ? ' STALE' : ''}`, when(Number(h.startedAtMs)), clean(h.version), `${clean(h.host)}:${h.pid}`,
  ]);
  const stale = s.hubs.filter((h) => h.stale).length;
  const store = s.store === 'postgres' ? 'postgres (shared by every hub)' : `${clean(s.store)} (this hub only: a cluster needs the postgres store)`;
  return [
    table(rows, ['HUB', 'ID', 'ADDRESSES', 'AGENTS', 'HEARTBEAT', 'STARTED', 'VERSION', 'PROCESS']),
    '',
    `store: ${store}; ${s.hubs.length} hub(s), ${stale} stale (no heartbeat for ${Math.round(Number(s.staleAfterMs) / 1000)}s); * = the hub that answered`,
  ].join('\n');
}

export function addClusterCommands(program: Command): void {
  const cluster = program.command('cluster').description('several hubs on one PostgreSQL store');
  cluster.command('status')
    .description('list the hubs: addresses, connected agents, last heartbeat (stale ones marked), version; administrators only')
    .option('--json', 'one JSON object: hubs (id, name, addresses, version, startedAtMs, agents, lastHeartbeatMs, stale, self, host, pid), store, nowMs, staleAfterMs')
    .addHelpText('after', `
Every hub records itself in the shared store every cluster.heartbeatInterval (hub.json, default 5s); a hub
silent for longer than cluster.staleAfter (default 20s) is marked STALE: stopped by kill, crashed or cut
off from the database. A hub stopped cleanly removes its record; a stale one is forgotten after an hour.
On a lowdb store the list is the answering hub alone. Ask any hub: they all read the same registry.`)
    .action((o) => withClients(async (c) => {
      const s = await call<T.ClusterStatusRequest, T.ClusterStatusResponse__Output>(c, c.cluster, c.cluster.GetClusterStatus, {});
      process.stdout.write(o.json ? JSON.stringify(s) + '\n' : renderClusterStatus(s) + '\n');
    }));
}
