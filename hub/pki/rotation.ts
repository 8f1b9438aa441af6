/**
 * CA rotation in phases, after Teleport's: start → agents renew → commit (or rollback).
 *
 * - start: a new ("next") CA, generated or operator-supplied; its key is stored like the CA key
 *   (ca-next-key.pem, 0600). The trust bundle becomes old+new: agents get it at once (CaBundle)
 *   and in every Welcome/Enroll/Renew answer; the agent port accepts client certificates of both
 *   CAs (the grpc-js CA provider is updated in place: no listener restart, no stream dropped).
 *   New enrollments and renewals get next-CA certificates; every connected agent is told to renew
 *   at a moment spread over the window (stable per agent: startedAt + hash(id) × window).
 * - The hub keeps serving its old-CA certificate until commit, so an agent that was offline for
 *   the whole rotation (trusting only the old CA) still connects, gets the bundle and renews.
 * - commit: refused while an active agent still holds an old-CA certificate (unless forced). The
 *   hub certificate is issued from the next CA, the next CA becomes the CA (ca.pem/ca-key.pem),
 *   the old one leaves the bundle; streams still on old-CA certificates are closed with a
 *   "re-enroll" message, and the agent port refuses old-CA certificates at the handshake.
 * - rollback: the old CA alone issues again; the next CA stays trusted for agent certificates
 *   only ("retired") until every agent it issued has renewed from the old CA (they are told to at
 *   once, spread over the window) or its last certificate expired.
 *
 * Crash safety: ca-rotation.json is the single commit point of each step (atomic writes). A commit
 * writes the new hub certificate (hub-next*.pem), then flips the phase to `committing`, then
 * replaces ca.pem, ca-key.pem, hub.pem and hub-key.pem; `recoverRotation` (run before the PKI is
 * loaded) finishes a commit cut short and removes what an interrupted start or rollback left.
 */
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { createHash, randomInt, type KeyObject } from 'node:crypto';
import { z } from 'zod';
import {
  certInfo, createCA, fingerprintSha256, keyMatchesCert, loadPrivateKey, splitPemBundle, verifyIssuedBy, type KeyType,
} from '../../certs/index.js';
import { describeKey } from '../../certs/keys.js';
import { TrellisError } from '../../common/errors.js';
import { atomicWriteFile, readJsonFile } from '../../common/fsutil.js';
import { formatDuration } from '../../common/duration.js';
import type { Logger } from '../../common/log.js';
import type { AuditSink } from '../audit/types.js';
import type { HubPaths } from '../paths.js';
import type { AgentDoc, AgentLink, AgentRegistry } from '../agents/index.js';
import { issueHubCertificate, type CaMaterial, type HubPki } from './index.js';

export const DEFAULT_WINDOW_MS = 10 * 60_000;
export const MAX_WINDOW_MS = 7 * 86_400_000;
/** An agent counts as active when connected, or seen (or enrolled) within this long. */
export const ACTIVE_WITHIN_MS = 7 * 86_400_000;
/** Key types a rotation may generate. */
export const ROTATION_KEY_TYPES: readonly KeyType[] = ['ec-p256', 'ec-p384', 'rsa-3072', 'rsa-4096'];
const LIST_MAX = 20;
const SWEEP_MS = 60_000;

const StateSchema = z.object({
  version: z.literal(1),
  phase: z.enum(['idle', 'started', 'committing']),
  startedAtMs: z.number().default(0),
  startedBy: z.string().default(''),
  windowMs: z.number().default(DEFAULT_WINDOW_MS),
  /** Renewals are spread over renewFromMs .. renewFromMs + windowMs (start, or rollback). */
  renewFromMs: z.number().default(0),
  source: z.enum(['generated', 'supplied']).optional(),
  next: z.object({ chain: z.array(z.string()).min(1) }).optional(),
  previous: z.object({ chain: z.array(z.string()).min(1) }).optional(),
  retired: z.object({ chain: z.array(z.string()).min(1), untilMs: z.number() }).optional(),
  lastEvent: z.string().default(''),
});
export type RotationState = z.output<typeof StateSchema>;

const IDLE: RotationState = { version: 1, phase: 'idle', startedAtMs: 0, startedBy: '', windowMs: DEFAULT_WINDOW_MS, renewFromMs: 0, lastEvent: '' };

function readState(paths: HubPaths): RotationState {
  return existsSync(paths.caRotation) ? readJsonFile(paths.caRotation, StateSchema) : { ...IDLE };
}

