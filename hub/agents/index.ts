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
import { matchesSelector } from '../validate.js';
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
  /** Every serial ever issued to this agent, for revocation. */
  serials: Array<{ serial: string; notAfter: number }>;
  revoked: boolean;
  revokedAt?: number;
  lastSeen?: number;
}

export interface RevocationDoc extends Doc { serial: string; agentId: string; revokedAt: number; notAfter: number; reason: string }

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

export class AgentRegistry {
  private readonly links = new Map<string, Set<AgentLink>>();
  private readonly lastSeen = new Map<string, number>();
  private revokedSerials = new Set<string>();
  private crlNumber = 1;

  constructor(private readonly store: Store, private readonly opts: { heartbeatTtlMs: number }) {}

  async load(): Promise<void> {
    const revs = await this.store.list<RevocationDoc>('revocations');
    this.revokedSerials = new Set(revs.map((r) => r.serial));
    this.crlNumber = revs.length + 1;
  }

  async create(doc: AgentDoc): Promise<void> {
    await this.store.insert('agents', doc);
  }

  async get(id: string): Promise<AgentDoc | undefined> {
    return this.store.get<AgentDoc>('agents', id);
  }

  async require(id: string): Promise<AgentDoc> {
    const a = await this.get(id);
    if (!a) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no agent ${id}: see \`trellis agents list\``);
    return a;
  }

  isSerialRevoked(serial: string): boolean {
    return this.revokedSerials.has(normalizeSerial(serial));
  }

  async recordRenewal(id: string, serial: string, notAfter: number): Promise<void> {
    await this.store.update<AgentDoc>('agents', id, (a) => {
      if (!a) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no agent ${id}`);
      const now = Date.now();
      return { ...a, certSerial: serial, certExpiresAt: notAfter, serials: [...a.serials.filter((s) => s.notAfter > now), { serial, notAfter }] };
    });
  }

  /**
   * Stores the facts of a Hello, bounded and cleaned (hub/agents/facts.ts); returns what had to be
   * changed, for the caller's log line.
   */
  async updateHello(id: string, raw: Facts): Promise<string[]> {
    const { facts, problems } = cleanFacts(raw);
    await this.store.update<AgentDoc>('agents', id, (a) => (a ? { ...a, facts, hostname: facts.hostname || a.hostname, lastSeen: Date.now() } : undefined));
    return problems;
  }

  attach(link: AgentLink): void {
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

  isOnline(agentId: string, now = Date.now()): boolean {
    return this.links.has(agentId) && now - (this.lastSeen.get(agentId) ?? 0) < this.opts.heartbeatTtlMs;
  }

  view(a: AgentDoc, now = Date.now()): AgentView {
    const online = !a.revoked && this.isOnline(a.id, now);
    return { ...a, lastSeen: this.lastSeen.get(a.id) ?? a.lastSeen, online, status: a.revoked ? 'revoked' : online ? 'online' : 'offline', remote: this.link(a.id)?.remote };
  }

  async list(filter: { tenant?: string; selector?: Record<string, string> } = {}): Promise<AgentView[]> {
    const now = Date.now();
    const docs = await this.store.list<AgentDoc>('agents', (a) =>
      (filter.tenant === undefined || a.tenant === filter.tenant) && matchesSelector(a.labels, filter.selector ?? {}));
    return docs.map((a) => this.view(a, now));
  }

  /** Revokes every certificate of the agent and cuts its live streams at once. */
  async revoke(id: string, reason: string): Promise<{ serials: string[]; disconnected: boolean }> {
    const now = Date.now();
    const agent = await this.store.update<AgentDoc>('agents', id, (a) => {
      if (!a) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no agent ${id}: see \`trellis agents list\``);
      return { ...a, revoked: true, revokedAt: a.revokedAt ?? now };
    });
    const serials = agent!.serials.map((s) => normalizeSerial(s.serial));
    for (const s of agent!.serials) {
      const serial = normalizeSerial(s.serial);
      this.revokedSerials.add(serial);
      if (!(await this.store.get('revocations', serial))) {
        await this.store.put<RevocationDoc>('revocations', { id: serial, serial, agentId: id, revokedAt: now, notAfter: s.notAfter, reason });
      }
    }
    this.crlNumber++;
    const set = this.links.get(id);
    const disconnected = !!set && set.size > 0;
    for (const l of [...(set ?? [])]) l.close('revoked', `the certificate of agent ${id} was revoked; enroll again with a new join token`);
    return { serials, disconnected };
  }

  async revokedEntries(): Promise<{ entries: RevokedEntry[]; crlNumber: number }> {
    const revs = await this.store.list<RevocationDoc>('revocations');
    return { entries: revs.map((r) => ({ serialHex: r.serial, revokedAt: new Date(r.revokedAt) })), crlNumber: this.crlNumber };
  }

  /** Closes every live link (hub shutdown) and persists last-seen times once. */
  async closeAll(): Promise<void> {
    for (const set of this.links.values()) for (const l of [...set]) l.close('shutdown', 'the hub is shutting down');
    for (const [id, t] of this.lastSeen) {
      await this.store.update<AgentDoc>('agents', id, (a) => (a ? { ...a, lastSeen: t } : undefined));
    }
  }
}
