/**
 * `trellis agents install`: installs agents on many servers over SSH, `parallel` at a time.
 *
 * Per entry (server + service): probe (node >= 20, root or sudo, tools; read-only) → copy the
 * bundle unless that exact bundle is unpacked there already (checked by SHA-256 there) → create a
 * fresh one-use join token (labels and tenant from the flags and the host line) → run
 * `trellis agent install --token-file -` with the token on stdin → wait until the agent is online
 * at the hub. Entries for the same SSH server run one after the other (they share the install
 * folder and the system user); different servers run in parallel. One failing entry never stops
 * the others. A token that was not used for an enrollment (failure, or an agent that was already
 * installed) is revoked before the run ends.
 */
import { createReadStream } from 'node:fs';
import { TrellisError, isTrellisError, errorMessage } from '../../common/errors.js';
import { cleanText } from '../../common/text.js';
import type { Bundle } from './bundle.js';
import { formatTarget, targetKey, type HostEntry } from './hosts.js';
import { agentInstall, probe, upload, type RemoteCtx } from './remote.js';
import type { SshOptions } from './ssh.js';

/** What the run needs from the hub (admin API), as a small interface so tests and benches can wire it. */
export interface FleetHub {
  /** A one-use token valid for `ttlMs`, with these labels, in the caller's tenant. */
  createToken(o: { labels: Record<string, string>; ttlMs: number; description: string }): Promise<{ id: string; token: string }>;
  revokeToken(id: string): Promise<void>;
  /** Ids of the given tokens that are still usable (not used up, expired or revoked). */
  activeTokens(ids: string[]): Promise<Set<string>>;
  /** The agent's status at the hub (`online` | `offline` | `revoked`), or undefined if unknown. */
  agentStatus(id: string): Promise<string | undefined>;
}

export type HostResult = 'installed' | 'unchanged' | 'failed';

export interface HostReport {
  host: string;
  service: string;
  data: string;
  agentId: string;
  result: HostResult;
  /** One cleaned line; empty on success. */
  error: string;
  code: string;
  seconds: number;
  /** Where the installation lives on the server. */
  installDir: string;
  copied: boolean;
  /** Seconds spent per step (probe, copy, token, install, online) for the steps that ran. */
  phases: Record<string, number>;
}

export interface FleetOptions {
  entries: HostEntry[];
  ssh: SshOptions;
  hub: FleetHub;
  /** The hub admin address the servers enroll against. */
  hubAddress: string;
  bundle?: Bundle;
  /** Labels for every agent (a host line's labels win). */
  labels: Record<string, string>;
  prefix: string;
  defaultService: string;
  /** Default data dir: /var/lib/<service>. */
  defaultData?: (service: string) => string;
  serviceUser?: string;
  sudo: boolean;
  detach: boolean;
  parallel: number;
  /** Per entry, everything included. */
  timeoutMs: number;
  dryRun: boolean;
  /** Called once per entry when it is done (for streaming output). */
  onResult?: (r: HostReport) => void;
  /** Progress notes (stderr). */
  note?: (s: string) => void;
  signal?: AbortSignal;
  /** Poll interval while waiting for the agent to come online. @default 500 */
  pollMs?: number;
}

export interface FleetSummary { hosts: HostReport[]; installed: number; unchanged: number; failed: number }

const oneLine = (s: string) => { const l = cleanText(s).replace(/\s+/g, ' ').trim(); return l.length > 400 ? l.slice(0, 400) + '…' : l; };

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() { clearTimeout(t); signal?.removeEventListener('abort', done); resolve(); }
    signal?.addEventListener('abort', done, { once: true });
  });
}

/** Runs `fn` on every item, at most `n` at a time; never rejects (fn handles its own errors). */
export async function pool<T>(items: T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => { while (next < items.length) await fn(items[next++]!); };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(n, items.length)) }, worker));
}

