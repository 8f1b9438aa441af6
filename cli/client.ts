/** Admin API clients built from the profile: pinned CA, bearer token, deadlines, typed errors. */
import * as grpc from '@grpc/grpc-js';
import { v1 } from '../common/proto.js';
import { secureChannel } from '../common/grpc-tls.js';
import { fromGrpcError, isTransportFailure } from '../common/grpc-errors.js';
import { diagnoseConnection } from '../common/connect-diagnosis.js';
import { TrellisError } from '../common/errors.js';
import { fingerprintSha256, splitPemBundle } from '../certs/index.js';
import { parseHostPort } from '../common/grpc-options.js';
import { currentContext, readContext, resolveProfile, writeProfile, type Profile } from './profile.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

export interface AdminClients {
  auth: InstanceType<typeof v1.AdminAuth>;
  tokens: InstanceType<typeof v1.AdminJoinTokens>;
  agents: InstanceType<typeof v1.AdminAgents>;
  certs: InstanceType<typeof v1.AdminCerts>;
  runs: InstanceType<typeof v1.AdminRuns>;
  users: InstanceType<typeof v1.AdminUsers>;
  sessions: InstanceType<typeof v1.AdminSessions>;
  apikeys: InstanceType<typeof v1.AdminApiKeys>;
  roles: InstanceType<typeof v1.AdminRoles>;
  tenants: InstanceType<typeof v1.AdminTenants>;
  groups: InstanceType<typeof v1.AdminGroups>;
  system: InstanceType<typeof v1.AdminSystem>;
  cluster: InstanceType<typeof v1.AdminCluster>;
  audit: InstanceType<typeof v1.AdminAudit>;
  kv: InstanceType<typeof v1.AdminKv>;
  packs: InstanceType<typeof v1.AdminPacks>;
  rules: InstanceType<typeof v1.AdminRules>;
  executions: InstanceType<typeof v1.AdminExecutions>;
  webhooks: InstanceType<typeof v1.AdminWebhooks>;
  ca: InstanceType<typeof v1.AdminCa>;
  snapshots: InstanceType<typeof v1.AdminSnapshots>;
  maintenance: InstanceType<typeof v1.AdminMaintenance>;
  version: InstanceType<typeof v1.Version>;
  metadata: grpc.Metadata;
  close(): void;
}

export function adminClients(hub: string, caPem: string, token?: string, tenant?: string): AdminClients {
  const { creds, options } = secureChannel(hub, caPem);
  // One channel shared by every service client.
  const base = new grpc.Client(hub, creds, options);
  const channelOverride = base.getChannel();
  const opts = { ...options, channelOverride };
  const metadata = new grpc.Metadata();
  if (token) metadata.set(token.startsWith('tak1_') ? 'x-api-key' : 'authorization', token.startsWith('tak1_') ? token : `Bearer ${token}`);
  if (tenant) metadata.set('x-trellis-tenant', tenant);
  return {
    auth: new v1.AdminAuth(hub, creds, opts),
    tokens: new v1.AdminJoinTokens(hub, creds, opts),
    agents: new v1.AdminAgents(hub, creds, opts),
    certs: new v1.AdminCerts(hub, creds, opts),
    runs: new v1.AdminRuns(hub, creds, opts),
    users: new v1.AdminUsers(hub, creds, opts),
    sessions: new v1.AdminSessions(hub, creds, opts),
    apikeys: new v1.AdminApiKeys(hub, creds, opts),
    roles: new v1.AdminRoles(hub, creds, opts),
    tenants: new v1.AdminTenants(hub, creds, opts),
    groups: new v1.AdminGroups(hub, creds, opts),
    system: new v1.AdminSystem(hub, creds, opts),
    cluster: new v1.AdminCluster(hub, creds, opts),
    audit: new v1.AdminAudit(hub, creds, opts),
    kv: new v1.AdminKv(hub, creds, opts),
    packs: new v1.AdminPacks(hub, creds, opts),
    rules: new v1.AdminRules(hub, creds, opts),
    executions: new v1.AdminExecutions(hub, creds, opts),
    webhooks: new v1.AdminWebhooks(hub, creds, opts),
    ca: new v1.AdminCa(hub, creds, opts),
    snapshots: new v1.AdminSnapshots(hub, creds, opts),
    maintenance: new v1.AdminMaintenance(hub, creds, opts),
    version: new v1.Version(hub, creds, opts),
    metadata,
    close: () => base.close(),
  };
}

/**
 * Clients for the logged-in profile. The tenant comes from --tenant / TRELLIS_TENANT, else the
 * profile's; an API key in TRELLIS_API_KEY replaces the login token (for scripts).
 */
