/**
 * What a new server fetches from the web port to install an agent, unauthenticated (it is public
 * code and the public CA certificate; nothing from the hub's data directory but the bundle it
 * built itself):
 *   GET /agent/ca.pem              the CA join tokens pin (its SHA-256 is a token's last field), then its parents
 *   GET /agent/install.sh          the static installer (bin/trellis-agent-install.sh; nothing in it comes from a request)
 *   GET /agent/bundle.tgz          `trellis agent bundle` of the hub's own installation
 *   GET /agent/bundle.tgz.sha256   its SHA-256, `sha256sum -c` format (file name bundle.tgz)
 * The bundle is built once per version (single-flight, ~12 s on first request) into
 * DATA/agent-bundle/ (0700; the file 0644), checked against its SHA-256 when found there after a
 * restart (rebuilt if missing or damaged), and streamed with a Content-Length.
 */
import { createReadStream, existsSync, mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { pipeline } from 'node:stream/promises';
import { PROTO_DIR } from '../../common/proto.js';
import { TRELLIS_VERSION } from '../../common/version.js';
import { fingerprintSha256 } from '../../certs/index.js';
import { errorMessage } from '../../common/errors.js';
import { sha256File } from '../../common/fsutil.js';
import type { Logger } from '../../common/log.js';
import type { Route } from './index.js';

export interface AgentDistOptions {
  /** DATA/agent-bundle. */
  dir: string;
  /** The CA chain (issuing CA and its parents) and the fingerprint join tokens carry. */
  ca: () => { chain: string[]; fingerprint: string };
  log: Logger;
  /** Builds the bundle (tests may count calls). @default writeBundle of this installation */
  build?: (out: string) => Promise<{ sha256: string }>;
  /**
   * After a failed build, requests within this time get the same failure without a new build:
   * the routes are unauthenticated, and each build costs seconds of hub CPU. @default 60000
   */
  retryAfterMs?: number;
}

const INSTALL_SH = join(dirname(PROTO_DIR), 'bin', 'trellis-agent-install.sh');

interface Built { file: string; sha256: string }

export class AgentDist {
  private built?: Promise<Built>;
  private failed?: { at: number; err: unknown };
  private installSh?: Buffer;

  constructor(private readonly o: AgentDistOptions) {}

  /** The bundle of this version: found (and checked) in the cache, or built once. */
  bundle(): Promise<Built> {
    if (this.failed && Date.now() - this.failed.at < (this.o.retryAfterMs ?? 60_000)) return Promise.reject(this.failed.err);
    this.built ??= this.load().then((b) => { this.failed = undefined; return b; }, (err: unknown) => {
      this.built = undefined;
      this.failed = { at: Date.now(), err };
      throw err;
    });
    return this.built;
  }

  private async load(): Promise<Built> {
    const file = join(this.o.dir, `trellis-${TRELLIS_VERSION}.tgz`);
    const side = `${file}.sha256`;
    if (existsSync(file) && existsSync(side)) {
      const want = readFileSync(side, 'utf8').slice(0, 64);
      const got = await sha256File(file);
      if (got === want) return { file, sha256: got };
      this.o.log.warn({ file }, 'cached agent bundle does not match its SHA-256: rebuilding it');
    }
    mkdirSync(this.o.dir, { recursive: true, mode: 0o700 });
    rmSync(file, { force: true });
    rmSync(side, { force: true });
    const t0 = Date.now();
    const build = this.o.build ?? (async (out: string) => {
      const { writeBundle } = await import('../../cli/bundle.js'); // the same code as `trellis agent bundle`
      return writeBundle({ out });
    });
    const r = await build(file); // writes FILE, then FILE.sha256 last: a crash leaves no sidecar, so a rebuild
    this.o.log.info({ file, sha256: r.sha256, ms: Date.now() - t0 }, 'agent bundle built');
    return { file, sha256: r.sha256 };
  }

  route(): Route {
    return async (req: IncomingMessage, res: ServerResponse) => {
      const path = (req.url ?? '').split('?')[0];
      if (!path?.startsWith('/agent/')) return false;
      if (req.method !== 'GET' && req.method !== 'HEAD') return false;
      switch (path) {
        case '/agent/ca.pem': {
          const { chain, fingerprint } = this.o.ca();
          const first = chain.findIndex((c) => fingerprintSha256(c) === fingerprint);
          sendText(res, req, 'application/x-pem-file', (first > 0 ? [chain[first]!, ...chain.filter((_, i) => i !== first)] : chain).join(''));
          return true;
        }
        case '/agent/install.sh':
          this.installSh ??= readFileSync(INSTALL_SH);
          sendText(res, req, 'text/x-shellscript; charset=utf-8', this.installSh);
          return true;
        case '/agent/bundle.tgz.sha256':
        case '/agent/bundle.tgz': {
          let b: Built;
          try {
            b = await this.bundle();
          } catch (err) {
            this.o.log.error({ err: errorMessage(err) }, 'cannot build the agent bundle');
            sendText(res, req, 'text/plain', 'the hub cannot build the agent bundle; see its log\n', 503);
            return true;
          }
          if (path.endsWith('.sha256')) {
            sendText(res, req, 'text/plain', `${b.sha256}  bundle.tgz\n`);
            return true;
          }
          const size = statSync(b.file).size;
          res.writeHead(200, { 'content-type': 'application/gzip', 'content-length': size, 'cache-control': 'no-store', 'x-content-sha256': b.sha256 });
          if (req.method === 'HEAD') { res.end(); return true; }
          await pipeline(createReadStream(b.file, { start: 0, end: Math.max(0, size - 1) }), res).catch(() => res.destroy());
          return true;
        }
        default:
          return false;
      }
    };
  }
}

function sendText(res: ServerResponse, req: IncomingMessage, type: string, body: string | Buffer, status = 200): void {
  const buf = typeof body === 'string' ? Buffer.from(body) : body;
  res.writeHead(status, { 'content-type': type, 'content-length': buf.length, 'cache-control': 'no-store' });
  res.end(req.method === 'HEAD' ? undefined : buf);
}
