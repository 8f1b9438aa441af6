/**
 * The agent port's services. Identity (tenant, agent id) comes only from the verified client
 * certificate; every stream is checked against the CA, the trust domain, EKU and revocation.
 */
import * as grpc from '@grpc/grpc-js';
import { createHash, randomBytes } from 'node:crypto';
import { v1 } from '../../common/proto.js';
import { parseCSR, normalizeSerial } from '../../certs/index.js';
import { extKeyUsage, parseCert, subjectAltNames, type ParsedCert } from '../../certs/parse.js';
import { pemEncode } from '../../certs/der.js';
import { parseSpiffeId } from '../pki/index.js';
import { TrellisError, isTrellisError, type ErrorCode } from '../../common/errors.js';
import { toStatus } from '../../common/grpc-errors.js';
import type { HubComponents } from '../components.js';
import { SUPERSEDED, type AgentDoc, type AgentLink, type CloseReason } from '../agents/index.js';
import type { AuditEntry } from '../audit/types.js';
import { MAX_EVENTS_PER_BATCH } from '../events/index.js';
import { EVENT_ACK_THROUGH, HUB_FEATURES } from '../../common/features.js';
import { EventAcks, ResultAcks } from './acks.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';
import { isMalformed, malformedError } from './malformed.js';
import { AdmissionGate, MAX_PENDING_PER_KEY } from './admission.js';
import { PeerCertCache, type CertFacts } from './peer-cache.js';

const CLIENT_AUTH_OID = '1.3.6.1.5.5.7.3.2';
/** Streams one agent may have waiting for their hello at once (the rest: RESOURCE_EXHAUSTED). */
export const MAX_PENDING_PER_AGENT = MAX_PENDING_PER_KEY;
/** A stream still on a certificate replaced by a renewal is closed this long after the new one connects. */
export const SUPERSEDED_STREAM_GRACE_MS = 10_000;
const S = '/trellis.v1.AgentChannel';

export interface PeerIdentity {
  agentId: string; tenant: string; serial: string; notAfter: number; certPem: string;
  /** Replaced by a renewal (only returned to Renew, which may retry a renewal whose answer was lost). */
  superseded?: boolean;
}

const AUDIT_RESULT: Partial<Record<ErrorCode, AuditEntry['result']>> = {
  TRELLIS_E_UNAUTHENTICATED: 'unauthenticated',
  TRELLIS_E_CERT_REVOKED: 'unauthenticated',
  TRELLIS_E_CERT_EXPIRED: 'unauthenticated',
  TRELLIS_E_PERMISSION_DENIED: 'denied',
  TRELLIS_E_RATE_LIMITED: 'denied',
  TRELLIS_E_INVALID_ARGUMENT: 'invalid',
  TRELLIS_E_CSR_INVALID: 'invalid',
  TRELLIS_E_TOO_LARGE: 'invalid',
};

/** A refusal of a certificate that names an agent: the audit record names it too. */
function peerRefusal(peer: Partial<PeerIdentity>, code: ErrorCode, message: string): TrellisError {
  return Object.assign(new TrellisError(code, message), { peer });
}

/** One audit record of the agent port (refusals go through the throttle in c.refusalAudit). */
function auditAgentPort(c: HubComponents, o: { method: 'Connect' | 'Renew'; peer: string; id?: Partial<PeerIdentity>; err?: unknown; detail?: string }): void {
  const code = isTrellisError(o.err) ? (o.err as TrellisError).code : undefined;
  const result: AuditEntry['result'] = !o.err ? 'ok' : (code && AUDIT_RESULT[code]) || 'error';
  o.id ??= (o.err as { peer?: Partial<PeerIdentity> } | undefined)?.peer;
  c.refusalAudit.record({
    timeMs: Date.now(), actor: o.id?.agentId ? `agent:${o.id.agentId}` : '-', tenant: o.id?.tenant ?? '', method: `${S}/${o.method}`,
    target: o.id?.agentId ? `agent:${o.id.agentId}${o.id.serial ? ` serial ${o.id.serial}` : ''}` : '', result, sourceAddress: o.peer,
    detail: (o.err ? (code ? (o.err as Error).message : 'internal error (see the hub log)') : o.detail ?? '').slice(0, 300),
  });
}

