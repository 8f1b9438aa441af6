/**
 * Identity and access commands: users, sessions, API keys, roles, tenants and groups. They call
 * the hub's Admin* IAM services with the profile from `trellis login`; the hub decides who may
 * do what. Passwords never come from arguments (they would sit in shell history and `ps`).
 */
import type { Command } from 'commander';
import { TrellisError } from '../../common/errors.js';
import { PERMISSIONS } from '../../hub/authz/index.js';
import { call, type AdminClients, withClients } from '../client.js';
import { askHidden, isInteractive, readStdin } from '../prompt.js';
import { ago, when, print, addOutputOptions, output, outputOne } from '../format.js';
import { collect } from './util.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

const list = (xs: readonly string[]) => (xs.length ? xs.join(',') : '-');

/** A new password: --password-stdin (one line), else the environment variable, else a hidden prompt asked twice. */
async function newPassword(o: { passwordStdin?: boolean }, envVar: string, who: string): Promise<string> {
  if (o.passwordStdin) return (await readStdin(4096)).replace(/\r?\n$/, '');
  const fromEnv = process.env[envVar];
  if (fromEnv) return fromEnv;
  if (!isInteractive()) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `no terminal to prompt for the password of ${who}: pipe it with --password-stdin or set ${envVar}`);
  const a = await askHidden(`New password for ${who}: `);
  if (a !== (await askHidden('Repeat it: '))) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'the two passwords differ; nothing was changed');
  return a;
}

/** `PERM` or `PERM@SCOPE`, or PERM with --pack / --action: a grant as the hub takes it. */
function parseGrant(perm: string, o: { pack?: string; action?: string } = {}): T.Grant {
  const at = perm.indexOf('@');
  const permission = at < 0 ? perm : perm.slice(0, at);
  const inline = at < 0 ? '' : perm.slice(at + 1);
  if ([inline, o.pack, o.action].filter(Boolean).length > 1) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'give one scope: PERM@SCOPE, --pack or --action');
  return { permission, scope: o.pack ? `pack:${o.pack}` : o.action ? `action:${o.action}` : inline };
}
const grantText = (g: T.Grant__Output) => `${g.permission}${g.scope ? `@${g.scope}` : ''}`;

/** --user U or --group G, exactly one. */
function userOrGroup(o: { user?: string; group?: string }): { user: string; group: string } {
  if (!!o.user === !!o.group) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'name exactly one of --user or --group');
  return { user: o.user ?? '', group: o.group ?? '' };
}

function showUser(u: T.UserInfo__Output): string {
  const effective = (xs: readonly string[]) => (u.active ? list(xs) : '- (deactivated)');
  return [
    `user:              ${u.username} (${u.source})`,
    `state:             ${u.active ? 'active' : 'deactivated'}${u.lockedUntilMs ? `, locked from some addresses until ${when(u.lockedUntilMs)}` : ''}`,
    `roles:             ${list(u.roles)}`, `tenants:           ${list(u.tenants)}`, `groups:            ${list(u.groups)}`,
    `effective roles:   ${effective(u.effectiveRoles)}`, `effective tenants: ${effective(u.effectiveTenants)}`,
    `failed logins:     ${u.failedLogins}`, `last login:        ${ago(u.lastLoginMs)}`, `created:           ${when(u.createdAtMs)}`,
  ].join('\n');
}

