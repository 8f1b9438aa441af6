/**
 * Skip or fail a test that needs something the machine may lack (a service binary such as slapd
 * or sshd, root, a shell). Outside CI the test is skipped with the reason. With `CI=true` (set by
 * `.ci/run`) it is not skipped: a failing test says what is missing, so a broken install cannot
 * turn into a green run with fewer tests.
 *
 *   t.test('...', needs(t, slapdMissing()), async (t) => { ... });
 */
import type { Test } from 'tap';

/** True when running under CI (`CI=true`, as `.ci/run` and most CI systems set it). */
export function underCi(env: NodeJS.ProcessEnv = process.env): boolean {
  const v = (env.CI ?? '').toLowerCase();
  return v !== '' && v !== '0' && v !== 'false';
}

/**
 * Test options for a test that needs what `missing` describes (undefined when nothing is missing).
 * Outside CI: `{ skip: missing }`. Under CI: records a failure on `t` naming what is missing and
 * skips only the body (which would fail with a less clear error).
 */
export function needs(t: Test, missing: string | undefined, env: NodeJS.ProcessEnv = process.env): { skip: string | false } {
  if (!missing) return { skip: false };
  if (!underCi(env)) return { skip: missing };
  t.fail(`CI=true and a required service or privilege is missing: ${missing}`);
  return { skip: `${missing} (counted as a failure above: CI=true)` };
}

/** Why a test needing root cannot run, or undefined when it can. */
export function rootMissing(): string | undefined {
  return process.getuid?.() === 0 ? undefined : 'needs root';
}
