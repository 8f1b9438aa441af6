/**
 * The console's API bridge: `POST /console/api/<Service>/<Method>` with a JSON body calls the
 * very handler the admin gRPC port serves for `/trellis.v1.<Service>/<Method>`, through the same
 * wrapper (hub/grpc/wrap.ts): authentication from the credential, the METHOD_TABLE check, the
 * tenant check, maintenance mode, the audit record and the log line. Nothing is re-implemented
 * here, so a console user can do exactly what the CLI lets them do and no more.
 *
 * The JSON body goes through the method's protobuf encoder and the served decoder, so the handler
 * gets exactly what a gRPC client's message would decode to (unknown fields dropped, defaults
 * filled); the answer goes through the response encoder and decoder the same way (bytes fields
 * as base64). A server-streaming method answers `{ "messages": [...] }` once the handler ends
 * (the console calls them without `follow`; live output comes over /stream); its messages are
 * capped (MAX_STREAM_MESSAGES, MAX_STREAM_BYTES: the answer says `truncated`) and the call cancelled
 * past the cap. Client- and bidi-streaming methods are not bridged.
 */
import * as grpc from '@grpc/grpc-js';
import { toStatus, CODE_KEY } from '../../../common/grpc-errors.js';
import { TrellisError } from '../../../common/errors.js';
import { TENANT_HEADER } from '../../grpc/wrap.js';
import { isMalformed } from '../../grpc/malformed.js';

const PACKAGE = 'trellis.v1';
/** Messages of one server-streaming answer; past it the call is cancelled and the answer says `truncated`. */
export const MAX_STREAM_MESSAGES = 2_000;
/** JSON bytes of one server-streaming answer (snapshot downloads are not for the console); past it, the same. */
export const MAX_STREAM_BYTES = 8 * 1024 * 1024;

export interface ServedService {
  definition: grpc.ServiceDefinition;
  implementation: grpc.UntypedServiceImplementation;
}

interface Method {
  path: string;
  def: grpc.MethodDefinition<unknown, unknown>;
  handler: (...args: unknown[]) => void;
}

/** What one bridged call needs: the caller's credential, the tenant asked, the source address. */
export interface BridgeCall {
  credential?: string;
  tenant?: string;
  peer: string;
  /** Fires when the HTTP client goes away: cancels the call like a gRPC client's cancellation. */
  signal: AbortSignal;
}

export interface BridgeResult {
  /** HTTP status. */
  status: number;
  body: unknown;
}

/** gRPC status → HTTP status, for the console's fetch calls. */
const HTTP_OF: Partial<Record<grpc.status, number>> = {
  [grpc.status.INVALID_ARGUMENT]: 400,
  [grpc.status.UNAUTHENTICATED]: 401,
  [grpc.status.PERMISSION_DENIED]: 403,
  [grpc.status.NOT_FOUND]: 404,
  [grpc.status.ALREADY_EXISTS]: 409,
  [grpc.status.FAILED_PRECONDITION]: 409,
  [grpc.status.ABORTED]: 409,
  [grpc.status.OUT_OF_RANGE]: 400,
  [grpc.status.RESOURCE_EXHAUSTED]: 429,
  [grpc.status.UNIMPLEMENTED]: 501,
  [grpc.status.UNAVAILABLE]: 503,
  [grpc.status.DEADLINE_EXCEEDED]: 504,
  [grpc.status.CANCELLED]: 499,
};

export function httpStatusOf(code: grpc.status): number {
  return HTTP_OF[code] ?? 500;
}

/** Buffers (protobuf bytes fields) as base64 strings, recursively; everything else as is. */
function jsonable(v: unknown): unknown {
  if (Buffer.isBuffer(v) || v instanceof Uint8Array) return Buffer.from(v).toString('base64');
  if (Array.isArray(v)) return v.map(jsonable);
  if (v && typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = jsonable(x);
    return out;
  }
  return v;
}

function errorBody(err: grpc.ServiceError | grpc.StatusObject): BridgeResult {
  const code = err.metadata?.get(CODE_KEY)[0];
  return { status: httpStatusOf(err.code), body: { error: err.details, code: typeof code === 'string' ? code : 'TRELLIS_E_INTERNAL' } };
}

function invalid(message: string): BridgeResult {
  return { status: 400, body: { error: message, code: 'TRELLIS_E_INVALID_ARGUMENT' } };
}

export class ApiBridge {
  private readonly methods = new Map<string, Method>();

