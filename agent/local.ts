/**
 * Runs an action rendered on the agent itself (an edge rule fired): the same runners, masking
 * and process-group handling as an action from the hub, with the opened values handed over in
 * memory (nothing sealed, nothing written). Output is collected (capped) for the report.
 */
import type { ActionDef } from '../common/automation/types.js';
import type { RenderedAction } from '../common/rules/index.js';
import type { Logger } from '../common/log.js';
import { runMasked, type ActionSecrets } from './secrets.js';
import { requestFromRendered } from '../common/automation/request.js';
import type { HttpPool, RunningAction } from './runner.js';
import type { LocalRunResult } from './edge.js';

const COLLECT_MAX = 256 * 1024;

/** Starts the run; `track` registers the handle (for cancel on shutdown) until it is done. */
export function runLocal(o: {
  executionId: string; action: ActionDef; rendered: RenderedAction; log: Logger; http?: HttpPool;
  track: (id: string, h: RunningAction | undefined) => void;
}): Promise<LocalRunResult> {
  const { rendered: r } = o;
  const secrets: ActionSecrets = {
    env: { ...r.secretEnv }, headers: { ...r.secretHeaders }, mask: [...r.secretValues],
    stdin: r.secretStdin !== undefined ? Buffer.from(r.secretStdin, 'utf8') : undefined,
  };
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let truncated = false;
    const handle = runMasked(requestFromRendered({ executionId: o.executionId, action: o.action.ref, rendered: r }), secrets, {
      output(_stream, data) {
        if (size >= COLLECT_MAX) { truncated = true; return; }
        const part = data.subarray(0, COLLECT_MAX - size);
        if (part.length < data.length) truncated = true;
        chunks.push(Buffer.from(part));
        size += part.length;
      },
      done(res) {
        o.track(o.executionId, undefined);
        resolve({ ...res, output: Buffer.concat(chunks), outputTruncated: truncated });
      },
    }, { log: o.log, http: o.http });
    o.track(o.executionId, handle);
  });
}
