/**
 * The sink of event_to_action_p99_ms, in a process of its own (forked by bench/e2a-agent.ts), so
 * that the agent process's CPU time is the agent's (and the event generator's) and the HTTP
 * server the action calls is measured apart (`event_to_action_sink_cpu_us`): it stands for the
 * service an operator's action would call, not for Trellis.
 *
 * GET /<n>/<send time> is the action having run for measured event n (n < 0: warm-up event -n - 1). Over IPC:
 * sends `{ port }` once listening; answers `{ progress: true }` with `{ hits, arrived }` and
 * `{ report: true }` with the latencies (ms; time of arrival here minus the send time the agent
 * process put in the URL, both `performance.timeOrigin + performance.now()` on this machine),
 * how many measured actions ran more than once, and this process's CPU time; then exits.
 */
import http from 'node:http';

const now = () => performance.timeOrigin + performance.now();

function main(): void {
  const measured = Number(process.argv[2]);
  if (!Number.isInteger(measured) || measured <= 0 || !process.send) throw new Error('usage: forked with the number of measured events');
  const lat = new Array<number>(measured).fill(-1);
  const warm: number[] = []; // warm-up latencies by index (event n = -(index + 1)), for the trace
  let duplicated = 0, hits = 0, arrived = 0;
  const sink = http.createServer((req, res) => {
    const at = now();
    const m = /^\/(-?\d+)\/([\d.]+)$/.exec(req.url ?? '');
    res.end();
    if (!m) return;
    hits++;
    const n = Number(m[1]);
    if (n < 0) { if (-n - 1 < 1_000_000) warm[-n - 1] = at - Number(m[2]); return; }
    if (n >= measured) return;
    if (lat[n]! >= 0) { duplicated++; return; }
    lat[n] = at - Number(m[2]);
    arrived++;
  });
  // Node's default (5 s): the agent keeps connections until 1 s before the server's announced timeout.
  sink.keepAliveTimeout = 5000;
  let cpu0 = process.cpuUsage();
  process.on('message', (m: { progress?: boolean; report?: boolean; start?: boolean }) => {
    if (m.start) cpu0 = process.cpuUsage(); // the measured phase begins (after the agent was welcomed)
    if (m.progress) process.send!({ hits, arrived });
    if (m.report) {
      const cpu = process.cpuUsage(cpu0);
      process.send!({ lat, warm, duplicated, hits, cpuMs: (cpu.user + cpu.system) / 1000 }, () => process.exit(0));
    }
  });
  process.on('disconnect', () => process.exit(0));
  sink.listen(0, '127.0.0.1', () => process.send!({ port: (sink.address() as { port: number }).port }));
}

main();
