/**
 * `trellis hub init --join postgres://… --from HUB-DATA-DIR-OR-SNAPSHOT`: a new hub of a cluster
 * (issue 14 §3). Its data directory is made from the cluster's keys, read from the machine they
 * are on — the data directory of a hub of the cluster (its key files) or a snapshot of one
 * (decrypted with its passphrase) — never from the database, which holds no key at all:
 *
 *  - the CA certificate (and its key, when the cluster's hubs issue), the master key versions;
 *  - a new serving certificate for this hub's own names, issued from the carried CA (or
 *    --hub-cert/--hub-key when the CA key is kept elsewhere);
 *  - hub.json: the source's settings except `names` and `store`, with `store` naming the
 *    database; its password goes to DATA/store-password (0600), never into hub.json.
 *
 * Before anything is written the database is checked: migrated to this build's schema, holding a
 * cluster (its `meta/cluster-keys` record, hub/cluster/keys.ts), and that record names the
 * carried CA and master key. The directory is built next to the target and renamed into place,
 * so a failure leaves nothing behind; the target must not exist or be empty. Every file is 0600,
 * the directory 0700.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { chmod, mkdir, rename, rm, rmdir } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { certInfo, fingerprintSha256, keyMatchesCert, loadPrivateKey, splitPemBundle, verifyIssuedBy } from '../certs/index.js';
import { TrellisError } from '../common/errors.js';
import { atomicWriteFile } from '../common/fsutil.js';
import { hubPaths } from './paths.js';
import { checkHubIdentity } from './pki/index.js';
import { validateConfig, type HubConfigInput } from './config.js';
import { issueHubCert, splitStorePassword } from './init.js';
import { KEY_BYTES, masterKeyCheck } from './secrets/keyring.js';
import { readSnapshotFiles } from './snapshots/restore.js';
import { withDatabase } from './store/postgres/index.js';
import { checkSchema } from './store/postgres/migrations.js';
import { dbId } from './store/postgres/store.js';
import { CLUSTER_KEYS_DOC, keysMismatch, type ClusterKeysDoc } from './cluster/keys.js';

export interface JoinOptions {
  /** The new hub's data directory (must not exist, or be empty). */
  dataDir: string;
  /** Every host name and IP address agents and admins use to reach this hub. */
  names: string[];
  /** The cluster's database: postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE. */
  storeUrl: string;
  /** The database password when not in `storeUrl` (TRELLIS_STORE_PASSWORD). */
  storePassword?: string;
  /** A data directory of a hub of the cluster, or a snapshot file of one. */
  from: string;
  /** The snapshot's passphrase (`from` a snapshot). */
  passphrase?: string;
  /** When the cluster's CA key is not carried (kept offline): this hub's certificate and key, from that CA. */
  hubCertFile?: string;
  hubKeyFile?: string;
  /** Settings over the source's (bind, ports). */
  config?: Partial<HubConfigInput>;
}

export interface JoinResult {
  caFingerprint: string;
  /** The carried CA key lets this hub issue agent certificates. */
  canIssue: boolean;
  masterKeyVersions: number[];
  source: 'data directory' | 'snapshot';
  /** The database, without its password. */
  where: string;
  paths: ReturnType<typeof hubPaths>;
}

/** What a new hub of the cluster takes from the source. */
interface Carried {
  caChain: string[];
  caKeyPem?: string;
  masterKeys: Map<number, Buffer>;
  settings: Record<string, unknown>;
}

const KEY_FILE = /^keys\/master-(\d{1,9})\.key$/;
const bad = (msg: string) => new TrellisError('TRELLIS_E_INVALID_ARGUMENT', msg);

