/**
 * Keep-alive connections for the `http` runner, one pool per agent (the composition root owns it
 * and closes it with the agent).
 *
 * A new TCP (and TLS) connection per run was most of the agent's CPU per http action at 1,000
 * actions/s. Connections are kept only between runs that end cleanly: a run that times out, is
 * canceled, fails or is truncated destroys its socket (runners/http.ts), so nothing half-read is
 * ever handed to the next run. Verifying (`rejectUnauthorized`) and `insecure` HTTPS runs use
 * separate pools, so a connection set up without verifying the server's certificate is never
 * reused by a run that asked for verification.
 *
 * Bounds: at most MAX_SOCKETS_PER_HOST connections per host (the agent runs at most 16 actions at
 * once, so a burst to one host does not queue behind the pool), MAX_TOTAL_SOCKETS in all, at most
 * MAX_FREE_SOCKETS idle per host, and an idle connection is closed after FREE_SOCKET_TIMEOUT_MS or
 * 1 s before the server's own `Keep-Alive: timeout=N` hint, whichever is sooner (Node's agent reads
 * the hint), so a run rarely picks a connection the server is closing. When it does (a reused
 * connection reset before any response byte), runners/http.ts retries an idempotent request
 * once on a new connection.
 */
import http from 'node:http';
import https from 'node:https';

export const MAX_SOCKETS_PER_HOST = 16;
export const MAX_TOTAL_SOCKETS = 64;
// As many idle as may be busy: actions come in bursts (the hub sends a batch at once), and a
// connection closed for want of an idle slot is a new one for the next burst.
export const MAX_FREE_SOCKETS = MAX_SOCKETS_PER_HOST;
export const FREE_SOCKET_TIMEOUT_MS = 4_000;

export class HttpPool {
  readonly http: http.Agent;
  readonly https: https.Agent;
  /** https with `insecure: true` (no server verification): never shares connections with `https`. */
  readonly httpsInsecure: https.Agent;
  private closed = false;

  constructor(o: { maxSocketsPerHost?: number; maxTotalSockets?: number; maxFreeSockets?: number; freeSocketTimeoutMs?: number } = {}) {
    const base = {
      keepAlive: true,
      maxSockets: o.maxSocketsPerHost ?? MAX_SOCKETS_PER_HOST,
      maxTotalSockets: o.maxTotalSockets ?? MAX_TOTAL_SOCKETS,
      maxFreeSockets: o.maxFreeSockets ?? MAX_FREE_SOCKETS,
      // The idle timeout of a kept socket (Node's agent closes a free socket when it fires; on a
      // socket in use it only emits an event nobody acts on: the action timeout covers the exchange).
      timeout: o.freeSocketTimeoutMs ?? FREE_SOCKET_TIMEOUT_MS,
      scheduling: 'lifo' as const, // the most recently used connection: the least likely to be closing
    };
    this.http = new http.Agent(base);
    this.https = new https.Agent({ ...base, rejectUnauthorized: true });
    this.httpsInsecure = new https.Agent({ ...base, rejectUnauthorized: false });
  }

  /** The pool for a URL, or undefined once closed (the run then uses a connection of its own). */
  agentFor(url: URL, insecure: boolean): http.Agent | undefined {
    if (this.closed) return undefined;
    if (url.protocol === 'https:') return insecure ? this.httpsInsecure : this.https;
    return this.http;
  }

  /** Idle connections: the number per pool (tests and diagnostics). */
  idle(): { http: number; https: number; httpsInsecure: number } {
    const count = (a: http.Agent) => Object.values(a.freeSockets).reduce((n, l) => n + (l?.length ?? 0), 0);
    return { http: count(this.http), https: count(this.https), httpsInsecure: count(this.httpsInsecure) };
  }

  /** Closes every connection, idle or in use (agent shutdown). */
  close(): void {
    this.closed = true;
    this.http.destroy();
    this.https.destroy();
    this.httpsInsecure.destroy();
  }
}
