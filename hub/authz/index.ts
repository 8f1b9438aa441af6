/**
 * Authorization as data, default deny. Every RPC of the contract has one entry in METHOD_TABLE;
 * the hub refuses to start if a served method has none (assertTableCovers). Decisions are pure
 * functions over a principal's compiled grants.
 */
import { TrellisError } from '../../common/errors.js';

export type Requirement =
  | { kind: 'open' } // no credentials at all (Version)
  | { kind: 'join-token' } // the join token in the request is the credential (Enroll)
  | { kind: 'agent-cert' } // verified client certificate on the agent port
  | { kind: 'login' } // user name and password in the request
  | { kind: 'self' } // any authenticated caller, acting on its own session, keys or password
  | { kind: 'admin' } // platform administration: only holders of the `*` platform grant
  | { kind: 'perm'; perm: Permission }
  // The permission held at any scope (platform, a pack or an action); the handler checks it again
  // at the scope of the resource the call names (a pack-scoped grant must reach RunAction).
  | { kind: 'perm-scoped'; perm: Permission };

/** Every permission, with what it allows. The README's permission table lists the same. */
export const PERMISSIONS = {
  'agents:list': 'list agents of the tenant and see their details',
  'agents:get': 'see one agent',
  'agents:revoke': 'revoke an agent certificate and cut its connection',
  'agents:run': 'run ad-hoc commands on agents',
  'agents:label': 'set and remove agent labels (labels pick which edge rules, sensors and their sealed secrets an agent receives)',
  'tokens:create': 'create join tokens in the tenant',
  'tokens:list': 'list join tokens of the tenant',
  'tokens:revoke': 'revoke join tokens',
  'certs:read': 'see the CA, the hub certificate and the CRL',
  'certs:replace': 'replace the hub serving certificate',
  'users:create': 'create local users',
  'users:list': 'list users',
  'users:get': 'see one user',
  'users:update': 'change another user\'s password, activate or deactivate, unlock',
  'users:delete': 'delete users',
  'sessions:list': 'list every user\'s login sessions',
  'sessions:revoke': 'revoke another user\'s login session',
  'apikeys:create': 'create API keys (acting as their owner, never more)',
  'apikeys:list': 'list every user\'s API keys',
  'apikeys:update': 'enable or disable another user\'s API keys',
  'apikeys:delete': 'delete another user\'s API keys',
  'roles:create': 'create roles',
  'roles:list': 'list roles',
  'roles:get': 'see one role',
  'roles:update': 'grant and revoke permissions of a role',
  'roles:assign': 'assign roles to users and groups, and unassign them',
  'roles:delete': 'delete roles',
  'audit:read': 'read the audit log',
  'actions:execute': 'run pack actions (platform, pack:<name> or action:<pack>.<name>)',
  'packs:install': 'install and remove packs; installing also needs what the pack\'s contents use: actions:execute on the pack (and on actions its rules call), agents:run for a command sensor, kv:read and secrets:use for what it references',
  'packs:list': 'list packs',
  'kv:read': 'read datastore keys (ciphertext for secrets)',
  'kv:write': 'write and delete datastore keys',
  'kv:decrypt': 'read secrets in clear',
  // kv:decrypt implies secrets:use (hub/rights mayUseSecrets).
  'secrets:use': 'use secrets in commands and parameters one chooses (run --env, action parameters, re-runs, rules, packs); equivalent to reading them (kv:decrypt implies it)',
  'rules:read': 'list and show rules',
  'rules:write': 'create, change and delete rules',
  'executions:read': 'list and follow executions',
  'executions:cancel': 'cancel and re-run executions',
  'events:read': 'follow the live event stream',
  'webhooks:manage': 'create and delete webhooks',
  'webhooks:post': 'send events to webhooks with an API key',
  'metrics:read': 'read GET /metrics on the web port (Prometheus text format) with an API key',
} as const;
export type Permission = keyof typeof PERMISSIONS;

export function isPermission(p: string): p is Permission {
  return Object.prototype.hasOwnProperty.call(PERMISSIONS, p);
}

