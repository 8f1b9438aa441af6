/**
 * The agent's composition root: identity, channel, action runner and renewal, wired by hand.
 */
import * as os from 'node:os';
import { createCSR, generateKey, certInfo, keyMatchesCert, loadPrivateKey, splitPemBundle, verifyIssuedBy, fingerprintSha256 } from '../certs/index.js';
import { atomicWriteFile } from '../common/fsutil.js';
import { RESULT_OUTPUT, RESULT_OUTPUT_MAX_BYTES, RESULT_OUTPUT_MAX_CHUNKS } from '../common/features.js';
import { diagnoseConnection } from '../common/connect-diagnosis.js';
import type { KeyObject } from 'node:crypto';
import { TrellisError } from '../common/errors.js';
import { createLogger, type Logger } from '../common/log.js';
import { TRELLIS_VERSION } from '../common/version.js';
import { parseHostPort } from '../common/grpc-options.js';
import { HubAddresses, parseHubAddresses } from './hub-addresses.js';
import { agentPaths, loadIdentity, readState, saveIdentity, writeState, type Identity } from './identity.js';
import { HubChannel } from './channel.js';
import { Outbox } from './outbox/index.js';
import { renewalTime, DEFAULT_RENEW_AT } from './renew-schedule.js';
import { join } from 'node:path';
import { AGENT_CONCURRENT_ACTIONS } from '../common/automation/request.js';
import { HttpPool, startAction, type RunningAction } from './runner.js';
import { ulidFactory } from '../common/ids.js';
import type { SensorManager, SensorSpecInput, SensorStatus, SkippedSensor } from './sensors/index.js';
import { EdgeRules } from './edge.js';
import { runLocal } from './local.js';
import type { TriggerEvent } from '../common/automation/types.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

export interface AgentOptions {
  dataDir: string;
  /** Operator-issued identity (hub set up with a CA and no CA key): all three go together. */
  certFile?: string;
  keyFile?: string;
  caFile?: string;
  /** Agent port of the hub, HOST:PORT, or of several hubs, `a:7443,b:7443` (fail over in order); defaults to the ones saved at enrollment. */
  hub?: string;
  log?: Logger;
  /** Most actions running at once. @default 16 */
  maxConcurrentActions?: number;
  /** How long an action's output is held to go with its result (holdOutput). @default STARTED_HOLD_MS */
  outputHoldMs?: number;
  /** Renew at this fraction of the certificate's life. @default 2/3 */
  renewAt?: number;
  maxBackoffMs?: number;
  /** Most unacknowledged events kept in the durable outbox (DATA/outbox); then new ones are refused. @default 100000 */
  outboxMaxEvents?: number;
}

/** How long a `started` report waits for the action's first output or result (see holdStarted). */
export const STARTED_HOLD_MS = 50;

export function agentFacts(): T.Facts {
  return {
    hostname: os.hostname(), os: os.platform(), arch: os.arch(), osRelease: os.release(), cpus: os.cpus().length,
    memoryBytes: os.totalmem(), agentVersion: TRELLIS_VERSION,
  };
}

export class Agent {
  readonly channel: HubChannel;
  private identity: Identity;
  private renewTimer?: NodeJS.Timeout;
  private readonly running = new Map<string, RunningAction>();
  /** Keep-alive connections of the http runner (closed with the agent). */
  private readonly http = new HttpPool();
  private readonly heldStarted = new Map<string, T.ActionStarted>();
  private startedTimer?: NodeJS.Timeout;
  /** Output chunks held to go with their result (holdOutput), by execution. */
  private readonly heldOutput = new Map<string, { chunks: T.ActionOutput[]; bytes: number }>();
  private outputTimer?: NodeJS.Timeout;
  /** Event ids (pooled randomness: one crypto call per 256 ids, not 16 per id). */
  private readonly newEventId = ulidFactory();
  private closed = false;
  /** Built-in sensors configured by the hub (agent/sensors), imported with the first config that has one. */
  private sensorManager?: SensorManager;
  /** Edge rules (target: local) and their sealed values, kept on disk (agent/edge.ts). */
  readonly edge: EdgeRules;
  /** The tenant the hub named in its welcome. */
  tenant?: string;

