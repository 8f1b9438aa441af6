import { status } from '@grpc/grpc-js';

export interface BackoffOptions {
  /** @default 500 */
  initialMs?: number;
  /** @default 10000 */
  maxMs?: number;
  /** @default 2 */
  factor?: number;
  /**
   * `full`: uniform in [0, step] (reconnects: spreads a fleet evenly); `equal`: uniform in
   * [step/2, step] (a local retry loop that must not come back too early). @default "full"
   */
  jitter?: 'full' | 'equal';
  /** A source of uniform numbers in [0, 1) (tests inject one). @default Math.random */
  random?: () => number;
}

/**
 * The reconnect cap of an agent. While the hub is down an attempt costs a refused TCP connection;
 * once it is up, the hub accepts every connection and queues the TLS handshakes it cannot do yet
 * (agentChannel.maxHandshakes), so agents need not stay away long: a restarted hub sees its whole
 * fleet within about this, spread by full jitter. (It was 30 s; a 1,000-agent storm then took
 * ~40 s to settle, the tail being agents asleep at the cap.)
 */
export const DEFAULT_MAX_BACKOFF_MS = 10_000;

/**
 * Delay before reconnect attempt `attempt` (0-based): capped exponential with full jitter, a
 * uniform pick in [0, min(maxMs, initialMs * factor^attempt)]. Full jitter (not "half the step
 * plus jitter") spreads a fleet that lost the hub at the same moment evenly over the window,
 * so a restarted hub sees a flat arrival rate instead of waves.
 */
export function backoffDelay(attempt: number, opts: BackoffOptions = {}): number {
  const initial = opts.initialMs ?? 500;
  const max = opts.maxMs ?? DEFAULT_MAX_BACKOFF_MS;
  const factor = opts.factor ?? 2;
  const random = opts.random ?? Math.random;
  const step = Math.min(max, initial * factor ** Math.min(Math.max(0, attempt), 30));
  if (opts.jitter === 'equal') return Math.round(step / 2 + random() * (step / 2));
  return Math.floor(random() * (step + 1));
}

/** Trailer (metadata) key of a shed stream: how long the hub asks the client to stay away, in ms. */
export const RETRY_AFTER_KEY = 'retry-after-ms';

/** Longest retry-after a client honors from the hub (a bad value must not park an agent for hours). */
export const MAX_RETRY_AFTER_MS = 5 * 60_000;

/** The hub's retry-after-ms on a refused stream, if any (clamped to [0, MAX_RETRY_AFTER_MS]). */
export function retryAfterMs(err: unknown): number | undefined {
  const md = (err as { metadata?: { get(k: string): unknown[] } } | undefined)?.metadata;
  const raw = md?.get?.(RETRY_AFTER_KEY)?.[0];
  if (raw === undefined) return undefined;
  const n = Number(String(raw));
  if (!Number.isFinite(n) || n < 0) return undefined;
  return Math.min(Math.round(n), MAX_RETRY_AFTER_MS);
}

/**
 * The wait after the hub said "retry after `ms`": at least that, plus up to as much again at
 * random, so the agents it shed together do not come back together.
 */
export function retryAfterDelay(ms: number, random: () => number = Math.random): number {
  return ms + Math.floor(random() * (ms + 1));
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