const S = 'trellis.v1';
const perm = (p: Permission): Requirement => ({ kind: 'perm', perm: p });
const ADMIN: Requirement = { kind: 'admin' };
const SELF: Requirement = { kind: 'self' };

export const METHOD_TABLE: Readonly<Record<string, Requirement>> = Object.freeze({
  [`/${S}.Version/GetVersion`]: { kind: 'open' },
  [`/${S}.Enrollment/Enroll`]: { kind: 'join-token' },
  [`/${S}.AgentChannel/Connect`]: { kind: 'agent-cert' },
  [`/${S}.AgentChannel/Renew`]: { kind: 'agent-cert' },
  [`/${S}.AdminAuth/Login`]: { kind: 'login' },
  [`/${S}.AdminAuth/Logout`]: SELF,
  [`/${S}.AdminAuth/WhoAmI`]: SELF,
  [`/${S}.AdminJoinTokens/CreateJoinToken`]: perm('tokens:create'),
  [`/${S}.AdminJoinTokens/ListJoinTokens`]: perm('tokens:list'),
  [`/${S}.AdminJoinTokens/RevokeJoinToken`]: perm('tokens:revoke'),
  [`/${S}.AdminAgents/ListAgents`]: perm('agents:list'),
  [`/${S}.AdminAgents/GetAgent`]: perm('agents:get'),
  [`/${S}.AdminAgents/RevokeAgent`]: perm('agents:revoke'),
  [`/${S}.AdminAgents/SetAgentLabels`]: perm('agents:label'),
  // Pruning revokes what it deletes: the same power as revoking.
  [`/${S}.AdminAgents/PruneAgents`]: perm('agents:revoke'),
  [`/${S}.AdminCerts/GetCertificates`]: perm('certs:read'),
  [`/${S}.AdminCerts/GetCrl`]: perm('certs:read'),
  [`/${S}.AdminCerts/ReplaceHubCertificate`]: ADMIN,
  [`/${S}.AdminCerts/IssueHubCertificate`]: ADMIN,
  // CA rotation changes what every agent and client trusts: platform administration, like the hub certificate.
  [`/${S}.AdminCa/RotateStart`]: ADMIN,
  [`/${S}.AdminCa/GetRotation`]: perm('certs:read'),
  [`/${S}.AdminCa/RotateCommit`]: ADMIN,
  [`/${S}.AdminCa/RotateRollback`]: ADMIN,
  [`/${S}.AdminRuns/Run`]: perm('agents:run'),
  // Users, tenants and groups are platform administration.
  [`/${S}.AdminUsers/CreateUser`]: ADMIN,
  [`/${S}.AdminUsers/ListUsers`]: ADMIN,
  [`/${S}.AdminUsers/GetUser`]: ADMIN,
  [`/${S}.AdminUsers/SetPassword`]: SELF, // another user's password: the handler requires admin
  [`/${S}.AdminUsers/SetUserActive`]: ADMIN,
  [`/${S}.AdminUsers/DeleteUser`]: ADMIN,
  [`/${S}.AdminUsers/UnlockUser`]: ADMIN,
  [`/${S}.AdminSessions/ListSessions`]: SELF, // all users: sessions:list
  [`/${S}.AdminSessions/RevokeSession`]: SELF, // another's: sessions:revoke
  [`/${S}.AdminApiKeys/CreateApiKey`]: perm('apikeys:create'),
  [`/${S}.AdminApiKeys/ListApiKeys`]: SELF, // all users: apikeys:list
  [`/${S}.AdminApiKeys/SetApiKeyEnabled`]: SELF, // another's: apikeys:update
  [`/${S}.AdminApiKeys/DeleteApiKey`]: SELF, // another's: apikeys:delete
  [`/${S}.AdminRoles/CreateRole`]: perm('roles:create'),
  [`/${S}.AdminRoles/ListRoles`]: perm('roles:list'),
  [`/${S}.AdminRoles/GetRole`]: perm('roles:get'),
  [`/${S}.AdminRoles/DeleteRole`]: perm('roles:delete'),
  [`/${S}.AdminRoles/GrantPermission`]: perm('roles:update'),
  [`/${S}.AdminRoles/RevokePermission`]: perm('roles:update'),
  [`/${S}.AdminRoles/AssignRole`]: perm('roles:assign'),
  [`/${S}.AdminRoles/UnassignRole`]: perm('roles:assign'),
  [`/${S}.AdminTenants/CreateTenant`]: ADMIN,
  [`/${S}.AdminTenants/ListTenants`]: ADMIN,
  [`/${S}.AdminTenants/GetTenant`]: ADMIN,
  [`/${S}.AdminTenants/DeleteTenant`]: ADMIN,
  [`/${S}.AdminTenants/AddTenantMember`]: ADMIN,
  [`/${S}.AdminTenants/RemoveTenantMember`]: ADMIN,
  [`/${S}.AdminGroups/CreateGroup`]: ADMIN,
  [`/${S}.AdminGroups/ListGroups`]: ADMIN,
  [`/${S}.AdminGroups/GetGroup`]: ADMIN,
  [`/${S}.AdminGroups/DeleteGroup`]: ADMIN,
  [`/${S}.AdminGroups/AddGroupMember`]: ADMIN,
  [`/${S}.AdminGroups/RemoveGroupMember`]: ADMIN,
  [`/${S}.AdminAudit/ListAudit`]: ADMIN,
  [`/${S}.AdminKv/Set`]: perm('kv:write'),
  [`/${S}.AdminKv/Get`]: perm('kv:read'), // decrypt: the handler also requires kv:decrypt (and audits it)
  [`/${S}.AdminKv/List`]: perm('kv:read'),
  [`/${S}.AdminKv/Delete`]: perm('kv:write'),
  [`/${S}.AdminKv/RotateKey`]: ADMIN,
  [`/${S}.AdminPacks/InstallPack`]: perm('packs:install'),
  [`/${S}.AdminPacks/ListPacks`]: perm('packs:list'),
  [`/${S}.AdminPacks/GetPack`]: perm('packs:list'),
  [`/${S}.AdminPacks/RemovePack`]: perm('packs:install'),
  [`/${S}.AdminPacks/ListActions`]: perm('packs:list'),
  [`/${S}.AdminPacks/GetAction`]: perm('packs:list'),
  [`/${S}.AdminRules/CreateRule`]: perm('rules:write'),
  [`/${S}.AdminRules/ListRules`]: perm('rules:read'),
  [`/${S}.AdminRules/GetRule`]: perm('rules:read'),
  [`/${S}.AdminRules/SetRuleEnabled`]: perm('rules:write'),
  [`/${S}.AdminRules/DeleteRule`]: perm('rules:write'),
  [`/${S}.AdminRules/TestRule`]: perm('rules:read'),
  [`/${S}.AdminExecutions/RunAction`]: { kind: 'perm-scoped', perm: 'actions:execute' }, // checked again at the action's scope
  [`/${S}.AdminExecutions/ListExecutions`]: perm('executions:read'),
  [`/${S}.AdminExecutions/CountExecutions`]: perm('executions:read'),
  [`/${S}.AdminExecutions/GetExecution`]: perm('executions:read'),
  [`/${S}.AdminExecutions/FollowExecution`]: perm('executions:read'),
  [`/${S}.AdminExecutions/CancelExecution`]: perm('executions:cancel'),
  [`/${S}.AdminExecutions/RerunExecution`]: perm('executions:cancel'), // and actions:execute at the action's scope
  [`/${S}.AdminWebhooks/CreateWebhook`]: perm('webhooks:manage'),
  [`/${S}.AdminWebhooks/ListWebhooks`]: perm('webhooks:manage'),
  [`/${S}.AdminWebhooks/DeleteWebhook`]: perm('webhooks:manage'),
  [`/${S}.AdminSnapshots/CreateSnapshot`]: ADMIN,
  [`/${S}.AdminSnapshots/ListSnapshots`]: ADMIN,
  [`/${S}.AdminSnapshots/DownloadSnapshot`]: ADMIN,
  [`/${S}.AdminSnapshots/DeleteSnapshot`]: ADMIN,
  [`/${S}.AdminCluster/GetClusterStatus`]: ADMIN,
  // Maintenance mode: platform administration (hub/maintenance).
  [`/${S}.AdminMaintenance/SetMaintenance`]: ADMIN,
  [`/${S}.AdminMaintenance/GetMaintenance`]: ADMIN,
  [`/${S}.AdminSystem/Upgrade`]: ADMIN,
  [`/${S}.AdminSystem/Rollback`]: ADMIN,
});

