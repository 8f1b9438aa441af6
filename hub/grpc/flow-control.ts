/**
 * Larger HTTP/2 flow-control windows for the agent port. grpc-js servers keep Node's default
 * 64 KiB stream window and offer no option to change it; with batched events every 64 KiB waits
 * for a WINDOW_UPDATE round trip, and both ends sit idle half the time. We ask each new HTTP/2
 * session for bigger windows. This reaches into grpc-js's server internals, so it is guarded:
 * if they change, it does nothing and the channel still works at the default window.
 */
import type * as grpc from '@grpc/grpc-js';
import type { Http2Session } from 'node:http2';

export const STREAM_WINDOW_BYTES = 4 * 1024 * 1024;
export const SESSION_WINDOW_BYTES = 16 * 1024 * 1024;

export function widenFlowControl(server: grpc.Server): boolean {
  const servers = (server as unknown as { http2Servers?: Map<{ on?: (ev: string, fn: (s: Http2Session) => void) => void }, unknown> }).http2Servers;
  if (!(servers instanceof Map) || servers.size === 0) return false;
  for (const srv of servers.keys()) {
    srv.on?.('session', (session: Http2Session) => {
      try {
        session.settings({ initialWindowSize: STREAM_WINDOW_BYTES });
        session.setLocalWindowSize(SESSION_WINDOW_BYTES);
      } catch {
        /* a session closing as we configure it: nothing to do */
      }
    });
  }
  return true;
}
