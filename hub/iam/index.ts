/**
 * The identity directory: users, groups, roles and tenants, and how they resolve into a
 * principal (effective roles, tenants and compiled grants). Resolution is cached per user and
 * the cache is dropped on any change, so a revoked grant or a deactivation applies to the very
 * next call.
 */
import { EventEmitter } from 'node:events';
import type { Doc, Store } from '../store/index.js';
import { TrellisError } from '../../common/errors.js';
import { BUILTIN_ROLES, CompiledGrants, checkGrant, type Grant, type Principal } from '../authz/index.js';
import { checkName } from '../validate.js';
import { checkUsername, type UserDoc } from '../auth/users.js';

export interface GroupDoc extends Doc { description: string; members: string[]; roles: string[]; tenants: string[]; ldapGroups: string[]; createdAt: number }
export interface RoleDoc extends Doc { description: string; grants: Grant[]; createdAt: number }
export interface TenantDoc extends Doc { description: string; createdAt: number }

interface Snapshot { groups: GroupDoc[]; roles: Map<string, Grant[]> }

export class Iam extends EventEmitter {
  private version = 0;
  private snapshot?: Promise<Snapshot>;
  private readonly cache = new Map<string, { version: number; principal: Omit<Principal, 'kind' | 'sessionId' | 'sessionExpiresAt' | 'apiKeyId'> }>();

  constructor(private readonly store: Store) { super(); }

  /** Call after any change to users, groups, roles or tenants. Emits 'changed'. */
  invalidate(): void {
    this.version++;
    this.snapshot = undefined;
    this.cache.clear();
    this.emit('changed');
  }

  private load(): Promise<Snapshot> {
    this.snapshot ??= (async () => {
      const groups = await this.store.list<GroupDoc>('groups');
      const roles = new Map<string, Grant[]>();
      for (const [name, r] of Object.entries(BUILTIN_ROLES)) roles.set(name, r.grants);
      for (const r of await this.store.list<RoleDoc>('roles')) roles.set(r.id, r.grants);
      return { groups, roles };
    })();
    return this.snapshot;
  }

  /** Effective roles, tenants and grants of an active user; undefined if none or inactive. */
  async resolve(username: string): Promise<Omit<Principal, 'kind' | 'sessionId' | 'sessionExpiresAt' | 'apiKeyId'> | undefined> {
    const hit = this.cache.get(username);
    if (hit && hit.version === this.version) return hit.principal;
    const version = this.version;
    const user = await this.store.get<UserDoc>('users', username);
    if (!user || !user.active) return undefined;
    const snap = await this.load();
    const groups = snap.groups.filter((g) => g.members.includes(username));
    const roles = [...new Set([...user.roles, ...groups.flatMap((g) => g.roles)])].sort();
    const tenants = [...new Set([...user.tenants, ...groups.flatMap((g) => g.tenants)])];
    const grants = new CompiledGrants(roles.flatMap((r) => snap.roles.get(r) ?? []));
    const principal = { username, roles, tenants, groups: groups.map((g) => g.id), grants };
    if (version === this.version) {
      if (this.cache.size > 10_000) this.cache.clear();
      this.cache.set(username, { version, principal });
    }
    return principal;
  }

