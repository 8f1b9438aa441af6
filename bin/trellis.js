#!/usr/bin/env node
// Entry point of the `trellis` command. The TypeScript sources are compiled to dist/ by
// `npm run build`, which `npm ci` runs through the `prepare` script.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

// grpc-js passes IP addresses as the TLS server name; Node warns about it (DEP0123) on every
// connection to a hub addressed by IP. The certificate is still checked against the IP SAN.
const emitWarning = process.emitWarning;
process.emitWarning = function (warning, ...rest) {
  const code = typeof rest[0] === 'object' ? rest[0]?.code : rest[1];
  if (code === 'DEP0123') return;
  return emitWarning.call(process, warning, ...rest);
};

const main = new URL('../dist/cli/main.js', import.meta.url);
if (!existsSync(fileURLToPath(main))) {
  process.stderr.write('trellis: not built yet; run `npm run build` (npm ci does it)\n');
  process.exit(1);
}
const { main: run } = await import(main.href);
await run(process.argv);