function addUserCommands(program: Command): void {
  const users = program.command('users').description('users (administrators; `users passwd` for your own password)');
  users.command('create <name>')
    .description('create a local user')
    .option('--role <role>', 'role to assign (repeat)', collect, [])
    .option('--tenant-member <tenant>', 'tenant the user belongs to (repeat; default: default)', collect, [])
    .option('--password-stdin', 'read the password from standard input')
    .addHelpText('after', '\nThe password comes from --password-stdin, TRELLIS_PASSWORD, or a prompt; never from an argument. At least 12 characters.')
    .action((name: string, o) => withClients(async (c) => {
      const password = await newPassword(o, 'TRELLIS_PASSWORD', name);
      const u = await call<T.CreateUserRequest, T.UserInfo__Output>(c, c.users, c.users.CreateUser, { username: name, password, roles: o.role, tenants: o.tenantMember });
      print(`user ${u.username} created (roles: ${list(u.roles)}; tenants: ${list(u.tenants)})`);
    }));
  addOutputOptions(users.command('list').description('list users'), 'failed logins, created').action((o) => withClients(async (c) => {
    const r = await call<T.ListUsersRequest, T.ListUsersResponse__Output>(c, c.users, c.users.ListUsers, {});
    await output(o, r.users, [
      { header: 'USER', cell: (u) => u.username }, { header: 'STATE', cell: (u) => (u.active ? (u.lockedUntilMs ? 'locked' : 'active') : 'deactivated') },
      { header: 'SOURCE', cell: (u) => u.source }, { header: 'ROLES', cell: (u) => list(u.active ? u.effectiveRoles : u.roles) },
      { header: 'TENANTS', cell: (u) => list(u.active ? u.effectiveTenants : u.tenants) }, { header: 'GROUPS', cell: (u) => list(u.groups) },
      { header: 'LAST LOGIN', cell: (u) => ago(u.lastLoginMs) },
      { header: 'FAILED LOGINS', cell: (u) => String(u.failedLogins), wide: true }, { header: 'CREATED', cell: (u) => when(u.createdAtMs), wide: true },
    ]);
  }));
  addOutputOptions(users.command('show <name>').description('show one user, with effective roles and tenants')).action((name: string, o) => withClients(async (c) => {
    const u = await call<T.GetUserRequest, T.UserInfo__Output>(c, c.users, c.users.GetUser, { username: name });
    await outputOne(o, u, () => showUser(u));
  }));
  users.command('passwd [name]')
    .description('change your password, or (administrators) set another user\'s')
    .option('--password-stdin', 'read the new password from standard input')
    .addHelpText('after', '\nYour own: the current password from TRELLIS_PASSWORD or a prompt. The new one from --password-stdin,\nTRELLIS_NEW_PASSWORD or a prompt. Your other login sessions (all of theirs, for another user) end.')
    .action((name: string | undefined, o) => withClients(async (c) => {
      const me = (await call<T.WhoAmIRequest, T.WhoAmIResponse__Output>(c, c.auth, c.auth.WhoAmI, {})).username;
      const own = !name || name === me;
      let currentPassword = '';
      if (own) {
        currentPassword = process.env.TRELLIS_PASSWORD || (isInteractive() ? await askHidden(`Current password for ${me}: `) : '');
        if (!currentPassword) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'your current password is needed: set TRELLIS_PASSWORD or run this in a terminal');
      }
      const next = await newPassword(o, 'TRELLIS_NEW_PASSWORD', own ? me : name!);
      await call<T.SetPasswordRequest, T.SetPasswordResponse__Output>(c, c.users, c.users.SetPassword, { username: own ? '' : name, currentPassword, newPassword: next });
      print(own ? 'your password was changed; your other login sessions were ended' : `password of ${name} set; their login sessions were ended`);
    }));
  const state = (cmd: string, what: string, fn: (c: AdminClients, name: string) => Promise<unknown>, done: string) =>
    users.command(`${cmd} <name>`).description(what).action((name: string) => withClients(async (c) => { await fn(c, name); print(`user ${name} ${done}`); }));
  state('deactivate', 'deactivate a user: their sessions end, their API keys and live calls stop at once', (c, username) =>
    call(c, c.users, c.users.SetUserActive, { username, active: false }), 'deactivated');
  state('activate', 'activate a user again (they log in anew; API keys work again)', (c, username) =>
    call(c, c.users, c.users.SetUserActive, { username, active: true }), 'activated');
  state('delete', 'delete a user with their sessions and API keys', (c, username) => call(c, c.users, c.users.DeleteUser, { username }), 'deleted');
  state('unlock', 'clear failed logins and lock-outs (from every source address)', (c, username) => call(c, c.users, c.users.UnlockUser, { username }), 'unlocked');
}

