/**
 * Packs on the admin port (AdminPacks): thin handlers over hub/packs. The request size is
 * bounded by the server's max receive length (config maxMessageBytes); the pack limits (files,
 * bytes) and every file are checked again by hub/packs.
 */
import type * as grpc from '@grpc/grpc-js';
import { v1 } from '../../common/proto.js';
import { TrellisError } from '../../common/errors.js';
import { packNameOf, type PackFile } from '../../common/packs/index.js';
import { unary, type WrapDeps, type CallContext } from './wrap.js';
import { readTenant, writeTenant } from './admin.js';
import { listActions, getAction, type PackDoc, type CatalogAction } from '../packs/index.js';
import type { PackDef } from '../../common/automation/types.js';
import { authorizePackInstall } from '../rights/index.js';
import { authorize as authorizePermission } from '../authz/index.js';
import { secretLookup } from './refs.js';
import type { HubComponents } from '../components.js';
import type { LiveRule } from '../rules/index.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

const S = '/trellis.v1.AdminPacks';

/** PackInfo; the definition (with script bodies) only when asked for one pack. */
export function packInfo(d: PackDoc, withDefinition: boolean): T.PackInfo {
  return {
    name: d.name, version: d.version, description: d.description, tenant: d.tenant,
    actions: d.def.actions.map((a) => a.ref), sensors: d.def.sensors.map((s) => s.ref), rules: d.def.rules.map((r) => r.ref),
    installedMs: d.installedAt, installedBy: d.installedBy,
    definitionJson: withDefinition ? Buffer.from(JSON.stringify({ ...d.def, files: d.files, sources: d.sources ?? {} })) : Buffer.alloc(0),
  };
}

const jsonBytes = (v: unknown) => (v === undefined ? Buffer.alloc(0) : Buffer.from(JSON.stringify(v)));

/** ActionInfo; the definition (with a script body) only when asked for one action, as GetPack does. */
export function actionInfo(a: CatalogAction, withDefinition: boolean): T.ActionInfo {
  return {
    ref: a.ref, pack: a.pack, name: a.name, description: a.description, runner: a.runner, timeoutMs: a.timeoutMs, runAs: a.runAs,
    parameters: Object.entries(a.parameters).map(([name, p]) => ({
      name, type: p.type, required: !!p.required, defaultJson: jsonBytes(p.default), enumJson: jsonBytes(p.enum), description: p.description ?? '', secret: !!p.secret,
    })),
    builtin: a.builtin, tenant: a.tenant, permission: a.permission, howToRun: a.howToRun, file: a.file,
    definitionJson: withDefinition && a.def ? Buffer.from(JSON.stringify(a.def)) : Buffer.alloc(0),
  };
}

function actor(ctx: CallContext): string {
  const p = ctx.principal!;
  return p.kind === 'apikey' ? `apikey:${p.apiKeyId}@${p.username}` : p.username;
}

/** The one tenant a read of a single pack looks in (not `*`). */
function oneTenant(ctx: CallContext): string {
  const t = readTenant(ctx);
  if (t === undefined) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'name one tenant to show a pack (x-trellis-tenant / --tenant)');
  return t;
}

const plural = (n: number, w: string) => `${n} ${w}${n === 1 ? '' : 's'}`;

/** "a (calls web.x), ops.b (pack ops, calls web.y)", the first 20. */
function describeCallers(rules: readonly LiveRule[]): string {
  const shown = rules.slice(0, 20).map((r) => `${r.def.ref} (${r.def.pack ? `pack ${r.def.pack}, ` : ''}calls ${r.def.action.ref})`);
  return shown.join(', ') + (rules.length > 20 ? ` and ${rules.length - 20} more` : '');
}

const nameOf = (s: string) => String(s ?? '').slice(0, 64);

