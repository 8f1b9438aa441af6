/**
 * `trellis hub init`: sets up a data directory in one of three PKI modes.
 *  1. nothing supplied: a new CA (10 years) and a hub certificate naming every --name;
 *  2. --ca-cert + --ca-key (possibly an intermediate; its chain is kept): the hub certificate is
 *     issued from it;
 *  3. --ca-cert alone: --hub-cert + --hub-key are required and checked; the hub cannot issue.
 */
import { existsSync, readFileSync } from 'node:fs';
import { chmod, rm } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join, resolve } from 'node:path';
import {
  certInfo, createCA, fingerprintSha256, generateKey, issueCertificate, keyMatchesCert, loadPrivateKey, splitPemBundle, verifyIssuedBy, type KeyType,
} from '../certs/index.js';
import { TrellisError } from '../common/errors.js';
import { atomicWriteFile, ensureDir } from '../common/fsutil.js';
import { lockDataDir } from './lock/index.js';
import { hubPaths } from './paths.js';
import { checkHubIdentity } from './pki/index.js';
import { validateConfig, type HubConfigInput } from './config.js';
import { openStore } from './store/index.js';
import { storeOptions } from './store/from-config.js';
import { prepareEmptyDatabase } from './store/postgres/index.js';
import { Auth, checkUsername } from './auth/index.js';
import { Iam } from './iam/index.js';
import { checkPasswordPolicy, generatePassword } from './auth/passwords.js';
import { initKeyring, parseMasterKey, Keyring } from './secrets/keyring.js';
import { clusterKeysDoc } from './cluster/keys.js';

export interface InitOptions {
  dataDir: string;
  names: string[];
  trustDomain?: string;
  caKeyType?: KeyType;
  caCertFile?: string;
  caKeyFile?: string;
  hubCertFile?: string;
  hubKeyFile?: string;
  admin?: string;
  /** Undefined: a password is generated and returned once. */
  adminPassword?: string;
  force?: boolean;
  config?: Partial<HubConfigInput>;
  /** A file holding the master key (32 bytes raw, or hex / base64 text); else a random one. */
  masterKeyFile?: string;
  /**
   * `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`: keep the state in this (empty) PostgreSQL
   * database instead of DATA/state.json. It is migrated; a password in the URL is moved to
   * DATA/store-password (0600) and hub.json names that file.
   */
  storeUrl?: string;
  /** The database password when not in `storeUrl` (TRELLIS_STORE_PASSWORD). */
  storePassword?: string;
}

export interface InitResult {
  caFingerprint: string;
  mode: 'generated-ca' | 'supplied-ca' | 'supplied-ca-no-key';
  admin: string;
  generatedPassword?: string;
  paths: ReturnType<typeof hubPaths>;
}

const HUB_CERT_DAYS = 825;

