/**
 * Facts an agent reports in its Hello are data from a host (issue 10, finding 11): bounded and
 * cleaned before the hub stores or shows them, so one host cannot bloat state.json, push
 * `agents list` over the gRPC message limit, or drive an admin's terminal.
 */
import { cleanText, isCleanText } from '../../common/text.js';
import type { Facts } from '../../common/proto-gen/trellis/v1/Facts.js';

/** A DNS name is at most 253 characters. */
export const HOSTNAME_MAX = 253;
/** Any other text fact (os, arch, os release, agent version). */
export const FACT_MAX = 1024;
/** All text facts together (bounded by the per-field limits today; kept as a guard). */
export const FACTS_TOTAL_MAX = 16 * 1024;
const CPUS_MAX = 1 << 20;

export interface StoredFacts { hostname: string; os: string; arch: string; osRelease: string; cpus: number; memoryBytes: number; agentVersion: string }

/**
 * The facts as the hub keeps them, and what had to be changed (for a log line; never the values
 * themselves). Pure: same input, same output; idempotent.
 */
export function cleanFacts(f: Facts | null | undefined): { facts: StoredFacts; problems: string[] } {
  const problems: string[] = [];
  let total = 0;
  const text = (name: string, v: unknown, max: number): string => {
    let s = typeof v === 'string' ? v : '';
    if (!isCleanText(s)) { s = cleanText(s); problems.push(`${name}: control characters replaced`); }
    if (s.length > max) { problems.push(`${name}: ${s.length} characters, truncated to ${max}`); s = s.slice(0, max); }
    if (total + s.length > FACTS_TOTAL_MAX) { problems.push(`${name}: dropped (facts over ${FACTS_TOTAL_MAX} characters)`); s = ''; }
    total += s.length;
    return s;
  };
  const int = (name: string, v: unknown, max: number): number => {
    const n = typeof v === 'number' ? v : typeof v === 'string' ? Number(v) : typeof v === 'object' && v !== null ? Number(String(v)) : 0;
    if (!Number.isSafeInteger(n) || n < 0 || n > max) { problems.push(`${name}: out of range, set to 0`); return 0; }
    return n;
  };
  const src = f ?? {};
  const facts: StoredFacts = {
    hostname: text('hostname', src.hostname, HOSTNAME_MAX),
    os: text('os', src.os, FACT_MAX),
    arch: text('arch', src.arch, FACT_MAX),
    osRelease: text('osRelease', src.osRelease, FACT_MAX),
    cpus: int('cpus', src.cpus, CPUS_MAX),
    memoryBytes: int('memoryBytes', src.memoryBytes, Number.MAX_SAFE_INTEGER),
    agentVersion: text('agentVersion', src.agentVersion, FACT_MAX),
  };
  return { facts, problems };
}
