/**
 * Thin gRPC plumbing for admin-port handlers: every handler is wrapped with authentication
 * (from metadata only), authorization (from the method table), error → status mapping and one
 * log line per call with a request id. Domain code never sees a gRPC call object.
 */
import * as grpc from '@grpc/grpc-js';
import { randomBytes } from 'node:crypto';
import { requirementFor, authorize } from '../authz/index.js';
import type { Auth, Principal } from '../auth/index.js';
import { toStatus } from '../../common/grpc-errors.js';
import { TrellisError, isTrellisError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';

export interface CallContext {
  requestId: string;
  method: string;
  peer: string;
  principal?: Principal;
  signal: AbortSignal;
}

export interface WrapDeps { auth: Auth; log: Logger }

function bearerOf(md: grpc.Metadata): string | undefined {
  const v = md.get('authorization')[0];
  if (typeof v !== 'string') return undefined;
  const m = /^Bearer\s+(\S+)$/i.exec(v.trim());
  return m ? m[1] : v.trim() || undefined;
}

async function authenticateCall(deps: WrapDeps, path: string, md: grpc.Metadata): Promise<Principal | undefined> {
  const req = requirementFor(path);
  switch (req.kind) {
    case 'open':
    case 'join-token':
    case 'login':
      return undefined;
    case 'agent-cert':
      throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `${path} is served on the agent port only`);
    case 'self':
      return deps.auth.authenticate(bearerOf(md));
    case 'perm': {
      const p = await deps.auth.authenticate(bearerOf(md));
      authorize(p, req.perm);
      return p;
    }
  }
}

function logDone(deps: WrapDeps, ctx: CallContext, start: number, err?: unknown): void {
  const ms = Math.round(performance.now() - start);
  const who = ctx.principal?.username;
  if (!err) { deps.log.info({ reqId: ctx.requestId, method: ctx.method, user: who, ms }, 'request done'); return; }
  if (isTrellisError(err)) {
    deps.log.warn({ reqId: ctx.requestId, method: ctx.method, user: who, peer: ctx.peer, ms, code: (err as TrellisError).code, msg: (err as Error).message }, 'request refused');
  } else {
    deps.log.error({ reqId: ctx.requestId, method: ctx.method, user: who, ms, err }, 'request failed');
  }
}

/** A context for one call: request id, peer, and an AbortSignal fired when the client cancels. */
function newContext(call: { on(ev: 'cancelled', fn: () => void): unknown; getPeer(): string }, path: string): { ctx: CallContext; ac: AbortController; start: number } {
  const ac = new AbortController();
  call.on('cancelled', () => ac.abort());
  return { ctx: { requestId: randomBytes(6).toString('hex'), method: path, peer: call.getPeer(), signal: ac.signal }, ac, start: performance.now() };
}

export function unary<Req, Res>(deps: WrapDeps, path: string, fn: (req: Req, ctx: CallContext) => Promise<Res>): grpc.handleUnaryCall<Req, Res> {
  requirementFor(path);
  return (call, callback) => {
    const { ctx, start } = newContext(call, path);
    void (async () => {
      try {
        ctx.principal = await authenticateCall(deps, path, call.metadata);
        const res = await fn(call.request, ctx);
        logDone(deps, ctx, start);
        callback(null, res);
      } catch (err) {
        logDone(deps, ctx, start, err);
        callback(toStatus(err, ctx.requestId));
      }
    })();
  };
}

export function serverStream<Req, Res>(deps: WrapDeps, path: string, fn: (req: Req, ctx: CallContext, write: (m: Res) => boolean) => Promise<void>): grpc.handleServerStreamingCall<Req, Res> {
  requirementFor(path);
  return (call) => {
    const { ctx, ac, start } = newContext(call, path);
    void (async () => {
      try {
        ctx.principal = await authenticateCall(deps, path, call.metadata);
        await fn(call.request, ctx, (m) => (ac.signal.aborted ? false : call.write(m)));
        logDone(deps, ctx, start);
        if (!ac.signal.aborted) call.end();
      } catch (err) {
        logDone(deps, ctx, start, err);
        if (!ac.signal.aborted) call.emit('error', toStatus(err, ctx.requestId));
      }
    })();
  };
}
