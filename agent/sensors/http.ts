/**
 * Probes a URL every interval. Latency is time to response headers; the body is discarded (at
 * most MAX_BODY_BYTES read, for at most BODY_GRACE_MS) and redirects are not followed. No
 * response (refused, TLS failure, timeout) gives status 0, ok false and `error`.
 */
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { readFile } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { parseSensorConfig } from '../../common/sensors/index.js';
import type { Sensor } from './types.js';

const MAX_BODY_BYTES = 64 * 1024;
const BODY_GRACE_MS = 1_000;
const MAX_CA_FILE_BYTES = 1024 * 1024;

function probe(url: URL, opts: { method: string; ca?: Buffer; insecure: boolean; signal: AbortSignal }): Promise<number> {
  return new Promise((resolve, reject) => {
    const onResponse = (res: IncomingMessage) => {
      resolve(res.statusCode ?? 0);
      // The body is discarded: read at most MAX_BODY_BYTES for at most BODY_GRACE_MS, then hang up.
      let seen = 0;
      const cut = setTimeout(() => res.destroy(), BODY_GRACE_MS).unref();
      res.on('data', (chunk: Buffer) => { seen += chunk.length; if (seen > MAX_BODY_BYTES) res.destroy(); });
      res.on('close', () => clearTimeout(cut));
      res.on('error', () => { /* errors after the headers do not change the reading */ });
    };
    const common = { method: opts.method, signal: opts.signal, agent: false as const, headers: { 'user-agent': 'trellis-agent-sensor' } };
    const req = url.protocol === 'https:'
      ? httpsRequest(url, { ...common, ca: opts.ca, rejectUnauthorized: !opts.insecure }, onResponse)
      : httpRequest(url, common, onResponse);
    req.on('error', reject);
    req.end();
  });
}

export const http: Sensor = {
  kind: 'http',
  create(ctx) {
    const c = parseSensorConfig('http', ctx.config);
    const url = new URL(c.url);
    const expect = c.expectStatus === undefined ? undefined : new Set(Array.isArray(c.expectStatus) ? c.expectStatus : [c.expectStatus]);
    let ca: Buffer | undefined;
    let last: { status: number; ok: boolean } | undefined;
    return {
      async poll() {
        if (c.caFile !== undefined && ca === undefined) {
          const pem = await readFile(c.caFile);
          if (pem.length > MAX_CA_FILE_BYTES) throw new Error(`caFile ${c.caFile} is over ${MAX_CA_FILE_BYTES} bytes`);
          ca = pem;
        }
        // One controller per probe: the stop signal and the timeout both abort it; both are
        // detached when the probe ends (no listener piles up on the long-lived stop signal).
        const ac = new AbortController();
        let timedOut = false;
        const timer = setTimeout(() => { timedOut = true; ac.abort(); }, c.timeout);
        const onStop = () => ac.abort();
        ctx.signal.addEventListener('abort', onStop, { once: true });
        const t0 = performance.now();
        let status = 0;
        let error: string | undefined;
        try {
          status = await probe(url, { method: c.method, ca, insecure: c.insecure, signal: ac.signal });
        } catch (err) {
          if (ctx.signal.aborted) return [];
          error = timedOut ? `timed out after ${c.timeout} ms` : (err as Error).message;
        } finally {
          clearTimeout(timer);
          ctx.signal.removeEventListener('abort', onStop);
        }
        const latencyMs = Math.round(performance.now() - t0);
        const ok = status !== 0 && (expect ? expect.has(status) : status >= 200 && status < 400);
        const changed = !last || last.ok !== ok || last.status !== status;
        last = { status, ok };
        const emit = c.emit === 'always' || (c.emit === 'change' && changed) || (c.emit === 'failure' && !ok);
        if (!emit) return [];
        return [{ payload: { url: c.url, status, ok, latencyMs, ...(error !== undefined ? { error } : {}) } }];
      },
    };
  },
};
