/**
 * Malformed protobuf is bad input, not an internal error. grpc-js answers a request body its
 * deserializer cannot decode with INTERNAL ("Error deserializing request"), which callers (and
 * the CLI: TRELLIS_E_INTERNAL, "see the hub log") read as a hub bug. The hub's servers are
 * `GuardedServer`s: every method's request deserializer is wrapped so a decode failure yields a
 * `MalformedRequest` marker instead of throwing, and an interceptor (outermost, after the
 * pre-auth gate, so its slot is released through it) answers a unary or server-streaming call
 * with INVALID_ARGUMENT (TRELLIS_E_INVALID_ARGUMENT) before any handler runs. On a client or bidi
 * stream the marker reaches the handler, which owns the stream's state and must end it
 * (AgentChannel.Connect refuses it like any invalid frame: `isMalformed`).
 */
import * as grpc from '@grpc/grpc-js';
import { TrellisError } from '../../common/errors.js';
import { toStatus } from '../../common/grpc-errors.js';

export class MalformedRequest {
  constructor(readonly reason: string) {}
}

export function isMalformed(msg: unknown): msg is MalformedRequest {
  return msg instanceof MalformedRequest;
}

/** The error a handler throws for a malformed message (no input echoed: only its size). */
export function malformedError(what: string, m: MalformedRequest): TrellisError {
  return new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `malformed ${what}: not a valid protobuf message (${m.reason})`);
}

function reasonOf(bytes: Buffer | undefined, err: unknown): string {
  // protobufjs messages name offsets and wire types, never the bytes themselves.
  const msg = String((err as Error)?.message ?? err).replace(/[^\x20-\x7e]/g, '?').slice(0, 120);
  return `${bytes?.length ?? 0} bytes: ${msg}`;
}

/** A service definition whose request deserializers never throw. */
export function guardDefinition<T extends grpc.ServiceDefinition>(def: T): T {
  const out: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const [name, m] of Object.entries(def as grpc.ServiceDefinition)) {
    const decode = m.requestDeserialize;
    out[name] = {
      ...m,
      requestDeserialize: (bytes: Buffer) => {
        try { return decode(bytes); } catch (err) { return new MalformedRequest(reasonOf(bytes, err)); }
      },
    };
  }
  return out as T;
}

const requestName = (path: string) => path.slice(path.lastIndexOf('/') + 1);

/** Answers a malformed unary / server-streaming request with INVALID_ARGUMENT. */
export const malformedInterceptor: grpc.ServerInterceptor = (method, call) => new grpc.ServerInterceptingCall(call, {
  start: (next) => {
    next({
      onReceiveMessage: (msg, nextMsg) => {
        if (isMalformed(msg) && !method.requestStream) {
          call.sendStatus(toStatus(malformedError(`${requestName(method.path)} request`, msg), '-'));
          return;
        }
        nextMsg(msg);
      },
    });
  },
});

/** A grpc.Server whose services decode defensively, with the malformed-request interceptor outermost. */
export class GuardedServer extends grpc.Server {
  /** Every service added, as served (guarded definition and handlers): the web console's API bridge calls them (hub/web/console). */
  readonly served: Array<{ definition: grpc.ServiceDefinition; implementation: grpc.UntypedServiceImplementation }> = [];

  constructor(options: grpc.ServerOptions = {}) {
    super({ ...options, interceptors: [...(options.interceptors ?? []), malformedInterceptor] });
  }

  override addService(service: grpc.ServiceDefinition, implementation: grpc.UntypedServiceImplementation): void {
    const definition = guardDefinition(service);
    super.addService(definition, implementation);
    this.served.push({ definition, implementation });
  }
}
