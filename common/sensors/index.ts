/** Sensor kinds, their config schemas and docs: shared by the hub (packs) and the agent. */
export {
  SENSOR_KINDS, SENSOR_CONFIG_SCHEMAS, SENSOR_DOCS, DEFAULT_TRIGGER, COMMAND_OUTPUT_CAP_BYTES,
  MAX_PATTERN_LENGTH, MAX_PATH_LENGTH, isSensorKind, parseSensorConfig, safePattern,
} from './schemas.js';
export type { SensorKind, SensorConfig, SensorDoc } from './schemas.js';