async function writeState(paths: HubPaths, s: RotationState): Promise<void> {
  await atomicWriteFile(paths.caRotation, JSON.stringify(s, null, 2) + '\n', { mode: 0o600 });
}

function rm(f: string): void { rmSync(f, { force: true }); }

/** The file replacements of a commit; idempotent, so a restart after a crash simply runs them again. */
async function commitFiles(paths: HubPaths, s: RotationState): Promise<void> {
  const key = readFileSync(paths.caNextKey, 'utf8');
  const hubCert = readFileSync(paths.hubNextCert, 'utf8');
  const hubKey = readFileSync(paths.hubNextKey, 'utf8');
  if (s.previous) await atomicWriteFile(paths.caPrevious, s.previous.chain.join(''), { mode: 0o644 });
  await atomicWriteFile(paths.caKey, key, { mode: 0o600 });
  await atomicWriteFile(paths.caCert, s.next!.chain.join(''), { mode: 0o644 });
  await atomicWriteFile(paths.hubKey, hubKey, { mode: 0o600 });
  await atomicWriteFile(paths.hubCert, hubCert, { mode: 0o644 });
}

/**
 * Run at hub start before the PKI is loaded: finishes a commit cut short (phase `committing`) and
 * removes files an interrupted step left behind. Returns a line for the log when it did something.
 */
export async function recoverRotation(paths: HubPaths): Promise<string | undefined> {
  const s = readState(paths);
  if (s.phase === 'committing') {
    if (!s.next || !existsSync(paths.caNextKey) || !existsSync(paths.hubNextCert) || !existsSync(paths.hubNextKey)) {
      throw new TrellisError('TRELLIS_E_CONFIG', `${paths.caRotation} says a CA rotation commit was under way, but ca-next-key.pem, hub-next.pem or hub-next-key.pem is missing: restore them from a backup`);
    }
    await commitFiles(paths, s);
    await writeState(paths, { ...IDLE, lastEvent: `${s.lastEvent || 'committed'} (finished at restart)` });
    for (const f of [paths.caNextKey, paths.hubNextCert, paths.hubNextKey]) rm(f);
    return `a CA rotation commit cut short was finished: CA sha256 ${fingerprintSha256(s.next.chain[0]!)} is now the hub CA`;
  }
  // hub-next*.pem only live between "commit issued the hub certificate" and the end of a commit.
  const orphans = [paths.hubNextCert, paths.hubNextKey, ...(s.phase === 'idle' ? [paths.caNextKey] : [])].filter((f) => existsSync(f));
  for (const f of orphans) rm(f);
  if (s.phase === 'started' && !existsSync(paths.caNextKey)) {
    throw new TrellisError('TRELLIS_E_CONFIG', `a CA rotation is under way (${paths.caRotation}) but its key ${paths.caNextKey} is missing: restore it from a backup, or remove ${paths.caRotation} to abandon the rotation (agents that renewed from the new CA must then re-enroll)`);
  }
  return orphans.length ? `removed files of an interrupted CA rotation step: ${orphans.join(', ')}` : undefined;
}

export interface RotationAgentView { id: string; tenant: string; hostname: string; online: boolean; lastSeenMs: number }

export interface RotationStatus {
  phase: 'idle' | 'started';
  startedAtMs: number;
  windowMs: number;
  startedBy: string;
  currentCa: string;
  nextCa?: string;
  retiredCa?: string;
  agentsActive: number;
  agentsOnNewCa: number;
  agentsOnOldCa: number;
  agentsOnRetiredCa: number;
  lagging: RotationAgentView[];
  activeWithinMs: number;
  hubCertIssuer: string;
  hubCertIssuerFingerprint: string;
  trustBundle: string[];
  leftBehind: RotationAgentView[];
  leftBehindCount: number;
  lastEvent: string;
}

export interface StartOptions { keyType?: string; caCertPem?: string; caKeyPem?: string; windowMs?: number; by: string }

export interface CaRotationDeps {
  paths: HubPaths;
  pki: HubPki;
  agents: AgentRegistry;
  log: Logger;
  audit: AuditSink;
  /** Hub names (config), always in a hub certificate issued at commit. */
  names: readonly string[];
  activeWithinMs?: number;
}

/**
 * An agent is on a CA once the certificate that CA issued it has connected: a renewal whose
 * answer may have been lost (pendingRenewal) does not count yet, as the agent would retry it with
 * its old certificate.
 */