  /** `served`: the admin server's services (GuardedServer.served), read when a call comes. */
  constructor(private readonly served: readonly ServedService[]) {}

  private method(name: string): Method | undefined {
    if (this.methods.size === 0) {
      for (const s of this.served) {
        for (const [key, def] of Object.entries(s.definition)) {
          const handler = s.implementation[key] ?? s.implementation[def.originalName ?? ''];
          if (typeof handler === 'function') this.methods.set(def.path, { path: def.path, def, handler: handler as Method['handler'] });
        }
      }
    }
    return this.methods.get(name);
  }

  /** Paths that may be called: every unary and server-streaming admin method. */
  has(service: string, method: string): boolean {
    const m = this.method(`/${PACKAGE}.${service}/${method}`);
    return !!m && !m.def.requestStream;
  }

  /** Calls `/trellis.v1.<service>/<method>` with `body` (parsed JSON). */
  async call(service: string, method: string, body: unknown, c: BridgeCall): Promise<BridgeResult> {
    const path = `/${PACKAGE}.${service}/${method}`;
    const m = this.method(path);
    if (!m || m.def.requestStream) return { status: 404, body: { error: `no such API method ${service}/${method}`.slice(0, 200), code: 'TRELLIS_E_NOT_FOUND' } };
    if (!body || typeof body !== 'object' || Array.isArray(body)) return invalid('the request body is a JSON object (the method\'s request message)');
    let request: unknown;
    try {
      request = m.def.requestDeserialize(m.def.requestSerialize(body));
    } catch (err) {
      return invalid(`bad ${method} request: ${String((err as Error).message).replace(/[^\x20-\x7e]/g, '?').slice(0, 200)}`);
    }
    if (isMalformed(request)) return invalid(`bad ${method} request: ${request.reason}`);
    const metadata = new grpc.Metadata();
    if (c.credential) metadata.set('authorization', `Bearer ${c.credential}`);
    if (c.tenant) metadata.set(TENANT_HEADER, c.tenant);
    const cancelled: Array<() => void> = [];
    const onAbort = () => { for (const fn of cancelled) fn(); };
    c.signal.addEventListener('abort', onAbort, { once: true });
    const base = {
      request, metadata, cancelled: false,
      getPeer: () => c.peer,
      on(ev: string, fn: () => void) { if (ev === 'cancelled') cancelled.push(fn); return this; },
      once(ev: string, fn: () => void) { return this.on(ev, fn); },
      off() { return this; },
      getDeadline: () => Infinity,
      getPath: () => path,
    };
    const decode = (res: unknown) => jsonable(m.def.responseDeserialize(m.def.responseSerialize(res)));
    try {
      if (!m.def.responseStream) {
        return await new Promise<BridgeResult>((resolve) => {
          m.handler(base, (err: grpc.ServiceError | null, res: unknown) => {
            if (err) { resolve(errorBody(err)); return; }
            try { resolve({ status: 200, body: decode(res) }); } catch (e) { resolve(errorBody(toStatus(e, '-') as grpc.StatusObject)); }
          });
        });
      }
      return await new Promise<BridgeResult>((resolve) => {
        const messages: unknown[] = [];
        let truncated = false;
        let done = false;
        let bytes = 0;
        const finish = (r: BridgeResult) => { if (!done) { done = true; resolve(r); } };
        const stream = Object.assign(base, {
          write(msg: unknown): boolean {
            if (done || truncated) return false;
            const m = decode(msg);
            bytes += JSON.stringify(m).length;
            if (messages.length >= MAX_STREAM_MESSAGES || bytes > MAX_STREAM_BYTES) {
              truncated = true;
              onAbort(); // cancels the handler, like a client that stops reading
              finish({ status: 200, body: { messages, truncated: true } });
              return false;
            }
            messages.push(m);
            return true;
          },
          end() { finish({ status: 200, body: { messages, truncated } }); },
          emit(ev: string, err: grpc.ServiceError) {
            if (ev === 'error') finish(truncated ? { status: 200, body: { messages, truncated } } : errorBody(err));
            return true;
          },
        });
        m.handler(stream);
      });
    } catch (err) {
      const st = toStatus(err instanceof TrellisError ? err : new TrellisError('TRELLIS_E_INTERNAL', 'the console API call failed'), '-');
      return errorBody(st as grpc.StatusObject);
    } finally {
      c.signal.removeEventListener('abort', onAbort);
    }
  }
}