/**
 * Verifies the peer certificate of a call on the agent port (`cache`: what earlier streams derived
 * from the same certificate, keyed by its SHA-256: OpenSSL's, on the object TLS hands grpc-js,
 * else computed). The DER bytes are read by certs/parse.ts and the issuer's signature checked
 * over them (no X509Certificate is built: in Node 20 each cost ~0.15 ms, the largest share of a
 * reconnect storm's identity checks, where every certificate is new to a restarted hub).
 */
export function identifyPeer(c: HubComponents, call: { getAuthContext(): { sslPeerCertificate?: { raw?: Buffer } } }, o: { renew?: boolean; cache?: PeerCertCache } = {}): PeerIdentity {
  const peerCert = call.getAuthContext()?.sslPeerCertificate as { raw?: Buffer; fingerprint256?: unknown } | undefined;
  const raw = peerCert?.raw;
  if (!Buffer.isBuffer(raw) || raw.length === 0) throw new TrellisError('TRELLIS_E_UNAUTHENTICATED', 'no client certificate: the agent port needs the certificate from `trellis agent enroll`');
  const generation = c.pki.trustGeneration;
  // Both keys are the SHA-256 of the DER bytes (OpenSSL's digest, or ours: two spellings, never equal).
  const fp = peerCert!.fingerprint256;
  const key = !o.cache ? '' : typeof fp === 'string' && fp.length === 95 ? fp : createHash('sha256').update(raw).digest('base64');
  let facts = o.cache?.get(key, generation);
  if (!facts) {
    if (o.cache) o.cache.stats.parsed++;
    facts = certFacts(c, raw);
    o.cache?.set(key, generation, facts);
  }
  const { serial } = facts;
  // Never cached: a revocation or the expiry applies to the next stream at once.
  const rev = c.agents.revocation(serial);
  const superseded = rev?.reason === SUPERSEDED;
  const who = { agentId: facts.agentId, tenant: facts.tenant, serial };
  if (rev && !(superseded && o.renew)) {
    throw peerRefusal(who, 'TRELLIS_E_CERT_REVOKED', superseded
      ? `certificate ${serial} of agent ${facts.agentId} was replaced by a renewal; connect with the new certificate (or re-enroll with \`trellis agent enroll --force\` if it was lost)`
      : `the certificate of agent ${facts.agentId} was revoked; enroll again with a new join token`);
  }
  if (facts.notAfter <= Date.now()) throw peerRefusal(who, 'TRELLIS_E_CERT_EXPIRED', 'the agent certificate expired; re-enroll with `trellis agent enroll --force`');
  return { ...facts, superseded };
}

/** Parses and checks a client certificate (DER): issuer (a CA the hub accepts agents from), EKU, identity. */
function certFacts(c: HubComponents, der: Buffer): CertFacts {
  let cert: ParsedCert;
  try { cert = parseCert(der); } catch {
    throw new TrellisError('TRELLIS_E_UNAUTHENTICATED', 'the client certificate cannot be parsed');
  }
  const certPem = pemEncode('CERTIFICATE', der);
  // Any CA the hub accepts agent certificates from: the CA, and during a CA rotation the new one
  // (and a rolled-back one until its agents renewed). TLS checked the chain; this checks the
  // issuer's signature, and its answer serves the later issuerOf(certPem) calls (rotation, renewal).
  if (!c.pki.issuerOfDer(certPem, der, cert)) {
    throw new TrellisError('TRELLIS_E_UNAUTHENTICATED', 'the client certificate was not issued by this hub\'s CA (after a CA rotation, re-enroll with `trellis agent enroll --force`)');
  }
  let eku: string[], uris: string[];
  try { eku = extKeyUsage(cert); uris = subjectAltNames(cert).uris; } catch {
    throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', 'the client certificate has malformed extensions');
  }
  if (!eku.includes('clientAuth') && !eku.includes(CLIENT_AUTH_OID)) {
    throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', 'the client certificate is not valid for client authentication (EKU clientAuth missing)');
  }
  const ids = uris.map(parseSpiffeId).filter((x) => x !== undefined);
  if (ids.length !== 1 || ids[0]!.trustDomain !== c.config.trustDomain) {
    throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `the client certificate carries no agent identity (URI SAN spiffe://${c.config.trustDomain}/tenant/<tenant>/agent/<id>)`);
  }
  return { agentId: ids[0]!.agentId, tenant: ids[0]!.tenant, serial: normalizeSerial(cert.serial.toString('hex')), notAfter: cert.notAfter.getTime(), certPem };
}