function addSessionAndKeyCommands(program: Command): void {
  const sessions = program.command('sessions').description('login sessions: your own; every user\'s with sessions:list');
  addOutputOptions(sessions.command('list').description('list login sessions (* marks this one)').option('--all', 'every user\'s (needs sessions:list)'), 'expiry time')
    .action((o) => withClients(async (c) => {
      const r = await call<T.ListSessionsRequest, T.ListSessionsResponse__Output>(c, c.sessions, c.sessions.ListSessions, { allUsers: !!o.all });
      await output(o, r.sessions, [
        { header: 'ID', cell: (s) => `${s.id}${s.current ? ' *' : ''}` }, { header: 'USER', cell: (s) => s.username }, { header: 'CREATED', cell: (s) => when(s.createdAtMs) },
        { header: 'EXPIRES', cell: (s, wide) => (wide ? when(s.expiresAtMs) : ago(s.expiresAtMs)) }, { header: 'FROM', cell: (s) => s.sourceAddress || '-' },
      ]);
    }));
  sessions.command('revoke <id>').description('end a login session (another user\'s needs sessions:revoke)').action((id: string) => withClients(async (c) => {
    await call(c, c.sessions, c.sessions.RevokeSession, { id });
    print(`session ${id} ended`);
  }));

  const keys = program.command('apikeys').description('API keys: act as their owner (never with more rights); use with TRELLIS_API_KEY');
  keys.command('create').description('create an API key for yourself; prints it once').option('--name <name>', 'what it is for')
    .action((o) => withClients(async (c) => {
      const r = await call<T.CreateApiKeyRequest, T.CreateApiKeyResponse__Output>(c, c.apikeys, c.apikeys.CreateApiKey, { name: o.name ?? '' });
      print(r.key);
      process.stderr.write(`\nAPI key ${r.info!.id} of ${r.info!.owner}: this is the only time it is shown (the hub keeps a salted hash); store it now.\n` +
        `It acts as ${r.info!.owner} with their current rights, never more. Use it with TRELLIS_API_KEY=<key> trellis ...\n`);
    }));
  addOutputOptions(keys.command('list').description('list API keys').option('--all', 'every user\'s (needs apikeys:list)'), 'last use as a time')
    .action((o) => withClients(async (c) => {
      const r = await call<T.ListApiKeysRequest, T.ListApiKeysResponse__Output>(c, c.apikeys, c.apikeys.ListApiKeys, { allUsers: !!o.all });
      await output(o, r.keys, [
        { header: 'ID', cell: (k) => k.id }, { header: 'OWNER', cell: (k) => k.owner }, { header: 'NAME', cell: (k) => k.name || '-' },
        { header: 'STATE', cell: (k) => (k.enabled ? 'enabled' : 'disabled') }, { header: 'CREATED', cell: (k) => when(k.createdAtMs) },
        { header: 'LAST USED', cell: (k, wide) => (wide ? when(k.lastUsedMs) : ago(k.lastUsedMs)) },
      ]);
    }));
  for (const [cmd, enabled] of [['disable', false], ['enable', true]] as const) {
    keys.command(`${cmd} <id>`).description(`${cmd} an API key (another user's needs apikeys:update)`).action((id: string) => withClients(async (c) => {
      await call(c, c.apikeys, c.apikeys.SetApiKeyEnabled, { id, enabled });
      print(`API key ${id} ${cmd}d`);
    }));
  }
  keys.command('delete <id>').description('delete an API key (another user\'s needs apikeys:delete)').action((id: string) => withClients(async (c) => {
    await call(c, c.apikeys, c.apikeys.DeleteApiKey, { id });
    print(`API key ${id} deleted`);
  }));
}

const PERMISSION_HELP = `
Permissions (grant one, or * for all; a grant may be scoped):
${Object.entries(PERMISSIONS).map(([p, what]) => `  ${p.padEnd(18)} ${what}`).join('\n')}

Scopes: none (platform), pack:<name>, action:<pack>.<name>, e.g. actions:execute@pack:web.
You can hand out, take away, assign or unassign only grants you hold yourself (administrators: any).`;

