/**
 * Hub configuration, loaded in stages: defaults → DATA/hub.json → environment → flags,
 * validated once with a schema that rejects unknown keys by name, then frozen.
 */
import { readFileSync, existsSync } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import { z } from 'zod';
import { TrellisError } from '../common/errors.js';
import { parseDuration } from '../common/duration.js';
import { LOG_FORMATS, LOG_TIMES } from '../common/log.js';
import { parseCidr } from '../common/cidr.js';
import { AGENT_CONCURRENT_ACTIONS } from '../common/automation/request.js';

const duration = z.union([z.number().int().positive(), z.string()]).transform((v, ctx) => {
  try { return typeof v === 'number' ? v : parseDuration(v); } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message });
    return z.NEVER;
  }
});
const port = z.number().int().min(0).max(65535);

/** A backend name: it becomes the `source` of the users it creates. */
const backendName = z.string().regex(/^[a-z][a-z0-9-]{0,31}$/, 'lowercase letters, digits and dashes').refine((n) => n !== 'local', 'the name "local" is reserved for the local backend');

/** Local users: scrypt hashes in the hub's store. */
const LocalBackendSchema = z.strictObject({ type: z.literal('local') });

/**
 * An LDAP directory: bind as the service account, find the user under `userBase`, bind as the
 * user's DN with the password, then read the user's groups. The bind password never sits in
 * hub.json: give `bindPasswordFile` (mode 0600) or `bindPasswordEnv`.
 * @example { "type": "ldap", "url": "ldaps://ldap.example:636", "caFile": "/etc/trellis/ldap-ca.pem",
 *   "bindDn": "cn=trellis,ou=services,dc=example", "bindPasswordFile": "/etc/trellis/ldap.pw",
 *   "userBase": "ou=people,dc=example", "groupBase": "ou=groups,dc=example" }
 */
