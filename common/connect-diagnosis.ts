/**
 * Why a connection to the hub failed, in words a person can act on. A failed gRPC call only
 * says "UNAVAILABLE" with OpenSSL text; this module probes the address itself (TCP, then TLS
 * without trusting anything, then an HTTP/2 preface) and names the cause: nothing listening,
 * DNS, no answer, not TLS, a CA the caller does not trust, a certificate that does not name the
 * address dialed, or the agent port where the admin port is expected (and the reverse).
 * Nothing is sent but the TLS handshake and the HTTP/2 preface: no credential, no request.
 */
import * as tls from 'node:tls';
import { isIP } from 'node:net';
import { TrellisError } from './errors.js';
import { fingerprintSha256, splitPemBundle, verifyIssuedBy } from '../certs/index.js';
import { formatHostPort } from './grpc-options.js';

export type HubPort = 'admin' | 'agent';
export const DEFAULT_PORTS: Record<HubPort, number> = { agent: 7443, admin: 7444 };

export type ProbeResult =
  | { kind: 'dns' | 'refused' | 'unreachable' | 'timeout' | 'not-tls'; detail: string }
  | {
    kind: 'tls';
    /** The served chain, leaf first, as PEM. */
    chain: string[];
    /** The leaf's subject alternative names (DNS names and IP addresses). */
    names: string[];
    /** Why the leaf does not name the host dialed, if it does not. */
    nameError?: string;
    /** The leaf is not for TLS servers (its extended key usage lacks serverAuth): an agent or client certificate. */
    notServer?: boolean;
    /** The leaf's notAfter when it has expired. */
    expiredAt?: string;
    /** The chain verifies against the caller's CA bundle (undefined: no bundle given). */
    trusted?: boolean;
    /** The server asks for a client certificate (the hub's agent port); undefined when it could not be told. */
    clientCertRequired?: boolean;
  };

const DNS_CODES = new Set(['ENOTFOUND', 'EAI_AGAIN', 'EAI_NODATA', 'EAI_FAIL', 'EAI_NONAME']);
const UNREACHABLE_CODES = new Set(['EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL', 'EHOSTDOWN']);

/** A socket error before the TLS handshake finished, by kind. */
export function socketErrorKind(err: NodeJS.ErrnoException): 'dns' | 'refused' | 'unreachable' | 'timeout' | 'not-tls' {
  const code = err.code ?? '';
  if (DNS_CODES.has(code)) return 'dns';
  if (code === 'ECONNREFUSED') return 'refused';
  if (UNREACHABLE_CODES.has(code)) return 'unreachable';
  if (code === 'ETIMEDOUT') return 'timeout';
  return 'not-tls';
}

const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
const PREFACE = Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]);

/** Whether a served chain verifies against a PEM bundle (a served certificate is in it, or was issued by one in it). */
export function chainTrusted(chain: string[], bundlePem: string): boolean {
  const bundle = splitPemBundle(bundlePem);
  const fps = new Set(bundle.map((b) => fingerprintSha256(b)));
  return chain.some((c) => fps.has(fingerprintSha256(c)) || bundle.some((b) => verifyIssuedBy(c, b)));
}

/**
 * Probes HOST:PORT: TCP, a TLS handshake that trusts nothing, then (only to a server that passed
 * every check against caPem: trusted CA, server certificate naming the host, not expired) an
 * HTTP/2 preface to learn whether it wants a client certificate. An impostor gets no byte.
 */
