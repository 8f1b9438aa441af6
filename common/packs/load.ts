/**
 * Validation of a whole pack from its files, the same on the CLI (before sending) and on the
 * hub (which trusts nothing it receives). Every problem names the file, the line and the field;
 * up to 20 are reported at once in one TRELLIS_E_PACK_INVALID error, one per line.
 */
import { TrellisError } from '../errors.js';
import { SENSOR_CONFIG_SCHEMAS, SENSOR_KINDS } from '../sensors/schemas.js';
import { ruleInputSchema, normalizeRule } from '../rules/schema.js';
import type { ActionDef, PackDef, RuleDef, SensorDef, SensorKind } from '../automation/types.js';
import { Problems, parseYaml, addIssues, fieldName, type YamlFile } from './yaml.js';
import {
  packMetaSchema, actionInputSchema, sensorInputSchema, normalizeAction, normalizeSensor, sensorTriggerProblem, type PackMeta,
} from './schema.js';

/** One file of a pack: path relative to the pack root with forward slashes. */
export interface PackFile { path: string; content: Buffer; mode: number }

/** What is kept of a file once validated. */
export interface PackFileInfo { path: string; size: number; mode: number }

/** The file each action, sensor and rule of a pack came from, by ref ("web.restart" → "actions/restart.yaml"). */
export type PackSources = Record<string, string>;

export type LoadedPack = PackDef & { files: PackFileInfo[]; sources: PackSources };

/** Size limits of a pack, checked by the CLI while reading and by the hub on install. */
export const PACK_LIMITS = {
  files: 512,
  fileBytes: 1024 * 1024,
  totalBytes: 8 * 1024 * 1024,
  pathChars: 256,
  scriptBytes: 256 * 1024,
} as const;

const KIB = (n: number) => `${n / 1024} KiB`;
const MIB = (n: number) => `${n / 1024 / 1024} MiB`;

/** Why a path cannot be a pack file, or undefined when it can. */
export function packPathProblem(p: string): string | undefined {
  if (typeof p !== 'string' || p.length === 0) return 'empty path';
  if (p.length > PACK_LIMITS.pathChars) return `path is ${p.length} characters: the limit is ${PACK_LIMITS.pathChars}`;
  if (/[\u0000-\u001f\u007f\\]/.test(p)) return 'path holds a control character or a backslash';
  if (p.startsWith('/') || /^[A-Za-z]:/.test(p)) return 'absolute path';
  if (p.split('/').some((s) => s === '' || s === '.' || s === '..')) return 'path has an empty, "." or ".." segment';
  return undefined;
}

/** Throws TRELLIS_E_TOO_LARGE when the pack is over a limit (before anything is parsed). */
export function checkPackLimits(files: readonly { path: string; content: { length: number } }[]): void {
  if (files.length > PACK_LIMITS.files) throw new TrellisError('TRELLIS_E_TOO_LARGE', `the pack has ${files.length} files: the limit is ${PACK_LIMITS.files}`);
  let total = 0;
  for (const f of files) {
    if (f.content.length > PACK_LIMITS.fileBytes) {
      throw new TrellisError('TRELLIS_E_TOO_LARGE', `${String(f.path).slice(0, 256)} is ${f.content.length} bytes: a pack file is at most ${MIB(PACK_LIMITS.fileBytes)}`);
    }
    total += f.content.length;
  }
  if (total > PACK_LIMITS.totalBytes) throw new TrellisError('TRELLIS_E_TOO_LARGE', `the pack is ${total} bytes: the limit is ${MIB(PACK_LIMITS.totalBytes)}`);
}

type Kind = 'meta' | 'action' | 'sensor' | 'rule' | 'other';

function kindOf(path: string): Kind | undefined {
  if (path === 'pack.yaml') return 'meta';
  const m = /^(actions|sensors|rules)\/[^/]+\.ya?ml$/.exec(path);
  if (m) return m[1] === 'actions' ? 'action' : m[1] === 'sensors' ? 'sensor' : 'rule';
  if (path.startsWith('scripts/')) return 'other';
  if (/^(README|LICENSE|LICENCE|CHANGELOG|NOTICE)(\.[A-Za-z0-9]{1,8})?$/i.test(path)) return 'other';
  return undefined;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });
function textOf(f: PackFile, problems: Problems): string | undefined {
  try { return utf8.decode(f.content); } catch {
    problems.add(f.path, undefined, '', 'not UTF-8 text');
    return undefined;
  }
}

