/**
 * AdminMaintenance on the admin port: turn maintenance mode on or off and see what still runs.
 * Admin-only (the method table); SetMaintenance is audited by the wrapper like every mutation.
 */
import type * as grpc from '@grpc/grpc-js';
import { v1 } from '../../common/proto.js';
import { unary, type WrapDeps, type CallContext } from './wrap.js';
import type { Maintenance } from '../maintenance/index.js';
import type { Executions } from '../executions/index.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

const S = '/trellis.v1.AdminMaintenance';

export function addMaintenanceServices(server: grpc.Server, c: { maintenance: Maintenance; executions: Executions }, deps: WrapDeps): void {
  const status = (): T.MaintenanceStatus => {
    const s = c.maintenance.status();
    const { records, total } = c.executions.unfinished(1000);
    return {
      on: s.on, sinceMs: s.sinceMs, by: s.by, message: s.message, runningCount: total,
      running: records.map((r) => ({ id: r.id, tenant: r.tenant, action: r.action, agentId: r.agentId, status: r.status, requestedBy: r.requestedBy, requestedMs: r.requestedMs })),
      refusedCalls: s.refusedCalls, refusedExecutions: s.refusedExecutions, refusedRuleFirings: s.refusedRuleFirings,
    };
  };
  const actor = (ctx: CallContext) => (ctx.principal!.kind === 'apikey' ? `apikey:${ctx.principal!.apiKeyId}@${ctx.principal!.username}` : ctx.principal!.username);
  server.addService(v1.AdminMaintenance.service, {
    SetMaintenance: unary<T.SetMaintenanceRequest__Output, T.MaintenanceStatus>(deps, `${S}/SetMaintenance`, async (req, ctx) => {
      ctx.target = 'maintenance';
      const s = await c.maintenance.set(req.on === true, actor(ctx), req.message ?? '');
      ctx.detail = s.on ? `on${s.message ? `: ${s.message.slice(0, 200)}` : ''}` : 'off';
      return status();
    }),
    GetMaintenance: unary<T.GetMaintenanceRequest__Output, T.MaintenanceStatus>(deps, `${S}/GetMaintenance`, async () => status()),
  });
}
