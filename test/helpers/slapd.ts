/**
 * A throwaway OpenLDAP server for tests: its own temp dir and slapd.conf (back_mdb, suffix
 * dc=trellis,dc=test), listening on 127.0.0.1 on a free port (and, with `tls`, an ldaps:// port
 * too), loaded with ldapadd:
 *
 *   cn=trellis,ou=services,dc=trellis,dc=test   the service account (password returned)
 *   uid=alice,ou=people  password alice-password-1, member of cn=ops,ou=groups
 *   uid=bob,ou=people    password bob-password-1,   member of cn=devs,ou=groups
 *
 * Only the service account may search; users may only bind. `.ci/run` installs slapd and
 * ldap-utils; `slapdMissing()` says why a test is skipped where they are not installed.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { freePort } from './net.js';

const run = promisify(execFile);

const SLAPD = '/usr/sbin/slapd';
const SLAPPASSWD = '/usr/sbin/slappasswd';
export const SUFFIX = 'dc=trellis,dc=test';
export const ROOT_DN = `cn=root,${SUFFIX}`;
export const SERVICE_DN = `cn=trellis,ou=services,${SUFFIX}`;
export const USERS = { alice: 'alice-password-1', bob: 'bob-password-1' } as const;

export interface Slapd extends AsyncDisposable {
  /** ldap://127.0.0.1:PORT */
  url: string;
  /** ldaps://127.0.0.1:PORT when started with `tls`. */
  tlsUrl?: string;
  bindDn: string;
  bindPassword: string;
  userBase: string;
  groupBase: string;
  dir: string;
  stop(): Promise<void>;
}

/** Why slapd cannot run here, or undefined when it can. */
export function slapdMissing(): string | undefined {
  for (const bin of [SLAPD, SLAPPASSWD, '/usr/bin/ldapadd']) {
    if (!existsSync(bin)) return `${bin} is not installed (apt-get install slapd ldap-utils; .ci/run does it)`;
  }
  return undefined;
}

async function ssha(password: string): Promise<string> {
  return (await run(SLAPPASSWD, ['-h', '{SSHA}', '-s', password])).stdout.trim();
}

function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch { return false; }
}

export async function startSlapd(o: { tls?: { certPem: string; keyPem: string } } = {}): Promise<Slapd> {
  const missing = slapdMissing();
  if (missing) throw new Error(missing);
  const dir = await mkdtemp(join(tmpdir(), 'trellis-slapd-'));
  const rootPassword = randomBytes(12).toString('base64url');
  const bindPassword = randomBytes(12).toString('base64url');
  let pid: number | undefined;
  const stop = async () => {
    const pidText = await readFile(join(dir, 'slapd.pid'), 'utf8').catch(() => undefined);
    pid ??= pidText ? Number(pidText.trim()) : undefined;
    if (pid && alive(pid)) {
      process.kill(pid, 'SIGTERM');
      for (let i = 0; i < 200 && alive(pid); i++) await new Promise((r) => setTimeout(r, 25));
      if (alive(pid)) process.kill(pid, 'SIGKILL');
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await mkdir(join(dir, 'db'));
    const port = await freePort();
    const tlsPort = o.tls ? await freePort() : undefined;
    const tlsConf: string[] = [];
    if (o.tls) {
      await writeFile(join(dir, 'cert.pem'), o.tls.certPem);
      await writeFile(join(dir, 'key.pem'), o.tls.keyPem, { mode: 0o600 });
      tlsConf.push(`TLSCertificateFile ${join(dir, 'cert.pem')}`, `TLSCertificateKeyFile ${join(dir, 'key.pem')}`);
    }
    const conf = [
      ...['core', 'cosine', 'inetorgperson', 'nis'].map((s) => `include /etc/ldap/schema/${s}.schema`),
      `pidfile ${join(dir, 'slapd.pid')}`,
      `argsfile ${join(dir, 'slapd.args')}`,
      'modulepath /usr/lib/ldap',
      'moduleload back_mdb',
      ...tlsConf,
      'database mdb',
      'maxsize 10485760',
      `suffix "${SUFFIX}"`,
      `rootdn "${ROOT_DN}"`,
      `rootpw ${await ssha(rootPassword)}`,
      `directory ${join(dir, 'db')}`,
      // Users can only bind; only the service account reads the tree.
      'access to attrs=userPassword by anonymous auth by * none',
      `access to * by dn.exact="${SERVICE_DN}" read by * none`,
      '',
    ].join('\n');
    await writeFile(join(dir, 'slapd.conf'), conf);

    const ldif = [
      `dn: ${SUFFIX}`, 'objectClass: dcObject', 'objectClass: organization', 'dc: trellis', 'o: Trellis tests', '',
      ...['people', 'groups', 'services'].flatMap((ou) => [`dn: ou=${ou},${SUFFIX}`, 'objectClass: organizationalUnit', `ou: ${ou}`, '']),
      `dn: ${SERVICE_DN}`, 'objectClass: applicationProcess', 'objectClass: simpleSecurityObject', 'cn: trellis', `userPassword: ${await ssha(bindPassword)}`, '',
      ...(await Promise.all(Object.entries(USERS).map(async ([u, pw]) => [
        `dn: uid=${u},ou=people,${SUFFIX}`, 'objectClass: inetOrgPerson', `uid: ${u}`, `cn: ${u}`, `sn: ${u}`, `userPassword: ${await ssha(pw)}`, '',
      ]))).flat(),
      `dn: cn=ops,ou=groups,${SUFFIX}`, 'objectClass: groupOfNames', 'cn: ops', `member: uid=alice,ou=people,${SUFFIX}`, '',
      `dn: cn=devs,ou=groups,${SUFFIX}`, 'objectClass: groupOfNames', 'cn: devs', `member: uid=bob,ou=people,${SUFFIX}`, '',
    ].join('\n');
    await writeFile(join(dir, 'data.ldif'), ldif);
    await writeFile(join(dir, 'root.pw'), rootPassword, { mode: 0o600 }); // ldapadd -y: no trailing newline

    const url = `ldap://127.0.0.1:${port}`;
    const tlsUrl = tlsPort ? `ldaps://127.0.0.1:${tlsPort}` : undefined;
    // slapd forks into the background once it listens; its pid file is how we stop it.
    await run(SLAPD, ['-f', join(dir, 'slapd.conf'), '-h', [`${url}/`, ...(tlsUrl ? [`${tlsUrl}/`] : [])].join(' ')], { timeout: 15_000 });
    pid = Number((await readFile(join(dir, 'slapd.pid'), 'utf8')).trim());
    for (let i = 0; ; i++) {
      try {
        await run('/usr/bin/ldapadd', ['-x', '-H', url, '-D', ROOT_DN, '-y', join(dir, 'root.pw'), '-f', join(dir, 'data.ldif')], { timeout: 10_000 });
        break;
      } catch (e) {
        // Retry only while slapd is not answering yet; anything else is a real failure.
        if (i >= 50 || !/Can't contact LDAP server/.test(String((e as { stderr?: string }).stderr))) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    return {
      url, tlsUrl, bindDn: SERVICE_DN, bindPassword, dir,
      userBase: `ou=people,${SUFFIX}`, groupBase: `ou=groups,${SUFFIX}`,
      stop,
      [Symbol.asyncDispose]: stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}
