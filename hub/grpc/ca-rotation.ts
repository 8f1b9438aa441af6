/** AdminCa: CA rotation in phases (hub/pki/rotation.ts). Decode, authorize (in wrap), call the domain, encode. */
import type * as grpc from '@grpc/grpc-js';
import { v1 } from '../../common/proto.js';
import { fingerprintSha256 } from '../../certs/index.js';
import { unary, type WrapDeps } from './wrap.js';
import { checkString } from '../validate.js';
import { certificateInfo } from './admin.js';
import type { HubComponents } from '../components.js';
import type { RotationStatus } from '../pki/rotation.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

const S = '/trellis.v1.AdminCa';

function encode(s: RotationStatus): T.CaRotationStatus {
  return {
    phase: s.phase, startedAtMs: s.startedAtMs, windowMs: s.windowMs, startedBy: s.startedBy,
    currentCa: certificateInfo(s.currentCa), nextCa: s.nextCa ? certificateInfo(s.nextCa) : null, retiredCa: s.retiredCa ? certificateInfo(s.retiredCa) : null,
    agentsActive: s.agentsActive, agentsOnNewCa: s.agentsOnNewCa, agentsOnOldCa: s.agentsOnOldCa, agentsOnRetiredCa: s.agentsOnRetiredCa,
    lagging: s.lagging, activeWithinMs: s.activeWithinMs, hubCertIssuer: s.hubCertIssuer, hubCertIssuerFingerprint: s.hubCertIssuerFingerprint,
    trustBundle: s.trustBundle, leftBehind: s.leftBehind, leftBehindCount: s.leftBehindCount, lastEvent: s.lastEvent,
  };
}

const short = (pem: string | undefined) => (pem ? fingerprintSha256(pem).slice(0, 16) : '-');

export function addCaServices(server: grpc.Server, c: HubComponents, deps: WrapDeps): void {
  server.addService(v1.AdminCa.service, {
    RotateStart: unary<T.RotateStartRequest__Output, T.CaRotationStatus>(deps, `${S}/RotateStart`, async (req, ctx) => {
      const supplied = !!(req.caCertificate || req.caPrivateKey);
      const s = await c.rotation.startRotation({
        keyType: checkString(req.keyType, 'key_type', 32), caCertPem: checkString(req.caCertificate, 'ca_certificate', 64 * 1024) || undefined,
        caKeyPem: checkString(req.caPrivateKey, 'ca_private_key', 16 * 1024) || undefined, windowMs: Number(req.windowMs) || 0, by: ctx.principal!.username,
      });
      ctx.target = `ca:${short(s.nextCa)}`;
      ctx.detail = `new CA sha256 ${short(s.nextCa)} (${supplied ? 'supplied' : 'generated'}), old CA sha256 ${short(s.currentCa)}, window ${Math.round(s.windowMs / 1000)}s`;
      return encode(s);
    }),
    GetRotation: unary<T.GetRotationRequest__Output, T.CaRotationStatus>(deps, `${S}/GetRotation`, async () => encode(await c.rotation.status())),
    RotateCommit: unary<T.RotateCommitRequest__Output, T.CaRotationStatus>(deps, `${S}/RotateCommit`, async (req, ctx) => {
      ctx.target = `ca:${c.rotation.phase === 'started' ? c.pki.issuingFingerprint.slice(0, 16) : '-'}`;
      const s = await c.rotation.commitRotation({ force: !!req.force, by: ctx.principal!.username });
      ctx.detail = `CA sha256 ${short(s.currentCa)} is now the hub CA${s.leftBehindCount ? `; forced, ${s.leftBehindCount} agent(s) left on the old CA: ${s.leftBehind.map((a) => a.id).join(', ')}` : ''}`;
      return encode(s);
    }),
    RotateRollback: unary<T.RotateRollbackRequest__Output, T.CaRotationStatus>(deps, `${S}/RotateRollback`, async (_req, ctx) => {
      ctx.target = `ca:${c.rotation.phase === 'started' ? c.pki.issuingFingerprint.slice(0, 16) : '-'}`;
      const s = await c.rotation.rollbackRotation({ by: ctx.principal!.username });
      ctx.detail = `back to CA sha256 ${short(s.currentCa)}${s.retiredCa ? `; the rolled-back CA stays trusted for ${s.agentsOnRetiredCa} agent(s) until they renew` : ''}`;
      return encode(s);
    }),
  });
}
