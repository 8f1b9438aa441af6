/**
 * The agent side of the event_to_action floor (bench/e2a-floor-hub.ts): nothing of Trellis's
 * agent, only what its pipeline must do. An event is appended to an outbox file (one write per
 * publish, fdatasync every 100 ms, as agent/outbox does) and sent at once as its own EventBatch
 * on one grpc-js mTLS stream; an ActionRequest is one GET with a keep-alive http.Agent (as the
 * http runner's pool), then the result with the response head as its output (one message, as
 * the agent sends a quick action's output to a hub listing "result_output").
 */
import { closeSync, constants as fsConstants, fdatasync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import http from 'node:http';
import * as grpc from '@grpc/grpc-js';
import { v1 } from '../common/proto.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';
import { secureChannel } from '../common/grpc-tls.js';

export class FloorAgent {
  private readonly fd: number;
  private readonly syncTimer: NodeJS.Timeout;
  private readonly pool = new http.Agent({ keepAlive: true, maxSockets: 64, scheduling: 'lifo' });
  private readonly client: grpc.Client;
  private readonly stream: grpc.ClientDuplexStream<T.AgentMessage, T.HubMessage__Output>;
  private seq = 0;
  private id = 0;
  readonly welcomed: Promise<void>;

  constructor(o: { dataDir: string; target: string; caPem: string; keyPem: string; certPem: string }) {
    this.fd = openSync(join(o.dataDir, 'floor-outbox.log'), fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_APPEND, 0o600);
    this.syncTimer = setInterval(() => fdatasync(this.fd, () => undefined), 100);
    const tls = secureChannel(o.target, o.caPem, o.keyPem, o.certPem);
    this.client = new v1.AgentChannel(o.target, tls.creds, tls.options);
    this.stream = (this.client as unknown as { Connect(): grpc.ClientDuplexStream<T.AgentMessage, T.HubMessage__Output> }).Connect();
    this.welcomed = new Promise<void>((resolve, reject) => {
      this.stream.on('data', (m: T.HubMessage__Output) => {
        if (m.msg === 'welcome') resolve();
        else if (m.msg === 'action') this.run(m.action!);
      });
      this.stream.on('error', (err) => reject(err));
    });
    this.stream.write({ hello: { facts: { hostname: 'floor' } } });
  }

  publishEvent(type: string, payload: Record<string, unknown>): { refused: number } {
    const ev: T.Event = { id: `floor-ev-${++this.id}`, type, payloadJson: Buffer.from(JSON.stringify(payload)), timeMs: Date.now() };
    writeSync(this.fd, JSON.stringify({ id: ev.id, type, payload }) + '\n');
    this.stream.write({ events: { seq: ++this.seq, events: [ev] } });
    return { refused: 0 };
  }

  private run(req: T.ActionRequest__Output): void {
    const startedMs = Date.now();
    let output: T.ActionOutput[] = [];
    // The output rides with the result, as the agent's does with a hub listing "result_output".
    const done = (status: string, exitCode: number, error = '') => this.stream.write({ result: { executionId: req.executionId, status, exitCode, error, startedMs, finishedMs: Date.now(), output } });
    const r = http.request(req.http!.url, { method: req.http!.method || 'GET', agent: this.pool }, (res) => {
      const head = `HTTP/${res.httpVersion} ${res.statusCode} ${res.statusMessage}\r\n${Object.entries(res.headers).map(([k, v]) => `${k}: ${String(v)}`).join('\r\n')}\r\n\r\n`;
      output = [{ executionId: req.executionId, stream: 'STDERR', data: Buffer.from(head), seq: 1 }];
      res.resume();
      res.on('end', () => done(res.statusCode! >= 200 && res.statusCode! < 300 ? 'succeeded' : 'failed', res.statusCode! >= 200 && res.statusCode! < 300 ? 0 : res.statusCode!));
    });
    r.on('error', (err) => done('error', -1, err.message));
    r.end();
  }

  close(): void {
    clearInterval(this.syncTimer);
    this.stream.end();
    this.client.close();
    this.pool.destroy();
    closeSync(this.fd);
  }
}