  /** Adds `name` to (or removes it from) the roles or tenants of exactly one user or group. */
  private async editMembership(target: { user?: string; group?: string }, field: 'roles' | 'tenants', name: string, add: boolean): Promise<void> {
    if (!!target.user === !!target.group) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'name exactly one of --user or --group');
    const edit = (xs: string[]) => (add ? [...new Set([...xs, name])] : xs.filter((x) => x !== name));
    const [col, id, what] = target.user ? (['users', target.user, 'user'] as const) : (['groups', target.group!, 'group'] as const);
    const r = await this.store.update<UserDoc | GroupDoc>(col, id, (d) => (d ? { ...d, [field]: edit(d[field]) } : undefined));
    if (!r) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no ${what} ${id}`);
    this.invalidate();
  }

  /** Removes a deleted role or tenant from every user and group that names it. */
  private async dropEverywhere(field: 'roles' | 'tenants', name: string): Promise<void> {
    for (const col of ['users', 'groups'] as const) {
      for (const d of await this.store.list<UserDoc | GroupDoc>(col, (d) => d[field].includes(name))) {
        await this.store.update<UserDoc | GroupDoc>(col, d.id, (cur) => (cur ? { ...cur, [field]: cur[field].filter((x) => x !== name) } : undefined));
      }
    }
  }

  // ------------------------------------------------------------ roles

  async createRole(name: string, description: string, grants: Grant[]): Promise<RoleDoc> {
    checkName(name, 'role name');
    if (BUILTIN_ROLES[name]) throw new TrellisError('TRELLIS_E_ALREADY_EXISTS', `${name} is a built-in role`);
    const doc: RoleDoc = { id: name, description: description.slice(0, 256), grants: dedupe(grants.map(checkGrant)), createdAt: Date.now() };
    await this.store.insert('roles', doc);
    this.invalidate();
    return doc;
  }

  async role(name: string): Promise<{ name: string; description: string; grants: Grant[]; builtin: boolean }> {
    const b = BUILTIN_ROLES[name];
    if (b) return { name, description: b.description, grants: b.grants, builtin: true };
    const r = await this.store.get<RoleDoc>('roles', name);
    if (!r) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no role ${name}: see \`trellis roles list\``);
    return { name, description: r.description, grants: r.grants, builtin: false };
  }

  async roles(): Promise<Array<{ name: string; description: string; grants: Grant[]; builtin: boolean }>> {
    const custom = await this.store.list<RoleDoc>('roles');
    return [
      ...Object.entries(BUILTIN_ROLES).map(([name, r]) => ({ name, description: r.description, grants: r.grants, builtin: true })),
      ...custom.map((r) => ({ name: r.id, description: r.description, grants: r.grants, builtin: false })),
    ];
  }

  async updateRoleGrants(name: string, fn: (grants: Grant[]) => Grant[]): Promise<RoleDoc> {
    if (BUILTIN_ROLES[name]) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${name} is a built-in role and cannot be changed; create a role of your own`);
    const r = await this.store.update<RoleDoc>('roles', name, (d) => {
      if (!d) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no role ${name}`);
      return { ...d, grants: dedupe(fn(d.grants).map(checkGrant)) };
    });
    this.invalidate();
    return r!;
  }

  async deleteRole(name: string): Promise<void> {
    if (BUILTIN_ROLES[name]) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${name} is a built-in role and cannot be deleted`);
    if (!(await this.store.delete('roles', name))) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no role ${name}`);
    await this.dropEverywhere('roles', name);
    this.invalidate();
  }

  /**
   * The tenants a role given to this user or group would act in: a user's own tenants and
   * those of their groups (active or not); for a group, its tenants and every member's.
   */
  async tenantsReached(target: { user?: string; group?: string }): Promise<Set<string>> {
    const groups = await this.store.list<GroupDoc>('groups');
    const ofUser = async (name: string) => {
      const u = await this.store.get<UserDoc>('users', name);
      return [...(u?.tenants ?? []), ...groups.filter((g) => g.members.includes(name)).flatMap((g) => g.tenants)];
    };
    if (target.user) return new Set(await ofUser(target.user));
    const g = groups.find((x) => x.id === target.group);
    if (!g) return new Set();
    const out = new Set(g.tenants);
    for (const m of g.members) for (const t of await ofUser(m)) out.add(t);
    return out;
  }

  /** Assigns (or, with assign=false, unassigns) a role to exactly one of a user or a group. */
  async setRoleAssignment(role: string, target: { user?: string; group?: string }, assign: boolean): Promise<void> {
    await this.role(role);
    await this.editMembership(target, 'roles', role, assign);
  }

  // ------------------------------------------------------------ tenants

  async ensureDefaultTenant(): Promise<void> {
    if (!(await this.store.get('tenants', 'default'))) {
      await this.store.put<TenantDoc>('tenants', { id: 'default', description: 'the default tenant', createdAt: Date.now() });
    }
  }

  async createTenant(name: string, description: string): Promise<TenantDoc> {
    checkName(name, 'tenant name');
    if (name === '*') throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'bad tenant name');
    const doc: TenantDoc = { id: name, description: description.slice(0, 256), createdAt: Date.now() };
    await this.store.insert('tenants', doc);
    this.invalidate();
    return doc;
  }

  async tenant(name: string): Promise<TenantDoc> {
    const t = await this.store.get<TenantDoc>('tenants', name);
    if (!t) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no tenant ${name}: see \`trellis tenants list\``);
    return t;
  }

  async tenants(): Promise<TenantDoc[]> { return this.store.list<TenantDoc>('tenants'); }

  async deleteTenant(name: string, inUse: (tenant: string) => Promise<string | undefined>): Promise<void> {
    if (name === 'default') throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'the default tenant cannot be deleted');
    await this.tenant(name);
    const why = await inUse(name);
    if (why) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `tenant ${name} still has ${why}; remove them first`);
    await this.store.delete('tenants', name);
    await this.dropEverywhere('tenants', name);
    this.invalidate();
  }

  async setTenantMembership(tenant: string, target: { user?: string; group?: string }, member: boolean): Promise<void> {
    await this.tenant(tenant);
    await this.editMembership(target, 'tenants', tenant, member);
  }

  // ------------------------------------------------------------ groups

  async createGroup(name: string, description: string, ldapGroups: string[] = []): Promise<GroupDoc> {
    checkName(name, 'group name');
    const doc: GroupDoc = { id: name, description: description.slice(0, 256), members: [], roles: [], tenants: [], ldapGroups, createdAt: Date.now() };
    await this.store.insert('groups', doc);
    this.invalidate();
    return doc;
  }

  async group(name: string): Promise<GroupDoc> {
    const g = await this.store.get<GroupDoc>('groups', name);
    if (!g) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no group ${name}: see \`trellis groups list\``);
    return g;
  }

  async groups(): Promise<GroupDoc[]> { return this.store.list<GroupDoc>('groups'); }

  async deleteGroup(name: string): Promise<void> {
    if (!(await this.store.delete('groups', name))) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no group ${name}`);
    this.invalidate();
  }

  async setGroupMember(group: string, user: string, member: boolean): Promise<GroupDoc> {
    checkUsername(user);
    if (member && !(await this.store.get('users', user))) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no user ${user}`);
    const r = await this.store.update<GroupDoc>('groups', group, (d) => {
      if (!d) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no group ${group}`);
      return { ...d, members: member ? [...new Set([...d.members, user])] : d.members.filter((m) => m !== user) };
    });
    this.invalidate();
    return r!;
  }

  /** Drops a deleted user from every group, so a new user of the same name inherits nothing. */
  async forgetUser(user: string): Promise<void> {
    for (const g of await this.store.list<GroupDoc>('groups', (g) => g.members.includes(user))) {
      await this.store.update<GroupDoc>('groups', g.id, (d) => (d ? { ...d, members: d.members.filter((m) => m !== user) } : undefined));
    }
    this.invalidate();
  }

  /** Directory logins: the Trellis groups whose ldapGroups intersect the user's directory groups. */
  async syncDirectoryGroups(user: string, directoryGroups: string[]): Promise<void> {
    const lower = new Set(directoryGroups.map((g) => g.toLowerCase()));
    let changed = false;
    for (const g of await this.store.list<GroupDoc>('groups', (g) => g.ldapGroups.length > 0)) {
      const should = g.ldapGroups.some((l) => lower.has(l.toLowerCase()));
      const is = g.members.includes(user);
      if (should !== is) {
        await this.store.update<GroupDoc>('groups', g.id, (d) => (d ? { ...d, members: should ? [...d.members, user] : d.members.filter((m) => m !== user) } : undefined));
        changed = true;
      }
    }
    if (changed) this.invalidate();
  }
}

function dedupe(grants: Grant[]): Grant[] {
  const seen = new Set<string>();
  return grants.filter((g) => { const k = `${g.permission}\t${g.scope}`; if (seen.has(k)) return false; seen.add(k); return true; });
}
