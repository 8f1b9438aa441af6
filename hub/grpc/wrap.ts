/**
 * Thin gRPC plumbing for admin-port handlers: every handler is wrapped with authentication
 * (from metadata only), authorization (from the method table), the tenant of the call, error →
 * status mapping, one log line per call with a request id, and an audit record for every
 * mutation and every refusal. Live streams are re-checked (hub/live) when rights change.
 * Domain code never sees a gRPC call object.
 */
import * as grpc from '@grpc/grpc-js';
import { randomBytes } from 'node:crypto';
import { requirementFor, authorize, authorizeAnyScope, authorizeAdmin, resolveTenant, isMutation, type Principal } from '../authz/index.js';
import type { Auth } from '../auth/index.js';
import type { LiveStreams } from '../live/index.js';
import { toStatus } from '../../common/grpc-errors.js';
import { TrellisError, isTrellisError, type ErrorCode } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import type { AuditEntry, AuditSink } from '../audit/types.js';
import type { RefusalLog } from './refusals.js';

export interface CallContext {
  requestId: string;
  method: string;
  peer: string;
  principal?: Principal;
  /** The tenant the call works in (metadata x-trellis-tenant, checked against membership). */
  tenant?: string;
  signal: AbortSignal;
  /** What the call acted on, for the audit record (set by handlers). */
  target?: string;
  /** Checks a handler made beyond the method table; a live stream re-runs them when rights change. */
  rechecks?: Array<(p: Principal) => void>;
  /** What a successful call changed, for the audit record (set by handlers; never a secret). */
  detail?: string;
}

/**
 * `audit`: where records go (the hub gives the refusal throttle, hub/audit/throttle.ts);
 * `refusals`: counts the log lines of rate-limited refusals (without it, one line each).
 */
export interface WrapDeps {
  auth: Auth; log: Logger; audit?: AuditSink; live?: LiveStreams; refusals?: RefusalLog;
  /** Maintenance mode (hub/maintenance): refuses callers that are not platform administrators. */
  maintenance?: { checkCall(isAdmin: boolean): void };
  /** Told of every finished call: its method (a served path), gRPC status code and duration (hub/metrics). */
  observe?: (method: string, code: number, seconds: number) => void;
}

export const TENANT_HEADER = 'x-trellis-tenant';

export function credentialOf(md: grpc.Metadata): string | undefined {
  const key = md.get('x-api-key')[0];
  if (typeof key === 'string' && key.trim()) return key.trim();
  const v = md.get('authorization')[0];
  if (typeof v !== 'string') return undefined;
  const m = /^Bearer\s+(\S+)$/i.exec(v.trim());
  return m ? m[1] : v.trim() || undefined;
}

async function authenticateCall(deps: WrapDeps, path: string, md: grpc.Metadata, ctx: CallContext): Promise<void> {
  const req = requirementFor(path);
  const asked = md.get(TENANT_HEADER)[0];
  const askedTenant = typeof asked === 'string' && asked.length <= 63 ? asked : undefined;
  switch (req.kind) {
    case 'open':
    case 'join-token':
    case 'login':
      return;
    case 'agent-cert':
      throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `${path} is served on the agent port only`);
    case 'self': {
      const p = (ctx.principal = await deps.auth.authenticate(credentialOf(md)));
      const t = askedTenant || p.tenants[0];
      ctx.tenant = t && (p.grants.isAdmin || p.tenants.includes(t)) ? t : undefined;
      return;
    }
    case 'admin':
      ctx.tenant = askedTenant; // recorded even if the call is refused below
      ctx.principal = await deps.auth.authenticate(credentialOf(md));
      authorizeAdmin(ctx.principal);
      ctx.tenant = askedTenant || 'default';
      return;
    case 'perm':
      ctx.tenant = askedTenant; // recorded even if the call is refused below
      ctx.principal = await deps.auth.authenticate(credentialOf(md));
      authorize(ctx.principal, req.perm);
      ctx.tenant = resolveTenant(ctx.principal, askedTenant);
      return;
    case 'perm-scoped':
      ctx.tenant = askedTenant; // recorded even if the call is refused below
      ctx.principal = await deps.auth.authenticate(credentialOf(md));
      authorizeAnyScope(ctx.principal, req.perm);
      ctx.tenant = resolveTenant(ctx.principal, askedTenant);
      return;
  }
}

/**
 * Maintenance mode: once the caller is known, anyone but a platform administrator is refused
 * (Version and Login stay open; an administrator must be able to log in to turn the mode off).
 */
function maintenanceGate(deps: WrapDeps, path: string, ctx: CallContext): void {
  if (!deps.maintenance) return;
  const kind = requirementFor(path).kind;
  if (kind === 'open' || kind === 'login') return;
  deps.maintenance.checkCall(ctx.principal?.grants.isAdmin ?? false);
}

const RESULT: Partial<Record<ErrorCode, AuditEntry['result']>> = {
  TRELLIS_E_UNAUTHENTICATED: 'unauthenticated',
  TRELLIS_E_TOKEN_INVALID: 'unauthenticated',
  TRELLIS_E_TOKEN_EXPIRED: 'unauthenticated',
  TRELLIS_E_TOKEN_USED_UP: 'unauthenticated',
  TRELLIS_E_PERMISSION_DENIED: 'denied',
  TRELLIS_E_INVALID_ARGUMENT: 'invalid',
  TRELLIS_E_RATE_LIMITED: 'denied',
  TRELLIS_E_MAINTENANCE: 'denied',
};

function actorOf(p: Principal | undefined): string {
  if (!p) return '-';
  return p.kind === 'apikey' ? `apikey:${p.apiKeyId}@${p.username}` : p.username;
}

