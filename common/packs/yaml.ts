/**
 * YAML with line numbers: one document per file, parsed with the `yaml` package's CST so that
 * every validation problem can name the line of the field it is about. Also the problem list
 * that pack loading fills (at most {@link MAX_PROBLEMS}, one line each: `file:line: field: msg`).
 */
import { parseDocument, LineCounter, isMap, isSeq, isScalar, type Node } from 'yaml';
import type { z } from 'zod';

/** The most problems reported at once; more are summed up in one last line. */
export const MAX_PROBLEMS = 20;

/** A path into a parsed value: keys and array indexes. */
export type FieldPath = readonly PropertyKey[];

/** `parameters.service.type`, `command[2]`, `env["A B"]`. */
export function fieldName(path: FieldPath): string {
  let s = '';
  for (const seg of path) {
    if (typeof seg === 'number') s += `[${seg}]`;
    else if (/^[A-Za-z0-9_-]+$/.test(String(seg))) s += s ? `.${String(seg)}` : String(seg);
    else s += `[${JSON.stringify(String(seg)).slice(0, 80)}]`;
  }
  return s;
}

/** Collects problems across the files of a pack, in order, up to a limit. */
export class Problems {
  readonly lines: string[] = [];
  private extra = 0;

  add(file: string, line: number | undefined, field: string, message: string): void {
    if (this.lines.length >= MAX_PROBLEMS) { this.extra++; return; }
    const where = line ? `${file}:${line}` : file;
    this.lines.push(field ? `${where}: ${field}: ${message}` : `${where}: ${message}`);
  }

  get count(): number { return this.lines.length + this.extra; }
  get full(): boolean { return this.lines.length >= MAX_PROBLEMS; }

  /** The text of an error: every problem on its own line. */
  text(): string {
    return this.extra ? [...this.lines, `... and ${this.extra} more`].join('\n') : this.lines.join('\n');
  }
}

/** A parsed file: its plain value and the line of any field in it. */
export interface YamlFile {
  file: string;
  value: unknown;
  /** The line of the deepest node along `path` that exists (the key's line for map entries). */
  lineOf(path: FieldPath): number;
}

/** Largest alias expansion accepted (a "billion laughs" file fails instead of eating memory). */
const MAX_ALIAS_COUNT = 100;

/**
 * Parses one YAML document. Syntax errors (and values JSON cannot hold, like `.nan`) are added
 * to `problems` with their line; the result is undefined when the file cannot be used.
 */
export function parseYaml(file: string, text: string, problems: Problems): YamlFile | undefined {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true, strict: true });
  const lineAt = (offset: number) => lc.linePos(offset).line;
  if (doc.errors.length) {
    for (const e of doc.errors.slice(0, 5)) problems.add(file, lineAt(e.pos[0]), '', `YAML syntax: ${firstLine(e.message)}`);
    return undefined;
  }
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT });
  } catch (e) {
    problems.add(file, 1, '', `YAML: ${firstLine((e as Error).message)}`);
    return undefined;
  }
  const nodeLine = (n: unknown, fallback: number): number => {
    const r = (n as Node | null)?.range;
    return r ? lineAt(r[0]) : fallback;
  };
  const lineOf = (path: FieldPath): number => {
    let node: unknown = doc.contents;
    let line = nodeLine(node, 1);
    for (const seg of path) {
      if (isMap(node)) {
        const pair = node.items.find((p) => (isScalar(p.key) ? String(p.key.value) : String(p.key)) === String(seg));
        if (!pair) break;
        line = nodeLine(pair.key, nodeLine(pair.value, line));
        node = pair.value;
      } else if (isSeq(node) && typeof seg === 'number') {
        const item = node.items[seg];
        if (!item) break;
        line = nodeLine(item, line);
        node = item;
      } else break;
    }
    return line;
  };
  const y: YamlFile = { file, value, lineOf };
  const bad = nonJson(value, []);
  if (bad) { problems.add(file, lineOf(bad.path), fieldName(bad.path), bad.why); return undefined; }
  return y;
}

function firstLine(s: string): string {
  return s.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '').slice(0, 200);
}

