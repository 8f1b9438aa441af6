/**
 * `npm run soak -- ... --fuzz-seconds S`: the protocol fuzzer (bench/fuzz, runFuzz) against the
 * soak's hub while the workload runs, as its own principals (an API key of its own, a user with no
 * roles, its own enrolled agents). The soak kills the hub on purpose: before each kill it pauses
 * the fuzzer (the current batch finishes, its liveness probe passes) and resumes it once the storm
 * has settled, at the next case index, so the cases stay a function of (seed, index) and a hub
 * the soak killed is never taken for a crash. A crash or hang the fuzzer does see (the hub died
 * or stopped answering between the soak's kills) and every unexpected status are failures.
 */
import { join } from 'node:path';
import { preparePrincipals, type Principals } from '../fuzz/setup.js';
import { runFuzz, SOAK_SPARED, type FuzzResult } from '../fuzz/run.js';

export interface SoakFuzzTotals { cases: number; crashes: number; unexpected: number; rounds: number; seconds: number; statuses: Record<string, number>; examples: string[] }

export interface SoakFuzzHub { adminAddr: string; agentAddr: string; caPem: string; dataDir: string; password: string; exit(): string | undefined }

export class SoakFuzz {
  readonly totals: SoakFuzzTotals = { cases: 0, crashes: 0, unexpected: 0, rounds: 0, seconds: 0, statuses: {}, examples: [] };
  private p?: Principals;
  private round?: { abort: AbortController; done: Promise<void> };
  private index = 0;
  private budgetMs: number;
  private stopped = false;

  constructor(private readonly hub: SoakFuzzHub, private readonly o: { seconds: number; seed: number; outDir: string; inject: boolean; note: (m: string) => void }) {
    this.budgetMs = o.seconds * 1000;
  }

  /** Makes the fuzzer's principals on the hub (it must be up). */
  async prepare(): Promise<void> {
    this.p = await preparePrincipals(this.hub, 4, this.hub.password);
  }

  /** Starts (or resumes) fuzzing in the background until the budget is spent, pause() or stop(). */
  resume(): void {
    if (this.stopped || this.round || this.budgetMs <= 0 || !this.p) return;
    const abort = new AbortController();
    const t0 = Date.now();
    const done = runFuzz({
      adminAddr: this.hub.adminAddr, agentAddr: this.hub.agentAddr, caPem: this.hub.caPem, ...this.p,
      seconds: this.budgetMs / 1000, seed: this.o.seed, startIndex: this.index, target: 'all', spare: SOAK_SPARED,
      injectFailure: this.o.inject && this.totals.rounds === 0, signal: abort.signal, hubExit: this.hub.exit,
      outDir: join(this.o.outDir, 'fuzz'), note: (m) => this.o.note(`fuzz: ${m}`),
      callDeadlineMs: 30_000, probeDeadlineMs: 30_000,
    }).then((r) => this.add(r, Date.now() - t0), (err: Error) => {
      this.totals.crashes++;
      this.totals.examples.push(`fuzz round failed: ${err.message}`);
    });
    this.round = { abort, done };
  }

  private add(r: FuzzResult, ms: number): void {
    const t = this.totals;
    t.rounds++;
    t.cases += r.cases;
    this.index += r.cases;
    t.crashes += r.crashes;
    t.unexpected += r.unexpected.length;
    t.seconds += ms / 1000;
    this.budgetMs -= ms;
    for (const [k, v] of Object.entries(r.statuses)) t.statuses[k] = (t.statuses[k] ?? 0) + v;
    if (r.crash) t.examples.push(`hub crash or hang: ${r.crash.reason}${r.crash.file ? ` (cases in ${r.crash.file})` : ''}`);
    for (const f of r.unexpected) if (t.examples.length < 20) t.examples.push(`${f.case.method} as ${f.case.principal} (case ${f.case.index}): ${f.reason}${f.file ? ` -> ${f.file}` : ''}`);
    // After a crash the hub is gone: fuzzing more would only report the soak's own failure again.
    if (r.crashes > 0) this.stopped = true;
  }

  /** Stops at the end of the current batch and waits for it (before the soak kills the hub). */
  async pause(): Promise<void> {
    const round = this.round;
    if (!round) return;
    round.abort.abort();
    await round.done;
    this.round = undefined;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.pause();
  }
}
