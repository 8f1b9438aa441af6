/** AdminAudit: the audit history, then (with follow) new records live until the client cancels. */
import type * as grpc from '@grpc/grpc-js';
import { v1 } from '../../common/proto.js';
import { TrellisError } from '../../common/errors.js';
import { serverStream, type WrapDeps } from './wrap.js';
import { checkString } from '../validate.js';
import { matchesAudit, type AuditQuery, type AuditRecord } from '../audit/index.js';
import type { HubComponents } from '../components.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

const S = '/trellis.v1';
/** A follower whose client stops reading is cut after this many records queued in a row. */
const MAX_UNREAD = 10_000;

function wire(r: AuditRecord): T.AuditRecord {
  return {
    id: r.id, timeMs: r.timeMs, actor: r.actor, tenant: r.tenant, method: r.method, target: r.target,
    result: r.result, sourceAddress: r.sourceAddress, detail: r.detail,
  };
}

export function addAuditServices(server: grpc.Server, c: HubComponents, deps: WrapDeps): void {
  server.addService(v1.AdminAudit.service, {
    ListAudit: serverStream<T.ListAuditRequest__Output, T.AuditRecord>(deps, `${S}.AdminAudit/ListAudit`, async (req, ctx, write) => {
      const q: AuditQuery = {
        sinceMs: Math.max(0, Number(req.sinceMs) || 0), limit: req.limit,
        actor: checkString(req.actor, 'actor', 256), methodContains: checkString(req.methodContains, 'method_contains', 256),
      };
      if (!req.follow) {
        for (const r of await c.audit.query(q)) write(wire(r));
        return;
      }
      // Follow from before the history is read, so nothing falls between the two; records
      // that arrive meanwhile wait in `live` and are sent after the history, minus repeats.
      let live: AuditRecord[] | undefined = [];
      let unread = 0;
      let stop!: (err?: Error) => void;
      const ended = new Promise<void>((resolve, reject) => { stop = (err) => (err ? reject(err) : resolve()); });
      ended.catch(() => undefined); // awaited below; this only keeps an early rejection from being "unhandled"
      const send = (r: AuditRecord) => {
        unread = write(wire(r)) ? 0 : unread + 1;
        if (unread > MAX_UNREAD) stop(new TrellisError('TRELLIS_E_UNAVAILABLE', 'this audit stream fell too far behind; follow again with --since'));
      };
      const onAbort = () => stop();
      const unsubscribe = c.audit.follow((r) => {
        if (live) live.push(r);
        else if (matchesAudit(r, q)) send(r);
      }, () => stop());
      ctx.signal.addEventListener('abort', onAbort, { once: true });
      try {
        const history = await c.audit.query(q);
        for (const r of history) send(r);
        const sent = new Set(history.map((r) => r.id));
        const pending = live;
        live = undefined;
        for (const r of pending) if (!sent.has(r.id) && matchesAudit(r, q)) send(r);
        if (!ctx.signal.aborted) await ended;
      } finally {
        unsubscribe();
        ctx.signal.removeEventListener('abort', onAbort);
      }
    }),
  });
}
