/**
 * CLI contexts: a named hub address, pinned CA and login token each, 0600 under $TRELLIS_HOME
 * or ~/.config/trellis. Context `default` is `profile.json` (the file every earlier release
 * wrote, so it keeps working as is); another context NAME is `contexts/NAME.json`; the file
 * `current-context` names the one in use (absent: `default`). TRELLIS_CONTEXT picks one for a
 * single command. For CI, TRELLIS_HUB + TRELLIS_CA / TRELLIS_CA_FINGERPRINT + TRELLIS_API_KEY
 * stand in for a context (see envProfile).
 */
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { atomicWriteFile, ensureDir } from '../common/fsutil.js';
import { TrellisError } from '../common/errors.js';

/** A stored context. `context`: the context it was read from (not stored); `fromEnv`: built from TRELLIS_HUB & co (never written). */
export interface Profile {
  hub: string;
  caPem: string;
  username: string;
  token: string;
  expiresAtMs: number;
  tenant: string;
  context?: string;
  fromEnv?: boolean;
}

const FIELDS = { hub: 'string', caPem: 'string', username: 'string', token: 'string', expiresAtMs: 'number', tenant: 'string' } as const;

/**
 * A stored profile checked by hand (strict: no unknown key, every field typed; hub and caPem not
 * empty; tenant defaults to `default`): no schema library, so `trellis` starts fast.
 */
export function parseProfile(raw: unknown): Omit<Profile, 'context' | 'fromEnv'> | undefined {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) return undefined;
  const o = { tenant: 'default', ...(raw as Record<string, unknown>) };
  for (const k of Object.keys(o)) if (!(k in FIELDS)) return undefined;
  for (const [k, type] of Object.entries(FIELDS)) if (typeof o[k as keyof typeof o] !== type) return undefined;
  const p = o as unknown as Profile;
  return p.hub && p.caPem ? { hub: p.hub, caPem: p.caPem, username: p.username, token: p.token, expiresAtMs: p.expiresAtMs, tenant: p.tenant } : undefined;
}

export const DEFAULT_CONTEXT = 'default';
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

export function trellisHome(env: NodeJS.ProcessEnv = process.env): string {
  return env.TRELLIS_HOME || join(env.XDG_CONFIG_HOME || join(homedir(), '.config'), 'trellis');
}

export function checkContextName(name: string): string {
  if (!NAME_RE.test(name)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `bad context name "${name}": use letters, digits, '.', '_' or '-' (at most 63)`);
  return name;
}

/** The file of context NAME (default: the current one). */
export function profilePath(env: NodeJS.ProcessEnv = process.env, name = currentContext(env)): string {
  return name === DEFAULT_CONTEXT ? join(trellisHome(env), 'profile.json') : join(trellisHome(env), 'contexts', `${checkContextName(name)}.json`);
}

/** The context in use: TRELLIS_CONTEXT, else the one `trellis context use` chose, else `default`. */
export function currentContext(env: NodeJS.ProcessEnv = process.env): string {
  if (env.TRELLIS_CONTEXT) return checkContextName(env.TRELLIS_CONTEXT);
  const file = join(trellisHome(env), 'current-context');
  let name: string;
  try { name = readFileSync(file, 'utf8').trim(); } catch { return DEFAULT_CONTEXT; }
  // A damaged file is said, not read as `default`: that would send the command to another hub.
  if (name && !NAME_RE.test(name)) throw new TrellisError('TRELLIS_E_CONFIG', `${file} names no valid context: pick one with \`trellis context use NAME\` (see \`trellis context list\`)`);
  return name || DEFAULT_CONTEXT;
}

export async function useContext(name: string, env: NodeJS.ProcessEnv = process.env): Promise<void> {
  await ensureDir(trellisHome(env), 0o700);
  await atomicWriteFile(join(trellisHome(env), 'current-context'), checkContextName(name) + '\n', { mode: 0o600 });
}

/** Every stored context's name. */
export function listContexts(env: NodeJS.ProcessEnv = process.env): string[] {
  const names: string[] = [];
  if (existsSync(profilePath(env, DEFAULT_CONTEXT))) names.push(DEFAULT_CONTEXT);
  try {
    for (const f of readdirSync(join(trellisHome(env), 'contexts')).sort()) if (f.endsWith('.json') && NAME_RE.test(f.slice(0, -5))) names.push(f.slice(0, -5));
  } catch { /* no named contexts */ }
  return names;
}

/** Removes context NAME's file; the current context falls back to `default` when it was NAME. */
export function deleteContext(name: string, env: NodeJS.ProcessEnv = process.env): void {
  rmSync(profilePath(env, name), { force: true });
  if (!env.TRELLIS_CONTEXT && currentContext(env) === name) rmSync(join(trellisHome(env), 'current-context'), { force: true });
}

/** Context NAME, or undefined when it does not exist. */
export function readContext(name: string, env: NodeJS.ProcessEnv = process.env): Profile | undefined {
  const p = profilePath(env, name);
  if (!existsSync(p)) return undefined;
  let raw: unknown;
  try { raw = JSON.parse(readFileSync(p, 'utf8')); } catch (e) {
    throw new TrellisError('TRELLIS_E_CONFIG', `cannot parse ${p}: ${(e as Error).message}; log in again`);
  }
  const r = parseProfile(raw);
  if (!r) throw new TrellisError('TRELLIS_E_CONFIG', `invalid profile ${p}: log in again with \`trellis login\``);
  return { ...r, context: name };
}