/** What a dry run prints for one entry. */
export function planLine(o: Pick<FleetOptions, 'defaultService' | 'defaultData' | 'labels' | 'bundle' | 'prefix' | 'sudo' | 'hubAddress' | 'serviceUser' | 'detach'>, e: HostEntry): string {
  const service = e.service ?? o.defaultService;
  const data = e.data ?? (o.defaultData?.(service) ?? `/var/lib/${service}`);
  const labels = { ...o.labels, ...e.labels };
  const dir = o.bundle ? `${o.prefix}/${o.bundle.dir}` : `${o.prefix}/trellis-<version>-<sha>`;
  return `would: check node >= 20 and ${o.sudo ? 'passwordless sudo' : 'root'} over ssh; copy the bundle to ${dir} (sha256-checked) unless present; ` +
    `create a one-use join token (labels ${Object.entries(labels).map(([k, v]) => `${k}=${v}`).join(',') || '-'}); ` +
    `run ${o.sudo ? 'sudo -n ' : ''}${dir}/bin/trellis agent install --hub ${o.hubAddress} --service ${service} --data ${data}${o.serviceUser ? ` --user ${o.serviceUser}` : ''}${o.detach ? ' --detach' : ''} (token on stdin); wait until the agent is online`;
}

async function installOne(o: FleetOptions, e: HostEntry, created: Map<string, boolean>): Promise<HostReport> {
  const t0 = performance.now();
  const service = e.service ?? o.defaultService;
  const data = e.data ?? (o.defaultData?.(service) ?? `/var/lib/${service}`);
  const report: HostReport = { host: formatTarget(e.target), service, data, agentId: '', result: 'failed', error: '', code: '', seconds: 0, installDir: '', copied: false, phases: {} };
  let mark = performance.now();
  const phase = (name: string) => { const now = performance.now(); report.phases[name] = Math.round(now - mark) / 1000; mark = now; };
  const timeout = AbortSignal.timeout(o.timeoutMs);
  const signal = o.signal ? AbortSignal.any([o.signal, timeout]) : timeout;
  const ctx: RemoteCtx = { target: e.target, ssh: o.ssh, sudo: o.sudo, signal };
  let tokenId: string | undefined;
  try {
    const bundle = o.bundle!;
    const installDir = `${o.prefix}/${bundle.dir}`;
    report.installDir = installDir;
    const { node, probe: p } = await probe(ctx, installDir);
    phase('probe');
    if (p.installed !== bundle.sha256) {
      await upload(ctx, { bundle: createReadStream(bundle.file), prefix: o.prefix, dir: bundle.dir, root: bundle.root, sha256: bundle.sha256 });
      report.copied = true;
      phase('copy');
    }
    // The token is made just before it is used, so it lives (and could leak) for as short as possible.
    const tok = await o.hub.createToken({
      labels: { ...o.labels, ...e.labels }, ttlMs: Math.max(120_000, o.timeoutMs),
      description: `agents install ${report.host} ${service}`.slice(0, 200),
    });
    tokenId = tok.id;
    created.set(tok.id, false);
    phase('token');
    const r = await agentInstall(ctx, { node, installDir, hub: o.hubAddress, token: tok.token, service, data, serviceUser: o.serviceUser, detach: o.detach });
    report.agentId = r.agentId;
    phase('install');
    if (r.started === 'no') {
      throw new TrellisError('TRELLIS_E_HOST_NOT_READY', `agent ${r.agentId} was installed as ${r.service} but not started: systemd is not running on ${report.host}; rerun with --detach, or start it there`);
    }
    // Online at the hub: the end-to-end proof (certificate, network path to the agent port, service user).
    for (;;) {
      const status = await o.hub.agentStatus(r.agentId).catch((err: unknown) => {
        if (isTrellisError(err, 'TRELLIS_E_NOT_FOUND')) return undefined;
        throw err;
      });
      if (status === 'online') break;
      if (status === 'revoked') throw new TrellisError('TRELLIS_E_CERT_REVOKED', `agent ${r.agentId} on ${report.host} is revoked at the hub: uninstall it there (trellis agent uninstall --purge) and install again`);
      if (signal.aborted) {
        throw new TrellisError('TRELLIS_E_TIMEOUT', `agent ${r.agentId} was installed on ${report.host} but is not online at the hub after ${Math.round(o.timeoutMs / 1000)}s: ` +
          `check \`trellis agent status --service ${service}\` and ${data}/agent.log there, and that it reaches the hub's agent port`);
      }
      await sleep(o.pollMs ?? 500, signal);
    }
    phase('online');
    report.result = r.changed || report.copied ? 'installed' : 'unchanged';
  } catch (err) {
    report.result = 'failed';
    const timedOut = timeout.aborted && !o.signal?.aborted;
    const e2 = timedOut && !isTrellisError(err, 'TRELLIS_E_TIMEOUT')
      ? new TrellisError('TRELLIS_E_TIMEOUT', `${report.host}: not done after ${Math.round(o.timeoutMs / 1000)}s (--timeout)`)
      : o.signal?.aborted ? new TrellisError('TRELLIS_E_SHUTDOWN', `${report.host}: interrupted`) : err;
    report.code = isTrellisError(e2) ? (e2 as TrellisError).code : 'TRELLIS_E_INTERNAL';
    report.error = oneLine(errorMessage(e2));
    if (tokenId) {
      await o.hub.revokeToken(tokenId).then(() => created.set(tokenId!, true)).catch((re: unknown) => o.note?.(`could not revoke join token ${tokenId} made for ${report.host}: ${oneLine(errorMessage(re))}; revoke it with \`trellis tokens revoke ${tokenId}\``));
    }
  }
  report.seconds = (performance.now() - t0) / 1000;
  return report;
}

