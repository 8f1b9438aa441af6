// Generates TypeScript types for proto/trellis/v1/*.proto into common/proto-gen/ with the
// generator that ships with @grpc/proto-loader. Types only: the .proto files are loaded at
// runtime by common/proto.ts with the same options.
import { execFileSync } from 'node:child_process';
import { readdirSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'common', 'proto-gen');
const protoDir = join(root, 'proto');
const files = readdirSync(join(protoDir, 'trellis', 'v1')).filter((f) => f.endsWith('.proto')).map((f) => `trellis/v1/${f}`);
const require = createRequire(import.meta.url);
const gen = join(dirname(require.resolve('@grpc/proto-loader/package.json')), 'build', 'bin', 'proto-loader-gen-types.js');
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
execFileSync(process.execPath, [gen, '--longs=Number', '--enums=String', '--defaults', '--oneofs', '--keepCase=false',
  '--grpcLib=@grpc/grpc-js', `--outDir=${out}`, `--includeDirs=${protoDir}`, '--inputTemplate=%s', '--outputTemplate=%s__Output', ...files], { cwd: protoDir, stdio: 'inherit' });
// The generator writes extensionless relative imports; marking the folder CommonJS lets
// NodeNext resolution accept them (the files hold types only and emit nothing at runtime).
writeFileSync(join(out, 'package.json'), '{ "type": "commonjs" }\n');
// One index of every message and service type, re-exported as types only.
const typesDir = join(out, 'trellis', 'v1');
const names = readdirSync(typesDir).filter((f) => f.endsWith('.ts')).map((f) => f.slice(0, -3)).sort();
writeFileSync(join(typesDir, 'index.ts'), names.map((n) => `export type * from './${n}';`).join('\n') + '\n');
