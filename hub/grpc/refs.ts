/**
 * The admin-port side of hub/rights for calls that run something: checks the references in the
 * text the caller chose, and gives the run a datastore view (KvRequester) whose secret hook
 * refuses what the caller may not use and records every secret opened for the audit record.
 */
import { TrellisError } from '../../common/errors.js';
import { authorizeRefs, mayUseSecrets, refsIn, secretGuard, type SecretLookup } from '../rights/index.js';
import type { CallContext } from './wrap.js';
import type { KvStore } from '../kv/index.js';
import type { KvRequester } from '../executions/index.js';

/** Is `key` a secret, as `who` sees the tenant's datastore (undefined: not there for them). */
export function secretLookup(kv: KvStore, tenant: string, who: { username: string; isAdmin: boolean }): SecretLookup {
  return async (key) => {
    try {
      return (await kv.getDoc(tenant, who, key)).secret;
    } catch (err) {
      if (err instanceof TrellisError && (err.code === 'TRELLIS_E_NOT_FOUND' || err.code === 'TRELLIS_E_INVALID_ARGUMENT')) return undefined;
      throw err;
    }
  };
}

export interface RefUse {
  /** The caller's view of the datastore for the run, with the secret hook. */
  kvCaller: KvRequester;
  /** Puts the names of the secrets the run opened in the call's audit detail. */
  note(): void;
}

/** Authorizes the references in `callerText` (what the caller typed) for a run in `tenant`. */
export async function useRefs(kv: KvStore, ctx: CallContext, tenant: string, callerText: unknown): Promise<RefUse> {
  const p = ctx.principal!;
  const who = { username: p.username, isAdmin: p.grants.isAdmin };
  const refs = refsIn(callerText);
  await authorizeRefs(p, refs, secretLookup(kv, tenant, who));
  const used = new Set<string>();
  const onSecret = secretGuard({ who: p.username, mayUse: mayUseSecrets(p.grants), callerKeys: new Set(refs.map((r) => r.key)), used });
  return {
    kvCaller: { ...who, onSecret },
    note: () => { if (used.size > 0) ctx.detail = `secrets used: ${[...used].sort().join(', ')}`; },
  };
}
