/**
 * Admin-API shorthands shared by the end-to-end tests: unary calls made by the test hub's admin
 * client scoped to the `default` tenant, the usual pack/rule/execution calls, pack file builders,
 * datastore writes, and small file helpers.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { call, type AdminClients } from '../../cli/client.js';
import type { TestHub } from './hub.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

/** The test hub admin's metadata, scoped to the `default` tenant (its own reads span `*`). */
export function tenantMd(h: TestHub): grpc.Metadata {
  const md = h.admin.metadata.clone();
  md.set('x-trellis-tenant', 'default');
  return md;
}

/** A unary admin call as the test hub's admin, in the `default` tenant. */
export function unaryT<Req, Res>(h: TestHub, client: object, fn: (req: Req, md: grpc.Metadata, cb: (e: grpc.ServiceError | null, r?: Res) => void) => unknown, req: Req): Promise<Res> {
  return new Promise((resolve, reject) => fn.call(client, req, tenantMd(h), (e, r) => (e ? reject(e) : resolve(r!))));
}

/** Installs (force) a pack made of `files`. */
export const install = (h: TestHub, files: T.PackFile[]) => unaryT<T.InstallPackRequest, T.PackInfo__Output>(h, h.admin.packs, h.admin.packs.InstallPack, { files, force: true });
/** Creates (or replaces) a hub rule from its definition. */
export const createRule = (h: TestHub, def: object) => unaryT<T.CreateRuleRequest, T.RuleInfo__Output>(h, h.admin.rules, h.admin.rules.CreateRule, { definition: JSON.stringify(def), replace: true, source: 'test' });
export const getRule = (h: TestHub, name: string) => unaryT<T.GetRuleRequest, T.RuleInfo__Output>(h, h.admin.rules, h.admin.rules.GetRule, { name });
export const listExecutions = (h: TestHub, req: Partial<T.ListExecutionsRequest>) =>
  unaryT<T.ListExecutionsRequest, T.ListExecutionsResponse__Output>(h, h.admin.executions, h.admin.executions.ListExecutions, { limit: 1000, ...req });
export const getExecution = (h: TestHub, id: string) => unaryT<T.GetExecutionRequest, T.ExecutionInfo__Output>(h, h.admin.executions, h.admin.executions.GetExecution, { id });
/** An agent as the admin sees it (all tenants). */
export const getAgent = (h: TestHub, id: string) => call<T.GetAgentRequest, T.AgentInfo__Output>(h.admin, h.admin.agents, h.admin.agents.GetAgent, { id });

/** Stores a tenant secret through the admin API (kv Set, as `trellis kv set --secret` does). */
export async function setSecretViaApi(h: TestHub, key: string, value: string): Promise<void> {
  await unaryT(h, h.admin.kv, h.admin.kv.Set, { key, value, secret: true, ttlMs: 0, scope: 'tenant', private: false });
}

/** Stores a `default`-tenant datastore value directly in the hub's kv component, as the admin. */
export async function setKv(h: TestHub, key: string, value: string, secret: boolean): Promise<void> {
  await h.hub.components.kv.set('default', { username: 'admin', isAdmin: true }, { key, value, secret });
}
export const setSecret = (h: TestHub, key: string, value: string) => setKv(h, key, value, true);

/** One file of a pack (mode 0644). */
export const file = (path: string, text: string): T.PackFile => ({ path, content: Buffer.from(text), mode: 0o644 });

/** A pack action `mark` appending its parameter `msg` (env MSG) as a line to `out` (env OUT). */
export const markAction = (description: string): T.PackFile => file('actions/mark.yaml', [
  'name: mark', `description: ${description}`, 'runner: command',
  'command: ["/bin/sh", "-c", "printf \'%s\\\\n\' \\"$MSG\\" >> \\"$OUT\\""]',
  'parameters:', '  msg: { type: string, required: true }', '  out: { type: string, required: true }',
  'env:', '  MSG: "{{ msg }}"', '  OUT: "{{ out }}"', 'timeout: 10s', '',
].join('\n'));

/** The non-empty lines of a file; none if it does not exist yet. */
export const readLines = (p: string) => (existsSync(p) ? readFileSync(p, 'utf8').split('\n').filter(Boolean) : []);

/** Every regular file under `dir`, recursively. */
export function walk(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(join(dir, e.name)) : e.isFile() ? [join(dir, e.name)] : []));
}

/** Runs argv on the agent through `Run` as the clients `c` and answers its output (stdout and stderr, in order). */
export async function runCommand(c: AdminClients, agentId: string, argv: string[]): Promise<string> {
  const out: string[] = [];
  await new Promise<void>((resolve, reject) => {
    const s = c.runs.Run({ agentId, argv, timeoutMs: 20_000 }, c.metadata);
    s.on('data', (u: T.RunUpdate__Output) => { if (u.output) out.push(Buffer.from(u.output.data).toString('utf8')); });
    s.on('error', reject);
    s.on('end', resolve);
  });
  return out.join('');
}
