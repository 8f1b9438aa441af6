/** `trellis audit`: the hub's audit log, one line per record; --follow keeps streaming. */
import { InvalidArgumentError, type Command } from 'commander';
import { TrellisError } from '../../common/errors.js';
import { parseDuration } from '../../common/duration.js';
import { fromGrpcError } from '../../common/grpc-errors.js';
import { fromProfile } from '../client.js';
import { resolveProfile } from '../profile.js';
import { print, addOutputOptions, formatOf, localIso, toDocument } from '../format.js';
import * as grpc from '@grpc/grpc-js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

/** --since: a duration back from now (30m, 2h, 7d) or an ISO 8601 time. */
export function parseSince(text: string, now = Date.now()): number {
  if (/^\d{4}-\d{2}-\d{2}/.test(text)) {
    const t = Date.parse(text);
    if (Number.isNaN(t)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `bad --since "${text}": use a duration (1h, 7d) or an ISO time (2024-05-01T12:00:00Z)`);
    return t;
  }
  return now - parseDuration(text, '--since');
}

function limitOption(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 10_000) throw new InvalidArgumentError('a whole number from 1 to 10000');
  return n;
}

/** One field of a line: never empty, never a control character (a record stays one line). */
const field = (s: string) => (s ? s.replace(/[\u0000-\u001f\u007f]+/g, ' ') : '-');

/** time, actor, tenant, method (short name), target, result, source, detail. */
export function formatAuditLine(r: T.AuditRecord__Output): string {
  const method = r.method.slice(r.method.lastIndexOf('/') + 1);
  return [localIso(Number(r.timeMs), { millis: true }), r.actor, r.tenant, method, r.target, r.result, r.sourceAddress, r.detail].map(field).join('  ');
}

export function addAuditCommands(program: Command): void {
  addOutputOptions(program.command('audit')
    .description('show the audit log (mutations and refused calls, every tenant; administrators only)')
    .option('--follow', 'after the history, keep printing new records until interrupted')
    .option('--since <when>', 'only records from this far back (30m, 24h, 7d) or since an ISO time')
    .option('--limit <n>', 'the most recent N records of the history (at most 10000)', limitOption, 100)
    .option('--actor <name>', 'only this actor (user name, apikey:<id>@<owner>, or - for unauthenticated calls)')
    .option('--method <text>', 'only methods whose name contains this text, e.g. JoinToken or AdminUsers/')
    .addHelpText('after', '\nColumns: time (local), actor, tenant, method, target, result, source address, detail.\n' +
      'json: one JSON object per line (JSON Lines); yaml: one YAML document per record; times in RFC 3339.'))
    .action(async (o) => {
      const format = formatOf(o);
      const yaml = format === 'yaml' ? await import('yaml') : undefined;
      const c = fromProfile(await resolveProfile());
      const req: T.ListAuditRequest = {
        sinceMs: o.since ? parseSince(o.since) : 0, limit: o.limit, follow: !!o.follow, actor: o.actor ?? '', methodContains: o.method ?? '',
      };
      const stream = c.audit.ListAudit(req, c.metadata, o.follow ? {} : { deadline: Date.now() + 30_000 });
      let interrupted = false;
      const onSig = () => { interrupted = true; stream.cancel(); };
      process.once('SIGINT', onSig);
      try {
        await new Promise<void>((resolve, reject) => {
          stream.on('data', (r: T.AuditRecord__Output) => {
            if (format === 'json') print(JSON.stringify(toDocument(r)));
            else if (yaml) print(`---\n${yaml.stringify(toDocument(r), { lineWidth: 0 })}`);
            else print(formatAuditLine(r));
          });
          stream.on('error', (e: grpc.ServiceError) => (interrupted && e.code === grpc.status.CANCELLED ? resolve() : reject(fromGrpcError(e))));
          stream.on('end', () => resolve());
        });
      } finally {
        process.off('SIGINT', onSig);
        c.close();
      }
    });
}
