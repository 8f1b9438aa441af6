/**
 * The hub's console API: the session (an HttpOnly cookie this script never sees, plus the CSRF
 * token kept in memory), bridged admin calls, and the live stream.
 */
export interface Session {
  username: string;
  roles: string[];
  tenants: string[];
  isAdmin: boolean;
  permissions: string[];
  csrf: string;
  expiresAtMs: number;
}

export class ApiError extends Error {
  constructor(readonly status: number, message: string, readonly code: string) { super(message); }
}

let csrf = '';
let tenant = sessionStorage.getItem('trellis.tenant') ?? '';
let onUnauthenticated: () => void = () => undefined;

export function setUnauthenticatedHandler(fn: () => void): void { onUnauthenticated = fn; }
export function currentTenant(): string { return tenant; }
export function setTenant(t: string): void { tenant = t; sessionStorage.setItem('trellis.tenant', t); }

async function answer<T>(res: Response): Promise<T> {
  let body: unknown;
  try { body = await res.json(); } catch { body = {}; }
  if (!res.ok) {
    const b = body as { error?: string; code?: string };
    if (res.status === 401) onUnauthenticated();
    throw new ApiError(res.status, b.error ?? `HTTP ${res.status}`, b.code ?? '');
  }
  return body as T;
}

export async function getSession(): Promise<Session | undefined> {
  const res = await fetch('/console/api/session', { credentials: 'same-origin' });
  if (res.status === 401) return undefined;
  const s = await answer<Session>(res);
  csrf = s.csrf;
  if (tenant && !s.isAdmin && !s.tenants.includes(tenant)) setTenant('');
  return s;
}

export async function login(username: string, password: string): Promise<void> {
  const res = await fetch('/console/api/login', { method: 'POST', credentials: 'same-origin', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username, password }) });
  if (res.status === 401) {
    const b = await res.json().catch(() => ({})) as { error?: string };
    throw new ApiError(401, b.error ?? 'wrong user name or password', 'TRELLIS_E_UNAUTHENTICATED');
  }
  const r = await answer<{ csrf: string }>(res);
  csrf = r.csrf;
}

export async function logout(): Promise<void> {
  await fetch('/console/api/logout', { method: 'POST', credentials: 'same-origin', headers: { 'content-type': 'application/json', 'x-trellis-csrf': csrf }, body: '{}' }).catch(() => undefined);
  csrf = '';
}

/** Calls an admin method (`AdminAgents/ListAgents`) with its request message as JSON. */
export async function call<T = Record<string, unknown>>(method: string, body: Record<string, unknown> = {}): Promise<T> {
  const headers: Record<string, string> = { 'content-type': 'application/json', 'x-trellis-csrf': csrf };
  if (tenant) headers['x-trellis-tenant'] = tenant;
  const res = await fetch(`/console/api/${method}`, { method: 'POST', credentials: 'same-origin', headers, body: JSON.stringify(body) });
  return answer<T>(res);
}

export type StreamMessage =
  | { kind: 'event'; id: string; type: string; agent: string; tenant: string; timeMs: number; payload: unknown }
  | { kind: 'execution'; record: Record<string, unknown> & { id: string; status: string } }
  | { kind: 'output'; executionId: string; stream: string; data: string };

/**
 * Opens /stream (the session cookie authenticates it). `query`: the stream's filters. Returns a
 * promise that settles when the socket is open, and the socket.
 */
export function openStream(query: Record<string, string>, onMessage: (m: StreamMessage) => void, onClose: (reason: string) => void): { ws: WebSocket; opened: Promise<void> } {
  const q = new URLSearchParams(query);
  if (tenant) q.set('tenant', tenant);
  const ws = new WebSocket(`wss://${location.host}/stream?${q.toString()}`, ['trellis.v1']);
  const opened = new Promise<void>((resolve, reject) => {
    ws.addEventListener('open', () => resolve(), { once: true });
    ws.addEventListener('error', () => reject(new Error('the live stream could not be opened')), { once: true });
  });
  ws.addEventListener('message', (e) => { try { onMessage(JSON.parse(String(e.data)) as StreamMessage); } catch { /* not JSON: ignored */ } });
  ws.addEventListener('close', (e) => onClose(e.reason || `closed (${e.code})`));
  return { ws, opened };
}
