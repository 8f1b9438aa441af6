/**
 * The datastore and secrets: `trellis kv set|get|list|delete` and `trellis secrets rotate-key`.
 * A value can come from a file (--file) or standard input (`-` or --stdin) so that secrets stay
 * out of shell history and `ps`.
 */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import * as grpc from '@grpc/grpc-js';
import { TrellisError } from '../../common/errors.js';
import { parseDuration } from '../../common/duration.js';
import { fromGrpcError } from '../../common/grpc-errors.js';
import { call, fromProfile, withClients } from '../client.js';
import { readProfile } from '../profile.js';
import { readStdin } from '../prompt.js';
import { when, print, addOutputOptions, output, outputOne } from '../format.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

const VALUE_MAX = 64 * 1024;

function scopeOption(v: string | undefined): string {
  if (v === undefined || v === 'tenant' || v === 'user') return v ?? 'tenant';
  throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `--scope is tenant or user, not "${v}"`);
}

/** The value: the argument, or --file, or standard input (`-` or --stdin); exactly one. */
export async function valueOf(arg: string | undefined, o: { file?: string; stdin?: boolean }): Promise<string> {
  const fromStdin = !!o.stdin || arg === '-';
  const sources = [arg !== undefined && arg !== '-', !!o.file, fromStdin].filter(Boolean).length;
  if (sources !== 1) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'give the value exactly one way: as VALUE, with --file F, or on standard input (`-` or --stdin)');
  if (o.file) {
    let b: Buffer;
    try { b = readFileSync(o.file); } catch (e) {
      throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `cannot read --file ${o.file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    if (b.length > VALUE_MAX) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${o.file} is ${b.length} bytes: a value is at most ${VALUE_MAX} bytes (64 KiB)`);
    return b.toString('utf8');
  }
  if (fromStdin) {
    try { return (await readStdin(VALUE_MAX)).replace(/\r?\n$/, ''); } catch (e) {
      throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `standard input: a value is at most ${VALUE_MAX} bytes (64 KiB)`, { cause: e });
    }
  }
  return arg!;
}

function ttlOf(v: string | undefined): number {
  return v ? parseDuration(v, '--ttl') : 0;
}

export function addKvCommands(program: Command): void {
  const kv = program.command('kv').description('the datastore: tenant-scoped keys and values, plain or secret (encrypted at rest)');

  kv.command('set')
    .description('set a key (a secret is encrypted with the hub master key)')
    .argument('<key>', '1-256 characters of A-Z a-z 0-9 . _ / -')
    .argument('[value]', 'the value; `-` reads standard input (use --file or --stdin for secrets: keeps them out of shell history)')
    .option('--secret', 'encrypt the value at rest; reading it in clear needs kv:decrypt, and using it in a command or parameters you choose needs secrets:use (or kv:decrypt)')
    .option('--ttl <duration>', 'expire after this long (30s, 1h, 7d)')
    .option('--scope <scope>', 'tenant (default) or user (visible only to you)', 'tenant')
    .option('--private', 'tenant scope: visible only to you and administrators; kept apart from the shared key of the same name (which others may set without seeing yours; yours shadows it for you); rules never see it')
    .option('--file <file>', 'read the value from this file')
    .option('--stdin', 'read the value from standard input')
    .action(async (key: string, value: string | undefined, o) => {
      const req: T.KvSetRequest = { key, value: await valueOf(value, o), secret: !!o.secret, ttlMs: ttlOf(o.ttl), scope: scopeOption(o.scope), private: !!o.private };
      const e = await withClients((c) => call<T.KvSetRequest, T.KvEntry__Output>(c, c.kv, c.kv.Set, req));
      print(`set ${e.key} (${e.scope}${e.secret ? `, secret, key v${e.keyVersion}` : ''}${e.private ? ', private' : ''}${e.expiresAtMs ? `, expires ${when(e.expiresAtMs)}` : ''})`);
    });

  addOutputOptions(kv.command('get')
    .description('print a value (a secret prints as ciphertext unless --decrypt, which needs kv:decrypt and is audited); json and yaml print the whole entry')
    .argument('<key>')
    .option('--decrypt', 'print a secret in clear')
    .option('--scope <scope>', 'tenant (default) or user', 'tenant'), 'nothing: table and wide print the value alone')
    .action(async (key: string, o) => {
      const req: T.KvGetRequest = { key, scope: scopeOption(o.scope), decrypt: !!o.decrypt };
      const e = await withClients((c) => call<T.KvGetRequest, T.KvEntry__Output>(c, c.kv, c.kv.Get, req));
      await outputOne(o, e, () => e.value);
    });

  addOutputOptions(kv.command('list')
    .description('list keys you can see (values of secrets are not shown)')
    .option('--prefix <prefix>', 'only keys starting with this'), 'updated, whole values')
    .action(async (o) => {
      const r = await withClients((c) => call<T.KvListRequest, T.KvListResponse__Output>(c, c.kv, c.kv.List, { prefix: o.prefix ?? '' }));
      await output(o, r.entries, [
        { header: 'KEY', cell: (e) => e.key }, { header: 'SCOPE', cell: (e) => e.scope }, { header: 'SECRET', cell: (e) => (e.secret ? `v${e.keyVersion}` : '-') },
        { header: 'PRIVATE', cell: (e) => (e.private ? 'yes' : '-') }, { header: 'BY', cell: (e) => e.createdBy },
        { header: 'UPDATED', cell: (e) => when(e.updatedAtMs), wide: true },
        { header: 'EXPIRES', cell: (e) => (e.expiresAtMs ? when(e.expiresAtMs) : '-') },
        { header: 'VALUE', cell: (e, wide) => (e.secret ? '(secret)' : !wide && e.value.length > 40 ? `${e.value.slice(0, 40).replace(/\s/g, ' ')}…` : e.value.replace(/\s/g, ' ')) },
      ]);
    });

  kv.command('delete')
    .description('delete a key')
    .argument('<key>')
    .option('--scope <scope>', 'tenant (default) or user', 'tenant')
    .action(async (key: string, o) => {
      await withClients((c) => call<T.KvDeleteRequest, T.KvDeleteResponse__Output>(c, c.kv, c.kv.Delete, { key, scope: scopeOption(o.scope) }));
      print(`deleted ${key}`);
    });

  const secrets = program.command('secrets').description('secrets at rest: the hub master key');
  secrets.command('rotate-key')
    .description('create a new master key version and re-encrypt every secret with it (in the background; reads and writes go on); the old key is deleted when unused')
    .action(async () => {
      const c = fromProfile(readProfile());
      try {
        const stream = c.kv.RotateKey({}, c.metadata);
        const tty = process.stdout.isTTY;
        let last: T.RotateProgress__Output | undefined;
        await new Promise<void>((resolve, reject) => {
          stream.on('data', (p: T.RotateProgress__Output) => {
            last = p;
            const line = `key v${p.keyVersion}: ${p.done}/${p.total} secrets re-encrypted${p.finished ? ', done' : ''}`;
            process.stdout.write(tty ? `\r${line}${p.finished ? '\n' : ''}` : `${line}\n`);
          });
          stream.on('error', (e: grpc.ServiceError) => reject(fromGrpcError(e)));
          stream.on('end', () => resolve());
        });
        if (last?.finished) print(`master key is now version ${last.keyVersion}; older versions were deleted`);
      } finally {
        c.close();
      }
    });
}
