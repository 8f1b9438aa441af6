/**
 * Hub configuration, loaded in stages: defaults → DATA/hub.json → environment → flags,
 * validated once with a schema that rejects unknown keys by name, then frozen.
 */
import { readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { TrellisError } from '../common/errors.js';
import { parseDuration } from '../common/duration.js';

const duration = z.union([z.number().int().positive(), z.string()]).transform((v, ctx) => {
  try { return typeof v === 'number' ? v : parseDuration(v); } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message });
    return z.NEVER;
  }
});
const port = z.number().int().min(0).max(65535);

export const HubConfigSchema = z.strictObject({
  /** Every DNS name and IP address agents and admins use to reach the hub (subjectAltName). */
  names: z.array(z.string().min(1).max(253)).min(1),
  /** SPIFFE trust domain named in agent certificates. @default "trellis.local" */
  trustDomain: z.string().regex(/^[a-z0-9.-]{1,255}$/, 'lowercase letters, digits, dots and dashes').default('trellis.local'),
  /** Address every listener binds to. @default "0.0.0.0" */
  bind: z.string().default('0.0.0.0'),
  /** Agent port: mTLS, client certificate required. @default 7443 */
  agentPort: port.default(7443),
  /** Admin port: server TLS; admin API, Enroll and Version. @default 7444 */
  adminPort: port.default(7444),
  /** Web port: webhooks and the live event stream (HTTPS). @default 7445 */
  webPort: port.default(7445),
  /** Lifetime of agent certificates. @default "7d" */
  agentCertTtl: duration.default(7 * 86_400_000),
  /** Lifetime of login tokens. @default "24h" */
  sessionTtl: duration.default(86_400_000),
  /** How often agents send a heartbeat. @default "10s" */
  heartbeatInterval: duration.default(10_000),
  /** An agent silent for this long is shown offline. @default "30s" */
  heartbeatTtl: duration.default(30_000),
  /** Default lifetime of join tokens. @default "15m" */
  joinTokenTtl: duration.default(15 * 60_000),
  /** Largest gRPC message accepted, in bytes. @default 4194304 */
  maxMessageBytes: z.number().int().min(1024).max(64 * 1024 * 1024).default(4 * 1024 * 1024),
  /** pino level. @default "info" */
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
});

export type HubConfigInput = z.input<typeof HubConfigSchema>;
export type HubConfig = Readonly<z.output<typeof HubConfigSchema>>;

export const CONFIG_FILE = 'hub.json';

/** Environment variables that override file values. */
const ENV: Record<string, keyof HubConfigInput> = {
  TRELLIS_HUB_BIND: 'bind',
  TRELLIS_HUB_AGENT_PORT: 'agentPort',
  TRELLIS_HUB_ADMIN_PORT: 'adminPort',
  TRELLIS_HUB_WEB_PORT: 'webPort',
  TRELLIS_LOG_LEVEL: 'logLevel',
};
const NUMERIC = new Set(['agentPort', 'adminPort', 'webPort', 'maxMessageBytes']);

export function validateConfig(input: unknown, source: string): HubConfig {
  const r = HubConfigSchema.safeParse(input);
  if (!r.success) {
    const msg = r.error.issues.map((i) => {
      const keys = i.code === 'unrecognized_keys' ? ` (${(i as { keys: string[] }).keys.join(', ')})` : '';
      return `${i.path.join('.') || '(top level)'}: ${i.message}${keys}`;
    }).join('; ');
    throw new TrellisError('TRELLIS_E_CONFIG', `invalid hub configuration in ${source}: ${msg}`);
  }
  return Object.freeze(r.data);
}

export function loadHubConfig(dataDir: string, flags: Partial<HubConfigInput> = {}, env: NodeJS.ProcessEnv = process.env): HubConfig {
  const file = join(dataDir, CONFIG_FILE);
  if (!existsSync(file)) {
    throw new TrellisError('TRELLIS_E_CONFIG', `no hub configuration at ${file}: run \`trellis hub init --data ${dataDir} --name HOST\` first`);
  }
  let fromFile: Record<string, unknown>;
  try {
    fromFile = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new TrellisError('TRELLIS_E_CONFIG', `cannot parse ${file}: ${(e as Error).message}`);
  }
  validateConfig(fromFile, file); // names unknown keys in the file itself
  const merged: Record<string, unknown> = { ...fromFile };
  for (const [name, key] of Object.entries(ENV)) {
    const v = env[name];
    if (v !== undefined && v !== '') merged[key] = NUMERIC.has(key) ? Number(v) : v;
  }
  for (const [k, v] of Object.entries(flags)) if (v !== undefined) merged[k] = v;
  return validateConfig(merged, `${file} (with environment and flags)`);
}
