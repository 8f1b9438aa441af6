/**
 * `trellis agent enroll`: pin the hub CA from the join token, verify the hub, and only then
 * send the token with a CSR for a key made here. The private key never leaves this host.
 */
import { hostname } from 'node:os';
import { existsSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { createCSR, generateKey, keyMatchesCert, certInfo, type KeyType } from '../certs/index.js';
import { parseJoinToken } from '../common/jointoken.js';
import { TrellisError } from '../common/errors.js';
import { fromGrpcError, isTransportFailure } from '../common/grpc-errors.js';
import { diagnoseConnection } from '../common/connect-diagnosis.js';
import { fetchServedChain, pinnedBundle } from '../common/tlsprobe.js';
import { formatHostPort, parseHostPort } from '../common/grpc-options.js';
import { secureChannel } from '../common/grpc-tls.js';
import { v1 } from '../common/proto.js';
import { parseHubAddresses } from './hub-addresses.js';
import { agentPaths, saveIdentity, writeState, type AgentState } from './identity.js';
import type { EnrollResponse__Output } from '../common/proto-gen/trellis/v1/EnrollResponse.js';

export interface EnrollOptions {
  /** Admin port of the hub, HOST:PORT, or of several hubs of a cluster, `a:7444,b:7444` (the first reachable one enrolls). */
  hub: string;
  token: string;
  dataDir: string;
  force?: boolean;
  labels?: Record<string, string>;
  keyType?: KeyType;
  timeoutMs?: number;
}

export interface EnrollResult { agentId: string; tenant: string; hub: string; hubs: string[]; spiffeId: string; notAfter: Date }

export async function enroll(o: EnrollOptions): Promise<EnrollResult> {
  const token = parseJoinToken(o.token);
  const paths = agentPaths(o.dataDir);
  if (existsSync(paths.state) && !o.force) {
    throw new TrellisError('TRELLIS_E_ALREADY_ENROLLED', `${o.dataDir} is already enrolled (${paths.state}); pass --force to replace its identity`);
  }
  const hubs = parseHubAddresses(o.hub, 7444);
  const timeoutMs = o.timeoutMs ?? 15_000;

  // The key and CSR, made here (once, whichever hub answers).
  const key = generateKey(o.keyType ?? 'ec-p256');
  const csr = createCSR({ privateKey: key.privateKey, subject: { commonName: hostname() } });

  // Several hubs of a cluster: the first one that can be reached enrolls the agent. A hub that
  // answers and refuses (token, pin, CSR) ends it: another hub of the same cluster would too.
  let answered: { host: string; port: number; res: EnrollResponse__Output; bundle: string[] } | undefined;
  let lastErr: unknown;
  for (const addr of hubs) {
    const { host, port } = parseHostPort(addr, 7444);
    try {
      answered = { host, port, ...await enrollAt(host, port, token.caFingerprint, o, csr, timeoutMs) };
      break;
    } catch (err) {
      if (!(err as { unreachable?: boolean }).unreachable || addr === hubs[hubs.length - 1]) throw err;
      lastErr = err;
    }
  }
  if (!answered) throw lastErr;
  const { host, port, res, bundle } = answered;

  // Check what came back before keeping it.
  if (!res.certificate || !keyMatchesCert(key.privateKey, res.certificate)) {
    throw new TrellisError('TRELLIS_E_CERT_INVALID', 'the hub returned a certificate that does not match the key made for it');
  }
  const info = certInfo(res.certificate);
  const caPem = (res.caBundle.length > 0 ? res.caBundle : bundle).join('');
  await saveIdentity(paths, { keyPem: key.privateKeyPem, certPem: res.certificate, caPem });
  // The cluster's agent ports as the hub lists them (cluster.addresses); else the hubs given here, on the agent port.
  const agentHubs = res.hubAddresses.length > 0
    ? parseHubAddresses(res.hubAddresses, 7443, 'the hub\'s cluster addresses')
    : [...new Set([formatHostPort(host, res.agentPort || 7443), ...hubs.map((h) => formatHostPort(parseHostPort(h, 7444).host, res.agentPort || 7443))])];
  const state: AgentState = {
    hub: agentHubs[0]!, ...(agentHubs.length > 1 ? { hubs: agentHubs } : {}), enrollHub: formatHostPort(host, port), agentId: res.agentId, tenant: res.tenant,
    trustDomain: res.trustDomain, labels: res.labels, enrolledAt: Date.now(),
  };
  await writeState(paths, state);
  return { agentId: res.agentId, tenant: res.tenant, hub: state.hub, hubs: agentHubs, spiffeId: res.spiffeId, notAfter: info.notAfter };
}

/** Marks an error as "this hub could not be reached" (the next one of a cluster may be). */
function unreachable(err: Error): Error {
  return Object.assign(err, { unreachable: true });
}

/** Pins the CA at one hub, then enrolls there. Errors from a hub that cannot be reached are marked `unreachable`. */
async function enrollAt(host: string, port: number, caFingerprint: string, o: EnrollOptions, csr: string, timeoutMs: number): Promise<{ res: EnrollResponse__Output; bundle: string[] }> {
  // 1. Pin: the hub must present the CA named in the token before we send anything.
  let served: string[];
  try { served = await fetchServedChain(host, port, timeoutMs); } catch (err) { throw unreachable(err as Error); }
  const bundle = pinnedBundle(served, caFingerprint);
  if (!bundle) {
    throw new TrellisError('TRELLIS_E_CA_PIN_MISMATCH',
      `the hub at ${formatHostPort(host, port)} does not present the CA pinned in the join token (sha256 ${caFingerprint.slice(0, 16)}…); the token was not sent. Check the address and that the token came from this hub; if the hub's CA was rotated (\`trellis ca rotate commit\`) since the token was made, create a new one with \`trellis tokens create\``);
  }

  // 2. Enroll over TLS verified against the pinned CA and the hub's name.
  const tls = secureChannel(formatHostPort(host, port), bundle.join(''));
  const client = new v1.Enrollment(formatHostPort(host, port), tls.creds, tls.options);
  try {
    const res = await new Promise<EnrollResponse__Output>((resolve, reject) => {
      client.Enroll({ token: o.token.trim(), csr, hostname: hostname(), labels: o.labels ?? {} }, { deadline: Date.now() + timeoutMs },
        (err, r) => (err ? reject(err) : resolve(r!)));
    });
    return { res, bundle };
  } catch (err) {
    // Nothing was sent if the connection failed: say why (the agent port, a name the certificate lacks, ...).
    const why = isTransportFailure(err)
      ? await diagnoseConnection(err, { host, port, expect: 'admin', caPem: bundle.join(''), trustedBy: 'the join token\'s CA pin' }).catch(() => undefined)
      : undefined;
    throw why ?? fromGrpcError(err);
  } finally {
    client.close();
  }
}
