/**
 * Fan-out of execution updates, and the two ways of watching without missing or repeating any:
 * - `follow` one execution that may be half done: subscribe first (buffering), then replay the
 *   record and the stored output, then release the buffer minus what the replay covered (state
 *   changes by version, output by byte offset);
 * - `watch` the executions a request is about to create: subscribe before the request, keep
 *   only the updates of the executions it returns.
 * Both end when every watched execution is final, when the caller's signal aborts (resolving),
 * or when the hub closes (rejecting with TRELLIS_E_SHUTDOWN).
 */
import { TrellisError } from '../../common/errors.js';
import { FINAL_STATUSES } from '../../common/automation/types.js';
import type { Logger } from '../../common/log.js';
import type { Chunk } from './history.js';
import type { ExecutionRecord, ExecutionUpdate } from './types.js';

/** Per update: the execution's state version, or the output chunk's byte offset. */
export type Meta = { ver?: number; offset?: number };
type Listener = (u: ExecutionUpdate, meta: Meta) => void;

const idOf = (u: ExecutionUpdate) => (u.kind === 'state' ? u.record.id : u.executionId);
const isFinal = (r: ExecutionRecord) => FINAL_STATUSES.has(r.status);

/** What `follow` reads from the executions: the record now (with its version) and the stored output. */
export interface Snapshot { record: (id: string) => { rec: ExecutionRecord; ver: number }; output: (id: string) => Promise<Chunk[]> }

export class Updates {
  private readonly listeners = new Set<Listener>();
  private readonly closers = new Set<(err: Error) => void>();
  private closed = false;

  constructor(private readonly log: Logger) {}

  /** Whether anyone listens: a caller may skip building an update nobody reads. */
  get listened(): boolean { return this.listeners.size > 0; }

  emit(u: ExecutionUpdate, meta: Meta = {}): void {
    for (const l of this.listeners) {
      try { l(u, meta); } catch (err) { this.log.error({ err }, 'execution subscriber failed'); }
    }
  }

  subscribe(fn: (u: ExecutionUpdate) => void): () => void {
    const l: Listener = (u) => fn(u);
    this.listeners.add(l);
    return () => { this.listeners.delete(l); };
  }

  /** Waits for `arm(done)` to call done, or the signal, or the close (rejects). */
  private wait<R>(arm: (done: (r: R) => void) => void, onAbort: () => R, signal?: AbortSignal): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      if (this.closed) { reject(shutdown()); return; }
      const abort = () => resolve(onAbort());
      const cleanup = () => { this.closers.delete(close); signal?.removeEventListener('abort', abort); };
      const close = (err: Error) => { cleanup(); reject(err); };
      this.closers.add(close);
      if (signal?.aborted) { cleanup(); resolve(onAbort()); return; }
      signal?.addEventListener('abort', abort, { once: true });
      arm((r) => { cleanup(); resolve(r); });
    });
  }

  async follow(id: string, snap: Snapshot, fn: (u: ExecutionUpdate) => void, signal?: AbortSignal): Promise<ExecutionRecord> {
    const buffered: [ExecutionUpdate, Meta][] = [];
    let replay: { ver: number; end: number } | undefined;
    let done: ((r: ExecutionRecord) => void) | undefined;
    let last: ExecutionRecord | undefined;
    const deliver = (u: ExecutionUpdate, m: Meta): void => {
      if (u.kind === 'state') {
        if ((m.ver ?? 0) <= replay!.ver) return;
        fn(u);
        last = u.record;
        if (isFinal(u.record)) done?.(u.record);
      } else if ((m.offset ?? 0) >= replay!.end) fn(u);
    };
    const l: Listener = (u, m) => {
      if (idOf(u) !== id) return;
      if (replay) deliver(u, m); else buffered.push([u, m]);
    };
    this.listeners.add(l);
    try {
      const chunks = await snap.output(id);
      const { rec, ver } = snap.record(id);
      last = { ...rec };
      fn({ kind: 'state', record: { ...rec } });
      let end = 0;
      for (const c of chunks) {
        fn({ kind: 'output', tenant: rec.tenant, executionId: id, agentId: rec.agentId, stream: c.stream, data: c.data, offset: c.offset });
        end = Math.max(end, c.offset + c.data.length);
      }
      replay = { ver, end };
      if (isFinal(rec)) return last;
      return await this.wait<ExecutionRecord>((resolve) => {
        done = resolve;
        for (const [u, m] of buffered.splice(0)) deliver(u, m);
      }, () => last!, signal);
    } finally {
      this.listeners.delete(l);
    }
  }

  async watch(start: () => Promise<ExecutionRecord[]>, current: (id: string) => ExecutionRecord | undefined, fn: (u: ExecutionUpdate) => void, o: { follow: boolean; signal?: AbortSignal }): Promise<ExecutionRecord[]> {
    const buffered: ExecutionUpdate[] = [];
    let ids: Set<string> | undefined;
    const final = new Map<string, ExecutionRecord>();
    let done: ((v: void) => void) | undefined;
    const deliver = (u: ExecutionUpdate) => {
      const id = idOf(u);
      if (!ids!.has(id) || final.has(id)) return;
      fn(u);
      if (u.kind === 'state' && isFinal(u.record)) {
        final.set(id, u.record);
        if (final.size === ids!.size) done?.();
      }
    };
    const l: Listener = (u) => { if (ids) deliver(u); else buffered.push(u); };
    if (o.follow) this.listeners.add(l);
    try {
      const recs = await start();
      ids = new Set(recs.map((r) => r.id));
      if (!o.follow) { for (const r of recs) fn({ kind: 'state', record: r }); return recs; }
      // Executions a dedup key returned were created earlier: their current state first.
      const seen = new Set(buffered.map(idOf));
      for (const r of recs) if (!seen.has(r.id)) buffered.unshift({ kind: 'state', record: { ...(current(r.id) ?? r) } });
      for (const u of buffered.splice(0)) deliver(u);
      if (final.size < ids.size) await this.wait<void>((resolve) => { done = resolve; }, () => undefined, o.signal);
      return recs.map((r) => final.get(r.id) ?? { ...(current(r.id) ?? r) });
    } finally {
      this.listeners.delete(l);
    }
  }

  /** Ends every follower and watcher with TRELLIS_E_SHUTDOWN. */
  close(): void {
    this.closed = true;
    const err = shutdown();
    for (const c of [...this.closers]) c(err);
    this.closers.clear();
  }
}

function shutdown(): TrellisError {
  return new TrellisError('TRELLIS_E_SHUTDOWN', 'the hub is shutting down; follow the execution again once it is back (`trellis executions follow ID`)');
}
