import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PROTO_DIR } from './proto.js';

export const TRELLIS_VERSION: string = (JSON.parse(readFileSync(join(PROTO_DIR, '..', 'package.json'), 'utf8')) as { version: string }).version;
export const API_VERSION = 'trellis.v1';
