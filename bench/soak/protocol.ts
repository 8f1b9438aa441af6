/**
 * What the soak orchestrator (bench/soak/main.ts) and its client processes (bench/soak/client.ts)
 * say to each other over the fork IPC channel, and the files a client writes for the checks.
 *
 * Files of client process P (in ROOT/clients/P/):
 *   agents/<agentId>/outbox/   each simulated agent's durable outbox (agent/outbox)
 *   agents/<agentId>/          its edge config (agent/edge.ts)
 *   accepted.log               one line per event an outbox accepted, written after append()
 *                              returned: `<agentId> <eventId> <kind>` (kind r: fires the hub rule,
 *                              e: fires the edge rule, x: an edge-execution report whose
 *                              execution id is the 4th field)
 *   ran.log                    one line per ActionRequest the simulated agent ran, fsynced before
 *                              its result is sent: `<agentId> <executionId> <idempotency key>`
 */
export const SOAK_RULE = 'soak-fire';
export const SOAK_EDGE_RULE = 'soak-edge';
export const SOAK_TRIGGER = 'core.soak';
export const SOAK_EDGE_TRIGGER = 'core.soak_edge';
export const SOAK_ACTION = 'soak.run';

/** Test-only faults (--inject-fault): fuzz-failure makes the fuzzer judge its first case unexpected. */
export type InjectFault = 'duplicate-execution' | 'lose-event' | 'fuzz-failure';

export interface ClientConfig {
  index: number;
  /** Incarnation of this client process (0, then +1 at each restart); part of event ids. */
  boot: number;
  target: string;
  dir: string;
  identitiesFile: string;
  /** Events per second per agent while publishing. */
  ratePerAgent: number;
  /** Of the events, the fraction that go to the edge rule. */
  edgeFraction: number;
  /** HubChannel maxBackoffMs; undefined: the real agent's default. */
  maxBackoffMs?: number;
  inject?: InjectFault;
}

/** Orchestrator → client. */
export type ToClient =
  | { t: 'publish'; on: boolean }
  | { t: 'stats' }
  | { t: 'close' };

export interface ClientStats {
  t: 'stats';
  index: number;
  agents: number;
  /** Agents whose channel is ready (welcomed by the hub). */
  ready: number;
  /** Unacknowledged events over all outboxes. */
  backlog: number;
  accepted: number;
  refused: number;
  ran: number;
  /** Edge executions still running (their report not yet in the outbox). */
  edgeRunning: number;
  closed: number;
  rssMb: number;
}

/** Client → orchestrator. */
export type FromClient = ClientStats | { t: 'started'; index: number; agents: number; openMs: number } | { t: 'error'; index: number; message: string } | { t: 'closed'; index: number };
