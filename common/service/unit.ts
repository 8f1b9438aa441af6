/**
 * The systemd unit `trellis agent install` (and `trellis hub install`) writes, as a pure function
 * of its inputs, and the checks of every value that goes into it. The unit is also the record of
 * the installation: its first line is a comment holding what `uninstall` needs (data dir, user,
 * whether we created it).
 *
 * Hardening (systemd.exec(5)): the agent and every action it runs get NoNewPrivileges, a
 * read-only file system (ProtectSystem=strict) except the data directory and any --read-write
 * path, no /home, /root or /run/user (ProtectHome), a private /tmp, and no writes to kernel
 * tunables, modules or cgroups. Trade-off: actions are sandboxed the same way, so an action that
 * installs packages or edits /etc needs those paths in --read-write; and `run_as` another user
 * needs the agent to run as root (`--user root`): an unprivileged agent cannot switch users.
 */
import { isAbsolute, normalize } from 'node:path';
import { TrellisError } from '../errors.js';

const bad = (msg: string): TrellisError => new TrellisError('TRELLIS_E_INVALID_ARGUMENT', msg);

/** systemd unit names we accept: the characters systemd allows unescaped, without the suffix. */
const SERVICE_RE = /^[A-Za-z0-9_.@-]{1,200}$/;
/** useradd's portable names (lower case: what `useradd --system` accepts without --badname). */
const USER_RE = /^[a-z_][a-z0-9_-]{0,31}$/;
/**
 * Paths written into the unit: no white space, quotes, `%` (a systemd specifier), `$` (variable
 * expansion), `\` or `;`, so they need no escaping and mean the same to systemd and to us.
 */
const PATH_RE = /^\/[A-Za-z0-9_.+@/-]*$/;

export function checkServiceName(name: string): string {
  if (!SERVICE_RE.test(name) || name.endsWith('.service') || name.startsWith('.') || name.startsWith('-')) {
    throw bad(`--service '${String(name).slice(0, 64)}' is not a valid service name: use letters, digits and _ . @ - only, without the .service suffix (e.g. trellis-agent)`);
  }
  return name;
}

export function checkUserName(name: string): string {
  if (!USER_RE.test(name)) throw bad(`--user '${String(name).slice(0, 64)}' is not a valid user name: lower-case letters, digits, _ and -, starting with a letter or _ (at most 32)`);
  return name;
}

/** An absolute, normalised path that can go into a unit file unquoted. */
export function checkUnitPath(path: string, what: string): string {
  if (!isAbsolute(path)) throw bad(`${what} must be an absolute path (got '${String(path).slice(0, 200)}')`);
  const p = normalize(path).replace(/\/+$/, '') || '/';
  if (!PATH_RE.test(p)) throw bad(`${what} '${p.slice(0, 200)}' holds characters a systemd unit would need to escape (white space, quotes, % $ \\ ;): use a plain path`);
  return p;
}

export function checkDataDir(path: string): string {
  const p = checkUnitPath(path, '--data');
  if (p.split('/').filter(Boolean).length < 2) throw bad(`--data ${p} is too close to the root: use a directory of its own, e.g. /var/lib/trellis-agent`);
  return p;
}

/** What the first line of the unit records about the installation. */
export interface UnitMeta { service: string; data: string; user: string; createdUser: boolean }

export type ServiceKind = 'agent' | 'hub';

export interface UnitOptions extends UnitMeta {
  /** Which daemon the unit runs (`trellis KIND run --data DATA`). @default 'agent' */
  kind?: ServiceKind;
  /** Absolute path of the node binary. */
  node: string;
  /** Absolute path of bin/trellis.js of the installation. */
  bin: string;
  /** Extra ReadWritePaths= (actions that must write outside the data directory). */
  readWrite: string[];
}

const metaPrefix = (kind: ServiceKind) => `# trellis-${kind}-install `;

/**
 * Node flags of the agent's service (unit and --detach alike). An agent runs on every managed
 * server, mostly idle, and allocates little:
 * - `--max-semi-space-size=1`: a 1 MiB young generation instead of V8's default (up to 16 MiB per
 *   semi-space) keeps bursts from leaving a large heap behind (69.9 → 63.9 MB once connected;
 *   ~61 MB either way at steady state).
 * - `--lite-mode`: no optimizing compiler (TurboFan), lazily allocated feedback: its code in the
 *   node binary is never paged in and no optimized code is kept. Measured (agent_idle_rss_mb, one
 *   idle agent, steady state): 59.8 → 53.9 MB. The cost is CPU on hot JS: the real agent at
 *   1,000 events/s → actions (event_to_action bench, TRELLIS_BENCH_E2A_NODE_ARGS) used 15.0 s of
 *   CPU instead of 7.9-10.6 s for the same run; idle CPU is unchanged (~0.05% of a core).
 *   An operator whose agents publish thousands of events a second can drop it from ExecStart=.
 *   Lite mode has no WebAssembly, so no global fetch (undici's parser is wasm): agent code uses
 *   node:http/https (test/agent-idle.test.ts fails if dist/agent uses fetch or WebAssembly).
 */
export const AGENT_NODE_FLAGS: readonly string[] = Object.freeze(['--max-semi-space-size=1', '--lite-mode']);