/** The pack name from pack.yaml, if it can be read cheaply (for audit records of failed installs). */
export function packNameOf(files: readonly PackFile[]): string | undefined {
  const f = files.find((x) => x.path === 'pack.yaml');
  if (!f || f.content.length > 64 * 1024) return undefined;
  const m = /^name:\s*["']?([a-z0-9][a-z0-9_-]{0,62})["']?\s*$/m.exec(f.content.toString('utf8'));
  return m?.[1];
}

interface Seen { file: string; y: YamlFile }

/** Refuses a second definition with the same name (in any file of the same kind). */
function checkDuplicate(problems: Problems, seen: Map<string, Seen>, what: string, nameValue: string, y: YamlFile): boolean {
  const first = seen.get(nameValue);
  if (first) { problems.add(y.file, y.lineOf(['name']), 'name', `duplicate ${what} "${nameValue}" (also defined in ${first.file})`); return false; }
  seen.set(nameValue, { file: y.file, y });
  return true;
}

/**
 * Validates every file and returns the pack definition. Throws TRELLIS_E_TOO_LARGE over the
 * limits and TRELLIS_E_PACK_INVALID listing the problems (`file:line: field: message`).
 */
export interface LoadOptions {
  /**
   * Whether an action of another pack exists (the hub: installed in the tenant). Without it (the
   * CLI, offline) rules that call other packs' actions are not checked.
   */
  actionExists?: (ref: string) => boolean;
}

export function loadPack(files: readonly PackFile[], o: LoadOptions = {}): LoadedPack {
  checkPackLimits(files);
  const problems = new Problems();
  const byPath = new Map<string, PackFile>();
  const groups: Record<Kind, PackFile[]> = { meta: [], action: [], sensor: [], rule: [], other: [] };
  for (const f of files) {
    const bad = packPathProblem(f.path);
    if (bad) { problems.add(JSON.stringify(String(f.path).slice(0, 256)), undefined, '', bad); continue; } // quoted: it may hold a newline
    if (byPath.has(f.path)) { problems.add(f.path, undefined, '', 'the same path appears twice'); continue; }
    byPath.set(f.path, f);
    const kind = kindOf(f.path);
    if (!kind) {
      problems.add(f.path, undefined, '', 'unknown file: a pack holds pack.yaml, actions/*.yaml, sensors/*.yaml, rules/*.yaml, scripts/... and README/LICENSE/CHANGELOG');
      continue;
    }
    groups[kind].push(f);
  }
  const sorted = (l: PackFile[]) => [...l].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));

  let meta: PackMeta | undefined;
  const metaFile = groups.meta[0];
  if (!metaFile) problems.add('pack.yaml', undefined, '', 'missing: every pack has a pack.yaml with name, version and description');
  else {
    const t = textOf(metaFile, problems);
    const y = t === undefined ? undefined : parseYaml('pack.yaml', t, problems);
    if (y) {
      const r = packMetaSchema.safeParse(y.value ?? {});
      if (r.success) meta = r.data;
      else addIssues(problems, y, r.error.issues);
    }
  }
  // Go on with a placeholder name so that every file's problems show in one round.
  const pack = meta?.name ?? 'pack';

  const sources: PackSources = {};
  const actions: ActionDef[] = [];
  const actionNames = new Map<string, Seen>();
  // Refs named by action files, valid or not, so a rule is not also blamed for a broken action.
  const declared = new Set<string>();
  let unreadableAction = false;
  for (const f of sorted(groups.action)) {
    const y = parseFile(f, problems);
    if (!y) { unreadableAction = true; continue; }
    const declaredName = (y.value as { name?: unknown }).name;
    if (typeof declaredName === 'string') declared.add(`${pack}.${declaredName}`); else unreadableAction = true;
    const r = actionInputSchema.safeParse(y.value);
    if (!r.success) { addIssues(problems, y, r.error.issues); continue; }
    const a = r.data;
    if (!checkDuplicate(problems, actionNames, 'action', a.name, y)) continue;
    let script: { path: string; body: string } | undefined;
    if (a.runner === 'script' && a.script !== undefined) {
      script = scriptOf(a.script, byPath, problems, y);
      if (!script) continue;
    }
    const action = normalizeAction(a, pack, script);
    sources[action.ref] = f.path;
    actions.push(action);
  }

  const sensors: SensorDef[] = [];
  const sensorNames = new Map<string, Seen>();
  for (const f of sorted(groups.sensor)) {
    const y = parseFile(f, problems);
    if (!y) continue;
    const r = sensorInputSchema.safeParse(y.value);
    // The config is checked even when another field is wrong, so that one round shows both.
    const raw = y.value as { type?: unknown; config?: unknown };
    const kind = r.success ? r.data.type : (SENSOR_KINDS as readonly unknown[]).includes(raw.type) ? (raw.type as SensorKind) : undefined;
    const config = r.success ? r.data.config : raw.config ?? {};
    const c = kind && config !== null && typeof config === 'object' && !Array.isArray(config) ? SENSOR_CONFIG_SCHEMAS[kind].safeParse(config) : undefined;
    if (!r.success) addIssues(problems, y, r.error.issues);
    if (c && !c.success) addIssues(problems, y, c.error.issues, ['config']);
    if (!r.success || !c?.success) continue;
    const s = r.data;
    if (!checkDuplicate(problems, sensorNames, 'sensor', s.name, y)) continue;
    const trig = sensorTriggerProblem(s, pack);
    if (trig) { problems.add(y.file, y.lineOf(['trigger']), 'trigger', trig); continue; }
    const sensor = normalizeSensor(s, pack, c.data as Record<string, unknown>);
    sources[sensor.ref] = f.path;
    sensors.push(sensor);
  }

  const rules: RuleDef[] = [];
  const ruleNames = new Map<string, Seen>();
  const defined = new Set(actions.map((a) => a.ref));
  for (const f of sorted(groups.rule)) {
    const y = parseFile(f, problems);
    if (!y) continue;
    const r = ruleInputSchema.safeParse(y.value);
    if (!r.success) { addIssues(problems, y, r.error.issues); continue; }
    let rule: RuleDef;
    try {
      rule = normalizeRule(r.data, pack);
    } catch (e) {
      const path = (e as { path?: unknown }).path;
      const at = Array.isArray(path) ? (path as PropertyKey[]) : [];
      const field = fieldName(at);
      // "rule "x" cooldown: bad ..." → "bad ...": the file, line and field are printed already.
      let msg = (e as Error).message.replace(/^rule (".*?" )?/, '');
      if (field && msg.startsWith(`${field}: `)) msg = msg.slice(field.length + 2);
      problems.add(y.file, y.lineOf(at), field, msg.slice(0, 300));
      continue;
    }
    if (!checkDuplicate(problems, ruleNames, 'rule', rule.name, y)) continue;
    // An action of this pack must be defined here (a broken action file is reported above).
    if (rule.action.ref.startsWith(`${pack}.`) && !declared.has(rule.action.ref) && !unreadableAction) {
      const at = y.lineOf(['action', 'ref']);
      problems.add(y.file, at, 'action.ref', `action "${rule.action.ref}" is not defined in this pack (actions: ${[...defined].join(', ') || 'none'})`);
      continue;
    }
    // An action of another pack must be installed: a rule calling nothing would match and "fire" while nothing runs.
    if (!rule.action.ref.startsWith(`${pack}.`) && o.actionExists && !o.actionExists(rule.action.ref)) {
      problems.add(y.file, y.lineOf(['action', 'ref']), 'action.ref', `action "${rule.action.ref}" is not installed in this tenant: install its pack first (trellis actions list shows what is)`);
      continue;
    }
    sources[rule.ref] = f.path;
    rules.push(rule);
  }

  if (problems.count) {
    throw new TrellisError('TRELLIS_E_PACK_INVALID', `pack ${meta?.name ?? ''}${meta ? ' ' : ''}is invalid (${problems.count} problem${problems.count === 1 ? '' : 's'}):\n${problems.text()}`);
  }
  return {
    name: meta!.name, version: meta!.version, description: meta!.description, actions, sensors, rules,
    files: sorted([...byPath.values()]).map((f) => ({ path: f.path, size: f.content.length, mode: f.mode & 0o7777 })),
    sources,
  };
}

