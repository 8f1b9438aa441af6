/**
 * `trellis events --follow`: the live stream (wss://HUB:WEBPORT/stream) with the profile's
 * pinned CA, login token (or TRELLIS_API_KEY) and tenant. One line per message, or raw JSON
 * with --json. Reconnects with capped, jittered backoff (common/backoff.ts) until Ctrl-C; stops
 * for good on refused credentials or permissions (401/403, close codes 4001 and 4003); 429 (too
 * many streams of this user) and 503 are retried.
 */
import type { Command } from 'commander';
import { WebSocket } from 'ws';
import { TrellisError, isTrellisError } from '../../common/errors.js';
import { backoffDelay } from '../../common/backoff.js';
import { fromProfile } from '../client.js';
import { resolveProfile, type Profile } from '../profile.js';
import { webBase } from './webhooks.js';
import { print } from '../format.js';

const PAYLOAD_SHOWN = 500;

interface FollowOptions { type?: string; agent?: string; execution?: string; executions?: boolean; json?: boolean; webPort?: string }

type Attempt =
  | { kind: 'closed'; opened: boolean; code: number; reason: string }
  | { kind: 'refused'; status: number; message: string }
  | { kind: 'error'; opened: boolean; message: string }
  | { kind: 'aborted' };

function line(s: string): void { print(s); }

/** One human line per message (the raw JSON when it is not one we know). */
export function formatMessage(raw: string): string {
  let m: Record<string, unknown>;
  try { m = JSON.parse(raw) as Record<string, unknown>; } catch { return raw; }
  const time = (ms: unknown) => (typeof ms === 'number' && ms > 0 ? new Date(ms).toISOString() : '-');
  if (m.kind === 'event') {
    let payload = JSON.stringify(m.payload ?? null);
    if (typeof m.payloadTruncated === 'number') payload = `(payload of ${m.payloadTruncated} bytes not forwarded between hubs; follow the agent's own hub to see it)`;
    else if (payload.length > PAYLOAD_SHOWN) payload = payload.slice(0, PAYLOAD_SHOWN) + '… (--json shows it all)';
    return `${time(m.timeMs)}  ${String(m.type)}  ${m.agent ? String(m.agent) : '-'}  ${payload}`;
  }
  if (m.kind === 'execution') {
    const r = (m.record ?? {}) as Record<string, unknown>;
    const at = (r.finishedMs as number) || (r.startedMs as number) || (r.requestedMs as number);
    const exit = r.finishedMs ? `  exit ${String(r.exitCode)}` : '';
    return `${time(at)}  execution ${String(r.id)}  ${String(r.status)}  ${String(r.action)}  ${r.agentId ? String(r.agentId) : '-'}${exit}${r.error ? `  ${String(r.error)}` : ''}`;
  }
  if (m.kind === 'gap') {
    return `${time(Date.now())}  gap  ${Number(m.dropped) || 0} event(s) of tenant ${String(m.tenant)} from another hub not shown: ${String(m.reason ?? '')}`;
  }
  if (m.kind === 'output') {
    const data = String(m.data ?? '').replace(/\n$/, '');
    const stream = String(m.stream).toLowerCase();
    return data.split('\n').map((l) => `${String(m.executionId)} ${stream}| ${l}`).join('\n');
  }
  return raw;
}

function query(o: FollowOptions): string {
  const q = new URLSearchParams();
  if (o.type) q.set('type', o.type);
  if (o.agent) q.set('agent', o.agent);
  if (o.execution) q.set('execution', o.execution);
  if (o.executions || o.execution) q.set('kinds', 'events,executions');
  const s = q.toString();
  return s ? `?${s}` : '';
}

/** One connection: resolves when it ends, however it ends. */
function connectOnce(url: string, p: Profile, credential: string, tenant: string, signal: AbortSignal, onMessage: (raw: string) => void): Promise<Attempt> {
  return new Promise((resolve) => {
    const headers: Record<string, string> = { 'x-trellis-tenant': tenant };
    if (credential.startsWith('tak1_')) headers['x-api-key'] = credential; else headers.authorization = `Bearer ${credential}`;
    const ws = new WebSocket(url, ['trellis.v1'], { ca: p.caPem, headers, handshakeTimeout: 10_000, perMessageDeflate: false, maxPayload: 64 * 1024 * 1024 });
    let opened = false;
    let settled = false;
    const done = (a: Attempt) => {
      if (settled) return;
      settled = true;
      signal.removeEventListener('abort', onAbort);
      resolve(a);
    };
    const onAbort = () => { ws.close(1000, 'bye'); done({ kind: 'aborted' }); };
    signal.addEventListener('abort', onAbort, { once: true });
    ws.on('open', () => { opened = true; });
    ws.on('message', (data, isBinary) => { if (!isBinary) onMessage(data.toString()); });
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => { if (body.length < 4096) body += d; });
      res.on('end', () => {
        let message = body;
        try { message = (JSON.parse(body) as { error?: string }).error ?? body; } catch { /* not JSON */ }
        done({ kind: 'refused', status: res.statusCode ?? 0, message: message.trim() || `HTTP ${res.statusCode}` });
        ws.terminate();
      });
      res.on('error', () => done({ kind: 'refused', status: res.statusCode ?? 0, message: `HTTP ${res.statusCode}` }));
    });
    ws.on('error', (err) => done({ kind: 'error', opened, message: err.message }));
    ws.on('close', (code, reason) => done({ kind: 'closed', opened, code, reason: reason.toString() }));
  });
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(() => { signal.removeEventListener('abort', onAbort); resolve(); }, ms);
    const onAbort = () => { clearTimeout(t); resolve(); };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

