/**
 * The uniform sensor unit (Nomad's fingerprinters): a kind, a config schema (in
 * common/sensors/schemas.ts) and either poll() run every interval or watch(emit).
 */
import type { Logger } from '../../common/log.js';
import type { SensorKind } from '../../common/sensors/index.js';

export interface SensorContext {
  /** The sensor's config as sent; each sensor validates it with its kind's schema. */
  config: unknown;
  log: Logger;
  /** Aborted when the sensor is stopped: cancel in-flight work (requests, child processes). */
  signal: AbortSignal;
}

/** One observation; the manager adds `sensor: <name>` to the payload. */
export interface Reading { payload: Record<string, unknown> }

export interface PollingUnit {
  /** Returns what to emit now ([] for nothing). Never called again before it settles. */
  poll(): Promise<Reading[]>;
  /** Releases what the unit holds (open files); called once after the last poll settled. */
  close?(): Promise<void> | void;
}

export interface WatchingUnit {
  /** Starts watching; stops when ctx.signal aborts. */
  watch(emit: (readings: Reading[]) => void): void;
}

export type SensorUnit = PollingUnit | WatchingUnit;

export interface Sensor {
  kind: SensorKind;
  /** Builds a running unit; throws (TRELLIS_E_INVALID_ARGUMENT) on a bad config. */
  create(ctx: SensorContext): SensorUnit;
}

export function isPolling(u: SensorUnit): u is PollingUnit {
  return typeof (u as PollingUnit).poll === 'function';
}

/** Percent with one decimal. */
export function pct(part: number, whole: number): number {
  return whole > 0 ? Math.round((1000 * part) / whole) / 10 : 0;
}
