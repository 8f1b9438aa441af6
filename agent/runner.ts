/**
 * The agent's action runner, as the composition root uses it: startAction opens the request's
 * sealed values with the agent key, then runs it with the runner it names (command, script,
 * http: see ./runners/) with every secret masked out of the output. Everything a run can go
 * wrong with is reported through the sink's `done` (status 'error' with a message naming the
 * field), never thrown.
 */
import type { KeyObject } from 'node:crypto';
import { sealAad } from '../certs/seal.js';
import { errorMessage, TrellisError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { hasSealedValues, openActionSecrets, runMasked, type ActionSecrets } from './secrets.js';
import type { HttpPool, RunningAction, RunRequest, RunSink } from './runners/index.js';

export * from './runners/index.js';

export interface StartOptions {
  /** The agent's private key: sealed values are opened with it. */
  key: () => KeyObject;
  /** The agent id the hub named in its welcome: part of the sealing binding (AAD). */
  agentId: string | undefined;
  log?: Logger;
  /** The agent's keep-alive connections for http runs. */
  http?: HttpPool;
}

/** Reports an action that could not start, asynchronously like every other `done`. */
function refused(sink: RunSink, error: string): RunningAction {
  const now = Date.now();
  setImmediate(() => sink.done({ status: 'error', exitCode: -1, error, startedMs: now, finishedMs: Date.now() }));
  return { cancel() {} };
}

/**
 * Starts one action request from the hub. Sealed values are bound to
 * `agent:<agentId>|exec:<executionId>`; one that does not open (another agent's, another
 * execution's, tampered) ends the run with status 'error' before anything is spawned.
 */
export function startAction(req: RunRequest, sink: RunSink, opts: StartOptions): RunningAction {
  if (req.sealedStdin && req.stdin && req.stdin.length > 0) return refused(sink, 'stdin: stdin and sealed_stdin are both set; send one of them');
  let secrets: ActionSecrets = { env: {}, headers: {} };
  try {
    if (hasSealedValues(req)) {
      if (!opts.agentId) throw new TrellisError('TRELLIS_E_SECRET_INVALID', 'the agent has no id yet (no welcome from the hub), so sealed values cannot be checked');
      secrets = openActionSecrets(req, opts.key(), sealAad(opts.agentId, 'exec', req.executionId));
    }
  } catch (err) {
    return refused(sink, `cannot open the secrets of this action: ${errorMessage(err)}`);
  }
  try {
    return runMasked(req, secrets, sink, { log: opts.log, http: opts.http });
  } catch (err) {
    secrets.stdin?.fill(0);
    return refused(sink, errorMessage(err));
  }
}
