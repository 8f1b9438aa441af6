/**
 * The fuzzer's oracle: which status a call may end with, and whether the hub is still alive.
 *
 * Allowed: the statuses the hub deliberately returns for bad input (INVALID_ARGUMENT, NOT_FOUND,
 * ALREADY_EXISTS, PERMISSION_DENIED, UNAUTHENTICATED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION,
 * ABORTED, OUT_OF_RANGE) and OK, except where OK would be a security failure (a call without
 * credentials, or by a user with no roles, that needs a permission). Unexpected:
 *  - INTERNAL / UNKNOWN / DATA_LOSS: an unhandled exception (or grpc-js failing to decode);
 *  - DEADLINE_EXCEEDED from the client's deadline (the hub hung), and UNAVAILABLE from the
 *    transport (the connection dropped), unless the hub itself sent them (trellis-error-code);
 *  - UNIMPLEMENTED for a method of the contract, unless the hub says TRELLIS_E_UNIMPLEMENTED;
 *  - CANCELLED that the fuzzer did not ask for.
 */
import { status } from '@grpc/grpc-js';
import { METHOD_TABLE, type Requirement } from '../../hub/authz/index.js';

export type Principal = 'admin' | 'low' | 'anon' | 'agent';

export interface Outcome {
  code: number;
  details: string;
  /** trailing metadata trellis-error-code: the hub answered deliberately. */
  trellisCode?: string;
  /** The fuzzer cancelled the call itself (streams it stops reading). */
  cancelledByUs?: boolean;
}

export type Verdict = { ok: true } | { ok: false; reason: string };

const ALLOWED = new Set<number>([
  status.INVALID_ARGUMENT, status.NOT_FOUND, status.ALREADY_EXISTS, status.PERMISSION_DENIED, status.UNAUTHENTICATED,
  status.RESOURCE_EXHAUSTED, status.FAILED_PRECONDITION, status.ABORTED, status.OUT_OF_RANGE,
]);

/** What a successful call of `path` needs; undefined for paths outside the contract. */
export function requirementOf(path: string): Requirement | undefined {
  return METHOD_TABLE[path];
}

export function statusName(code: number): string {
  return (status as unknown as Record<number, string>)[code] ?? String(code);
}

/** Whether a call of `path` by `principal` may end with `o`. */
export function classify(path: string, known: boolean, principal: Principal, o: Outcome): Verdict {
  const name = statusName(o.code);
  const bad = (why: string): Verdict => ({ ok: false, reason: `${name}: ${why} (${o.details.slice(0, 200)})` });
  switch (o.code) {
    case status.OK: {
      const req = requirementOf(path);
      if (!known || !req) return bad('a method outside the contract succeeded');
      const noCredsNeeded = req.kind === 'open' || req.kind === 'login' || req.kind === 'join-token';
      if (principal === 'anon' && !noCredsNeeded && req.kind !== 'agent-cert') return bad(`succeeded without credentials (needs ${req.kind})`);
      if (principal === 'low' && (req.kind === 'admin' || req.kind === 'perm' || req.kind === 'perm-scoped')) {
        return bad(`succeeded for a user with no roles (needs ${req.kind === 'admin' ? 'admin' : req.perm})`);
      }
      return { ok: true };
    }
    case status.INTERNAL: case status.UNKNOWN: case status.DATA_LOSS:
      return bad('unhandled error in the hub');
    case status.DEADLINE_EXCEEDED:
      return o.trellisCode ? { ok: true } : bad('no answer before the deadline (hang)');
    case status.UNAVAILABLE:
      return o.trellisCode ? { ok: true } : bad('transport failure (connection dropped)');
    case status.UNIMPLEMENTED:
      return !known || o.trellisCode === 'TRELLIS_E_UNIMPLEMENTED' ? { ok: true } : bad('a method of the contract is not served');
    case status.CANCELLED:
      return o.cancelledByUs ? { ok: true } : bad('cancelled by the hub');
    default:
      if (!known) return bad('a method outside the contract was not refused with UNIMPLEMENTED');
      return ALLOWED.has(o.code) ? { ok: true } : bad('status outside the allowed set');
  }
}

export interface HubHealth {
  alive: boolean;
  /** Why not: "hub process exited (code 1 / signal SIGKILL)", "Version did not answer in 15 s", ... */
  reason?: string;
}

/**
 * The liveness verdict after a batch: the process is running, Version answers and an
 * authenticated call answers, each within its deadline. `processExit` is undefined while the
 * process runs; the probes resolve to an error text or undefined.
 */
export function judgeHealth(o: { processExit?: string; version?: string; authed?: string }): HubHealth {
  if (o.processExit !== undefined) return { alive: false, reason: `hub process exited (${o.processExit})` };
  if (o.version) return { alive: false, reason: `Version failed: ${o.version}` };
  if (o.authed) return { alive: false, reason: `an authenticated call failed: ${o.authed}` };
  return { alive: true };
}
