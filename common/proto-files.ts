/**
 * Where the wire contract's .proto files are and how they are loaded: shared by common/proto.ts
 * (every service, for the hub and the admin clients) and common/proto-channel.ts (the agent's
 * stream only). Loads nothing itself.
 */
import type * as protoLoader from '@grpc/proto-loader';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Package root: dist/common/proto-files.js and common/proto-files.ts both sit two levels below it. */
function packageRoot(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  return here.includes(`${join('dist', 'common')}`) ? join(here, '..', '..') : join(here, '..');
}

export const PROTO_DIR = join(packageRoot(), 'proto');

export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_DIR],
};
