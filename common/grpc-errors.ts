/**
 * The one place where domain errors become gRPC status and back. Remote callers get the
 * stable code in trailing metadata (`trellis-error-code`) and an actionable message; never a
 * stack or a path. Anything that is not a TrellisError is INTERNAL with a request id.
 */
import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { ERROR_CODES, TrellisError, type ErrorCode } from './errors.js';

const TO_STATUS: Record<ErrorCode, status> = {
  TRELLIS_E_INTERNAL: status.INTERNAL,
  TRELLIS_E_INVALID_ARGUMENT: status.INVALID_ARGUMENT,
  TRELLIS_E_CONFIG: status.FAILED_PRECONDITION,
  TRELLIS_E_NOT_FOUND: status.NOT_FOUND,
  TRELLIS_E_ALREADY_EXISTS: status.ALREADY_EXISTS,
  TRELLIS_E_UNAUTHENTICATED: status.UNAUTHENTICATED,
  TRELLIS_E_PERMISSION_DENIED: status.PERMISSION_DENIED,
  TRELLIS_E_TOKEN_INVALID: status.UNAUTHENTICATED,
  TRELLIS_E_TOKEN_EXPIRED: status.UNAUTHENTICATED,
  TRELLIS_E_TOKEN_USED_UP: status.UNAUTHENTICATED,
  TRELLIS_E_CA_PIN_MISMATCH: status.FAILED_PRECONDITION,
  TRELLIS_E_CSR_INVALID: status.INVALID_ARGUMENT,
  TRELLIS_E_CERT_INVALID: status.INVALID_ARGUMENT,
  TRELLIS_E_CERT_REVOKED: status.PERMISSION_DENIED,
  TRELLIS_E_CERT_EXPIRED: status.UNAUTHENTICATED,
  TRELLIS_E_CA_NO_KEY: status.FAILED_PRECONDITION,
  TRELLIS_E_ALREADY_ENROLLED: status.FAILED_PRECONDITION,
  TRELLIS_E_AGENT_OFFLINE: status.FAILED_PRECONDITION,
  TRELLIS_E_UNAVAILABLE: status.UNAVAILABLE,
  TRELLIS_E_DNS: status.UNAVAILABLE,
  TRELLIS_E_WRONG_PORT: status.FAILED_PRECONDITION,
  TRELLIS_E_CA_MISMATCH: status.FAILED_PRECONDITION,
  TRELLIS_E_CERT_NAME: status.FAILED_PRECONDITION,
  TRELLIS_E_TOO_LARGE: status.RESOURCE_EXHAUSTED,
  TRELLIS_E_TIMEOUT: status.DEADLINE_EXCEEDED,
  TRELLIS_E_SHUTDOWN: status.UNAVAILABLE,
  TRELLIS_E_PACK_INVALID: status.INVALID_ARGUMENT,
  TRELLIS_E_RULE_INVALID: status.INVALID_ARGUMENT,
  TRELLIS_E_SECRET_INVALID: status.FAILED_PRECONDITION,
  TRELLIS_E_AGENT_BUSY: status.RESOURCE_EXHAUSTED,
  TRELLIS_E_RATE_LIMITED: status.RESOURCE_EXHAUSTED,
  TRELLIS_E_CA_ROTATED: status.FAILED_PRECONDITION,
  TRELLIS_E_ROTATION: status.FAILED_PRECONDITION,
  TRELLIS_E_IN_USE: status.FAILED_PRECONDITION,
  TRELLIS_E_UNIMPLEMENTED: status.UNIMPLEMENTED,
  TRELLIS_E_SSH: status.UNAVAILABLE,
  TRELLIS_E_SSH_HOST_KEY: status.FAILED_PRECONDITION,
  TRELLIS_E_HOST_NOT_READY: status.FAILED_PRECONDITION,
  TRELLIS_E_SNAPSHOT_INVALID: status.INVALID_ARGUMENT,
  TRELLIS_E_LOCKED: status.FAILED_PRECONDITION,
  TRELLIS_E_MAINTENANCE: status.UNAVAILABLE,
};

export const CODE_KEY = 'trellis-error-code';

/**
 * Longest status message sent, in characters. A message may quote the request (a name that does
 * not exist); an unbounded one went out whole in the grpc-message trailer, and past the peer's
 * HTTP/2 header-list limit (64 KiB, less for non-ASCII after percent-encoding) the client never got
 * a status and dropped the connection, failing every other call on it (found by the fuzzer).
 */
export const MAX_STATUS_DETAILS = 4096;

