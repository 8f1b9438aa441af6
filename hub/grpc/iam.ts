/**
 * Identity and access administration on the admin port: users, sessions, API keys, roles,
 * tenants, groups, and the platform operations not built yet (AdminSystem). Thin handlers:
 * decode, apply the rules the method table leaves to them (`self` methods, delegation), call
 * Auth/Iam, encode. Each sets ctx.target for the audit record.
 */
import * as grpc from '@grpc/grpc-js';
import { v1 } from '../../common/proto.js';
import { TrellisError } from '../../common/errors.js';
import { unary, type WrapDeps, type CallContext } from './wrap.js';
import { authorizeAdmin, authorizeDelegation, checkGrant, isAllowed, type Grant, type Permission } from '../authz/index.js';
import { sessionHandle, type ApiKeyDoc, type SessionDoc, type UserDoc } from '../auth/index.js';
import type { GroupDoc, TenantDoc } from '../iam/index.js';
import type { HubComponents } from '../components.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';
import { checkString } from '../validate.js';

const S = '/trellis.v1';

// ------------------------------------------------------------ encoders

async function userInfo(c: HubComponents, u: UserDoc, groups: GroupDoc[]): Promise<T.UserInfo> {
  // Effective access of an inactive user is nothing; resolve() says so by returning undefined.
  const eff = await c.iam.resolve(u.username);
  const lock = c.auth.lockoutSummary(u.username); // lock-outs are per source address: the latest end, failures from all
  return {
    username: u.username, roles: u.roles, tenants: u.tenants, groups: groups.filter((g) => g.members.includes(u.username)).map((g) => g.id),
    active: u.active, source: u.source ?? 'local', createdAtMs: u.createdAt, lastLoginMs: u.lastLogin ?? 0,
    lockedUntilMs: lock.lockedUntil,
    failedLogins: lock.failures,
    effectiveRoles: eff ? [...eff.roles] : [], effectiveTenants: eff ? [...eff.tenants] : [],
  };
}

function sessionInfo(s: SessionDoc, ctx: CallContext): T.SessionInfo {
  return {
    id: sessionHandle(s.id), username: s.username, createdAtMs: s.createdAt, expiresAtMs: s.expiresAt,
    sourceAddress: s.source ?? '', current: s.id === ctx.principal!.sessionId,
  };
}

function apiKeyInfo(k: ApiKeyDoc): T.ApiKeyInfo {
  return { id: k.id, owner: k.owner, name: k.name, enabled: k.enabled, createdAtMs: k.createdAt, lastUsedMs: k.lastUsed ?? 0 };
}

async function roleInfo(c: HubComponents, name: string, users?: UserDoc[], groups?: GroupDoc[]): Promise<T.RoleInfo> {
  const r = await c.iam.role(name);
  return {
    name: r.name, description: r.description, grants: r.grants, builtin: r.builtin,
    users: (users ?? (await c.auth.users())).filter((u) => u.roles.includes(name)).map((u) => u.username),
    groups: (groups ?? (await c.iam.groups())).filter((g) => g.roles.includes(name)).map((g) => g.id),
  };
}

async function tenantInfo(c: HubComponents, t: TenantDoc, users?: UserDoc[], groups?: GroupDoc[]): Promise<T.TenantInfo> {
  return {
    name: t.id, description: t.description, createdAtMs: t.createdAt,
    users: (users ?? (await c.auth.users())).filter((u) => u.tenants.includes(t.id)).map((u) => u.username),
    groups: (groups ?? (await c.iam.groups())).filter((g) => g.tenants.includes(t.id)).map((g) => g.id),
  };
}

function groupInfo(g: GroupDoc): T.GroupInfo {
  return { name: g.id, description: g.description, members: g.members, ldapGroups: g.ldapGroups, createdAtMs: g.createdAt };
}

// ------------------------------------------------------------ decoders and rules

const name64 = (v: unknown, what: string) => checkString(v, what, 64);