export function addPackServices(server: grpc.Server, c: HubComponents, deps: WrapDeps): void {
  server.addService(v1.AdminPacks.service, {
    InstallPack: unary<T.InstallPackRequest__Output, T.PackInfo>(deps, `${S}/InstallPack`, async (req, ctx) => {
      const files: PackFile[] = (req.files ?? []).map((f) => ({ path: f.path, content: f.content, mode: f.mode }));
      ctx.target = `pack:${packNameOf(files) ?? '?'}`;
      const tenant = writeTenant(ctx);
      const p = ctx.principal!;
      // Installing is acting through everything in the pack: the installer needs what it needs
      // (hub/rights), and its rules then act with the installer's rights.
      const authorize = async (def: PackDef) => {
        const secrets = await authorizePackInstall(p, tenant, def, secretLookup(c.kv, tenant, { username: p.username, isAdmin: p.grants.isAdmin }));
        if (secrets.length > 0) ctx.detail = `pack uses secrets: ${secrets.sort().join(', ')}`;
      };
      // A new version may not drop an action that enabled rules outside the pack still call.
      const guard = (next: PackDef, cur: PackDoc | undefined) => {
        if (!cur) return;
        const kept = new Set(next.actions.map((a) => a.ref));
        const dropped = new Set(cur.def.actions.map((a) => a.ref).filter((r) => !kept.has(r)));
        const users = c.rules.callers(tenant, (ref) => dropped.has(ref), cur.name);
        if (users.length > 0) {
          throw new TrellisError('TRELLIS_E_IN_USE', `pack ${next.name} ${next.version} drops ${plural(dropped.size, 'action')} that enabled rules outside it still call: ${describeCallers(users)}; change or disable those rules first (trellis rules disable NAME)`);
        }
      };
      const d = await c.packs.install(tenant, files, { by: actor(ctx), force: req.force, authorize, guard });
      ctx.target = `pack:${d.name}`;
      return packInfo(d, true);
    }),
    ListPacks: unary<T.ListPacksRequest__Output, T.ListPacksResponse>(deps, `${S}/ListPacks`, async (_req, ctx) => {
      ctx.target = 'packs';
      return { packs: c.packs.list(readTenant(ctx)).map((d) => packInfo(d, false)) };
    }),
    GetPack: unary<T.GetPackRequest__Output, T.PackInfo>(deps, `${S}/GetPack`, async (req, ctx) => {
      ctx.target = `pack:${nameOf(req.name)}`;
      return packInfo(c.packs.require(oneTenant(ctx), req.name), true);
    }),
    RemovePack: unary<T.RemovePackRequest__Output, T.RemovePackResponse>(deps, `${S}/RemovePack`, async (req, ctx) => {
      ctx.target = `pack:${nameOf(req.name)}`;
      const tenant = writeTenant(ctx);
      const disabled: string[] = [];
      // Enabled rules outside the pack that call its actions would call nothing: refuse, or (force) disable them first.
      const guard = async (cur: PackDoc) => {
        const users = c.rules.callers(tenant, (ref) => ref.startsWith(`${cur.name}.`), cur.name);
        if (users.length === 0) return;
        if (!req.force) {
          throw new TrellisError('TRELLIS_E_IN_USE', `pack ${cur.name} is used by ${plural(users.length, 'enabled rule')} outside it: ${describeCallers(users)}; disable or delete them first, or pass --force to disable them`);
        }
        // Disabling those rules is what `rules disable` does: it needs the same right (packs:install alone is not enough).
        authorizePermission(ctx.principal!, 'rules:write');
        for (const r of users) {
          await c.rules.setEnabled(tenant, r.def.ref, false, ctx.principal!.username);
          disabled.push(r.def.ref);
        }
        ctx.detail = `disabled rules: ${disabled.join(', ')}`.slice(0, 600);
        c.log.warn({ component: 'packs', tenant, pack: cur.name, disabled, user: ctx.principal!.username }, 'pack removed with --force: rules that called its actions disabled');
      };
      await c.packs.remove(tenant, req.name, { guard });
      return { disabledRules: disabled };
    }),
    ListActions: unary<T.ListActionsRequest__Output, T.ListActionsResponse>(deps, `${S}/ListActions`, async (req, ctx) => {
      ctx.target = 'actions';
      return { actions: listActions(c.packs, readTenant(ctx), nameOf(req.pack)).map((a) => actionInfo(a, false)) };
    }),
    GetAction: unary<T.GetActionRequest__Output, T.ActionInfo>(deps, `${S}/GetAction`, async (req, ctx) => {
      const ref = String(req.ref ?? '').slice(0, 130);
      ctx.target = `action:${ref}`;
      return actionInfo(getAction(c.packs, oneTenant(ctx), ref), true);
    }),
  });
}
