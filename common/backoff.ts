import { status } from '@grpc/grpc-js';

export interface BackoffOptions {
  /** @default 500 */
  initialMs?: number;
  /** @default 30000 */
  maxMs?: number;
  /** @default 2 */
  factor?: number;
}

/**
 * Delay before reconnect attempt `attempt` (0-based): capped exponential with full jitter
 * between half and all of the step, so a hub restart does not see every agent at once.
 */
export function backoffDelay(attempt: number, opts: BackoffOptions = {}): number {
  const initial = opts.initialMs ?? 500;
  const max = opts.maxMs ?? 30_000;
  const factor = opts.factor ?? 2;
  const step = Math.min(max, initial * factor ** Math.min(attempt, 30));
  return Math.round(step / 2 + Math.random() * (step / 2));
}

/**
 * gRPC codes after which the agent reconnects. Each is safe because the stream carries no
 * half-applied state: events are re-sent until acknowledged and the hub de-duplicates them.
 */
export const RETRYABLE_CODES: ReadonlySet<number> = new Set([
  status.UNAVAILABLE, // hub down, restarting or unreachable
  status.DEADLINE_EXCEEDED, // a slow hub or network; the next attempt gets a fresh deadline
  status.CANCELLED, // the stream was torn down (hub shutdown, certificate swap)
  status.INTERNAL, // transport-level resets surface as INTERNAL in grpc-js
  status.UNKNOWN, // a connection lost mid-handshake
  status.RESOURCE_EXHAUSTED, // hub shedding load: back off and try again
  status.ABORTED, // the hub replaced this stream with a newer one
]);
