/**
 * TLS handshakes the agent port refuses (no client certificate, one from another CA, an
 * expired one, garbage) never reach a gRPC handler, so they are audited here, from the HTTP/2
 * servers' `tlsClientError`. Like widenFlowControl this reaches into grpc-js's server internals
 * and is guarded: if they change, it does nothing and says so (the refusal itself is TLS's).
 */
import type * as grpc from '@grpc/grpc-js';
import type { TLSSocket } from 'node:tls';
import type { AuditSink } from '../audit/types.js';

export const TLS_METHOD = 'agent-port TLS handshake';

export function auditTlsRefusals(server: grpc.Server, audit: AuditSink): boolean {
  const servers = (server as unknown as { http2Servers?: Map<{ on?: (ev: string, fn: (err: Error, s: TLSSocket) => void) => void }, unknown> }).http2Servers;
  if (!(servers instanceof Map) || servers.size === 0) return false;
  for (const srv of servers.keys()) {
    srv.on?.('tlsClientError', (err: Error, socket: TLSSocket) => {
      const code = (err as NodeJS.ErrnoException).code;
      audit.record({
        timeMs: Date.now(), actor: '-', tenant: '', method: TLS_METHOD, target: '', result: 'unauthenticated',
        sourceAddress: socket?.remoteAddress ?? '', detail: `TLS handshake refused: ${(code ? `${code}: ` : '') + String(err?.message ?? err)}`.slice(0, 300),
      });
    });
  }
  return true;
}