function finish(deps: WrapDeps, ctx: CallContext, start: number, err?: unknown): void {
  const elapsed = performance.now() - start;
  const ms = Math.round(elapsed);
  deps.observe?.(ctx.method, err ? toStatus(err, ctx.requestId).code : grpc.status.OK, elapsed / 1000);
  const who = actorOf(ctx.principal);
  const code = isTrellisError(err) ? (err as TrellisError).code : undefined;
  // Rate-limited refusals come in floods: their log lines are counted (RefusalLog); their audit
  // records are written below like any refusal's, into the throttle that counts floods.
  if (code === 'TRELLIS_E_RATE_LIMITED' && deps.refusals) deps.refusals.note(ctx.method, ctx.peer, (err as Error).message);
  else if (!err) deps.log.info({ reqId: ctx.requestId, method: ctx.method, user: who, tenant: ctx.tenant, ms }, 'request done');
  else if (code) deps.log.warn({ reqId: ctx.requestId, method: ctx.method, user: who, peer: ctx.peer, ms, code, reason: (err as Error).message }, 'request refused');
  else deps.log.error({ reqId: ctx.requestId, method: ctx.method, user: who, ms, err }, 'request failed');
  const result: AuditEntry['result'] = !err ? 'ok' : (code && RESULT[code]) || 'error';
  if (deps.audit && (isMutation(ctx.method) || result === 'denied' || result === 'unauthenticated')) {
    deps.audit.record({
      timeMs: Date.now(), actor: who, tenant: ctx.tenant ?? '', method: ctx.method, target: (ctx.target ?? '').slice(0, 256), result,
      sourceAddress: ctx.peer, detail: [err ? (err as Error).message.slice(0, 300) : '', ctx.detail ?? ''].filter(Boolean).join('; ').slice(0, 600),
    });
  }
}

/** A context for one call: request id, peer, and an AbortSignal fired when the client cancels. */
function newContext(call: { on(ev: 'cancelled', fn: () => void): unknown; getPeer(): string }, path: string): { ctx: CallContext; ac: AbortController; start: number } {
  const ac = new AbortController();
  call.on('cancelled', () => ac.abort());
  return { ctx: { requestId: randomBytes(6).toString('hex'), method: path, peer: call.getPeer(), signal: ac.signal }, ac, start: performance.now() };
}

/**
 * What a live stream of `path` needs, re-checked when rights change (hub/live): the method's
 * table entry, membership of the call's tenant, and what the handler checked on top
 * (`ctx.rechecks`, e.g. actions:execute at the action's scope).
 */
function streamCheck(path: string, ctx: CallContext): (p: Principal) => void {
  const req = requirementFor(path);
  return (p) => {
    if (req.kind === 'admin') authorizeAdmin(p);
    else if (req.kind === 'perm') authorize(p, req.perm);
    else if (req.kind === 'perm-scoped') authorizeAnyScope(p, req.perm);
    if ((req.kind === 'perm' || req.kind === 'perm-scoped') && ctx.tenant && !p.grants.isAdmin && !p.tenants.includes(ctx.tenant)) {
      throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `${p.username} is no longer a member of tenant ${ctx.tenant}`);
    }
    for (const c of ctx.rechecks ?? []) c(p);
  };
}

export function unary<Req, Res>(deps: WrapDeps, path: string, fn: (req: Req, ctx: CallContext) => Promise<Res>): grpc.handleUnaryCall<Req, Res> {
  requirementFor(path);
  return (call, callback) => {
    const { ctx, start } = newContext(call, path);
    void (async () => {
      try {
        await authenticateCall(deps, path, call.metadata, ctx);
        maintenanceGate(deps, path, ctx);
        const res = await fn(call.request, ctx);
        finish(deps, ctx, start);
        callback(null, res);
      } catch (err) {
        finish(deps, ctx, start, err);
        callback(toStatus(err, ctx.requestId));
      }
    })();
  };
}

/**
 * `drained()` resolves once the client has read what was written (after `write` returned false),
 * or the call ended: for handlers that send a lot (snapshot downloads).
 */
export function serverStream<Req, Res>(deps: WrapDeps, path: string, fn: (req: Req, ctx: CallContext, write: (m: Res) => boolean, drained: () => Promise<void>) => Promise<void>): grpc.handleServerStreamingCall<Req, Res> {
  requirementFor(path);
  return (call) => {
    const { ctx, ac, start } = newContext(call, path);
    let ended = false;
    let unregister: (() => void) | undefined;
    const since = deps.live?.generation;
    void (async () => {
      try {
        await authenticateCall(deps, path, call.metadata, ctx);
        maintenanceGate(deps, path, ctx);
        if (ctx.principal && deps.live) {
          unregister = deps.live.add({
            principal: ctx.principal,
            check: streamCheck(path, ctx),
            cut: (err) => {
              if (ended) return;
              ended = true;
              ac.abort();
              call.emit('error', toStatus(err, ctx.requestId));
            },
          }, since);
        }
        const drained = () => new Promise<void>((resolve) => {
          if (ac.signal.aborted) { resolve(); return; }
          const done = () => { call.off('drain', done); ac.signal.removeEventListener('abort', done); resolve(); };
          call.once('drain', done);
          ac.signal.addEventListener('abort', done, { once: true });
        });
        await fn(call.request, ctx, (m) => (ac.signal.aborted ? false : call.write(m)), drained);
        finish(deps, ctx, start);
        if (!ac.signal.aborted && !ended) { ended = true; call.end(); }
      } catch (err) {
        finish(deps, ctx, start, err);
        if (!ac.signal.aborted && !ended) { ended = true; call.emit('error', toStatus(err, ctx.requestId)); }
      } finally {
        unregister?.();
      }
    })();
  };
}