export async function joinHub(o: JoinOptions): Promise<JoinResult> {
  const names = [...new Set(o.names.flatMap((n) => n.split(',')).map((n) => n.trim()).filter(Boolean))];
  if (names.length === 0) throw bad('give at least one --name: every host name and IP address agents use to reach this hub');
  const target = resolve(o.dataDir);
  if (existsSync(target)) {
    if (!statSync(target).isDirectory()) throw new TrellisError('TRELLIS_E_ALREADY_EXISTS', `${o.dataDir} exists and is not a directory`);
    if (readdirSync(target).length > 0) {
      throw new TrellisError('TRELLIS_E_ALREADY_EXISTS', `${o.dataDir} is not empty: \`hub init --join\` makes a new hub's data directory; give a new or empty one (nothing was changed)`);
    }
  }
  if ((o.hubCertFile === undefined) !== (o.hubKeyFile === undefined)) throw bad('--hub-cert and --hub-key go together');

  // 1. The keys, from where they are (never the database).
  let source: JoinResult['source'];
  let carried: Carried;
  let st;
  try { st = statSync(o.from); } catch (e) {
    throw new TrellisError('TRELLIS_E_NOT_FOUND', `--from ${o.from}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message} (give a hub data directory or a snapshot file)`);
  }
  if (st.isDirectory()) {
    if (resolve(o.from) === target) throw bad('--from and --data are the same directory');
    source = 'data directory';
    carried = readDataDir(o.from);
  } else {
    if (o.passphrase === undefined) throw bad(`--from ${o.from} is a snapshot: its passphrase is needed (--passphrase-file FILE)`);
    source = 'snapshot';
    const { files } = await readSnapshotFiles({ file: o.from, passphrase: o.passphrase, want: (n) => ['ca.pem', 'ca-key.pem', 'hub.json', 'ca-rotation.json'].includes(n) || KEY_FILE.test(n) });
    carried = fromFiles(files, `the snapshot ${o.from}`);
  }
  const caFingerprint = fingerprintSha256(carried.caChain[0]!);
  const checks = new Map([...carried.masterKeys].map(([v, k]) => [v, masterKeyCheck(k)]));

  // 2. This hub's settings and certificate.
  const pgStore = splitStorePassword(o.storeUrl, target, o.storePassword);
  const { names: _n, store: _s, ...settings } = carried.settings;
  const fileConfig: Record<string, unknown> = {
    ...settings, ...(o.config ?? {}), names,
    store: { kind: 'postgres', url: pgStore.url, ...(pgStore.password !== undefined ? { passwordFile: pgStore.passwordFile } : {}) },
  };
  validateConfig(fileConfig, `hub.json from ${source} ${o.from}`);
  let hub: { chain: string; keyPem: string };
  if (o.hubCertFile) {
    hub = { chain: readText(o.hubCertFile, '--hub-cert'), keyPem: readText(o.hubKeyFile!, '--hub-key') };
    const served = splitPemBundle(hub.chain);
    for (const c of carried.caChain) if (!served.includes(c)) served.push(c);
    hub.chain = served.join('');
  } else if (carried.caKeyPem) {
    hub = issueHubCert({ caCertPem: carried.caChain[0]!, caKey: loadPrivateKey(carried.caKeyPem), chain: carried.caChain, names });
  } else {
    throw bad(`the cluster's CA key is not in ${source} ${o.from} (the hubs do not issue): give this hub's certificate and key from that CA with --hub-cert and --hub-key`);
  }
  checkHubIdentity({ certChainPem: hub.chain, keyPem: hub.keyPem }, carried.caChain, names);

  // 3. The database: migrated, a cluster, and these are its keys. Nothing is written there.
  const where = await withDatabase({ url: pgStore.url, password: pgStore.password }, async (c, where) => {
    await checkSchema(c, where);
    const r = await c.query<{ doc: ClusterKeysDoc }>('SELECT doc FROM trellis_docs WHERE collection = $1 AND id = $2', ['meta', dbId(CLUSTER_KEYS_DOC)]);
    const rec = r.rows[0]?.doc;
    if (!rec) {
      const n = await c.query<{ n: string }>('SELECT count(*) AS n FROM trellis_docs');
      throw new TrellisError('TRELLIS_E_CONFIG', Number(n.rows[0]!.n) === 0
        ? `the database ${where} holds no hub yet: make the first hub with \`trellis hub init --store URL\`, then join others to it`
        : `the database ${where} has no record of its cluster's keys yet (its hubs are of an older release): start one of its hubs once (it records them), then join again`);
    }
    const why = keysMismatch(rec, { caFingerprint, trusted: [caFingerprint], masterKeys: checks });
    if (why) {
      throw new TrellisError('TRELLIS_E_CONFIG', `${source} ${o.from} is not of the cluster on the database ${where}: ${why}; give a data directory or snapshot of one of its hubs (nothing was written)`);
    }
    return where;
  });

  // 4. Written next to the target, then renamed into place.
  const tmp = join(dirname(target), `.${basename(target)}.join-${randomBytes(4).toString('hex')}`);
  const paths = hubPaths(tmp);
  try {
    await mkdir(tmp, { mode: 0o700 });
    await chmod(tmp, 0o700);
    await mkdir(join(tmp, 'keys'), { mode: 0o700 });
    for (const [v, key] of carried.masterKeys) await atomicWriteFile(join(tmp, 'keys', `master-${v}.key`), key, { mode: 0o600 });
    await atomicWriteFile(paths.caCert, carried.caChain.join(''), { mode: 0o600 });
    if (carried.caKeyPem) await atomicWriteFile(paths.caKey, carried.caKeyPem, { mode: 0o600 });
    await atomicWriteFile(paths.hubKey, hub.keyPem, { mode: 0o600 });
    await atomicWriteFile(paths.hubCert, hub.chain, { mode: 0o600 });
    if (pgStore.password !== undefined) await atomicWriteFile(join(tmp, basename(pgStore.passwordFile)), pgStore.password, { mode: 0o600 });
    await atomicWriteFile(paths.config, JSON.stringify(fileConfig, null, 2) + '\n', { mode: 0o600 });
    if (existsSync(target)) await rmdir(target); // empty (checked above); rmdir refuses if it no longer is
    await rename(tmp, target);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
  return { caFingerprint, canIssue: !!carried.caKeyPem, masterKeyVersions: [...carried.masterKeys.keys()].sort((a, b) => a - b), source, where, paths: hubPaths(target) };
}

function readText(path: string, what: string): string {
  try { return readFileSync(path, 'utf8'); } catch (e) {
    throw bad(`cannot read ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** The key files of a hub data directory (a stopped or running hub: they are only read). */
function readDataDir(dir: string): Carried {
  const files = new Map<string, Buffer>();
  for (const name of ['ca.pem', 'ca-key.pem', 'hub.json', 'ca-rotation.json']) {
    const p = join(dir, name);
    if (existsSync(p)) files.set(name, readFileSync(p));
  }
  const keys = join(dir, 'keys');
  if (existsSync(keys)) for (const f of readdirSync(keys)) if (KEY_FILE.test(`keys/${f}`)) files.set(`keys/${f}`, readFileSync(join(keys, f)));
  if (!files.has('ca.pem')) throw bad(`--from ${dir} is not a hub data directory (no ca.pem)`);
  return fromFiles(files, `the data directory ${dir}`);
}

function fromFiles(files: Map<string, Buffer>, what: string): Carried {
  const rotation = files.get('ca-rotation.json');
  if (rotation) {
    let phase: unknown;
    try { phase = (JSON.parse(rotation.toString('utf8')) as { phase?: unknown }).phase; } catch { phase = 'unreadable'; }
    if (phase !== 'idle') throw new TrellisError('TRELLIS_E_ROTATION', `${what}: a CA rotation is under way (${String(phase).slice(0, 20)}); finish it (\`trellis ca rotate commit\`) or roll it back, then join`);
  }
  const ca = files.get('ca.pem');
  if (!ca) throw bad(`${what} holds no CA certificate (ca.pem)`);
  const caChain = splitPemBundle(ca.toString('utf8'));
  if (caChain.length === 0 || !certInfo(caChain[0]!).isCA) throw bad(`${what}: ca.pem holds no CA certificate`);
  for (let i = 1; i < caChain.length; i++) if (!verifyIssuedBy(caChain[i - 1]!, caChain[i]!)) throw bad(`${what}: ca.pem is not a chain`);
  let caKeyPem: string | undefined;
  const caKey = files.get('ca-key.pem');
  if (caKey) {
    const key = loadPrivateKey(caKey.toString('utf8'));
    if (!keyMatchesCert(key, caChain[0]!)) throw bad(`${what}: ca-key.pem is not the key of ca.pem`);
    caKeyPem = key.export({ type: 'pkcs8', format: 'pem' }) as string;
  }
  const masterKeys = new Map<number, Buffer>();
  for (const [name, buf] of files) {
    const m = KEY_FILE.exec(name);
    if (!m) continue;
    if (buf.length !== KEY_BYTES) throw bad(`${what}: ${name} is not a master key (${buf.length} bytes, expected ${KEY_BYTES})`);
    masterKeys.set(Number(m[1]), buf);
  }
  if (masterKeys.size === 0) throw bad(`${what} holds no master key (keys/master-N.key)`);
  let settings: Record<string, unknown> = {};
  const hubJson = files.get('hub.json');
  if (hubJson) {
    try { settings = JSON.parse(hubJson.toString('utf8')) as Record<string, unknown>; } catch { throw bad(`${what}: hub.json is not JSON`); }
    if (!settings || typeof settings !== 'object' || Array.isArray(settings)) throw bad(`${what}: hub.json is not a JSON object`);
  }
  return { caChain, caKeyPem, masterKeys, settings };
}
