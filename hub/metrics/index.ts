/**
 * Hub metrics in the Prometheus text format (prom-client), one registry per hub (no global
 * registry: two hubs in one test process do not mix). Most values are read from the components'
 * own counters when scraped (nothing added to the hot paths); the two histograms are fed by small
 * hooks at the choke points: the admin-port call wrapper (hub/grpc/wrap.ts `observe`) and the
 * executions' dispatch (hub/executions `onDispatch`).
 *
 * Label cardinality is bounded by construction: `method` is a path of a served RPC (the wrapper
 * is only installed on methods of the contract; unknown methods never reach it), `code` a gRPC
 * status name, `tenant` a tenant name (operator-created), `status` / `origin` / `reason` / `cert`
 * fixed sets. Never an agent id, a user name or request data.
 */
import * as grpc from '@grpc/grpc-js';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { certInfo } from '../../certs/index.js';
import type { HubPki } from '../pki/index.js';
import type { AgentRegistry } from '../agents/index.js';
import type { EventIntake } from '../events/index.js';
import type { RulesEngine } from '../rules/index.js';
import type { Executions } from '../executions/index.js';
import type { AuditBackend } from '../audit/index.js';
import type { Maintenance } from '../maintenance/index.js';

export interface MetricsSources {
  pki: HubPki;
  agents: AgentRegistry;
  events: EventIntake;
  rules: RulesEngine;
  executions: Executions;
  audit: AuditBackend;
  maintenance: Maintenance;
  /** The agent port's handshake gate (hub/grpc/handshake-gate.ts). */
  handshakes?: { stats: { droppedFull: number; droppedTimeout: number; droppedPerSource: number } };
}

/** gRPC status number → name ("OK", "PERMISSION_DENIED", ...), a fixed set. */
const STATUS_NAMES = new Map<number, string>(Object.entries(grpc.status).filter(([, v]) => typeof v === 'number').map(([k, v]) => [v as number, k]));
export const statusName = (code: number) => STATUS_NAMES.get(code) ?? 'UNKNOWN';

