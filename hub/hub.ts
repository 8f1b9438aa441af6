/**
 * The hub's composition root: reads config, builds every component and wires them by hand.
 * Read it top to bottom to see what the hub is made of.
 */
import * as grpc from '@grpc/grpc-js';
import { GuardedServer } from './grpc/malformed.js';
import { loadHubConfig, type HubConfig, type HubConfigInput } from './config.js';
import { hubPaths } from './paths.js';
import { openStore, type Store } from './store/index.js';
import { storeOptions } from './store/from-config.js';
import { HubPki } from './pki/index.js';
import { HubCertLifecycle } from './pki/lifecycle.js';
import { Auth } from './auth/index.js';
import { buildBackends } from './auth/factory.js';
import { Iam } from './iam/index.js';
import { JoinTokens } from './tokens/index.js';
import { AgentRegistry, LAST_SEEN_PERSIST_MS } from './agents/index.js';
import { Executions } from './executions/index.js';
import { exportHistory } from './executions/export-pg.js';
import { addExecutionServices } from './grpc/executions.js';
import { EventIntake } from './events/index.js';
import { addAdminServices } from './grpc/admin.js';
import { addIamServices } from './grpc/iam.js';
import { addAuditServices } from './grpc/audit.js';
import { addKvServices } from './grpc/kv.js';
import { addPackServices } from './grpc/packs.js';
import { Packs } from './packs/index.js';
import { RulesEngine } from './rules/index.js';
import { AgentConfigs } from './agentconfig/index.js';
import { addRuleServices } from './grpc/rules.js';
import { EDGE_EXECUTION_TRIGGER, type EdgeExecutionPayload } from '../common/automation/types.js';
import { KvStore } from './kv/index.js';
import { Keyring } from './secrets/keyring.js';
import { LiveStreams } from './live/index.js';
import { PreAuthGate } from './grpc/preauth.js';
import { RefusalLog } from './grpc/refusals.js';
import { KdfPool } from './auth/kdf.js';
import { widenFlowControl } from './grpc/flow-control.js';
import { AuditLog, type AuditBackend } from './audit/index.js';
import { PgAuditLog } from './audit/postgres.js';
import { PostgresStore } from './store/postgres/index.js';
import { checkClusterKeys } from './cluster/keys.js';
import { fingerprintSha256 } from '../certs/index.js';
import { RefusalThrottle } from './audit/throttle.js';
import { RenewLimiter } from './agents/renewal.js';
import { auditTlsRefusals } from './grpc/agent-tls-audit.js';
import { addAgentServices, agentServerOptions } from './grpc/agent-channel.js';
import { PeerCertCache } from './grpc/peer-cache.js';
import { HandshakeGate, listenAgentPort, logHandshakeSummary, type AgentListener } from './grpc/handshake-gate.js';
import type { AdmissionGate } from './grpc/admission.js';
import { MemoryCertificateProvider, mtlsServerCredentials, tlsServerCredentials } from './grpc/credentials.js';
import { WebServer } from './web/index.js';
import { ConsoleRoute } from './web/console/index.js';
import { streamCookieCredential } from './web/console/session.js';
import { Webhooks } from './webhooks/index.js';
import { webhookRoute } from './web/webhooks.js';
import { AgentDist } from './web/agentdist.js';
import { EventStream } from './web/stream.js';
import { addWebhookServices } from './grpc/webhooks.js';
import { addCaServices } from './grpc/ca-rotation.js';
import { addSnapshotServices } from './grpc/snapshots.js';
import { Snapshots } from './snapshots/index.js';
import { TRELLIS_VERSION } from '../common/version.js';
import { CaRotation, recoverRotation } from './pki/rotation.js';
import { assertTableCovers } from './authz/index.js';
import { allMethodPaths } from '../common/proto.js';
import { SERVER_OPTIONS, formatHostPort } from '../common/grpc-options.js';
import { HubRegistry, newHubId } from './cluster/registry.js';
import { busFor, type ClusterBus } from './cluster/bus.js';
import { addClusterServices } from './grpc/cluster.js';
import { ChangePropagation } from './cluster/propagate.js';
import { ClusterEvents } from './cluster/events.js';
import { ruleGatesFor, type SharedRuleGates } from './cluster/rule-gates.js';
import { createLogger, type Logger } from '../common/log.js';
import { TrellisError } from '../common/errors.js';
import { rotationPauseFromEnv } from './kv/test-hooks.js';
import type { HubComponents } from './components.js';
import { lockDataDir, type DataDirLock } from './lock/index.js';
import { Maintenance } from './maintenance/index.js';
import { addMaintenanceServices } from './grpc/maintenance.js';
import { HubMetrics } from './metrics/index.js';
import { metricsRoute } from './web/metrics.js';

