/**
 * Reads the certificate chain a TLS server presents, without trusting it yet. Used to pin the
 * hub CA by fingerprint (join tokens, ssh-style first login) before any credential is sent.
 */
import * as tls from 'node:tls';
import { isIP } from 'node:net';
import { TrellisError } from './errors.js';
import { fingerprintSha256, verifyIssuedBy } from '../certs/index.js';
import { explainProbe, socketErrorKind, toPem, type HubPort } from './connect-diagnosis.js';

/** `expect`: which hub port the caller meant (for the error message when it fails). */
export function fetchServedChain(host: string, port: number, timeoutMs = 10_000, expect: HubPort = 'admin'): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host, port, rejectUnauthorized: false, ALPNProtocols: ['h2'],
      ...(isIP(host) ? {} : { servername: host }),
    });
    const timer = setTimeout(() => { socket.destroy(); reject(explainProbe({ kind: 'timeout', detail: '' }, { host, port, expect, timeoutMs })); }, timeoutMs);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      const chain: string[] = [];
      const seen = new Set<string>();
      let c: tls.DetailedPeerCertificate | undefined = socket.getPeerCertificate(true);
      while (c && c.raw && !seen.has(c.fingerprint256)) {
        seen.add(c.fingerprint256);
        chain.push(toPem(c.raw));
        c = c.issuerCertificate;
      }
      socket.destroy();
      resolve(chain);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(explainProbe({ kind: socketErrorKind(err), detail: err.message }, { host, port, expect }, err)
        ?? new TrellisError('TRELLIS_E_UNAVAILABLE', `cannot reach ${host}:${port}`, { cause: err }));
    });
  });
}

/**
 * Finds the certificate with fingerprint `pin` in a served chain and returns it with the
 * certificates above it (what a verifier needs as trust anchors), or undefined.
 */
export function pinnedBundle(chain: string[], pin: string): string[] | undefined {
  const want = pin.toLowerCase().replace(/^sha256:/, '').replace(/:/g, '');
  const idx = chain.findIndex((c) => fingerprintSha256(c) === want);
  if (idx < 0) return undefined;
  const bundle = [chain[idx]!];
  for (let i = idx + 1; i < chain.length && verifyIssuedBy(bundle[bundle.length - 1]!, chain[i]!); i++) bundle.push(chain[i]!);
  // The leaf must have been issued by the pinned CA (directly or through the served chain below it).
  for (let i = idx; i > 0; i--) if (!verifyIssuedBy(chain[i - 1]!, chain[i]!)) return undefined;
  return bundle;
}