  private constructor(private readonly opts: AgentOptions, identity: Identity, readonly addresses: HubAddresses, private readonly managed: boolean, readonly log: Logger, readonly outbox: Outbox) {
    this.identity = identity;
    this.channel = new HubChannel({
      target: addresses.current,
      addresses,
      credentials: () => ({ caPem: this.identity.caPem, keyPem: this.identity.keyPem, certPem: this.identity.certPem }),
      // Labels come from the hub (join token, admins), never from the host: none in hello.
      hello: () => ({ facts: agentFacts(), labels: {} }),
      onAction: (req) => this.onAction(req),
      onCancel: (id) => this.running.get(id)?.cancel(),
      onConfig: (c) => void this.onConfig(c),
      heartbeat: () => this.edge.report(),
      log: log.child({ component: 'channel' }),
      maxBackoffMs: opts.maxBackoffMs,
      outbox,
      diagnose: (err) => this.diagnoseTls(err),
      onSuperseded: () => this.recoverSuperseded(),
    });
    this.edge = new EdgeRules({
      dataDir: opts.dataDir, log: log.child({ component: 'edge' }), privateKey: () => this.privateKey(),
      publish: (evs) => { this.channel.publish(evs); },
      run: (executionId, action, rendered) => {
        const max = this.opts.maxConcurrentActions ?? AGENT_CONCURRENT_ACTIONS;
        if (this.running.size >= max) return Promise.reject(new TrellisError('TRELLIS_E_AGENT_BUSY', `agent busy: ${max} actions already running`));
        this.log.info({ executionId, action: action.ref, runner: rendered.runner }, 'edge action started');
        return runLocal({ executionId, action, rendered, log: this.log.child({ component: 'runner' }), http: this.http, track: (id, h) => { if (h) this.running.set(id, h); else this.running.delete(id); } });
      },
    });
  }

  /**
   * Local events (sensors, or `publishEvent`): edge rules see them first, then they go to the
   * durable outbox and upstream. Returns how many the outbox accepted and refused (when full).
   */
  publishEvent(type: string, payload: Record<string, unknown>, timeMs = Date.now()): { accepted: number; refused: number } {
    return this.publishLocal([{ type, payload, timeMs }]);
  }

  private publishLocal(evs: Array<{ type: string; payload: Record<string, unknown>; timeMs: number }>): { accepted: number; refused: number } {
    const events: T.Event[] = [];
    const triggers: TriggerEvent[] = [];
    const agent = this.agentId ?? this.edge.agentId;
    const tenant = this.tenant ?? this.edge.tenant;
    for (const e of evs) {
      const id = this.newEventId();
      events.push({ id, type: e.type, payloadJson: Buffer.from(JSON.stringify(e.payload)), timeMs: e.timeMs });
      triggers.push({ id, type: e.type, payload: e.payload, agent, tenant, timeMs: e.timeMs });
    }
    try { this.edge.onEvents(triggers); } catch (err) { this.log.error({ err: (err as Error).message }, 'edge rules failed on local events'); }
    return this.channel.publish(events);
  }

