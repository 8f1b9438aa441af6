/**
 * Authorization as data, default deny. Every RPC of the contract has one entry here; the hub
 * refuses to start if a served method has none (see assertTableCovers).
 */
import { TrellisError } from '../../common/errors.js';
import type { Principal } from '../auth/index.js';

export type Requirement =
  | { kind: 'open' } // no credentials at all (Version)
  | { kind: 'join-token' } // the join token in the request is the credential (Enroll)
  | { kind: 'agent-cert' } // verified client certificate on the agent port
  | { kind: 'login' } // user name and password in the request
  | { kind: 'self' } // any authenticated caller, acting on its own session only
  | { kind: 'perm'; perm: Permission };

/** Every permission, with what it allows. The README's permission table lists the same. */
export const PERMISSIONS = {
  'agents:list': 'list agents and see their details',
  'agents:get': 'see one agent',
  'agents:revoke': 'revoke an agent certificate and cut its connection',
  'agents:run': 'run commands on agents',
  'tokens:create': 'create join tokens',
  'tokens:list': 'list join tokens',
  'tokens:revoke': 'revoke join tokens',
  'certs:read': 'see the CA, the hub certificate and the CRL',
  'certs:replace': 'replace the hub serving certificate',
} as const;
export type Permission = keyof typeof PERMISSIONS;

const S = 'trellis.v1';
export const METHOD_TABLE: Readonly<Record<string, Requirement>> = Object.freeze({
  [`/${S}.Version/GetVersion`]: { kind: 'open' },
  [`/${S}.Enrollment/Enroll`]: { kind: 'join-token' },
  [`/${S}.AgentChannel/Connect`]: { kind: 'agent-cert' },
  [`/${S}.AgentChannel/Renew`]: { kind: 'agent-cert' },
  [`/${S}.AdminAuth/Login`]: { kind: 'login' },
  [`/${S}.AdminAuth/Logout`]: { kind: 'self' },
  [`/${S}.AdminAuth/WhoAmI`]: { kind: 'self' },
  [`/${S}.AdminJoinTokens/CreateJoinToken`]: { kind: 'perm', perm: 'tokens:create' },
  [`/${S}.AdminJoinTokens/ListJoinTokens`]: { kind: 'perm', perm: 'tokens:list' },
  [`/${S}.AdminJoinTokens/RevokeJoinToken`]: { kind: 'perm', perm: 'tokens:revoke' },
  [`/${S}.AdminAgents/ListAgents`]: { kind: 'perm', perm: 'agents:list' },
  [`/${S}.AdminAgents/GetAgent`]: { kind: 'perm', perm: 'agents:get' },
  [`/${S}.AdminAgents/RevokeAgent`]: { kind: 'perm', perm: 'agents:revoke' },
  [`/${S}.AdminCerts/GetCertificates`]: { kind: 'perm', perm: 'certs:read' },
  [`/${S}.AdminCerts/GetCrl`]: { kind: 'perm', perm: 'certs:read' },
  [`/${S}.AdminCerts/ReplaceHubCertificate`]: { kind: 'perm', perm: 'certs:replace' },
  [`/${S}.AdminRuns/Run`]: { kind: 'perm', perm: 'agents:run' },
});

/** Throws at start-up if any served method lacks an entry. */
export function assertTableCovers(paths: Iterable<string>): void {
  const missing = [...paths].filter((p) => !(p in METHOD_TABLE));
  if (missing.length > 0) {
    throw new TrellisError('TRELLIS_E_INTERNAL', `refusing to start: no authorization entry for ${missing.join(', ')} (add them to hub/authz METHOD_TABLE)`);
  }
}

export function requirementFor(path: string): Requirement {
  const r = METHOD_TABLE[path];
  if (!r) throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `no authorization entry for ${path}`);
  return r;
}

/** Built-in roles. `admin` holds every permission. Custom roles arrive with the RBAC issue. */
const BUILTIN_ROLES: Record<string, ReadonlySet<string>> = {
  admin: new Set(['*']),
  observer: new Set(['agents:list', 'agents:get', 'tokens:list', 'certs:read']),
};

export function isAllowed(principal: Principal, perm: Permission): boolean {
  for (const role of principal.roles) {
    const grants = BUILTIN_ROLES[role];
    if (grants && (grants.has('*') || grants.has(perm))) return true;
  }
  return false;
}

export function authorize(principal: Principal, perm: Permission): void {
  if (!isAllowed(principal, perm)) {
    throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `${principal.username} lacks the permission ${perm}`);
  }
}