function capDetails(s: string): string {
  if (s.length <= MAX_STATUS_DETAILS) return s;
  let cut = MAX_STATUS_DETAILS - 100;
  const c = s.charCodeAt(cut - 1);
  if (c >= 0xd800 && c <= 0xdbff) cut--; // never split a surrogate pair
  return `${s.slice(0, cut)}… (${s.length - cut} more characters cut; the hub log has the whole message)`;
}

export interface StatusObject { code: status; details: string; metadata: Metadata }

/** Domain error → status object for a server to send. */
export function toStatus(err: unknown, requestId: string): StatusObject {
  const metadata = new Metadata();
  if (err instanceof TrellisError) {
    metadata.set(CODE_KEY, err.code);
    return { code: TO_STATUS[err.code], details: capDetails(err.message), metadata };
  }
  metadata.set(CODE_KEY, 'TRELLIS_E_INTERNAL');
  return { code: status.INTERNAL, details: `internal error (request ${requestId}); the hub log has the details`, metadata };
}

const FROM_STATUS: Partial<Record<status, ErrorCode>> = {
  [status.INVALID_ARGUMENT]: 'TRELLIS_E_INVALID_ARGUMENT',
  [status.NOT_FOUND]: 'TRELLIS_E_NOT_FOUND',
  [status.ALREADY_EXISTS]: 'TRELLIS_E_ALREADY_EXISTS',
  [status.UNAUTHENTICATED]: 'TRELLIS_E_UNAUTHENTICATED',
  [status.PERMISSION_DENIED]: 'TRELLIS_E_PERMISSION_DENIED',
  [status.UNAVAILABLE]: 'TRELLIS_E_UNAVAILABLE',
  [status.DEADLINE_EXCEEDED]: 'TRELLIS_E_TIMEOUT',
  [status.RESOURCE_EXHAUSTED]: 'TRELLIS_E_TOO_LARGE',
  [status.UNIMPLEMENTED]: 'TRELLIS_E_UNIMPLEMENTED',
};

/** gRPC failure → typed error: the code from trailing metadata first, then the status code. */
/** TLS verification failures of the server certificate (Node/OpenSSL wording), seen by a client as UNAVAILABLE. */
const TLS_REFUSED = /ERR_TLS_CERT_ALTNAME_INVALID|Hostname\/IP does not match|unsuitable certificate purpose|unsupported certificate purpose|self[- ]signed certificate|unable to verify the first certificate|unable to get (local )?issuer certificate|certificate has expired|certificate is not yet valid|certificate revoked/i;

export function fromGrpcError(err: unknown): TrellisError {
  const se = err as Partial<ServiceError>;
  if (err instanceof TrellisError) return err;
  if (typeof se?.code !== 'number') return new TrellisError('TRELLIS_E_INTERNAL', String((err as Error)?.message ?? err), { cause: err });
  const fromMeta = se.metadata?.get(CODE_KEY)?.[0];
  const code: ErrorCode = typeof fromMeta === 'string' && Object.hasOwn(ERROR_CODES, fromMeta)
    ? (fromMeta as ErrorCode)
    : FROM_STATUS[se.code as status] ?? 'TRELLIS_E_INTERNAL';
  let message = se.details || se.message || 'request failed';
  // Transport failures carry grpc-js/OpenSSL text: a plain message here, the raw text stays in `cause` (--debug).
  if (se.code === status.UNAVAILABLE && typeof fromMeta !== 'string') {
    message = TLS_REFUSED.test(message)
      ? 'the hub\'s certificate was refused, nothing was sent: it must chain to the trusted hub CA, be a server certificate and name the address dialed (see `trellis certs show` for its names)'
      : 'cannot reach the hub: the connection failed (run with --debug for the transport error)';
  } else if (se.code === status.DEADLINE_EXCEEDED && typeof fromMeta !== 'string') {
    message = 'the hub did not answer in time';
  }
  const e = new TrellisError(code, message, { cause: err });
  (e as TrellisError & { grpcCode?: number }).grpcCode = se.code;
  return e;
}

/** A transport failure (no connection, TLS refused, no answer in time), as opposed to an error the server returned. */
export function isTransportFailure(err: unknown): boolean {
  const se = err as Partial<ServiceError>;
  if (typeof se?.code !== 'number' || typeof se.metadata?.get(CODE_KEY)?.[0] === 'string') return false;
  return se.code === status.UNAVAILABLE || se.code === status.DEADLINE_EXCEEDED;
}

export function grpcCodeOf(err: unknown): number | undefined {
  for (let e: unknown = err, i = 0; e && i < 10; e = (e as { cause?: unknown }).cause, i++) {
    const c = (e as { grpcCode?: number; code?: unknown }).grpcCode ?? (e as { code?: unknown }).code;
    if (typeof c === 'number') return c;
  }
  return undefined;
}
