/** Small network helpers shared by the tests that start their own servers (sshd, slapd). */
import { createServer } from 'node:net';

/** A TCP port free on 127.0.0.1 right now (the caller binds it soon after). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}
