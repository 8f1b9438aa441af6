/** Admin commands: they talk to the hub's admin API with the profile from `trellis login`. */
import { readFileSync, writeFileSync } from 'node:fs';
import type { Command } from 'commander';
import { TrellisError } from '../../common/errors.js';
import { parseDuration } from '../../common/duration.js';
import { parseHostPort, formatHostPort } from '../../common/grpc-options.js';
import { fetchServedChain, pinnedBundle } from '../../common/tlsprobe.js';
import { fingerprintSha256, splitPemBundle } from '../../certs/index.js';
import { fromGrpcError } from '../../common/grpc-errors.js';
import { adminClients, call, explainTlsFailure, fromProfile, withClients } from '../client.js';
import { checkContextName, currentContext, readContext, readProfile, useContext, writeProfile } from '../profile.js';
import { revokeToken } from './contexts.js';
import { ask, askHidden, isInteractive } from '../prompt.js';
import { ago, when, labels, parseKeyValues, print, printErr, writeOutput, clean, addOutputOptions, formatOf, output, outputOne, printDocument } from '../format.js';
import { collect } from './util.js';
import { InvalidArgumentError } from 'commander';
import { addRunActionOptions } from './executions.js';
import { runAction as runActionOn, runCommand, selectorText, EXIT_HELP as RUN_HELP, type RunOptions } from './run.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

/** `agents list` hides agents revoked longer ago than this (the hub's REVOKED_LISTED_MS). */
const REVOKED_LISTED_DAYS = 7;

/** `tokens create --uses`: a whole number 1..100000 (not a silent 1 for 0 or text). */
function usesOption(v: string): number {
  if (!/^\d+$/.test(v.trim()) || Number(v) < 1 || Number(v) > 100_000) throw new InvalidArgumentError('a whole number from 1 to 100000');
  return Number(v);
}

/**
 * `trellis run PACK.ACTION [name=value ...]` rather than a command: no `--` on the command line,
 * a pack.action name first, and name=value pairs after it.
 */
function isActionCall(args: string[], cmd: Command): boolean {
  const raw = (cmd.parent as unknown as { rawArgs?: string[] } | null)?.rawArgs ?? [];
  if (raw.includes('--')) return false;
  return /^[a-z0-9][a-z0-9_-]{0,62}\.[a-z0-9][a-z0-9_.-]{0,126}$/.test(args[0] ?? '') && args.slice(1).every((a) => /^[A-Za-z_][A-Za-z0-9_]{0,63}=/.test(a));
}

function runAction(args: string[], o: RunOptions): Promise<void> {
  if ((o.env?.length ?? 0) > 0 || o.cwd) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', '--env and --cwd are for commands; an action takes its parameters as name=value');
  return runActionOn(args[0]!, args.slice(1), o);
}


