/**
 * Runs the sensors of the agent's config. apply() starts new sensors, stops removed ones and
 * restarts changed ones (an unchanged sensor keeps running with its state, e.g. a log offset).
 * Polls of one sensor never overlap: the next is scheduled intervalMs after the previous settled.
 * A failing poll is logged and retried with capped exponential backoff; nothing a sensor does
 * (bad spec, throwing poll, throwing emitter) reaches the caller.
 */
import type { Logger } from '../../common/log.js';
import { backoffDelay } from '../../common/backoff.js';
import { errorMessage } from '../../common/errors.js';
import { DEFAULT_TRIGGER, isSensorKind } from '../../common/sensors/index.js';
import type { SensorSpec__Output } from '../../common/proto-gen/trellis/v1/SensorSpec.js';
import { isPolling, type PollingUnit, type Reading, type Sensor } from './types.js';

export interface SensorEvent { type: string; payload: Record<string, unknown>; timeMs: number; sensor: string }

export type SensorSpecInput = Pick<SensorSpec__Output, 'name' | 'kind' | 'trigger'> & {
  intervalMs: number | string | { toString(): string };
  configJson: Buffer | Uint8Array | string;
};

/** A spec apply() did not start, and why. */
export interface SkippedSensor { name: string; error: string }

export interface SensorStatus { name: string; kind: string; lastRunMs: number; lastError: string; events: number }

export interface SensorManagerOptions {
  log: Logger;
  emit: (events: SensorEvent[]) => void;
  /** The implementations by kind. @default SENSORS (agent/sensors/index.ts) */
  sensors: Record<string, Sensor>;
  /** Shortest interval honoured; shorter ones are raised to it. @default 100 */
  minIntervalMs?: number;
  /** Interval of a spec that gives none (0). @default 30000 */
  defaultIntervalMs?: number;
  /** Longest delay between attempts of a failing sensor. @default 300000 */
  maxBackoffMs?: number;
}

export const MAX_CONFIG_JSON_BYTES = 64 * 1024;
const MAX_NAME_LENGTH = 200;
const MAX_INTERVAL_MS = 24 * 3_600_000;
/** How long stop/close waits for an in-flight poll. */
const STOP_WAIT_MS = 5_000;

interface Running {
  name: string;
  kind: string;
  key: string;
  abort: AbortController;
  timer?: NodeJS.Timeout;
  inflight?: Promise<void>;
  unit?: PollingUnit;
  lastRunMs: number;
  lastError: string;
  events: number;
  failures: number;
}

export class SensorManager {
  readonly #log: Logger;
  readonly #emit: (events: SensorEvent[]) => void;
  readonly #sensors: Record<string, Sensor>;
  readonly #minIntervalMs: number;
  readonly #defaultIntervalMs: number;
  readonly #maxBackoffMs: number;
  readonly #running = new Map<string, Running>();
  #closed = false;

  constructor(opts: SensorManagerOptions) {
    this.#log = opts.log.child({ component: 'sensors' });
    this.#emit = opts.emit;
    this.#sensors = opts.sensors;
    this.#minIntervalMs = opts.minIntervalMs ?? 100;
    this.#defaultIntervalMs = opts.defaultIntervalMs ?? 30_000;
    this.#maxBackoffMs = opts.maxBackoffMs ?? 300_000;
  }

