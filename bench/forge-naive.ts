/**
 * The naive baseline: an agent certificate issued with node-forge's pure-JS high-level API and an
 * RSA-2048 CA (keys made with node:crypto, converted to forge through PEM).
 */
import crypto from 'node:crypto';
import forge from 'node-forge';

export interface ForgeIssuer {
  caCertPem: string;
  /** node:crypto view of the CA public key, to check results. */
  caPublicKey: crypto.KeyObject;
  issue(agentId: string, tenant: string, uri: string): string;
}

function serialHex(): string {
  const s = crypto.randomBytes(16);
  s[0] = (s[0]! & 0x7f) || 0x01;
  return s.toString('hex');
}

export function makeForgeIssuer(): ForgeIssuer {
  const ca = crypto.generateKeyPairSync('rsa', { modulusLength: 2048, publicExponent: 0x10001 });
  const subject = crypto.generateKeyPairSync('rsa', { modulusLength: 2048, publicExponent: 0x10001 });
  const caKey = forge.pki.privateKeyFromPem(ca.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string);
  const caPub = forge.pki.publicKeyFromPem(ca.publicKey.export({ type: 'spki', format: 'pem' }) as string);
  const subjectPub = forge.pki.publicKeyFromPem(subject.publicKey.export({ type: 'spki', format: 'pem' }) as string);

  // The CA certificate, self-signed, made once with the same API.
  const caCert = forge.pki.createCertificate();
  caCert.publicKey = caPub;
  caCert.serialNumber = serialHex();
  const now = Date.now();
  caCert.validity.notBefore = new Date(now - 5 * 60_000);
  caCert.validity.notAfter = new Date(now + 3650 * 86_400_000);
  const caAttrs = [{ name: 'commonName', value: 'Trellis bench forge CA' }];
  caCert.setSubject(caAttrs);
  caCert.setIssuer(caAttrs);
  caCert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', digitalSignature: true, keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  caCert.sign(caKey, forge.md.sha256.create());
  const caKeyId = caCert.generateSubjectKeyIdentifier().getBytes();

  const issue = (agentId: string, tenant: string, uri: string): string => {
    const cert = forge.pki.createCertificate();
    cert.publicKey = subjectPub;
    cert.serialNumber = serialHex();
    const t = Date.now();
    cert.validity.notBefore = new Date(t - 5 * 60_000);
    cert.validity.notAfter = new Date(t + 7 * 86_400_000);
    cert.setSubject([{ name: 'commonName', value: agentId }, { name: 'organizationName', value: tenant }]);
    cert.setIssuer(caCert.subject.attributes);
    cert.setExtensions([
      { name: 'basicConstraints', cA: false, critical: true },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
      { name: 'extKeyUsage', clientAuth: true },
      { name: 'subjectAltName', altNames: [{ type: 6, value: uri }] },
      { name: 'subjectKeyIdentifier' },
      { name: 'authorityKeyIdentifier', keyIdentifier: caKeyId },
    ]);
    cert.sign(caKey, forge.md.sha256.create());
    return forge.pki.certificateToPem(cert);
  };

  return { caCertPem: forge.pki.certificateToPem(caCert), caPublicKey: ca.publicKey, issue };
}
