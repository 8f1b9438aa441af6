import type { HubConfig } from './config.js';
import type { Logger } from '../common/log.js';
import type { Store } from './store/index.js';
import type { HubPki } from './pki/index.js';
import type { Auth } from './auth/index.js';
import type { Iam } from './iam/index.js';
import type { AuditLog } from './audit/index.js';
import type { JoinTokens } from './tokens/index.js';
import type { AgentRegistry } from './agents/index.js';
import type { Runs } from './runs/index.js';
import type { EventIntake } from './events/index.js';
import type { KvStore } from './kv/index.js';

/** Everything the gRPC layer may call, built once in hub/hub.ts. */
export interface HubComponents {
  config: HubConfig;
  log: Logger;
  store: Store;
  pki: HubPki;
  iam: Iam;
  auth: Auth;
  /** The audit log: wrap.ts records into it, AdminAudit reads and follows it. */
  audit: AuditLog;
  tokens: JoinTokens;
  agents: AgentRegistry;
  runs: Runs;
  events: EventIntake;
  /** The datastore and secrets (hub/kv) with the master key ring. */
  kv: KvStore;
  /** The bound agent port (known once listening). */
  agentPort: () => number;
}