/**
 * The credentials a command uses: the CI variables when TRELLIS_HUB is set (TRELLIS_CA file;
 * TRELLIS_CA_FINGERPRINT needs resolveProfile), else the current context, with TRELLIS_API_KEY
 * replacing its login token when set.
 */
export function readProfile(env: NodeJS.ProcessEnv = process.env): Profile {
  if (env.TRELLIS_HUB) return envProfile(env);
  const name = currentContext(env);
  const p = readContext(name, env);
  if (!p) {
    if (env.TRELLIS_API_KEY) {
      throw new TrellisError('TRELLIS_E_CONFIG', 'TRELLIS_API_KEY is set but no hub is known: set TRELLIS_HUB=HOST:7444 and TRELLIS_CA=ca.pem (or TRELLIS_CA_FINGERPRINT=SHA256), or log in with `trellis login`');
    }
    throw new TrellisError('TRELLIS_E_UNAUTHENTICATED', name === DEFAULT_CONTEXT
      ? 'not logged in: run `trellis login --hub HOST:7444 --user NAME`'
      : `context ${name} does not exist: run \`trellis login --context ${name} --hub HOST:7444 --user NAME\` or pick one from \`trellis context list\``);
  }
  return p;
}

/** A profile from TRELLIS_HUB, TRELLIS_CA (a PEM file) and TRELLIS_API_KEY; TRELLIS_CA_FINGERPRINT is pinned by resolveProfile. */
function envProfile(env: NodeJS.ProcessEnv, caPem?: string): Profile {
  const hub = env.TRELLIS_HUB!;
  if (!env.TRELLIS_API_KEY) throw new TrellisError('TRELLIS_E_CONFIG', 'TRELLIS_HUB is set but TRELLIS_API_KEY is not: create a key with `trellis apikeys create` and export it (or unset TRELLIS_HUB to use your login)');
  if (!caPem) {
    if (env.TRELLIS_CA) {
      try { caPem = readFileSync(env.TRELLIS_CA, 'utf8'); } catch (e) {
        throw new TrellisError('TRELLIS_E_CONFIG', `cannot read TRELLIS_CA ${env.TRELLIS_CA}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
      }
      if (!/-----BEGIN CERTIFICATE-----/.test(caPem)) throw new TrellisError('TRELLIS_E_CONFIG', `TRELLIS_CA ${env.TRELLIS_CA} holds no PEM certificate`);
    } else if (env.TRELLIS_CA_FINGERPRINT) {
      throw new TrellisError('TRELLIS_E_CONFIG', 'TRELLIS_CA_FINGERPRINT is pinned when the command connects; this command needs TRELLIS_CA=FILE');
    } else {
      throw new TrellisError('TRELLIS_E_CONFIG', 'TRELLIS_HUB is set without a CA to trust: set TRELLIS_CA=ca.pem (from the hub data directory) or TRELLIS_CA_FINGERPRINT=SHA256 (from `trellis hub init` or `trellis certs show`)');
    }
  }
  return { hub, caPem, username: '', token: env.TRELLIS_API_KEY, expiresAtMs: 0, tenant: env.TRELLIS_TENANT || 'default', fromEnv: true };
}

/**
 * readProfile, plus TRELLIS_CA_FINGERPRINT: the hub's served chain must hold a CA with that
 * fingerprint (and the leaf must chain to it) before anything is sent; the API key never is otherwise.
 */
export async function resolveProfile(env: NodeJS.ProcessEnv = process.env): Promise<Profile> {
  if (!env.TRELLIS_HUB || env.TRELLIS_CA || !env.TRELLIS_CA_FINGERPRINT) return readProfile(env);
  if (!env.TRELLIS_API_KEY) return envProfile(env);
  const { parseHostPort } = await import('../common/grpc-options.js');
  const { fetchServedChain, pinnedBundle } = await import('../common/tlsprobe.js');
  let host: string, port: number;
  try { ({ host, port } = parseHostPort(env.TRELLIS_HUB, 7444)); } catch (e) { throw new TrellisError('TRELLIS_E_CONFIG', `TRELLIS_HUB: ${(e as Error).message}`); }
  const bundle = pinnedBundle(await fetchServedChain(host, port, 10_000), env.TRELLIS_CA_FINGERPRINT);
  if (!bundle) {
    throw new TrellisError('TRELLIS_E_CA_PIN_MISMATCH', `the hub at ${env.TRELLIS_HUB} does not present a CA with fingerprint TRELLIS_CA_FINGERPRINT=${env.TRELLIS_CA_FINGERPRINT}; nothing was sent (the API key neither). Check the fingerprint with \`trellis certs show\` or the hub's operator`);
  }
  return envProfile(env, bundle.join(''));
}

/** Writes p into its context (p.context, else the current one); a profile from the environment is never written. */
export async function writeProfile(p: Profile, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const { context, fromEnv, ...stored } = p;
  const name = context ?? currentContext(env);
  const path = profilePath(env, name);
  if (fromEnv) return path;
  await ensureDir(trellisHome(env), 0o700);
  if (name !== DEFAULT_CONTEXT) await ensureDir(join(trellisHome(env), 'contexts'), 0o700);
  await atomicWriteFile(path, JSON.stringify(stored, null, 2) + '\n', { mode: 0o600 });
  return path;
}
