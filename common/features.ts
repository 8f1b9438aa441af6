/**
 * What a hub understands beyond the first agent protocol, listed in its Welcome (`features`).
 * An agent uses a feature only with a hub that listed it: older hubs list none, and an agent
 * that meets one (a downgrade, a cluster mid-upgrade) speaks the first protocol to it.
 */

/** An ActionResult may carry the execution's last output chunks (ActionResult.output). */
export const RESULT_OUTPUT = 'result_output';

export const HUB_FEATURES: readonly string[] = [RESULT_OUTPUT];

/** At most this many bytes of output ride with a result; more goes in output messages of its own. */
export const RESULT_OUTPUT_MAX_BYTES = 4096;
/** At most this many output chunks ride with a result (the hub takes no more than that). */
export const RESULT_OUTPUT_MAX_CHUNKS = 32;