export interface HubOptions {
  dataDir: string;
  /** Overrides from flags (highest precedence). */
  flags?: Partial<HubConfigInput>;
  log?: Logger;
  /** Use the in-memory store instead of DATA/state.json (tests, benchmarks). */
  memoryStore?: boolean;
}

export type HubState = 'starting' | 'running' | 'draining' | 'closed';

export class Hub {
  state: HubState = 'starting';
  private sweepTimer?: NodeJS.Timeout;
  private kdf?: KdfPool;
  private refusals?: RefusalLog;
  private eventSweepTimer?: NodeJS.Timeout;
  private lastSeenTimer?: NodeJS.Timeout;
  private live?: LiveStreams;
  /** This hub in the hubs registry (hub/cluster). */
  registry?: HubRegistry;
  /** Hub-to-hub messages (LocalBus when the store is not shared). */
  bus?: ClusterBus;
  /** Other hubs' changes applied to this hub's in-memory state (shared store only). */
  propagation?: ChangePropagation;
  /** Events forwarded to and from the other hubs' /stream followers. */
  clusterEvents?: ClusterEvents;
  /** Cluster-wide rule cooldowns and rate limits (PostgreSQL only). */
  ruleGates?: SharedRuleGates;
  private agentListener?: AgentListener;
  /** The agent port's handshake bound (its stats: how often connections had to wait). */
  handshakes?: HandshakeGate;
  private stopHandshakeSummary?: () => void;
  /** The agent port's hello admission bound (its stats). */
  admission?: AdmissionGate;
  /** The agent port's verified-certificate cache (its stats: certificates parsed and verified, hits). */
  peerCache?: PeerCertCache;
  private certLifecycle?: HubCertLifecycle;
  private lock?: DataDirLock;
  /** Prometheus metrics (GET /metrics on the web port). */
  metrics?: HubMetrics;
  /** Maintenance mode (`trellis maintenance`). */
  maintenance?: Maintenance;

  private constructor(
    readonly components: HubComponents,
    private readonly agentServer: grpc.Server,
    private readonly adminServer: grpc.Server,
    private readonly web: WebServer,
    readonly agentPort: number,
    readonly adminPort: number,
    readonly webPort: number,
  ) {}

  get config(): HubConfig { return this.components.config; }

  static async start(opts: HubOptions): Promise<Hub> {
    const config = loadHubConfig(opts.dataDir, opts.flags);
    // One process writes a data directory at a time (hub/lock): a second hub refuses, naming the holder.
    const lock = lockDataDir(opts.dataDir, 'hub run');
    try {
      const hub = await Hub.startLocked(opts, config);
      hub.lock = lock;
      return hub;
    } catch (e) {
      lock.release();
      throw e;
    }
  }

