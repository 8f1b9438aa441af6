/**
 * Installed packs, per tenant, over the store ('packs' collection, id `${tenant}/${name}`),
 * with an in-memory cache loaded at start so that the hot paths (rules engine, executions)
 * read actions, sensors and rules without touching the store. The hub validates every file
 * again (common/packs loadPack); scripts live in ActionDef.script.body, other files are not kept.
 * Emits `'change', tenant` after every install and remove.
 */
import { EventEmitter } from 'node:events';
import { TrellisError } from '../../common/errors.js';
import { loadPack, NAME_RE, type PackFile, type PackFileInfo, type PackSources } from '../../common/packs/index.js';
import type { ActionDef, PackDef, RuleDef, SensorDef } from '../../common/automation/types.js';
import type { Logger } from '../../common/log.js';
import type { Store } from '../store/index.js';

export interface PackDoc {
  id: string;
  tenant: string;
  name: string;
  version: string;
  description: string;
  /** The validated pack (actions with script bodies, sensors, rules). */
  def: PackDef;
  /** Every file that was sent (path, size, mode), for `packs show`. */
  files: PackFileInfo[];
  /** The file each action, sensor and rule came from (packs installed before this was kept have none). */
  sources?: PackSources;
  installedAt: number;
  installedBy: string;
  [k: string]: unknown;
}

export interface InstallOptions {
  /** Who installs (user name or API key), recorded on the pack. */
  by: string;
  /** Replace an installed pack of the same name. */
  force?: boolean;
  /** Called with the validated pack before anything is stored; throws to refuse it (hub/rights). */
  authorize?: (def: PackDef) => Promise<void>;
  /**
   * Called in turn (no other install or remove runs meanwhile) with the new pack and the one it
   * replaces, before anything is stored; throws to refuse (enabled rules outside the pack still
   * call an action the new version drops).
   */
  guard?: (next: PackDef, current: PackDoc | undefined) => void;
}

export interface RemoveOptions {
  /** Called in turn with the pack before it is removed; throws to refuse, or disables what uses it. */
  guard?: (current: PackDoc) => Promise<void>;
}

export const packId = (tenant: string, name: string) => `${tenant}/${name}`;

export function checkPackName(name: unknown): string {
  if (typeof name !== 'string' || !NAME_RE.test(name)) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `bad pack name "${String(name).slice(0, 64)}": 1-63 characters of a-z 0-9 _ -, starting with a letter or a digit`);
  }
  return name;
}

function deepFreeze<T>(v: T): T {
  if (v && typeof v === 'object' && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const x of Object.values(v as object)) deepFreeze(x);
  }
  return v;
}

/** What is cached per tenant: packs by name and actions by ref. */
interface TenantView { packs: Map<string, PackDoc>; actions: Map<string, ActionDef>; sensors: SensorDef[]; rules: RuleDef[] }

export class Packs extends EventEmitter {
  private readonly byTenant = new Map<string, TenantView>();
  /** Mutations run one at a time so that the cache follows the store's order. */
  private chain: Promise<unknown> = Promise.resolve();

  constructor(private readonly store: Store, private readonly opts: { log?: Logger; now?: () => number } = {}) {
    super();
  }

  /** Fills the cache from the store (once, at hub start). */
  async load(): Promise<void> {
    this.byTenant.clear();
    for (const d of await this.store.list<PackDoc>('packs')) this.cacheSet(d);
  }

  private serial<R>(fn: () => Promise<R>): Promise<R> {
    const next = this.chain.then(fn, fn);
    this.chain = next.catch(() => undefined);
    return next;
  }

