/**
 * The hub certificate's lifecycle while the hub runs: renewal from the internal CA at 2/3 of the
 * served certificate's life (same names, same lifetime; persisted and hot-swapped like
 * `certs replace`; logged and audited), and a warning in the log, at start and daily, for any
 * hub or CA certificate that expires within 30 days.
 */
import { certInfo, splitPemBundle } from '../../certs/index.js';
import type { Logger } from '../../common/log.js';
import type { AuditSink } from '../audit/types.js';
import { issueHubCertificate, type HubPki } from './index.js';

const DAY_MS = 86_400_000;
export const EXPIRY_WARNING_MS = 30 * DAY_MS;
/** Node timers hold at most 2^31-1 ms: longer waits are taken in steps. */
const MAX_TIMER_MS = DAY_MS;

/** Certificates (hub leaf, then the CA chain) expiring within `withinMs` of `now`, as warning texts. */
export function expiryWarnings(pki: HubPki, now = Date.now(), withinMs = EXPIRY_WARNING_MS): string[] {
  const leaf = splitPemBundle(pki.hubIdentity.certChainPem)[0]!;
  const certs: [string, string][] = [['hub certificate', leaf], ...pki.caChain.map((c, i): [string, string] => [i === 0 ? 'CA certificate' : `CA chain certificate ${i + 1}`, c])];
  const out: string[] = [];
  for (const [what, pem] of certs) {
    const i = certInfo(pem);
    const left = i.notAfter.getTime() - now;
    if (left <= withinMs) out.push(`${what} ${i.serialHex} ${left <= 0 ? 'expired' : 'expires'} on ${i.notAfter.toISOString()}${left > 0 ? ` (in ${Math.ceil(left / DAY_MS)} day(s))` : ''}`);
  }
  return out;
}

export class HubCertLifecycle {
  private timer: NodeJS.Timeout | undefined;
  private nextWarnAt = 0;
  private unsubscribe: (() => void) | undefined;
  private closed = false;
  private retryAt = 0;

  constructor(private readonly pki: HubPki, private readonly log: Logger, private readonly audit: AuditSink) {}

  start(): void {
    this.unsubscribe = this.pki.onIdentityChange(() => { this.retryAt = 0; this.schedule(); });
    this.schedule();
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.unsubscribe?.();
  }

  /** When the served certificate is due for renewal: 2/3 of notBefore..notAfter. */
  renewAt(): number {
    const i = certInfo(splitPemBundle(this.pki.hubIdentity.certChainPem)[0]!);
    const from = i.notBefore.getTime();
    return from + Math.floor(((i.notAfter.getTime() - from) * 2) / 3);
  }

  private schedule(): void {
    if (this.closed) return;
    clearTimeout(this.timer);
    const now = Date.now();
    let next = this.nextWarnAt;
    // The hub certificate comes from the current CA until a rotation commits: its key decides, not canIssue (the next CA).
    if (this.pki.caKey) next = Math.min(next, Math.max(this.renewAt(), this.retryAt));
    const wait = Math.min(Math.max(next - now, 0), MAX_TIMER_MS);
    this.timer = setTimeout(() => void this.tick(), wait);
    this.timer.unref();
  }

  private async tick(): Promise<void> {
    if (this.closed) return;
    const now = Date.now();
    if (now >= this.nextWarnAt) {
      for (const w of expiryWarnings(this.pki, now)) this.log.warn({ component: 'pki' }, `${w}: replace it (\`trellis certs issue-hub\` or \`certs replace\`) before it expires`);
      this.nextWarnAt = now + DAY_MS;
    }
    if (this.pki.caKey && now >= this.renewAt() && now >= this.retryAt) await this.renew();
    this.schedule();
  }

  private async renew(): Promise<void> {
    const old = certInfo(splitPemBundle(this.pki.hubIdentity.certChainPem)[0]!);
    const names = [...old.dnsNames, ...old.ipAddresses];
    const lifeMs = old.notAfter.getTime() - old.notBefore.getTime();
    const record = (result: 'ok' | 'error', detail: string) => this.audit.record({
      timeMs: Date.now(), actor: 'hub', tenant: '', method: 'hub/RenewHubCertificate', target: old.serialHex, result, sourceAddress: '-', detail,
    });
    try {
      const id = issueHubCertificate(this.pki, names.length ? names : this.pki.names, lifeMs);
      await this.pki.replaceHubIdentity(id.certChainPem, id.keyPem);
      const fresh = certInfo(splitPemBundle(id.certChainPem)[0]!);
      const serial = fresh.serialHex;
      // Near the CA's own expiry a capped certificate is due again soon: never renew faster than a third of what it has left.
      this.retryAt = Date.now() + Math.max(1000, Math.floor((fresh.notAfter.getTime() - Date.now()) / 3));
      this.log.info({ component: 'pki', oldSerial: old.serialHex, serial }, 'hub certificate renewed from the internal CA');
      record('ok', `new serial ${serial}`);
    } catch (err) {
      // Retried after a tenth of what is left (between 1 s and 1 h): a full disk or a CA that expires first.
      const left = old.notAfter.getTime() - Date.now();
      this.retryAt = Date.now() + Math.min(3_600_000, Math.max(1000, Math.floor(left / 10)));
      this.log.error({ component: 'pki', serial: old.serialHex, err: (err as Error).message }, 'hub certificate renewal failed; will retry');
      record('error', (err as Error).message.slice(0, 300));
    }
  }
}
