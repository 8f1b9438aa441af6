/**
 * Server credentials whose certificate can be swapped while running: grpc-js applies a new
 * secure context to new connections and leaves established ones alone, so replacing the hub
 * certificate (or publishing a new CA bundle) drops no agent.
 */
import * as grpc from '@grpc/grpc-js';
import type {
  CaCertificateUpdateListener, CertificateProvider, IdentityCertificateUpdateListener,
} from '@grpc/grpc-js/build/src/certificate-provider.js';

export class MemoryCertificateProvider implements CertificateProvider {
  private ca: Buffer | null;
  private identity: { certificate: Buffer; privateKey: Buffer } | null;
  private readonly caListeners = new Set<CaCertificateUpdateListener>();
  private readonly idListeners = new Set<IdentityCertificateUpdateListener>();

  constructor(init: { ca?: string; certChain?: string; key?: string }) {
    this.ca = init.ca ? Buffer.from(init.ca) : null;
    this.identity = init.certChain && init.key ? { certificate: Buffer.from(init.certChain), privateKey: Buffer.from(init.key) } : null;
  }

  setCa(pem: string): void {
    this.ca = Buffer.from(pem);
    for (const l of this.caListeners) l({ caCertificate: this.ca });
  }

  setIdentity(certChain: string, key: string): void {
    this.identity = { certificate: Buffer.from(certChain), privateKey: Buffer.from(key) };
    for (const l of this.idListeners) l(this.identity);
  }

  addCaCertificateListener(l: CaCertificateUpdateListener): void {
    this.caListeners.add(l);
    // Deliver after grpc-js has registered its watcher (a synchronous call would be lost).
    queueMicrotask(() => { if (this.ca && this.caListeners.has(l)) l({ caCertificate: this.ca }); });
  }
  removeCaCertificateListener(l: CaCertificateUpdateListener): void { this.caListeners.delete(l); }
  addIdentityCertificateListener(l: IdentityCertificateUpdateListener): void {
    this.idListeners.add(l);
    queueMicrotask(() => { if (this.identity && this.idListeners.has(l)) l(this.identity); });
  }
  removeIdentityCertificateListener(l: IdentityCertificateUpdateListener): void { this.idListeners.delete(l); }
}

/** mTLS credentials for the agent port: a client certificate chaining to `caProvider` is required. */
export function mtlsServerCredentials(identity: MemoryCertificateProvider, ca: MemoryCertificateProvider): grpc.ServerCredentials {
  return grpc.experimental.createCertificateProviderServerCredentials(identity, ca, true);
}

/** Server-TLS credentials for the admin port. */
export function tlsServerCredentials(identity: MemoryCertificateProvider): grpc.ServerCredentials {
  return grpc.experimental.createCertificateProviderServerCredentials(identity, null, false);
}