/** Methods that change state: every call to them is audited, whatever its result. */
export function isMutation(path: string): boolean {
  const name = path.slice(path.lastIndexOf('/') + 1);
  return !/^(Get|List|WhoAmI|Connect)/.test(name);
}

/** Throws at start-up if any served method lacks an entry. */
export function assertTableCovers(paths: Iterable<string>): void {
  const missing = [...paths].filter((p) => !(p in METHOD_TABLE));
  if (missing.length > 0) {
    throw new TrellisError('TRELLIS_E_INTERNAL', `refusing to start: no authorization entry for ${missing.join(', ')} (add them to hub/authz METHOD_TABLE)`);
  }
}

export function requirementFor(path: string): Requirement {
  const r = METHOD_TABLE[path];
  if (!r) throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `no authorization entry for ${path}`);
  return r;
}

// ---------------------------------------------------------------- grants

/** A grant: a permission (or `*`) at a scope: '' platform, 'pack:<name>', 'action:<pack>.<name>'. */
export interface Grant { permission: string; scope: string }

const SCOPE_RE = /^(|pack:[a-z0-9][a-z0-9_-]{0,62}|action:[a-z0-9][a-z0-9_-]{0,62}\.[a-z0-9][a-z0-9_.-]{0,126})$/;

export function checkGrant(g: Grant): Grant {
  if (g.permission !== '*' && !isPermission(g.permission)) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `unknown permission "${String(g.permission).slice(0, 64)}": see \`trellis roles --help\` or the README's permission table`);
  }
  if (!SCOPE_RE.test(g.scope ?? '')) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `bad scope "${String(g.scope).slice(0, 64)}": use nothing (platform), pack:<name> or action:<pack>.<name>`);
  }
  return { permission: g.permission, scope: g.scope ?? '' };
}

