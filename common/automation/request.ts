/**
 * A rendered action (common/rules/render.ts) as the ActionRequest an agent runs. The hub passes
 * `seal` (the value sealed to the target agent for this execution): secret env values, stdin and
 * HTTP headers go in the sealed fields, and every secret value the run resolved in sealed_mask
 * (what the agent masks). The agent, running an edge rule's action itself, passes none: the
 * sealed fields stay empty and it hands the opened values to the runner in memory.
 */
import type { RenderedAction } from '../rules/render.js';

/**
 * Actions one agent runs at once by default (the agent's maxConcurrentActions), and the hub's
 * default `executions.perAgentConcurrency`: the hub keeps as many in flight as the agent will
 * take, so neither side queues work the other could run (at 8 on the hub and 16 on the agent,
 * half the agent's slots stayed empty while requests waited on the hub).
 */
export const AGENT_CONCURRENT_ACTIONS = 16;
import type * as T from '../proto-gen/trellis/v1/index.js';

export function requestFromRendered(o: { executionId: string; action: string; rendered: RenderedAction; seal?: (value: string) => string }): T.ActionRequest__Output {
  const r = o.rendered;
  const sealAll = (m: Record<string, string>) => {
    const out: Record<string, string> = {};
    if (o.seal) for (const k of Object.keys(m)) out[k] = o.seal(m[k]!);
    return out;
  };
  return {
    executionId: o.executionId, action: o.action, runner: r.runner, argv: r.argv, timeoutMs: r.timeoutMs, env: r.env, cwd: r.cwd, runAs: r.runAs,
    sealedEnv: sealAll(r.secretEnv),
    script: r.script?.body ? Buffer.from(r.script.body, 'utf8') : Buffer.alloc(0), scriptName: r.script?.name ?? '',
    http: r.http ? {
      method: r.http.method, url: r.http.url, headers: r.http.headers, body: r.http.body ? Buffer.from(r.http.body, 'utf8') : Buffer.alloc(0), insecure: r.http.insecure,
      successStatus: r.http.successStatus, sealedHeaders: sealAll(r.secretHeaders),
    } : null,
    sealedStdin: r.secretStdin !== undefined && o.seal ? o.seal(r.secretStdin) : '',
    // The secret values themselves, so the agent masks a secret spliced into a larger value.
    sealedMask: o.seal && r.secretValues.length > 0 ? r.secretValues.map((v) => o.seal!(v)) : [],
    stdin: r.secretStdin === undefined && r.stdin !== undefined ? Buffer.from(r.stdin, 'utf8') : Buffer.alloc(0),
  };
}
