/**
 * Live propagation between hubs on one shared store (PostgreSQL): another hub's change to a
 * document reaches this hub's store reads within milliseconds (LISTEN/NOTIFY, hub/store/postgres),
 * but components that keep derived state in memory must also react. This module wires the store's
 * `onChange(col, id)` to the same code path a local change takes, per collection:
 *
 * - `agents`, `revocations`, `meta/crl`: the CRL view; a live stream on a revoked certificate, or
 *   of an agent now revoked or removed, is cut (as `trellis agents revoke` on this hub cuts it),
 *   and it cannot reconnect; an agent whose record changed (labels) gets its config again.
 * - `users`, `groups`, `roles`, `tenants`: the IAM cache is dropped (`changed`: live streams and
 *   rule authors are checked again); a deactivated or deleted user is revoked at once.
 * - `sessions`, `apiKeys`: an ended session or a disabled/deleted key is revoked (its streams end).
 * - `rules`, `packs`: the rules engine and pack cache are rebuilt (hub rules fire here, edge
 *   rules and sensors are pushed to the agents connected here).
 * - `kv`: agents whose config uses the value get it again.
 * - `meta/maintenance`: maintenance mode is re-read (gates admin calls, executions, rule firings).
 * - `webhooks`, `joinTokens`, `hubs`: read from the store on use; nothing is cached.
 *
 * `id` undefined (after a reconnect of the store's listener reloaded everything) re-reads the
 * whole collection. One store change never throws into the store: failures are logged.
 */
import type { Logger } from '../../common/log.js';
import type { Collection, Store } from '../store/index.js';
import type { AgentRegistry } from '../agents/index.js';
import type { Auth } from '../auth/index.js';
import type { Iam } from '../iam/index.js';
import type { RulesEngine } from '../rules/index.js';
import type { Packs } from '../packs/index.js';
import type { KvStore } from '../kv/index.js';
import type { AgentConfigs } from '../agentconfig/index.js';
import type { Maintenance } from '../maintenance/index.js';
import { MAINTENANCE_DOC } from '../maintenance/index.js';

/** A collection added to COLLECTIONS without a case above fails to compile here. */
function unhandled(col: never): never {
  throw new Error(`no propagation for collection ${String(col)}`);
}

export interface PropagateDeps {
  store: Store;
  agents: AgentRegistry;
  auth: Auth;
  iam: Iam;
  rules: RulesEngine;
  packs: Packs;
  kv: KvStore;
  agentConfigs: AgentConfigs;
  maintenance: Maintenance;
  log: Logger;
}

/** Counters of what another hub's changes caused here (tests, logs). */
export interface PropagateStats { changes: number; streamsCut: number; errors: number }

export class ChangePropagation {
  readonly stats: PropagateStats = { changes: 0, streamsCut: 0, errors: 0 };
  private readonly off: () => void;
  /** IAM invalidations are coalesced: a burst of changes (a reload) drops the cache once. */
  private iamTimer?: NodeJS.Timeout;

  constructor(private readonly d: PropagateDeps) {
    this.off = d.store.onChange?.((col, id) => this.onChange(col, id)) ?? (() => undefined);
  }

  /** True when the store is shared, so other hubs' changes are heard. */
  get active(): boolean { return typeof this.d.store.onChange === 'function'; }

  private onChange(col: Collection, id: string | undefined): void {
    this.stats.changes++;
    try {
      this.apply(col, id);
    } catch (err) {
      this.failed(col, id, err);
    }
  }

  private failed(col: Collection, id: string | undefined, err: unknown): void {
    this.stats.errors++;
    this.d.log.error({ collection: col, id: id?.slice(0, 80), err: (err as Error).message }, 'applying another hub\'s change failed');
  }

  private later(col: Collection, id: string | undefined, p: Promise<unknown>): void {
    p.catch((err) => this.failed(col, id, err));
  }

  private apply(col: Collection, id: string | undefined): void {
    const d = this.d;
    switch (col) {
      case 'revocations':
        this.later(col, id, d.agents.syncRevocations(id).then((n) => { this.cut(n, id); }));
        return;
      case 'agents': {
        const { still, cut } = d.agents.syncAgents(id);
        this.cut(cut, id);
        if (id === undefined) this.later(col, id, d.agentConfigs.pushAll());
        else for (const a of still) this.later(col, a, d.agentConfigs.push(a));
        return;
      }
      case 'meta':
        if (id === undefined || id === MAINTENANCE_DOC) this.later(col, id, d.maintenance.reload());
        if (id === undefined || id === 'crl') d.agents.syncCrlNumber();
        return;
      case 'users':
      case 'sessions':
      case 'apiKeys':
        if (id !== undefined) d.auth.changedElsewhere(col, id);
        // Sessions and keys are read from the store on use; their owners' rights did not change.
        if (col === 'users' || id === undefined) this.invalidateIam();
        return;
      case 'groups':
      case 'roles':
      case 'tenants':
        this.invalidateIam();
        return;
      case 'rules':
        this.later(col, id, d.rules.reloadDocs(id));
        return;
      case 'packs':
        this.later(col, id, d.packs.reload(id));
        return;
      case 'kv':
        if (id !== undefined) d.kv.changedElsewhere(id);
        else this.later(col, id, d.agentConfigs.pushAll());
        return;
      case 'webhooks':
      case 'joinTokens':
      case 'hubs':
        return;
    }
    unhandled(col);
  }

  private cut(n: number, id: string | undefined): void {
    if (n <= 0) return;
    this.stats.streamsCut += n;
    this.d.log.info({ id: id?.slice(0, 80), streams: n }, 'agent streams cut: revoked on another hub');
  }

  /** Drops the IAM cache (live streams and rule authors re-checked) once per burst of changes. */
  private invalidateIam(): void {
    if (this.iamTimer) return;
    this.iamTimer = setTimeout(() => { this.iamTimer = undefined; this.d.iam.invalidate(); }, 5);
    this.iamTimer.unref();
  }

  close(): void {
    this.off();
    if (this.iamTimer) { clearTimeout(this.iamTimer); this.iamTimer = undefined; }
  }
}