const LdapBackendSchema = z.strictObject({
  type: z.literal('ldap'),
  /** Backend name, and the `source` of the users it creates. @default "ldap" */
  name: backendName.default('ldap'),
  /** `ldap://host[:port]` or `ldaps://host[:port]`. */
  url: z.string().regex(/^ldaps?:\/\/[^\s/?#]+\/?$/i, 'ldap://host[:port] or ldaps://host[:port]'),
  /** Upgrade an ldap:// connection with StartTLS before binding. @default false */
  startTls: z.boolean().default(false),
  /** PEM file of the CA(s) to trust for the directory's TLS certificate. @default the system CAs */
  caFile: z.string().refine(isAbsolute, 'an absolute path').optional(),
  /** DN of the service account used to search users and groups. */
  bindDn: z.string().min(1).max(1024),
  /** File holding the service account's password (mode 0600). */
  bindPasswordFile: z.string().refine(isAbsolute, 'an absolute path').optional(),
  /** Name of an environment variable holding the service account's password. */
  bindPasswordEnv: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'an environment variable name').optional(),
  /** Where users are searched (whole subtree). */
  userBase: z.string().min(1).max(1024),
  /** Filter finding one user; `{username}` is replaced by the name, escaped per RFC 4515. @default "(uid={username})" */
  userFilter: z.string().includes('{username}', { message: 'must contain {username}' }).default('(uid={username})'),
  /** Where groups are searched; without it no groups are read. */
  groupBase: z.string().min(1).max(1024).optional(),
  /** Filter finding the user's groups; `{dn}` and `{username}` are replaced, escaped. @default "(|(member={dn})(memberUid={username}))" */
  groupFilter: z.string().default('(|(member={dn})(memberUid={username}))'),
  /** Attribute holding a group's name, matched against a Trellis group's ldapGroups. @default "cn" */
  groupNameAttribute: z.string().regex(/^[A-Za-z][A-Za-z0-9-]*$/, 'an attribute name').default('cn'),
  /** Deadline of each connection and operation, in ms. @default 5000 */
  timeoutMs: z.number().int().min(100).max(120_000).default(5000),
}).superRefine((v, ctx) => {
  if (!v.bindPasswordFile === !v.bindPasswordEnv) ctx.addIssue({ code: 'custom', path: ['bindPasswordFile'], message: 'give exactly one of bindPasswordFile or bindPasswordEnv (never the password itself)' });
  if (v.startTls && /^ldaps:/i.test(v.url)) ctx.addIssue({ code: 'custom', path: ['startTls'], message: 'startTls is for ldap:// URLs; ldaps:// is TLS already' });
});

/**
 * A JavaScript module of your own exporting
 * `authenticate(username, password) => Promise<{ ok: true, groups?: string[] } | { ok: false, reason?: 'unknown-user' | 'bad-password' }>`.
 */
const ModuleBackendSchema = z.strictObject({
  type: z.literal('module'),
  /** Absolute path of the module (.js or .mjs, ESM). */
  path: z.string().refine(isAbsolute, 'an absolute path'),
  /** Backend name, and the `source` of the users it creates. @default "module" */
  name: backendName.default('module'),
  /** Deadline of one call of `authenticate`, in ms. @default 5000 */
  timeoutMs: z.number().int().min(100).max(120_000).default(5000),
});

export const AuthBackendSchema = z.discriminatedUnion('type', [LocalBackendSchema, LdapBackendSchema, ModuleBackendSchema]);
export type AuthBackendConfig = z.output<typeof AuthBackendSchema>;

const AuthSchema = z.strictObject({
  /** Backends tried in order; the first that knows the user decides. @default [{ "type": "local" }] */
  backends: z.array(AuthBackendSchema).min(1).max(16).prefault([{ type: 'local' }]).refine(
    (bs) => new Set(bs.map((b) => (b.type === 'local' ? 'local' : b.name))).size === bs.length, 'backend names must be unique (give each a `name`)'),
  /**
   * Failed logins lock a name (a user, or a name that is not one) *from one source address* for a
   * while: failing logins for `admin` from one address does not lock the admin out of another.
   * Lock-outs are kept in memory: a hub restart clears them, as does `trellis users unlock NAME`.
   */
  lockout: z.strictObject({
    /** Failures for one name from one address inside the window that lock the name at that address. @default 5 */
    maxFailures: z.number().int().min(1).max(1000).default(5),
    /** The window failures are counted in. @default "15m" */
    window: duration.default(15 * 60_000),
    /** How long the name stays locked at that address. @default "15m" */
    duration: duration.default(15 * 60_000),
  }).prefault({}).transform((l) => ({ maxFailures: l.maxFailures, windowMs: l.window, durationMs: l.duration })),
  /**
   * What logins may cost, checked before any password is: past a limit a login is refused at once
   * with TRELLIS_E_RATE_LIMITED (gRPC RESOURCE_EXHAUSTED), costing no KDF time. An IPv6 source
   * counts by its /64.
   * @example { "concurrent": 4, "concurrentPerAddress": 2, "failuresPerAddress": 20, "failureWindow": "5m", "refusalDelay": "1s" }
   */
  limits: z.strictObject({
    /** Password checks in progress at once, in all. @default 4 */
    concurrent: z.number().int().min(1).max(1024).default(4),
    /** Password checks in progress at once from one source address. @default 2 */
    concurrentPerAddress: z.number().int().min(1).max(1024).default(2),
    /** Failed logins from one source address (any names) inside `failureWindow` after which the address is refused until they age out. @default 20 */
    failuresPerAddress: z.number().int().min(1).max(1_000_000).default(20),
    /** The window failures per address are counted in. @default "5m" */
    failureWindow: duration.default(5 * 60_000),
    /** A refused login is answered after this long ("0ms": at once), so a client waiting for answers gets a few refusals a second, not thousands. @default "1s" */
    refusalDelay: duration.default(1000),
  }).prefault({}).transform((l) => ({
    concurrent: l.concurrent, concurrentPerAddress: l.concurrentPerAddress, failuresPerAddress: l.failuresPerAddress, failureWindowMs: l.failureWindow, refusalDelayMs: l.refusalDelay,
  })),
  /**
   * Threads the password KDF (scrypt, ~32 MiB and ~50-100 ms a check) runs on. They are the hub's
   * own, apart from libuv's threadpool that file I/O uses, so a login burst never stalls disk
   * writes; they also bound the CPU logins take. @default 1
   */
  kdfWorkers: z.number().int().min(1).max(16).default(1),
});

/**
 * Calls on the admin port whose credentials are not verified yet: Login, Enroll, GetVersion, and
 * any call with a missing or bad credential (the credential is checked before the request body
 * is read). Past a limit the call is refused at once with TRELLIS_E_RATE_LIMITED (gRPC
 * RESOURCE_EXHAUSTED).
 * @example { "maxMessageBytes": 65536, "maxCalls": 128, "maxCallsPerAddress": 16, "requestTimeout": "10s" }
 */
const PreAuthSchema = z.strictObject({
  /** Largest message such a call may send, in bytes (a verified call: `maxMessageBytes`). A bigger one is refused from its length prefix, never buffered. @default 65536 */
  maxMessageBytes: z.number().int().min(1024).max(64 * 1024 * 1024).default(64 * 1024),
  /** Such calls in progress at once, in all. @default 128 */
  maxCalls: z.number().int().min(1).max(100_000).default(128),
  /** Such calls in progress at once from one source address (IPv6: its /64). @default 16 */
  maxCallsPerAddress: z.number().int().min(1).max(100_000).default(16),
  /** Time such a call has to send its request; then it ends with DEADLINE_EXCEEDED. @default "10s" */
  requestTimeout: duration.default(10_000),
});

/**
 * Executions (hub/executions): how many run at once per agent, how long they wait, and how much
 * history is kept (DATA/executions/, whole segments dropped by age and count).
 * @example { "perAgentConcurrency": 4, "retention": { "maxAge": "14d", "maxCount": 50000 } }
 */
const ExecutionsSchema = z.strictObject({
  /** Executions scheduled or running on one agent at once (the agent's own limit); more wait `requested` in a FIFO queue. @default 16 */
  perAgentConcurrency: z.number().int().min(1).max(1024).default(AGENT_CONCURRENT_ACTIONS),
  /** How long a `requested` execution waits for its agent to connect or for a free slot; then it ends with status error. @default "10m" */
  maxWait: duration.default(10 * 60_000),
  /** An execution sent to an agent that reports no result within the action's timeout plus this is `abandoned`. @default "30s" */
  abandonGrace: duration.default(30_000),
  /** An agent that disconnects with executions in flight has this long to come back and report them; then they are `abandoned`. @default "60s" */
  reconnectGrace: duration.default(60_000),
  /**
   * Output kept in history per execution, in bytes (more is streamed live but not kept; the
   * record says output_truncated). At most 3 MiB: `executions show` gets it in one message.
   * @default 1048576
   */
  maxOutputBytes: z.number().int().min(0).max(3 * 1024 * 1024).default(1024 * 1024),
  /** History retention: whole old segments are dropped past either limit. @default { "maxAge": "30d", "maxCount": 100000 } */
  retention: z.strictObject({
    /** Drop history segments last written longer ago than this. @default "30d" */
    maxAge: duration.default(30 * 86_400_000),
    /** Keep about this many executions (the oldest segments go first). The hub sizes its execution indexes for this many and a tenth more at start (at most 262,144; memory is used as they fill). @default 100000 */
    maxCount: z.number().int().min(1).max(100_000_000).default(100_000),
  }).prefault({}),
});

/**
 * The audit log (DATA/audit/): append-only segment files; retention drops whole old segments,
 * never the one being written. On a PostgreSQL store the log is the table trellis_audit, shared by
 * every hub: retention deletes rows older than maxAge and the oldest beyond
 * maxSegments × maxSegmentBytes bytes (records counted as JSON lines), its only DELETE.
 * @example { "retention": { "maxAge": "365d", "maxSegments": 50, "maxSegmentBytes": 16777216 } }
 */
const AuditSchema = z.strictObject({
  /** What is kept: segments past either limit go, oldest first. @default { "maxAge": "90d", "maxSegments": 20, "maxSegmentBytes": 16777216 } */
  retention: z.strictObject({
    /** Drop audit segments last written longer ago than this. At least 1h. @default "90d" */
    maxAge: duration.default(90 * 86_400_000).refine((ms) => ms >= 3_600_000, 'at least 1h'),
    /** Keep at most this many segments, the current one included (the log holds at most maxSegments × maxSegmentBytes). @default 20 */
    maxSegments: z.number().int().min(2).max(100_000).default(20),
    /** Start a new segment once the current one is this large, in bytes (1 MiB..1 GiB). @default 16777216 */
    maxSegmentBytes: z.number().int().min(1024 * 1024).max(1024 * 1024 * 1024).default(16 * 1024 * 1024),
  }).prefault({}),
});

/** An address range in CIDR notation (IPv4 or IPv6), e.g. "10.0.0.0/8", "::1/128". */
const cidr = z.string().max(64).refine((v) => parseCidr(v) !== undefined, 'an address range in CIDR notation, e.g. "127.0.0.1/32" or "10.0.0.0/8"');

/**
 * `GET /metrics` on the web port (Prometheus text format): callers present an API key holding
 * `metrics:read` (`Authorization: Bearer <key>`), or come from an address in `allow`.
 * @example { "allow": ["127.0.0.1/32", "10.0.0.0/8"] }
 */
const MetricsSchema = z.strictObject({
  /** Client address ranges (CIDR) that may read /metrics without a key (a Prometheus server's). @default [] */
  allow: z.array(cidr).max(256).default([]),
});

/**
 * Web port limits: live streams (`/stream`) and connections.
 * @example { "maxStreamsPerUser": 4, "maxConnectionsPerClient": 32 }
 */
const WebSchema = z.strictObject({
  /** Live streams open at once on the hub; more are refused with 503. @default 1000 */
  maxStreams: z.number().int().min(1).max(100_000).default(1000),
  /** Live streams of one user at once (all their login sessions and API keys); more are refused with 429. @default 8 */
  maxStreamsPerUser: z.number().int().min(1).max(10_000).default(8),
  /** Open connections from one source address (streams, webhook calls); more are closed at once. @default 64 */
  maxConnectionsPerClient: z.number().int().min(1).max(100_000).default(64),
  /** A TLS handshake must finish within this. @default "10s" */
  handshakeTimeout: duration.default(10_000),
  /** Request headers must arrive within this. @default "10s" */
  headersTimeout: duration.default(10_000),
  /** A whole request (headers and body) must arrive within this. @default "30s" */
  requestTimeout: duration.default(30_000),
  /** Serve the web console at https://HUB:WEBPORT/console/ (false: /console/ answers 404). @default true */
  console: z.boolean().default(true),
});

/**
 * The agent port under load: how many streams are admitted at once (the rest are shed with
 * RESOURCE_EXHAUSTED and a retry-after the agents honor, jittered), the hello deadline, and the
 * keepalive the hub runs on agent connections.
 * @example { "maxHandshakes": 512, "maxHandshakesPerAddress": 64, "maxPendingHellos": 256, "retryAfter": "2s", "helloTimeout": "10s", "keepaliveTime": "60s", "keepaliveTimeout": "20s" }
 */
const AgentChannelSchema = z.strictObject({
  /**
   * Agent connections handed to TLS at once: from TCP accept until their first stream is answered
   * (welcome or refusal). More wait (unread, in arrival order) instead of all handshaking at once on
   * the hub's one thread and missing their deadlines together. 1..10000. @default 512
   */
  maxHandshakes: z.number().int().min(1).max(10_000).default(512),
  /**
   * Agent-port connections from one source address (an IPv4 address, or an IPv6 /64) queued or in
   * their TLS handshake at once; more from that address are closed at once (counted in
   * trellis_agent_connections_closed_total{reason="per_address"}, logged once a minute per address),
   * so one client holding silent connections cannot take the slots of every other agent. A fleet
   * behind one NAT address reconnecting at once is let in that many at a time: raise it for such
   * a fleet. 1..1000000. @default 64
   */
  maxHandshakesPerAddress: z.number().int().min(1).max(1_000_000).default(64),
  /** Connections waiting for a handshake slot; past this a new connection is closed at once (its agent retries after its jittered backoff). 0..1000000. @default 20000 */
  maxQueuedHandshakes: z.number().int().min(0).max(1_000_000).default(20_000),
  /** A connection waiting longer than this for a handshake slot is closed (its agent retries after its backoff; agents set no connect deadline, so a long wait costs them nothing). 1s..5m. @default "60s" */
  handshakeQueueTimeout: duration.default(60_000).refine((ms) => ms >= 1_000 && ms <= 300_000, 'between 1s and 5m'),
  /** Agent streams being admitted at once (accepted, hello not yet answered); more are refused at once with RESOURCE_EXHAUSTED and a retry-after. @default 256 */
  maxPendingHellos: z.number().int().min(1).max(100_000).default(256),
  /** The retry-after a shed stream is given; the agent waits that plus up to as much again at random. 100ms..5m. @default "2s" */
  retryAfter: duration.default(2_000).refine((ms) => ms >= 100 && ms <= 300_000, 'between 100ms and 5m'),
  /** An admitted stream must send its hello within this (counted from admission, not from the TLS handshake; the hub's own slowness after the hello is not counted). 1s..5m. @default "10s" */
  helloTimeout: duration.default(10_000).refine((ms) => ms >= 1_000 && ms <= 300_000, 'between 1s and 5m'),
  /** The hub pings an agent connection silent for this long. 10s..2h. @default "60s" */
  keepaliveTime: duration.default(60_000).refine((ms) => ms >= 10_000 && ms <= 7_200_000, 'between 10s and 2h'),
  /** ...and drops it when the ping is not answered within this. A busy hub (GC, a storm) must not read as a dead agent: 5s..5m. @default "20s" */
  keepaliveTimeout: duration.default(20_000).refine((ms) => ms >= 5_000 && ms <= 300_000, 'between 5s and 5m'),
});

/**
 * Where the hub keeps its state. `lowdb` (the default): one JSON file in the data directory
 * (state.json). `postgres`: a PostgreSQL database several hubs can share; create the database,
 * then run `trellis hub migrate`. A password in `url` is a secret: prefer `passwordFile` (mode
 * 0600) or `passwordEnv`; it is never logged or echoed in an error.
 * @example { "kind": "postgres", "url": "postgres://trellis@db.example:5432/trellis", "passwordFile": "/etc/trellis/db.pw",
 *   "ssl": { "mode": "verify-full", "caFile": "/etc/trellis/db-ca.pem" }, "poolSize": 10 }
 */
const StoreSchema = z.discriminatedUnion('kind', [
  z.strictObject({ kind: z.literal('lowdb') }),
  z.strictObject({
    kind: z.literal('postgres'),
    /** `postgres://USER@HOST[:PORT]/DATABASE` (a Unix socket: `postgres://USER@/DATABASE?host=/run/postgresql`). */
    url: z.string().regex(/^postgres(ql)?:\/\/\S+$/i, 'postgres://USER@HOST[:PORT]/DATABASE'),
    /** File holding the database password (mode 0600); overrides a password in the URL. */
    passwordFile: z.string().refine(isAbsolute, 'an absolute path').optional(),
    /** Name of an environment variable holding the database password. */
    passwordEnv: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'an environment variable name').optional(),
    /**
     * TLS to the database. `verify-full`: the server certificate must chain to `caFile` (else the
     * system CAs) and name the host; `require`: encrypted, the certificate is not checked;
     * `disable`: plain TCP. `certFile` + `keyFile`: a client certificate.
     * @default { "mode": "verify-full" }, but "disable" for a loopback host or a Unix socket
     */
    ssl: z.strictObject({
      mode: z.enum(['disable', 'require', 'verify-full']).optional(),
      caFile: z.string().refine(isAbsolute, 'an absolute path').optional(),
      certFile: z.string().refine(isAbsolute, 'an absolute path').optional(),
      keyFile: z.string().refine(isAbsolute, 'an absolute path').optional(),
    }).optional(),
    /** Database connections the hub keeps open for its writes (plus one for LISTEN). @default 10 */
    poolSize: z.number().int().min(1).max(200).default(10),
    /** Longest one statement may run. @default "10s" */
    statementTimeout: duration.default(10_000),
    /** Longest a new connection may take. @default "5s" */
    connectTimeout: duration.default(5_000),
  }).superRefine((v, ctx) => {
    if (v.passwordFile && v.passwordEnv) ctx.addIssue({ code: 'custom', path: ['passwordFile'], message: 'give at most one of passwordFile and passwordEnv' });
  }),
]);
export type StoreConfig = z.output<typeof StoreSchema>;