function addRoleCommands(program: Command): void {
  const roles = program.command('roles').description('roles: named sets of permission grants').addHelpText('after', PERMISSION_HELP);
  const show = (r: T.RoleInfo__Output) => [
    `role:        ${r.name}${r.builtin ? ' (built-in)' : ''}`, `description: ${r.description || '-'}`,
    `grants:      ${r.grants.length ? r.grants.map(grantText).join('\n             ') : '-'}`, `users:       ${list(r.users)}`, `groups:      ${list(r.groups)}`,
  ].join('\n');
  roles.command('create <name>').description('create a role')
    .option('--grant <perm[@scope]>', 'permission to grant (repeat), e.g. agents:run or actions:execute@pack:web', collect, [])
    .option('--description <text>', 'what the role is for')
    .action((name: string, o) => withClients(async (c) => {
      const r = await call<T.CreateRoleRequest, T.RoleInfo__Output>(c, c.roles, c.roles.CreateRole, { name, description: o.description ?? '', grants: (o.grant as string[]).map((g) => parseGrant(g)) });
      print(`role ${r.name} created (${r.grants.length} grant(s))`);
    }));
  addOutputOptions(roles.command('list').description('list roles'), 'the grants themselves').action((o) => withClients(async (c) => {
    const r = await call<T.ListRolesRequest, T.ListRolesResponse__Output>(c, c.roles, c.roles.ListRoles, {});
    await output(o, r.roles, [
      { header: 'ROLE', cell: (x) => x.name }, { header: 'BUILT-IN', cell: (x) => (x.builtin ? 'yes' : 'no') },
      { header: 'GRANTS', cell: (x, wide) => (wide ? x.grants.map(grantText).join(',') || '-' : String(x.grants.length)) },
      { header: 'USERS', cell: (x) => list(x.users) }, { header: 'GROUPS', cell: (x) => list(x.groups) }, { header: 'DESCRIPTION', cell: (x) => x.description || '-' },
    ]);
  }));
  addOutputOptions(roles.command('show <name>').description('show a role with its grants')).action((name: string, o) => withClients(async (c) => {
    const r = await call<T.GetRoleRequest, T.RoleInfo__Output>(c, c.roles, c.roles.GetRole, { name });
    await outputOne(o, r, () => show(r));
  }));
  for (const [cmd, verb] of [['grant', 'GrantPermission'], ['revoke', 'RevokePermission']] as const) {
    roles.command(`${cmd} <name> <perm>`).description(`${cmd} a permission ${cmd === 'grant' ? 'to' : 'from'} a role (applies to the next call of every holder)`)
      .option('--pack <pack>', 'only for this pack').option('--action <pack.action>', 'only for this action')
      .action((name: string, perm: string, o) => withClients(async (c) => {
        const grant = parseGrant(perm, o);
        await call<T.GrantPermissionRequest, T.RoleInfo__Output>(c, c.roles, c.roles[verb], { role: name, grant });
        print(`role ${name}: ${grantText(grant as T.Grant__Output)} ${cmd === 'grant' ? 'granted' : 'revoked'}`);
      }));
  }
  for (const [cmd, verb] of [['assign', 'AssignRole'], ['unassign', 'UnassignRole']] as const) {
    roles.command(`${cmd} <role>`).description(`${cmd} a role ${cmd === 'assign' ? 'to' : 'from'} a user or a group`)
      .option('--user <user>', 'the user').option('--group <group>', 'the group')
      .action((role: string, o) => withClients(async (c) => {
        const m = userOrGroup(o);
        await call<T.AssignRoleRequest, T.RoleInfo__Output>(c, c.roles, c.roles[verb], { role, ...m });
        print(`role ${role} ${cmd}ed ${cmd === 'assign' ? 'to' : 'from'} ${m.user ? `user ${m.user}` : `group ${m.group}`}`);
      }));
  }
  roles.command('delete <name>').description('delete a role (unassigns it everywhere)').action((name: string) => withClients(async (c) => {
    await call(c, c.roles, c.roles.DeleteRole, { name });
    print(`role ${name} deleted`);
  }));
}

