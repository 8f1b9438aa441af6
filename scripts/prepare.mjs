// npm's `prepare` step: builds dist/ (npm run build) after `npm ci` / `npm install`, and before
// `npm pack` / `npm publish`.
//
// Not under `npx trellis` / `npm exec trellis` in this source tree (npm_command=exec): npm links the
// tree into its npx cache and runs `prepare` there first, so every first `npx trellis …` rebuilt the
// whole tree (~30 s, rewriting dist/ under whatever else was using it), and a build that failed (no
// node_modules yet) left npm's cache half made: every later `npx trellis` then failed with "ENOENT
// … _npx/…/package.json" until that cache was removed. Under npm exec the command runs what is
// built; bin/trellis.js says "not built yet" when dist/ is missing.
import { spawnSync } from 'node:child_process';

if (process.env.npm_command === 'exec') process.exit(0);
const npm = process.env.npm_execpath;
const r = npm
  ? spawnSync(process.execPath, [npm, 'run', 'build'], { stdio: 'inherit' })
  : spawnSync('npm', ['run', 'build'], { stdio: 'inherit' });
if (r.error) { process.stderr.write(`prepare: cannot run npm run build: ${r.error.message}\n`); process.exit(1); }
process.exit(r.status ?? 1);