function parseFile(f: PackFile, problems: Problems): YamlFile | undefined {
  const t = textOf(f, problems);
  if (t === undefined) return undefined;
  const y = parseYaml(f.path, t, problems);
  if (!y) return undefined;
  if (y.value === null || typeof y.value !== 'object' || Array.isArray(y.value)) {
    problems.add(f.path, 1, '', 'expected a mapping (name: ..., description: ..., ...)');
    return undefined;
  }
  return y;
}

/** The script of a runner-script action: a text file of the pack, within the script limit. */
function scriptOf(path: string, byPath: Map<string, PackFile>, problems: Problems, y: YamlFile): { path: string; body: string } | undefined {
  const p = path.replace(/^\.\//, '');
  const bad = packPathProblem(p);
  const line = y.lineOf(['script']);
  if (bad) { problems.add(y.file, line, 'script', `${bad}: name a file inside the pack, e.g. scripts/run.sh`); return undefined; }
  const f = byPath.get(p);
  if (!f) { problems.add(y.file, line, 'script', `no file ${p} in the pack`); return undefined; }
  if (f.content.length > PACK_LIMITS.scriptBytes) {
    problems.add(y.file, line, 'script', `${p} is ${f.content.length} bytes: a script is at most ${KIB(PACK_LIMITS.scriptBytes)}`);
    return undefined;
  }
  let body: string;
  try { body = utf8.decode(f.content); } catch {
    problems.add(y.file, line, 'script', `${p} is not UTF-8 text`);
    return undefined;
  }
  if (body.includes('\0')) { problems.add(y.file, line, 'script', `${p} is binary (holds NUL bytes)`); return undefined; }
  return { path: p, body };
}
