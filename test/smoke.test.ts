import t from 'tap';
import { startHub, waitFor } from './helpers/hub.js';
import { call } from '../cli/client.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

t.test('an enrolled agent connects, is listed online, and runs a command', async (t) => {
  await using h = await startHub();
  const agent = await h.agent();
  t.equal(agent.channel.state, 'ready');
  const list = await call<T.ListAgentsRequest, T.ListAgentsResponse__Output>(h.admin, h.admin.agents, h.admin.agents.ListAgents, {});
  t.equal(list.agents.length, 1);
  t.equal(list.agents[0]!.status, 'online');
  const id = list.agents[0]!.id;
  const out: string[] = [];
  let finished: T.RunFinished__Output | undefined;
  await new Promise<void>((resolve, reject) => {
    const s = h.admin.runs.Run({ agentId: id, argv: ['sh', '-c', 'echo hello; exit 7'], timeoutMs: 10_000 }, h.admin.metadata);
    s.on('data', (u: T.RunUpdate__Output) => { if (u.output) out.push(String(u.output.data)); if (u.finished) finished = u.finished; });
    s.on('error', reject);
    s.on('end', resolve);
  });
  t.equal(out.join(''), 'hello\n');
  t.equal(finished?.exitCode, 7);
  t.equal(finished?.status, 'failed');
  await waitFor(() => true);
});