function movedTo(a: AgentDoc, caFingerprint: string): boolean {
  return a.certCa === caFingerprint && !a.pendingRenewal;
}

/** A number in [0, 1) from an agent id: where in the window the agent renews. */
function spreadOf(agentId: string): number {
  return createHash('sha256').update(agentId).digest().readUInt32BE(0) / 2 ** 32;
}

function view(a: AgentDoc & { online: boolean; lastSeen?: number }): RotationAgentView {
  return { id: a.id, tenant: a.tenant, hostname: a.hostname, online: a.online, lastSeenMs: a.lastSeen ?? 0 };
}

/** Checks an operator-supplied CA: a CA certificate (chain in order), its key, valid now, not the current CA. */
export function checkSuppliedCa(chainPem: string, keyPem: string, currentFingerprint: string, now = Date.now()): CaMaterial {
  let chain: string[];
  try { chain = splitPemBundle(chainPem); } catch (e) { throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `the CA certificate file is not PEM: ${(e as Error).message}`); }
  if (chain.length === 0) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'the CA certificate file holds no PEM certificate');
  let info;
  try { info = certInfo(chain[0]!); } catch (e) { throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `the CA certificate does not parse: ${(e as Error).message}`); }
  if (!info.isCA) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'the first certificate of --ca-cert is not a CA (basicConstraints CA:TRUE)');
  for (let i = 1; i < chain.length; i++) {
    if (!verifyIssuedBy(chain[i - 1]!, chain[i]!)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `--ca-cert: certificate ${i + 1} did not issue certificate ${i}; list the issuing CA first, then its parents`);
  }
  for (const [i, c] of chain.entries()) {
    const ci = certInfo(c);
    if (ci.notAfter.getTime() <= now) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `--ca-cert: certificate ${i + 1} (${ci.subject}) expired on ${ci.notAfter.toISOString()}`);
    if (ci.notBefore.getTime() > now + 5 * 60_000) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `--ca-cert: certificate ${i + 1} (${ci.subject}) is not valid before ${ci.notBefore.toISOString()}`);
  }
  if (info.fingerprint === currentFingerprint) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'that is the hub\'s current CA: give a new one');
  let key: KeyObject;
  try { key = loadPrivateKey(keyPem); } catch (e) { throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `the CA key does not parse: ${(e as Error).message}`); }
  if (!keyMatchesCert(key, chain[0]!)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'the CA key does not match the first certificate of --ca-cert');
  return { chain, key };
}

export class CaRotation {
  private state: RotationState;
  private nextKeyPem: string | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private sweepTimer: NodeJS.Timeout | undefined;
  private readonly activeWithinMs: number;

  private constructor(private readonly d: CaRotationDeps, state: RotationState) {
    this.state = state;
    this.activeWithinMs = d.activeWithinMs ?? ACTIVE_WITHIN_MS;
  }

  /** Reads the rotation state (after recoverRotation) and gives the PKI its CAs. */
  static open(d: CaRotationDeps): CaRotation {
    const r = new CaRotation(d, readState(d.paths));
    if (r.state.phase === 'started') {
      const keyPem = readFileSync(d.paths.caNextKey, 'utf8');
      const key = loadPrivateKey(keyPem);
      if (!keyMatchesCert(key, r.state.next!.chain[0]!)) throw new TrellisError('TRELLIS_E_CONFIG', `${d.paths.caNextKey} does not match the new CA in ${d.paths.caRotation}`);
      r.nextKeyPem = keyPem;
    }
    r.applyTrust();
    return r;
  }

  start(): void {
    this.sweepTimer = setInterval(() => void this.serial(() => this.sweepRetired()).catch((err) => this.d.log.warn({ err: (err as Error).message }, 'retired CA check failed')), SWEEP_MS);
    this.sweepTimer.unref();
  }

  close(): void { clearInterval(this.sweepTimer); }

  get phase(): RotationState['phase'] { return this.state.phase; }

  /** One step at a time: start, commit, rollback and the retired-CA sweep never interleave. */
  private serial<R>(fn: () => Promise<R>): Promise<R> {
    const p = this.queue.then(fn, fn);
    this.queue = p.catch(() => undefined);
    return p;
  }

  private applyTrust(): void {
    const s = this.state;
    this.d.pki.setRotation({
      next: s.phase === 'started' && s.next ? { chain: s.next.chain, key: loadPrivateKey(this.nextKeyPem!) } : undefined,
      retired: s.retired?.chain,
    });
  }

