/**
 * TLS channel credentials for a gRPC client. grpc-js sends the target host as the TLS server
 * name (SNI) even when it is an IP address, which RFC 6066 forbids and Node reports on every
 * connection (DEP0123). For an IP target the server name is replaced by a placeholder that is
 * never looked up, and the hub certificate is still checked against the IP address dialed
 * (its IP SANs), exactly as before: only the SNI field changes.
 */
import * as grpc from '@grpc/grpc-js';
import { checkServerIdentity } from 'node:tls';
import { isIP } from 'node:net';
import { CLIENT_OPTIONS, parseHostPort } from './grpc-options.js';

/** Sent as SNI when the hub is addressed by IP; `.invalid` never resolves (RFC 6761). */
export const IP_TARGET_SNI = 'hub-by-ip.trellis.invalid';

export interface SecureChannel { creds: grpc.ChannelCredentials; options: grpc.ChannelOptions }

/** Credentials and channel options for TARGET ("host:port"), trusting caPem; key/cert for mutual TLS. */
export function secureChannel(target: string, caPem: string, keyPem?: string, certPem?: string): SecureChannel {
  let host = '';
  try { host = parseHostPort(target, 443).host; } catch { /* grpc-js reports the bad target */ }
  const ip = isIP(host) ? host : undefined;
  const creds = grpc.credentials.createSsl(Buffer.from(caPem), keyPem ? Buffer.from(keyPem) : null, certPem ? Buffer.from(certPem) : null,
    ip ? { checkServerIdentity: (_sni, cert) => checkServerIdentity(ip, cert) } : {});
  return { creds, options: ip ? { ...CLIENT_OPTIONS, 'grpc.ssl_target_name_override': IP_TARGET_SNI } : { ...CLIENT_OPTIONS } };
}
