/**
 * The keys of a cluster: every hub on one PostgreSQL database must hold the same CA and the same
 * master key (issue 14 §3), which never pass through the database (`trellis hub init --join`
 * copies them from a hub's data directory or a snapshot). What the database holds is how to
 * recognise them: the document `meta/cluster-keys` with the CA certificate's SHA-256 fingerprint
 * and, per master key version, a check value (HMAC-SHA-256 keyed with the key over a fixed label,
 * hub/secrets/keyring.ts `masterKeyCheck`), which tells two keys apart and reveals nothing of them.
 *
 * It is written by `hub init --store` (the first hub) or at the first start of a hub on a database
 * without it, checked by `hub init --join` before anything is written, and at every start of a
 * hub on a shared store: a hub whose CA is not the cluster's, or whose master key version N is
 * not the cluster's version N, refuses to start with TRELLIS_E_CONFIG.
 *
 * Rotations: a hub whose CA rotation committed still trusts the CA it replaced, so the record
 * moves on to its new CA at its next start (the other hubs, which do not trust the new CA, are
 * then refused until they get it); master key versions a hub adds are added to the record.
 */
import { TrellisError } from '../../common/errors.js';
import type { Doc, Store } from '../store/index.js';

export const CLUSTER_KEYS_DOC = 'cluster-keys';

export interface ClusterKeysDoc extends Doc {
  /** SHA-256 (hex) of the cluster's CA certificate (the issuing CA, first in ca.pem). */
  caFingerprint: string;
  /** Master key version → its check value (hex). */
  masterKeys: Record<string, string>;
  updatedAtMs: number;
  /** The hub (its first name) that wrote the record last. */
  updatedBy: string;
}

/** What a hub holds: its CA, the CAs it trusts (a rotation under way or just committed), its master key checks. */
export interface LocalKeys {
  caFingerprint: string;
  /** Fingerprints of every CA the hub trusts (its own included). */
  trusted: string[];
  masterKeys: Map<number, string>;
}

const short = (fp: string) => `sha256:${fp.slice(0, 16)}…`;

/** Why `local` are not the cluster's keys, or undefined when they are. */
export function keysMismatch(rec: ClusterKeysDoc, local: LocalKeys): string | undefined {
  if (rec.caFingerprint !== local.caFingerprint && !local.trusted.includes(rec.caFingerprint)) {
    return `its CA (${short(local.caFingerprint)}) is not the cluster's (${short(rec.caFingerprint)})`;
  }
  let shared = 0;
  for (const [v, check] of local.masterKeys) {
    const theirs = rec.masterKeys[String(v)];
    if (theirs === undefined) continue;
    if (theirs !== check) return `its master key version ${v} is not the cluster's version ${v}`;
    shared++;
  }
  if (shared === 0) {
    return `none of its master key versions (${[...local.masterKeys.keys()].join(', ')}) is one of the cluster's (${Object.keys(rec.masterKeys).join(', ')})`;
  }
  return undefined;
}

export function clusterKeysDoc(local: LocalKeys, by: string, prev?: ClusterKeysDoc): ClusterKeysDoc {
  const masterKeys: Record<string, string> = { ...(prev?.masterKeys ?? {}) };
  for (const [v, check] of local.masterKeys) masterKeys[String(v)] = check;
  return { id: CLUSTER_KEYS_DOC, caFingerprint: local.caFingerprint, masterKeys, updatedAtMs: Date.now(), updatedBy: by.slice(0, 256) };
}

export function notOfCluster(why: string, where: string): TrellisError {
  return new TrellisError(
    'TRELLIS_E_CONFIG',
    `this hub does not hold the keys of the cluster on the database ${where}: ${why}. A hub of a cluster gets the cluster's CA and master key with ` +
      '`trellis hub init --join URL --from HUB-DATA-DIR-OR-SNAPSHOT` (into a new data directory); nothing was changed',
  );
}

/**
 * At the start of a hub on a shared store: records its keys when the cluster has no record yet,
 * refuses (TRELLIS_E_CONFIG) when they are not the cluster's, else adds its new master key
 * versions (and its CA after a rotation) to the record. Returns warnings for the log.
 */
export async function checkClusterKeys(store: Store, local: LocalKeys, o: { by: string; where: string }): Promise<string[]> {
  const warnings: string[] = [];
  await store.update<ClusterKeysDoc>('meta', CLUSTER_KEYS_DOC, (cur) => {
    if (!cur) return clusterKeysDoc(local, o.by);
    const why = keysMismatch(cur, local);
    if (why) throw notOfCluster(why, o.where);
    const current = Math.max(...local.masterKeys.keys());
    const newer = Object.keys(cur.masterKeys).map(Number).filter((v) => v > current);
    if (newer.length) {
      warnings.push(`the cluster has master key version(s) ${newer.join(', ')} that this hub does not hold (a key rotation on another hub): values sealed under them do not open here; copy the hub's DATA/keys/master-N.key files (0600) from that hub`);
    }
    return clusterKeysDoc(local, o.by, cur);
  });
  return warnings;
}