/** The first value that JSON cannot hold (or a `__proto__` key), if any. */
function nonJson(v: unknown, path: PropertyKey[], depth = 0): { path: PropertyKey[]; why: string } | undefined {
  const notJson = { path, why: 'not a JSON value (NaN, infinity and binary are not allowed)' };
  if (depth > 64) return { path, why: 'nested too deeply (64 levels at most)' };
  if (v === null || typeof v === 'string' || typeof v === 'boolean') return undefined;
  if (typeof v === 'number') return Number.isFinite(v) ? undefined : notJson;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) { const p = nonJson(v[i], [...path, i], depth + 1); if (p) return p; }
    return undefined;
  }
  if (typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype) {
    for (const [k, x] of Object.entries(v)) {
      if (k === '__proto__') return { path: [...path, k], why: 'reserved key' };
      const p = nonJson(x, [...path, k], depth + 1);
      if (p) return p;
    }
    return undefined;
  }
  return notJson;
}

/** A zod issue as one short, human line (without the field, which the caller prints). */
export function issueMessage(issue: z.core.$ZodIssue, input: unknown): string {
  switch (issue.code) {
    case 'invalid_type': {
      const got = valueAt(input, issue.path);
      if (got === undefined) return issue.expected === 'nonoptional' ? 'required' : `required (${expectedName(issue.expected)})`;
      return `expected ${expectedName(issue.expected)}, got ${kindOf(got)}`;
    }
    case 'invalid_value':
      if (issue.values.length > 1 && valueAt(input, issue.path) === undefined) return `required: one of ${issue.values.map((v) => String(v)).join(', ')}`;
      return `expected ${issue.values.length === 1 ? JSON.stringify(issue.values[0]) : `one of ${issue.values.map((v) => String(v)).join(', ')}`}`;
    case 'unrecognized_keys':
      return `unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k.slice(0, 64)}"`).join(', ')}`;
    case 'too_big':
      return issue.origin === 'string' ? `at most ${issue.maximum} characters` : issue.origin === 'array' ? `at most ${issue.maximum} items` : `at most ${issue.maximum}`;
    case 'too_small':
      if (issue.origin === 'string') return Number(issue.minimum) <= 1 ? 'must not be empty' : `at least ${issue.minimum} characters`;
      return issue.origin === 'array' ? `at least ${issue.minimum} item${Number(issue.minimum) === 1 ? '' : 's'}` : `at least ${issue.minimum}`;
    case 'invalid_union':
      return issue.message && !/^Invalid input$/i.test(issue.message) ? issue.message : 'not one of the accepted forms';
    default:
      return issue.message;
  }
}

const expectedName = (e: string) => (e === 'record' || e === 'object' ? 'a mapping' : e === 'array' ? 'a list' : e === 'int' ? 'an integer' : e);

function kindOf(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  return typeof v;
}

function valueAt(v: unknown, path: FieldPath): unknown {
  let cur = v;
  for (const seg of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[seg as string];
  }
  return cur;
}

/** Adds every issue of a failed zod parse to `problems`, with the line of its field. */
export function addIssues(problems: Problems, y: YamlFile, issues: readonly z.core.$ZodIssue[], prefix: FieldPath = []): void {
  for (const issue of issues) {
    const path = [...prefix, ...issue.path];
    if (issue.code === 'invalid_union' && issue.errors.length) {
      // Report the branch that got furthest (e.g. `command: [true]` → command[0]: expected string).
      const deepest = (l: readonly z.core.$ZodIssue[]) => Math.max(0, ...l.map((i) => i.path.length));
      const best = [...issue.errors].sort((a, b) => deepest(b) - deepest(a))[0]!;
      if (deepest(best) > 0) { addIssues(problems, y, best, path); continue; }
      const kinds = issue.errors.flatMap((l) => l.filter((i) => i.code === 'invalid_type').map((i) => expectedName((i as { expected: string }).expected)));
      if (kinds.length === issue.errors.length) {
        const got = valueAt(y.value, path);
        problems.add(y.file, y.lineOf(path), fieldName(path), `expected ${kinds.join(' or ')}, got ${kindOf(got)}`);
        continue;
      }
    }
    if (issue.code === 'unrecognized_keys') {
      // One problem per unknown key, at the key's own line.
      for (const k of issue.keys.slice(0, 5)) problems.add(y.file, y.lineOf([...path, k]), fieldName([...path, k]), 'unknown field');
      continue;
    }
    problems.add(y.file, y.lineOf(path), fieldName(path), issueMessage(issue, prefix.length ? valueAt(y.value, prefix) : y.value));
  }
}
