/**
 * The hub addresses an agent may use (several hubs on one PostgreSQL store): it sticks to the one
 * that works and, when a connect fails or a stream is lost, moves to the next. A round is one pass
 * over the list; the reconnect backoff grows per failed round, not per address, so a dead hub
 * costs one refused connect before the next hub is tried.
 */
import { TrellisError } from '../common/errors.js';
import { formatHostPort, parseHostPort } from '../common/grpc-options.js';

/** Most hub addresses an agent keeps (a cluster is a handful of hubs). */
export const MAX_HUB_ADDRESSES = 16;

/**
 * `a:7443,b:7443` (or several such values) → normalised, de-duplicated HOST:PORT list, in order.
 * `what` names the option in errors (e.g. `--hub`).
 */
export function parseHubAddresses(values: string | string[], defaultPort: number, what = '--hub'): string[] {
  const parts = (Array.isArray(values) ? values : [values]).flatMap((v) => v.split(',')).map((s) => s.trim()).filter(Boolean);
  if (parts.length === 0) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${what}: give at least one hub address, HOST:PORT`);
  const out: string[] = [];
  for (const p of parts) {
    let hp: { host: string; port: number };
    try { hp = parseHostPort(p, defaultPort); } catch (e) {
      throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${what}: ${(e as Error).message}`);
    }
    const a = formatHostPort(hp.host, hp.port);
    if (!out.includes(a)) out.push(a);
  }
  if (out.length > MAX_HUB_ADDRESSES) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `${what}: at most ${MAX_HUB_ADDRESSES} hub addresses`);
  return out;
}

export class HubAddresses {
  private list: string[];
  private index = 0;
  /** Addresses tried since the last success (a full round = list.length). */
  private failedInRound = 0;

  constructor(addresses: string[]) {
    if (addresses.length === 0) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'no hub address');
    this.list = [...addresses];
  }

  /** The address to use now. */
  get current(): string { return this.list[this.index]!; }

  get all(): readonly string[] { return this.list; }

  /** The current address works: stay on it. */
  succeeded(): void { this.failedInRound = 0; }

  /**
   * The current address failed (connect refused, stream lost): move to the next. Returns true when
   * a whole round has failed (every address tried once since the last success): then wait the
   * backoff before the next round; otherwise try the next address at once.
   */
  failed(): boolean {
    this.failedInRound++;
    this.index = (this.index + 1) % this.list.length;
    if (this.failedInRound >= this.list.length) { this.failedInRound = 0; return true; }
    return false;
  }

  /** A new list (e.g. from the hub): keeps the current address first when it is still listed. */
  replace(addresses: string[]): void {
    if (addresses.length === 0) return;
    const cur = this.current;
    const next = [...new Set(addresses)];
    const i = next.indexOf(cur);
    this.list = i >= 0 ? next : [cur, ...next];
    this.index = this.list.indexOf(cur);
    this.failedInRound = 0;
  }
}