  private rebuild(tenant: string, packs: Map<string, PackDoc>): void {
    if (packs.size === 0) { this.byTenant.delete(tenant); return; }
    const sortedPacks = [...packs.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
    const actions = new Map<string, ActionDef>();
    for (const p of sortedPacks) for (const a of p.def.actions) actions.set(a.ref, a);
    this.byTenant.set(tenant, {
      packs, actions,
      sensors: Object.freeze(sortedPacks.flatMap((p) => p.def.sensors)) as SensorDef[],
      rules: Object.freeze(sortedPacks.flatMap((p) => p.def.rules)) as RuleDef[],
    });
  }

  private cacheSet(d: PackDoc): void {
    const packs = new Map(this.byTenant.get(d.tenant)?.packs);
    packs.set(d.name, deepFreeze(d));
    this.rebuild(d.tenant, packs);
  }

  private cacheDelete(tenant: string, name: string): void {
    const packs = new Map(this.byTenant.get(tenant)?.packs);
    packs.delete(name);
    this.rebuild(tenant, packs);
  }

  /**
   * Another hub (shared store) installed, replaced or removed a pack (`id` undefined: maybe every
   * one): the cache follows the store and `change` is emitted as after a local install or remove.
   */
  reload(id?: string): Promise<void> {
    return this.serial(async () => {
      if (id === undefined) {
        const before = new Set(this.byTenant.keys());
        await this.load();
        for (const t of new Set([...before, ...this.byTenant.keys()])) this.emit('change', t);
        return;
      }
      const d = await this.store.get<PackDoc>('packs', id);
      const slash = id.indexOf('/');
      const tenant = d?.tenant ?? id.slice(0, slash);
      const name = d?.name ?? id.slice(slash + 1);
      const cur = this.get(tenant, name);
      if (d) {
        if (cur && cur.installedAt === d.installedAt && cur.version === d.version && cur.installedBy === d.installedBy) return;
        this.cacheSet(d);
        this.opts.log?.info({ tenant, pack: d.name, version: d.version, by: d.installedBy }, 'pack installed on another hub');
      } else {
        if (!cur) return;
        this.cacheDelete(tenant, name);
        this.opts.log?.info({ tenant, pack: name }, 'pack removed on another hub');
      }
      this.emit('change', tenant);
    });
  }

  /**
   * Validates the files and stores the pack. TRELLIS_E_PACK_INVALID / TRELLIS_E_TOO_LARGE for a
   * bad pack; TRELLIS_E_ALREADY_EXISTS when a pack of that name is installed and not `force`.
   */
  async install(tenant: string, files: readonly PackFile[], o: InstallOptions): Promise<PackDoc> {
    // Synchronous and before queueing: a bad pack waits for nothing. A rule may call another
    // pack's action only if it is installed (checked again below, in turn with removals).
    const actionExists = (ref: string) => !!this.action(tenant, ref);
    const loaded = loadPack(files, { actionExists });
    const { files: fileInfo, sources, ...def } = loaded;
    await o.authorize?.(def);
    return this.serial(async () => {
      const missing = def.rules.filter((r) => !r.action.ref.startsWith(`${def.name}.`) && !actionExists(r.action.ref));
      if (missing.length > 0) {
        throw new TrellisError('TRELLIS_E_PACK_INVALID', `pack ${def.name} is invalid: ${missing.map((r) => `${sources[r.ref] ?? r.ref}: action.ref: action "${r.action.ref}" is not installed in this tenant`).join('; ')}`);
      }
      o.guard?.(def, this.get(tenant, def.name));
      const doc: PackDoc = {
        id: packId(tenant, def.name), tenant, name: def.name, version: def.version, description: def.description,
        def, files: fileInfo, sources, installedAt: this.opts.now?.() ?? Date.now(), installedBy: o.by,
      };
      await this.store.update<PackDoc>('packs', doc.id, (cur) => {
        if (cur && !o.force) {
          throw new TrellisError('TRELLIS_E_ALREADY_EXISTS', `pack ${def.name} ${cur.version} is already installed (by ${cur.installedBy}); use --force to replace it`);
        }
        return doc;
      });
      this.cacheSet(doc);
      this.opts.log?.info({ tenant, pack: def.name, version: def.version, by: o.by, actions: def.actions.length, sensors: def.sensors.length, rules: def.rules.length }, 'pack installed');
      this.emit('change', tenant);
      return doc;
    });
  }

  /** Packs of one tenant (or of every tenant when `tenant` is undefined), by name. */
  list(tenant?: string): PackDoc[] {
    const views = tenant === undefined ? [...this.byTenant.keys()].sort().map((t) => this.byTenant.get(t)!) : [this.byTenant.get(tenant)].filter((v) => !!v);
    return views.flatMap((v) => [...v.packs.values()].sort((a, b) => (a.name < b.name ? -1 : 1)));
  }

  get(tenant: string, name: string): PackDoc | undefined {
    return this.byTenant.get(tenant)?.packs.get(name);
  }

  /** The pack, or TRELLIS_E_NOT_FOUND (another tenant's pack does not exist for the caller). */
  require(tenant: string, name: string): PackDoc {
    const d = this.get(tenant, checkPackName(name));
    if (!d) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no pack ${name} in tenant ${tenant}: see \`trellis packs list\``);
    return d;
  }

  remove(tenant: string, name: string, o: RemoveOptions = {}): Promise<void> {
    checkPackName(name);
    return this.serial(async () => {
      const cur = this.get(tenant, name);
      if (cur) await o.guard?.(cur);
      if (!(await this.store.delete('packs', packId(tenant, name)))) {
        throw new TrellisError('TRELLIS_E_NOT_FOUND', `no pack ${name} in tenant ${tenant}: see \`trellis packs list\``);
      }
      this.cacheDelete(tenant, name);
      this.opts.log?.info({ tenant, pack: name }, 'pack removed');
      this.emit('change', tenant);
    });
  }

  /** An action by ref ("pack.action"), from memory. */
  action(tenant: string, ref: string): ActionDef | undefined {
    return this.byTenant.get(tenant)?.actions.get(ref);
  }

  /** Every action of the tenant's packs, by ref (frozen; do not mutate). */
  actions(tenant: string): ActionDef[] {
    return [...(this.byTenant.get(tenant)?.actions.values() ?? [])];
  }

  /** The pack file that defines an action, sensor or rule ("" when unknown). */
  sourceOf(tenant: string, ref: string): string {
    const pack = ref.slice(0, Math.max(0, ref.indexOf('.')));
    return this.get(tenant, pack)?.sources?.[ref] ?? '';
  }

  /** Every sensor of the tenant's packs (frozen; do not mutate). */
  sensors(tenant: string): SensorDef[] {
    return this.byTenant.get(tenant)?.sensors ?? [];
  }

  /** Every rule of the tenant's packs (frozen; do not mutate). */
  rules(tenant: string): RuleDef[] {
    return this.byTenant.get(tenant)?.rules ?? [];
  }

  /** Tenants with at least one pack. */
  tenants(): string[] {
    return [...this.byTenant.keys()].sort();
  }
}

export { listActions, getAction, BUILTIN_ACTIONS, BUILTIN_PACK, type CatalogAction } from './catalog.js';