/** The id of a session or API key: required (the `list` command shows them). */
function idOf(v: unknown, what: string, list: string): string {
  const id = checkString(v, 'id', 64);
  if (!id) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `name the ${what} by its id: see \`${list}\``);
  return id;
}
const describe = (g: Grant) => `${g.permission}${g.scope ? `@${g.scope}` : ''}`;

function grantOf(g: T.Grant__Output | null | undefined): Grant {
  if (!g || !g.permission) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'name a permission, e.g. agents:run (see `trellis roles --help`)');
  return checkGrant({ permission: checkString(g.permission, 'permission', 64), scope: checkString(g.scope, 'scope', 200) });
}

/** Exactly one of a user and a group, as the request names them. */
function memberOf(req: { user: string; group: string }): { user?: string; group?: string } {
  return { user: name64(req.user, 'user') || undefined, group: name64(req.group, 'group') || undefined };
}
const memberTarget = (m: { user?: string; group?: string }) => (m.user ? `user:${m.user}` : `group:${m.group ?? ''}`);

/**
 * The rule for `self` objects (sessions, API keys): one's own always; another user's only with
 * `perm`. The object must exist first (NOT_FOUND), so the refusal can say what is missing.
 */
function requireOwnOr(ctx: CallContext, owner: string, perm: Permission, what: string): void {
  const p = ctx.principal!;
  if (owner !== p.username && !isAllowed(p, perm)) {
    throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `${what} belongs to another user: that needs the permission ${perm}, which ${p.username} lacks`);
  }
}

/** Lists one's own objects, or with all_users every user's (which needs `perm`). */
function listScope(ctx: CallContext, allUsers: boolean, perm: Permission): string | undefined {
  const p = ctx.principal!;
  if (!allUsers) return p.username;
  if (!isAllowed(p, perm)) throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `${p.username} lacks the permission ${perm} to list every user's`);
  return undefined;
}

/**
 * Roles apply in every tenant their holder belongs to. A non-administrator may therefore assign
 * (or unassign) a role only to a user or group whose every tenant is one of the caller's: a
 * `roles:assign` holder of tenant A cannot change what anyone does in tenant B. The refusal does
 * not name the other tenant.
 */
async function authorizeTenantReach(c: HubComponents, ctx: CallContext, m: { user?: string; group?: string }, what: string): Promise<void> {
  const p = ctx.principal!;
  if (p.grants.isAdmin) return;
  const mine = new Set(p.tenants);
  const outside = [...await c.iam.tenantsReached(m)].filter((t) => !mine.has(t));
  if (outside.length > 0) {
    throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `${p.username} may not ${what} to ${memberTarget(m)}: it belongs to ${outside.length === 1 ? 'a tenant' : 'tenants'} ${p.username} is not a member of (only administrators assign roles across tenants)`);
  }
}

const SYSTEM_METHODS = ['Upgrade', 'Rollback'] as const;

