/** Admin-port services: decode, authorize (in wrap), call the domain, encode. */
import * as grpc from '@grpc/grpc-js';
import { v1 } from '../../common/proto.js';
import { certInfo, splitPemBundle } from '../../certs/index.js';
import { TRELLIS_VERSION, API_VERSION } from '../../common/version.js';
import { TrellisError } from '../../common/errors.js';
import { unary, serverStream, type WrapDeps, type CallContext } from './wrap.js';
import { resolveTenant, authorize } from '../authz/index.js';
import { enrollAgent } from '../agents/enroll.js';
import type { HubComponents } from '../components.js';
import type { AgentView } from '../agents/index.js';
import type { JoinTokenDoc } from '../tokens/index.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';
import { checkString } from '../validate.js';

const S = '/trellis.v1';

export function certificateInfo(pem: string): T.CertificateInfo {
  const i = certInfo(pem);
  return {
    subject: i.subject, issuer: i.issuer, serial: i.serialHex, notBeforeMs: i.notBefore.getTime(), notAfterMs: i.notAfter.getTime(),
    dnsNames: i.dnsNames, ipAddresses: i.ipAddresses, uris: i.uris, fingerprintSha256: i.fingerprint, keyType: i.keyType, pem,
  };
}

function agentInfo(a: AgentView): T.AgentInfo {
  return {
    id: a.id, tenant: a.tenant, hostname: a.hostname, labels: a.labels, facts: a.facts ?? null, online: a.online,
    lastSeenMs: a.lastSeen ?? 0, enrolledAtMs: a.enrolledAt, certSerial: a.certSerial, certExpiresAtMs: a.certExpiresAt,
    revoked: a.revoked, revokedAtMs: a.revokedAt ?? 0, spiffeId: a.spiffeId, remoteAddress: a.remote ?? '', status: a.status,
  };
}

function tokenView(ctx: CallContext) {
  return { tenant: readTenant(ctx), viewer: ctx.principal?.username, admin: ctx.principal?.grants.isAdmin };
}

function tokenInfo(d: JoinTokenDoc): T.JoinTokenInfo {
  return {
    id: d.id, tenant: d.tenant, uses: d.uses, used: d.used, createdAtMs: d.createdAt, expiresAtMs: d.expiresAt,
    labels: d.labels, revoked: d.revoked, createdBy: d.createdBy, description: d.description, private: !!d.private,
  };
}

/** The tenant a call reads: its own, or every tenant for an administrator asking for `*`. */
export function readTenant(ctx: CallContext): string | undefined {
  return ctx.tenant === '*' && ctx.principal?.grants.isAdmin ? undefined : ctx.tenant;
}

/** The tenant a call writes to: never `*`. */
export function writeTenant(ctx: CallContext): string {
  if (!ctx.tenant || ctx.tenant === '*') throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'name one tenant for this change (x-trellis-tenant / --tenant)');
  return ctx.tenant;
}

/** An agent of the call's tenant, or NOT_FOUND (another tenant's agent does not exist for the caller). */
async function agentInTenant(c: HubComponents, ctx: CallContext, id: string) {
  const a = await c.agents.require(checkString(id, 'id', 64));
  const t = readTenant(ctx);
  if (t !== undefined && a.tenant !== t) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no agent ${id}: see \`trellis agents list\``);
  return a;
}

const REF_RE = /\{\{\s*(secret|kv)\.([A-Za-z0-9._/-]{1,256})\s*\}\}/g;

/**
 * Resolves `{{ secret.NAME }}` / `{{ kv.NAME }}` references in environment values from the
 * caller's tenant. Values that reference a secret go to `secretEnv` (sealed per agent, never
 * logged); plain datastore values are substituted in place. References in argv are refused:
 * secrets reach a process by environment only. Using a reference needs kv:read, not kv:decrypt:
 * the caller runs with the value without ever seeing it.
 */
