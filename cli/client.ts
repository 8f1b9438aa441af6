/** Admin API clients built from the profile: pinned CA, bearer token, deadlines, typed errors. */
import * as grpc from '@grpc/grpc-js';
import { v1 } from '../common/proto.js';
import { CLIENT_OPTIONS } from '../common/grpc-options.js';
import { fromGrpcError } from '../common/grpc-errors.js';
import { readProfile, type Profile } from './profile.js';

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
  audit: InstanceType<typeof v1.AdminAudit>;
  kv: InstanceType<typeof v1.AdminKv>;
  packs: InstanceType<typeof v1.AdminPacks>;
  rules: InstanceType<typeof v1.AdminRules>;
  executions: InstanceType<typeof v1.AdminExecutions>;
  webhooks: InstanceType<typeof v1.AdminWebhooks>;
  version: InstanceType<typeof v1.Version>;
  metadata: grpc.Metadata;
  close(): void;
}

export function adminClients(hub: string, caPem: string, token?: string, tenant?: string): AdminClients {
  const creds = grpc.credentials.createSsl(Buffer.from(caPem));
  // One channel shared by every service client.
  const base = new grpc.Client(hub, creds, CLIENT_OPTIONS);
  const channelOverride = base.getChannel();
  const opts = { ...CLIENT_OPTIONS, channelOverride };
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
    audit: new v1.AdminAudit(hub, creds, opts),
    kv: new v1.AdminKv(hub, creds, opts),
    packs: new v1.AdminPacks(hub, creds, opts),
    rules: new v1.AdminRules(hub, creds, opts),
    executions: new v1.AdminExecutions(hub, creds, opts),
    webhooks: new v1.AdminWebhooks(hub, creds, opts),
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

/** Runs fn with clients for the logged-in profile (and the profile), closing them afterwards. */
export async function withClients<R>(fn: (c: AdminClients, p: Profile) => Promise<R>): Promise<R> {
  const p = readProfile();
  const c = fromProfile(p);
  try { return await fn(c, p); } finally { c.close(); }
}