async function follow(o: FollowOptions, signal: AbortSignal): Promise<void> {
  const p = await resolveProfile();
  const credential = process.env.TRELLIS_API_KEY || p.token;
  const tenant = process.env.TRELLIS_TENANT || p.tenant;
  const port = o.webPort !== undefined ? Number(o.webPort) : undefined;
  if (port !== undefined && !(Number.isInteger(port) && port > 0 && port < 65536)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `--web-port ${o.webPort}: a port is 1-65535`);
  const onMessage = (raw: string) => line(o.json ? raw : formatMessage(raw));
  let attempt = 0;
  while (!signal.aborted) {
    let why = 'the hub is unreachable';
    let base: string | undefined;
    const c = fromProfile(p);
    try {
      base = await webBase(c, p, port);
      if (!base) throw new TrellisError('TRELLIS_E_CONFIG', 'the hub did not report its web port (an older hub?): pass --web-port');
    } catch (e) {
      // Only an unreachable or slow hub is worth waiting for; anything else will not get better.
      if (!isTrellisError(e, 'TRELLIS_E_UNAVAILABLE') && !isTrellisError(e, 'TRELLIS_E_TIMEOUT')) throw e;
      why = `${why}: ${(e as Error).message}`;
    } finally {
      c.close();
    }
    if (base) {
      const r = await connectOnce(`${base.replace(/^https:/, 'wss:')}/stream${query(o)}`, p, credential, tenant, signal, onMessage);
      switch (r.kind) {
        case 'aborted':
          return;
        case 'refused':
          if (r.status === 401) throw new TrellisError('TRELLIS_E_UNAUTHENTICATED', `the stream refused the credentials: ${r.message}`);
          if (r.status === 403) throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `the stream refused: ${r.message}`);
          if (r.status === 400) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `the stream refused the filters: ${r.message}`);
          why = `HTTP ${r.status}: ${r.message}`;
          break;
        case 'closed':
          if (r.code === 4003) throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `the hub closed the stream: ${r.reason || 'permission revoked'}`);
          if (r.code === 4001) throw new TrellisError('TRELLIS_E_UNAUTHENTICATED', `the hub closed the stream: ${r.reason || 'credentials revoked'}; log in again with \`trellis login\``);
          if (r.opened) attempt = 0;
          why = `closed ${r.code}${r.reason ? `: ${r.reason}` : ''}`;
          break;
        case 'error':
          if (r.opened) attempt = 0;
          why = r.message;
          break;
      }
    }
    if (signal.aborted) return;
    const delay = backoffDelay(attempt++, { initialMs: 500, maxMs: 30_000 });
    process.stderr.write(`trellis: stream ${why}; reconnecting in ${(delay / 1000).toFixed(1)}s\n`);
    await sleep(delay, signal);
  }
}

export function addEventCommands(program: Command): void {
  program.command('events')
    .description('follow live events (and execution updates) from the hub\'s web port; Ctrl-C stops')
    .option('-f, --follow', 'follow the live stream (required: the hub keeps no event history)')
    .option('--type <patterns>', 'only these event types: comma separated globs (core.*,webhook.deploy)')
    .option('--agent <ids>', 'only these agents (comma separated ids)')
    .option('--executions', 'include execution updates and output (needs executions:read)')
    .option('--execution <ids>', 'only these executions (implies --executions)')
    .option('--json', 'print each message as raw JSON, one per line')
    .option('--web-port <port>', 'the hub web port (default: the one the hub reports)')
    .addHelpText('after', '\nThe stream lives only as long as your rights: losing events:read (or executions:read with\n' +
      '--executions), the tenant, or your login ends it (exit 1). One user may hold at most\n' +
      'web.maxStreamsPerUser streams at once (default 8); over that the hub answers 429 and this retries.\n' +
      'With several hubs on one PostgreSQL, any hub shows the events of agents connected to every hub;\n' +
      'an event too big to forward between hubs shows its payload size instead, and events another hub\n' +
      'could not forward are reported as a "gap" line.')
    .action(async (o: FollowOptions & { follow?: boolean }) => {
      if (!o.follow) {
        throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'there is no event history to list: use `trellis events --follow` to follow live events (add --type, --agent or --executions to narrow)');
      }
      const ac = new AbortController();
      const stop = () => ac.abort();
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      try {
        await follow(o, ac.signal);
      } finally {
        process.off('SIGINT', stop);
        process.off('SIGTERM', stop);
      }
    });
}