/** `HOST:PORT` (an IPv6 host in brackets). */
const hostPort = z.string().max(300).regex(/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+):\d{1,5}$/, 'HOST:PORT')
  .refine((s) => { const p = Number(s.slice(s.lastIndexOf(':') + 1)); return p > 0 && p < 65536; }, 'a port from 1 to 65535');

/** Several hubs on one PostgreSQL store (cluster). */
const ClusterSchema = z.strictObject({
  /** Agent ports (HOST:PORT) of every hub, given to agents at enrollment; they fail over in this order. @default [] (this hub only) */
  addresses: z.array(hostPort).max(16).default([]),
  /** How often this hub records itself in the hubs registry (`trellis cluster status`). @default "5s" */
  heartbeatInterval: duration.default(5_000),
  /** A hub whose last heartbeat is older than this is shown stale. @default "20s" */
  staleAfter: duration.default(20_000),
});

export const HubConfigSchema = z.strictObject({
  /** Every DNS name and IP address agents and admins use to reach the hub (subjectAltName). */
  names: z.array(z.string().min(1).max(253)).min(1),
  /** SPIFFE trust domain named in agent certificates. @default "trellis.local" */
  trustDomain: z.string().regex(/^[a-z0-9.-]{1,255}$/, 'lowercase letters, digits, dots and dashes').default('trellis.local'),
  /** Address every listener binds to. @default "0.0.0.0" */
  bind: z.string().default('0.0.0.0'),
  /** Agent port: mTLS, client certificate required. @default 7443 */
  agentPort: port.default(7443),
  /** Admin port: server TLS; admin API, Enroll and Version. @default 7444 */
  adminPort: port.default(7444),
  /** Web port: webhooks and the live event stream (HTTPS). @default 7445 */
  webPort: port.default(7445),
  /** Lifetime of agent certificates. @default "7d" */
  agentCertTtl: duration.default(7 * 86_400_000),
  /**
   * Certificate renewals one agent may make per window; more are refused with
   * RESOURCE_EXHAUSTED (TRELLIS_E_RATE_LIMITED) and audited. The limit in force is never below
   * three times what `agentCertTtl` needs (agents renew at about 2/3 of the lifetime).
   * @default { "max": 10, "window": "1h" }
   */
  agentRenewLimit: z.strictObject({
    /** Renewals per agent per window. @default 10 */
    max: z.number().int().min(1).max(100_000).default(10),
    /** The sliding window. @default "1h" */
    window: duration.default(3_600_000),
  }).prefault({}),
  /** Lifetime of login tokens. @default "24h" */
  sessionTtl: duration.default(86_400_000),
  /** How often agents send a heartbeat. @default "10s" */
  heartbeatInterval: duration.default(10_000),
  /** An agent silent for this long is shown offline. @default "30s" */
  heartbeatTtl: duration.default(30_000),
  /** Default lifetime of join tokens. @default "15m" */
  joinTokenTtl: duration.default(15 * 60_000),
  /** Longest lifetime a join token may be given (`tokens create --ttl`); longer asks are refused. At most 365d. @default "7d" */
  joinTokenMaxTtl: duration.default(7 * 86_400_000),
  /** Largest gRPC message accepted from an agent or an authenticated admin call, in bytes (pack installs are the largest); see `preAuth` for the rest. @default 4194304 */
  maxMessageBytes: z.number().int().min(1024).max(64 * 1024 * 1024).default(4 * 1024 * 1024),
  /** pino level. @default "info" */
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** Log lines: `json` (one object per line) or `pretty` (one readable line each, for a terminal). @default "json" */
  logFormat: z.enum(LOG_FORMATS).default('json'),
  /** `time` of a JSON log line: `epoch` (milliseconds) or `iso` (ISO 8601, UTC). @default "epoch" */
  logTime: z.enum(LOG_TIMES).default('epoch'),
  /** Login backends, lock-out, login limits and the KDF's threads. @default { "backends": [{ "type": "local" }], "lockout": { "maxFailures": 5, "window": "15m", "duration": "15m" }, "limits": { "concurrent": 4, "concurrentPerAddress": 2, "failuresPerAddress": 20, "failureWindow": "5m", "refusalDelay": "1s" }, "kdfWorkers": 1 } */
  auth: AuthSchema.prefault({}),
  /** Limits on admin-port calls before their credentials are verified. @default { "maxMessageBytes": 65536, "maxCalls": 128, "maxCallsPerAddress": 16, "requestTimeout": "10s" } */
  preAuth: PreAuthSchema.prefault({}),
  /** Executions: per-agent concurrency, waits and history retention. @default { "perAgentConcurrency": 16, "maxWait": "10m", "abandonGrace": "30s", "reconnectGrace": "60s", "maxOutputBytes": 1048576, "retention": { "maxAge": "30d", "maxCount": 100000 } } */
  executions: ExecutionsSchema.prefault({}),
  /** Agent port under load: handshake bound, admission bound, retry-after, hello deadline, keepalive. @default { "maxHandshakes": 512, "maxHandshakesPerAddress": 64, "maxQueuedHandshakes": 20000, "handshakeQueueTimeout": "60s", "maxPendingHellos": 256, "retryAfter": "2s", "helloTimeout": "10s", "keepaliveTime": "60s", "keepaliveTimeout": "20s" } */
  agentChannel: AgentChannelSchema.prefault({}),
  /** Web port limits. @default { "maxStreams": 1000, "maxStreamsPerUser": 8, "maxConnectionsPerClient": 64, "handshakeTimeout": "10s", "headersTimeout": "10s", "requestTimeout": "30s", "console": true } */
  web: WebSchema.prefault({}),
  /** Audit log retention. @default { "retention": { "maxAge": "90d", "maxSegments": 20, "maxSegmentBytes": 16777216 } } */
  audit: AuditSchema.prefault({}),
  /** Who may read `GET /metrics` without an API key. @default { "allow": [] } */
  metrics: MetricsSchema.prefault({}),
  /** Where the state lives: `{ "kind": "lowdb" }` (state.json in the data directory) or `{ "kind": "postgres", "url": ... }` (see StoreSchema). @default { "kind": "lowdb" } */
  store: StoreSchema.default({ kind: 'lowdb' }),
  /** Several hubs on one PostgreSQL store: the addresses agents get, the hubs registry's heartbeat. @default { "addresses": [], "heartbeatInterval": "5s", "staleAfter": "20s" } */
  cluster: ClusterSchema.prefault({}),
}).superRefine((c, ctx) => {
  // Caught at start-up, not by every `tokens create` later.
  const maxMs = 365 * 86_400_000;
  if (typeof c.joinTokenMaxTtl === 'number' && c.joinTokenMaxTtl > maxMs) ctx.addIssue({ code: 'custom', path: ['joinTokenMaxTtl'], message: 'at most 365d' });
  else if (typeof c.joinTokenTtl === 'number' && typeof c.joinTokenMaxTtl === 'number' && c.joinTokenTtl > c.joinTokenMaxTtl) {
    ctx.addIssue({ code: 'custom', path: ['joinTokenTtl'], message: 'the default join-token lifetime is longer than joinTokenMaxTtl' });
  }
});