/** Runs the whole install; never throws for a host's failure (see the reports). */
export async function installFleet(o: FleetOptions): Promise<FleetSummary> {
  const hosts: HostReport[] = [];
  const done = (r: HostReport) => { hosts.push(r); o.onResult?.(r); };
  if (o.dryRun) {
    for (const e of o.entries) {
      const service = e.service ?? o.defaultService;
      done({ host: formatTarget(e.target), service, data: e.data ?? (o.defaultData?.(service) ?? `/var/lib/${service}`), agentId: '', result: 'unchanged', error: '', code: '', seconds: 0, installDir: '', copied: false, phases: {} });
    }
    return { hosts, installed: 0, unchanged: 0, failed: 0 };
  }
  if (!o.bundle) throw new TrellisError('TRELLIS_E_INTERNAL', 'installFleet needs a bundle');
  // Entries on the same SSH server run in order; servers run in parallel.
  const groups = new Map<string, HostEntry[]>();
  for (const e of o.entries) {
    const k = targetKey(e.target);
    groups.set(k, [...(groups.get(k) ?? []), e]);
  }
  /** token id → revoked already */
  const created = new Map<string, boolean>();
  await pool([...groups.values()], o.parallel, async (list) => {
    for (const e of list) done(await installOne(o, e, created));
  });
  // Tokens made but not used for an enrollment (an agent that was already installed) are revoked too.
  const pending = [...created].filter(([, revoked]) => !revoked).map(([id]) => id);
  if (pending.length > 0) {
    try {
      for (const id of await o.hub.activeTokens(pending)) await o.hub.revokeToken(id);
    } catch (err) {
      o.note?.(`could not check or revoke the unused join tokens of this run (${pending.join(', ')}): ${oneLine(errorMessage(err))}; they expire on their own, or revoke them with \`trellis tokens revoke ID\``);
    }
  }
  return {
    hosts,
    installed: hosts.filter((h) => h.result === 'installed').length,
    unchanged: hosts.filter((h) => h.result === 'unchanged').length,
    failed: hosts.filter((h) => h.result === 'failed').length,
  };
}