/** Checks the registry: known (or operator-issued, then registered), same tenant, not revoked. */
async function admitAgent(c: HubComponents, id: PeerIdentity): Promise<Readonly<AgentDoc> | undefined> {
  const doc = c.agents.peek(id.agentId); // read only: no copy of the record per connection
  if (!doc) {
    await c.agents.create({
      id: id.agentId, tenant: id.tenant, hostname: '', labels: {}, enrolledAt: Date.now(), tokenId: c.pki.canIssue ? 'unknown' : 'operator-issued',
      spiffeId: `spiffe://${c.config.trustDomain}/tenant/${id.tenant}/agent/${id.agentId}`, certSerial: id.serial, certExpiresAt: id.notAfter,
      serials: [{ serial: id.serial, notAfter: id.notAfter }], revoked: false, certCa: c.pki.issuerOf(id.certPem),
    });
    c.log.warn({ component: 'agent-port', agentId: id.agentId, tenant: id.tenant }, 'agent with a valid certificate but no record: registered');
    return undefined;
  }
  if (doc.revoked) throw new TrellisError('TRELLIS_E_CERT_REVOKED', `agent ${id.agentId} was revoked; enroll again with a new join token`);
  if (doc.tenant !== id.tenant) throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `agent ${id.agentId} belongs to another tenant`);
  return doc;
}

const CLOSE_CODES: Record<CloseReason, grpc.status> = {
  revoked: grpc.status.PERMISSION_DENIED,
  replaced: grpc.status.ABORTED,
  expired: grpc.status.UNAUTHENTICATED,
  shutdown: grpc.status.UNAVAILABLE,
};

/** The agent port's server options from the config: message size and the keepalive it runs on agent connections. */
export function agentServerOptions(c: { maxMessageBytes: number; agentChannel: { keepaliveTime: number; keepaliveTimeout: number } }): grpc.ServerOptions {
  return {
    'grpc.max_receive_message_length': c.maxMessageBytes,
    'grpc.keepalive_time_ms': c.agentChannel.keepaliveTime,
    'grpc.keepalive_timeout_ms': c.agentChannel.keepaliveTimeout,
  };
}

/**
 * `handshakes`: the bound on connections between TCP accept and their first answer
 * (hub/grpc/handshake-gate.ts); each stream's welcome or refusal frees its connection's slot.
 * `o.ready`: settles once the hub's start-up is complete. The port may listen before that (its
 * TLS handshakes overlap the end of start-up), but no agent is admitted or renewed before it:
 * a hello or a Renew waits for it (the stream holding its admission slot), so nothing is decided
 * against half-built state.
 * `o.peers`: the verified-certificate cache (the hub keeps it to report its stats).
 */
