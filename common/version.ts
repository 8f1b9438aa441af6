import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

// The package root, found without importing proto.js: that would load gRPC and parse the wire
// contract in every command, `trellis version` included. dist/common/version.js and
// common/version.ts both sit below it (two levels and one).
const here = dirname(fileURLToPath(import.meta.url));
const root = here.includes(join('dist', 'common')) ? join(here, '..', '..') : join(here, '..');

export const TRELLIS_VERSION: string = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version;
export const API_VERSION = 'trellis.v1';
