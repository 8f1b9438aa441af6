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
import { agentPaths, saveIdentity, writeState, type AgentState } from './identity.js';
import type { EnrollResponse__Output } from '../common/proto-gen/trellis/v1/EnrollResponse.js';

export interface EnrollOptions {
  hub: string;
  token: string;
  dataDir: string;
  force?: boolean;
  labels?: Record<string, string>;
  keyType?: KeyType;
  timeoutMs?: number;
}

export interface EnrollResult { agentId: string; tenant: string; hub: string; spiffeId: string; notAfter: Date }

export async function enroll(o: EnrollOptions): Promise<EnrollResult> {
  const token = parseJoinToken(o.token);
  const paths = agentPaths(o.dataDir);
  if (existsSync(paths.state) && !o.force) {
    throw new TrellisError('TRELLIS_E_ALREADY_ENROLLED', `${o.dataDir} is already enrolled (${paths.state}); pass --force to replace its identity`);
  }
  const { host, port } = parseHostPort(o.hub, 7444);
  const timeoutMs = o.timeoutMs ?? 15_000;

  // 1. Pin: the hub must present the CA named in the token before we send anything.
  const served = await fetchServedChain(host, port, timeoutMs);
  const bundle = pinnedBundle(served, token.caFingerprint);
  if (!bundle) {
    throw new TrellisError('TRELLIS_E_CA_PIN_MISMATCH',
      `the hub at ${formatHostPort(host, port)} does not present the CA pinned in the join token (sha256 ${token.caFingerprint.slice(0, 16)}…); the token was not sent. Check the address and that the token came from this hub; if the hub's CA was rotated (\`trellis ca rotate commit\`) since the token was made, create a new one with \`trellis tokens create\``);
  }

  // 2. Key and CSR, made here.
  const key = generateKey(o.keyType ?? 'ec-p256');
  const csr = createCSR({ privateKey: key.privateKey, subject: { commonName: hostname() } });

  // 3. Enroll over TLS verified against the pinned CA and the hub's name.
  const tls = secureChannel(formatHostPort(host, port), bundle.join(''));
  const client = new v1.Enrollment(formatHostPort(host, port), tls.creds, tls.options);
  let res: EnrollResponse__Output;
  try {
    res = await new Promise<EnrollResponse__Output>((resolve, reject) => {
      client.Enroll({ token: o.token.trim(), csr, hostname: hostname(), labels: o.labels ?? {} }, { deadline: Date.now() + timeoutMs },
        (err, r) => (err ? reject(err) : resolve(r!)));
    });
  } catch (err) {
    // Nothing was sent if the connection failed: say why (the agent port, a name the certificate lacks, ...).
    const why = isTransportFailure(err)
      ? await diagnoseConnection(err, { host, port, expect: 'admin', caPem: bundle.join(''), trustedBy: 'the join token\'s CA pin' }).catch(() => undefined)
      : undefined;
    throw why ?? fromGrpcError(err);
  } finally {
    client.close();
  }

  // 4. Check what came back before keeping it.
  if (!res.certificate || !keyMatchesCert(key.privateKey, res.certificate)) {
    throw new TrellisError('TRELLIS_E_CERT_INVALID', 'the hub returned a certificate that does not match the key made for it');
  }
  const info = certInfo(res.certificate);
  const caPem = (res.caBundle.length > 0 ? res.caBundle : bundle).join('');
  await saveIdentity(paths, { keyPem: key.privateKeyPem, certPem: res.certificate, caPem });
  const state: AgentState = {
    hub: formatHostPort(host, res.agentPort || 7443), enrollHub: formatHostPort(host, port), agentId: res.agentId, tenant: res.tenant,
    trustDomain: res.trustDomain, labels: res.labels, enrolledAt: Date.now(),
  };
  await writeState(paths, state);
  return { agentId: res.agentId, tenant: res.tenant, hub: state.hub, spiffeId: res.spiffeId, notAfter: info.notAfter };
}