/**
 * Built-in roles (they cannot be changed or deleted). A null-prototype object: role names come
 * from requests, and `BUILTIN_ROLES["toString"]` must not find Object.prototype's (found by the fuzzer).
 */
export const BUILTIN_ROLES: Readonly<Record<string, { description: string; grants: Grant[] }>> = Object.freeze(Object.assign(Object.create(null) as Record<string, { description: string; grants: Grant[] }>, {
  admin: { description: 'everything, on every tenant', grants: [{ permission: '*', scope: '' }] },
  user: {
    description: 'work inside their tenants; no administration',
    grants: ([
      'agents:list', 'agents:get', 'agents:run', 'tokens:create', 'tokens:list', 'tokens:revoke', 'certs:read',
      'apikeys:create', 'actions:execute', 'packs:list', 'kv:read', 'kv:write', 'rules:read', 'rules:write',
      'executions:read', 'executions:cancel', 'events:read',
    ] as Permission[]).map((permission) => ({ permission, scope: '' })),
  },
  observer: {
    description: 'read-only',
    grants: (['agents:list', 'agents:get', 'tokens:list', 'certs:read', 'packs:list', 'rules:read', 'executions:read', 'events:read', 'kv:read'] as Permission[])
      .map((permission) => ({ permission, scope: '' })),
  },
}));

/**
 * Grants compiled for O(1) decisions: one set of "permission\tscope" keys. Checking an action
 * tries the action scope, the pack scope and the platform scope, each for the permission and `*`.
 */
export class CompiledGrants {
  private readonly keys = new Set<string>();
  readonly isAdmin: boolean;

  constructor(grants: Iterable<Grant>) {
    for (const g of grants) this.keys.add(`${g.permission}\t${g.scope}`);
    this.isAdmin = this.keys.has('*\t');
  }