  private static async startLocked(opts: HubOptions, config: HubConfig): Promise<Hub> {
    const log = opts.log ?? createLogger({ level: config.logLevel, name: 'trellis-hub', format: config.logFormat, time: config.logTime });
    const paths = hubPaths(opts.dataDir);
    assertTableCovers(allMethodPaths());

    const storeLog = log.child({ component: 'store' });
    const store: Store = await openStore(opts.memoryStore ? { kind: 'memory' } : storeOptions(config.store, paths.store, {
      onStateChange: (state, detail) => (state === 'ready' ? storeLog.info({ state }, detail) : storeLog.error({ state }, detail)),
    }));
    // Several hubs over one database talk over the cluster bus (hub/cluster/bus.ts; LocalBus alone).
    const hubId = newHubId();
    const bus = busFor(store, hubId, log.child({ component: 'cluster' }));
    // A CA rotation commit cut short by a crash is finished before the CA files are read.
    const recovered = await recoverRotation(paths);
    if (recovered) log.warn({ component: 'pki' }, recovered);
    const pki = HubPki.load(paths, config.names);
    const keyring = await Keyring.open(opts.dataDir);
    // Hubs on one database hold the same CA and master key (hub/cluster/keys.ts): refused otherwise.
    if (store instanceof PostgresStore) {
      const local = { caFingerprint: pki.caFingerprint, trusted: pki.clientTrust.map((c) => fingerprintSha256(c)), masterKeys: keyring.checks() };
      const warnings = await checkClusterKeys(store, local, { by: config.names[0]!, where: store.where }).catch(async (e) => { await store.close(); throw e; });
      for (const w of warnings) log.warn({ component: 'cluster' }, w);
    }
    const iam = new Iam(store);
    await iam.ensureDefaultTenant();
    // Maintenance mode (hub/maintenance), persisted in the store: gates admin calls, executions and rule firings.
    const maintenance = await Maintenance.open(store);
    let metrics: HubMetrics | undefined; // built once every component it reads exists (below)
    const authLog = log.child({ component: 'auth' });
    // Password checks run on the hub's own threads, never on libuv's threadpool that file I/O needs.
    const kdf = new KdfPool({ workers: config.auth.kdfWorkers, maxQueue: 32 });
    const auth = new Auth(store, iam, {
      sessionTtlMs: config.sessionTtl, lockout: config.auth.lockout, limits: config.auth.limits, kdf: kdf.kdf,
      backends: buildBackends(config.auth.backends, { store, log: authLog, kdf: kdf.kdf }),
    });
    auth.on('backend-error', (e: { backend: string; message: string }) => authLog.warn({ backend: e.backend, error: e.message }, 'login backend error'));
    // New tokens pin the CA the hub certificate chains to now (it changes when a CA rotation commits).
    const tokens = new JoinTokens(store, { get caFingerprint() { return pki.caFingerprint; }, defaultTtlMs: config.joinTokenTtl, maxTtlMs: config.joinTokenMaxTtl });
    const agents = new AgentRegistry(store, { heartbeatTtlMs: config.heartbeatTtl });
    await agents.load();
    const events = new EventIntake({ log: log.child({ component: 'events' }) });
    let boundAgentPort = config.agentPort;
    const ar = config.audit.retention;
    // The audit log: files in the data directory, or one table shared by every hub on PostgreSQL
    // (hub/audit/postgres.ts: retention keeps maxAge and maxSegments x maxSegmentBytes bytes).
    const audit: AuditBackend = store instanceof PostgresStore
      ? await PgAuditLog.open({ db: store, bus, log: log.child({ component: 'audit' }), maxAgeMs: ar.maxAge, maxBytes: ar.maxSegments * ar.maxSegmentBytes })
      : await AuditLog.open({ dir: paths.audit, log: log.child({ component: 'audit' }), maxAgeMs: ar.maxAge, maxSegments: ar.maxSegments, maxSegmentBytes: ar.maxSegmentBytes });
    const rotation = CaRotation.open({ paths, pki, agents, log: log.child({ component: 'pki' }), audit, names: config.names });
    if (recovered) audit.record({ timeMs: Date.now(), actor: 'hub', tenant: '', method: 'ca/RecoverRotation', target: `ca:${pki.caFingerprint.slice(0, 16)}`, result: 'ok', sourceAddress: '', detail: recovered.slice(0, 300) });
    const kvLog = log.child({ component: 'kv' });
    const pauseRotationAfter = rotationPauseFromEnv(process.env); // tests only: needs TRELLIS_TEST_HOOKS=1
    const kv = new KvStore(store, keyring, {
      onError: (err) => kvLog.error({ err }, 'datastore'),
      pauseRotationAfter, onRotationPaused: (done, total) => kvLog.warn({ done, total }, 'key rotation paused by a test hook (TRELLIS_TEST_PAUSE_ROTATION_AFTER)'),
    });
    const movedPrivate = await kv.migratePrivateKeys();
    if (movedPrivate > 0) kvLog.info({ keys: movedPrivate }, 'private keys moved to their creators\' name spaces');
    const webhooksLog = log.child({ component: 'webhooks' });
    const webhooks = new Webhooks(store, kv.keyring, { onError: (err) => webhooksLog.error({ err }, 'webhook secrets') });
    await webhooks.start();
    kv.addKeyHolder(webhooks); // a master key rotation re-encrypts webhook secrets too
    let boundWebPort = 0;
    const packs = new Packs(store, { log: log.child({ component: 'packs' }) });
    await packs.load();
    const xc = config.executions;
    // Several hubs on one PostgreSQL: execution history in the database, runs dispatched across hubs (hub/executions/cluster.ts).
    let liveHubs: () => Promise<string[]> = async () => [hubId];
    const sharedStore = !opts.memoryStore && config.store.kind === 'postgres';
    const executions = await Executions.open({
      agents, kv, catalog: packs,
      cluster: sharedStore ? { db: store as PostgresStore, bus, liveHubs: () => liveHubs() } : undefined,
    }, {
      dir: paths.executions, log: log.child({ component: 'executions' }), perAgentConcurrency: xc.perAgentConcurrency, maxWaitMs: xc.maxWait,
      abandonGraceMs: xc.abandonGrace, reconnectGraceMs: xc.reconnectGrace, maxOutputBytes: xc.maxOutputBytes, maxAgeMs: xc.retention.maxAge, maxCount: xc.retention.maxCount,
      admit: (o) => maintenance.admitExecution(o), onDispatch: (o) => metrics?.observeDispatch(o),
    });
    // Cooldowns and rate limits of rules hold across hubs on PostgreSQL (hub/cluster/rule-gates.ts).
    const ruleGates = opts.memoryStore ? undefined : ruleGatesFor(store, log.child({ component: 'rules' }));
    const rules = new RulesEngine({ store, packs, executions, agents, authors: iam, audit, log: log.child({ component: 'rules' }), hold: () => maintenance.holdRuleFiring(), sharedGates: ruleGates });
    await rules.load();
    const agentConfigs = new AgentConfigs({ agents, packs, rules, kv, log: log.child({ component: 'agentconfig' }) });
    // The event path: de-duplicated events → hub rules; edge-rule reports → execution history.
    events.subscribe((batch) => rules.onEvents(batch));
    events.subscribe((batch) => {
      let recorded = false;
      for (const e of batch) {
        if (e.type !== EDGE_EXECUTION_TRIGGER || !e.agentId) continue;
        try {
          const p = JSON.parse(e.payload.toString('utf8')) as EdgeExecutionPayload;
          // Checked against the edge config the hub sent this agent (finding 15 of issue 10).
          if (executions.recordEdge(e.agentId, e.tenant, e.id, p, typeof p?.rule === 'string' ? agentConfigs.sentEdgeRule(e.agentId, p.rule) : undefined)) recorded = true;
        } catch (err) {
          log.warn({ component: 'executions', agentId: e.agentId, eventId: e.id, err: (err as Error).message }, 'bad edge execution report ignored');
        }
      }
      // The reports are acknowledged to the agent once they are in the history on disk.
      return recorded ? executions.durable() : undefined;
    });
    const renewLimiter = new RenewLimiter({ max: config.agentRenewLimit.max, windowMs: config.agentRenewLimit.window, certTtlMs: config.agentCertTtl });
    // Refusals of callers nobody vouches for (no credentials, bad join token, rate limits, agent
    // port) are throttled: a flood writes one record per distinct refusal per minute plus a count.
    // Every port records into this one throttle; no other mechanism writes refusal summaries.
    // Every TRELLIS_E_RATE_LIMITED refusal today is of an unidentified caller or an agent, so `only`
    // covers them; refusals of known users (the /stream per-user limit's 429 too) are each recorded.
    const refusalAudit = new RefusalThrottle(audit, { only: (e) => e.actor === '-' || e.actor.startsWith('agent:') });
    const components: HubComponents = {
      config, log, store, pki, iam, auth, audit, tokens, agents, events, kv, packs, executions, rules, agentConfigs, renewLimiter, refusalAudit, rotation,
      agentPort: () => boundAgentPort, webhooks, webPort: () => boundWebPort,
    };

    // One identity provider for both ports, one CA provider for client certificates.
    const identity = new MemoryCertificateProvider({ certChain: pki.hubIdentity.certChainPem, key: pki.hubIdentity.keyPem });
    const clientCa = new MemoryCertificateProvider({ ca: pki.clientTrust.join('\n') });
    pki.onIdentityChange((id) => identity.setIdentity(id.certChainPem, id.keyPem));
    // CA rotation: client certificates of the old and the new CA verify, updated in place (no listener restart).
    pki.onTrustChange(() => clientCa.setCa(pki.clientTrust.join('\n')));

    // Agents are verified in the TLS handshake: the full limit. Admin callers are verified per call:
    // the pre-auth gate holds each call's body until its credential checks out (hub/grpc/preauth.ts).
    const agentServer = new GuardedServer({ ...SERVER_OPTIONS, ...agentServerOptions(config) });
    // TLS handshakes on the agent port are bounded before they start (the hub owns its TCP listener).
    const ac = config.agentChannel;
    const handshakes = new HandshakeGate({
      maxHandshakes: ac.maxHandshakes, maxQueued: ac.maxQueuedHandshakes, queueTimeoutMs: ac.handshakeQueueTimeout, slotTimeoutMs: ac.helloTimeout,
      maxPerSource: ac.maxHandshakesPerAddress, log: log.child({ component: 'agent-port' }),
    });
    // Agents are admitted once start-up is complete (hub.state 'running'), never against half-built state.
    let startedUp!: () => void;
    const peerCache = new PeerCertCache();
    const admission = addAgentServices(agentServer, components, handshakes, { ready: new Promise<void>((r) => { startedUp = r; }), peers: peerCache });
    const stopHandshakeSummary = logHandshakeSummary(handshakes, log.child({ component: 'agent-port' }));
    // Log lines of rate-limited refusals, counted (their audit records go to refusalAudit).
    const refusals = new RefusalLog(log.child({ component: 'admin' }));
    const preAuth = new PreAuthGate({ auth, log: log.child({ component: 'preauth' }), refusals, audit: refusalAudit }, {
      preAuthMaxMessageBytes: Math.min(config.preAuth.maxMessageBytes, config.maxMessageBytes), maxMessageBytes: config.maxMessageBytes,
      maxCalls: config.preAuth.maxCalls, maxCallsPerAddress: config.preAuth.maxCallsPerAddress, requestTimeoutMs: config.preAuth.requestTimeout,
    });
    const adminServer = new GuardedServer({ ...SERVER_OPTIONS, ...preAuth.serverOptions() });
    // One registry of live streams (admin port and /stream): re-checked whenever rights change.
    const live = new LiveStreams({ auth, iam, log: log.child({ component: 'live' }) });
    // Metrics (hub/metrics): read from the components when scraped, plus the RPC and dispatch histograms.
    metrics = new HubMetrics({ pki, agents, events, rules, executions, audit, maintenance, handshakes });
    const hubMetrics = metrics;
    const adminDeps = {
      auth, log: log.child({ component: 'admin' }), audit: refusalAudit, live, refusals,
      maintenance, observe: (m: string, code: number, sec: number) => hubMetrics.observeRpc(m, code, sec),
    };
    addAdminServices(adminServer, components, adminDeps);
    addIamServices(adminServer, components, adminDeps);
    addAuditServices(adminServer, components, adminDeps);
    addKvServices(adminServer, components, adminDeps);
    addExecutionServices(adminServer, components, adminDeps);
    addPackServices(adminServer, components, adminDeps);
    addRuleServices(adminServer, components, adminDeps);
    addWebhookServices(adminServer, components, adminDeps);
    addCaServices(adminServer, components, adminDeps);
    // Snapshots (DATA/snapshots): the store, history and audit at one point in time, with the keys.
    const snapshots = await Snapshots.open({
      dir: paths.snapshots, log: log.child({ component: 'snapshots' }),
      sources: {
        dataDir: opts.dataDir, store, caFingerprint: () => pki.caFingerprint, trellisVersion: TRELLIS_VERSION,
        flush: async () => { await store.flush(); await audit.flush(); await executions.durable(); },
        exportAudit: audit instanceof PgAuditLog ? (file) => audit.exportTo(file) : undefined,
        exportExecutions: sharedStore ? async (dir) => { await exportHistory(store as PostgresStore, dir); } : undefined,
      },
    });
    addSnapshotServices(adminServer, snapshots, adminDeps);
    addMaintenanceServices(adminServer, { maintenance, executions }, adminDeps);
    maintenance.onChange((m) => log.warn({ component: 'maintenance', on: m.on, by: m.by, message: m.message || undefined }, m.on ? 'maintenance mode on: only administrators may call the admin API; no new executions start' : 'maintenance mode off'));
    if (maintenance.on) log.warn({ component: 'maintenance', since: new Date(maintenance.status().sinceMs).toISOString(), by: maintenance.status().by }, 'the hub starts in maintenance mode (`trellis maintenance off` ends it)');
    // Several hubs (issue 14 §2): this hub in the hubs registry, shared through PostgreSQL.
    let boundAdminPort = 0;
    const registry = new HubRegistry({
      id: hubId, store, shared: !opts.memoryStore && config.store.kind === 'postgres', name: config.names[0]!, version: TRELLIS_VERSION,
      addresses: () => config.names.slice(0, 4).flatMap((n) => [formatHostPort(n, boundAgentPort), formatHostPort(n, boundAdminPort)]),
      agents: () => agents.connectedLinks().length, intervalMs: config.cluster.heartbeatInterval, staleAfterMs: config.cluster.staleAfter,
      log: log.child({ component: 'cluster' }),
    });
    addClusterServices(adminServer, components, adminDeps, registry);
    liveHubs = async () => (await registry.list()).filter((h) => !h.stale).map((h) => h.id);
    // Another hub's changes reach this hub's in-memory state as local ones do (hub/cluster/propagate.ts).
    const propagation = new ChangePropagation({ store, agents, auth, iam, rules, packs, kv, agentConfigs, maintenance, log: log.child({ component: 'cluster' }) });

    const bindTo = (server: grpc.Server, port: number, creds: grpc.ServerCredentials, what: string) =>
      new Promise<number>((resolve, reject) => {
        const addr = config.bind.includes(':') ? `[${config.bind}]:${port}` : `${config.bind}:${port}`;
        server.bindAsync(addr, creds, (err, bound) => (err
          ? reject(new TrellisError('TRELLIS_E_CONFIG', `cannot listen on ${addr} for the ${what} port: ${err.message}`, { cause: err }))
          : resolve(bound)));
      });
    const wc = config.web;
    const web = new WebServer(pki, log.child({ component: 'web' }), {
      maxConnectionsPerClient: wc.maxConnectionsPerClient, handshakeTimeoutMs: wc.handshakeTimeout, headersTimeoutMs: wc.headersTimeout, requestTimeoutMs: wc.requestTimeout,
    });
    // Agent install files (/agent/ca.pem, install.sh, bundle.tgz[.sha256]): public, unauthenticated.
    web.route(new AgentDist({ dir: paths.agentBundle, ca: () => ({ chain: pki.trustBundle, fingerprint: pki.caFingerprint }), log: log.child({ component: 'agentdist' }) }).route());
    web.route(webhookRoute({ webhooks, auth, events, audit: refusalAudit, log: webhooksLog }));
    // GET /metrics (API key with metrics:read, or an address in metrics.allow) and GET /readyz.
    let started: Hub | undefined;
    web.route(metricsRoute({
      metrics, auth, audit: refusalAudit, log: log.child({ component: 'metrics' }), allow: config.metrics.allow,
      notReady: async () => {
        if (!started) return 'the hub is starting';
        if (started.state !== 'running') return `the hub is ${started.state}`;
        if (!started.agentPort || !started.adminPort || !started.webPort) return 'a port is not bound';
        let timer: NodeJS.Timeout | undefined;
        const slow = new Promise<string>((resolve) => { timer = setTimeout(() => resolve('the store did not answer within 2s'), 2_000); });
        try {
          return await Promise.race([store.count('meta').then(() => undefined, (err: Error) => `the store is unreachable: ${err.message}`), slow]);
        } finally { clearTimeout(timer); }
      },
    }));
    // In a cluster, /stream also carries the events of agents on the other hubs (hub/cluster/events.ts).
    let clusterEvents: ClusterEvents | undefined;
    const stream = new EventStream({
      auth, events, executions, live, audit: refusalAudit, log: log.child({ component: 'stream' }), maxClients: wc.maxStreams, maxPerUser: wc.maxStreamsPerUser, cookieCredential: streamCookieCredential,
      onFollowers: () => clusterEvents?.followersChanged(),
    });
    web.upgradeRoute(stream);
    clusterEvents = await ClusterEvents.start({ bus, events, followers: stream, log: log.child({ component: 'cluster' }) });
    // The web console (/console/): its API calls the admin port's handlers, with their authorization and audit.
    if (wc.console) web.route(new ConsoleRoute({ auth, served: adminServer.served, log: log.child({ component: 'console' }) }).route());
    let agentPort: number, adminPort: number, webPort: number;
    let agentListener: AgentListener | undefined;
    try {
      // The agent port last: after a restart thousands of agents are waiting for it, and their
      // handshakes would otherwise slow the binding of the other two (and the start-up line).
      adminPort = await bindTo(adminServer, config.adminPort, tlsServerCredentials(identity), 'admin');
      boundAdminPort = adminPort;
      webPort = await web.listen(config.bind, config.webPort).catch((err: Error) => {
        throw new TrellisError('TRELLIS_E_CONFIG', `cannot listen on ${config.bind}:${config.webPort} for the web port: ${err.message}`, { cause: err });
      });
      boundWebPort = webPort;
      agentListener = await listenAgentPort(agentServer, mtlsServerCredentials(identity, clientCa), config.bind, config.agentPort, handshakes)
        .catch((err: Error) => { throw new TrellisError('TRELLIS_E_CONFIG', `cannot listen on ${config.bind}:${config.agentPort} for the agent port: ${err.message}`, { cause: err }); });
      agentPort = agentListener.port;
      if (!widenFlowControl(agentServer)) log.warn('could not widen HTTP/2 flow-control windows on the agent port (grpc-js internals changed); events flow at the default window');
      if (!auditTlsRefusals(agentServer, refusalAudit)) log.warn('cannot audit refused TLS handshakes on the agent port (grpc-js internals changed); they are refused all the same');
      boundAgentPort = agentPort;
    } catch (e) {
      live.close();
      propagation.close();
      clusterEvents?.close();
      ruleGates?.close();
      stopHandshakeSummary();
      agentServer.forceShutdown();
      await agentListener?.close();
      adminServer.forceShutdown();
      await web.close();
      await webhooks.close();
      await executions.close();
      await kv.close();
      refusalAudit.close();
      await audit.close();
      await store.close();
      await kdf.close();
      throw e;
    }
    const hub = new Hub(components, agentServer, adminServer, web, agentPort, adminPort, webPort);
    started = hub;
    hub.metrics = metrics;
    hub.maintenance = maintenance;
    hub.live = live;
    hub.agentListener = agentListener;
    hub.handshakes = handshakes;
    hub.stopHandshakeSummary = stopHandshakeSummary;
    hub.admission = admission;
    hub.peerCache = peerCache;
    hub.kdf = kdf;
    hub.refusals = refusals;
    hub.registry = registry;
    hub.bus = bus;
    hub.propagation = propagation;
    hub.clusterEvents = clusterEvents;
    hub.ruleGates = ruleGates;
    await registry.start();
    hub.sweepTimer = setInterval(() => void auth.sweepSessions().catch(() => undefined), 3_600_000);
    hub.eventSweepTimer = setInterval(() => events.sweep(), 60_000);
    hub.eventSweepTimer.unref();
    // Agents' last-seen times to disk in one batch (a reconnect never writes them: hub/agents).
    hub.lastSeenTimer = setInterval(() => void agents.persistLastSeen().catch((err) => log.error({ err }, 'saving agent last-seen times failed')), LAST_SEEN_PERSIST_MS);
    hub.lastSeenTimer.unref();
    hub.sweepTimer.unref();
    kv.startSweeper();
    // A rotation cut short (hub killed) left older key versions on disk: finish it in the background.
    if (kv.keyring.versions().length > 1) void kv.resume((p) => { if (p.finished) kvLog.info(p, 'master key rotation finished'); }).catch((err) => kvLog.warn({ err }, 'master key rotation paused'));
    hub.state = 'running';
    // Renews the hub certificate at 2/3 of its life; warns of hub/CA expiry at start and daily.
    hub.certLifecycle = new HubCertLifecycle(pki, log.child({ component: 'pki' }), audit);
    hub.certLifecycle.start();
    rotation.start();
    if (rotation.phase === 'started') log.info({ component: 'pki', caFingerprint: pki.caFingerprint, newCa: pki.issuingFingerprint }, 'a CA rotation is under way: see `trellis ca rotate status`');
    log.info({ agentPort, adminPort, webPort, bind: config.bind, names: config.names, caFingerprint: pki.caFingerprint, canIssue: pki.canIssue }, 'hub running');
    startedUp(); // agents waiting on the agent port are admitted from here (start-up is complete)
    return hub;
  }

