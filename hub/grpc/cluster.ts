/** AdminCluster: the hubs registry (hub/cluster/registry.ts) as `trellis cluster status` shows it. Administrators only (hub/authz). */
import type * as grpc from '@grpc/grpc-js';
import { v1 } from '../../common/proto.js';
import { unary, type WrapDeps } from './wrap.js';
import type { HubComponents } from '../components.js';
import type { HubRegistry } from '../cluster/registry.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

const S = '/trellis.v1.AdminCluster';

export function addClusterServices(server: grpc.Server, c: HubComponents, deps: WrapDeps, registry: HubRegistry): void {
  server.addService(v1.AdminCluster.service, {
    GetClusterStatus: unary<T.ClusterStatusRequest__Output, T.ClusterStatusResponse>(deps, `${S}/GetClusterStatus`, async () => {
      const hubs = await registry.list();
      return {
        hubs: hubs.map((h) => ({
          id: h.id, name: h.name, addresses: h.addresses, version: h.version, startedAtMs: h.startedAtMs, agents: h.agents,
          lastHeartbeatMs: h.lastHeartbeatMs, stale: h.stale, self: h.self, host: h.host, pid: h.pid,
        })),
        store: c.config.store.kind, nowMs: Date.now(), staleAfterMs: registry.staleAfterMs,
      };
    }),
  });
}