export function probeHub(host: string, port: number, timeoutMs = 5_000, caPem?: string): Promise<ProbeResult> {
  return new Promise((resolve) => {
    let done = false;
    let result: ProbeResult | undefined;
    const socket = tls.connect({ host, port, rejectUnauthorized: false, ALPNProtocols: ['h2'], ...(isIP(host) ? {} : { servername: host }) });
    const finish = (r: ProbeResult) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => finish(result ?? { kind: 'timeout', detail: `no TLS answer within ${timeoutMs} ms` }), timeoutMs);
    socket.once('secureConnect', () => {
      const chain: string[] = [];
      const seen = new Set<string>();
      const leaf = socket.getPeerCertificate(true);
      for (let c: tls.DetailedPeerCertificate | undefined = leaf; c && c.raw && !seen.has(c.fingerprint256); c = c.issuerCertificate) {
        seen.add(c.fingerprint256);
        chain.push(toPem(c.raw));
      }
      const names = (leaf.subjectaltname ?? '').split(/,\s*/).filter((n) => /^(DNS|IP Address):/.test(n)).map((n) => n.replace(/^(DNS|IP Address):/, ''));
      const nameError = leaf.raw ? tls.checkServerIdentity(host, leaf)?.message : undefined;
      const eku = (leaf as { ext_key_usage?: string[] }).ext_key_usage;
      const notServer = Array.isArray(eku) && eku.length > 0 && !eku.includes(SERVER_AUTH);
      const expiredAt = leaf.valid_to && Date.parse(leaf.valid_to) < Date.now() ? new Date(leaf.valid_to).toISOString() : undefined;
      const trusted = caPem !== undefined && chain.length > 0 ? chainTrusted(chain, caPem) : undefined;
      result = { kind: 'tls', chain, names, nameError, notServer, expiredAt, trusted };
      if (!trusted || nameError || notServer || expiredAt) { finish(result); return; }
      // A server that requires a client certificate (mTLS, TLS 1.3) refuses it after the handshake, on the first read.
      socket.on('data', () => finish({ ...(result as object), clientCertRequired: false } as ProbeResult));
      socket.write(PREFACE);
      setTimeout(() => finish(result!), Math.min(3_000, timeoutMs)).unref();
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (result) {
        const wantsCert = /certificate required|alert number 116|CERTIFICATE_REQUIRED/i.test(`${err.code} ${err.message}`);
        finish({ ...(result as object), ...(wantsCert ? { clientCertRequired: true } : {}) } as ProbeResult);
        return;
      }
      if (/alert/i.test(err.message) && /certificate/i.test(err.message)) {
        // TLS 1.2 servers ask for the client certificate inside the handshake.
        finish({ kind: 'tls', chain: [], names: [], clientCertRequired: true });
        return;
      }
      finish({ kind: socketErrorKind(err), detail: `${err.code ?? ''} ${err.message}`.trim() });
    });
    socket.on('end', () => { if (result) finish(result); });
  });
}

/** A certificate's DER as PEM. */
export function toPem(raw: Buffer): string {
  const b64 = raw.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n$/, '');
  return `-----BEGIN CERTIFICATE-----\n${b64}\n-----END CERTIFICATE-----\n`;
}

export interface ExplainOptions {
  host: string;
  port: number;
  /** The port the caller meant to reach. */
  expect: HubPort;
  /** The CA bundle the caller trusts; omit to skip the trust check. */
  caPem?: string;
  /** Who trusts caPem, for messages: "your profile", "the CA file ca.pem", "this agent". */
  trustedBy?: string;
  /** Builds the error for a hub whose CA the bundle does not hold (default: TRELLIS_E_CA_MISMATCH). */
  untrusted?: (servedCa: string, bundle: string[]) => TrellisError;
  /** The probe's time limit, for the timeout message. */
  timeoutMs?: number;
}

const short = (fp: string) => `${fp.slice(0, 16)}…`;

