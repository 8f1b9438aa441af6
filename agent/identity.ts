/**
 * The agent's identity files in its data directory. The private key is generated here and
 * never leaves the host; every file is 0600 (the directory 0700) and written atomically.
 */
import { existsSync, readFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { atomicWriteFile, ensureDir } from '../common/fsutil.js';
import { TrellisError } from '../common/errors.js';
import { certInfo, keyMatchesCert, loadPrivateKey, splitPemBundle } from '../certs/index.js';

export function agentPaths(dataDir: string) {
  return {
    dir: dataDir,
    state: join(dataDir, 'agent.json'),
    key: join(dataDir, 'agent-key.pem'),
    cert: join(dataDir, 'agent.pem'),
    ca: join(dataDir, 'ca.pem'),
  };
}
export type AgentPaths = ReturnType<typeof agentPaths>;

/** DATA/agent.json, written at enrollment. */
export interface AgentState {
  /** Agent port of the hub, HOST:PORT (the first of `hubs`). */
  hub: string;
  /** Agent ports of every hub of a cluster, HOST:PORT, in the order tried (absent in files from before clusters: then `hub`). */
  hubs?: string[];
  /** Admin port of the hub used at enrollment, HOST:PORT ('' in files from before it was kept). */
  enrollHub: string;
  agentId: string;
  tenant: string;
  trustDomain: string;
  labels: Record<string, string>;
  enrolledAt: number;
}

const REQUIRED = ['hub', 'agentId', 'tenant', 'trustDomain'] as const;
const KNOWN = new Set<string>([...REQUIRED, 'enrollHub', 'hubs', 'labels', 'enrolledAt']);

/**
 * Checks agent.json field by field (checked by hand, not with zod: `agent run` reads it at every
 * start and zod costs every agent ~5 MB of memory). Returns the problems, `field: message`.
 */
export function checkAgentState(raw: unknown): { state?: AgentState; problems: string[] } {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return { problems: [': expected an object'] };
  const o = raw as Record<string, unknown>;
  const problems: string[] = [];
  for (const k of Object.keys(o)) if (!KNOWN.has(k)) problems.push(`${k}: unknown key`);
  for (const k of REQUIRED) if (typeof o[k] !== 'string' || o[k] === '') problems.push(`${k}: ${typeof o[k] === 'string' ? 'must not be empty' : 'expected a string'}`);
  if (o.enrollHub !== undefined && typeof o.enrollHub !== 'string') problems.push('enrollHub: expected a string');
  if (o.hubs !== undefined && (!Array.isArray(o.hubs) || o.hubs.length === 0 || o.hubs.length > 16 || o.hubs.some((h) => typeof h !== 'string' || h === ''))) {
    problems.push('hubs: expected a list of 1 to 16 HOST:PORT strings');
  }
  if (o.enrolledAt !== undefined && (typeof o.enrolledAt !== 'number' || !Number.isFinite(o.enrolledAt))) problems.push('enrolledAt: expected a number');
  const labels = o.labels ?? {};
  if (typeof labels !== 'object' || labels === null || Array.isArray(labels)) problems.push('labels: expected an object');
  else for (const [k, v] of Object.entries(labels)) if (typeof v !== 'string') problems.push(`labels.${k}: expected a string`);
  if (problems.length > 0) return { problems };
  return {
    problems,
    state: {
      hub: o.hub as string, ...(o.hubs ? { hubs: [...(o.hubs as string[])] } : {}), enrollHub: (o.enrollHub as string | undefined) ?? '', agentId: o.agentId as string, tenant: o.tenant as string,
      trustDomain: o.trustDomain as string, labels: { ...(labels as Record<string, string>) }, enrolledAt: (o.enrolledAt as number | undefined) ?? 0,
    },
  };
}

export interface Identity { keyPem: string; certPem: string; caPem: string; serial: string; notBefore: Date; notAfter: Date }

export function readState(paths: AgentPaths): AgentState {
  if (!existsSync(paths.state)) throw new TrellisError('TRELLIS_E_CONFIG', `${paths.dir} is not enrolled: run \`trellis agent enroll --hub HOST:7444 --token TOKEN --data ${paths.dir}\``);
  let raw: unknown;
  try { raw = JSON.parse(readFileSync(paths.state, 'utf8')); } catch (e) {
    throw new TrellisError('TRELLIS_E_CONFIG', `cannot parse ${paths.state}: ${(e as Error).message}`);
  }
  const { state, problems } = checkAgentState(raw);
  if (!state) throw new TrellisError('TRELLIS_E_CONFIG', `invalid ${paths.state}: ${problems.join('; ')}`);
  return state;
}

export async function writeState(paths: AgentPaths, state: AgentState): Promise<void> {
  await ensureDir(paths.dir, 0o700);
  await atomicWriteFile(paths.state, JSON.stringify(state, null, 2) + '\n', { mode: 0o600 });
}

/**
 * Renewal writes KEY.new and CERT.new, then renames the key and the certificate. A crash
 * between the two renames leaves CERT.new matching the new key: finish the switch here.
 */
function recoverHalfRenewal(paths: AgentPaths): void {
  const pending = paths.cert + '.new';
  if (!existsSync(pending) || !existsSync(paths.key)) return;
  try {
    const key = loadPrivateKey(readFileSync(paths.key));
    if (keyMatchesCert(key, readFileSync(pending, 'utf8'))) renameSync(pending, paths.cert);
  } catch { /* a broken leftover: the normal checks below report the real state */ }
}

export function loadIdentity(files: { key: string; cert: string; ca: string }, paths?: AgentPaths): Identity {
  if (paths) recoverHalfRenewal(paths);
  for (const [what, f] of Object.entries(files)) {
    if (!existsSync(f)) throw new TrellisError('TRELLIS_E_CONFIG', `missing ${what} file ${f}: enroll the agent with \`trellis agent enroll\``);
  }
  const keyPem = readFileSync(files.key, 'utf8');
  const certPem = readFileSync(files.cert, 'utf8');
  const caPem = readFileSync(files.ca, 'utf8');
  const leaf = splitPemBundle(certPem)[0];
  if (!leaf) throw new TrellisError('TRELLIS_E_CERT_INVALID', `${files.cert} holds no certificate`);
  if (splitPemBundle(caPem).length === 0) throw new TrellisError('TRELLIS_E_CERT_INVALID', `${files.ca} holds no CA certificate`);
  if (!keyMatchesCert(loadPrivateKey(keyPem), leaf)) throw new TrellisError('TRELLIS_E_CERT_INVALID', `${files.key} does not match ${files.cert}`);
  const info = certInfo(leaf);
  return { keyPem, certPem, caPem, serial: info.serialHex, notBefore: info.notBefore, notAfter: info.notAfter };
}

export async function saveIdentity(paths: AgentPaths, id: { keyPem: string; certPem: string; caPem?: string }): Promise<void> {
  await ensureDir(paths.dir, 0o700);
  await atomicWriteFile(paths.key + '.new', id.keyPem, { mode: 0o600 });
  await atomicWriteFile(paths.cert + '.new', id.certPem, { mode: 0o600 });
  if (id.caPem) await atomicWriteFile(paths.ca, id.caPem, { mode: 0o600 });
  renameSync(paths.key + '.new', paths.key);
  renameSync(paths.cert + '.new', paths.cert);
}
