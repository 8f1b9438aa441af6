/**
 * What a caller with no verified credential may cost the admin port (a grpc-js server
 * interceptor, ahead of every handler):
 *
 *  - Before a single byte of a request body is read, the call's credential (metadata) is checked.
 *    A verified call may send up to `maxMessageBytes` (pack installs); every other one (Login,
 *    Enroll, GetVersion, a bad or missing credential) may send `preAuthMaxMessageBytes` only: a
 *    bigger message is refused with RESOURCE_EXHAUSTED from its 5-byte length prefix, before the
 *    hub buffers it. grpc-js reads a request only when the handler asks for it, so holding the
 *    metadata here holds the body in the socket (bounded by the HTTP/2 window).
 *  - Unverified calls in progress are bounded in all and per source address; past either, the
 *    call is refused at once (TRELLIS_E_RATE_LIMITED). Such a call must send its request within
 *    `requestTimeoutMs` (a slow sender cannot hold a slot).
 *  - A refused call is audited like any refusal, into the refusal throttle (hub/audit/throttle.ts:
 *    identical ones once a window plus a count); its log line is counted (RefusalLog, refusals.ts).
 *
 * The server's own `grpc.max_receive_message_length` is the pre-auth limit; only a verified call
 * has it raised, by setting the limit of that one call's decoder. That reaches into grpc-js
 * internals (no per-call option exists), guarded: if they change, the raise fails and the call
 * keeps the small limit (large authenticated messages are refused; nothing is accepted that
 * should not be), with a warning in the log.
 */
import * as grpc from '@grpc/grpc-js';
import { requirementFor } from '../authz/index.js';
import { TrellisError } from '../../common/errors.js';
import { toStatus } from '../../common/grpc-errors.js';
import type { Logger } from '../../common/log.js';
import type { Auth } from '../auth/index.js';
import { sourceKey } from '../auth/index.js';
import { credentialOf } from './wrap.js';
import type { RefusalLog } from './refusals.js';
import type { AuditSink } from '../audit/types.js';

export interface PreAuthOptions {
  /** Largest message of a call without a verified credential, in bytes. */
  preAuthMaxMessageBytes: number;
  /** Largest message of a call with a verified credential, in bytes. */
  maxMessageBytes: number;
  /** Unverified calls in progress at once, in all. */
  maxCalls: number;
  /** Unverified calls in progress at once from one source address. */
  maxCallsPerAddress: number;
  /** Time an unverified call has to send its request. */
  requestTimeoutMs: number;
}

const NO_CREDENTIALS = new Set(['open', 'login', 'join-token']);

/** The call grpc-js built from the HTTP/2 stream, under any interceptors in front of ours. */
function baseCall(call: unknown): { decoder?: { maxReadMessageLength?: unknown }; maxReceiveMessageSize?: unknown } | undefined {
  let c = call as { nextCall?: unknown; decoder?: { maxReadMessageLength?: unknown } } | undefined;
  for (let i = 0; c && i < 10; i++) {
    if (c.decoder && typeof c.decoder.maxReadMessageLength === 'number') return c as ReturnType<typeof baseCall>;
    c = c.nextCall as typeof c;
  }
  return undefined;
}

/** Raises the receive limit of one call; false when grpc-js's internals are not as expected. */
export function raiseReceiveLimit(call: unknown, bytes: number): boolean {
  const b = baseCall(call);
  if (!b?.decoder) return false;
  b.decoder.maxReadMessageLength = bytes;
  if (typeof b.maxReceiveMessageSize === 'number') b.maxReceiveMessageSize = bytes; // the decompressed size
  return true;
}

export class PreAuthGate {
  private inFlight = 0;
  private readonly bySource = new Map<string, number>();
  private warnedInternals = false;

  constructor(private readonly deps: { auth: Auth; log: Logger; refusals: RefusalLog; audit?: AuditSink }, private readonly opts: PreAuthOptions) {}

  /** Server options for the admin port: the pre-auth message limit is the server's. */
  serverOptions(): grpc.ServerOptions {
    return { 'grpc.max_receive_message_length': this.opts.preAuthMaxMessageBytes, interceptors: [this.interceptor] };
  }

  /** Unverified calls in progress (tests). */
  get pending(): number { return this.inFlight; }

  readonly interceptor: grpc.ServerInterceptor = (method, call) => {
    const needsCredential = !NO_CREDENTIALS.has(requirementFor(method.path).kind);
    const source = sourceKey(call.getPeer());
    let release: (() => void) | undefined;
    let timer: NodeJS.Timeout | undefined;
    let ended = false;
    const done = () => { ended = true; clearTimeout(timer); timer = undefined; release?.(); release = undefined; };
    const responder: grpc.Responder = {
      start: (next) => {
        next({
          onReceiveMetadata: (md, nextMd) => {
            void this.admit(call, md, needsCredential, source, method.path).then((r) => {
              if (ended) { r.release?.(); return; } // cancelled while its credential was checked
              if (r.refuse) { call.sendStatus(r.refuse); return; }
              release = r.release;
              if (release) {
                timer = setTimeout(() => {
                  done();
                  call.sendStatus(toStatus(new TrellisError('TRELLIS_E_TIMEOUT', `the request was not received within ${this.opts.requestTimeoutMs} ms`), '-'));
                }, this.opts.requestTimeoutMs);
              }
              nextMd(md);
            }).catch((err: unknown) => {
              this.deps.log.error({ err, method: method.path }, 'pre-auth check failed');
              if (!ended) call.sendStatus(toStatus(err, '-'));
            });
          },
          onReceiveMessage: (msg, nextMsg) => { clearTimeout(timer); timer = undefined; nextMsg(msg); },
          onCancel: () => done(),
        });
      },
      sendStatus: (status, next) => { done(); next(status); },
    };
    return new grpc.ServerInterceptingCall(call, responder);
  };

  /** Verified → raise the limit; unverified → take a slot (or refuse). */
  private async admit(call: grpc.ServerInterceptingCallInterface, md: grpc.Metadata, needsCredential: boolean, source: string, path: string):
    Promise<{ refuse?: ReturnType<typeof toStatus>; release?: () => void }> {
    if (needsCredential) {
      const verified = await this.deps.auth.authenticate(credentialOf(md), { peek: true }).then(() => true, () => false);
      if (verified) {
        if (!raiseReceiveLimit(call, this.opts.maxMessageBytes) && !this.warnedInternals) {
          this.warnedInternals = true;
          this.deps.log.warn({ limit: this.opts.preAuthMaxMessageBytes }, 'cannot raise the message limit of authenticated admin calls (grpc-js internals changed): messages over the pre-auth limit are refused');
        }
        return {};
      }
      // An unverified call goes on with the small limit; its handler refuses it (and audits that).
    }
    const mine = this.bySource.get(source) ?? 0;
    if (this.inFlight >= this.opts.maxCalls || mine >= this.opts.maxCallsPerAddress) {
      const why = 'too many unauthenticated calls in progress: retry in a moment';
      this.deps.refusals.note(path, call.getPeer(), why);
      this.deps.audit?.record({ timeMs: Date.now(), actor: '-', tenant: '', method: path, target: '', result: 'denied', sourceAddress: call.getPeer(), detail: why });
      return { refuse: toStatus(new TrellisError('TRELLIS_E_RATE_LIMITED', why), '-') };
    }
    this.inFlight++;
    this.bySource.set(source, mine + 1);
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.inFlight--;
        const n = (this.bySource.get(source) ?? 1) - 1;
        if (n <= 0) this.bySource.delete(source); else this.bySource.set(source, n);
      },
    };
  }
}
