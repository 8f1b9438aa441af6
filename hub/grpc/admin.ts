/** Admin-port services: decode, authorize (in wrap), call the domain, encode. */
import * as grpc from '@grpc/grpc-js';
import { v1 } from '../../common/proto.js';
import { certInfo, splitPemBundle } from '../../certs/index.js';
import { TRELLIS_VERSION, API_VERSION } from '../../common/version.js';
import { TrellisError, isTrellisError } from '../../common/errors.js';
import { unary, serverStream, type WrapDeps, type CallContext } from './wrap.js';
import { resolveTenant, authorize } from '../authz/index.js';
import { enrollAgent } from '../agents/enroll.js';
import type { HubComponents } from '../components.js';
import { cleanFacts } from '../agents/index.js';
import { FACT_KEYS, type AgentView } from '../agents/index.js';
import type { JoinTokenDoc } from '../tokens/index.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';
import { refsIn } from '../rights/index.js';
import { useRefs } from './refs.js';
import { FINAL_STATUSES } from '../../common/automation/types.js';
import { checkString } from '../validate.js';
import { checkHubNames, issueHubCertificate } from '../pki/index.js';
import { parseJoinToken } from '../../common/jointoken.js';
import { formatDuration } from '../../common/duration.js';
import { resolveAgent, resolveTargets, matchedMessage, auditDetail } from './targets.js';
import { requestSelector, parseSelector } from '../../common/selector.js';

const S = '/trellis.v1';
const AGENT_STATUSES = new Set(['online', 'offline', 'revoked']);
/** `agents list` shows a revoked agent for this long after its revocation (then `--status revoked` or `--all`). */
export const REVOKED_LISTED_MS = 7 * 86_400_000;
/** Agents in one page of ListAgents (the web console pages the list). */
const MAX_AGENTS_PAGE = 1000;
const MIN_PRUNE_OFFLINE_MS = 3_600_000;

export function certificateInfo(pem: string): T.CertificateInfo {
  const i = certInfo(pem);
  return {
    subject: i.subject, issuer: i.issuer, serial: i.serialHex, notBeforeMs: i.notBefore.getTime(), notAfterMs: i.notAfter.getTime(),
    dnsNames: i.dnsNames, ipAddresses: i.ipAddresses, uris: i.uris, fingerprintSha256: i.fingerprint, keyType: i.keyType, pem,
  };
}

function agentInfo(c: HubComponents, a: AgentView): T.AgentInfo {
  return {
    eventsRefused: c.events.refusedCount(a.id), edgeReportsRefused: c.executions.edgeRefusedCount(a.id),
    // Cleaned on the way out too: records stored before facts were bounded (issue 10, finding 11).
    id: a.id, tenant: a.tenant, hostname: cleanFacts({ hostname: a.hostname }).facts.hostname, labels: a.labels, facts: a.facts ? cleanFacts(a.facts).facts : null, online: a.online,
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
    labels: d.labels, revoked: d.revoked, createdBy: d.createdBy, description: d.description, private: !!d.private, allowLabelKeys: d.allowLabels ?? [],
  };
}

/** `token:<id>` from a join token's text, without its secret (the id is its public part). */
function tokenTarget(text: unknown): string {
  try { return `token:${parseJoinToken(String(text ?? '')).id}`; } catch { return 'token:(malformed)'; }
}

