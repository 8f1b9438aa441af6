/**
 * The floor of event_to_action_p99_ms (forked by bench/automation.ts): the same pipeline with
 * nothing of Trellis in it, to tell what this machine allows from what Trellis costs. A plain
 * grpc-js mTLS server (the hub's certificate and client CA, the hub's server options) on
 * AgentChannel.Connect that, for every event of a batch, turns its payload into an http
 * ActionRequest, appends one JSON line per request to a history file opened O_DSYNC with group
 * commit (one write in flight; the next takes every line queued meanwhile), sends the request
 * once its line is on disk, and acknowledges batches as the hub does an agent listing
 * "event_ack_through" (several at once: hub/grpc/acks.ts); results (their output riding with
 * them, as the agent sends it) are appended too, riding on the next write (forced within 20 ms),
 * and acknowledged once written. No rules, templates,
 * secrets, state, metrics or logs: what the hub's durability and transport alone cost.
 *
 * Usage (forked, with IPC): e2a-floor-hub HUB_DATA_DIR WORK_DIR; sends `{ listening: port }`.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { constants as fsConstants, readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { v1 } from '../common/proto.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';
import { hubPaths } from '../hub/paths.js';
import { SERVER_OPTIONS } from '../common/grpc-options.js';
import { EVENT_ACK_BATCHES, EVENT_ACK_DELAY_MS } from '../common/features.js';

const [dataDir, workDir] = process.argv.slice(2);
if (!dataDir || !workDir) { process.stderr.write('usage: e2a-floor-hub HUB_DATA_DIR WORK_DIR\n'); process.exit(2); }

/** Group commit on one O_DSYNC file: `commit()` resolves once every line queued before it is on disk. */
class GroupLog {
  private queued: string[] = [];
  private waiters: Array<() => void> = [];
  private writing = false;
  constructor(private readonly fh: FileHandle) {}
  append(line: string): void { this.queued.push(line); }
  /** Resolves after the next write, forcing one within 20 ms if nothing else does (the hub's result acknowledgements). */
  written(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.riders.push(resolve);
      if (!this.timer) this.timer = setTimeout(() => { this.timer = undefined; void this.commit(); }, 20);
    });
  }
  private riders: Array<() => void> = [];
  private timer?: NodeJS.Timeout;
  commit(): Promise<void> {
    return new Promise<void>((resolve) => { this.waiters.push(resolve); if (!this.writing) void this.write(); });
  }
  private async write(): Promise<void> {
    this.writing = true;
    while (this.waiters.length > 0) {
      const lines = this.queued, waiters = this.waiters.concat(this.riders);
      this.queued = []; this.waiters = []; this.riders = [];
      const b = Buffer.from(lines.join(''), 'utf8');
      let off = 0;
      while (off < b.length) off += (await this.fh.write(b, off, b.length - off)).bytesWritten;
      for (const w of waiters) w();
    }
    this.writing = false;
  }
}

async function main(): Promise<void> {
  const flags = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_APPEND | (fsConstants.O_DSYNC ?? 0);
  const log = new GroupLog(await open(join(workDir!, 'floor-history.jsonl'), flags, 0o600));
  let next = 0;
  const p = hubPaths(dataDir!);
  const server = new grpc.Server({ ...SERVER_OPTIONS });
  server.addService(v1.AgentChannel.service, {
    Connect: (call: grpc.ServerDuplexStream<T.AgentMessage__Output, T.HubMessage>) => {
      // Event acks as the hub sends them to an agent with "event_ack_through" (hub/grpc/acks.ts):
      // one for EVENT_ACK_BATCHES batches, or EVENT_ACK_DELAY_MS after the first (commits end in order).
      let dueSeq = 0, dueBatches = 0;
      let ackTimer: NodeJS.Timeout | undefined;
      const sendAck = () => { clearTimeout(ackTimer); ackTimer = undefined; if (dueBatches === 0) return; dueBatches = 0; call.write({ eventAck: { seq: dueSeq } }); };
      const ackThrough = (seq: number) => {
        dueSeq = seq;
        if (++dueBatches >= EVENT_ACK_BATCHES) sendAck();
        else ackTimer ??= setTimeout(sendAck, EVENT_ACK_DELAY_MS);
      };
      call.on('data', (m: T.AgentMessage__Output) => {
        switch (m.msg) {
          case 'hello': call.write({ welcome: { agentId: 'floor', tenant: 'default', heartbeatIntervalMs: 10_000 } }); break;
          case 'events': {
            const batch = m.events!;
            const requests: T.HubMessage[] = [];
            for (const ev of batch.events) {
              const pl = JSON.parse(ev.payloadJson.toString('utf8')) as { n: string; t: string; port: string };
              const executionId = `floor-${++next}`;
              const url = `http://127.0.0.1:${pl.port}/${pl.n}/${pl.t}`;
              log.append(JSON.stringify({ k: 's', r: { id: executionId, action: 'bench.ping', status: 'scheduled', event: ev.id, parameters: pl } }) + '\n');
              requests.push({ action: { executionId, action: 'bench.ping', runner: 'http', timeoutMs: 10_000, http: { method: 'GET', url } } });
            }
            void log.commit().then(() => {
              for (const r of requests) call.write(r);
              ackThrough(Number(batch.seq));
            });
            break;
          }
          case 'output':
            log.append(JSON.stringify({ k: 'o', id: m.output!.executionId, d: m.output!.data.toString('base64') }) + '\n');
            break;
          case 'result': {
            const r = m.result!;
            for (const o of r.output) log.append(JSON.stringify({ k: 'o', id: o.executionId, d: o.data.toString('base64') }) + '\n');
            log.append(JSON.stringify({ k: 's', r: { id: r.executionId, status: r.status, exitCode: r.exitCode } }) + '\n');
            void log.written().then(() => call.write({ resultAck: { executionIds: [r.executionId] } }));
            break;
          }
          default: break;
        }
      });
      call.on('end', () => call.end());
      call.on('error', () => undefined);
    },
    Renew: (_call: unknown, cb: grpc.sendUnaryData<unknown>) => cb({ code: grpc.status.UNIMPLEMENTED, details: 'floor' }),
  });
  const creds = grpc.ServerCredentials.createSsl(readFileSync(p.caCert), [{ private_key: readFileSync(p.hubKey), cert_chain: readFileSync(p.hubCert) }], true);
  server.bindAsync('127.0.0.1:0', creds, (err, port) => {
    if (err) { process.stderr.write(`floor hub: ${err.message}\n`); process.exit(1); }
    process.send?.({ listening: port });
  });
  process.on('disconnect', () => process.exit(0));
  process.on('SIGTERM', () => process.exit(0)); // a clean exit: --cpu-prof (TRELLIS_BENCH_HUB_NODE_ARGS) writes its profile
}

void main().catch((err) => { process.stderr.write(`floor hub: ${(err as Error).stack ?? err}\n`); process.exit(1); });