  /**
   * Makes the running set match specs. Never throws: a bad spec is logged and skipped, and
   * returned with its reason (for ConfigAck.error); the other sensors are applied.
   */
  apply(specs: readonly SensorSpecInput[]): SkippedSensor[] {
    if (this.#closed) return [];
    const skipped: SkippedSensor[] = [];
    const skip = (name: string, error: string) => {
      this.#log.warn({ sensor: name }, `sensor skipped: ${error}`);
      skipped.push({ name, error });
    };
    const wanted = new Map<string, { spec: SensorSpecInput; key: string }>();
    for (const spec of Array.isArray(specs) ? specs : []) {
      const name = typeof spec?.name === 'string' ? spec.name : '';
      if (!name || name.length > MAX_NAME_LENGTH) { skip(name.slice(0, MAX_NAME_LENGTH), `name must be 1-${MAX_NAME_LENGTH} characters`); continue; }
      if (wanted.has(name)) { skip(name, 'a sensor with this name is already in the config'); continue; }
      try {
        const cfg = Buffer.from(spec.configJson ?? '');
        wanted.set(name, { spec, key: JSON.stringify([spec.kind, spec.trigger, String(spec.intervalMs), cfg.toString('base64')]) });
      } catch (err) {
        skip(name, `malformed spec: ${errorMessage(err)}`);
      }
    }
    for (const [name, r] of this.#running) {
      const w = wanted.get(name);
      if (!w || w.key !== r.key) void this.#stop(r, w ? 'changed' : 'removed');
    }
    for (const [name, { spec, key }] of wanted) {
      if (this.#running.has(name)) continue;
      let error: string | undefined;
      try { error = this.#start(spec, key); } catch (err) { error = errorMessage(err); }
      if (error !== undefined) skip(name, error);
    }
    return skipped;
  }

  status(): SensorStatus[] {
    return [...this.#running.values()].map((r) => ({ name: r.name, kind: r.kind, lastRunMs: r.lastRunMs, lastError: r.lastError, events: r.events }));
  }

  /** Stops every sensor and waits for in-flight polls to settle. */
  async close(): Promise<void> {
    this.#closed = true;
    const pending = [...this.#running.values()].map((r) => this.#stop(r, 'closed'));
    await Promise.all(pending);
  }

  /** Starts one sensor; returns why it was not started. */
  #start(spec: SensorSpecInput, key: string): string | undefined {
    const { name, kind } = spec;
    const sensor = typeof kind === 'string' && isSensorKind(kind) ? this.#sensors[kind] : undefined;
    if (!sensor) return `unknown kind "${String(kind).slice(0, 40)}"`;
    if (typeof spec.trigger !== 'string' || spec.trigger.length > MAX_NAME_LENGTH) return `trigger must be a string of at most ${MAX_NAME_LENGTH} characters`;
    const cfg = Buffer.from(spec.configJson ?? '');
    if (cfg.length > MAX_CONFIG_JSON_BYTES) return `config is ${cfg.length} bytes, over the ${MAX_CONFIG_JSON_BYTES}-byte limit`;
    let config: unknown = {};
    if (cfg.length > 0) {
      try { config = JSON.parse(cfg.toString('utf8')); } catch (err) { return `config is not JSON: ${errorMessage(err)}`; }
    }
    const log = this.#log.child({ sensor: name, kind });
    const r: Running = { name, kind, key, abort: new AbortController(), lastRunMs: 0, lastError: '', events: 0, failures: 0 };
    let unit;
    try { unit = sensor.create({ config, log, signal: r.abort.signal }); } catch (err) { return errorMessage(err); }
    const type = spec.trigger || DEFAULT_TRIGGER(sensor.kind);
    const deliver = (readings: Reading[]) => {
      if (r.abort.signal.aborted || readings.length === 0) return;
      const timeMs = Date.now();
      const events = readings.map((x) => ({ type, payload: { ...x.payload, sensor: name }, timeMs, sensor: name }));
      r.events += events.length;
      try { this.#emit(events); } catch (err) { log.error({ err }, 'sensor event sink failed'); }
    };
    this.#running.set(name, r);
    if (!isPolling(unit)) {
      try {
        unit.watch(deliver);
        r.lastRunMs = Date.now();
      } catch (err) {
        r.lastError = errorMessage(err);
        log.warn(`sensor failed to start watching: ${r.lastError}`);
      }
      log.info('sensor started');
      return undefined;
    }
    r.unit = unit;
    const intervalMs = this.#interval(spec.intervalMs, log);
    const tick = () => {
      r.timer = undefined;
      if (r.abort.signal.aborted) return;
      r.inflight = this.#pollOnce(r, unit, deliver, log).then(() => {
        r.inflight = undefined;
        if (r.abort.signal.aborted) return;
        const delay = r.failures === 0 ? intervalMs
          : Math.max(intervalMs, backoffDelay(r.failures - 1, { jitter: 'equal', initialMs: intervalMs, maxMs: Math.max(intervalMs, this.#maxBackoffMs) }));
        r.timer = setTimeout(tick, delay);
      });
    };
    r.timer = setTimeout(tick, 0);
    log.info({ intervalMs }, 'sensor started');
    return undefined;
  }

  async #pollOnce(r: Running, unit: PollingUnit, deliver: (x: Reading[]) => void, log: Logger): Promise<void> {
    try {
      const readings = await unit.poll();
      r.lastRunMs = Date.now();
      if (r.failures > 0) log.info({ failures: r.failures }, 'sensor recovered');
      r.failures = 0;
      r.lastError = '';
      deliver(Array.isArray(readings) ? readings : []);
    } catch (err) {
      r.lastRunMs = Date.now();
      if (r.abort.signal.aborted) return;
      const msg = errorMessage(err);
      r.failures++;
      // Log the first failure and every change of error; a steady failure stays quiet (backoff).
      if (r.failures === 1 || msg !== r.lastError) log.warn({ failures: r.failures }, `sensor poll failed: ${msg}`);
      r.lastError = msg;
    }
  }

  #interval(raw: SensorSpecInput['intervalMs'], log: Logger): number {
    const n = Number(String(raw ?? 0));
    if (!Number.isFinite(n) || n <= 0) return this.#defaultIntervalMs;
    if (n < this.#minIntervalMs) {
      log.warn({ intervalMs: n }, `sensor interval raised to the ${this.#minIntervalMs} ms minimum`);
      return this.#minIntervalMs;
    }
    return Math.min(n, MAX_INTERVAL_MS);
  }

  /** Stops r; resolves once its in-flight poll settled and its unit closed. */
  async #stop(r: Running, why: 'removed' | 'changed' | 'closed'): Promise<void> {
    if (this.#running.get(r.name) === r) this.#running.delete(r.name);
    if (r.abort.signal.aborted) return;
    r.abort.abort();
    clearTimeout(r.timer);
    this.#log.info({ sensor: r.name, kind: r.kind }, `sensor stopped (${why})`);
    if (r.inflight) {
      // Sensors honour their signal; a poll that does not is abandoned after STOP_WAIT_MS.
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<'late'>((res) => { timer = setTimeout(() => res('late'), STOP_WAIT_MS); });
      const outcome = await Promise.race([r.inflight, late]);
      clearTimeout(timer);
      if (outcome === 'late') this.#log.warn({ sensor: r.name }, `sensor poll still running ${STOP_WAIT_MS} ms after stop; abandoned`);
    }
    try { await r.unit?.close?.(); } catch (err) { this.#log.warn({ sensor: r.name, err: errorMessage(err) }, 'sensor close failed'); }
  }
}
