/**
 * Debian's Chromium, headless, driven by playwright-core (no browser download: the system binary,
 * `apt-get install chromium`; .ci/run installs it). The browser trusts the test hub's certificate
 * by its public key only (`--ignore-certificate-errors-spki-list`), so the pages load over the
 * hub's real TLS as `https://localhost:PORT` (a secure context: Secure cookies, wss:).
 */
import { existsSync, mkdirSync } from 'node:fs';
import { createHash, X509Certificate } from 'node:crypto';
import { join } from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { splitPemBundle } from '../../certs/index.js';
import type { TestHub } from './hub.js';

const CANDIDATES = ['/usr/lib/chromium/chromium', '/usr/bin/chromium', '/usr/bin/chromium-browser'];

export function chromiumPath(): string | undefined {
  return CANDIDATES.find((p) => existsSync(p));
}

/** Why the browser tests cannot run, or undefined. */
export function chromiumMissing(): string | undefined {
  return chromiumPath() ? undefined : 'needs Debian\'s chromium (apt-get install chromium)';
}

/** The SPKI pin of the hub's serving certificate, as Chromium's flag wants it. */
function spkiPin(h: TestHub): string {
  const leaf = splitPemBundle(h.hub.components.pki.hubIdentity.certChainPem)[0]!;
  const der = new X509Certificate(leaf).publicKey.export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(der).digest('base64');
}

export async function launchBrowser(h: TestHub): Promise<Browser & AsyncDisposable> {
  const browser = await chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    timeout: 120_000,
    // --no-sandbox: tests run as root in CI containers, where Chromium's sandbox cannot start.
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu', `--ignore-certificate-errors-spki-list=${spkiPin(h)}`],
  });
  return Object.assign(browser, { [Symbol.asyncDispose]: () => browser.close() });
}

/** Where the browser tests save their screenshots (under tap's artifacts directory). */
export function artifactsDir(): string {
  const dir = join(process.cwd(), '.tap', 'artifacts', 'console');
  mkdirSync(dir, { recursive: true });
  return dir;
}
