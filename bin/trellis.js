#!/usr/bin/env -S node --max-semi-space-size=32 --initial-old-space-size=128
// The hub's node flags, HUB_NODE_FLAGS in common/service/unit.ts (which says why; its unit runs
// node with the same ones, and test/hub-install checks that the two lists agree).
// Entry point of the `trellis` command. The TypeScript sources are compiled to dist/ by
// `npm run build`, which `npm ci` runs through the `prepare` script.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

// `trellis agents list | head` closes the pipe early: that is not an error.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (err) => { if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0); else throw err; });
}

const main = new URL('../dist/cli/main.js', import.meta.url);
if (!existsSync(fileURLToPath(main))) {
  const root = fileURLToPath(new URL('..', import.meta.url));
  const deps = existsSync(fileURLToPath(new URL('../node_modules', import.meta.url)));
  process.stderr.write(`trellis: not built yet; run \`${deps ? 'npm run build' : 'npm ci'}\` in ${root} (npm ci installs the dependencies and builds)\n`);
  process.exit(1);
}
const { main: run } = await import(main.href);
await run(process.argv);
