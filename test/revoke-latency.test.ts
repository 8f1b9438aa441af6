/**
 * The README's figure: revoking an agent ends its live stream within 100 ms of the revoke call
 * returning. Measured from the RevokeAgent call's return (as the admin sees it) to the agent's
 * channel reporting 'closed' (the agent's own view), over several agents; the median is held to
 * 100 ms (a single run on a busy 2-core machine can be late for reasons that are not the hub's),
 * and every run to 1 s.
 */
import t from 'tap';
import { startHub } from './helpers/hub.js';
import { call } from '../cli/client.js';
import type { ChannelState } from '../agent/channel.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const RUNS = 5;
const FIGURE_MS = 100;

t.test(`revocation ends the agent's live stream within ${FIGURE_MS} ms of the revoke call returning (median of ${RUNS})`, async (t) => {
  await using h = await startHub();
  const figures: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const { dataDir, agentId } = await h.enroll();
    const agent = await h.agent({ dataDir });
    t.equal(agent.channel.state, 'ready');
    let closedAt = 0;
    const closed = new Promise<void>((resolve) => agent.channel.on('state', (s: ChannelState) => { if (s === 'closed' && !closedAt) { closedAt = performance.now(); resolve(); } }));
    const res = await call<T.RevokeAgentRequest, T.RevokeAgentResponse__Output>(h.admin, h.admin.agents, h.admin.agents.RevokeAgent, { id: agentId, reason: 'test' });
    const returned = performance.now();
    t.equal(res.disconnected, true);
    await Promise.race([closed, new Promise((r) => setTimeout(r, 5_000))]);
    t.ok(closedAt > 0, `run ${i + 1}: the agent saw its stream close`);
    const ms = Math.max(0, closedAt - returned); // closed before the answer arrived: 0
    figures.push(ms);
    t.ok(ms < 1_000, `run ${i + 1}: closed ${ms.toFixed(1)} ms after the revoke call returned`);
    await agent.close();
  }
  const sorted = [...figures].sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)]!;
  t.ok(median < FIGURE_MS, `median ${median.toFixed(1)} ms < ${FIGURE_MS} ms (runs: ${figures.map((f) => f.toFixed(1)).join(', ')} ms)`);
});
