/**
 * The agent registry: persisted records (enrollment, labels, certificate, revocation) in the
 * store, and volatile facts (live links, last seen) in memory only, so heartbeats never write
 * the JSON document.
 */
import type { Doc, Store } from '../store/index.js';
import { TrellisError } from '../../common/errors.js';
import { normalizeSerial, type RevokedEntry } from '../../certs/index.js';
import type { HubMessage } from '../../common/proto-gen/trellis/v1/HubMessage.js';
import type { Facts } from '../../common/proto-gen/trellis/v1/Facts.js';
import { checkLabelKey, checkLabels } from '../validate.js';
import { matchesSelector, type Selector } from '../../common/selector.js';
import { cleanFacts } from './facts.js';

export { cleanFacts } from './facts.js';

export interface AgentDoc extends Doc {
  tenant: string;
  hostname: string;
  labels: Record<string, string>;
  facts?: Facts;
  enrolledAt: number;
  tokenId: string;
  spiffeId: string;
  certSerial: string;
  certExpiresAt: number;
  /** SHA-256 of the CA that issued certSerial (absent on records from before CA rotation: the CA of that time). */
  certCa?: string;
  /** The agent's serials still valid (not expired, not replaced by a renewal), for revocation. */
  serials: Array<{ serial: string; notAfter: number }>;
  /**
   * The last renewal, until its certificate first connects: `from` (already refused for new
   * connections) may still ask for a renewal again, in case the answer to the first was lost.
   */
  pendingRenewal?: { from: string; to: string; atMs: number };
  revoked: boolean;
  revokedAt?: number;
  lastSeen?: number;
}

/** The facts a `facts_expr` filter reads (ListAgents), by the names AgentInfo.facts has. */
export const FACT_KEYS = ['hostname', 'os', 'arch', 'osRelease', 'cpus', 'memoryBytes', 'agentVersion'] as const;

/** An agent's facts as selector labels: each known fact that is set, as text (numbers in decimal). */
export function factsLabels(f: Readonly<Facts> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (!f) return out;
  for (const k of FACT_KEYS) {
    const v = (f as Record<string, unknown>)[k];
    if (v !== undefined && v !== null && v !== '' && v !== 0 && typeof v !== 'object') out[k] = String(v);
  }
  return out;
}

export interface RevocationDoc extends Doc {
  serial: string; agentId: string; revokedAt: number; notAfter: number; reason: string;
  /** Set when a renewal replaced this certificate: the serial that replaced it. */
  supersededBy?: string;
}

/** The reason stored for certificates replaced by a renewal. */
export const SUPERSEDED = 'superseded by renewal';
/** Expired certificates stay this long in the CRL (clock skew), then drop out of it. */
const CRL_EXPIRED_GRACE_MS = 3_600_000;

/** The shortest id prefix that names an agent. */
export const MIN_ID_PREFIX = 4;

export type CloseReason = 'revoked' | 'replaced' | 'expired' | 'shutdown';

/** A live connection of an agent, as the domain sees it (no gRPC types). */
export interface AgentLink {
  readonly agentId: string;
  readonly serial: string;
  /** The verified client certificate of this link (secrets are sealed to its key). */
  readonly certPem: string;
  readonly remote: string;
  readonly connectedAt: number;
  /** Queues a message; false only when the link is closed and nothing was queued. */
  send(msg: HubMessage): boolean;
  close(reason: CloseReason, message: string): void;
}

export interface AgentView extends AgentDoc { online: boolean; status: 'online' | 'offline' | 'revoked'; remote?: string }

/**
 * Last-seen times live in memory; the stored ones are refreshed in one batch every this often
 * (and at shutdown), for agents whose stored time is this much older. A hub killed with -9 loses
 * at most this much of them; a (re)connect never writes the state document for them.
 */
export const LAST_SEEN_PERSIST_MS = 10 * 60_000;

export class AgentRegistry {
  private readonly links = new Map<string, Set<AgentLink>>();
  private readonly lastSeen = new Map<string, number>();
  /** Revoked serials (normalized) → their record; expired ones are pruned (CRL stays bounded). */
  private revoked = new Map<string, RevocationDoc>();
  private crlNumber = 1;

