/**
 * Which event types an agent may publish (issue 10, finding 4). Trust comes from the hub's
 * decisions, not from what a host says: an agent may publish
 *  - `core.*` (the built-in sensors' namespace),
 *  - `trellis.execution` (reports of its own edge-rule runs, checked again by hub/executions/edge.ts),
 *  - the trigger types of the sensors the hub configured on it (hub/agentconfig).
 * `webhook.*` comes only from the web port, and no other `trellis.*` type from anywhere but the
 * hub itself, even if a pack sensor claims such a trigger. Everything else is refused.
 */
import { EDGE_EXECUTION_TRIGGER } from '../../common/automation/types.js';

/** Namespaces only the hub itself publishes into (web port, hub internals). */
const HUB_ONLY_PREFIXES = ['webhook.', 'trellis.'];

/** Pure decision: may an agent configured with these sensor triggers publish `type`? */
export function agentMayPublish(type: string, sensorTriggers: ReadonlySet<string>): boolean {
  if (type === EDGE_EXECUTION_TRIGGER) return true;
  if (HUB_ONLY_PREFIXES.some((p) => type.startsWith(p))) return false;
  if (type.startsWith('core.')) return true;
  return sensorTriggers.has(type);
}
