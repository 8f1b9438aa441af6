/**
 * The CI short version of `npm run soak` (bench/soak): 200 simulated agents over 2 client
 * processes, a real hub child process kill -9'ed and restarted 3 times, client processes
 * kill -9'ed and restarted, rules, edge rules and admin writes throughout. Run the way CI runs
 * `npm run soak` (node dist/bench/soak/main.js): every soak_* check must print 0 and the process
 * must exit 0. The negative runs (the checker catches a duplicate and a loss) are in
 * test/soak-checker.test.ts.
 */
import t from 'tap';
import { CHECKS, runSoak } from './helpers/soak.js';

t.test('soak --agents 200 --kills 3: nothing lost, nothing run twice, no torn file', async (t) => {
  // A short backoff cap keeps the three reconnect storms short on a busy CI machine; the
  // workload, the faults and the checks are those of `npm run soak -- --agents 200 --kills 3`.
  // Fewer events (100/s) and a short workload keep the file inside tap's timeout on a loaded machine.
  const r = await runSoak(['--agents', '200', '--kills', '3', '--agent-kills', '1', '--duration', '12s', '--seed', '13',
    '--events-per-s', '100', '--idle', '2s', '--history', '0', '--agent-max-backoff', '2s']);
  if (r.code !== 0) t.comment(r.err.split('\n').filter((l) => !/\] client \d/.test(l)).slice(-40).join('\n'));
  t.equal(r.code, 0, 'the soak exits 0');
  for (const name of CHECKS) t.equal(r.figures.get(name), 0, `${name}: 0`);
  t.ok((r.figures.get('storm_settle_s') ?? -1) > 0, 'three hub restarts were survived (storm_settle_s printed)');
  t.ok((r.figures.get('connect_per_s') ?? 0) > 0, 'connect_per_s printed');
  t.match(r.err, /seed 13/, 'the seed is printed for a reproduction');
  t.equal((r.err.match(/fault: kill -9 the hub/g) ?? []).length, 3, 'the hub was kill -9ed 3 times');
  t.equal((r.err.match(/fault: kill -9 client/g) ?? []).length, 1, 'a client process was kill -9ed');
  t.match(r.err, /checked [1-9]\d* accepted events against [1-9]\d* executions/, 'events flowed and were checked');
});
