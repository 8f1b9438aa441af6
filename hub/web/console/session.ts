/**
 * The console session: the login token of `AdminAuth/Login`, held by the browser in a cookie
 * script cannot read (`__Host-` prefix: Secure, Path=/, no Domain; HttpOnly; SameSite=Strict),
 * and a CSRF token that every console POST carries in the `x-trellis-csrf` header.
 *
 * The CSRF token is derived from the login token (SHA-256 with a fixed label): nothing to store,
 * the same on every hub of a cluster, and unknowable to a page of another origin, which can make
 * the browser send the cookie (SameSite aside) but cannot read it nor the token derived from it.
 * It is compared in constant time. A request carrying an `Origin` header must come from the hub's
 * own origin (a second, independent check).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';

export const SESSION_COOKIE = '__Host-trellis-session';
export const CSRF_HEADER = 'x-trellis-csrf';

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return typeof v === 'string' ? v : Array.isArray(v) ? v[0] : undefined;
}

/** The console session's login token from the Cookie header, or undefined. */
export function sessionToken(req: IncomingMessage): string | undefined {
  const raw = header(req, 'cookie');
  if (!raw || raw.length > 16 * 1024) return undefined;
  for (const part of raw.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() === SESSION_COOKIE) {
      const v = part.slice(eq + 1).trim();
      return /^[\x21-\x7e]{1,200}$/.test(v) ? v : undefined;
    }
  }
  return undefined;
}

/** Set-Cookie for a new session (`maxAgeMs`: until the login token expires). */
export function sessionCookie(token: string, maxAgeMs: number): string {
  return `${SESSION_COOKIE}=${token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=${Math.max(0, Math.floor(maxAgeMs / 1000))}`;
}

/** Set-Cookie that removes the session cookie. */
export function clearedCookie(): string {
  return `${SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0`;
}

/** The CSRF token of a session. */
export function csrfFor(token: string): string {
  return createHash('sha256').update('trellis-console-csrf\0').update(token).digest('base64url');
}

/** True when the request's x-trellis-csrf header is the session's CSRF token. */
export function csrfOk(req: IncomingMessage, token: string): boolean {
  const given = header(req, CSRF_HEADER);
  if (!given) return false;
  const a = Buffer.from(given);
  const b = Buffer.from(csrfFor(token));
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * True when the request has no Origin header (not sent by a browser's cross-origin fetch) or an
 * Origin that is this hub's (`https://` + the Host header).
 */
export function sameOrigin(req: IncomingMessage): boolean {
  const origin = header(req, 'origin');
  if (origin === undefined) return true;
  const host = header(req, 'host');
  return !!host && origin === `https://${host}`;
}

/**
 * The login token a browser's WebSocket upgrade carries in the console cookie, only when the
 * upgrade comes from the hub's own origin (browsers always send Origin on WebSocket upgrades;
 * without this check another site's page could open /stream with the user's cookie).
 */
export function streamCookieCredential(req: IncomingMessage): string | undefined {
  if (header(req, 'origin') === undefined || !sameOrigin(req)) return undefined;
  return sessionToken(req);
}
