/**
 * What a hub understands beyond the first agent protocol, listed in its Welcome (`features`).
 * An agent uses a feature only with a hub that listed it: older hubs list none, and an agent
 * that meets one (a downgrade, a cluster mid-upgrade) speaks the first protocol to it.
 */

/** An ActionResult may carry the execution's last output chunks (ActionResult.output). */
export const RESULT_OUTPUT = 'result_output';

/**
 * Both ways: an agent lists it in its Hello, a hub in its Welcome; when both do, an EventAck
 * acknowledges every batch of the stream up to and including its seq. The hub then acknowledges
 * several batches with one message (EVENT_ACK_BATCHES settled batches, or EVENT_ACK_DELAY_MS
 * after the first one) instead of one message per batch: at 1,000 one-event batches/s that is
 * most of the messages hub → agent and their handling on both sides.
 */
export const EVENT_ACK_THROUGH = 'event_ack_through';
/** A hub using EVENT_ACK_THROUGH acknowledges at the latest this long after a batch settled... */
export const EVENT_ACK_DELAY_MS = 5;
/** ...or at once when this many settled batches wait (half an agent's default window of 16 batches in flight). */
export const EVENT_ACK_BATCHES = 8;

export const HUB_FEATURES: readonly string[] = [RESULT_OUTPUT, EVENT_ACK_THROUGH];

/** What an agent (agent/channel.ts) lists in its Hello. */
export const AGENT_FEATURES: readonly string[] = [EVENT_ACK_THROUGH];

/** At most this many bytes of output ride with a result; more goes in output messages of its own. */
export const RESULT_OUTPUT_MAX_BYTES = 4096;
/** At most this many output chunks ride with a result (the hub takes no more than that). */
export const RESULT_OUTPUT_MAX_CHUNKS = 32;