  allows(perm: Permission, resource?: { pack?: string; action?: string }): boolean {
    const k = this.keys;
    if (k.has(`${perm}\t`) || this.isAdmin) return true;
    if (resource?.pack) {
      if (k.has(`${perm}\tpack:${resource.pack}`) || k.has(`*\tpack:${resource.pack}`)) return true;
      if (resource.action) {
        const a = `action:${resource.pack}.${resource.action}`;
        if (k.has(`${perm}\t${a}`) || k.has(`*\t${a}`)) return true;
      }
    }
    return false;
  }

  /**
   * True when these grants already give everything `g` gives: `g`'s permission (or `*`) at
   * `g`'s scope or a wider one. The test for handing `g` to someone else without escalating.
   */
  covers(g: Grant): boolean {
    if (this.isAdmin) return true;
    const scopes = [g.scope];
    if (g.scope.startsWith('action:')) scopes.push(`pack:${g.scope.slice(7, g.scope.indexOf('.'))}`);
    if (g.scope) scopes.push('');
    const perms = g.permission === '*' ? ['*'] : [g.permission, '*'];
    return scopes.some((s) => perms.some((p) => this.keys.has(`${p}\t${s}`)));
  }

  /** Holds `perm` (or `*`) at some scope: platform, a pack or an action. */
  allowsAnywhere(perm: Permission): boolean {
    if (this.isAdmin) return true;
    for (const k of this.keys) if (k.startsWith(`${perm}\t`) || k.startsWith('*\t')) return true;
    return false;
  }

  get size(): number { return this.keys.size; }
}

/** What a caller is, resolved from verified credentials only. */
export interface Principal {
  kind: 'user' | 'apikey';
  username: string;
  /** Effective roles (direct and through groups). */
  roles: readonly string[];
  /** Effective tenants (direct and through groups). */
  tenants: readonly string[];
  groups: readonly string[];
  grants: CompiledGrants;
  sessionId?: string;
  sessionExpiresAt?: number;
  apiKeyId?: string;
}

export function isAllowed(principal: Principal, perm: Permission, resource?: { pack?: string; action?: string }): boolean {
  return principal.grants.allows(perm, resource);
}

export function authorize(principal: Principal, perm: Permission, resource?: { pack?: string; action?: string }): void {
  if (!isAllowed(principal, perm, resource)) {
    const on = resource?.action ? ` on action ${resource.pack}.${resource.action}` : resource?.pack ? ` on pack ${resource.pack}` : '';
    throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `${principal.username} lacks the permission ${perm}${on}`);
  }
}

/** Passes when the principal holds `perm` at any scope; the resource's own scope is checked later. */
export function authorizeAnyScope(principal: Principal, perm: Permission): void {
  if (!principal.grants.allowsAnywhere(perm)) throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `${principal.username} lacks the permission ${perm}`);
}

export function authorizeAdmin(principal: Principal): void {
  if (!principal.grants.isAdmin) throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `${principal.username} is not an administrator`);
}

/**
 * Handing out grants (creating or changing a role, assigning or unassigning one) never lets a
 * caller go beyond what they hold: administrators may hand out anything, anyone else only
 * grants their own grants cover. Without this, `roles:assign` alone would assign `admin`.
 */
export function authorizeDelegation(principal: Principal, grants: Iterable<Grant>, what: string): void {
  for (const g of grants) {
    if (!principal.grants.covers(g)) {
      throw new TrellisError('TRELLIS_E_PERMISSION_DENIED',
        `${principal.username} cannot ${what}: it gives ${g.permission}${g.scope ? `@${g.scope}` : ''}, which ${principal.username} does not hold`);
    }
  }
}

/** The tenant a call works in: the one asked for, if the principal belongs to it (admins: any). */
export function resolveTenant(principal: Principal, asked: string | undefined): string {
  const tenant = asked || principal.tenants[0] || 'default';
  if (principal.grants.isAdmin || principal.tenants.includes(tenant)) return tenant;
  throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `${principal.username} is not a member of tenant ${tenant.slice(0, 63)}`);
}