  private readonly now: () => number;

  constructor(private readonly store: Store, private readonly opts: { heartbeatTtlMs: number; now?: () => number }) {
    this.now = opts.now ?? Date.now;
  }

  async load(): Promise<void> {
    const revs = await this.store.list<RevocationDoc>('revocations');
    this.revoked = new Map(revs.map((r) => [r.serial, r]));
    const meta = await this.store.get<Doc & { number?: number }>('meta', 'crl');
    // The CRL number only grows, even when expired entries drop out of the list.
    this.crlNumber = Math.max(meta?.number ?? 0, revs.length + 1);
    await this.pruneRevocations();
  }

  /** The revocation record of a serial, if it is revoked (or replaced by a renewal). */
  revocation(serial: string): RevocationDoc | undefined {
    return this.revoked.get(normalizeSerial(serial));
  }

  /** How many revocation records are kept (a test hook: bounded by the unexpired ones). */
  get revocationCount(): number { return this.revoked.size; }

  /** The number the next CRL carries (only ever grows). */
  get currentCrlNumber(): number { return this.crlNumber; }

  private async addRevocation(r: { serial: string; agentId: string; revokedAt: number; notAfter: number; reason: string; supersededBy?: string }): Promise<void> {
    const serial = normalizeSerial(r.serial);
    if (this.revoked.has(serial)) return;
    const doc: RevocationDoc = { ...r, id: serial, serial };
    this.revoked.set(serial, doc);
    await this.store.put<RevocationDoc>('revocations', doc);
  }

  /** Drops revocations of certificates expired for over an hour: TLS refuses them anyway. */
  private async pruneRevocations(now = this.now()): Promise<void> {
    let dropped = 0;
    for (const [serial, r] of [...this.revoked]) {
      if (r.notAfter >= now - CRL_EXPIRED_GRACE_MS) continue;
      this.revoked.delete(serial);
      await this.store.delete('revocations', serial);
      dropped++;
    }
    if (dropped) await this.bumpCrlNumber();
  }

  private async bumpCrlNumber(): Promise<void> {
    this.crlNumber++;
    await this.store.put('meta', { id: 'crl', number: this.crlNumber });
  }

  async create(doc: AgentDoc): Promise<void> {
    await this.store.insert('agents', doc);
  }

  async get(id: string): Promise<AgentDoc | undefined> {
    return this.store.get<AgentDoc>('agents', id);
  }

  /** The stored record itself (deep-frozen, not a copy): for hot paths that only read it. */
  peek(id: string): Readonly<AgentDoc> | undefined {
    return this.store.peek<AgentDoc>('agents', id);
  }

