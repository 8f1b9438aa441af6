/**
 * The raw baseline of bench/storm.ts (forked): a plain grpc-js mTLS server, the hub's own
 * certificate and client CA, the hub's server options, and an AgentChannel.Connect that answers
 * the first message and then holds the stream idle. Nothing else: what a connected agent costs
 * in grpc-js + TLS + HTTP/2 alone (raw_conn_kb_per_agent).
 */
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { v1 } from '../common/proto.js';
import { hubPaths } from '../hub/paths.js';
import { SERVER_OPTIONS } from '../common/grpc-options.js';

const [dataDir, portArg] = process.argv.slice(2);
if (!dataDir || !portArg) { process.stderr.write('usage: storm-raw-server DATA PORT\n'); process.exit(2); }
const p = hubPaths(dataDir);
const server = new grpc.Server({ ...SERVER_OPTIONS });
const streams = new Set<unknown>();
server.addService(v1.AgentChannel.service, {
  Connect: (call: grpc.ServerDuplexStream<unknown, unknown>) => {
    streams.add(call);
    let answered = false;
    call.on('data', () => { if (!answered) { answered = true; call.write({ welcome: { agentId: 'raw', tenant: 'default', heartbeatIntervalMs: 10_000 } }); } });
    const done = () => streams.delete(call);
    call.on('end', () => { done(); call.end(); });
    call.on('cancelled', done);
    call.on('error', done);
  },
  Renew: (_call: unknown, cb: grpc.sendUnaryData<unknown>) => cb({ code: grpc.status.UNIMPLEMENTED, details: 'raw baseline' }),
});
const creds = grpc.ServerCredentials.createSsl(readFileSync(p.caCert), [{ private_key: readFileSync(p.hubKey), cert_chain: readFileSync(p.hubCert) }], true);
server.bindAsync(`127.0.0.1:${portArg}`, creds, (err, port) => {
  if (err) { process.stderr.write(`raw server: ${err.message}\n`); process.exit(1); }
  process.send?.({ listening: port });
});
process.on('disconnect', () => process.exit(0));