  /**
   * How long an agent waits before renewing for the rotation: its stable spot in the window; once
   * that passed (an agent back from offline, a hub restart), a random moment within a minute (or
   * the window if shorter), so a fleet reconnecting at once does not renew at once.
   */
  renewDelayMs(agentId: string, now = Date.now()): number {
    const at = this.state.renewFromMs + Math.floor(spreadOf(agentId) * this.state.windowMs);
    return at > now ? at - now : randomInt(0, Math.max(1, Math.min(60_000, this.state.windowMs)));
  }

  /** The CaBundle message for a link: the bundle, and a renewal order when its certificate is not from the issuing CA. */
  bundleFor(link: Pick<AgentLink, 'agentId' | 'certPem'>): { caBundle: { certificates: string[]; renew: boolean; renewInMs: number } } {
    const pki = this.d.pki;
    const renew = pki.canIssue && pki.issuerOf(link.certPem) !== pki.issuingFingerprint;
    return { caBundle: { certificates: pki.trustBundle, renew, renewInMs: renew ? this.renewDelayMs(link.agentId) : 0 } };
  }

  /** After an agent's Welcome: tells it to renew if its certificate is not from the issuing CA. */
  onAgentAttached(link: AgentLink): void {
    const m = this.bundleFor(link);
    if (m.caBundle.renew) link.send(m);
  }

  /** Pushes the bundle (and renewal orders) to every connected agent. */
  private pushAll(): number {
    let n = 0;
    for (const l of this.d.agents.connectedLinks()) if (l.send(this.bundleFor(l))) n++;
    return n;
  }

  private async activeAgents(now = Date.now()): Promise<Array<AgentDoc & { online: boolean; lastSeen?: number }>> {
    const all = await this.d.agents.list();
    return all.filter((a) => !a.revoked && (a.online || Math.max(a.lastSeen ?? 0, a.enrolledAt) >= now - this.activeWithinMs));
  }

  async status(): Promise<RotationStatus> {
    const pki = this.d.pki;
    const s = this.state;
    const active = await this.activeAgents();
    const issuing = pki.issuingFingerprint;
    const retiredFp = s.retired ? fingerprintSha256(s.retired.chain[0]!) : undefined;
    const onNew = active.filter((a) => movedTo(a, issuing));
    const lagging = active.filter((a) => !movedTo(a, issuing));
    const leaf = splitPemBundle(pki.hubIdentity.certChainPem)[0]!;
    return {
      phase: s.phase === 'started' ? 'started' : 'idle', startedAtMs: s.phase === 'started' ? s.startedAtMs : 0, windowMs: s.windowMs, startedBy: s.phase === 'started' ? s.startedBy : '',
      currentCa: pki.caCertPem, nextCa: s.phase === 'started' ? s.next?.chain[0] : undefined, retiredCa: s.retired?.chain[0],
      agentsActive: active.length, agentsOnNewCa: onNew.length, agentsOnOldCa: lagging.length,
      agentsOnRetiredCa: retiredFp ? active.filter((a) => a.certCa === retiredFp).length : 0,
      lagging: s.phase === 'started' ? lagging.slice(0, LIST_MAX).map(view) : [], activeWithinMs: this.activeWithinMs,
      hubCertIssuer: certInfo(leaf).issuer, hubCertIssuerFingerprint: pki.caFingerprint, trustBundle: pki.trustBundle,
      leftBehind: [], leftBehindCount: 0, lastEvent: s.lastEvent,
    };
  }