function addTenantAndGroupCommands(program: Command): void {
  const tenants = program.command('tenants').description('tenants: agents, join tokens and their users are kept apart by tenant (administrators)');
  tenants.command('create <name>').description('create a tenant').option('--description <text>', 'what it is for').action((name: string, o) => withClients(async (c) => {
    await call(c, c.tenants, c.tenants.CreateTenant, { name, description: o.description ?? '' });
    print(`tenant ${name} created; add members with \`trellis tenants add-member ${name} --user NAME\``);
  }));
  addOutputOptions(tenants.command('list').description('list tenants')).action((o) => withClients(async (c) => {
    const r = await call<T.ListTenantsRequest, T.ListTenantsResponse__Output>(c, c.tenants, c.tenants.ListTenants, {});
    await output(o, r.tenants, [
      { header: 'TENANT', cell: (x) => x.name }, { header: 'USERS', cell: (x) => list(x.users) }, { header: 'GROUPS', cell: (x) => list(x.groups) },
      { header: 'CREATED', cell: (x) => when(x.createdAtMs) }, { header: 'DESCRIPTION', cell: (x) => x.description || '-' },
    ]);
  }));
  addOutputOptions(tenants.command('show <name>').description('show a tenant and its members')).action((name: string, o) => withClients(async (c) => {
    const x = await call<T.GetTenantRequest, T.TenantInfo__Output>(c, c.tenants, c.tenants.GetTenant, { name });
    await outputOne(o, x, () =>
      [`tenant:      ${x.name}`, `description: ${x.description || '-'}`, `users:       ${list(x.users)}`, `groups:      ${list(x.groups)}`, `created:     ${when(x.createdAtMs)}`].join('\n'));
  }));
  tenants.command('delete <name>').description('delete a tenant (refused while agents or usable join tokens belong to it)').action((name: string) => withClients(async (c) => {
    await call(c, c.tenants, c.tenants.DeleteTenant, { name });
    print(`tenant ${name} deleted`);
  }));
  for (const [cmd, verb] of [['add-member', 'AddTenantMember'], ['remove-member', 'RemoveTenantMember']] as const) {
    tenants.command(`${cmd} <tenant>`).description(`${cmd === 'add-member' ? 'add' : 'remove'} a user or a group ${cmd === 'add-member' ? 'to' : 'from'} a tenant`)
      .option('--user <user>', 'the user').option('--group <group>', 'the group')
      .action((tenant: string, o) => withClients(async (c) => {
        const m = userOrGroup(o);
        await call<T.TenantMemberRequest, T.TenantInfo__Output>(c, c.tenants, c.tenants[verb], { tenant, ...m });
        print(`tenant ${tenant}: ${m.user ? `user ${m.user}` : `group ${m.group}`} ${cmd === 'add-member' ? 'added' : 'removed'}`);
      }));
  }

  const groups = program.command('groups').description('groups: give roles and tenants to their members (administrators)');
  groups.command('create <name>').description('create a group')
    .option('--ldap-group <cn>', 'directory group whose members join this group when they log in (repeat)', collect, [])
    .option('--description <text>', 'what it is for')
    .action((name: string, o) => withClients(async (c) => {
      await call<T.CreateGroupRequest, T.GroupInfo__Output>(c, c.groups, c.groups.CreateGroup, { name, description: o.description ?? '', ldapGroups: o.ldapGroup });
      print(`group ${name} created; give it roles with \`trellis roles assign ROLE --group ${name}\``);
    }));
  addOutputOptions(groups.command('list').description('list groups'), 'created').action((o) => withClients(async (c) => {
    const r = await call<T.ListGroupsRequest, T.ListGroupsResponse__Output>(c, c.groups, c.groups.ListGroups, {});
    await output(o, r.groups, [
      { header: 'GROUP', cell: (g) => g.name }, { header: 'MEMBERS', cell: (g) => list(g.members) }, { header: 'DIRECTORY GROUPS', cell: (g) => list(g.ldapGroups) },
      { header: 'CREATED', cell: (g) => when(g.createdAtMs), wide: true }, { header: 'DESCRIPTION', cell: (g) => g.description || '-' },
    ]);
  }));
  addOutputOptions(groups.command('show <name>').description('show a group')).action((name: string, o) => withClients(async (c) => {
    const g = await call<T.GetGroupRequest, T.GroupInfo__Output>(c, c.groups, c.groups.GetGroup, { name });
    await outputOne(o, g, () =>
      [`group:            ${g.name}`, `description:      ${g.description || '-'}`, `members:          ${list(g.members)}`, `directory groups: ${list(g.ldapGroups)}`, `created:          ${when(g.createdAtMs)}`].join('\n'));
  }));
  groups.command('delete <name>').description('delete a group').action((name: string) => withClients(async (c) => {
    await call(c, c.groups, c.groups.DeleteGroup, { name });
    print(`group ${name} deleted`);
  }));
  for (const [cmd, verb] of [['add-member', 'AddGroupMember'], ['remove-member', 'RemoveGroupMember']] as const) {
    groups.command(`${cmd} <group> <user>`).description(`${cmd === 'add-member' ? 'add a user to' : 'remove a user from'} a group`)
      .action((group: string, user: string) => withClients(async (c) => {
        await call<T.GroupMemberRequest, T.GroupInfo__Output>(c, c.groups, c.groups[verb], { group, user });
        print(`group ${group}: user ${user} ${cmd === 'add-member' ? 'added' : 'removed'}`);
      }));
  }
}

export function addIamCommands(program: Command): void {
  addUserCommands(program);
  addSessionAndKeyCommands(program);
  addRoleCommands(program);
  addTenantAndGroupCommands(program);
}