export type HubConfigInput = z.input<typeof HubConfigSchema>;
export type HubConfig = Readonly<z.output<typeof HubConfigSchema>>;

export const CONFIG_FILE = 'hub.json';

/** Environment variables that override file values. */
const ENV: Record<string, keyof HubConfigInput> = {
  TRELLIS_HUB_BIND: 'bind',
  TRELLIS_HUB_AGENT_PORT: 'agentPort',
  TRELLIS_HUB_ADMIN_PORT: 'adminPort',
  TRELLIS_HUB_WEB_PORT: 'webPort',
  TRELLIS_LOG_LEVEL: 'logLevel',
  TRELLIS_LOG_FORMAT: 'logFormat',
  TRELLIS_LOG_TIME: 'logTime',
};
const NUMERIC = new Set(['agentPort', 'adminPort', 'webPort', 'maxMessageBytes']);

export function validateConfig(input: unknown, source: string): HubConfig {
  const r = HubConfigSchema.safeParse(input);
  if (!r.success) {
    const msg = r.error.issues.map((i) => {
      const keys = i.code === 'unrecognized_keys' ? ` (${(i as { keys: string[] }).keys.join(', ')})` : '';
      return `${i.path.join('.') || '(top level)'}: ${i.message}${keys}`;
    }).join('; ');
    throw new TrellisError('TRELLIS_E_CONFIG', `invalid hub configuration in ${source}: ${msg}`);
  }
  return Object.freeze(r.data);
}

export function loadHubConfig(dataDir: string, flags: Partial<HubConfigInput> = {}, env: NodeJS.ProcessEnv = process.env): HubConfig {
  const file = join(dataDir, CONFIG_FILE);
  if (!existsSync(file)) {
    throw new TrellisError('TRELLIS_E_CONFIG', `no hub configuration at ${file}: run \`trellis hub init --data ${dataDir} --name HOST\` first`);
  }
  let fromFile: Record<string, unknown>;
  try {
    fromFile = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new TrellisError('TRELLIS_E_CONFIG', `cannot parse ${file}: ${(e as Error).message}`);
  }
  validateConfig(fromFile, file); // names unknown keys in the file itself
  const merged: Record<string, unknown> = { ...fromFile };
  for (const [name, key] of Object.entries(ENV)) {
    const v = env[name];
    if (v !== undefined && v !== '') merged[key] = NUMERIC.has(key) ? Number(v) : v;
  }
  for (const [k, v] of Object.entries(flags)) if (v !== undefined) merged[k] = v;
  return validateConfig(merged, `${file} (with environment and flags)`);
}
