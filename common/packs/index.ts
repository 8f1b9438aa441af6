/**
 * Packs: folders of actions, sensors and rules. `loadPack` validates the files of a pack (on the
 * CLI before sending and on the hub on install) with errors naming the file, the line and the
 * field; `readPackSource` reads a pack directory or tarball on the CLI side.
 */
export { loadPack, type LoadOptions, packNameOf, packPathProblem, checkPackLimits, PACK_LIMITS, type PackFile, type PackFileInfo, type PackSources, type LoadedPack } from './load.js';
export { readPackSource, readPackDir, readPackTarball } from './read.js';
export { NAME_RE, PARAM_NAME_RE, DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS, DEFAULT_INTERVAL_MS, MIN_INTERVAL_MS, templateNames } from './schema.js';
export { MAX_PROBLEMS } from './yaml.js';