export function fromProfile(p: Profile, env: NodeJS.ProcessEnv = process.env): AdminClients {
  return adminClients(p.hub, p.caPem, env.TRELLIS_API_KEY || p.token, env.TRELLIS_TENANT || p.tenant);
}

type UnaryFn<Req, Res> = (req: Req, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: Res) => void) => unknown;

/** Calls a unary method with the credentials and a deadline; rejects with a TrellisError. */
export function call<Req, Res>(c: AdminClients, client: object, fn: UnaryFn<Req, Res>, req: Req, timeoutMs = 30_000): Promise<Res> {
  return new Promise((resolve, reject) => {
    fn.call(client, req, c.metadata, { deadline: Date.now() + timeoutMs }, (err, res) => (err ? reject(fromGrpcError(err)) : resolve(res!)));
  });
}

const fingerprints = (pem: string) => splitPemBundle(pem).map((c) => fingerprintSha256(c)).sort().join(',');

/**
 * Keeps the profile's pinned CA bundle equal to the hub's trust bundle (old+new CA during a CA
 * rotation, the new CA alone after commit). The bundle is read over a connection the profile's
 * bundle verified, so only the hub it already trusts can change it.
 */
export async function saveTrustBundle(p: Profile, bundle: string[]): Promise<boolean> {
  if (bundle.length === 0) return false;
  const pem = bundle.map((c) => (c.endsWith('\n') ? c : c + '\n')).join('');
  if (fingerprints(pem) === fingerprints(p.caPem)) return false;
  if (p.fromEnv) return false; // TRELLIS_HUB & co: nothing stored to update (withClients does not even ask)
  const now = readContext(p.context ?? currentContext());
  if (!now || now.hub !== p.hub) return false; // logged in elsewhere meanwhile
  await writeProfile({ ...now, caPem: pem });
  return true;
}

async function refreshTrust(c: AdminClients, p: Profile): Promise<void> {
  const v = await call<T.GetVersionRequest, T.VersionInfo__Output>(c, c.version, c.version.GetVersion, {}, 5_000);
  if (await saveTrustBundle(p, v.trustBundle)) process.stderr.write(`trellis: the hub's CA bundle changed (CA rotation); the profile now trusts CA sha256 ${v.trustBundle.map((b) => fingerprintSha256(b).slice(0, 16)).join(', ')}\n`);
}

/**
 * A failed connection explained: the address is probed (TCP, TLS without trust, HTTP/2) and the
 * cause named: hub down, DNS, no answer, the agent port, a CA the trusted bundle does not hold
 * (for a profile that worked before: the hub's CA was rotated), a certificate that does not name
 * the address. Other errors are returned unchanged. `what` names who holds caPem ("your profile",
 * "the CA file ca.pem"); only "your profile" suggests a CA rotation.
 */
export async function explainTlsFailure(err: unknown, hub: string, caPem: string, what: string, user = 'NAME'): Promise<unknown> {
  const raw = (err as { cause?: unknown })?.cause ?? err;
  if (!isTransportFailure(raw) && !isTransportFailure(err)) return err;
  const { host, port } = parseHostPort(hub, 7444);
  const rotated = what === 'your profile';
  const why = await diagnoseConnection(raw, {
    host, port, expect: 'admin', caPem, trustedBy: what,
    untrusted: rotated
      ? (servedCa, bundle) => new TrellisError('TRELLIS_E_CA_ROTATED',
        `the hub at ${hub} presents CA sha256 ${servedCa} which ${what} does not trust (it holds ${bundle.map((f) => f.slice(0, 16) + '…').join(', ')}): the hub's CA was most likely rotated. ` +
        `Log in again with the new CA: trellis login --hub ${hub} --user ${user} --ca NEW_CA.pem (ca.pem in the hub data directory), or --ca-fingerprint ${servedCa} after checking it with the hub's operator`)
      : undefined,
  }).catch(() => undefined);
  return why ?? err;
}

/** Runs fn with clients for the logged-in profile (and the profile), closing them afterwards. */
export async function withClients<R>(fn: (c: AdminClients, p: Profile) => Promise<R>): Promise<R> {
  const p = await resolveProfile();
  const c = fromProfile(p);
  // In parallel with the command: keep the pinned bundle current (a CA rotation adds, then drops, a CA).
  // Not for TRELLIS_HUB & co: nothing stored to update, so the call would be wasted.
  const refresh = p.fromEnv ? undefined : refreshTrust(c, p).catch(() => undefined);
  try {
    return await fn(c, p);
  } catch (e) {
    throw await explainTlsFailure(e, p.hub, p.caPem, 'your profile', p.username || 'NAME');
  } finally {
    await refresh;
    c.close();
  }
}
