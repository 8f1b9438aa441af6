/**
 * gRPC keepalive as configured (common/grpc-options.ts), asserted from the exported constants
 * rather than hard-coded numbers: the agent's channel carries CLIENT_OPTIONS' keepalive; the
 * hub's ping policy accepts the client's ping interval (else the hub answers GOAWAY
 * too_many_pings and every idle agent reconnects in a loop); and a real agent whose link to the
 * hub goes silent (a relay that drops every byte, both ways, without closing anything) notices
 * through keepalive alone, between keepalive_timeout and keepalive_time + keepalive_timeout
 * after the link died.
 */
import t from 'tap';
import * as net from 'node:net';
import { startHub, waitFor } from './helpers/hub.js';
import { CLIENT_OPTIONS, SERVER_OPTIONS } from '../common/grpc-options.js';
import { secureChannel } from '../common/grpc-tls.js';
import { AGENT_CHANNEL_OPTIONS, type ChannelState } from '../agent/channel.js';
import { agentServerOptions } from '../hub/grpc/agent-channel.js';
import { validateConfig } from '../hub/config.js';

/** The agent's stream runs on AGENT_CHANNEL_OPTIONS (over CLIENT_OPTIONS). */
const KEEPALIVE_TIME = AGENT_CHANNEL_OPTIONS['grpc.keepalive_time_ms'];
const KEEPALIVE_TIMEOUT = AGENT_CHANNEL_OPTIONS['grpc.keepalive_timeout_ms'];

/** A TCP relay that can go silent: `silence()` drops every byte both ways and keeps the sockets open. */
async function relay(port: number): Promise<{ port: number; silence(): void; close(): void }> {
  let silent = false;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((inbound) => {
    if (silent) { inbound.destroy(); return; }
    const outbound = net.connect({ host: '127.0.0.1', port });
    for (const s of [inbound, outbound]) { sockets.add(s); s.on('close', () => sockets.delete(s)); s.on('error', () => { inbound.destroy(); outbound.destroy(); }); }
    inbound.on('data', (d) => { if (!silent) outbound.write(d); });
    outbound.on('data', (d) => { if (!silent) inbound.write(d); });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    silence() { silent = true; },
    close() { for (const s of sockets) s.destroy(); server.close(); },
  };
}

t.test('keepalive settings in effect: the agent channel carries them, and the hub accepts the client ping interval', async (t) => {
  t.ok(KEEPALIVE_TIME > 0 && KEEPALIVE_TIMEOUT > 0, `client keepalive ${KEEPALIVE_TIME} ms, timeout ${KEEPALIVE_TIMEOUT} ms`);
  t.equal(CLIENT_OPTIONS['grpc.keepalive_permit_without_calls'], 1, 'pings also when no call is open');
  const ch = secureChannel('127.0.0.1:7443', '', '', '');
  for (const k of ['grpc.keepalive_time_ms', 'grpc.keepalive_timeout_ms', 'grpc.keepalive_permit_without_calls'] as const) {
    t.equal(ch.options[k], CLIENT_OPTIONS[k], `the agent channel's options carry ${k}`);
  }
  t.equal(AGENT_CHANNEL_OPTIONS['grpc.keepalive_permit_without_calls'], 1, 'the agent pings also when no call is open');
  t.ok(KEEPALIVE_TIME >= SERVER_OPTIONS['grpc.http2.min_ping_interval_without_data_ms'] && CLIENT_OPTIONS['grpc.keepalive_time_ms'] >= SERVER_OPTIONS['grpc.http2.min_ping_interval_without_data_ms'],
    'clients ping no more often than the hub permits (else GOAWAY too_many_pings)');
  const agentPort = { ...SERVER_OPTIONS, ...agentServerOptions(validateConfig({ names: ['hub.example'] }, 'defaults')) };
  t.ok(agentPort['grpc.keepalive_time_ms'] > 0 && agentPort['grpc.keepalive_timeout_ms'] > 0, 'the agent port pings its agents (hub.json agentChannel.keepaliveTime)');
  t.equal(SERVER_OPTIONS['grpc.keepalive_permit_without_calls'], 1, 'the hub accepts pings without calls');
  t.ok(SERVER_OPTIONS['grpc.keepalive_time_ms'] > 0 && SERVER_OPTIONS['grpc.keepalive_timeout_ms'] > 0, 'the hub pings its agents too');
});

t.test('an agent whose link goes silent notices through keepalive within keepalive_time + keepalive_timeout', async (t) => {
  await using h = await startHub();
  const r = await relay(Number(h.agentAddr.split(':')[1]));
  t.teardown(() => r.close());
  const { dataDir } = await h.enroll();
  const agent = await h.agent({ dataDir, hub: `127.0.0.1:${r.port}` });
  t.equal(agent.channel.state, 'ready');
  let leftAt = 0;
  agent.channel.on('state', (s: ChannelState) => { if (s !== 'ready' && !leftAt) leftAt = Date.now(); });
  const silencedAt = Date.now();
  r.silence();
  const bound = KEEPALIVE_TIME + KEEPALIVE_TIMEOUT;
  await waitFor(() => leftAt > 0, bound + 15_000, 'the agent to notice the dead link');
  const took = leftAt - silencedAt;
  t.ok(took >= KEEPALIVE_TIMEOUT - 1000, `not before a keepalive ping went unanswered for keepalive_timeout (${took} ms)`);
  t.ok(took <= bound + 5000, `within keepalive_time + keepalive_timeout (+5 s on a busy machine): ${took} ms, bound ${bound} ms`);
});