  startRotation(o: StartOptions): Promise<RotationStatus> {
    return this.serial(async () => {
      const pki = this.d.pki;
      if (this.state.phase === 'started') {
        throw new TrellisError('TRELLIS_E_ROTATION', `a CA rotation is already under way (started ${new Date(this.state.startedAtMs).toISOString()} by ${this.state.startedBy}): see \`trellis ca rotate status\`, then \`commit\` or \`rollback\` it`);
      }
      const windowMs = o.windowMs || DEFAULT_WINDOW_MS;
      if (windowMs < 1000 || windowMs > MAX_WINDOW_MS) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `--window must be between 1s and ${formatDuration(MAX_WINDOW_MS)}`);
      let next: CaMaterial;
      let source: 'generated' | 'supplied';
      if (o.caCertPem || o.caKeyPem) {
        if (!o.caCertPem || !o.caKeyPem) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', '--ca-cert and --ca-key go together (the hub must hold the new CA\'s key to issue from it)');
        if (o.keyType) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', '--ca-key-type is for a generated CA; a supplied CA keeps its own key');
        next = checkSuppliedCa(o.caCertPem, o.caKeyPem, pki.caFingerprint);
        source = 'supplied';
      } else {
        const current = pki.caKey ? describeKey(pki.caKey) : '';
        const keyType = (o.keyType || ((ROTATION_KEY_TYPES as readonly string[]).includes(current) ? current : 'ec-p256')) as KeyType;
        if (!(ROTATION_KEY_TYPES as readonly string[]).includes(keyType)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `--ca-key-type must be one of ${ROTATION_KEY_TYPES.join(', ')}`);
        // A distinct subject: TLS stacks pick issuers by name first.
        const ca = createCA({ commonName: `Trellis CA ${this.d.names[0]} ${new Date().toISOString().slice(0, 10)} ${randomInt(0x10000).toString(16).padStart(4, '0')}`, keyType });
        next = { chain: [ca.certPem], key: ca.key };
        source = 'generated';
      }
      const keyPem = next.key!.export({ type: 'pkcs8', format: 'pem' }) as string;
      const now = Date.now();
      const fp = fingerprintSha256(next.chain[0]!);
      const state: RotationState = {
        ...this.state, version: 1, phase: 'started', startedAtMs: now, startedBy: o.by, windowMs, renewFromMs: now, source,
        next: { chain: next.chain }, previous: { chain: pki.caChain }, lastEvent: `started ${new Date(now).toISOString()} by ${o.by}`,
      };
      // The key first: a state naming a CA whose key is missing would block the hub's start.
      await atomicWriteFile(this.d.paths.caNextKey, keyPem, { mode: 0o600 });
      await writeState(this.d.paths, state);
      this.state = state;
      this.nextKeyPem = keyPem;
      this.applyTrust();
      const pushed = this.pushAll();
      this.d.log.info({ newCa: fp, oldCa: pki.caFingerprint, source, windowMs, by: o.by, pushed }, 'CA rotation started: agents trust old+new CA and renew from the new one');
      return this.status();
    });
  }

  commitRotation(o: { force: boolean; by: string }): Promise<RotationStatus> {
    return this.serial(async () => {
      const pki = this.d.pki;
      const s = this.state;
      if (s.phase !== 'started' || !s.next) throw new TrellisError('TRELLIS_E_ROTATION', 'no CA rotation is under way: start one with `trellis ca rotate start`');
      const nextFp = fingerprintSha256(s.next.chain[0]!);
      const active = await this.activeAgents();
      const behind = active.filter((a) => !movedTo(a, nextFp));
      const named = behind.slice(0, LIST_MAX).map((a) => `${a.id}${a.hostname ? ` (${a.hostname}${a.online ? '' : ', offline'})` : a.online ? '' : ' (offline)'}`);
      const list = `${named.join(', ')}${behind.length > LIST_MAX ? ` and ${behind.length - LIST_MAX} more` : ''}`;
      if (behind.length > 0 && !o.force) {
        throw new TrellisError('TRELLIS_E_ROTATION',
          `${behind.length} active agent(s) still hold a certificate from the old CA: ${list}. Wait for them to renew (\`trellis ca rotate status\`), bring them online, or commit anyway with \`trellis ca rotate commit --force\` (they must then re-enroll)`);
      }
      const next: CaMaterial = { chain: s.next.chain, key: loadPrivateKey(this.nextKeyPem!) };
      // The hub certificate from the new CA: the served one's names (and the configured ones), its lifetime.
      const leaf = certInfo(splitPemBundle(pki.hubIdentity.certChainPem)[0]!);
      const names = [...new Set([...this.d.names, ...leaf.dnsNames, ...leaf.ipAddresses])];
      const ttl = Math.min(Math.max(leaf.notAfter.getTime() - leaf.notBefore.getTime(), 86_400_000), 825 * 86_400_000);
      const identity = issueHubCertificate(pki, names, ttl, new Date(), next);
      const p = this.d.paths;
      await atomicWriteFile(p.hubNextKey, identity.keyPem, { mode: 0o600 });
      await atomicWriteFile(p.hubNextCert, identity.certChainPem, { mode: 0o644 });
      const now = Date.now();
      const event = `committed ${new Date(now).toISOString()} by ${o.by}${behind.length ? ` (forced: ${behind.length} agent(s) left on the old CA)` : ''}`;
      const committing: RotationState = { ...s, phase: 'committing', retired: undefined, lastEvent: event };
      await writeState(p, committing);
      await commitFiles(p, committing);
      await writeState(p, { ...IDLE, lastEvent: event });
      for (const f of [p.caNextKey, p.hubNextCert, p.hubNextKey]) rm(f);
      const oldFp = pki.caFingerprint;
      this.state = { ...IDLE, lastEvent: event };
      this.nextKeyPem = undefined;
      pki.adoptCa(next, identity);
      this.pushAll();
      // Streams still on old-CA certificates end now, with the fix in the message (new handshakes are refused by TLS).
      for (const l of this.d.agents.connectedLinks(true)) {
        if (pki.issuerOf(l.certPem) === undefined) {
          l.close('revoked', `the hub's CA was rotated (committed) before this agent renewed: its certificate from the old CA is no longer accepted. Re-enroll: trellis agent enroll --hub HOST:7444 --token NEW_TOKEN --data DIR --force`);
        }
      }
      this.d.log.info({ newCa: nextFp, oldCa: oldFp, by: o.by, leftBehind: behind.length }, 'CA rotation committed: the old CA left the trust bundle');
      if (behind.length) this.d.log.warn({ agents: behind.slice(0, LIST_MAX).map((a) => a.id), count: behind.length }, 'CA rotation forced: these agents must re-enroll');
      const st = await this.status();
      return { ...st, leftBehind: behind.slice(0, LIST_MAX).map(view), leftBehindCount: behind.length };
    });
  }

  rollbackRotation(o: { by: string }): Promise<RotationStatus> {
    return this.serial(async () => {
      const s = this.state;
      if (s.phase !== 'started' || !s.next) throw new TrellisError('TRELLIS_E_ROTATION', 'no CA rotation is under way: nothing to roll back');
      const nextFp = fingerprintSha256(s.next.chain[0]!);
      const now = Date.now();
      // Agents that already renewed from the new CA keep working: it stays trusted for their
      // certificates (never for the hub's) until they renewed again from the old CA or expired.
      const onNext = (await this.d.agents.list()).filter((a) => !a.revoked && a.certCa === nextFp);
      const untilMs = onNext.reduce((m, a) => Math.max(m, a.certExpiresAt), 0);
      const event = `rolled back ${new Date(now).toISOString()} by ${o.by}${onNext.length ? ` (${onNext.length} agent(s) renew back from the old CA)` : ''}`;
      const state: RotationState = {
        ...IDLE, windowMs: s.windowMs, renewFromMs: now, retired: onNext.length && untilMs > now ? { chain: s.next.chain, untilMs } : s.retired, lastEvent: event,
      };
      await writeState(this.d.paths, state);
      rm(this.d.paths.caNextKey);
      this.state = state;
      this.nextKeyPem = undefined;
      this.applyTrust();
      const pushed = this.pushAll();
      this.d.log.info({ rolledBackCa: nextFp, by: o.by, agentsToRenew: onNext.length, pushed }, 'CA rotation rolled back: the old CA alone issues; agents on the new CA renew back');
      return this.status();
    });
  }

  /** Drops a rolled-back CA once no agent holds a certificate from it (or its last one expired). */
  private async sweepRetired(now = Date.now()): Promise<void> {
    const r = this.state.retired;
    if (!r) return;
    const fp = fingerprintSha256(r.chain[0]!);
    const still = (await this.d.agents.list()).filter((a) => !a.revoked && a.certCa === fp && a.certExpiresAt > now).length;
    if (still > 0 && r.untilMs > now) return;
    const state = { ...this.state, retired: undefined };
    await writeState(this.d.paths, state);
    this.state = state;
    this.applyTrust();
    this.d.log.info({ retiredCa: fp }, 'the rolled-back CA is no longer trusted: no agent holds a certificate from it');
    this.d.audit.record({ timeMs: now, actor: 'hub', tenant: '', method: 'ca/RetiredCaDropped', target: `ca:${fp.slice(0, 16)}`, result: 'ok', sourceAddress: '', detail: 'no agent holds a certificate from the rolled-back CA' });
  }

  /** Test hook: run the retired-CA check now. */
  checkRetired(): Promise<void> { return this.serial(() => this.sweepRetired()); }
}