  /** Drain → flush → close, forced after `forceMs`. */
  async close(forceMs = 5_000): Promise<void> {
    if (this.state === 'closed' || this.state === 'draining') return;
    this.state = 'draining';
    // First: no new agent connection. An agent whose stream ends below reconnects within ~1 s;
    // a closing hub must not welcome it (and ask it to renew or run) just before it stops.
    this.agentListener?.stopAccepting();
    clearInterval(this.sweepTimer);
    clearInterval(this.eventSweepTimer);
    clearInterval(this.lastSeenTimer);
    this.stopHandshakeSummary?.();
    this.certLifecycle?.close();
    this.components.rotation.close();
    this.live?.close();
    this.propagation?.close();
    this.clusterEvents?.close();
    this.ruleGates?.close();
    await this.registry?.stop();
    const c = this.components;
    c.agentConfigs.close();
    await c.kv.close(); // a key rotation stops between batches and resumes at next start
    c.audit.endFollowers();
    await c.agents.closeAll().catch((err) => c.log.error({ err }, 'saving agent state failed'));
    await c.executions.close(); // after the agents: results they sent until now are recorded; ends followers
    const graceful = (s: grpc.Server) => new Promise<void>((resolve) => s.tryShutdown(() => resolve()));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all([graceful(this.agentServer), graceful(this.adminServer)]),
      new Promise<void>((resolve) => { timer = setTimeout(resolve, forceMs); }),
    ]);
    clearTimeout(timer);
    this.agentServer.forceShutdown();
    await this.agentListener?.close();
    this.adminServer.forceShutdown();
    await this.web.close();
    await c.webhooks.close();
    this.refusals?.close(); // its last counts into the log
    c.refusalAudit.close(); // pending refusal summaries
    await c.audit.close();
    await c.store.close();
    await this.kdf?.close();
    this.lock?.release();
    this.state = 'closed';
    c.log.info('hub stopped');
  }

  async [Symbol.asyncDispose](): Promise<void> { await this.close(); }
}
