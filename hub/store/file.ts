/**
 * The on-disk form of the lowdb store, and the lowdb adapter that reads and writes it.
 *
 *   { "version": 1, "collections": { "<collection>": { "<id>": doc, ... }, ... } }
 *
 * One document per line, so the file stays readable and diffable by an operator.
 */
import type { Adapter } from 'lowdb';
import { errorMessage, TrellisError } from '../../common/errors.js';
import { atomicWriteFile, readFileIfExists } from '../../common/fsutil.js';
import { toStoredParsedDoc, type Tables } from './base.js';

export const FILE_FORMAT_VERSION = 1;

/**
 * lowdb adapter over {@link atomicWriteFile} with mode 0600 (lowdb's own JSONFile creates the
 * file with whatever the umask allows, and the store holds secrets). A missing file reads as
 * "no data"; a file that does not parse fails loudly and is never overwritten.
 */
export class StoreFileAdapter implements Adapter<Tables> {
  /** File writes started so far (a test hook for coalescing). */
  writes = 0;

  constructor(readonly path: string) {}

  async read(): Promise<Tables | null> {
    const buf = await readFileIfExists(this.path);
    return buf === undefined ? null : decodeStoreFile(buf.toString('utf8'), this.path);
  }

  async write(tables: Tables): Promise<void> {
    // Serialized before the first await, so the file holds exactly the state as of this call.
    const text = encodeStoreFile(tables);
    this.writes++;
    await atomicWriteFile(this.path, text, { mode: 0o600 });
  }
}

export function encodeStoreFile(tables: Tables): string {
  const cols: string[] = [];
  for (const [col, table] of tables) {
    const docs: string[] = [];
    for (const [id, doc] of table) docs.push(`      ${JSON.stringify(id)}: ${JSON.stringify(doc)}`);
    cols.push(`    ${JSON.stringify(col)}: ${docs.length === 0 ? '{}' : `{\n${docs.join(',\n')}\n    }`}`);
  }
  const body = cols.length === 0 ? '{}' : `{\n${cols.join(',\n')}\n  }`;
  return `{\n  "version": ${FILE_FORMAT_VERSION},\n  "collections": ${body}\n}\n`;
}

export function decodeStoreFile(text: string, path: string): Tables {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw corrupt(path, `it is not valid JSON (${errorMessage(err)})`, err);
  }
  if (!isPlainObject(raw)) throw corrupt(path, 'it is not a JSON object');
  if (raw.version !== FILE_FORMAT_VERSION) {
    throw corrupt(path, `its format version is ${JSON.stringify(raw.version)}, this Trellis reads version ${FILE_FORMAT_VERSION}`);
  }
  const collections = raw.collections;
  if (!isPlainObject(collections)) throw corrupt(path, 'it has no "collections" object');

  const tables: Tables = new Map();
  let textOrder: Map<string, string[]> | undefined;
  // Collections this version does not know are kept and written back untouched.
  for (const [col, docs] of Object.entries(collections)) {
    if (!isPlainObject(docs)) throw corrupt(path, `collection "${col}" is not an object`);
    let ids = Object.keys(docs);
    if (ids.some(isArrayIndex)) {
      textOrder ??= collectionKeyOrder(text);
      const ordered = textOrder.get(col) ?? [];
      if (new Set(ordered).size === ids.length) ids = ordered;
    }
    const table = new Map();
    for (const id of ids) {
      const doc = docs[id];
      if (!isPlainObject(doc) || doc.id !== id) {
        throw corrupt(path, `${col} entry "${id}" is not a document whose "id" is "${id}"`);
      }
      table.set(id, toStoredParsedDoc(col, doc));
    }
    tables.set(col, table);
  }
  return tables;
}

function corrupt(path: string, why: string, cause?: unknown): TrellisError {
  return new TrellisError(
    'TRELLIS_E_CONFIG',
    `state store file ${path} is unreadable: ${why}. It was left untouched; restore it from a backup, ` +
      'or move it aside to start with an empty store',
    cause === undefined ? undefined : { cause },
  );
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Keys JavaScript objects enumerate first, in numeric order, whatever order they were added in. */
function isArrayIndex(key: string): boolean {
  return /^(?:0|[1-9][0-9]{0,9})$/.test(key) && Number(key) < 2 ** 32 - 1;
}

/**
 * The ids of each `collections.<col>` object in the order the text lists them. JSON.parse loses
 * that order for array-index-like ids ("7", "42"), and list() promises insertion order, which
 * the writer preserved in the text. `text` must already be valid JSON.
 */
function collectionKeyOrder(text: string): Map<string, string[]> {
  const order = new Map<string, string[]>();
  // Open containers, outermost first: whether each is an object, and its key in the parent.
  const frames: { isObject: boolean; key: string | undefined }[] = [];
  let expectKey = false;
  let lastKey: string | undefined;
  for (let i = 0; i < text.length; i++) {
    switch (text[i]) {
      case '"': {
        let end = i + 1;
        while (text[end] !== '"') end += text[end] === '\\' ? 2 : 1;
        if (expectKey) {
          lastKey = JSON.parse(text.slice(i, end + 1)) as string;
          expectKey = false;
          const [, collections, col] = frames;
          if (frames.length === 3 && collections?.key === 'collections' && col?.key !== undefined) {
            let ids = order.get(col.key);
            if (!ids) order.set(col.key, (ids = []));
            ids.push(lastKey);
          }
        }
        i = end;
        break;
      }
      case '{':
      case '[':
        frames.push({ isObject: text[i] === '{', key: lastKey });
        lastKey = undefined;
        expectKey = text[i] === '{';
        break;
      case '}':
      case ']':
        frames.pop();
        lastKey = undefined;
        expectKey = false;
        break;
      case ',':
        expectKey = frames.at(-1)?.isObject ?? false;
        break;
      default:
        break;
    }
  }
  return order;
}
