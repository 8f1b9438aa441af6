/**
 * A light simulated agent for benchmarks and soak runs: its own key and certificate, its own
 * mTLS connection, and the real AgentChannel protocol through agent/channel.ts's HubChannel
 * (hello, heartbeats, event batches, acknowledgements), plus what a CA rotation asks of an agent:
 * keep the CaBundle the hub sends, renew (new key, CSR, Renew) at the moment the hub names, and
 * switch to the new certificate make-before-break. Many fit in one process; nothing touches disk.
 *
 * Identities come from the hub's CA files directly (issueSimIdentities): the hub registers an
 * agent with a valid certificate on its first connection, which keeps enrollments out of timings.
 */
import crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import { pino } from 'pino';
import { ulid } from 'ulid';
import { HubChannel } from '../agent/channel.js';
import { agentFacts } from '../agent/agent.js';
import { createCSR, generateKey, keyMatchesCert } from '../certs/index.js';
import { HubPki } from '../hub/pki/index.js';
import { hubPaths } from '../hub/paths.js';
import type { Logger } from '../common/log.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

export interface SimIdentity { agentId: string; keyPem: string; certPem: string; caPem: string }

/** `n` agent identities issued by the CA in the hub data directory `hubDir` (needs its CA key). */
export function issueSimIdentities(o: { hubDir: string; names: string[]; trustDomain: string; n: number; tenant?: string; ttlMs?: number }): SimIdentity[] {
  const pki = HubPki.load(hubPaths(o.hubDir), o.names);
  const caPem = pki.trustBundle.join('');
  return Array.from({ length: o.n }, () => {
    const agentId = ulid().toLowerCase();
    const key = generateKey('ec-p256');
    const cert = pki.issueAgentCertificate({ publicKey: crypto.createPublicKey(key.privateKey), agentId, tenant: o.tenant ?? 'default', trustDomain: o.trustDomain, ttlMs: o.ttlMs ?? 86_400_000 });
    return { agentId, keyPem: key.privateKeyPem, certPem: cert.certPem, caPem };
  });
}

export interface SimAgentOptions {
  target: string;
  identity: SimIdentity;
  log?: Logger;
  onAction?: (a: T.ActionRequest__Output, agent: SimAgent) => void;
  onConfig?: (c: T.AgentConfig__Output, agent: SimAgent) => void;
  maxBackoffMs?: number;
  batchSize?: number;
}

export class SimAgent extends EventEmitter {
  readonly channel: HubChannel;
  identity: SimIdentity;
  readonly stats = { renewals: 0, renewFailures: 0, bundles: 0 };
  /** The last renewal error (for a run's notes). */
  lastRenewError: string | undefined;
  private renewTimer: NodeJS.Timeout | undefined;
  private inFlight: Promise<void> | undefined;
  private closed = false;

  constructor(private readonly o: SimAgentOptions) {
    super();
    this.identity = o.identity;
    this.channel = new HubChannel({
      target: o.target,
      credentials: () => ({ caPem: this.identity.caPem, keyPem: this.identity.keyPem, certPem: this.identity.certPem }),
      hello: () => ({ facts: agentFacts(), labels: {} }),
      onAction: (a) => o.onAction?.(a, this),
      onCancel: () => undefined,
      onConfig: (c) => o.onConfig?.(c, this),
      log: o.log ?? pino({ level: 'silent' }),
      maxBackoffMs: o.maxBackoffMs ?? 2_000,
      batchSize: o.batchSize,
      onSuperseded: () => this.renew().then(() => true, () => false),
    });
    this.channel.on('welcome', (w: T.Welcome__Output) => this.applyBundle(w.caBundle));
    this.channel.on('caBundle', (certs: string[], b: T.CaBundle__Output) => {
      this.applyBundle(certs);
      if (b?.renew) this.renewIn(Number(b.renewInMs) || 0);
    });
  }

  get agentId(): string { return this.identity.agentId; }

  start(): void { this.channel.start(); }

  private applyBundle(certs: string[]): void {
    if (certs.length === 0) return;
    const pem = certs.join('');
    if (pem === this.identity.caPem) return;
    this.identity = { ...this.identity, caPem: pem };
    this.stats.bundles++;
    this.emit('bundle', certs);
  }

  /** Renews after `ms` (the hub's spread), retrying every few seconds on failure. */
  renewIn(ms: number): void {
    if (this.closed) return;
    clearTimeout(this.renewTimer);
    this.renewTimer = setTimeout(() => {
      this.renew().catch((err) => { this.stats.renewFailures++; this.lastRenewError = (err as Error).message; this.renewIn(2_000 + Math.floor(Math.random() * 3_000)); });
    }, Math.max(0, ms));
    this.renewTimer.unref();
  }

  /** New key and CSR, Renew over mTLS, then a make-before-break switch of the stream. Single-flight. */
  renew(): Promise<void> {
    this.inFlight ??= (async () => {
      const key = generateKey('ec-p256');
      // A long deadline: a retry after a lost answer costs the hub a second issuance.
      const res = await this.channel.renew(createCSR({ privateKey: key.privateKey, subject: { commonName: this.identity.agentId } }), 60_000);
      if (!keyMatchesCert(key.privateKey, res.certificate)) throw new Error('renewed certificate does not match the new key');
      this.identity = { ...this.identity, keyPem: key.privateKeyPem, certPem: res.certificate, caPem: res.caBundle.length ? res.caBundle.join('') : this.identity.caPem };
      this.stats.renewals++;
      this.emit('renewed');
      await this.switchStream();
    })().finally(() => { this.inFlight = undefined; });
    return this.inFlight;
  }

  /** Make-before-break to the new certificate; retried while the hub is away and the old stream lives. */
  private async switchStream(): Promise<void> {
    for (let i = 0; i < 30 && !this.closed; i++) {
      const cur = this.channel.connectedCert;
      if (cur === undefined || cur === this.identity.certPem) return;
      try { await this.channel.reconnectWithNewCredentials(); return; } catch { await new Promise((r) => setTimeout(r, 1_000 + Math.floor(Math.random() * 2_000))); }
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.renewTimer);
    await this.channel.close();
  }
}