function formatLabels(l: Record<string, string>): string {
  const s = Object.entries(l).map(([k, v]) => `${k}=${v}`).sort().join(',');
  return s ? `{${s}}` : '{}';
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

/**
 * An agent of the call's tenant named by id, unique id prefix or exact hostname, or NOT_FOUND
 * (another tenant's agent does not exist for the caller); several → INVALID_ARGUMENT naming them.
 */
async function agentInTenant(c: HubComponents, ctx: CallContext, id: string) {
  return resolveAgent(c, ctx, id);
}

export function addAdminServices(server: grpc.Server, c: HubComponents, deps: WrapDeps): void {

  server.addService(v1.Version.service, {
    GetVersion: unary<T.GetVersionRequest__Output, T.VersionInfo>(deps, `${S}.Version/GetVersion`, async () => ({
      version: TRELLIS_VERSION, api: API_VERSION, caFingerprint: c.pki.caFingerprint, canIssue: c.pki.canIssue, webPort: c.webPort?.() ?? 0,
      // Clients keep their pinned CA current from this (read over a connection their pin verified).
      trustBundle: c.pki.trustBundle,
    })),
  });

  server.addService(v1.Enrollment.service, {
    Enroll: unary<T.EnrollRequest__Output, T.EnrollResponse>(deps, `${S}.Enrollment/Enroll`, async (req, ctx) => {
      // The CSR size limit (MAX_CSR_BYTES, TRELLIS_E_CSR_INVALID) is the domain's, checked after the token;
      // here only the message limit bounds it.
      ctx.target = tokenTarget(req.token); // the token's id, never its secret, for the audit record
      const r = await enrollAgent(
        { pki: c.pki, tokens: c.tokens, agents: c.agents, trustDomain: c.config.trustDomain, agentCertTtlMs: c.config.agentCertTtl },
        { token: checkString(req.token, 'token', 512), csr: checkString(req.csr, 'csr', c.config.maxMessageBytes), hostname: checkString(req.hostname, 'hostname', 253), labels: req.labels },
      );
      ctx.target = `agent:${r.agent.id} (token ${r.agent.tokenId})`;
      ctx.detail = `tenant ${r.agent.tenant}, serial ${r.agent.certSerial}, labels ${formatLabels(r.agent.labels)}`;
      c.log.info({ component: 'enroll', reqId: ctx.requestId, agentId: r.agent.id, tenant: r.agent.tenant, tokenId: r.agent.tokenId, serial: r.agent.certSerial, peer: ctx.peer }, 'agent enrolled; certificate issued');
      return {
        agentId: r.agent.id, tenant: r.agent.tenant, certificate: r.certPem, caBundle: r.caBundle,
        trustDomain: c.config.trustDomain, spiffeId: r.agent.spiffeId, labels: r.agent.labels, agentPort: c.agentPort(),
        hubAddresses: c.config.cluster.addresses,
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
        // A rate-limited refusal's log line is counted by the wrapper (RefusalLog, hub/grpc/refusals.ts), not written per call.
        if (!isTrellisError(e, 'TRELLIS_E_RATE_LIMITED')) c.log.warn({ component: 'auth', reqId: ctx.requestId, user: String(req.username).slice(0, 64), peer: ctx.peer }, 'login failed');
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
      const r = await c.tokens.create({ tenant, uses: req.uses, ttlMs: req.ttlMs, labels: req.labels, allowLabels: req.allowLabelKeys, createdBy: ctx.principal!.username, description: req.description, private: req.private });
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
    ListAgents: unary<T.ListAgentsRequest__Output, T.ListAgentsResponse>(deps, `${S}.AdminAgents/ListAgents`, async (req, ctx) => {
      const selector = requestSelector(req.selector, checkString(req.selectorExpr ?? '', 'selector', 4096).trim());
      const status = checkString(req.status ?? '', 'status', 16);
      if (status && !AGENT_STATUSES.has(status)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `bad status "${status}": online, offline or revoked`);
      const facts = parseSelector(checkString(req.factsExpr ?? '', 'facts_expr', 4096).trim());
      const unknown = facts.find((r) => !(FACT_KEYS as readonly string[]).includes(r.key));
      if (unknown) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `no fact "${unknown.key.slice(0, 64)}": facts are ${FACT_KEYS.join(', ')}`);
      const now = Date.now();
      const keepRevoked = req.includeOldRevoked || status === 'revoked';
      const limit = Number(req.limit) || 0;
      if (limit < 0 || limit > MAX_AGENTS_PAGE) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `limit is between 1 and ${MAX_AGENTS_PAGE} (0: all)`);
      const afterId = checkString(req.afterId ?? '', 'after_id', 64);
      // A page: id order (enrollment order: ids are ULIDs), after the last id of the previous page.
      const r = await c.agents.page({
        selector, facts, tenant: readTenant(ctx), status: status as AgentView['status'] | '', limit, afterId,
        keep: keepRevoked ? undefined : (a) => !a.revoked || now - (a.revokedAt ?? 0) < REVOKED_LISTED_MS,
      });
      return { agents: r.agents.map((a) => agentInfo(c, a)), total: r.total };
    }),
    GetAgent: unary<T.GetAgentRequest__Output, T.AgentInfo>(deps, `${S}.AdminAgents/GetAgent`, async (req, ctx) =>
      agentInfo(c, c.agents.view(await agentInTenant(c, ctx, req.id)))),
    RevokeAgent: unary<T.RevokeAgentRequest__Output, T.RevokeAgentResponse>(deps, `${S}.AdminAgents/RevokeAgent`, async (req, ctx) => {
      ctx.target = `agent:${String(req.id).slice(0, 64)}`;
      const a = await agentInTenant(c, ctx, req.id);
      ctx.target = `agent:${a.id}`;
      const r = await c.agents.revoke(a.id, checkString(req.reason, 'reason', 256) || 'revoked by admin');
      c.log.info({ component: 'agents', agentId: a.id, serials: r.serials, user: ctx.principal!.username, disconnected: r.disconnected }, 'agent revoked');
      return { revokedSerials: r.serials, disconnected: r.disconnected };
    }),
    PruneAgents: unary<T.PruneAgentsRequest__Output, T.PruneAgentsResponse>(deps, `${S}.AdminAgents/PruneAgents`, async (req, ctx) => {
      const offlineForMs = Number(req.offlineForMs) || 0;
      if (!req.revoked && !offlineForMs) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'say what to prune: --revoked and/or --offline-for DURATION');
      if (offlineForMs && offlineForMs < MIN_PRUNE_OFFLINE_MS) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', '--offline-for is at least 1h (an agent restarting is offline for seconds)');
      const tenant = readTenant(ctx);
      ctx.target = `agents of ${tenant === undefined ? 'every tenant' : `tenant ${tenant}`}: ${[req.revoked ? 'revoked' : '', offlineForMs ? `offline for ${formatDuration(offlineForMs)}` : ''].filter(Boolean).join(' and ')}${req.dryRun ? ' (dry run)' : ''}`;
      const pruned = await c.agents.prune({ tenant, revoked: req.revoked, offlineForMs: offlineForMs || undefined, dryRun: req.dryRun, reason: `pruned by ${ctx.principal!.username}: offline for over ${formatDuration(offlineForMs)}` });
      ctx.detail = `${pruned.length} agent(s): ${pruned.map((a) => `${a.id} (${a.hostname || '-'})`).join(', ')}`;
      if (!req.dryRun && pruned.length) c.log.info({ component: 'agents', user: ctx.principal!.username, agentIds: pruned.map((a) => a.id) }, 'agents pruned');
      return { pruned: pruned.map((a) => agentInfo(c, c.agents.view(a))) };
    }),
    SetAgentLabels: unary<T.SetAgentLabelsRequest__Output, T.AgentInfo>(deps, `${S}.AdminAgents/SetAgentLabels`, async (req, ctx) => {
      ctx.target = `agent:${String(req.id).slice(0, 64)}`;
      const found = await agentInTenant(c, ctx, req.id);
      ctx.target = `agent:${found.id}`;
      const r = await c.agents.setLabels(found.id, { set: req.set, remove: req.remove });
      ctx.detail = `labels ${formatLabels(r.before)} -> ${formatLabels(r.agent.labels)}`;
      c.log.info({ component: 'agents', agentId: r.agent.id, labels: r.agent.labels, user: ctx.principal!.username }, 'agent labels changed');
      // Edge rules, sensors and their sealed values follow the new labels at once.
      if (c.agents.link(r.agent.id)) await c.agentConfigs.push(r.agent.id).catch((err) => c.log.error({ agentId: r.agent.id, err: (err as Error).message }, 'cannot push agent config'));
      return agentInfo(c, c.agents.view(r.agent));
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
    IssueHubCertificate: unary<T.IssueHubCertificateRequest__Output, T.IssueHubCertificateResponse>(deps, `${S}.AdminCerts/IssueHubCertificate`, async (req, ctx) => {
      const names = checkHubNames(req.names.length ? req.names.map((n) => checkString(n, 'name', 253)) : c.config.names, c.config.names);
      const ttlMs = Number(req.ttlMs) || 365 * 86_400_000;
      if (ttlMs < 1000 || ttlMs > 825 * 86_400_000) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'ttl must be between 1s and 825d');
      const id = issueHubCertificate(c.pki, names, ttlMs);
      await c.pki.replaceHubIdentity(id.certChainPem, id.keyPem);
      const info = certificateInfo(splitPemBundle(c.pki.hubIdentity.certChainPem)[0]!);
      ctx.target = info.serial;
      ctx.detail = `names ${names.join(',')}; valid until ${new Date(Number(info.notAfterMs)).toISOString()}`.slice(0, 500);
      c.log.info({ component: 'pki', user: ctx.principal!.username, serial: info.serial, names }, 'hub certificate issued from the internal CA');
      return { hub: info };
    }),
  });

  server.addService(v1.AdminRuns.service, {
    Run: serverStream<T.RunRequest__Output, T.RunUpdate>(deps, `${S}.AdminRuns/Run`, async (req, ctx, write) => {
      const targets = await resolveTargets(c, ctx, req, readTenant(ctx));
      ctx.target = targets.describe;
      if (targets.agent && !c.agents.link(targets.agent.id) && !c.agents.isOnline(targets.agent.id)) throw new TrellisError('TRELLIS_E_AGENT_OFFLINE', `agent ${targets.agent.id} (${targets.agent.hostname || '-'}) is not connected`);
      const agents = targets.agent ? [targets.agent] : targets.online;
      // References resolve in the caller's tenant: kv:read for any, secrets:use (or kv:decrypt)
      // for a secret, since whoever chooses the command can make it print the value (hub/rights).
      const refs = refsIn(req.env).length > 0;
      const uses = await useRefs(c.kv, ctx, refs ? writeTenant(ctx) : (readTenant(ctx) ?? ''), req.env);
      const byTenant = new Map<string, string[]>();
      for (const a of agents) {
        const t = refs ? writeTenant(ctx) : (readTenant(ctx) ?? a.tenant);
        byTenant.set(t, [...(byTenant.get(t) ?? []), a.id]);
      }
      const kvCaller = uses.kvCaller;
      const timeoutMs = req.timeoutMs || 30_000;
      ctx.detail = auditDetail({ argv: req.argv, envKeys: Object.keys(req.env), cwd: req.cwd, offline: targets.offline });
      write({ matched: matchedMessage(targets) });
      // Ad-hoc runs are executions of core.command (recorded in history). A client that goes
      // away cancels them; the call still waits for their results to log them.
      let ids: string[] = [];
      const onAbort = () => { for (const id of ids) void c.executions.cancel('*', id).catch(() => undefined); };
      ctx.signal.addEventListener('abort', onAbort, { once: true });
      try {
        await c.executions.watch(async () => {
          const recs = [];
          for (const [tenant, agentIds] of byTenant) {
            recs.push(...await c.executions.runCommand({ tenant, agentIds, argv: req.argv, env: req.env, cwd: req.cwd, timeoutMs, requestedBy: ctx.principal!.username, kvCaller }));
          }
          ids = recs.map((r) => r.id);
          ctx.detail = auditDetail({ argv: req.argv, envKeys: Object.keys(req.env), cwd: req.cwd, offline: targets.offline, executions: recs });
          uses.note();
          if (ctx.signal.aborted) onAbort();
          return recs;
        }, (u) => {
          if (u.kind === 'output') { write({ output: { executionId: u.executionId, agentId: u.agentId, stream: u.stream, data: u.data } }); return; }
          const r = u.record;
          if (r.status === 'requested') write({ started: { executionId: r.id, agentId: r.agentId } });
          else if (FINAL_STATUSES.has(r.status)) {
            const durationMs = r.finishedMs - (r.startedMs || r.requestedMs);
            deps.log.info({ reqId: ctx.requestId, executionId: r.id, agentId: r.agentId, status: r.status, exitCode: r.exitCode, durationMs }, 'run finished');
            write({ finished: { executionId: r.id, agentId: r.agentId, status: r.status, exitCode: r.exitCode, error: r.error, durationMs } });
          }
        }, { follow: true });
      } finally {
        ctx.signal.removeEventListener('abort', onAbort);
      }
    }),
  });
}
