/**
 * What the hub acknowledges on one agent stream: event batches (EventAcks) and action results
 * (ResultAcks, at the end).
 *
 * The EventAcks: A batch is acknowledged once what its events caused
 * (executions) is on disk: a hub crash before that leaves it unacknowledged, and the agent's
 * outbox sends it again.
 *
 * With an agent that listed EVENT_ACK_THROUGH in its Hello (the hub lists it in its Welcome),
 * one EventAck acknowledges every batch of the stream up to and including its seq: the hub
 * acknowledges the batches in the order they came, as soon as every earlier one settled too,
 * EVENT_ACK_BATCHES of them at once or within EVENT_ACK_DELAY_MS of the first — at 1,000
 * one-event batches/s, ~125 messages instead of 1,000, and as many fewer for the agent to handle.
 * Otherwise every batch gets its own EventAck when it settles (the first protocol).
 */
import { EVENT_ACK_BATCHES, EVENT_ACK_DELAY_MS } from '../../common/features.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

interface Batch { seq: number; events: number; refused: number; types: string[]; settled: boolean }

/** At most this many refused types are named in one acknowledgement (as for one batch). */
const MAX_TYPES = 8;

export class EventAcks {
  private readonly queue: Batch[] = [];
  private head = 0;
  /** Settled batches not acknowledged yet (through mode), merged. */
  private due: Batch | undefined;
  private dueBatches = 0;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  /**
   * `through`: the agent listed EVENT_ACK_THROUGH. `send` writes one EventAck; `acked(n)` counts
   * the events it acknowledged.
   */
  constructor(private readonly through: boolean, private readonly send: (ack: T.EventAck) => void, private readonly acked: (events: number) => void) {}

  /** A batch received: acknowledged once `settled` resolves (at once without one). */
  add(seq: number, events: number, refused: number, refusedTypes: string[], settled?: Promise<unknown>): void {
    if (!this.through) {
      const ack = () => { if (this.closed) return; this.acked(events); this.send({ seq, refused, refusedTypes }); };
      if (settled) void settled.then(ack);
      else ack();
      return;
    }
    const b: Batch = { seq, events, refused, types: refusedTypes, settled: !settled };
    this.queue.push(b);
    if (settled) void settled.then(() => { b.settled = true; this.drain(); });
    else this.drain();
  }

  /** No acknowledgement goes after this (the stream ended). */
  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Takes the settled batches at the head of the queue into the acknowledgement due. */
  private drain(): void {
    if (this.closed) return;
    while (this.head < this.queue.length && this.queue[this.head]!.settled) {
      const b = this.queue[this.head++]!;
      if (!this.due) this.due = { ...b, types: [...b.types] };
      else {
        this.due.seq = b.seq;
        this.due.events += b.events;
        this.due.refused += b.refused;
        for (const t of b.types) if (this.due.types.length < MAX_TYPES && !this.due.types.includes(t)) this.due.types.push(t);
      }
      this.dueBatches++;
    }
    if (this.head > 64 && this.head * 2 > this.queue.length) { this.queue.splice(0, this.head); this.head = 0; }
    if (!this.due) return;
    if (this.dueBatches >= EVENT_ACK_BATCHES) this.flush();
    else this.timer ??= setTimeout(() => this.flush(), EVENT_ACK_DELAY_MS);
  }

  private flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const d = this.due;
    this.due = undefined;
    this.dueBatches = 0;
    if (!d || this.closed) return;
    this.acked(d.events);
    this.send({ seq: d.seq, refused: d.refused, refusedTypes: d.types });
  }
}

/** Results on disk wait at most this long for the ResultAck that carries them (one message for several). */
export const RESULT_ACK_DELAY_MS = 5;
/** ...or go at once when this many wait. */
export const RESULT_ACK_IDS = 64;

/**
 * The ResultAcks of one agent stream. A result is acknowledged once its own history write is on
 * disk — the promise `add` takes, asked for when the result was recorded, not one asked for
 * earlier: a result recorded while the write covering an earlier one is in flight is not in that
 * write, and a hub killed before the next would lose it although the agent was told to drop it.
 * Ids on disk are sent together, RESULT_ACK_IDS at once or within RESULT_ACK_DELAY_MS of the first.
 */
export class ResultAcks {
  private ready: string[] = [];
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(private readonly send: (executionIds: string[]) => void) {}

  add(executionId: string, written: Promise<unknown>): void {
    void written.then(() => {
      if (this.closed) return;
      this.ready.push(executionId);
      if (this.ready.length >= RESULT_ACK_IDS) this.flush();
      else this.timer ??= setTimeout(() => this.flush(), RESULT_ACK_DELAY_MS);
    });
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const ids = this.ready;
    this.ready = [];
    if (ids.length > 0 && !this.closed) this.send(ids);
  }
}