/**
 * Node flags for an agent that publishes or runs thousands of events or actions a second, in place
 * of AGENT_NODE_FLAGS (README, "Agent footprint"; the event_to_action bench runs its agent with
 * these): no --lite-mode (hot code optimized), V8's default young generation, and the old
 * generation started at 128 MiB as the hub's is. At 1,000 events/s with V8's defaults the agent's
 * old generation filled every ~2.1–2.4 s from ~40 s on, and each major GC (marking on the core the
 * hub beside it needed, then a pause) delayed ~20–40 events by 15–26 ms; with these, no major GC in
 * 140 s of that load. The cost: a heap of up to ~128 MiB before the first major GC.
 */
export const BUSY_AGENT_NODE_FLAGS: readonly string[] = Object.freeze(['--initial-old-space-size=128']);

/**
 * Node flags of the hub (its unit and --detach; `bin/trellis.js` starts node with the same ones
 * in its first line, and the benches and the soak run the hub with these). The hub allocates
 * per event and keeps a small heap (~28 MB live at rest):
 * - `--max-semi-space-size=32`: a 32 MiB young generation; fewer scavenges made the per-event
 *   work ~10–15% cheaper (ingest_events_per_s with 1,000 rules).
 * - `--initial-old-space-size=128`: the old generation's allocation limit starts at, and does not
 *   fall below, 128 MiB. V8 starts a full (mark-compact) collection as soon as the room left under
 *   that limit is smaller than the young generation (a scavenge could promote all of it): with the
 *   32 MiB young generation and a limit of ~1.5 × a 28 MB heap, that was always the case, and the
 *   hub ran a full GC every 2–5 s even with a flat heap, each stalling it 30–55 ms (incremental
 *   marking steps on a busy 2-core machine plus the final pause) — the event→action tail.
 *   Measured (npm run bench, event_to_action_p99_ms, 1,000 events/s): full GCs in a 17 s run
 *   3–5 → 0; in a 60 s run 2, both on external-memory pressure, p99 4.67 ms. The cost is up
 *   to ~100 MB of old generation reached before a full GC on a small hub; a hub whose live heap
 *   is larger (thousands of agents) is sized by V8 as before.
 */
export const HUB_NODE_FLAGS: readonly string[] = Object.freeze(['--max-semi-space-size=32', '--initial-old-space-size=128']);

/**
 * Environment of the agent's service (Environment= in the unit, and --detach): two glibc malloc
 * arenas instead of 8 per core for node's ~10 threads, measured ~2 MB less idle RSS.
 */
export const AGENT_ENV: Readonly<Record<string, string>> = Object.freeze({ MALLOC_ARENA_MAX: '2' });

/** The environment a daemon's service adds (the agent's AGENT_ENV; nothing for the hub). */
export function serviceEnv(kind: ServiceKind = 'agent'): Record<string, string> {
  return kind === 'agent' ? { ...AGENT_ENV } : {};
}

/** The argv systemd runs (ExecStart), also what `--detach` runs. */
export function execStart(o: Pick<UnitOptions, 'node' | 'bin' | 'data' | 'kind'>): string[] {
  const kind = o.kind ?? 'agent';
  return [o.node, ...(kind === 'agent' ? AGENT_NODE_FLAGS : HUB_NODE_FLAGS), o.bin, kind, 'run', '--data', o.data];
}

export function renderUnit(o: UnitOptions): string {
  const meta: UnitMeta = { service: o.service, data: o.data, user: o.user, createdUser: o.createdUser };
  const group = o.user === 'root' ? 'root' : o.user;
  const kind = o.kind ?? 'agent';
  return [
    metaPrefix(kind) + JSON.stringify(meta),
    `# Written by \`trellis ${kind} install\`; remove it with \`trellis ${kind} uninstall --service ${o.service}\`.`,
    '[Unit]',
    `Description=Trellis ${kind} (${o.service})`,
    'Wants=network-online.target',
    'After=network-online.target',
    '',
    '[Service]',
    'Type=simple',
    `User=${o.user}`,
    `Group=${group}`,
    `ExecStart=${execStart(o).join(' ')}`,
    ...Object.entries(serviceEnv(kind)).map(([k, v]) => `Environment=${k}=${v}`),
    `WorkingDirectory=${o.data}`,
    'Restart=always',
    'RestartSec=5s',
    'UMask=0077',
    'NoNewPrivileges=yes',
    'ProtectSystem=strict',
    'ProtectHome=yes',
    'PrivateTmp=yes',
    'ProtectKernelTunables=yes',
    'ProtectKernelModules=yes',
    'ProtectControlGroups=yes',
    'RestrictSUIDSGID=yes',
    'LockPersonality=yes',
    `ReadWritePaths=${[o.data, ...o.readWrite].join(' ')}`,
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ].join('\n');
}

/** The record in a unit this command wrote, or undefined (not ours, or unreadable). */
export function parseUnitMeta(text: string, kind: ServiceKind = 'agent'): UnitMeta | undefined {
  const first = text.split('\n', 1)[0] ?? '';
  if (!first.startsWith(metaPrefix(kind))) return undefined;
  try {
    const m = JSON.parse(first.slice(metaPrefix(kind).length)) as Partial<UnitMeta>;
    if (typeof m.service !== 'string' || typeof m.data !== 'string' || typeof m.user !== 'string') return undefined;
    return { service: m.service, data: m.data, user: m.user, createdUser: m.createdUser === true };
  } catch {
    return undefined;
  }
}
