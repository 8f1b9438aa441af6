/**
 * Maintenance mode: while on, only platform administrators may call the admin API (everyone else
 * gets TRELLIS_E_MAINTENANCE, gRPC UNAVAILABLE, with the operator's message), no new execution
 * starts (user runs and re-runs refused, rule firings suppressed with reason "maintenance"),
 * executions already running finish. Agents stay connected and their events are still accepted
 * and acknowledged: refusing them would only pile them up in every agent's outbox and replay
 * them as a storm when the mode ends, firing rules on stale events; accepted, they reach the
 * history, /stream and the rule counters (as suppressed firings), and nothing is lost.
 *
 * The mode is persisted in the store's `meta` collection (document `maintenance`), so a restart
 * (or another hub on the same store) keeps it. Counters are per process.
 */
import { TrellisError } from '../../common/errors.js';
import type { Doc, Store } from '../store/index.js';

export const MAINTENANCE_DOC = 'maintenance';
const MAX_MESSAGE = 500;

export interface MaintenanceState {
  on: boolean;
  /** When the mode last changed. */
  sinceMs: number;
  /** Who changed it last (a user name, apikey:<id>@<owner>). */
  by: string;
  message: string;
}

interface MaintenanceDoc extends Doc, MaintenanceState {}

export interface MaintenanceCounts {
  refusedCalls: number;
  refusedExecutions: number;
  refusedRuleFirings: number;
}

/** The message a refused caller reads. */
export function refusalMessage(s: MaintenanceState): string {
  const since = s.sinceMs ? ` since ${new Date(s.sinceMs).toISOString()}` : '';
  return `the hub is in maintenance mode${since}${s.message ? `: ${s.message}` : ''}; try again later`;
}

/** A one-line operator message: control characters become spaces, at most 500 characters. */
export function checkMessage(v: unknown): string {
  if (typeof v !== 'string') throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'the maintenance message must be a string');
  if (v.length > MAX_MESSAGE) throw new TrellisError('TRELLIS_E_TOO_LARGE', `the maintenance message is over ${MAX_MESSAGE} characters`);
  return v.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]+/g, ' ').trim();
}

export class Maintenance {
  private state: MaintenanceState;
  private readonly counts: MaintenanceCounts = { refusedCalls: 0, refusedExecutions: 0, refusedRuleFirings: 0 };
  private readonly listeners = new Set<(s: MaintenanceState) => void>();

  private constructor(private readonly store: Store, state: MaintenanceState) {
    this.state = state;
  }

  static async open(store: Store): Promise<Maintenance> {
    return new Maintenance(store, await Maintenance.read(store));
  }

  private static async read(store: Store): Promise<MaintenanceState> {
    const d = await store.get<MaintenanceDoc>('meta', MAINTENANCE_DOC);
    return d
      ? { on: d.on === true, sinceMs: Number(d.sinceMs) || 0, by: String(d.by ?? ''), message: String(d.message ?? '') }
      : { on: false, sinceMs: 0, by: '', message: '' };
  }

  /**
   * Re-reads the persisted mode: for a cluster whose other hub changed it (call it on that
   * hub's change signal). Listeners hear of a change.
   */
  async reload(): Promise<MaintenanceState> {
    const next = await Maintenance.read(this.store);
    const changed = next.on !== this.state.on || next.sinceMs !== this.state.sinceMs || next.message !== this.state.message;
    this.state = next;
    if (changed) for (const fn of this.listeners) fn({ ...next });
    return { ...next };
  }

  get on(): boolean { return this.state.on; }
  status(): MaintenanceState & MaintenanceCounts { return { ...this.state, ...this.counts }; }

  /** Turns the mode on or off; durable when it resolves. Turning it on again updates the message. */
  async set(on: boolean, by: string, message: string): Promise<MaintenanceState> {
    const next: MaintenanceState = { on, sinceMs: on && this.state.on ? this.state.sinceMs : Date.now(), by, message: on ? checkMessage(message) : '' };
    await this.store.put<MaintenanceDoc>('meta', { id: MAINTENANCE_DOC, ...next });
    this.state = next;
    for (const fn of this.listeners) fn({ ...next });
    return { ...next };
  }

  /** Called when the mode changes. */
  onChange(fn: (s: MaintenanceState) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Admin API gate: throws TRELLIS_E_MAINTENANCE for a caller that is not a platform administrator. */
  checkCall(isAdmin: boolean): void {
    if (!this.state.on || isAdmin) return;
    this.counts.refusedCalls++;
    throw new TrellisError('TRELLIS_E_MAINTENANCE', refusalMessage(this.state));
  }

  /** Executions gate (user runs, re-runs, rule requests): throws TRELLIS_E_MAINTENANCE while on. */
  admitExecution(o: { rule?: string }): void {
    if (!this.state.on) return;
    if (o.rule) this.counts.refusedRuleFirings++;
    else this.counts.refusedExecutions++;
    throw new TrellisError('TRELLIS_E_MAINTENANCE', `${refusalMessage(this.state)}: no new executions start (those running finish)`);
  }

  /** Rules gate: the reason a rule firing is held back ("maintenance"), counted, or undefined. */
  holdRuleFiring(): string | undefined {
    if (!this.state.on) return undefined;
    this.counts.refusedRuleFirings++;
    return 'maintenance';
  }
}