/** Decides which CA to trust for a hub: --ca file, --ca-fingerprint pin, or ssh-style confirmation. */
async function trustHubCa(hub: string, o: { ca?: string; caFingerprint?: string }): Promise<string> {
  if (o.ca) {
    let pem: string;
    try { pem = readFileSync(o.ca, 'utf8'); } catch (e) { throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `cannot read --ca ${o.ca}: ${(e as Error).message}`); }
    if (splitPemBundle(pem).length === 0) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${o.ca} holds no PEM certificate`);
    return pem;
  }
  const { host, port } = parseHostPort(hub, 7444);
  const served = await fetchServedChain(host, port);
  if (o.caFingerprint) {
    const bundle = pinnedBundle(served, o.caFingerprint);
    if (!bundle) throw new TrellisError('TRELLIS_E_CA_PIN_MISMATCH', `the hub at ${hub} does not present a CA with fingerprint ${o.caFingerprint}; nothing was sent`);
    return bundle.join('');
  }
  const ca = served.length > 1 ? served[1]! : served[0]!;
  const fp = fingerprintSha256(ca);
  if (!isInteractive()) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `cannot confirm the hub CA without a terminal: pass --ca FILE or --ca-fingerprint ${fp}`);
  }
  process.stderr.write(`The hub at ${hub} presents a CA with SHA-256 fingerprint\n  ${fp}\n`);
  const a = (await ask('Trust it? Compare it with `trellis hub init` output or ca.pem on the hub. [y/N] ')).trim().toLowerCase();
  if (a !== 'y' && a !== 'yes') throw new TrellisError('TRELLIS_E_CA_PIN_MISMATCH', 'CA not trusted; nothing was sent');
  return pinnedBundle(served, fp)!.join('');
}

export function addAdminCommands(program: Command): void {
  program.command('login')
    .description('log in to a hub and store the context (hub, pinned CA, time-limited token), 0600; again: only the password')
    .option('--hub <host:port>', 'hub admin address, e.g. hub.example.com:7444 (default: the context\'s)')
    .option('--user <name>', 'user name (default: the context\'s)')
    .option('--ca <file>', 'trust this CA bundle (e.g. ca.pem from the hub data directory)')
    .option('--ca-fingerprint <sha256>', 'trust the hub CA with this SHA-256 fingerprint (for scripts)')
    .option('--context <name>', 'the context to log in to and switch to (default: the current one, `default` at first)')
    .addHelpText('after', '\nThe password comes from TRELLIS_PASSWORD or a prompt. Contexts live in $TRELLIS_HOME (default ~/.config/trellis):\n' +
      'logging in again to a context needs only the password (its hub and CA are remembered) and revokes the token it replaces.\n' +
      'Examples:\n  trellis login --context prod --hub hub.example.com:7444 --user alice --ca ca.pem\n  trellis login            # again, same context: password only\n  trellis context list')
    .action(async (o) => {
      const name = o.context ? checkContextName(o.context) : currentContext();
      const prev = readContext(name);
      const hubArg = o.hub ?? prev?.hub;
      if (!hubArg) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `context ${name} has no hub yet: pass --hub HOST:7444 (and --user, --ca)`);
      const user = o.user ?? (prev?.username || undefined);
      if (!user) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'pass --user NAME');
      const { host, port } = parseHostPort(hubArg, 7444);
      const hub = formatHostPort(host, port);
      // The context's CA is kept for the same hub unless --ca or --ca-fingerprint says otherwise.
      const caPem = !o.ca && !o.caFingerprint && prev?.hub === hub ? prev.caPem : await trustHubCa(hub, o);
      const password = process.env.TRELLIS_PASSWORD || (await askHidden(`Password for ${user}: `));
      const c = adminClients(hub, caPem);
      try {
        const r = await call<T.LoginRequest, T.LoginResponse__Output>(c, c.auth, c.auth.Login, { username: user, password })
          .catch(async (e) => { throw await explainTlsFailure(e, hub, caPem, o.ca ? `the CA file ${o.ca}` : o.caFingerprint ? 'the pinned CA' : prev?.hub === hub ? 'your profile' : 'the pinned CA', user); });
        // The profile's tenant: --tenant, else the first tenant the hub says the user belongs to.
        const asked = process.env.TRELLIS_TENANT;
        const who = adminClients(hub, caPem, r.token, asked);
        let tenant = asked ?? '';
        try { tenant = (await call<T.WhoAmIRequest, T.WhoAmIResponse__Output>(who, who.auth, who.auth.WhoAmI, {})).tenant || tenant; } finally { who.close(); }
        if (asked && tenant !== asked) throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `${r.username} is not a member of tenant ${asked}`);
        const path = await writeProfile({ hub, caPem, username: r.username, token: r.token, expiresAtMs: r.expiresAtMs, tenant, context: name });
        if (o.context && !process.env.TRELLIS_CONTEXT) await useContext(name);
        // The token this login replaces is revoked, so it cannot outlive the context it lived in.
        if (prev?.token && prev.token !== r.token) await revokeToken(prev);
        print(`logged in to ${hub} as ${r.username} (tenant ${tenant || '-'}, context ${name}); token valid until ${when(r.expiresAtMs)} (profile ${path})`);
      } finally { c.close(); }
    });

  program.command('logout').description('revoke the login token of the current context and forget it').action(async () => {
    const p = readProfile();
    if (p.fromEnv) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'TRELLIS_HUB is set: there is no login to end (the API key stays valid; revoke it with `trellis apikeys revoke`)');
    const c = fromProfile(p);
    try { await call(c, c.auth, c.auth.Logout, {}); } catch (e) { if (fromGrpcError(e).code !== 'TRELLIS_E_UNAUTHENTICATED') throw e; } finally { c.close(); }
    await writeProfile({ ...p, token: '', expiresAtMs: 0 });
    print('logged out');
  });

  program.command('whoami').description('show the logged-in user').action(() => withClients(async (c) => {
    const r = await call<T.WhoAmIRequest, T.WhoAmIResponse__Output>(c, c.auth, c.auth.WhoAmI, {});
    print(`${r.username} (roles: ${r.roles.join(', ') || '-'}; tenant ${r.tenant}; token expires ${when(r.sessionExpiresAtMs)})`);
  }));

  const tokens = program.command('tokens').description('join tokens for enrolling agents');
  tokens.command('create')
    .description('create a join token; prints it once with the enroll command to paste')
    .option('--private', 'visible only to you and administrators')
    .option('--uses <n>', `how many agents may use it (1-${100_000})`, usesOption, 1)
    .option('--ttl <duration>', 'lifetime, e.g. 15m, 2h, 7d (at most the hub\'s joinTokenMaxTtl, 7d by default)', '15m')
    .option('--label <k=v...>', 'labels given to every agent enrolled with it (they always win over host-set ones)', collect, [])
    .option('--allow-label <key...>', 'a label key the enrolling host may set itself with `agent enroll --label key=v` (repeatable); any other key is refused', collect, [])
    .option('--description <text>', 'note shown in `tokens list`')
    .option('--install-command', 'print a root shell one-liner that pins the hub CA, downloads the agent from the hub\'s web port and installs it as a service (token in an env var)')
    .option('--cloud-init', 'print cloud-init user-data that runs the same one-liner at first boot')
    .option('--web <url>', 'hub web address for --install-command/--cloud-init (default: https://HUB-HOST:WEB-PORT from the hub)')
    .option('--install-arg <arg>', 'one argument for `trellis agent install` in the one-liner (repeatable), e.g. --install-arg=--read-write --install-arg=/etc/nginx', collect, [])
    .addHelpText('after', '\nLabels select edge rules, sensors (and their sealed secrets) and run targets, so they come from the token and from\n' +
      'holders of agents:label (`trellis agents label`), never from the host, except keys named with --allow-label.\n\n' +
      'The --install-command one-liner fetches /agent/ca.pem without trusting it, compares its SHA-256 with the token\'s CA\n' +
      'fingerprint, and only then fetches install.sh with `curl --cacert`; install.sh checks the bundle\'s SHA-256, unpacks\n' +
      'it to /opt/trellis, links /usr/local/bin/trellis and runs `trellis agent install`. The host needs curl and Node.js >= 20.')
    .action((o) => withClients(async (c) => {
      if (o.installCommand && o.cloudInit) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', '--install-command and --cloud-init exclude each other');
      const r = await call<T.CreateJoinTokenRequest, T.CreateJoinTokenResponse__Output>(c, c.tokens, c.tokens.CreateJoinToken, {
        tenant: '', private: !!o.private, uses: o.uses, ttlMs: parseDuration(o.ttl, '--ttl'), labels: parseKeyValues(o.label, 'label'), description: o.description ?? '',
        allowLabelKeys: o.allowLabel,
      });
      const hub = readProfile().hub;
      if (o.installCommand || o.cloudInit) {
        const { installCommand, cloudInit } = await import('../../common/install-command.js');
        let web = o.web as string | undefined;
        if (!web) {
          const v = await call<T.GetVersionRequest, T.VersionInfo__Output>(c, c.version, c.version.GetVersion, {}, 10_000);
          const { host } = parseHostPort(hub, 7444);
          web = `https://${formatHostPort(host, v.webPort || 7445)}`;
        }
        const spec = { token: r.token, hub, web, args: o.installArg as string[] };
        print(o.cloudInit ? cloudInit(spec).trimEnd() : installCommand(spec));
        process.stderr.write(`\ntoken ${r.info!.id}: tenant ${r.info!.tenant}, ${r.info!.uses} use(s), expires ${when(r.info!.expiresAtMs)}\n` +
          (o.cloudInit ? 'use it as the user-data of new servers (they need curl and Node.js >= 20)\n' : 'run it as root on the new server (it needs curl and Node.js >= 20)\n'));
        return;
      }
      print(r.token);
      process.stderr.write(`\ntoken ${r.info!.id}: tenant ${r.info!.tenant}, ${r.info!.uses} use(s), expires ${when(r.info!.expiresAtMs)}\n` +
        `enroll an agent with:\n  trellis agent enroll --hub ${hub} --token ${r.token} --data /var/lib/trellis-agent\n`);
    }));
  addOutputOptions(tokens.command('list').description('list join tokens').option('--all', 'include expired, used-up and revoked tokens'), 'creation time, privacy, description')
    .action((o) => withClients(async (c) => {
      const r = await call<T.ListJoinTokensRequest, T.ListJoinTokensResponse__Output>(c, c.tokens, c.tokens.ListJoinTokens, { includeInactive: !!o.all });
      const now = Date.now();
      await output(o, r.tokens, [
        { header: 'ID', cell: (t) => t.id }, { header: 'TENANT', cell: (t) => t.tenant }, { header: 'USED', cell: (t) => `${t.used}/${t.uses}` },
        { header: 'STATE', cell: (t) => (t.revoked ? 'revoked' : t.expiresAtMs <= now ? 'expired' : t.used >= t.uses ? 'used up' : 'active') },
        { header: 'EXPIRES', cell: (t) => ago(t.expiresAtMs, now) }, { header: 'LABELS', cell: (t) => labels(t.labels) },
        { header: 'HOST MAY SET', cell: (t) => t.allowLabelKeys.join(',') || '-' }, { header: 'BY', cell: (t) => t.createdBy },
        { header: 'CREATED', cell: (t) => when(t.createdAtMs), wide: true }, { header: 'PRIVATE', cell: (t) => (t.private ? 'yes' : '-'), wide: true },
        { header: 'DESCRIPTION', cell: (t) => t.description || '-', wide: true },
      ]);
    }));
  tokens.command('revoke <id>').description('revoke a join token').action((id) => withClients(async (c) => {
    await call(c, c.tokens, c.tokens.RevokeJoinToken, { id });
    print(`join token ${id} revoked`);
  }));

  const agents = program.command('agents').description('enrolled agents');
  agents.addHelpText('after', '\nAn agent is named by its id, a unique id prefix (4+ characters) or its exact hostname (`agents show web-1`);\n' +
    'a name that matches several agents is refused with the list of candidates.');
  addOutputOptions(agents.command('list').description('list agents with status, last seen and certificate expiry')
    .option('--selector <expr>', "only agents matching this selector (k=v, k!=v, 'k in (a,b)', 'k notin (a,b)', k, !k; commas and repeats AND them)", collect, [])
    .option('--status <status>', 'only online, offline or revoked agents')
    .option('--facts <expr>', 'only agents whose facts match (the selector syntax over hostname, os, arch, osRelease, cpus, memoryBytes, agentVersion), e.g. os=linux,arch=arm64', collect, [])
    .option('--all', `also revoked agents revoked over ${REVOKED_LISTED_DAYS} days ago (hidden by default; \`agents prune --revoked\` deletes them)`), 'address, enrolled, full serial, OS, agent version')
    .addHelpText('after', `\nRevoked agents are listed for ${REVOKED_LISTED_DAYS} days after their revocation; --status revoked or --all lists them all.\n` +
      "Example: trellis agents list --selector 'role=web,zone in (eu1,eu2)' --status offline --facts arch=arm64")
    .action((o) => withClients(async (c) => {
      if (o.status && !['online', 'offline', 'revoked'].includes(o.status)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `bad --status "${o.status}": online, offline or revoked`);
      const r = await call<T.ListAgentsRequest, T.ListAgentsResponse__Output>(c, c.agents, c.agents.ListAgents, { selectorExpr: selectorText(o.selector), factsExpr: selectorText(o.facts), status: o.status ?? '', includeOldRevoked: !!o.all });
      await output(o, r.agents, [
        { header: 'ID', cell: (a) => a.id }, { header: 'TENANT', cell: (a) => a.tenant }, { header: 'HOST', cell: (a) => a.hostname || '-' },
        { header: 'STATUS', cell: (a) => a.status }, { header: 'LAST SEEN', cell: (a) => ago(a.lastSeenMs) }, { header: 'LABELS', cell: (a) => labels(a.labels) },
        { header: 'ADDRESS', cell: (a) => a.remoteAddress || '-', wide: true }, { header: 'ENROLLED', cell: (a) => when(a.enrolledAtMs), wide: true },
        { header: 'CERT SERIAL', cell: (a, wide) => (wide ? a.certSerial : a.certSerial.slice(0, 16)) }, { header: 'CERT EXPIRES', cell: (a) => when(a.certExpiresAtMs) },
        { header: 'OS', cell: (a) => (a.facts ? `${a.facts.os} ${a.facts.osRelease} ${a.facts.arch}` : '-'), wide: true },
        { header: 'VERSION', cell: (a) => a.facts?.agentVersion || '-', wide: true },
      ]);
    }));
  addOutputOptions(agents.command('show <id>').description('show one agent: facts, labels, certificate, and what the hub refused from it (event types it may not publish, forged edge-run reports)')).action((id, o) => withClients(async (c) => {
    const a = await call<T.GetAgentRequest, T.AgentInfo__Output>(c, c.agents, c.agents.GetAgent, { id });
    const f = a.facts;
    await outputOne(o, a, () => [
      `id:            ${a.id}`, `tenant:        ${a.tenant}`, `identity:      ${a.spiffeId}`, `status:        ${a.status}${a.remoteAddress ? ` (${a.remoteAddress})` : ''}`,
      `last seen:     ${ago(a.lastSeenMs)}`, `enrolled:      ${when(a.enrolledAtMs)}`, `labels:        ${labels(a.labels)}`,
      `cert serial:   ${a.certSerial}`, `cert expires:  ${when(a.certExpiresAtMs)}`,
      ...(a.revoked ? [`revoked:       ${when(a.revokedAtMs)}`] : []),
      // Since the hub started: events of types this agent may not publish, forged edge-run reports.
      ...(Number(a.eventsRefused) || Number(a.edgeReportsRefused) ? [`refused:       ${Number(a.eventsRefused)} event(s), ${Number(a.edgeReportsRefused)} edge report(s) (see the hub log)`] : []),
      ...(f ? [`host:          ${f.hostname} (${f.os} ${f.osRelease}, ${f.arch}, ${f.cpus} cpus, ${Math.round(f.memoryBytes / 2 ** 20)} MiB)`, `agent version: ${f.agentVersion}`] : []),
    ].join('\n'));
  }));
  agents.command('revoke <id>').description('revoke the agent\'s certificates and cut its live connection').option('--reason <text>', 'reason, kept with the revocation')
    .action((id, o) => withClients(async (c) => {
      const r = await call<T.RevokeAgentRequest, T.RevokeAgentResponse__Output>(c, c.agents, c.agents.RevokeAgent, { id, reason: o.reason ?? '' });
      print(`agent ${id} revoked (serials ${r.revokedSerials.join(', ')})${r.disconnected ? '; its live stream was closed' : ''}`);
    }));

  agents.command('prune')
    .description('delete agent records: revoked agents (--revoked) and/or agents not seen for a while (--offline-for; they are revoked first, so they cannot come back)')
    .option('--revoked', 'delete revoked agents (their revoked certificates stay in the CRL until they expire)')
    .option('--offline-for <duration>', 'revoke and delete agents offline for at least this long, e.g. 30d (at least 1h)')
    .option('--dry-run', 'list what would be pruned, change nothing')
    .option('--json', 'JSON output')
    .addHelpText('after', '\nNeeds agents:revoke; audited (who, which agents). Without --tenant \'*\' it prunes in your tenant only.\n' +
      'Example: trellis agents prune --revoked --offline-for 30d --dry-run')
    .action((o) => withClients(async (c) => {
      const offlineForMs = o.offlineFor ? parseDuration(o.offlineFor, '--offline-for') : 0;
      if (!o.revoked && !offlineForMs) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'say what to prune: --revoked and/or --offline-for DURATION');
      const r = await call<T.PruneAgentsRequest, T.PruneAgentsResponse__Output>(c, c.agents, c.agents.PruneAgents, { revoked: !!o.revoked, offlineForMs, dryRun: !!o.dryRun });
      if (o.json) return printDocument('json', r.pruned);
      for (const a of r.pruned) print(`${o.dryRun ? 'would prune' : 'pruned'} ${a.id}  ${a.hostname || '-'}  ${a.status}  last seen ${ago(Number(a.lastSeenMs))}`);
      print(`${r.pruned.length} agent(s) ${o.dryRun ? 'would be pruned (dry run)' : 'pruned'}`);
    }));

  agents.command('label <id> [labels...]')
    .description('set (k=v) and remove (--remove k) labels of an agent; its edge rules and sensors follow at once')
    .option('--remove <key...>', 'remove this label (repeatable)', collect, [])
    .addHelpText('after', '\nNeeds the permission agents:label. Labels decide which edge rules, sensors and sealed secrets an agent gets.\n' +
      'Example: trellis agents label 01j… tier=db zone=eu --remove legacy')
    .action((id: string, kv: string[], o) => withClients(async (c) => {
      const a = await call<T.SetAgentLabelsRequest, T.AgentInfo__Output>(c, c.agents, c.agents.SetAgentLabels, { id, set: parseKeyValues(kv, 'label'), remove: o.remove });
      print(`agent ${a.id}: labels ${labels(a.labels)}`);
    }));

  const certs = program.command('certs').description('hub CA and certificates');
  addOutputOptions(certs.command('show').description('show the CA, the hub certificate and issuing settings')).action((o) => withClients(async (c) => {
    const r = await call<T.GetCertificatesRequest, T.GetCertificatesResponse__Output>(c, c.certs, c.certs.GetCertificates, {});
    if (formatOf(o) === 'json' || formatOf(o) === 'yaml') return outputOne(o, r, () => '');
    const show = (title: string, i: T.CertificateInfo__Output) => [
      `${title}:`, `  subject:     ${i.subject.replace(/\n/g, ', ')}`, `  issuer:      ${i.issuer.replace(/\n/g, ', ')}`, `  serial:      ${i.serial}`,
      `  valid:       ${when(i.notBeforeMs)} .. ${when(i.notAfterMs)}`, `  key:         ${i.keyType}`, `  sha256:      ${i.fingerprintSha256}`,
      ...(i.dnsNames.length + i.ipAddresses.length ? [`  names:       ${[...i.dnsNames, ...i.ipAddresses].join(', ')}`] : []),
    ];
    print([...show('CA', r.ca!), ...show('hub', r.hub!), `can issue:     ${r.canIssue}`, `trust domain:  ${r.trustDomain}`,
      `hub names:     ${r.hubNames.join(', ')}`, `agent cert ttl: ${Math.round(r.agentCertTtlMs / 3_600_000)}h`].join('\n'));

    // Any hub or CA certificate within 30 days of its end.
    for (const [what, i] of [['hub certificate', r.hub!], ...r.caChain.map((c, n) => [n === 0 ? 'CA certificate' : `CA chain certificate ${n + 1}`, c] as const)] as const) {
      const days = Math.ceil((Number(i.notAfterMs) - Date.now()) / 86_400_000);
      if (days <= 30) print(`WARNING: the ${what} (serial ${i.serial}) ${days <= 0 ? 'has expired' : `expires in ${days} day(s)`}, on ${when(i.notAfterMs)}: ${what === 'hub certificate' ? 'run `trellis certs issue-hub` or `certs replace`' : 'plan a CA rotation'}`);
    }
  }));
  certs.command('crl').description('print the certificate revocation list (PEM, signed by the hub CA)').option('--out <file>', 'write it to a file')
    .action((o) => withClients(async (c) => {
      const r = await call<T.GetCrlRequest, T.GetCrlResponse__Output>(c, c.certs, c.certs.GetCrl, {});
      if (o.out) { writeFileSync(o.out, r.crl); process.stderr.write(`CRL with ${r.revoked} revoked certificate(s) written to ${o.out}\n`); } else print(r.crl);
    }));
  certs.command('replace').description('serve a new hub certificate without dropping connected agents')
    .requiredOption('--hub-cert <file>', 'new hub certificate issued by the hub CA, naming every hub name: the leaf alone (the hub adds its CA chain) or the leaf followed by the hub CA chain')
    .requiredOption('--hub-key <file>', 'its private key')
    .action((o) => withClients(async (c) => {
      const read = (f: string) => { try { return readFileSync(f, 'utf8'); } catch (e) { throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `cannot read ${f}: ${(e as Error).message}`); } };
      const r = await call<T.ReplaceHubCertificateRequest, T.ReplaceHubCertificateResponse__Output>(c, c.certs, c.certs.ReplaceHubCertificate, { certificate: read(o.hubCert), privateKey: read(o.hubKey) });
      print(`hub certificate replaced: serial ${r.hub!.serial}, valid until ${when(r.hub!.notAfterMs)}; new connections use it now`);
    }));
  certs.command('issue-hub').description('issue a new hub certificate from the hub CA (needs its key; key type follows the CA) and serve it without dropping connected agents; the hub also renews it by itself at 2/3 of its life')
    .option('--name <names...>', 'subjectAltName: host names and IP addresses (comma-separated or repeated); replaces the default, the configured hub names, which must be among them', collect, [])
    .option('--ttl <duration>', 'lifetime (e.g. 90d, 1y; at most 825d, never past the CA)', '1y')
    .action((o) => withClients(async (c) => {
      const names = (o.name as string[]).flatMap((n) => n.split(',')).map((n) => n.trim()).filter(Boolean);
      const ttlMs = parseDuration(o.ttl, '--ttl');
      const r = await call<T.IssueHubCertificateRequest, T.IssueHubCertificateResponse__Output>(c, c.certs, c.certs.IssueHubCertificate, { names, ttlMs });
      const h = r.hub!;
      print(`hub certificate issued: serial ${h.serial}, ${h.keyType}, names ${[...h.dnsNames, ...h.ipAddresses].join(', ')}, valid until ${when(h.notAfterMs)}; new connections use it now`);
    }));

  addRunActionOptions(program.command('run')
    .description('run a pack action (`trellis run PACK.ACTION [name=value ...]`) or a command (argv, no shell, after --) on agents; prints the output live, then (with --selector) a line per agent and a summary')
    .option('--agent <id|host>', 'target agent: id, unique id prefix or exact hostname')
    .option('--selector <expr>', "target the online agents matching this selector (k=v, k!=v, 'k in (a,b)', 'k notin (a,b)', k, !k; commas and repeats AND them)", collect, [])
    .option('--timeout <duration>', 'kill the process group after this long', '30s')
    .option('--env <K=V...>', 'environment variable for the command; a value may hold {{ kv.NAME }} (needs kv:read) or {{ secret.NAME }} (needs secrets:use or kv:decrypt: the command could print it), sealed to the agent, masked in output, audited by key name', collect, [])
    .option('--cwd <dir>', 'working directory on the agent')
    .argument('<args...>', 'PACK.ACTION [name=value ...] (values: JSON or text; may hold {{ kv.NAME }} with kv:read, {{ secret.NAME }} with secrets:use or kv:decrypt), or a command and its arguments after --'))
    .addHelpText('after', RUN_HELP)
    .action((argv: string[], o, cmd: Command) => (isActionCall(argv, cmd) ? runAction(argv, o) : runCommand(argv, o, parseDuration)));
}