/** The plain-language error for a probe result; undefined when the probe found nothing wrong. */
export function explainProbe(p: ProbeResult, o: ExplainOptions, cause?: unknown): TrellisError | undefined {
  const hp = formatHostPort(o.host, o.port);
  const ports = `the hub's ${o.expect} port is ${DEFAULT_PORTS[o.expect]} unless configured otherwise; \`trellis hub run\` prints its ports`;
  const err = (code: ConstructorParameters<typeof TrellisError>[0], msg: string) => new TrellisError(code, msg, { cause });
  switch (p.kind) {
    case 'dns':
      return err('TRELLIS_E_DNS', `cannot resolve "${o.host}" (DNS lookup failed): check the spelling of the hub address, or use a name or IP address the hub's certificate holds`);
    case 'refused':
      return err('TRELLIS_E_UNAVAILABLE', `cannot reach the hub at ${hp} (connection refused): is \`trellis hub run\` running there? (${ports[0]!.toUpperCase()}${ports.slice(1)}.)`);
    case 'unreachable':
      return err('TRELLIS_E_UNAVAILABLE', `cannot reach the hub at ${hp} (no route to the host): check the address and the network between here and the hub`);
    case 'timeout':
      return err('TRELLIS_E_TIMEOUT', `no answer from ${hp}${o.timeoutMs ? ` within ${Math.round(o.timeoutMs / 1000)} s` : ''}: the host may be down or a firewall may drop the traffic; check the address and port (${ports})`);
    case 'not-tls':
      return err('TRELLIS_E_UNAVAILABLE', `${hp} answered but not as a Trellis hub (no TLS handshake): check the address and port (${ports})`);
    case 'tls': {
      if (o.caPem && p.chain.length > 0) {
        const fps = splitPemBundle(o.caPem).map((b) => fingerprintSha256(b));
        if (!chainTrusted(p.chain, o.caPem)) {
          const servedCa = fingerprintSha256(p.chain[p.chain.length - 1]!);
          if (o.untrusted) { const e = o.untrusted(servedCa, fps); return cause === undefined ? e : new TrellisError(e.code, e.message, { cause }); }
          return err('TRELLIS_E_CA_MISMATCH', `the hub at ${hp} presents a certificate from CA sha256 ${servedCa} which ${o.trustedBy ?? 'the trusted CA bundle'} does not hold (it holds ${fps.map(short).join(', ') || 'nothing'}); nothing was sent. ` +
            'Use the hub\'s CA: ca.pem in its data directory, or --ca-fingerprint after checking the fingerprint with the hub\'s operator (if the hub\'s CA was rotated, its new ca.pem)');
        }
      }
      if (p.notServer) {
        return err('TRELLIS_E_CERT_INVALID', `the hub's certificate was refused, nothing was sent: ${hp} presents a certificate that is not for servers (unsuitable certificate purpose: an agent or client certificate), so it is not the hub; check the address`);
      }
      if (p.expiredAt) {
        return err('TRELLIS_E_CERT_INVALID', `the hub's certificate was refused, nothing was sent: it expired at ${p.expiredAt}; an administrator renews it on the hub host: trellis certs issue-hub (or \`certs replace\` for an operator-supplied one)`);
      }
      if (p.nameError) {
        const names = p.names.length ? p.names.join(', ') : 'no names';
        return err('TRELLIS_E_CERT_NAME', `the hub's certificate was refused, nothing was sent: it does not name "${o.host}", the address dialed (it names: ${names}). ` +
          `Connect with one of those names, or have an administrator add it: trellis certs issue-hub --name ${[...p.names, o.host].join(',')}`);
      }
      if (o.expect === 'admin' && p.clientCertRequired === true) {
        return err('TRELLIS_E_WRONG_PORT', `${hp} is the hub's agent port (it asks for an agent certificate); this command talks to the admin port (${DEFAULT_PORTS.admin} unless configured otherwise; \`trellis hub run\` prints both), e.g. ${formatHostPort(o.host, DEFAULT_PORTS.admin)}`);
      }
      if (o.expect === 'agent' && p.clientCertRequired === false) return wrongPortForAgent(hp, cause);
      return undefined;
    }
  }
}

/** An agent pointed at a port that does not serve agents (the admin port, most likely): retrying cannot help. */
export function wrongPortForAgent(hp: string, cause?: unknown): TrellisError {
  return new TrellisError('TRELLIS_E_WRONG_PORT', `${hp} answers but does not serve agents: it is most likely the hub's admin port. Agents connect to the agent port (${DEFAULT_PORTS.agent} unless configured otherwise; \`trellis hub run\` prints both): fix --hub of \`trellis agent run\` (or the hub saved at enrollment)`, { cause });
}

/** Probes the address and explains a failed connection; undefined when the probe finds nothing to say. */
export async function diagnoseConnection(cause: unknown, o: ExplainOptions): Promise<TrellisError | undefined> {
  const timeoutMs = o.timeoutMs ?? 5_000;
  const p = await probeHub(o.host, o.port, timeoutMs, o.caPem);
  return explainProbe(p, { ...o, timeoutMs }, cause);
}