export function addIamServices(server: grpc.Server, c: HubComponents, deps: WrapDeps): void {
  const one = async (u: UserDoc) => userInfo(c, u, await c.iam.groups());

  server.addService(v1.AdminUsers.service, {
    CreateUser: unary<T.CreateUserRequest__Output, T.UserInfo>(deps, `${S}.AdminUsers/CreateUser`, async (req, ctx) => {
      const username = name64(req.username, 'username');
      ctx.target = `user:${username}`;
      const u = await c.auth.createUser({
        username, password: checkString(req.password, 'password', 4096), roles: req.roles.map((r) => name64(r, 'role')),
        tenants: req.tenants.length > 0 ? req.tenants.map((t) => name64(t, 'tenant')) : undefined,
      });
      c.log.info({ component: 'iam', user: ctx.principal!.username, created: username, roles: u.roles, tenants: u.tenants }, 'user created');
      return one(u);
    }),
    ListUsers: unary<T.ListUsersRequest__Output, T.ListUsersResponse>(deps, `${S}.AdminUsers/ListUsers`, async () => {
      const groups = await c.iam.groups();
      return { users: await Promise.all((await c.auth.users()).map((u) => userInfo(c, u, groups))) };
    }),
    GetUser: unary<T.GetUserRequest__Output, T.UserInfo>(deps, `${S}.AdminUsers/GetUser`, async (req) => one(await c.auth.user(name64(req.username, 'username')))),
    SetPassword: unary<T.SetPasswordRequest__Output, T.SetPasswordResponse>(deps, `${S}.AdminUsers/SetPassword`, async (req, ctx) => {
      const p = ctx.principal!;
      const username = name64(req.username, 'username') || p.username;
      const next = checkString(req.newPassword, 'new_password', 4096);
      ctx.target = `user:${username}`;
      if (username === p.username) {
        // One's own: prove it with the current password (a stolen session alone cannot take the account).
        if (!req.currentPassword) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'give your current password (current_password) to change it');
        await c.auth.setPassword(username, next, checkString(req.currentPassword, 'current_password', 4096));
      } else {
        authorizeAdmin(p);
        await c.auth.setPassword(username, next);
      }
      // Every other login session of the user ends: an old, possibly stolen token dies with the old password.
      const ended = await c.auth.endSessions(username, username === p.username ? p.sessionId : undefined);
      c.log.info({ component: 'iam', user: p.username, target: username, endedSessions: ended }, 'password changed');
      return {};
    }),
    SetUserActive: unary<T.SetUserActiveRequest__Output, T.UserInfo>(deps, `${S}.AdminUsers/SetUserActive`, async (req, ctx) => {
      const username = name64(req.username, 'username');
      ctx.target = `user:${username}`;
      if (!req.active && username === ctx.principal!.username) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'you cannot deactivate your own account; ask another administrator');
      const u = await c.auth.setActive(username, req.active);
      c.log.info({ component: 'iam', user: ctx.principal!.username, target: username, active: req.active }, req.active ? 'user activated' : 'user deactivated');
      return one(u);
    }),
    DeleteUser: unary<T.DeleteUserRequest__Output, T.DeleteUserResponse>(deps, `${S}.AdminUsers/DeleteUser`, async (req, ctx) => {
      const username = name64(req.username, 'username');
      ctx.target = `user:${username}`;
      if (username === ctx.principal!.username) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'you cannot delete your own account; ask another administrator');
      await c.auth.deleteUser(username);
      c.log.info({ component: 'iam', user: ctx.principal!.username, target: username }, 'user deleted with their sessions and API keys');
      return {};
    }),
    UnlockUser: unary<T.UnlockUserRequest__Output, T.UserInfo>(deps, `${S}.AdminUsers/UnlockUser`, async (req, ctx) => {
      const username = name64(req.username, 'username');
      ctx.target = `user:${username}`;
      return one(await c.auth.unlock(username));
    }),
  });

  server.addService(v1.AdminSessions.service, {
    ListSessions: unary<T.ListSessionsRequest__Output, T.ListSessionsResponse>(deps, `${S}.AdminSessions/ListSessions`, async (req, ctx) => ({
      sessions: (await c.auth.sessions(listScope(ctx, req.allUsers, 'sessions:list'))).map((s) => sessionInfo(s, ctx)),
    })),
    RevokeSession: unary<T.RevokeSessionRequest__Output, T.RevokeSessionResponse>(deps, `${S}.AdminSessions/RevokeSession`, async (req, ctx) => {
      const handle = idOf(req.id, 'session', 'trellis sessions list');
      ctx.target = `session:${handle}`;
      const s = handle.length === 16 ? (await c.auth.sessions()).find((x) => sessionHandle(x.id) === handle) : undefined;
      if (!s) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no session ${handle.slice(0, 20)}: see \`trellis sessions list\``);
      requireOwnOr(ctx, s.username, 'sessions:revoke', `session ${handle}`);
      await c.auth.revokeSession(handle, s.username);
      return {};
    }),
  });

  server.addService(v1.AdminApiKeys.service, {
    // The key is the caller's and acts as the caller: it resolves to the owner's current
    // principal on every call, so it never has more than the owner has now. A call made with
    // an API key may create further keys: they belong to the same owner and are bounded the same
    // way, and the audit record names the key that made them.
    CreateApiKey: unary<T.CreateApiKeyRequest__Output, T.CreateApiKeyResponse>(deps, `${S}.AdminApiKeys/CreateApiKey`, async (req, ctx) => {
      const p = ctx.principal!;
      const r = await c.auth.createApiKey(p.username, checkString(req.name, 'name', 128));
      ctx.target = `apikey:${r.doc.id}`;
      c.log.info({ component: 'iam', user: p.username, apiKeyId: r.doc.id, viaApiKey: p.apiKeyId }, 'API key created');
      return { key: r.key, info: apiKeyInfo(r.doc) };
    }),
    ListApiKeys: unary<T.ListApiKeysRequest__Output, T.ListApiKeysResponse>(deps, `${S}.AdminApiKeys/ListApiKeys`, async (req, ctx) => ({
      keys: (await c.auth.apiKeys(listScope(ctx, req.allUsers, 'apikeys:list'))).map(apiKeyInfo),
    })),
    SetApiKeyEnabled: unary<T.SetApiKeyEnabledRequest__Output, T.ApiKeyInfo>(deps, `${S}.AdminApiKeys/SetApiKeyEnabled`, async (req, ctx) => {
      const id = idOf(req.id, 'API key', 'trellis apikeys list');
      ctx.target = `apikey:${id}`;
      const k = await c.auth.apiKey(id);
      requireOwnOr(ctx, k.owner, 'apikeys:update', `API key ${id}`);
      return apiKeyInfo(await c.auth.setApiKeyEnabled(id, req.enabled));
    }),
    DeleteApiKey: unary<T.DeleteApiKeyRequest__Output, T.DeleteApiKeyResponse>(deps, `${S}.AdminApiKeys/DeleteApiKey`, async (req, ctx) => {
      const id = idOf(req.id, 'API key', 'trellis apikeys list');
      ctx.target = `apikey:${id}`;
      const k = await c.auth.apiKey(id);
      requireOwnOr(ctx, k.owner, 'apikeys:delete', `API key ${id}`);
      await c.auth.deleteApiKey(id);
      return {};
    }),
  });

  // Roles: a caller hands out (or takes away) only grants they hold themselves (authorizeDelegation).
  /** AssignRole and UnassignRole: the caller may only hand out (or take back) grants they hold. */
  const roleAssignment = (method: 'AssignRole' | 'UnassignRole', assign: boolean) =>
    unary<T.AssignRoleRequest__Output, T.RoleInfo>(deps, `${S}.AdminRoles/${method}`, async (req, ctx) => {
      const role = name64(req.role, 'role');
      const m = memberOf(req);
      ctx.target = `role:${role} ${memberTarget(m)}`;
      authorizeDelegation(ctx.principal!, (await c.iam.role(role)).grants, `${assign ? 'assign' : 'unassign'} role ${role}`);
      await authorizeTenantReach(c, ctx, m, `${assign ? 'assign' : 'unassign'} role ${role}`);
      await c.iam.setRoleAssignment(role, m, assign);
      return roleInfo(c, role);
    });

  server.addService(v1.AdminRoles.service, {
    CreateRole: unary<T.CreateRoleRequest__Output, T.RoleInfo>(deps, `${S}.AdminRoles/CreateRole`, async (req, ctx) => {
      const name = name64(req.name, 'name');
      ctx.target = `role:${name}`;
      const grants = req.grants.map(grantOf);
      authorizeDelegation(ctx.principal!, grants, `create role ${name}`);
      await c.iam.createRole(name, checkString(req.description, 'description', 256), grants);
      return roleInfo(c, name);
    }),
    ListRoles: unary<T.ListRolesRequest__Output, T.ListRolesResponse>(deps, `${S}.AdminRoles/ListRoles`, async () => {
      const [users, groups] = await Promise.all([c.auth.users(), c.iam.groups()]);
      return { roles: await Promise.all((await c.iam.roles()).map((r) => roleInfo(c, r.name, users, groups))) };
    }),
    GetRole: unary<T.GetRoleRequest__Output, T.RoleInfo>(deps, `${S}.AdminRoles/GetRole`, async (req) => roleInfo(c, name64(req.name, 'name'))),
    DeleteRole: unary<T.DeleteRoleRequest__Output, T.DeleteRoleResponse>(deps, `${S}.AdminRoles/DeleteRole`, async (req, ctx) => {
      const name = name64(req.name, 'name');
      ctx.target = `role:${name}`;
      authorizeDelegation(ctx.principal!, (await c.iam.role(name)).grants, `delete role ${name}`);
      await c.iam.deleteRole(name);
      return {};
    }),
    GrantPermission: unary<T.GrantPermissionRequest__Output, T.RoleInfo>(deps, `${S}.AdminRoles/GrantPermission`, async (req, ctx) => {
      const role = name64(req.role, 'role');
      const grant = grantOf(req.grant);
      ctx.target = `role:${role} grant:${describe(grant)}`;
      await c.iam.role(role);
      authorizeDelegation(ctx.principal!, [grant], `grant ${describe(grant)}`);
      await c.iam.updateRoleGrants(role, (gs) => [...gs, grant]);
      return roleInfo(c, role);
    }),
    RevokePermission: unary<T.RevokePermissionRequest__Output, T.RoleInfo>(deps, `${S}.AdminRoles/RevokePermission`, async (req, ctx) => {
      const role = name64(req.role, 'role');
      const grant = grantOf(req.grant);
      ctx.target = `role:${role} grant:${describe(grant)}`;
      await c.iam.role(role);
      authorizeDelegation(ctx.principal!, [grant], `revoke ${describe(grant)}`);
      await c.iam.updateRoleGrants(role, (gs) => {
        const rest = gs.filter((g) => g.permission !== grant.permission || g.scope !== grant.scope);
        if (rest.length === gs.length) throw new TrellisError('TRELLIS_E_NOT_FOUND', `role ${role} has no grant ${describe(grant)}: see \`trellis roles show ${role}\``);
        return rest;
      });
      return roleInfo(c, role);
    }),
    AssignRole: roleAssignment('AssignRole', true),
    UnassignRole: roleAssignment('UnassignRole', false),
  });

  /** What still lives in a tenant and keeps it from being deleted: agents not revoked, usable join tokens. */
  const tenantInUse = async (tenant: string): Promise<string | undefined> => {
    const agents = (await c.agents.list({ tenant })).filter((a) => !a.revoked).length;
    const tokens = (await c.tokens.list(false, { tenant, admin: true })).length;
    const parts = [
      ...(agents ? [`${agents} agent(s) (\`trellis agents revoke\`)`] : []),
      ...(tokens ? [`${tokens} usable join token(s) (\`trellis tokens revoke\`)`] : []),
    ];
    return parts.length ? parts.join(' and ') : undefined;
  };

  server.addService(v1.AdminTenants.service, {
    CreateTenant: unary<T.CreateTenantRequest__Output, T.TenantInfo>(deps, `${S}.AdminTenants/CreateTenant`, async (req, ctx) => {
      const name = name64(req.name, 'name');
      ctx.target = `tenant:${name}`;
      return tenantInfo(c, await c.iam.createTenant(name, checkString(req.description, 'description', 256)));
    }),
    ListTenants: unary<T.ListTenantsRequest__Output, T.ListTenantsResponse>(deps, `${S}.AdminTenants/ListTenants`, async () => {
      const [users, groups] = await Promise.all([c.auth.users(), c.iam.groups()]);
      return { tenants: await Promise.all((await c.iam.tenants()).map((t) => tenantInfo(c, t, users, groups))) };
    }),
    GetTenant: unary<T.GetTenantRequest__Output, T.TenantInfo>(deps, `${S}.AdminTenants/GetTenant`, async (req) => tenantInfo(c, await c.iam.tenant(name64(req.name, 'name')))),
    DeleteTenant: unary<T.DeleteTenantRequest__Output, T.DeleteTenantResponse>(deps, `${S}.AdminTenants/DeleteTenant`, async (req, ctx) => {
      const name = name64(req.name, 'name');
      ctx.target = `tenant:${name}`;
      await c.iam.deleteTenant(name, tenantInUse);
      return {};
    }),
    AddTenantMember: unary<T.TenantMemberRequest__Output, T.TenantInfo>(deps, `${S}.AdminTenants/AddTenantMember`, async (req, ctx) => {
      const tenant = name64(req.tenant, 'tenant');
      const m = memberOf(req);
      ctx.target = `tenant:${tenant} ${memberTarget(m)}`;
      await c.iam.setTenantMembership(tenant, m, true);
      return tenantInfo(c, await c.iam.tenant(tenant));
    }),
    RemoveTenantMember: unary<T.TenantMemberRequest__Output, T.TenantInfo>(deps, `${S}.AdminTenants/RemoveTenantMember`, async (req, ctx) => {
      const tenant = name64(req.tenant, 'tenant');
      const m = memberOf(req);
      ctx.target = `tenant:${tenant} ${memberTarget(m)}`;
      await c.iam.setTenantMembership(tenant, m, false);
      return tenantInfo(c, await c.iam.tenant(tenant));
    }),
  });

  server.addService(v1.AdminGroups.service, {
    CreateGroup: unary<T.CreateGroupRequest__Output, T.GroupInfo>(deps, `${S}.AdminGroups/CreateGroup`, async (req, ctx) => {
      const name = name64(req.name, 'name');
      ctx.target = `group:${name}`;
      if (req.ldapGroups.length > 64) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'a group maps at most 64 directory groups');
      const ldap = req.ldapGroups.map((l) => checkString(l, 'ldap group', 256).trim());
      if (ldap.some((l) => !l)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'an empty directory group name');
      return groupInfo(await c.iam.createGroup(name, checkString(req.description, 'description', 256), [...new Set(ldap)]));
    }),
    ListGroups: unary<T.ListGroupsRequest__Output, T.ListGroupsResponse>(deps, `${S}.AdminGroups/ListGroups`, async () => ({
      groups: (await c.iam.groups()).map(groupInfo),
    })),
    GetGroup: unary<T.GetGroupRequest__Output, T.GroupInfo>(deps, `${S}.AdminGroups/GetGroup`, async (req) => groupInfo(await c.iam.group(name64(req.name, 'name')))),
    DeleteGroup: unary<T.DeleteGroupRequest__Output, T.DeleteGroupResponse>(deps, `${S}.AdminGroups/DeleteGroup`, async (req, ctx) => {
      const name = name64(req.name, 'name');
      ctx.target = `group:${name}`;
      await c.iam.deleteGroup(name);
      return {};
    }),
    AddGroupMember: unary<T.GroupMemberRequest__Output, T.GroupInfo>(deps, `${S}.AdminGroups/AddGroupMember`, async (req, ctx) => {
      const group = name64(req.group, 'group');
      ctx.target = `group:${group} user:${String(req.user).slice(0, 64)}`;
      return groupInfo(await c.iam.setGroupMember(group, name64(req.user, 'user'), true));
    }),
    RemoveGroupMember: unary<T.GroupMemberRequest__Output, T.GroupInfo>(deps, `${S}.AdminGroups/RemoveGroupMember`, async (req, ctx) => {
      const group = name64(req.group, 'group');
      ctx.target = `group:${group} user:${String(req.user).slice(0, 64)}`;
      return groupInfo(await c.iam.setGroupMember(group, name64(req.user, 'user'), false));
    }),
  });

  // Platform operations: in the contract, not built yet. The wrapper's admin check runs first,
  // so a non-administrator learns nothing beyond PERMISSION_DENIED.
  server.addService(v1.AdminSystem.service, Object.fromEntries(SYSTEM_METHODS.map((m) => [m,
    unary<T.SystemRequest__Output, T.SystemResponse>(deps, `${S}.AdminSystem/${m}`, async () => {
      throw new TrellisError('TRELLIS_E_UNIMPLEMENTED', `${m} is not available in this release of the hub; nothing was changed`);
    }),
  ])));
}