/** Seconds: 1 ms .. 30 s, for RPCs and event→action. */
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
/** Seconds: 0.5 ms .. 30 s, finer below 25 ms (dispatch waits on one fdatasync: a p99 near 10 ms is read here). */
const DISPATCH_BUCKETS = [0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** A counter whose value is read from a component when scraped. */
function readCounter(register: Registry, name: string, help: string, read: () => number): void {
  new Counter({ name, help, registers: [register], collect() { this.reset(); this.inc(Math.max(0, read())); } });
}

/** The notAfter of a PEM certificate, parsed once per distinct PEM. */
function expiryReader(): (pem: string | undefined) => number | undefined {
  let last: { pem: string; s: number } | undefined;
  return (pem) => {
    if (!pem) return undefined;
    if (last?.pem !== pem) {
      try { last = { pem, s: certInfo(pem).notAfter.getTime() / 1000 }; } catch { return undefined; }
    }
    return last.s;
  };
}

export class HubMetrics {
  readonly register = new Registry();
  private readonly rpc: Histogram<'method' | 'code'>;
  private readonly e2a: Histogram<'origin'>;
  private readonly syncWait: Histogram;

  constructor(private readonly s: MetricsSources) {
    const r = this.register;
    collectDefaultMetrics({ register: r });

    this.rpc = new Histogram({ name: 'trellis_rpc_duration_seconds', help: 'Admin-port RPCs by method and gRPC status code, from the call\'s arrival to its answer', labelNames: ['method', 'code'], buckets: LATENCY_BUCKETS, registers: [r] });
    this.e2a = new Histogram({
      name: 'trellis_event_to_action_seconds', labelNames: ['origin'], buckets: DISPATCH_BUCKETS, registers: [r],
      help: 'Time until an ActionRequest is written to its agent\'s stream: origin="rule" from the hub receiving the triggering event, origin="user" from the request',
    });
    this.syncWait = new Histogram({
      name: 'trellis_execution_dispatch_sync_wait_seconds', buckets: DISPATCH_BUCKETS, registers: [r],
      help: 'Time an ActionRequest waited for its requested/scheduled history lines to be on disk (fdatasync, group commit) before it was sent',
    });

    new Gauge({
      name: 'trellis_agents_connected', help: 'Agents with a live stream to this hub, by tenant', labelNames: ['tenant'], registers: [r],
      collect() {
        this.reset();
        const by = new Map<string, number>();
        for (const l of s.agents.connectedLinks()) {
          const t = s.agents.peek(l.agentId)?.tenant ?? 'unknown';
          by.set(t, (by.get(t) ?? 0) + 1);
        }
        for (const [tenant, n] of by) this.set({ tenant }, n);
      },
    });

    const ev = s.events;
    readCounter(r, 'trellis_events_received_total', 'Fresh events accepted (agents and webhooks), after de-duplication', () => ev.received);
    readCounter(r, 'trellis_events_duplicates_total', 'Re-delivered events dropped by de-duplication (acknowledged)', () => ev.duplicates);
    readCounter(r, 'trellis_events_malformed_total', 'Malformed events dropped (acknowledged)', () => ev.rejected);
    readCounter(r, 'trellis_events_refused_total', 'Events refused by the source policy (a type the agent may not publish; acknowledged)', () => ev.refused);
    readCounter(r, 'trellis_events_acked_total', 'Agent events acknowledged on the agent stream (every kind above, once its effects are durable)', () => ev.acked);

    const hs = s.handshakes;
    if (hs) {
      new Counter({
        name: 'trellis_agent_connections_closed_total', labelNames: ['reason'], registers: [r],
        help: 'Agent-port connections closed before TLS by the handshake gate: reason="queue_full", "queue_timeout", "per_address" (their source address had agentChannel.maxHandshakesPerAddress queued or handshaking)',
        collect() {
          this.reset();
          this.inc({ reason: 'queue_full' }, hs.stats.droppedFull);
          this.inc({ reason: 'queue_timeout' }, hs.stats.droppedTimeout);
          this.inc({ reason: 'per_address' }, hs.stats.droppedPerSource);
        },
      });
    }

    const rt = s.rules.totals;
    readCounter(r, 'trellis_rule_matches_total', 'Hub rule matches', () => rt.matched);
    readCounter(r, 'trellis_rule_firings_total', 'Hub rule firings (an execution was requested)', () => rt.fired);
    new Counter({
      name: 'trellis_rule_suppressions_total', help: 'Hub rule matches that did not fire: reason="limit" (cooldown, rate limit, author lost a right), reason="maintenance"', labelNames: ['reason'], registers: [r],
      collect() { this.reset(); this.inc({ reason: 'limit' }, Math.max(0, rt.suppressed - rt.held)); this.inc({ reason: 'maintenance' }, rt.held); },
    });
    readCounter(r, 'trellis_rule_errors_total', 'Hub rule firings whose action could not be requested', () => rt.errors);

    new Gauge({
      name: 'trellis_executions', help: 'Executions the history holds, by status (requested = waiting for the agent or a slot)', labelNames: ['status'], registers: [r],
      collect() { this.reset(); for (const [status, n] of s.executions.statusCounts()) this.set({ status }, n); },
    });
    readCounter(r, 'trellis_executions_refused_total', 'User runs and re-runs refused in maintenance mode', () => s.maintenance.status().refusedExecutions);

    new Gauge({ name: 'trellis_audit_queue_records', help: 'Audit records waiting to be written to disk', registers: [r], collect() { this.set(s.audit.queued); } });
    readCounter(r, 'trellis_audit_dropped_total', 'Audit records dropped because the disk kept failing', () => s.audit.dropped);

    const hubExpiry = expiryReader();
    const caExpiry = expiryReader();
    new Gauge({
      name: 'trellis_cert_expiry_timestamp_seconds', help: 'notAfter of the hub serving certificate (cert="hub") and of the CA it chains to (cert="ca"), Unix seconds', labelNames: ['cert'], registers: [r],
      collect() {
        this.reset();
        const hub = hubExpiry(s.pki.hubIdentity.certChainPem);
        const ca = caExpiry(s.pki.trustBundle[0]);
        if (hub !== undefined) this.set({ cert: 'hub' }, hub);
        if (ca !== undefined) this.set({ cert: 'ca' }, ca);
      },
    });
    new Gauge({ name: 'trellis_maintenance_mode', help: '1 while maintenance mode is on', registers: [r], collect() { this.set(s.maintenance.on ? 1 : 0); } });
    readCounter(r, 'trellis_maintenance_refused_calls_total', 'Admin-API calls refused in maintenance mode', () => s.maintenance.status().refusedCalls);
  }

  /** hub/grpc/wrap.ts `observe`: one finished admin-port call. */
  observeRpc(method: string, code: number, seconds: number): void {
    this.rpc.observe({ method: method.startsWith('/') ? method.slice(1) : method, code: statusName(code) }, seconds);
  }

  /** hub/executions `onDispatch`: an ActionRequest went out. */
  observeDispatch(o: { rule: boolean; sinceMs: number; syncWaitMs?: number }): void {
    this.e2a.observe({ origin: o.rule ? 'rule' : 'user' }, Math.max(0, Date.now() - o.sinceMs) / 1000);
    if (o.syncWaitMs !== undefined) this.syncWait.observe(Math.max(0, o.syncWaitMs) / 1000);
  }

  /** The exposition text and its content type. */
  async scrape(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.register.contentType, body: await this.register.metrics() };
  }
}