function readFile(path: string, what: string): string {
  try { return readFileSync(path, 'utf8'); } catch (e) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `cannot read ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

export function splitNames(names: string[]): { dns: string[]; ips: string[] } {
  const dns: string[] = [], ips: string[] = [];
  for (const n of names) (isIP(n) ? ips : dns).push(n);
  return { dns, ips };
}

/** A hub serving certificate for `names` (the first is its common name) from the CA, served with `chain`. */
export function issueHubCert(o: { caCertPem: string; caKey: ReturnType<typeof loadPrivateKey>; chain: string[]; names: string[] }): { chain: string; keyPem: string } {
  const { dns, ips } = splitNames(o.names);
  const key = generateKey('ec-p256');
  const caNotAfter = certInfo(o.caCertPem).notAfter.getTime();
  const leaf = issueCertificate({
    issuerCertPem: o.caCertPem, issuerKey: o.caKey, subjectPublicKey: key.publicKey, subject: { commonName: o.names[0]!, organization: 'Trellis hub' },
    dnsNames: dns, ipAddresses: ips, usage: 'server', notAfter: new Date(Math.min(Date.now() + HUB_CERT_DAYS * 86_400_000, caNotAfter)),
  });
  return { chain: [leaf, ...o.chain].join(''), keyPem: key.privateKeyPem };
}

export async function initHub(o: InitOptions): Promise<InitResult> {
  const paths = hubPaths(o.dataDir);
  const names = [...new Set(o.names.flatMap((n) => n.split(',')).map((n) => n.trim()).filter(Boolean))];
  if (names.length === 0) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'give at least one --name: every host name and IP address agents use to reach the hub');
  if (existsSync(paths.config) && !o.force) {
    throw new TrellisError('TRELLIS_E_ALREADY_EXISTS', `${o.dataDir} already holds a hub (${paths.config}); pass --force to start over (this discards its CA and every enrolled agent)`);
  }
  if (o.caKeyFile && !o.caCertFile) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', '--ca-key needs --ca-cert');
  if ((o.hubCertFile === undefined) !== (o.hubKeyFile === undefined)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', '--hub-cert and --hub-key go together');
  const admin = o.admin ?? 'admin';
  // Checked before anything is written: with --force a late failure would already have removed the old hub's store and CA key.
  const password = o.adminPassword ?? generatePassword();
  checkUsername(admin);
  const weak = checkPasswordPolicy(password);
  if (weak) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `admin password: ${weak}`);
  const config = validateConfig({ ...(o.config ?? {}), names, ...(o.trustDomain ? { trustDomain: o.trustDomain } : {}) }, 'hub init options');

  let caChain: string[];
  let caKeyPem: string | undefined;
  let hubChainPem: string;
  let hubKeyPem: string;
  let mode: InitResult['mode'];

  const issueHub = (caCert: string, caKey: ReturnType<typeof loadPrivateKey>, chain: string[]) => issueHubCert({ caCertPem: caCert, caKey, chain, names });

  if (!o.caCertFile) {
    if (o.hubCertFile) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', '--hub-cert needs --ca-cert (the CA that issued it)');
    const ca = createCA({ commonName: `Trellis CA ${names[0]}`, keyType: o.caKeyType ?? 'ec-p256' });
    caChain = [ca.certPem];
    caKeyPem = ca.keyPem;
    ({ chain: hubChainPem, keyPem: hubKeyPem } = issueHub(ca.certPem, ca.key, caChain));
    mode = 'generated-ca';
  } else {
    caChain = splitPemBundle(readFile(o.caCertFile, '--ca-cert'));
    if (caChain.length === 0) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${o.caCertFile} holds no PEM certificate`);
    const ca = certInfo(caChain[0]!);
    if (!ca.isCA) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${o.caCertFile}: the first certificate is not a CA (basicConstraints CA:TRUE)`);
    for (let i = 1; i < caChain.length; i++) {
      if (!verifyIssuedBy(caChain[i - 1]!, caChain[i]!)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${o.caCertFile}: certificate ${i + 1} did not issue certificate ${i}; list the issuing CA first, then its parents`);
    }
    if (o.caKeyFile) {
      const key = loadPrivateKey(readFile(o.caKeyFile, '--ca-key'));
      if (!keyMatchesCert(key, caChain[0]!)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${o.caKeyFile} is not the key of the first certificate in ${o.caCertFile}`);
      caKeyPem = key.export({ type: 'pkcs8', format: 'pem' }) as string;
      if (o.hubCertFile) {
        hubChainPem = readFile(o.hubCertFile, '--hub-cert');
        hubKeyPem = readFile(o.hubKeyFile!, '--hub-key');
      } else {
        ({ chain: hubChainPem, keyPem: hubKeyPem } = issueHub(caChain[0]!, key, caChain));
      }
      mode = 'supplied-ca';
    } else {
      if (!o.hubCertFile) {
        throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'with --ca-cert and no --ca-key the hub cannot issue its own certificate: also give --hub-cert and --hub-key signed by that CA');
      }
      hubChainPem = readFile(o.hubCertFile, '--hub-cert');
      hubKeyPem = readFile(o.hubKeyFile!, '--hub-key');
      mode = 'supplied-ca-no-key';
    }
    // Serve the whole chain so clients that trust only the root can verify.
    const served = splitPemBundle(hubChainPem);
    for (const c of caChain) if (!served.includes(c)) served.push(c);
    hubChainPem = served.join('');
  }
  checkHubIdentity({ certChainPem: hubChainPem, keyPem: hubKeyPem }, caChain, names);
  let masterKey: Buffer | undefined;
  if (o.masterKeyFile) {
    try { masterKey = readFileSync(o.masterKeyFile); } catch (e) {
      throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `cannot read --master-key ${o.masterKeyFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    masterKey = parseMasterKey(masterKey, `--master-key ${o.masterKeyFile}`);
  }

  // PostgreSQL (--store, or `store` in the config given): migrated and checked empty before
  // anything is written here. A password in --store goes to DATA/store-password, not hub.json.
  const pgStore = o.storeUrl ? splitStorePassword(o.storeUrl, paths.dir, o.storePassword) : undefined;
  const storeConfig = pgStore
    ? validateConfig({ names, store: { kind: 'postgres', url: pgStore.url, ...(pgStore.password !== undefined ? { passwordFile: pgStore.passwordFile } : {}) } }, '--store').store
    : config.store;
  if (storeConfig.kind === 'postgres') {
    const { passwordFile: _unwritten, ...rest } = storeConfig;
    const opts = storeOptions(pgStore ? rest : storeConfig, paths.store);
    if (opts.kind === 'postgres') await prepareEmptyDatabase({ ...opts, password: pgStore?.password ?? opts.password });
  }

  await ensureDir(o.dataDir, 0o700);
  await chmod(o.dataDir, 0o700); // a directory the operator made beforehand is tightened too
  // Never rewrite the state of a hub that runs on this directory (hub/lock).
  const lock = lockDataDir(o.dataDir, 'hub init');
  try {
    return await writeHub(o, { paths, config, admin, password, caChain, caKeyPem, hubKeyPem, hubChainPem, masterKey, mode, names, pgStore, storeConfig });
  } finally {
    lock.release();
  }
}

interface HubFiles {
  paths: ReturnType<typeof hubPaths>; config: ReturnType<typeof validateConfig>; admin: string; password: string; caChain: string[]; caKeyPem?: string;
  hubKeyPem: string; hubChainPem: string; masterKey?: Buffer; mode: InitResult['mode']; names: string[];
  pgStore?: { url: string; password?: string; passwordFile: string }; storeConfig: ReturnType<typeof validateConfig>['store'];
}

async function writeHub(o: InitOptions, f: HubFiles): Promise<InitResult> {
  const { paths, config, admin, password, caChain, caKeyPem, hubKeyPem, hubChainPem, masterKey, mode, names, pgStore, storeConfig } = f;
  if (o.force) {
    await rm(paths.store, { force: true });
    await rm(paths.caKey, { force: true });
  }
  if (pgStore?.password !== undefined) await atomicWriteFile(pgStore.passwordFile, pgStore.password, { mode: 0o600 });
  const store = await openStore(storeOptions(storeConfig, paths.store));
  try {
    const iam = new Iam(store);
    await iam.ensureDefaultTenant();
    await new Auth(store, iam, { sessionTtlMs: config.sessionTtl }).createUser({ username: admin, password, roles: ['admin'] });
  } finally {
    await store.close();
  }
  await initKeyring(o.dataDir, masterKey, o.force);
  await atomicWriteFile(paths.caCert, caChain.join(''), { mode: 0o644 });
  if (caKeyPem) await atomicWriteFile(paths.caKey, caKeyPem, { mode: 0o600 });
  await atomicWriteFile(paths.hubKey, hubKeyPem, { mode: 0o600 });
  await atomicWriteFile(paths.hubCert, hubChainPem, { mode: 0o644 });
  if (storeConfig.kind === 'postgres') {
    // The first hub of a cluster: what its CA and master key are (hub/cluster/keys.ts), so that
    // `hub init --join` and every later hub start can check theirs against it.
    const keyring = await Keyring.open(o.dataDir);
    const keysStore = await openStore(storeOptions(storeConfig, paths.store));
    try {
      await keysStore.put('meta', clusterKeysDoc({ caFingerprint: fingerprintSha256(caChain[0]!), trusted: [], masterKeys: keyring.checks() }, names[0]!));
    } finally {
      await keysStore.close();
    }
  }
  const fileConfig: Record<string, unknown> = { ...(o.config ?? {}), names, trustDomain: config.trustDomain, ...(pgStore ? { store: { kind: 'postgres', url: pgStore.url, ...(pgStore.password !== undefined ? { passwordFile: pgStore.passwordFile } : {}) } } : {}) };
  await atomicWriteFile(paths.config, JSON.stringify(fileConfig, null, 2) + '\n', { mode: 0o600 });
  return { caFingerprint: fingerprintSha256(caChain[0]!), mode, admin, generatedPassword: o.adminPassword ? undefined : password, paths };
}

/** The URL without its password, and the password (if any) with the file it goes to. */
export function splitStorePassword(url: string, dataDir: string, given?: string): { url: string; password?: string; passwordFile: string } {
  const passwordFile = join(resolve(dataDir), 'store-password');
  let u: URL;
  try { u = new URL(url); } catch {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', '--store is not a URL: give postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE');
  }
  if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `--store must be a postgres:// URL (got ${u.protocol}//)`);
  }
  if (!u.password) return { url, password: given, passwordFile };
  const password = given ?? decodeURIComponent(u.password);
  u.password = '';
  return { url: u.toString(), password, passwordFile };
}
