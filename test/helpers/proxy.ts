/**
 * A byte-level TCP relay that makes connections to a loopback server come from another loopback
 * address (127.0.0.2, 127.0.0.3, ...). grpc-js has no option for a client's local address; a
 * client connects to the relay instead, and the server sees the relay's outgoing socket, bound
 * to `localAddress`. TLS passes through untouched (the client still checks the server's name).
 * Used by the tests and the bench to act as several source addresses on one machine.
 */
import * as net from 'node:net';

export interface SourceProxy extends AsyncDisposable {
  /** host:port to give the client instead of the server's address. */
  addr: string;
  close(): Promise<void>;
}

export async function sourceProxy(target: { host: string; port: number }, localAddress: string): Promise<SourceProxy> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((inbound) => {
    const outbound = net.connect({ host: target.host, port: target.port, localAddress });
    for (const s of [inbound, outbound]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => { inbound.destroy(); outbound.destroy(); });
    }
    inbound.pipe(outbound);
    outbound.pipe(inbound);
  });
  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(0, '127.0.0.1', () => resolve()); });
  const close = async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  };
  return { addr: `127.0.0.1:${(server.address() as net.AddressInfo).port}`, close, [Symbol.asyncDispose]: close };
}
