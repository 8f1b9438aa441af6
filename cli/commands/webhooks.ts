/**
 * Webhooks: `trellis webhooks create|list|delete`. The HMAC secret is printed once, at creation;
 * the hub keeps it encrypted and cannot show it again (delete and create to get a new one).
 */
import type { Command } from 'commander';
import { call, type AdminClients, withClients } from '../client.js';
import type { Profile } from '../profile.js';
import { when, print, addOutputOptions, output } from '../format.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

/** The host part of a profile's hub address (`host:port`, `[v6]:port`). */
/** "3 (bad-signature 2, stale 1)", most frequent reason first; "0" when none. */
function refusedCell(by: Record<string, number | string>): string {
  const rows = Object.entries(by).map(([k, v]) => [k, Number(v)] as const).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  const total = rows.reduce((n, [, v]) => n + v, 0);
  return total ? `${total} (${rows.map(([k, v]) => `${k} ${v}`).join(', ')})` : '0';
}

export function hubHost(hub: string): string {
  const v6 = /^\[([^\]]+)\](?::\d+)?$/.exec(hub);
  if (v6) return v6[1]!;
  const i = hub.lastIndexOf(':');
  return i > 0 && hub.indexOf(':') === i ? hub.slice(0, i) : hub;
}

/** `https://host:port` of the hub's web port, asked from the hub (undefined when it does not say). */
export async function webBase(c: AdminClients, p: Profile, port?: number): Promise<string | undefined> {
  const webPort = port ?? (await call<T.GetVersionRequest, T.VersionInfo__Output>(c, c.version, c.version.GetVersion, {}, 10_000)).webPort;
  if (!webPort) return undefined;
  const host = hubHost(p.hub);
  return `https://${host.includes(':') ? `[${host}]` : host}:${webPort}`;
}

export function addWebhookCommands(program: Command): void {
  const wh = program.command('webhooks').description('webhooks: HTTPS POST endpoints on the web port that make events (webhook.<name>)');

  wh.command('create')
    .description('create a webhook and print its HMAC secret (shown once: store it now)')
    .argument('<name>', '1-63 characters of a-z 0-9 _ -')
    .option('--description <text>', 'what calls it')
    .option('--json', 'the response as JSON (with the secret)')
    .action(async (name: string, o) => {
      await withClients(async (c, p) => {
        const r = await call<T.CreateWebhookRequest, T.CreateWebhookResponse__Output>(c, c.webhooks, c.webhooks.CreateWebhook, { name, description: o.description ?? '' });
        const base = await webBase(c, p).catch(() => undefined);
        const url = base ? base + r.path : r.path;
        if (o.json) return print(JSON.stringify({ ...r, url }, null, 2));
        print([
          `created webhook ${r.info!.name} in tenant ${r.info!.tenant} (events of type ${r.info!.trigger})`,
          `  url:     ${url}`,
          `  secret:  ${r.secret}`,
          '           shown once: store it now; the hub cannot show it again',
          '  sign:    X-Trellis-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>',
          '           (or send an API key with webhooks:post: x-api-key: tak1_...)',
          `  example: body='{"ok":true}'; t=$(date +%s); sig=$(printf '%s' "$t.$body" | openssl dgst -sha256 -hmac "$SECRET" -r | cut -d' ' -f1)`,
          `           curl --cacert ca.pem -H 'content-type: application/json' -H "X-Trellis-Signature: t=$t,v1=$sig" -d "$body" ${url}`,
        ].join('\n'));
      });
    });

  addOutputOptions(wh.command('list')
    .description('list webhooks of the tenant (`--tenant \'*\'`: every tenant, administrators); RECEIVED counts accepted calls and REFUSED refused ones by reason (bad-signature, stale, replayed, malformed, api-key, denied, content-type, too-large, not-json, …) since the hub started'), 'created')
    .action(async (o) => {
      const r = await withClients((c) => call<T.ListWebhooksRequest, T.ListWebhooksResponse__Output>(c, c.webhooks, c.webhooks.ListWebhooks, {}));
      await output(o, r.webhooks, [
        { header: 'NAME', cell: (w) => w.name }, { header: 'TENANT', cell: (w) => w.tenant }, { header: 'TRIGGER', cell: (w) => w.trigger },
        { header: 'RECEIVED', cell: (w) => String(w.received) }, { header: 'LAST', cell: (w) => when(w.lastReceivedMs) }, { header: 'REFUSED', cell: (w) => refusedCell(w.refused) }, { header: 'CREATED BY', cell: (w) => w.createdBy },
        { header: 'CREATED', cell: (w) => when(w.createdMs), wide: true }, { header: 'DESCRIPTION', cell: (w) => w.description },
      ]);
    });

  wh.command('delete')
    .description('delete a webhook (its URL answers 401 from now on)')
    .argument('<name>')
    .action(async (name: string) => {
      await withClients((c) => call<T.DeleteWebhookRequest, T.DeleteWebhookResponse__Output>(c, c.webhooks, c.webhooks.DeleteWebhook, { name }));
      print(`deleted webhook ${name}`);
    });
}