  /** Applies the hub's config: sensors, then edge rules (saved with their values still sealed). */
  private async onConfig(c: T.AgentConfig__Output): Promise<void> {
    const problems: string[] = [];
    try {
      if (!this.agentId || !this.tenant) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'config before welcome');
      await this.edge.apply(this.agentId, this.tenant, c);
    } catch (err) {
      problems.push(`edge rules: ${(err as Error).message}`);
    }
    for (const s of await this.applySensors(c.sensors)) problems.push(`sensor ${s.name}: ${s.error}`);
    this.channel.send({ configAck: { version: c.version, error: problems.join('; ').slice(0, 4000) } });
  }

  get certificate(): Identity { return this.identity; }

  /** The running sensors (none until a config names one). */
  get sensors(): { status(): SensorStatus[] } {
    return { status: () => this.sensorManager?.status() ?? [] };
  }

  /** Starts, changes or stops sensors; the sensor code is imported with the first config that has a sensor. */
  private async applySensors(specs: readonly SensorSpecInput[]): Promise<SkippedSensor[]> {
    if (!this.sensorManager) {
      if (specs.length === 0) return [];
      const { SensorManager } = await import('./sensors/index.js');
      if (this.closed) return [];
      this.sensorManager ??= new SensorManager({ log: this.log, emit: (evs) => { this.publishLocal(evs); } });
    }
    return this.sensorManager.apply(specs);
  }

  /** The agent id the hub named in its welcome (from this agent's certificate). */
  agentId?: string;
  private keyCache?: { pem: string; key: KeyObject };

  private privateKey(): KeyObject {
    if (this.keyCache?.pem !== this.identity.keyPem) this.keyCache = { pem: this.identity.keyPem, key: loadPrivateKey(this.identity.keyPem) };
    return this.keyCache.key;
  }

  /** The hub address in use (one of `addresses`). */
  get target(): string { return this.addresses.current; }

  static async start(opts: AgentOptions): Promise<Agent> {
    const log = opts.log ?? createLogger({ name: 'trellis-agent' });
    const paths = agentPaths(opts.dataDir);
    const operator = opts.certFile !== undefined || opts.keyFile !== undefined || opts.caFile !== undefined;
    let hubs: string[];
    let identity: Identity;
    if (operator) {
      if (!opts.certFile || !opts.keyFile || !opts.caFile) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', '--cert, --key and --ca go together');
      if (!opts.hub) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'with --cert/--key/--ca give the hub agent port too: --hub HOST:7443');
      identity = loadIdentity({ key: opts.keyFile, cert: opts.certFile, ca: opts.caFile });
      hubs = parseHubAddresses(opts.hub, 7443);
    } else {
      const state = readState(paths);
      identity = loadIdentity({ key: paths.key, cert: paths.cert, ca: paths.ca }, paths);
      hubs = parseHubAddresses(opts.hub ?? (state.hubs?.length ? state.hubs : state.hub), 7443);
    }
    const addresses = new HubAddresses(hubs);
    if (identity.notAfter.getTime() <= Date.now()) {
      throw new TrellisError('TRELLIS_E_CERT_EXPIRED',
        `the agent certificate expired on ${identity.notAfter.toISOString()}; re-enroll: trellis agent enroll --hub HOST:7444 --token NEW_TOKEN --data ${opts.dataDir} --force`);
    }
    const outbox = await Outbox.open({ dir: join(opts.dataDir, 'outbox'), log: log.child({ component: 'outbox' }), maxEvents: opts.outboxMaxEvents });
    const agent = new Agent(opts, identity, addresses, !operator, log, outbox);
    agent.channel.on('welcome', (w: T.Welcome__Output) => {
      agent.agentId = w.agentId; agent.tenant = w.tenant; void agent.applyBundle(w.caBundle);
      void agent.applyHubAddresses(w.hubAddresses);
    });
    // CA rotation: the trust bundle (old+new, then new only) and, when told, a renewal at the hub's moment.
    agent.channel.on('caBundle', (certs: string[], b: T.CaBundle__Output) => {
      void agent.applyBundle(certs);
      if (b?.renew) agent.renewWithin(Number(b.renewInMs) || 0);
    });
    // The last config from the hub: edge rules and sensors work before (and without) a connection.
    await agent.edge.load();
    for (const s of await agent.applySensors(agent.edge.sensors.map((x) => ({ name: x.name, kind: x.kind, trigger: x.trigger, intervalMs: x.intervalMs, configJson: JSON.stringify(x.config) })))) {
      log.warn({ sensor: s.name, error: s.error }, 'saved sensor not started');
    }
    agent.channel.start();
    agent.scheduleRenewal();
    log.info({ hub: addresses.current, ...(hubs.length > 1 ? { hubs } : {}), serial: identity.serial, notAfter: identity.notAfter.toISOString() }, 'agent started');
    return agent;
  }

  /**
   * The hub's cluster addresses (Welcome): they become the fail-over list (the address in use stays
   * first when the hub does not list it) and are saved in agent.json, so a cluster that grew or
   * moved reaches agents without re-enrolling. Not when `--hub` was given (the operator's list wins)
   * nor for operator-issued identities (no agent.json).
   */
  async applyHubAddresses(list: string[]): Promise<void> {
    if (list.length === 0 || this.opts.hub !== undefined || !this.managed) return;
    let hubs: string[];
    try { hubs = parseHubAddresses(list, 7443, 'the hub\'s cluster addresses'); } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'hub addresses from the hub ignored');
      return;
    }
    const before = this.addresses.all.join(',');
    this.addresses.replace(hubs);
    if (this.addresses.all.join(',') === before) return;
    const paths = agentPaths(this.opts.dataDir);
    try {
      const state = readState(paths);
      await writeState(paths, { ...state, hub: this.addresses.all[0]!, hubs: [...this.addresses.all] });
      this.log.info({ hubs: this.addresses.all }, 'hub addresses updated by the hub');
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'cannot save the hub addresses the hub sent; using them until the agent restarts');
    }
  }

  private onAction(req: T.ActionRequest__Output): void {
    if (this.running.has(req.executionId)) return; // a re-delivered request
    const max = this.opts.maxConcurrentActions ?? AGENT_CONCURRENT_ACTIONS;
    const result = (r: Omit<T.ActionResult, 'executionId'>) => this.channel.send({ result: { executionId: req.executionId, ...r } });
    if (this.running.size >= max) {
      result({ status: 'error', exitCode: -1, error: `agent busy: ${max} actions already running`, startedMs: Date.now(), finishedMs: Date.now() });
      return;
    }
    let seq = 0;
    // Sealed values (env, stdin, HTTP headers) are opened inside startAction, in memory only.
    this.log.info({ executionId: req.executionId, action: req.action, runner: req.runner || 'command', runAs: req.runAs || undefined }, 'action started');
    const handle = startAction(req, {
      output: (stream, data) => {
        this.heldStarted.delete(req.executionId); // output tells the hub it started
        const o: T.ActionOutput = { executionId: req.executionId, stream, data, seq: ++seq };
        if (!this.holdOutput(o)) this.channel.send({ output: o });
      },
      started: (pid) => this.holdStarted({ executionId: req.executionId, startedMs: Date.now(), pid }),
      done: (r) => {
        this.heldStarted.delete(req.executionId); // the result carries startedMs
        this.running.delete(req.executionId);
        this.log.info({ executionId: req.executionId, status: r.status, exitCode: r.exitCode }, 'action finished');
        const held = this.heldOutput.get(req.executionId);
        this.heldOutput.delete(req.executionId);
        result(held ? { ...r, output: held.chunks } : r);
      },
    }, { key: () => this.privateKey(), agentId: this.agentId, log: this.log.child({ component: 'runner' }), http: this.http });
    this.running.set(req.executionId, handle);
  }

  /**
   * `started` reports wait STARTED_HOLD_MS: an action with output or a result by then needs none
   * (the hub takes its first output as the start, and the result carries startedMs), so a quick
   * action costs two messages each way instead of three. Hubs have always accepted output and
   * results without a `started` first. One timer for every report held.
   */
  private holdStarted(m: T.ActionStarted): void {
    this.heldStarted.set(m.executionId!, m);
    this.startedTimer ??= setTimeout(() => {
      this.startedTimer = undefined;
      const held = [...this.heldStarted.values()];
      this.heldStarted.clear();
      for (const s of held) this.channel.send({ started: s });
    }, STARTED_HOLD_MS).unref();
  }

  /**
   * Output is held like `started` (at most STARTED_HOLD_MS or `outputHoldMs`, RESULT_OUTPUT_MAX_BYTES and
   * RESULT_OUTPUT_MAX_CHUNKS per execution) when the hub takes output with a result (feature
   * "result_output"): a quick action's output then rides with its result, one message up
   * instead of one per chunk plus one. True when `o` was held; false when it goes now (the
   * execution's held chunks are sent first, keeping the order).
   */
  private holdOutput(o: T.ActionOutput): boolean {
    const id = o.executionId!;
    const held = this.heldOutput.get(id);
    const size = (o.data as Buffer).length;
    if (this.channel.hubHas(RESULT_OUTPUT) && (held?.bytes ?? 0) + size <= RESULT_OUTPUT_MAX_BYTES && (held?.chunks.length ?? 0) < RESULT_OUTPUT_MAX_CHUNKS) {
      if (held) { held.chunks.push(o); held.bytes += size; } else this.heldOutput.set(id, { chunks: [o], bytes: size });
      this.outputTimer ??= setTimeout(() => this.sendHeldOutput(), this.opts.outputHoldMs ?? STARTED_HOLD_MS).unref();
      return true;
    }
    if (held) {
      this.heldOutput.delete(id);
      for (const c of held.chunks) this.channel.send({ output: c });
    }
    return false;
  }

  /** Every held output chunk goes (the hold expired: the actions are still running). */
  private sendHeldOutput(): void {
    this.outputTimer = undefined;
    const held = [...this.heldOutput.values()];
    this.heldOutput.clear();
    for (const h of held) for (const c of h.chunks) this.channel.send({ output: c });
  }

  private bundleWrite: Promise<void> = Promise.resolve();
  /** A renewal the hub ordered (CA rotation), as a time; cleared by the next successful renewal. */
  private rotationRenewAt: number | undefined;
  private renewing = false;

  /**
   * Keeps the trust bundle the hub sends (over a connection it verified): DATA/ca.pem is replaced
   * atomically and the next connection uses it. Operator-managed identities (--ca) are left alone.
   */
  applyBundle(certs: string[]): Promise<void> {
    if (!this.managed || certs.length === 0) return this.bundleWrite;
    const pem = certs.map((c) => (c.endsWith('\n') ? c : c + '\n')).join('');
    this.bundleWrite = this.bundleWrite.then(async () => {
      if (pem === this.identity.caPem) return;
      try {
        for (const c of certs) if (!certInfo(c).isCA) throw new Error('a certificate in the bundle is not a CA');
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, 'trust bundle from the hub ignored');
        return;
      }
      await atomicWriteFile(agentPaths(this.opts.dataDir).ca, pem, { mode: 0o600 }); // like every identity file (identity.ts)
      this.identity = { ...this.identity, caPem: pem };
      this.log.info({ cas: certs.map((c) => fingerprintSha256(c).slice(0, 16)) }, 'trust bundle updated by the hub');
    }).catch((err) => { this.log.error({ err: (err as Error).message }, 'cannot save the trust bundle'); });
    return this.bundleWrite;
  }

  /** The hub asked for a renewal (CA rotation) within `ms`. */
  renewWithin(ms: number): void {
    if (!this.managed || this.closed) return;
    const at = Date.now() + Math.max(0, ms);
    if (this.rotationRenewAt !== undefined && this.rotationRenewAt <= at) return;
    this.rotationRenewAt = at;
    this.log.info({ inMs: Math.max(0, ms) }, 'the hub asked for a certificate renewal (CA rotation)');
    if (!this.renewing) this.scheduleRenewal();
  }

  /**
   * Explains a TLS failure: the agent's certificate is from a CA its bundle no longer holds, or the
   * hub presents a CA the bundle does not trust (a CA rotation committed while it was offline).
   */
  private async diagnoseTls(err: Error): Promise<Error | undefined> {
    let enrollHub = 'HOST:7444';
    try { enrollHub = readState(agentPaths(this.opts.dataDir)).enrollHub || enrollHub; } catch { /* operator identity */ }
    const fix = this.managed
      ? `re-enroll: trellis agent enroll --hub ${enrollHub} --token NEW_TOKEN --data ${this.opts.dataDir} --force (create the token with \`trellis tokens create\`)`
      : 'give the agent a certificate from the hub\'s new CA and its CA bundle (--cert, --key, --ca)';
    const bundle = splitPemBundle(this.identity.caPem);
    const leaf = splitPemBundle(this.identity.certPem)[0]!;
    if (!bundle.some((b) => verifyIssuedBy(leaf, b)) && bundle.length > 0) {
      return new TrellisError('TRELLIS_E_CA_ROTATED', `the hub's CA was rotated before this agent renewed: its certificate (serial ${this.identity.serial}) is from a CA the hub no longer trusts; ${fix}`);
    }
    const { host, port } = parseHostPort(this.target, 7443);
    // Hub down, DNS, no answer, the admin port, a certificate that does not name the address, or an untrusted CA.
    return diagnoseConnection(err, {
      host, port, expect: 'agent', caPem: this.identity.caPem, trustedBy: 'this agent',
      untrusted: (servedCa, fps) => new TrellisError('TRELLIS_E_CA_ROTATED',
        `the hub at ${this.target} presents a certificate from CA sha256 ${servedCa.slice(0, 16)}… that this agent does not trust (it trusts ${fps.map((f) => f.slice(0, 16) + '…').join(', ')}): most likely the hub's CA was rotated (committed) while this agent was offline; ${fix}. If no rotation happened, check that ${this.target} is the hub`),
    });
  }

  /** Renew at about two thirds of the certificate's life (only for identities the hub issued), or when the hub asked. */
  private scheduleRenewal(): void {
    clearTimeout(this.renewTimer);
    if (!this.managed || this.closed) return;
    const at = renewalTime(this.identity, this.opts.renewAt ?? DEFAULT_RENEW_AT, this.rotationRenewAt);
    const delay = Math.max(0, at - Date.now());
    this.log.debug({ serial: this.identity.serial, at: new Date(at).toISOString() }, 'certificate renewal scheduled');
    this.renewTimer = setTimeout(() => {
      if (delay > 2 ** 31 - 1) return this.scheduleRenewal(); // long timers are re-armed in steps
      this.log.debug({ serial: this.identity.serial }, 'certificate renewal due');
      this.renew().catch((err) => {
        // A renewal the hub ordered (CA rotation) is retried sooner: the rotation waits for it.
        const retryMs = this.rotationRenewAt !== undefined ? 5_000 + Math.floor(Math.random() * 5_000) : 60_000;
        this.log.error({ err: (err as Error).message, retryInMs: retryMs }, 'certificate renewal failed; retrying');
        this.renewTimer = setTimeout(() => this.scheduleRenewal(), retryMs);
        this.renewTimer.unref();
      });
    }, Math.min(delay, 2 ** 31 - 1));
    this.renewTimer.unref();
  }

  /** New key, CSR over the channel, atomic switch of files, then a make-before-break reconnect. */
  private renewInFlight: Promise<void> | undefined;

  async renew(): Promise<void> {
    if (this.renewInFlight) return this.renewInFlight;
    this.renewing = true;
    this.renewInFlight = this.renewOnce().finally(() => { this.renewing = false; this.renewInFlight = undefined; });
    return this.renewInFlight;
  }

  /** The hub refused our certificate as replaced by a renewal we never got the answer to: renew again with it. */
  private async recoverSuperseded(): Promise<boolean> {
    if (!this.managed || this.closed) return false;
    const serial = this.identity.serial;
    await this.renewInFlight?.catch(() => undefined);
    if (this.identity.serial !== serial) return true;
    try { await this.renew(); } catch { return false; }
    return this.identity.serial !== serial;
  }

  /** After a renewal whose make-before-break switch failed (hub unreachable): retry it while the old stream lives. */
  private async retrySwitch(): Promise<void> {
    for (let i = 0; i < 60 && !this.closed; i++) {
      await new Promise((r) => setTimeout(r, 2_000 + Math.floor(Math.random() * 3_000)).unref());
      const cur = this.channel.connectedCert;
      if (cur === undefined || cur === this.identity.certPem) return; // reconnecting anyway, or switched
      try { await this.channel.reconnectWithNewCredentials(); return; } catch { /* the hub is still away */ }
    }
  }

  private async renewOnce(): Promise<void> {
    const ordered = this.rotationRenewAt;
    const key = generateKey('ec-p256');
    const csr = createCSR({ privateKey: key.privateKey, subject: { commonName: os.hostname() } });
    const res = await this.channel.renew(csr);
    if (!keyMatchesCert(key.privateKey, res.certificate)) throw new TrellisError('TRELLIS_E_CERT_INVALID', 'renewed certificate does not match the new key');
    const caPem = res.caBundle.length > 0 ? res.caBundle.join('') : this.identity.caPem;
    await saveIdentity(agentPaths(this.opts.dataDir), { keyPem: key.privateKeyPem, certPem: res.certificate, caPem });
    const info = certInfo(res.certificate);
    this.identity = { keyPem: key.privateKeyPem, certPem: res.certificate, caPem, serial: info.serialHex, notBefore: info.notBefore, notAfter: info.notAfter };
    this.log.info({ serial: info.serialHex, notAfter: info.notAfter.toISOString() }, 'certificate renewed');
    if (this.rotationRenewAt === ordered) this.rotationRenewAt = undefined; // a later order (rollback) still stands
    try {
      await this.channel.reconnectWithNewCredentials();
    } catch (err) {
      // The new certificate is saved: the channel uses it for every new connection; the live stream is switched later.
      this.log.warn({ err: (err as Error).message }, 'renewed, but cannot switch the stream to the new certificate yet; retrying');
      void this.retrySwitch();
    }
    this.scheduleRenewal();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.renewTimer);
    await this.sensorManager?.close();
    for (const r of this.running.values()) r.cancel();
    this.http.close();
    clearTimeout(this.startedTimer);
    clearTimeout(this.outputTimer);
    this.sendHeldOutput();
    await this.channel.close();
    await this.outbox.close();
    this.log.info('agent stopped');
  }

  async [Symbol.asyncDispose](): Promise<void> { await this.close(); }
}
