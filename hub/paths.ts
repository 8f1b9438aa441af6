import { join } from 'node:path';

/** Files of a hub data directory. Keys and the store are 0600, the directory 0700. */
export function hubPaths(dataDir: string) {
  return {
    dir: dataDir,
    config: join(dataDir, 'hub.json'),
    caCert: join(dataDir, 'ca.pem'), // issuing CA first, then its parents
    caKey: join(dataDir, 'ca-key.pem'), // absent when the operator kept the CA key
    hubCert: join(dataDir, 'hub.pem'), // hub leaf first, then the chain
    hubKey: join(dataDir, 'hub-key.pem'),
    store: join(dataDir, 'state.json'),
    adminProfile: join(dataDir, 'admin-profile.json'),
    audit: join(dataDir, 'audit'), // append-only audit segments (hub/audit), 0700
    executions: join(dataDir, 'executions'), // execution history segments (hub/executions), 0700
    agentBundle: join(dataDir, 'agent-bundle'), // the agent bundle served at /agent/bundle.tgz (hub/web/agentdist.ts), 0700
  };
}
export type HubPaths = ReturnType<typeof hubPaths>;
