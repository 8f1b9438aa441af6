import type { HubConfig } from './config.js';
import type { Logger } from '../common/log.js';
import type { Store } from './store/index.js';
import type { HubPki } from './pki/index.js';
import type { Auth } from './auth/index.js';
import type { Iam } from './iam/index.js';
import type { AuditBackend } from './audit/index.js';
import type { JoinTokens } from './tokens/index.js';
import type { AgentRegistry } from './agents/index.js';
import type { Executions } from './executions/index.js';
import type { EventIntake } from './events/index.js';
import type { KvStore } from './kv/index.js';
import type { Webhooks } from './webhooks/index.js';
import type { Packs } from './packs/index.js';
import type { RulesEngine } from './rules/index.js';
import type { AgentConfigs } from './agentconfig/index.js';
import type { RenewLimiter } from './agents/renewal.js';
import type { RefusalThrottle } from './audit/throttle.js';
import type { CaRotation } from './pki/rotation.js';

/** Everything the gRPC layer may call, built once in hub/hub.ts. */
export interface HubComponents {
  config: HubConfig;
  log: Logger;
  store: Store;
  pki: HubPki;
  iam: Iam;
  auth: Auth;
  /** The audit log: wrap.ts records into it, AdminAudit reads and follows it. */
  audit: AuditBackend;
  tokens: JoinTokens;
  agents: AgentRegistry;
  /** Every action run (pack actions, rules, ad-hoc commands) with its lifecycle and history (hub/executions). */
  executions: Executions;
  events: EventIntake;
  /** The datastore and secrets (hub/kv) with the master key ring. */
  kv: KvStore;
  /** Installed packs (hub/packs): actions, sensors and rules per tenant, cached in memory. */
  packs: Packs;
  /** The rules engine (hub/rules): hub rules matched on the event path, edge rules for agents. */
  rules: RulesEngine;
  /** Per-agent sensors, edge rules and sealed values, pushed on the agent stream (hub/agentconfig). */
  agentConfigs: AgentConfigs;
  /** Certificate renewals per agent per window (hub/agents/renewal.ts). */
  renewLimiter: RenewLimiter;
  /** The audit log as every port records into it: refusals of unidentified callers and agents (rate-limit refusals among them) throttled, the one throttle of refusal records (hub/audit/throttle.ts). */
  refusalAudit: RefusalThrottle;
  /** CA rotation in phases (hub/pki/rotation.ts): trust bundle, renewal orders, commit and rollback. */
  rotation: CaRotation;
  /** The bound agent port (known once listening). */
  agentPort: () => number;
  /** Webhooks (hub/webhooks): secrets under the master key, signature checks, counters. */
  webhooks: Webhooks;
  /** The bound web port (known once listening; 0 before). */
  webPort?: () => number;
}
