/**
 * LDAP logins: bind as the service account, find exactly one user under `userBase` with the
 * escaped filter, bind as that user's DN with the password, then read the user's groups with the
 * service account. Every login opens fresh connections (logins are rare; no pool to go stale).
 *
 * Security notes: an empty password is refused before any network I/O (an LDAP simple bind with
 * an empty password is an unauthenticated bind that many servers accept); user names and DNs
 * are escaped per RFC 4515 wherever they enter a filter; the password is never logged nor put
 * in a result. Connection, TLS and timeout failures are `unavailable`, so the next backend (the
 * local admin) still works and the hub logs why.
 */
import { isIP } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import { Client, InvalidCredentialsError, type Entry } from 'ldapts';
import type { AuthBackend, BackendResult } from './backends.js';

export interface LdapBackendOptions {
  name: string;
  /** `ldap://host[:port]` or `ldaps://host[:port]`. */
  url: string;
  startTls: boolean;
  /** PEM of the CA(s) to trust for the directory's certificate; undefined: the system CAs. */
  caPem?: string;
  bindDn: string;
  bindPassword: string;
  userBase: string;
  userFilter: string;
  groupBase?: string;
  groupFilter: string;
  groupNameAttribute: string;
  timeoutMs: number;
}

/** RFC 4515 escaping of a value placed in a search filter: `\ * ( )` and NUL become `\XX`. */
export function escapeFilterValue(value: string): string {
  return value.replace(/[\\*()\0]/g, (c) => `\\${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/** Replaces `{name}` placeholders with escaped values (a function, so `$` in values stays literal). */
export function fillFilter(template: string, values: Record<string, string>): string {
  return template.replace(/\{(\w+)\}/g, (all, key: string) => (key in values ? escapeFilterValue(values[key]!) : all));
}

const MAX_GROUPS = 1000;

/** The connections of one login, closed together when it ends. */
interface Clients { list: Client[]; closed: boolean }

export class LdapBackend implements AuthBackend {
  readonly name: string;
  private readonly tls: ConnectionOptions;

  constructor(private readonly o: LdapBackendOptions) {
    this.name = o.name;
    const host = new URL(o.url).hostname.replace(/^\[|\]$/g, '');
    this.tls = { minVersion: 'TLSv1.2', ...(o.caPem ? { ca: o.caPem } : {}), host, ...(isIP(host) ? {} : { servername: host }) };
  }

  async authenticate(username: string, password: string): Promise<BackendResult> {
    if (password.length === 0) return { kind: 'bad-password' }; // never an unauthenticated bind
    const clients: Clients = { list: [], closed: false };
    let timer: NodeJS.Timeout | undefined;
    // Each operation has its own deadline (client options); this one bounds the whole login,
    // StartTLS handshakes included.
    const deadline = new Promise<BackendResult>((resolve) => {
      timer = setTimeout(() => resolve(this.unavailable('login', new Error(`no answer within ${this.o.timeoutMs * 3} ms`))), this.o.timeoutMs * 3);
    });
    try {
      return await Promise.race([this.run(username, password, clients), deadline]);
    } finally {
      clearTimeout(timer);
      clients.closed = true; // a login still running after its deadline opens nothing more
      for (const c of clients.list) await c.unbind().catch(() => undefined);
    }
  }

  private async run(username: string, password: string, clients: Clients): Promise<BackendResult> {
    const service = await this.connect(clients).catch((e: unknown) => e as Error);
    if (service instanceof Error) return this.unavailable('connect', service);
    try {
      await service.bind(this.o.bindDn, this.o.bindPassword);
    } catch (e) {
      return this.unavailable('service account bind', e);
    }

    let entries: Entry[];
    try {
      ({ searchEntries: entries } = await service.search(this.o.userBase, {
        scope: 'sub', filter: fillFilter(this.o.userFilter, { username }), attributes: ['1.1'], sizeLimit: 2, timeLimit: Math.ceil(this.o.timeoutMs / 1000),
      }));
    } catch (e) {
      return this.unavailable('user search', e);
    }
    if (entries.length !== 1) return { kind: 'unknown-user' }; // none, or ambiguous
    const dn = entries[0]!.dn;

    const asUser = await this.connect(clients).catch((e: unknown) => e as Error);
    if (asUser instanceof Error) return this.unavailable('connect', asUser);
    try {
      await asUser.bind(dn, password);
    } catch (e) {
      if (e instanceof InvalidCredentialsError) return { kind: 'bad-password' };
      return this.unavailable('user bind', e);
    }
    if (!this.o.groupBase) return { kind: 'ok', username };

    try {
      const attr = this.o.groupNameAttribute;
      const { searchEntries } = await service.search(this.o.groupBase, {
        scope: 'sub', filter: fillFilter(this.o.groupFilter, { dn, username }), attributes: [attr], sizeLimit: MAX_GROUPS, timeLimit: Math.ceil(this.o.timeoutMs / 1000),
      });
      return { kind: 'ok', username, groups: [...new Set(searchEntries.flatMap((g) => attributeStrings(g, attr)))] };
    } catch (e) {
      // Without its groups the user's mapped roles would be stale: refuse rather than guess.
      return this.unavailable('group search', e);
    }
  }

  private async connect(clients: Clients): Promise<Client> {
    if (clients.closed) throw new Error('login abandoned');
    const c = new Client({
      url: this.o.url,
      timeout: this.o.timeoutMs,
      connectTimeout: this.o.timeoutMs,
      ...(/^ldaps:/i.test(this.o.url) ? { tlsOptions: this.tls } : {}),
    });
    clients.list.push(c);
    if (this.o.startTls) await c.startTLS({ ...this.tls });
    return c;
  }

  private unavailable(step: string, e: unknown): BackendResult {
    const text = (e instanceof Error ? e.message : String(e)).replace(/\s+/g, ' ').trim();
    const why = (e instanceof Error && e.name !== 'Error' ? `${e.name}: ${text}` : text).slice(0, 300);
    return { kind: 'unavailable', message: `${this.o.url}: ${step} failed: ${why}` };
  }
}

function attributeStrings(entry: Entry, attr: string): string[] {
  const key = Object.keys(entry).find((k) => k.toLowerCase() === attr.toLowerCase());
  const v = key === undefined || key === 'dn' ? undefined : entry[key];
  const list = v === undefined ? [] : Array.isArray(v) ? v : [v];
  return list.map((x) => (Buffer.isBuffer(x) ? x.toString('utf8') : String(x))).filter((s) => s.length > 0 && s.length <= 256);
}
