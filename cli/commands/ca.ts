/** `trellis ca rotate start|status|commit|rollback`: CA rotation in phases (hub/pki/rotation.ts). */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { TrellisError } from '../../common/errors.js';
import { parseDuration } from '../../common/duration.js';
import { call, saveTrustBundle, withClients } from '../client.js';
import { ago, clean, print, when, addOutputOptions, outputOne } from '../format.js';
import type { Profile } from '../profile.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

function read(f: string, what: string): string {
  try { return readFileSync(f, 'utf8'); } catch (e) { throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `cannot read ${what} ${f}: ${(e as Error).message}`); }
}

const agentLine = (a: T.RotationAgent__Output) => `  ${a.id}  ${clean(a.hostname) || '-'}  ${a.online ? 'online' : `offline, last seen ${ago(Number(a.lastSeenMs))}`}  (tenant ${clean(a.tenant)})`;

function render(s: T.CaRotationStatus__Output): string {
  const fp = (i: T.CertificateInfo__Output | null) => (i ? `sha256 ${i.fingerprintSha256} (${clean(i.subject)}, ${i.keyType}, valid until ${when(Number(i.notAfterMs))})` : '-');
  const lines = [
    `phase:           ${s.phase}${s.phase === 'started' ? ` (started ${when(Number(s.startedAtMs))} by ${clean(s.startedBy)}, renewals spread over ${Math.round(Number(s.windowMs) / 1000)}s)` : ''}`,
    `CA:              ${fp(s.currentCa)}`,
    ...(s.nextCa ? [`new CA:          ${fp(s.nextCa)}`] : []),
    ...(s.retiredCa ? [`rolled-back CA:  ${fp(s.retiredCa)}, still trusted for ${s.agentsOnRetiredCa} agent(s) until they renew`] : []),
    `hub certificate: issued by ${clean(s.hubCertIssuer)} (sha256 ${s.hubCertIssuerFingerprint})`,
    `agents:          ${s.agentsActive} active (connected, or seen within ${Math.round(Number(s.activeWithinMs) / 86_400_000)} days): ${s.agentsOnNewCa} on the ${s.phase === 'started' ? 'new' : 'issuing'} CA, ${s.agentsOnOldCa} on ${s.phase === 'started' ? 'the old CA' : 'another CA'}`,
    ...(s.lagging.length ? ['still on the old CA:', ...s.lagging.map(agentLine), ...(s.agentsOnOldCa > s.lagging.length ? [`  ... and ${s.agentsOnOldCa - s.lagging.length} more`] : [])] : []),
    ...(s.lastEvent ? [`last step:       ${clean(s.lastEvent)}`] : []),
  ];
  return lines.join('\n');
}

/** The operator's own profile follows the bundle at once (it is read over a connection the profile verified). */
async function follow(p: Profile, s: T.CaRotationStatus__Output): Promise<void> {
  if (await saveTrustBundle(p, s.trustBundle)) process.stderr.write('trellis: your profile now trusts the hub\'s current CA bundle\n');
}

export function addCaCommands(program: Command): void {
  const ca = program.command('ca').description('the hub CA: rotation in phases (start, agents renew, commit or rollback)');
  const rotate = ca.command('rotate').description('rotate the hub CA without dropping agents: start → (agents renew) → commit, or rollback')
    .addHelpText('after', `
Phases:
  start     a new CA (generated, or --ca-cert/--ca-key); agents trust old+new at once and renew from the new CA,
            each at a random moment within --window; new enrollments get new-CA certificates. The hub keeps
            serving its old-CA certificate until commit, so agents that were offline still connect.
  status    phase, CAs, hub certificate issuer, active agents on the old and the new CA.
  commit    the new CA becomes the CA (hub certificate re-issued from it, old CA dropped from every bundle);
            refused while an active agent still holds an old-CA certificate unless --force.
  rollback  back to the old CA alone; agents that renewed from the new CA renew back and keep working.
Administrators only (status: certs:read). Admin profiles follow the bundle on their next command.`);
  rotate.command('start').description('start a CA rotation: a new CA, trusted next to the old one, issuing from now on')
    .option('--ca-key-type <type>', 'key type of a generated CA: ec-p256, ec-p384, rsa-3072 or rsa-4096 (default: the current CA\'s)')
    .option('--ca-cert <file>', 'use this CA instead (PEM: issuing CA first, then its parents); needs --ca-key')
    .option('--ca-key <file>', 'the key of --ca-cert (stored 0600 on the hub like the current CA key)')
    .option('--window <duration>', 'spread agent renewals over this long (1s..7d)', '10m')
    .option('--json', 'JSON output')
    .action((o) => withClients(async (c, p) => {
      if (!!o.caCert !== !!o.caKey) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', '--ca-cert and --ca-key go together');
      const s = await call<T.RotateStartRequest, T.CaRotationStatus__Output>(c, c.ca, c.ca.RotateStart, {
        keyType: o.caKeyType ?? '', caCertificate: o.caCert ? read(o.caCert, '--ca-cert') : '', caPrivateKey: o.caKey ? read(o.caKey, '--ca-key') : '',
        windowMs: parseDuration(o.window, '--window'),
      }, 120_000);
      await follow(p, s);
      if (o.json) return print(JSON.stringify(s, null, 2));
      print(`CA rotation started: new CA sha256 ${s.nextCa?.fingerprintSha256}; ${s.agentsActive} active agent(s) renew within ${Math.round(Number(s.windowMs) / 1000)}s.\n` +
        'Watch `trellis ca rotate status`, then `trellis ca rotate commit` (or `rollback`).');
    }));
  addOutputOptions(rotate.command('status').description('show the rotation phase, the CAs, the hub certificate issuer and agents on the old vs the new CA'))
    .action((o) => withClients(async (c) => {
      const s = await call<T.GetRotationRequest, T.CaRotationStatus__Output>(c, c.ca, c.ca.GetRotation, {});
      await outputOne(o, s, () => render(s));
    }));
  rotate.command('commit').description('finish the rotation: the new CA becomes the CA and the old one leaves every trust bundle')
    .option('--force', 'commit although active agents still hold old-CA certificates (they are named, and must re-enroll)')
    .action((o) => withClients(async (c, p) => {
      const s = await call<T.RotateCommitRequest, T.CaRotationStatus__Output>(c, c.ca, c.ca.RotateCommit, { force: !!o.force }, 120_000);
      await follow(p, s);
      print(`CA rotation committed: the hub CA is now sha256 ${s.currentCa?.fingerprintSha256}; the hub certificate and new join tokens use it.`);
      if (s.leftBehindCount > 0) {
        print(`WARNING: ${s.leftBehindCount} agent(s) left on the old CA must re-enroll (trellis agent enroll --force with a new token):`);
        print([...s.leftBehind.map(agentLine), ...(s.leftBehindCount > s.leftBehind.length ? [`  ... and ${s.leftBehindCount - s.leftBehind.length} more`] : [])].join('\n'));
      }
    }));
  rotate.command('rollback').description('abandon the rotation: the old CA alone issues again; agents already on the new CA renew back')
    .action(() => withClients(async (c, p) => {
      const s = await call<T.RotateRollbackRequest, T.CaRotationStatus__Output>(c, c.ca, c.ca.RotateRollback, {}, 120_000);
      await follow(p, s);
      print(`CA rotation rolled back: the CA is sha256 ${s.currentCa?.fingerprintSha256}${s.retiredCa ? `; ${s.agentsOnRetiredCa} agent(s) on the abandoned CA renew back (it stays trusted for them until then)` : ''}.`);
    }));
}
