/**
 * Sensors on the agent: the uniform unit (types.ts), the one list of implementations below, and
 * the manager that runs the sensors of the agent's config. Adding a sensor is one file and one
 * line in SENSORS (plus its config schema and docs in common/sensors/schemas.ts).
 */
import type { SensorKind } from '../../common/sensors/index.js';
import { SensorManager as Manager, type SensorManagerOptions } from './manager.js';
import type { Sensor } from './types.js';
import { cpu } from './cpu.js';
import { memory } from './memory.js';
import { disk } from './disk.js';
import { processSensor } from './process.js';
import { file } from './file.js';
import { log } from './log.js';
import { http } from './http.js';
import { command } from './command.js';

export type { Sensor, SensorContext, Reading, SensorUnit, PollingUnit, WatchingUnit } from './types.js';
export type { SensorEvent, SensorSpecInput, SensorStatus, SensorManagerOptions, SkippedSensor } from './manager.js';
export { MAX_CONFIG_JSON_BYTES } from './manager.js';

/** The one list of sensor implementations, by kind. */
export const SENSORS: Record<SensorKind, Sensor> = {
  cpu, memory, disk, process: processSensor, file, log, http, command,
};

/** The manager with the built-in sensors unless `sensors` is given (tests add fakes). */
export class SensorManager extends Manager {
  constructor(opts: Omit<SensorManagerOptions, 'sensors'> & { sensors?: Record<string, Sensor> }) {
    super({ ...opts, sensors: opts.sensors ?? SENSORS });
  }
}
