/**
 * `trellis` loads only what the command uses: `trellis version` (not logged in) loads neither
 * gRPC, the wire contract, node-forge nor pino; `trellis agents list` loads the admin client but
 * not the daemons' logger, the event stream client or the hub. `--help` still lists every command.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runCli } from './helpers/cli.js';
import { tempDir } from './helpers/hub.js';

const MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', 'cli', 'main.js');

/** Runs main(ARGS) in a fresh node and returns the CommonJS packages it loaded (ESM ones do not show). */
function loaded(home: string, args: string[]): string[] {
  const script = `
    import { createRequire } from 'node:module';
    const require = createRequire(${JSON.stringify(MAIN)});
    const { main } = await import(${JSON.stringify(MAIN)});
    await main(['node', 'trellis', ...${JSON.stringify(args)}]);
    const pk = new Set(Object.keys(require.cache).map((k) => (/node_modules\\/((?:@[^/]+\\/)?[^/]+)/.exec(k) ?? [])[1]).filter(Boolean));
    process.stderr.write('LOADED ' + [...pk].sort().join(' ') + '\\n');
    process.stderr.write('HUB ' + Object.keys(require.cache).some((k) => k.includes('/dist/hub/')) + '\\n');`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, TRELLIS_HOME: home }, encoding: 'utf8' });
  const line = r.stderr.split('\n').find((l) => l.startsWith('LOADED '));
  if (!line) throw new Error(`no LOADED line: ${r.stderr}`);
  return line.slice(7).split(' ').filter(Boolean);
}

t.test('trellis version and agents list load only what they use', async (t) => {
  await using home = await tempDir();
  const v = loaded(home.path, ['version']);
  for (const heavy of ['@grpc/grpc-js', '@grpc/proto-loader', 'protobufjs', 'node-forge', 'pino', 'ws']) t.notOk(v.includes(heavy), `version does not load ${heavy}`);
  const a = loaded(home.path, ['agents', 'list']);
  t.ok(a.includes('@grpc/grpc-js'), 'agents list loads the gRPC client it uses');
  for (const heavy of ['pino', 'ws']) t.notOk(a.includes(heavy), `agents list does not load ${heavy}`);

  const out = await runCli(['version'], { TRELLIS_HOME: home.path });
  t.equal(out.code, 0);
  t.match(out.out, /^trellis \d+\.\d+\.\d+/);
  const help = await runCli(['--help'], { TRELLIS_HOME: home.path });
  for (const cmd of ['hub', 'agent', 'login', 'context', 'agents', 'users', 'kv', 'executions', 'webhooks', 'events', 'packs', 'rules', 'ca', 'version']) {
    t.match(help.out, new RegExp(`^  ${cmd}\\b`, 'm'), `--help lists ${cmd}`);
  }
  const sub = await runCli(['agents', '--help'], { TRELLIS_HOME: home.path });
  t.match(sub.out, /list/, 'agents --help lists its subcommands (admin and fleet modules both loaded)');
  t.match(sub.out, /install/, 'including the fleet ones');
});
