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
    // CA rotation (hub/pki/rotation.ts): its state, the next CA's key (0600), the hub certificate
    // issued from the next CA while a commit is under way, and the CA a commit replaced.
    caRotation: join(dataDir, 'ca-rotation.json'),
    caNextKey: join(dataDir, 'ca-next-key.pem'),
    hubNextCert: join(dataDir, 'hub-next.pem'),
    hubNextKey: join(dataDir, 'hub-next-key.pem'),
    caPrevious: join(dataDir, 'ca-previous.pem'),
    store: join(dataDir, 'state.json'),
    adminProfile: join(dataDir, 'admin-profile.json'),
    audit: join(dataDir, 'audit'), // append-only audit segments (hub/audit), 0700
    executions: join(dataDir, 'executions'), // execution history segments (hub/executions), 0700
    agentBundle: join(dataDir, 'agent-bundle'), // the agent bundle served at /agent/bundle.tgz (hub/web/agentdist.ts), 0700
    snapshots: join(dataDir, 'snapshots'), // encrypted snapshots (hub/snapshots), 0700, files 0600
  };
}
export type HubPaths = ReturnType<typeof hubPaths>;
