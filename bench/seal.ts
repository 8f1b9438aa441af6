/**
 * Secret sealing figure for bench/bench.ts: seals per second of a 64-byte secret for one P-256
 * agent certificate (the recipient key is cached per certificate after the first seal).
 */
import { createCA, generateKey, issueCertificate, openSealed, sealAad, sealFor } from '../certs/index.js';
import { note } from './lib.js';

const SEAL_RUN_MS = 1000;

export function benchSeal(runMs = SEAL_RUN_MS): { perS: number } {
  const ca = createCA({ commonName: 'bench seal CA' });
  const k = generateKey('ec-p256');
  const certPem = issueCertificate({
    issuerCertPem: ca.certPem, issuerKey: ca.key, subjectPublicKey: k.publicKey, subject: { commonName: 'bench-agent' },
    usage: 'client', notAfter: new Date(Date.now() + 86_400_000),
  });
  const secret = Buffer.alloc(64, 0x61);
  const aad = sealAad('bench-agent', 'exec', '01BENCHEXEC');
  let sample = '';
  for (let i = 0; i < 200; i++) sample = sealFor(certPem, secret, aad); // warm-up (and the cache)
  let n = 0;
  const start = performance.now();
  let ms = 0;
  while ((ms = performance.now() - start) < runMs) {
    for (let i = 0; i < 100; i++) sample = sealFor(certPem, secret, aad);
    n += 100;
  }
  if (!openSealed(sample, k.privateKey, aad).equals(secret)) throw new Error('a sealed sample does not open');
  const perS = (n * 1000) / ms;
  note(`seal: ${n} seals (64 B, P-256) in ${Math.round(ms)} ms, ${((ms * 1000) / n).toFixed(1)} us each; ${sample.length} chars each`);
  return { perS };
}