export function addAgentServices(server: grpc.Server, c: HubComponents, handshakes?: { started(peer: string): void; settle(peer: string): void }, o: { ready?: Promise<void>; peers?: PeerCertCache } = {}): AdmissionGate {
  const ready = o.ready ?? Promise.resolve();
  const log = c.log.child({ component: 'agent-port' });
  const cfg = c.config.agentChannel;
  const gate = new AdmissionGate({ maxPending: cfg.maxPendingHellos, retryAfterMs: cfg.retryAfter });
  const peers = o.peers ?? new PeerCertCache();
  // Shedding is expected in a storm: one summary line per 10 s, never a line (or audit record) per stream.
  const shedLog = setInterval(() => {
    if (gate.stats.shedSinceLog === 0) return;
    log.warn({ shed: gate.stats.shedSinceLog, maxPendingHellos: cfg.maxPendingHellos, retryAfterMs: cfg.retryAfter },
      'agent streams shed: more agents connecting at once than agentChannel.maxPendingHellos; they retry after the retry-after');
    gate.stats.shedSinceLog = 0;
  }, 10_000);
  shedLog.unref();

  const connect: grpc.handleBidiStreamingCall<T.AgentMessage__Output, T.HubMessage> = (call) => {
    const reqId = randomBytes(6).toString('hex');
    const peer = call.getPeer();
    handshakes?.started(peer);
    // Load shedding first, before any work: a stream past the bound costs one status frame.
    const slot = gate.tryEnter();
    // Whatever this stream's admission ends with (welcome, refusal, the stream gone), its
    // connection's handshake slot goes to the next connection.
    let release = slot ? () => { slot(); handshakes?.settle(peer); } : () => undefined;
    if (!slot) {
      handshakes?.settle(peer);
      call.on('error', () => undefined);
      call.emit('error', gate.shedStatus(reqId));
      return;
    }
    let link: AgentLink | undefined;
    let closed = false;
    let who: Partial<PeerIdentity> | undefined;
    let expiryTimer: NodeJS.Timeout | undefined;
    // Declared before fail/cleanup can run: a refusal in identifyPeer happens before it is armed.
    let helloTimer: NodeJS.Timeout | undefined;
    /** Set at the hello (whether the agent takes one EventAck for several batches; ./acks.ts). */
    let eventAcks: EventAcks | undefined;
    /** Results on disk, acknowledged several at once (./acks.ts). */
    const resultAcks = new ResultAcks((executionIds) => { if (!closed) call.write({ resultAck: { executionIds } }); });
    const fail = (err: unknown) => {
      if (closed) return;
      closed = true;
      release();
      if (isTrellisError(err)) log.warn({ reqId, peer: call.getPeer(), code: (err as TrellisError).code, reason: (err as Error).message }, 'agent stream refused');
      else log.error({ reqId, err }, 'agent stream failed');
      auditAgentPort(c, { method: 'Connect', peer: call.getPeer(), id: who, err });
      cleanup();
      call.emit('error', toStatus(err, reqId));
    };
    const cleanup = () => {
      release();
      eventAcks?.close();
      resultAcks.close();
      clearTimeout(expiryTimer);
      clearTimeout(helloTimer);
      if (link) {
        c.agents.detach(link);
        log.info({ agentId: link.agentId, serial: link.serial }, 'agent disconnected');
        c.executions.onAgentDetached(link.agentId);
        c.agentConfigs.onDetach(link.agentId);
        if (!c.agents.link(link.agentId)) c.events.detached(link.agentId);
        link = undefined;
      }
    };
    let id: PeerIdentity;
    try { id = identifyPeer(c, call, { cache: peers }); } catch (e) { fail(e); return; }
    who = id;
    // One agent may not hold the admission slots of others (streams that never say hello hold
    // theirs until helloTimeout): a few at once cover a reconnect overlapping a renewal.
    const mine = gate.claim(id.agentId, release);
    if (!mine) {
      fail(new TrellisError('TRELLIS_E_RATE_LIMITED', `agent ${id.agentId} already has ${gate.heldBy(id.agentId)} streams waiting for their hello`));
      return;
    }
    release = mine;
    // Counted from admission; stopped by the hello itself (the hub's own work after it is not the agent's fault).
    helloTimer = setTimeout(() => fail(new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `no hello within ${cfg.helloTimeout} ms`)), cfg.helloTimeout);
    let admitted: Promise<void> | undefined;

    call.on('data', (msg: T.AgentMessage__Output) => {
      if (closed) return;
      try {
        if (isMalformed(msg)) throw malformedError('AgentMessage frame', msg);
        if (!link) {
          if (msg.msg !== 'hello' || !msg.hello) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'the first message on the channel must be hello');
          if (admitted) return; // a second hello while admission runs is ignored
          clearTimeout(helloTimer);
          const hello = msg.hello;
          eventAcks = new EventAcks(Array.isArray(hello.features) && hello.features.includes(EVENT_ACK_THROUGH),
            (ack) => { if (!closed) call.write({ eventAck: ack }); }, (n) => { c.events.acked += n; });
          admitted = ready.then(() => (closed ? undefined : admitAgent(c, id))).then(async () => {
            await c.agentConfigs.prepareSources(id.agentId); // which event types it may publish
            if (closed) return;
            link = {
              agentId: id.agentId, serial: id.serial, certPem: id.certPem, remote: call.getPeer(), connectedAt: Date.now(),
              // write() returning false is back-pressure (the message is queued), not a failure.
              send: (m) => { if (closed) return false; call.write(m); return true; },
              close: (reason, message) => {
                if (closed) return;
                closed = true;
                cleanup();
                call.emit('error', { code: CLOSE_CODES[reason], details: message, metadata: toStatus(new TrellisError(reason === 'revoked' ? 'TRELLIS_E_CERT_REVOKED' : reason === 'expired' ? 'TRELLIS_E_CERT_EXPIRED' : 'TRELLIS_E_SHUTDOWN', message), reqId).metadata });
              },
            };
            c.agents.attach(link);
            if (closed) return; // the hub is shutting down: attach() closed the link
            expiryTimer = setTimeout(() => link?.close('expired', 'the agent certificate expired; re-enroll with `trellis agent enroll --force`'), Math.min(id.notAfter - Date.now(), 2 ** 31 - 1));
            expiryTimer.unref();
            // hello.labels are ignored: labels come from the join token and admins, never from the host.
            if (hello.facts) {
              const problems = await c.agents.updateHello(id.agentId, hello.facts);
              if (problems.length) log.warn({ agentId: id.agentId, problems: problems.slice(0, 10) }, 'agent facts cleaned before storing: over a limit or with control characters');
            }
            // The certificate of the last renewal is in use: its predecessor may no longer renew,
            // and streams still on replaced certificates end after a grace.
            await c.agents.confirmSerial(id.agentId, id.serial);
            c.agents.retireSuperseded(id.agentId, SUPERSEDED_STREAM_GRACE_MS);
            log.info({ agentId: id.agentId, tenant: id.tenant, serial: id.serial, peer: call.getPeer() }, 'agent connected');
            call.write({ welcome: { agentId: id.agentId, tenant: id.tenant, heartbeatIntervalMs: c.config.heartbeatInterval, caBundle: c.pki.trustBundle, serverTimeMs: Date.now(), hubAddresses: c.config.cluster.addresses, features: [...HUB_FEATURES] } });
            release(); // welcomed: the admission slot goes to the next agent
            c.rotation.onAgentAttached(link); // during a CA rotation: renew from the new CA, at its moment in the window
            c.executions.onAgentAttached(id.agentId); // waiting executions go out after the welcome
            c.agentConfigs.onAttach(id.agentId); // sensors, edge rules and their sealed values
            c.events.attached(id.agentId);
          }).catch(fail);
          return;
        }
        c.agents.touch(link.agentId);
        switch (msg.msg) {
          case 'heartbeat': {
            const hb = msg.heartbeat;
            if (hb?.edgeRules?.length) {
              const agentId = link.agentId;
              c.rules.edgeCounts(id.tenant, agentId, hb.edgeBoot, hb.edgeRules, (ref) => !!c.agentConfigs.sentEdgeRule(agentId, ref));
            }
            break;
          }
          case 'events': {
            const batch = msg.events!;
            if (batch.events.length > MAX_EVENTS_PER_BATCH) throw new TrellisError('TRELLIS_E_TOO_LARGE', `at most ${MAX_EVENTS_PER_BATCH} events per batch`);
            const agentId = link.agentId;
            // Refused events (a type this agent may not publish) are acknowledged too: the refusal
            // is final, so the outbox must not retry them; they are counted and logged, never published.
            const r = c.events.ingest(agentId, id.tenant, batch.events, (type) => c.agentConfigs.mayPublish(agentId, type));
            // Acknowledged once what the events caused (executions) is on disk (./acks.ts).
            eventAcks!.add(Number(batch.seq), batch.events.length, r.refused, r.refusedTypes, r.settled);
            break;
          }
          case 'started':
            c.executions.onStarted(link.agentId, msg.started!);
            break;
          case 'output':
            c.executions.onOutput(link.agentId, msg.output!);
            break;
          case 'result': {
            const id = msg.result!.executionId;
            c.executions.onResult(link.agentId, msg.result!);
            // Acknowledged once the result is in the history on disk (also for an unknown or
            // final execution: the hub's word is final); until then the agent keeps it and sends
            // it again on its next stream.
            // Each waits for the write asked for here, not one an earlier result asked for; results on
            // disk share one acknowledgement (./acks.ts).
            if (typeof id === 'string' && id.length > 0 && id.length <= 128) resultAcks.add(id, c.executions.written());
            break;
          }
          case 'configAck':
            c.agentConfigs.onAck(link.agentId, msg.configAck!);
            break;
          case 'hello':
            break;
          default:
            log.warn({ agentId: link.agentId }, 'empty or unknown message ignored');
        }
      } catch (e) {
        fail(e);
      }
    });
    call.on('end', () => { if (!closed) { closed = true; cleanup(); call.end(); } });
    call.on('cancelled', () => { closed = true; cleanup(); });
    call.on('error', () => { closed = true; cleanup(); });
  };

  const renew: grpc.handleUnaryCall<T.RenewRequest__Output, T.RenewResponse> = (call, callback) => {
    const reqId = randomBytes(6).toString('hex');
    let who: PeerIdentity | undefined;
    const peer = call.getPeer();
    handshakes?.started(peer);
    void (async () => {
      try {
        await ready;
        const id = (who = identifyPeer(c, call, { renew: true, cache: peers }));
        const doc = await admitAgent(c, id);
        // A replaced certificate may renew again only while its replacement never connected
        // (the answer to the first renewal was lost); otherwise it is refused like a revoked one.
        if (id.superseded && doc?.pendingRenewal?.from !== id.serial) {
          throw new TrellisError('TRELLIS_E_CERT_REVOKED', `certificate ${id.serial} of agent ${id.agentId} was replaced by a renewal; it cannot renew again`);
        }
        // A renewal that moves the agent to the issuing CA (CA rotation or its rollback) is not
        // counted: it happens once per CA change, and the hub itself asked for it. Once the record
        // says the agent holds an issuing-CA certificate, renewing again with the old one counts
        // (else an old-CA certificate, allowed to retry a lost answer, could renew without limit).
        const issuing = c.pki.issuingFingerprint;
        if (c.pki.issuerOf(id.certPem) === issuing || doc?.certCa === issuing) c.renewLimiter.take(id.agentId);
        const csr = parseCSR(call.request.csr);
        const issued = c.pki.issueAgentCertificate({ publicKey: csr.publicKey, agentId: id.agentId, tenant: id.tenant, trustDomain: c.config.trustDomain, ttlMs: c.config.agentCertTtl });
        const r = await c.agents.recordRenewal(id.agentId, { from: id.serial, serial: issued.serial, notAfter: issued.notAfter.getTime(), ca: issued.caFingerprint });
        log.info({ agentId: id.agentId, oldSerial: id.serial, serial: issued.serial, superseded: r.superseded, notAfter: issued.notAfter.toISOString() }, 'agent certificate renewed');
        auditAgentPort(c, { method: 'Renew', peer: call.getPeer(), id, detail: `serial ${id.serial} -> ${issued.serial} (valid until ${issued.notAfter.toISOString()}); superseded ${r.superseded.join(', ') || '-'}` });
        callback(null, { certificate: issued.certPem, caBundle: c.pki.trustBundle });
        handshakes?.settle(peer);
      } catch (err) {
        log.warn({ reqId, peer: call.getPeer(), reason: (err as Error).message }, 'renewal refused');
        auditAgentPort(c, { method: 'Renew', peer: call.getPeer(), id: who, err });
        callback(toStatus(err, reqId));
        handshakes?.settle(peer);
      }
    })();
  };

  server.addService(v1.AgentChannel.service, { Connect: connect, Renew: renew });
  return gate;
}
