/**
 * Fault injection for tests, never for production: a hook is read only when TRELLIS_TEST_HOOKS=1
 * is set as well, so a stray variable in an operator's environment changes nothing.
 *
 *   TRELLIS_TEST_HOOKS=1 TRELLIS_TEST_PAUSE_ROTATION_AFTER=K
 *     A datastore key rotation stops for good once at least K values have been re-encrypted (after
 *     the batch that crossed K is durable), with both key versions in use, and logs a warning
 *     "key rotation paused by a test hook". test/kv.test.ts kills the hub there with SIGKILL, so
 *     the kill lands mid-rotation every time. A paused rotation ends when the hub closes and
 *     resumes at the next start, as after a crash.
 */

/** K from the environment, or undefined (no pause) unless both variables are set and K is a positive integer. */
export function rotationPauseFromEnv(env: NodeJS.ProcessEnv): number | undefined {
  if (env.TRELLIS_TEST_HOOKS !== '1') return undefined;
  const raw = env.TRELLIS_TEST_PAUSE_ROTATION_AFTER;
  if (raw === undefined || !/^[1-9][0-9]{0,8}$/.test(raw)) return undefined;
  return Number(raw);
}