async function resolveSecretRefs(c: HubComponents, ctx: CallContext, argv: string[], env: Record<string, string>): Promise<{ env: Record<string, string>; secretEnv: Record<string, string> }> {
  if (argv.some((a) => new RegExp(REF_RE.source).test(a))) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'datastore references go in --env only: secrets never travel in argv, where other users of the host can read them');
  }
  const plain: Record<string, string> = {};
  const secretEnv: Record<string, string> = {};
  for (const [name, value] of Object.entries(env)) {
    const refs = [...value.matchAll(new RegExp(REF_RE.source, 'g'))];
    if (refs.length === 0) { plain[name] = value; continue; }
    authorize(ctx.principal!, 'kv:read');
    const who = { username: ctx.principal!.username, isAdmin: ctx.principal!.grants.isAdmin };
    let secret = false;
    let out = value;
    for (const m of refs) {
      const { doc } = await c.kv.get(writeTenant(ctx), who, m[2]!);
      if (m[1] === 'secret' && !doc.secret) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${m[2]} is not a secret: refer to it as {{ kv.${m[2]} }}`);
      secret ||= doc.secret;
      out = out.replace(m[0], await c.kv.open(doc));
    }
    (secret ? secretEnv : plain)[name] = out;
  }
  return { env: plain, secretEnv };
}

export function addAdminServices(server: grpc.Server, c: HubComponents, deps: WrapDeps): void {

  server.addService(v1.Version.service, {
    GetVersion: unary<T.GetVersionRequest__Output, T.VersionInfo>(deps, `${S}.Version/GetVersion`, async () => ({
      version: TRELLIS_VERSION, api: API_VERSION, caFingerprint: c.pki.caFingerprint, canIssue: c.pki.canIssue,
    })),
  });

  server.addService(v1.Enrollment.service, {
    Enroll: unary<T.EnrollRequest__Output, T.EnrollResponse>(deps, `${S}.Enrollment/Enroll`, async (req, ctx) => {
      // The CSR size limit (MAX_CSR_BYTES, TRELLIS_E_CSR_INVALID) is the domain's, checked after the token;
      // here only the message limit bounds it.
      const r = await enrollAgent(
        { pki: c.pki, tokens: c.tokens, agents: c.agents, trustDomain: c.config.trustDomain, agentCertTtlMs: c.config.agentCertTtl },
        { token: checkString(req.token, 'token', 512), csr: checkString(req.csr, 'csr', c.config.maxMessageBytes), hostname: checkString(req.hostname, 'hostname', 253), labels: req.labels },
      );
      c.log.info({ component: 'enroll', reqId: ctx.requestId, agentId: r.agent.id, tenant: r.agent.tenant, tokenId: r.agent.tokenId, serial: r.agent.certSerial, peer: ctx.peer }, 'agent enrolled; certificate issued');
      return {
        agentId: r.agent.id, tenant: r.agent.tenant, certificate: r.certPem, caBundle: r.caBundle,
        trustDomain: c.config.trustDomain, spiffeId: r.agent.spiffeId, labels: r.agent.labels, agentPort: c.agentPort(),
      };
    }),
  });

  server.addService(v1.AdminAuth.service, {
    Login: unary<T.LoginRequest__Output, T.LoginResponse>(deps, `${S}.AdminAuth/Login`, async (req, ctx) => {
      ctx.target = `user:${String(req.username).slice(0, 64)}`; // the account tried, for the audit record
      try {
        const r = await c.auth.login(req.username, req.password, { source: ctx.peer });
        return { token: r.token, expiresAtMs: r.expiresAt, username: r.user.username };
      } catch (e) {
        c.log.warn({ component: 'auth', reqId: ctx.requestId, user: String(req.username).slice(0, 64), peer: ctx.peer }, 'login failed');
        throw e;
      }
    }),
    Logout: unary<T.LogoutRequest__Output, T.LogoutResponse>(deps, `${S}.AdminAuth/Logout`, async (_req, ctx) => {
      if (ctx.principal?.sessionId) await c.auth.logout(ctx.principal.sessionId);
      return {};
    }),
    WhoAmI: unary<T.WhoAmIRequest__Output, T.WhoAmIResponse>(deps, `${S}.AdminAuth/WhoAmI`, async (_req, ctx) => ({
      username: ctx.principal!.username, roles: [...ctx.principal!.roles], sessionExpiresAtMs: ctx.principal!.sessionExpiresAt ?? 0,
      tenant: ctx.tenant ?? '',
    })),
  });

  server.addService(v1.AdminJoinTokens.service, {
    CreateJoinToken: unary<T.CreateJoinTokenRequest__Output, T.CreateJoinTokenResponse>(deps, `${S}.AdminJoinTokens/CreateJoinToken`, async (req, ctx) => {
      // A token enrolls agents into a tenant: the caller must belong to it.
      const tenant = req.tenant ? resolveTenant(ctx.principal!, req.tenant) : writeTenant(ctx);
      ctx.target = `tenant:${tenant}`;
      await c.iam.tenant(tenant);
      const r = await c.tokens.create({ tenant, uses: req.uses, ttlMs: req.ttlMs, labels: req.labels, createdBy: ctx.principal!.username, description: req.description, private: req.private });
      c.log.info({ component: 'tokens', tokenId: r.doc.id, tenant: r.doc.tenant, uses: r.doc.uses, user: ctx.principal!.username }, 'join token created');
      return { token: r.token, info: tokenInfo(r.doc) };
    }),
    ListJoinTokens: unary<T.ListJoinTokensRequest__Output, T.ListJoinTokensResponse>(deps, `${S}.AdminJoinTokens/ListJoinTokens`, async (req, ctx) => ({
      tokens: (await c.tokens.list(req.includeInactive, tokenView(ctx))).map(tokenInfo),
    })),
    RevokeJoinToken: unary<T.RevokeJoinTokenRequest__Output, T.RevokeJoinTokenResponse>(deps, `${S}.AdminJoinTokens/RevokeJoinToken`, async (req, ctx) => {
      ctx.target = `token:${String(req.id).slice(0, 64)}`;
      await c.tokens.revoke(checkString(req.id, 'id', 64), tokenView(ctx));
      return {};
    }),
  });

  server.addService(v1.AdminAgents.service, {
    ListAgents: unary<T.ListAgentsRequest__Output, T.ListAgentsResponse>(deps, `${S}.AdminAgents/ListAgents`, async (req, ctx) => ({
      agents: (await c.agents.list({ selector: req.selector, tenant: readTenant(ctx) })).map(agentInfo),
    })),
    GetAgent: unary<T.GetAgentRequest__Output, T.AgentInfo>(deps, `${S}.AdminAgents/GetAgent`, async (req, ctx) =>
      agentInfo(c.agents.view(await agentInTenant(c, ctx, req.id)))),
    RevokeAgent: unary<T.RevokeAgentRequest__Output, T.RevokeAgentResponse>(deps, `${S}.AdminAgents/RevokeAgent`, async (req, ctx) => {
      ctx.target = `agent:${String(req.id).slice(0, 64)}`;
      await agentInTenant(c, ctx, req.id);
      const r = await c.agents.revoke(checkString(req.id, 'id', 64), checkString(req.reason, 'reason', 256) || 'revoked by admin');
      c.log.info({ component: 'agents', agentId: req.id, serials: r.serials, user: ctx.principal!.username, disconnected: r.disconnected }, 'agent revoked');
      return { revokedSerials: r.serials, disconnected: r.disconnected };
    }),
  });

  server.addService(v1.AdminCerts.service, {
    GetCertificates: unary<T.GetCertificatesRequest__Output, T.GetCertificatesResponse>(deps, `${S}.AdminCerts/GetCertificates`, async () => {
      const hubChain = splitPemBundle(c.pki.hubIdentity.certChainPem);
      return {
        ca: certificateInfo(c.pki.caCertPem), hub: certificateInfo(hubChain[0]!), caChain: c.pki.caChain.map(certificateInfo),
        canIssue: c.pki.canIssue, trustDomain: c.config.trustDomain, hubNames: [...c.config.names], agentCertTtlMs: c.config.agentCertTtl,
      };
    }),
    GetCrl: unary<T.GetCrlRequest__Output, T.GetCrlResponse>(deps, `${S}.AdminCerts/GetCrl`, async () => {
      const { entries, crlNumber } = await c.agents.revokedEntries();
      return { crl: c.pki.crl(entries, crlNumber), revoked: entries.length };
    }),
    ReplaceHubCertificate: unary<T.ReplaceHubCertificateRequest__Output, T.ReplaceHubCertificateResponse>(deps, `${S}.AdminCerts/ReplaceHubCertificate`, async (req, ctx) => {
      await c.pki.replaceHubIdentity(checkString(req.certificate, 'certificate', 64 * 1024), checkString(req.privateKey, 'private_key', 16 * 1024));
      const leaf = splitPemBundle(c.pki.hubIdentity.certChainPem)[0]!;
      c.log.info({ component: 'pki', user: ctx.principal!.username, serial: certInfo(leaf).serialHex }, 'hub certificate replaced');
      return { hub: certificateInfo(leaf) };
    }),
  });

  server.addService(v1.AdminRuns.service, {
    Run: serverStream<T.RunRequest__Output, T.RunUpdate>(deps, `${S}.AdminRuns/Run`, async (req, ctx, write) => {
      let agentIds: string[];
      if (req.agentId) {
        const a = await agentInTenant(c, ctx, req.agentId);
        if (a.revoked) throw new TrellisError('TRELLIS_E_CERT_REVOKED', `agent ${a.id} is revoked`);
        agentIds = [a.id];
      } else if (Object.keys(req.selector).length > 0) {
        agentIds = (await c.agents.list({ selector: req.selector, tenant: readTenant(ctx) })).filter((a) => a.online).map((a) => a.id);
        if (agentIds.length === 0) throw new TrellisError('TRELLIS_E_NOT_FOUND', 'no online agent matches the selector');
      } else {
        throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'name a target: --agent ID or --selector k=v');
      }
      const { env, secretEnv } = await resolveSecretRefs(c, ctx, req.argv, req.env);
      await new Promise<void>((resolve, reject) => {
        let pending = agentIds.length;
        let handle: { cancel: () => void } | undefined;
        const onAbort = () => { handle?.cancel(); resolve(); };
        try {
          handle = c.runs.start({
            agentIds, argv: req.argv, timeoutMs: req.timeoutMs || 30_000, env, secretEnv, cwd: req.cwd, requestedBy: ctx.principal!.username,
          }, (e) => {
            switch (e.kind) {
              case 'started': write({ started: { executionId: e.executionId, agentId: e.agentId } }); break;
              case 'output': write({ output: { executionId: e.executionId, agentId: e.agentId, stream: e.stream, data: e.data } }); break;
              case 'finished':
                write({ finished: { executionId: e.executionId, agentId: e.agentId, status: e.status, exitCode: e.exitCode, error: e.error, durationMs: e.durationMs } });
                if (--pending === 0) { ctx.signal.removeEventListener('abort', onAbort); resolve(); }
                break;
            }
          });
        } catch (err) { reject(err); return; }
        ctx.signal.addEventListener('abort', onAbort, { once: true });
      });
    }),
  });
}
