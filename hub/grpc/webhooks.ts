/**
 * Webhooks on the admin port (AdminWebhooks): thin handlers over hub/webhooks. The secret is in
 * the CreateWebhook response only (shown once); it is never logged or audited.
 */
import * as grpc from '@grpc/grpc-js';
import { v1 } from '../../common/proto.js';
import { unary, type WrapDeps, type CallContext } from './wrap.js';
import { readTenant, writeTenant } from './admin.js';
import { webhookPath } from '../webhooks/index.js';
import type { HubComponents } from '../components.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

const S = '/trellis.v1.AdminWebhooks';

function actor(ctx: CallContext): string {
  const p = ctx.principal!;
  return p.kind === 'apikey' ? `apikey:${p.apiKeyId}@${p.username}` : p.username;
}

const target = (ctx: CallContext, name: string) => `webhook:${ctx.tenant}/${String(name).slice(0, 64)}`;

export function addWebhookServices(server: grpc.Server, c: HubComponents, deps: WrapDeps): void {
  server.addService(v1.AdminWebhooks.service, {
    CreateWebhook: unary<T.CreateWebhookRequest__Output, T.CreateWebhookResponse>(deps, `${S}/CreateWebhook`, async (req, ctx) => {
      ctx.target = target(ctx, req.name);
      const tenant = writeTenant(ctx);
      const r = await c.webhooks.create({ tenant, name: req.name, description: req.description, createdBy: actor(ctx) });
      return { info: r.info, secret: r.secret, path: webhookPath(tenant, r.info.name) };
    }),
    ListWebhooks: unary<T.ListWebhooksRequest__Output, T.ListWebhooksResponse>(deps, `${S}/ListWebhooks`, async (_req, ctx) => {
      ctx.target = `webhook:${ctx.tenant}/*`;
      return { webhooks: await c.webhooks.list(readTenant(ctx)) };
    }),
    DeleteWebhook: unary<T.DeleteWebhookRequest__Output, T.DeleteWebhookResponse>(deps, `${S}/DeleteWebhook`, async (req, ctx) => {
      ctx.target = target(ctx, req.name);
      await c.webhooks.delete(writeTenant(ctx), req.name);
      return {};
    }),
  });
}
