/** Enrollment: a join token plus a CSR (proof of possession) becomes an agent certificate. */
import { ulid } from 'ulid';
import { parseCSR } from '../../certs/index.js';
import { TrellisError } from '../../common/errors.js';
import type { HubPki } from '../pki/index.js';
import { spiffeId } from '../pki/index.js';
import type { JoinTokens } from '../tokens/index.js';
import type { AgentRegistry, AgentDoc } from './index.js';
import { enrollmentLabels } from '../tokens/index.js';

export interface EnrollDeps { pki: HubPki; tokens: JoinTokens; agents: AgentRegistry; trustDomain: string; agentCertTtlMs: number }
export interface EnrollInput { token: string; csr: string; hostname: string; labels: Record<string, string> }
export interface EnrollResult { agent: AgentDoc; certPem: string; caBundle: string[] }

export const MAX_CSR_BYTES = 16 * 1024;

export async function enrollAgent(deps: EnrollDeps, input: EnrollInput): Promise<EnrollResult> {
  if (!deps.pki.canIssue) {
    throw new TrellisError('TRELLIS_E_CA_NO_KEY',
      'this hub was set up with an operator-supplied CA and no CA key, so it cannot enroll agents: issue the agent a certificate with your CA (URI SAN spiffe://<trust-domain>/tenant/<tenant>/agent/<id>, EKU clientAuth) and start it with `trellis agent run --cert F --key F --ca F`');
  }
  const checked = await deps.tokens.check(input.token); // refuse bad tokens before doing any other work
  if (Buffer.byteLength(input.csr ?? '') > MAX_CSR_BYTES) throw new TrellisError('TRELLIS_E_CSR_INVALID', `the CSR is over ${MAX_CSR_BYTES} bytes`);
  const csr = parseCSR(input.csr, { maxBytes: MAX_CSR_BYTES });
  const hostname = String(input.hostname ?? '').slice(0, 253);
  enrollmentLabels(checked, input.labels ?? {}); // refused before the token is used
  // Names in the certificate come from the hub: the CSR's subject and requested SANs are ignored.
  const token = await deps.tokens.consume(input.token);
  const labels = enrollmentLabels(token, input.labels ?? {});
  const agentId = ulid().toLowerCase();
  const issued = deps.pki.issueAgentCertificate({ publicKey: csr.publicKey, agentId, tenant: token.tenant, trustDomain: deps.trustDomain, ttlMs: deps.agentCertTtlMs });
  const agent: AgentDoc = {
    id: agentId, tenant: token.tenant, hostname, labels, enrolledAt: Date.now(), tokenId: token.id,
    spiffeId: spiffeId(deps.trustDomain, token.tenant, agentId), certSerial: issued.serial, certExpiresAt: issued.notAfter.getTime(), certCa: issued.caFingerprint,
    serials: [{ serial: issued.serial, notAfter: issued.notAfter.getTime() }], revoked: false,
  };
  await deps.agents.create(agent);
  return { agent, certPem: issued.certPem, caBundle: deps.pki.trustBundle };
}
