/**
 * The soak's checks can fail (a check that cannot fail is a defect): with the test-only
 * `--inject-fault`, a simulated agent runs one action twice, or logs an event as accepted
 * without handing it to its outbox, and the run must report it and exit 1. Also: bad usage
 * exits 2 with a clear message, and --help documents the command.
 */
import t from 'tap';
import { CHECKS, runSoak } from './helpers/soak.js';

const SMALL = ['--agents', '20', '--kills', '0', '--agent-kills', '0', '--duration', '6s', '--idle', '1s', '--history', '0', '--seed', '7'];

t.test('a duplicated execution is caught: soak_executions_duplicated 1, exit 1', async (t) => {
  const r = await runSoak([...SMALL, '--inject-fault', 'duplicate-execution']);
  t.equal(r.code, 1);
  t.equal(r.figures.get('soak_executions_duplicated'), 1);
  t.match(r.err, /FAIL idempotency key soak-fire\|\S+ ran 2 times/);
  for (const name of CHECKS.filter((n) => n !== 'soak_executions_duplicated')) t.equal(r.figures.get(name), 0, `${name}: 0`);
});

t.test('an accepted event that never reaches the hub is caught: soak_events_lost 1, exit 1', async (t) => {
  const r = await runSoak([...SMALL, '--inject-fault', 'lose-event']);
  t.equal(r.code, 1);
  t.equal(r.figures.get('soak_events_lost'), 1);
  t.match(r.err, /FAIL event \S+ of agent \S+: accepted by its outbox, no execution of soak-fire/);
  for (const name of CHECKS.filter((n) => n !== 'soak_events_lost')) t.equal(r.figures.get(name), 0, `${name}: 0`);
});

t.test('--fuzz-seconds: the fuzzer runs against the soak hub and its failures fail the soak (exit 1)', async (t) => {
  // A tiny seeded run with the test-only injected fault: the first fuzz case is judged unexpected.
  const r = await runSoak([...SMALL, '--fuzz-seconds', '5', '--inject-fault', 'fuzz-failure']);
  t.equal(r.code, 1, `exit 1 (${r.err.split('\n').filter((l) => /fuzz|harness/.test(l)).slice(-6).join(' | ')})`);
  t.ok((r.figures.get('soak_fuzz_cases') ?? 0) > 10, `soak_fuzz_cases: ${r.figures.get('soak_fuzz_cases')} (> 10: the fuzzer ran)`);
  t.equal(r.figures.get('soak_fuzz_failures'), 1, 'soak_fuzz_failures: 1, the injected one and nothing else (no crash, no unexpected status)');
  t.match(r.err, /FAIL fuzz \S+ as \S+ \(case 0\): injected failure/, 'the failing case is named');
  for (const name of CHECKS) t.equal(r.figures.get(name), 0, `${name}: 0 (the fuzzer leaves the soak's workload alone)`);
  const bad = await runSoak(['--agents', '5', '--duration', '10s', '--fuzz-seconds', '20']);
  t.equal(bad.code, 2);
  t.match(bad.err, /--fuzz-seconds \(20\) must not exceed --duration/);
  const help = await runSoak(['--help']);
  t.match(help.out, /--fuzz-seconds S/);
  t.match(help.out, /soak_fuzz_failures/);
});

t.test('usage errors exit 2 and name the option; --help documents the command', async (t) => {
  const bad = await runSoak(['--agents', '0']);
  t.equal(bad.code, 2);
  t.match(bad.err, /--agents must be an integer from 1 to 20000/);
  const missing = await runSoak([]);
  t.equal(missing.code, 2);
  t.match(missing.err, /--agents N is required/);
  const unknown = await runSoak(['--agents', '5', '--bogus']);
  t.equal(unknown.code, 2);
  t.match(unknown.err, /unknown option "--bogus"/);
  const fault = await runSoak(['--agents', '5', '--inject-fault', 'nope']);
  t.equal(fault.code, 2);
  const help = await runSoak(['--help']);
  t.equal(help.code, 0);
  t.match(help.out, /npm run soak -- --agents N/);
  t.match(help.out, /--kills K/);
  t.match(help.out, /soak_events_lost/);
});
