/**
 * Custom logins: a JavaScript (ESM) module of the operator's own, loaded once, exporting
 *
 *   authenticate(username, password) =>
 *     Promise<{ ok: true, groups?: string[] } | { ok: false, reason?: 'unknown-user' | 'bad-password' }>
 *
 * `reason` defaults to 'unknown-user' (the next backend is asked). A module that fails to load,
 * throws, answers late or answers something else is `unavailable`: the next backend still works
 * and the hub logs why. The password is scrubbed from any error message the module produces.
 */
import { pathToFileURL } from 'node:url';
import type { AuthBackend, BackendResult } from './backends.js';

export interface ModuleBackendOptions {
  name: string;
  /** Absolute path of the module. */
  path: string;
  timeoutMs: number;
}

type AuthenticateFn = (username: string, password: string) => unknown;

const MAX_GROUPS = 1000;

export class ModuleBackend implements AuthBackend {
  readonly name: string;
  private loaded?: Promise<AuthenticateFn>;

  constructor(private readonly o: ModuleBackendOptions) {
    this.name = o.name;
  }

  /** Imports the module once; every login shares the same promise. */
  private load(): Promise<AuthenticateFn> {
    this.loaded ??= import(pathToFileURL(this.o.path).href).then((m: { authenticate?: unknown }) => {
      if (typeof m.authenticate !== 'function') throw new Error('the module exports no authenticate function');
      return m.authenticate as AuthenticateFn;
    });
    return this.loaded;
  }

  async authenticate(username: string, password: string): Promise<BackendResult> {
    let timer: NodeJS.Timeout | undefined;
    try {
      const fn = await this.load();
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${this.o.timeoutMs} ms`)), this.o.timeoutMs);
      });
      return toResult(await Promise.race([Promise.resolve().then(() => fn(username, password)), late]), username);
    } catch (e) {
      let why = (e instanceof Error ? e.message : String(e)).split('\n')[0]!;
      if (password.length > 0) why = why.split(password).join('[REDACTED]');
      return { kind: 'unavailable', message: `${this.o.path}: ${why.slice(0, 300)}` };
    } finally {
      clearTimeout(timer);
    }
  }
}

function toResult(r: unknown, username: string): BackendResult {
  const v = r as { ok?: unknown; groups?: unknown; reason?: unknown } | null;
  if (v && v.ok === true) {
    if (v.groups === undefined) return { kind: 'ok', username };
    if (!Array.isArray(v.groups) || !v.groups.every((g) => typeof g === 'string')) throw new Error('authenticate returned groups that are not a list of strings');
    return { kind: 'ok', username, groups: [...new Set(v.groups as string[])].slice(0, MAX_GROUPS) };
  }
  if (v && v.ok === false) {
    if (v.reason === undefined || v.reason === 'unknown-user') return { kind: 'unknown-user' };
    if (v.reason === 'bad-password') return { kind: 'bad-password' };
  }
  throw new Error('authenticate returned neither { ok: true } nor { ok: false, reason }');
}