  async require(id: string): Promise<AgentDoc> {
    const a = await this.get(id);
    if (!a) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no agent ${id}: see \`trellis agents list\``);
    return a;
  }

  isSerialRevoked(serial: string): boolean {
    return this.revoked.has(normalizeSerial(serial));
  }

  /**
   * A renewal: the new certificate becomes the agent's only valid one for new connections;
   * every other unexpired serial of the agent goes into the CRL as superseded. Live streams
   * are not cut here (the agent switches make-before-break; see retireSuperseded).
   */
  async recordRenewal(id: string, r: { from: string; serial: string; notAfter: number; ca?: string }): Promise<{ superseded: string[] }> {
    const now = this.now();
    const serial = normalizeSerial(r.serial);
    let replaced: Array<{ serial: string; notAfter: number }> = [];
    await this.store.update<AgentDoc>('agents', id, (a) => {
      if (!a) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no agent ${id}`);
      replaced = a.serials.filter((s) => s.notAfter > now && normalizeSerial(s.serial) !== serial);
      return {
        ...a, certSerial: serial, certExpiresAt: r.notAfter, certCa: r.ca ?? a.certCa, serials: [{ serial, notAfter: r.notAfter }],
        pendingRenewal: { from: normalizeSerial(r.from), to: serial, atMs: now },
      };
    });
    for (const s of replaced) await this.addRevocation({ serial: s.serial, agentId: id, revokedAt: now, notAfter: s.notAfter, reason: SUPERSEDED, supersededBy: serial });
    await this.pruneRevocations(now);
    await this.bumpCrlNumber();
    return { superseded: replaced.map((s) => normalizeSerial(s.serial)) };
  }

  /** The certificate of the last renewal connected: its predecessor may no longer renew. */
  async confirmSerial(id: string, serial: string): Promise<void> {
    const doc = this.peek(id);
    if (doc?.pendingRenewal?.to !== normalizeSerial(serial)) return;
    await this.store.update<AgentDoc>('agents', id, (a) => {
      if (!a || a.pendingRenewal?.to !== normalizeSerial(serial)) return a;
      const { pendingRenewal: _done, ...rest } = a;
      return rest as AgentDoc;
    });
  }

  /**
   * Streams still on a replaced certificate are closed after `graceMs` (the agent retires its
   * old stream itself as soon as the new one is up; this ends any other holder of the old key).
   */
  retireSuperseded(agentId: string, graceMs: number): void {
    if ((this.links.get(agentId)?.size ?? 0) < 2) return; // only the new stream: nothing to retire
    const t = setTimeout(() => {
      for (const l of [...(this.links.get(agentId) ?? [])]) {
        if (this.revocation(l.serial)?.reason === SUPERSEDED) l.close('replaced', `this stream used certificate ${l.serial}, replaced by a renewal`);
      }
    }, graceMs);
    t.unref();
  }

  /** Admin label change: `remove` first, then `set`; the result passes the one label validator. */
  async setLabels(id: string, change: { set?: Record<string, string>; remove?: string[] }): Promise<{ agent: AgentDoc; before: Record<string, string> }> {
    const set = checkLabels(change.set ?? {});
    const remove = (change.remove ?? []).map(checkLabelKey);
    if (Object.keys(set).length === 0 && remove.length === 0) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'name labels to set (k=v) or to remove (--remove k)');
    let before: Record<string, string> = {};
    const agent = await this.store.update<AgentDoc>('agents', id, (a) => {
      if (!a) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no agent ${id}: see \`trellis agents list\``);
      before = a.labels;
      const labels = { ...a.labels };
      for (const k of remove) delete labels[k];
      return { ...a, labels: checkLabels({ ...labels, ...set }) };
    });
    return { agent: agent!, before };
  }

  /**
   * Stores the facts of a Hello, bounded and cleaned (hub/agents/facts.ts); returns what had to be
   * changed, for the caller's log line.
   */
  async updateHello(id: string, raw: Facts): Promise<string[]> {
    const { facts, problems } = cleanFacts(raw);
    // A reconnect storm (hub restart) re-sends the same facts from every agent: no state write for
    // those, whatever the stored last-seen (the store rewrites its whole file per write batch; at
    // 10,000 agents that is MBs per batch). Last-seen goes to disk with persistLastSeen.
    const cur = this.store.peek<AgentDoc>('agents', id);
    if (cur && JSON.stringify(cur.facts ?? null) === JSON.stringify(facts) && cur.hostname === (facts.hostname || cur.hostname)) return problems;
    const now = Date.now();
    await this.store.update<AgentDoc>('agents', id, (a) => (a ? { ...a, facts, hostname: facts.hostname || a.hostname, lastSeen: now } : undefined));
    return problems;
  }

  /**
   * Stores the in-memory last-seen of every agent whose stored one is at least `staleMs` older,
   * all in one store write batch (a timer of the hub every LAST_SEEN_PERSIST_MS, and shutdown).
   * Returns how many records were updated.
   */
  async persistLastSeen(staleMs = LAST_SEEN_PERSIST_MS): Promise<number> {
    const now = Date.now();
    const due: Array<[string, number]> = [];
    for (const [id, t] of this.lastSeen) {
      // A connected agent is seen now (heartbeats refresh the memory, not the disk).
      const seen = this.links.has(id) ? Math.max(t, now) : t;
      const stored = this.store.peek<AgentDoc>('agents', id);
      if (stored && seen - (stored.lastSeen ?? 0) >= staleMs) due.push([id, seen]);
    }
    await Promise.all(due.map(([id, t]) => this.store.update<AgentDoc>('agents', id, (a) => (a ? { ...a, lastSeen: Math.max(t, a.lastSeen ?? 0) } : undefined))));
    return due.length;
  }

  /** Set by closeAll(): no new link is attached while the hub shuts down. */
  private closing = false;

  /**
   * Adds a welcomed agent's live link. While the hub shuts down (after closeAll) the link is
   * closed at once with 'shutdown' (UNAVAILABLE, the agent retries): an agent that reconnects
   * quickly must not be admitted by a hub about to stop, and asked to renew or run by it.
   */
  attach(link: AgentLink): void {
    if (this.closing) {
      link.close('shutdown', 'the hub is shutting down');
      return;
    }
    let set = this.links.get(link.agentId);
    if (!set) this.links.set(link.agentId, (set = new Set()));
    set.add(link);
    this.lastSeen.set(link.agentId, Date.now());
  }

  detach(link: AgentLink): void {
    const set = this.links.get(link.agentId);
    if (!set) return;
    set.delete(link);
    if (set.size === 0) this.links.delete(link.agentId);
    this.lastSeen.set(link.agentId, Date.now());
  }

  touch(agentId: string): void {
    this.lastSeen.set(agentId, Date.now());
  }

  /** The newest live link of an agent (after a certificate switch, the new one). */
  link(agentId: string): AgentLink | undefined {
    const set = this.links.get(agentId);
    if (!set || set.size === 0) return undefined;
    let newest: AgentLink | undefined;
    for (const l of set) if (!newest || l.connectedAt >= newest.connectedAt) newest = l;
    return newest;
  }

  /** Live links: the newest of each connected agent, or every one with `all`. */
  connectedLinks(all = false): AgentLink[] {
    const out: AgentLink[] = [];
    for (const [id, set] of this.links) {
      if (all) out.push(...set);
      else { const l = this.link(id); if (l) out.push(l); }
    }
    return out;
  }

  isOnline(agentId: string, now = Date.now()): boolean {
    if (this.elsewhere?.(agentId)) return true; // attached to another live hub of the cluster
    return this.links.has(agentId) && now - (this.lastSeen.get(agentId) ?? 0) < this.opts.heartbeatTtlMs;
  }

  /** Several hubs: whether an agent is attached to another live hub (hub/executions/cluster.ts). */
  private elsewhere?: (agentId: string) => boolean;
  setElsewhere(fn: (agentId: string) => boolean): void { this.elsewhere = fn; }

  view(a: AgentDoc, now = Date.now()): AgentView {
    const online = !a.revoked && this.isOnline(a.id, now);
    return { ...a, lastSeen: this.lastSeen.get(a.id) ?? a.lastSeen, online, status: a.revoked ? 'revoked' : online ? 'online' : 'offline', remote: this.link(a.id)?.remote };
  }

  async list(filter: { tenant?: string; selector?: Selector } = {}): Promise<AgentView[]> {
    const now = Date.now();
    const docs = await this.store.list<AgentDoc>('agents', (a) =>
      (filter.tenant === undefined || a.tenant === filter.tenant) && matchesSelector(a.labels, filter.selector ?? []));
    return docs.map((a) => this.view(a, now));
  }

  /**
   * One page of the agents list (the console's agents page, `trellis agents list`): the records
   * that pass `tenant`, `selector`, `status` and `keep`, in id order (enrollment order: ids are
   * ULIDs), after `afterId`, at most `limit` of them (0: all), and how many passed in all.
   * The filters read the stored records in place (deep-frozen, no copy): only the page's records
   * are copied, so a page of 50 out of 5,000 agents copies 50 records, not 5,000.
   */
  async page(o: { tenant?: string; selector?: Selector; facts?: Selector; status?: AgentView['status'] | ''; keep?: (a: Readonly<AgentDoc>) => boolean; limit: number; afterId?: string }): Promise<{ agents: AgentView[]; total: number }> {
    const now = Date.now();
    const hits: Array<Readonly<AgentDoc>> = [];
    // The filter sees each stored record itself; keeping the reference (and answering false) reads
    // them all without the copy `list` makes of every match.
    await this.store.list<AgentDoc>('agents', (a) => {
      if ((o.tenant === undefined || a.tenant === o.tenant) && matchesSelector(a.labels, o.selector ?? [])
        && (!o.status || (a.revoked ? 'revoked' : this.isOnline(a.id, now) ? 'online' : 'offline') === o.status)
        && (!o.keep || o.keep(a)) && (!o.facts?.length || matchesSelector(factsLabels(a.facts), o.facts))) hits.push(a);
      return false;
    });
    let page = hits;
    if (o.limit || o.afterId) {
      hits.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
      const from = o.afterId ? hits.findIndex((a) => a.id > o.afterId!) : 0;
      page = from < 0 ? [] : hits.slice(from, o.limit ? from + o.limit : undefined);
    }
    return { agents: page.map((a) => this.view(structuredClone(a) as AgentDoc, now)), total: hits.length };
  }

  /**
   * The agent an operator named: its id, a unique id prefix (at least MIN_ID_PREFIX characters),
   * or an exact hostname, in `tenant` (undefined: every tenant). Not found → NOT_FOUND; more than
   * one → INVALID_ARGUMENT listing the candidates (id and hostname).
   */
  async resolve(ref: string, tenant?: string): Promise<AgentDoc> {
    const inTenant = (a: AgentDoc) => tenant === undefined || a.tenant === tenant;
    const exact = await this.get(ref);
    if (exact && inTenant(exact)) return exact;
    const lower = ref.toLowerCase();
    // The stored records read in place (the filter keeps references, nothing is copied): the
    // one found is copied at the end.
    const all: Array<Readonly<AgentDoc>> = [];
    if (ref) await this.store.list<AgentDoc>('agents', (a) => { if (inTenant(a)) all.push(a); return false; });
    let found = ref.length >= MIN_ID_PREFIX ? all.filter((a) => a.id.toLowerCase().startsWith(lower)) : [];
    if (found.length === 0) found = all.filter((a) => a.hostname && a.hostname.toLowerCase() === lower);
    // A host re-enrolled after a revocation: its live record wins over the revoked ones.
    if (found.length > 1 && found.some((a) => !a.revoked)) found = found.filter((a) => !a.revoked);
    if (found.length === 1) return structuredClone(found[0]!) as AgentDoc;
    if (found.length === 0) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no agent ${ref.slice(0, 80)} (by id, id prefix of ${MIN_ID_PREFIX}+ characters or hostname): see \`trellis agents list\``);
    const shown = found.slice(0, 10).map((a) => `${a.id} (${a.hostname || '-'}${a.revoked ? ', revoked' : ''})`).join(', ');
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `"${ref.slice(0, 80)}" names ${found.length} agents: ${shown}${found.length > 10 ? ', …' : ''}; give more of the id`);
  }

  /**
   * Deletes agent records: revoked ones (`revoked`) and those not seen for `offlineForMs` (their
   * certificates are revoked first, so a pruned agent cannot come back). The CRL keeps the
   * revoked serials until they expire. Returns the pruned records.
   */
  async prune(o: { tenant?: string; revoked: boolean; offlineForMs?: number; reason: string; dryRun?: boolean }): Promise<AgentDoc[]> {
    const now = this.now();
    const docs = await this.store.list<AgentDoc>('agents', (a) => o.tenant === undefined || a.tenant === o.tenant);
    const pruned: AgentDoc[] = [];
    for (const a of docs) {
      const v = this.view(a, now);
      const lastSeen = v.lastSeen ?? a.enrolledAt;
      const stale = o.offlineForMs !== undefined && !a.revoked && !v.online && !this.links.has(a.id) && now - lastSeen >= o.offlineForMs;
      if (!(o.revoked && a.revoked) && !stale) continue;
      pruned.push(a);
      if (o.dryRun) continue;
      if (!a.revoked) await this.revoke(a.id, o.reason);
      await this.store.delete('agents', a.id);
      this.lastSeen.delete(a.id);
    }
    return pruned;
  }

  /**
   * Another hub (shared store) changed a revocation record (`serial` undefined: maybe all of
   * them): this hub's CRL view follows, and a live stream on a newly revoked certificate is cut
   * as a revocation here cuts it (a renewal's superseded certificate keeps its stream: the agent
   * retires it). Returns how many streams were cut.
   */
  async syncRevocations(serial?: string): Promise<number> {
    if (serial === undefined) {
      const revs = await this.store.list<RevocationDoc>('revocations');
      this.revoked = new Map(revs.map((r) => [r.serial, r]));
    } else {
      const s = normalizeSerial(serial);
      const doc = this.store.peek<RevocationDoc>('revocations', s);
      if (doc) this.revoked.set(s, { ...doc });
      else this.revoked.delete(s);
    }
    this.syncCrlNumber();
    let cut = 0;
    for (const l of this.connectedLinks(true)) {
      if (serial !== undefined && normalizeSerial(l.serial) !== normalizeSerial(serial)) continue;
      const rev = this.revocation(l.serial);
      if (!rev || rev.reason === SUPERSEDED) continue;
      l.close('revoked', `the certificate of agent ${l.agentId} was revoked; enroll again with a new join token`);
      cut++;
    }
    return cut;
  }

  /** The CRL number another hub stored (it only grows). */
  syncCrlNumber(): void {
    const meta = this.store.peek<Doc & { number?: number }>('meta', 'crl');
    this.crlNumber = Math.max(this.crlNumber, meta?.number ?? 0);
  }

  /**
   * Another hub changed an agent's record (`id` undefined: maybe every record): live streams of
   * an agent now revoked, or whose record was deleted, are cut. Returns the agents connected here
   * whose record is still valid (their config may have changed: labels) and how many streams
   * were cut.
   */
  syncAgents(id?: string): { still: string[]; cut: number } {
    const ids = id === undefined ? [...this.links.keys()] : this.links.has(id) ? [id] : [];
    const still: string[] = [];
    let cut = 0;
    for (const a of ids) {
      const doc = this.store.peek<AgentDoc>('agents', a);
      if (doc && !doc.revoked) { still.push(a); continue; }
      for (const l of [...(this.links.get(a) ?? [])]) {
        l.close('revoked', doc ? `the certificate of agent ${a} was revoked; enroll again with a new join token` : `agent ${a} was removed; enroll again with a new join token`);
        cut++;
      }
    }
    return { still, cut };
  }

  /** Revokes every certificate of the agent and cuts its live streams at once. */
  async revoke(id: string, reason: string): Promise<{ serials: string[]; disconnected: boolean }> {
    const now = this.now();
    const agent = await this.store.update<AgentDoc>('agents', id, (a) => {
      if (!a) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no agent ${id}: see \`trellis agents list\``);
      return { ...a, revoked: true, revokedAt: a.revokedAt ?? now };
    });
    const serials = agent!.serials.map((s) => normalizeSerial(s.serial));
    for (const s of agent!.serials) await this.addRevocation({ serial: s.serial, agentId: id, revokedAt: now, notAfter: s.notAfter, reason });
    await this.pruneRevocations(now);
    await this.bumpCrlNumber();
    const set = this.links.get(id);
    const disconnected = !!set && set.size > 0;
    for (const l of [...(set ?? [])]) l.close('revoked', `the certificate of agent ${id} was revoked; enroll again with a new join token`);
    return { serials, disconnected };
  }

  async revokedEntries(): Promise<{ entries: RevokedEntry[]; crlNumber: number }> {
    await this.pruneRevocations();
    return { entries: [...this.revoked.values()].map((r) => ({ serialHex: r.serial, revokedAt: new Date(r.revokedAt) })), crlNumber: this.crlNumber };
  }

  /** Closes every live link (hub shutdown) and persists last-seen times once. */
  async closeAll(): Promise<void> {
    this.closing = true;
    for (const set of this.links.values()) for (const l of [...set]) l.close('shutdown', 'the hub is shutting down');
    // All at once: the store applies each in memory and writes them in one batch (one at a time,
    // 10,000 agents meant 10,000 file writes and a shutdown of minutes).
    await Promise.all([...this.lastSeen].map(([id, t]) => this.store.update<AgentDoc>('agents', id, (a) => (a ? { ...a, lastSeen: t } : undefined))));
  }
}
