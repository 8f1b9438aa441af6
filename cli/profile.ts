/** The CLI profile: hub address, pinned CA and login token, 0600 under $TRELLIS_HOME or ~/.config/trellis. */
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { z } from 'zod';
import { atomicWriteFile, ensureDir } from '../common/fsutil.js';
import { TrellisError } from '../common/errors.js';

export const ProfileSchema = z.strictObject({
  hub: z.string().min(1),
  caPem: z.string().min(1),
  username: z.string(),
  token: z.string(),
  expiresAtMs: z.number(),
  tenant: z.string().default('default'),
});
export type Profile = z.output<typeof ProfileSchema>;

export function trellisHome(env: NodeJS.ProcessEnv = process.env): string {
  return env.TRELLIS_HOME || join(env.XDG_CONFIG_HOME || join(homedir(), '.config'), 'trellis');
}

export function profilePath(env: NodeJS.ProcessEnv = process.env): string {
  return join(trellisHome(env), 'profile.json');
}

export function readProfile(env: NodeJS.ProcessEnv = process.env): Profile {
  const p = profilePath(env);
  if (!existsSync(p)) throw new TrellisError('TRELLIS_E_UNAUTHENTICATED', 'not logged in: run `trellis login --hub HOST:7444 --user NAME`');
  let raw: unknown;
  try { raw = JSON.parse(readFileSync(p, 'utf8')); } catch (e) {
    throw new TrellisError('TRELLIS_E_CONFIG', `cannot parse ${p}: ${(e as Error).message}; log in again`);
  }
  const r = ProfileSchema.safeParse(raw);
  if (!r.success) throw new TrellisError('TRELLIS_E_CONFIG', `invalid profile ${p}: log in again with \`trellis login\``);
  return r.data;
}

export async function writeProfile(p: Profile, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  await ensureDir(trellisHome(env), 0o700);
  const path = profilePath(env);
  await atomicWriteFile(path, JSON.stringify(p, null, 2) + '\n', { mode: 0o600 });
  return path;
}
