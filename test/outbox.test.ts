/**
 * The agent's durable outbox: real files in temp dirs, real agents in child processes killed
 * with SIGKILL, a real hub stopped and restarted. Every bound has a negative test.
 */
import t from 'tap';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readdir, readFile, stat, truncate, writeFile, appendFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { captureLogger, startHub, tempDir, waitFor, callError } from './helpers/hub.js';
import { Outbox, type OutboxOptions } from '../agent/outbox/index.js';
import { EventIntake } from '../hub/events/index.js';
import { isTrellisError } from '../common/errors.js';
import { HubChannel } from '../agent/channel.js';
import { agentPaths, loadIdentity, readState } from '../agent/identity.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const CHILD = fileURLToPath(new URL('./fixtures/outbox-child.js', import.meta.url));
const PAYLOAD = Buffer.from(JSON.stringify({ host: 'web-01', note: 'x'.repeat(200) }));

function events(n: number, prefix = 'e', from = 0): T.Event[] {
  return Array.from({ length: n }, (_, i) => ({ id: `${prefix}-${from + i}`, type: 'core.tick', payloadJson: PAYLOAD, timeMs: 1_700_000_000_000 + from + i }));
}

async function open(dir: string, o: Partial<OutboxOptions> = {}): Promise<Outbox & { lines: string[] }> {
  const { log, lines } = captureLogger();
  const box = await Outbox.open({ dir: join(dir, 'outbox'), log, ...o });
  return Object.assign(box, { lines });
}

/** Reads (and acknowledges, unless told not to) everything the outbox hands out. */
function drain(box: Outbox, o: { ack?: boolean; max?: number } = {}): T.Event[] {
  const out: T.Event[] = [];
  for (let b = box.read(o.max ?? 500); b; b = box.read(o.max ?? 500)) {
    out.push(...b.events);
    if (o.ack !== false) box.ack(b);
  }
  return out;
}

const ids = (evs: T.Event[]): string[] => evs.map((e) => e.id ?? '');
const segmentFiles = async (dir: string) => (await readdir(join(dir, 'outbox'))).filter((f) => f.endsWith('.log')).sort();

t.test('append, read and ack survive a reopen: exactly the unacknowledged events are replayed, in order', async (t) => {
  await using d = await tempDir();
  const box = await open(d.path);
  t.same(box.append(events(1000)), { accepted: 1000, refused: 0 });
  const first = box.read(300)!;
  t.equal(first.events.length, 300);
  box.ack(first);
  const second = box.read(200)!; // sent, never acknowledged
  t.same(ids(second.events), ids(events(200, 'e', 300)));
  t.same(box.stats.queued, 700);
  await box.close();

  const again = await open(d.path);
  t.equal(again.stats.queued, 700, '700 unacknowledged events replayed');
  const replayed = drain(again);
  t.same(ids(replayed), ids(events(700, 'e', 300)), 'from e-300 on, in order, once each');
  const e = replayed[0]!;
  t.equal(e.type, 'core.tick');
  t.equal(e.timeMs, 1_700_000_000_300);
  t.same(e.payloadJson, PAYLOAD, 'payload bytes intact');
  t.equal(again.stats.queued, 0);
  await again.close();

  const empty = await open(d.path);
  t.equal(empty.stats.queued, 0, 'nothing replayed once all is acknowledged');
  t.equal(empty.read(500), undefined);
  await empty.close();
});

t.test('rewind hands out every unacknowledged event again and ignores acks of older batches', async (t) => {
  await using d = await tempDir();
  const box = await open(d.path);
  box.append(events(50));
  const a = box.read(10)!;
  const b = box.read(10)!;
  box.ack(b); // out of order: the cursor cannot pass the unacknowledged `a`
  t.equal(box.stats.queued, 50);
  box.rewind();
  box.ack(a); // from before the rewind: void
  t.equal(box.stats.queued, 50, 'a stale ack changes nothing');
  t.same(ids(drain(box)), ids(events(50)), 'all 50 again, from the first');
  t.equal(box.stats.queued, 0);
  t.equal(box.stats.acked, 50);
  await box.close();
});

t.test('a backlog larger than the in-memory tail comes back from disk, in order, across rewinds', async (t) => {
  await using d = await tempDir();
  const box = await open(d.path, { segmentBytes: 1024 * 1024 });
  for (let i = 0; i < 60_000; i += 1000) box.append(events(1000, 'e', i));
  t.ok(box.stats.segments > 5, `${box.stats.segments} segments`);
  const firstPass = drain(box, { ack: false, max: 700 });
  t.equal(firstPass.length, 60_000);
  box.rewind();
  const out: T.Event[] = [];
  for (let b = box.read(900); b; b = box.read(900)) {
    out.push(...b.events);
    if (out.length % 9_000 === 0) box.rewind(); // a reconnect now and then: resume at the first unacknowledged
    else box.ack(b);
  }
  const unique = [...new Set(ids(out))];
  t.same(unique, ids(events(60_000)), 'every event, in order (re-sends after a rewind only repeat)');
  t.equal(box.stats.queued, 0);
  await box.close();
});

t.test('a torn tail is dropped and every whole frame before it is read', async (t) => {
  await using d = await tempDir();
  const box = await open(d.path);
  box.append(events(100, 'a'));
  box.append(events(100, 'b'));
  box.append(events(100, 'c'));
  await box.close();
  const [seg] = await segmentFiles(d.path);
  const path = join(d.path, 'outbox', seg!);
  const size = (await stat(path)).size;
  await truncate(path, size - 1234); // the last write cut short mid-record

  const reopened = await open(d.path);
  t.ok(reopened.stats.droppedBytes > 0, `${reopened.stats.droppedBytes} torn bytes dropped`);
  t.equal(reopened.stats.queued, 200, 'the two whole appends remain');
  t.ok(reopened.lines.some((l) => l.includes('torn or corrupt tail')), 'the drop is logged');
  t.equal((await stat(path)).size, Math.round(size * 2 / 3), 'the file is cut back to the last whole frame');
  reopened.append(events(5, 'd'));
  t.same(ids(drain(reopened)), [...ids(events(100, 'a')), ...ids(events(100, 'b')), ...ids(events(5, 'd'))], 'nothing misread; new events follow');
  await reopened.close();
});

t.test('zeros or a flipped bit at the tail are detected, never decoded into events', async (t) => {
  await using d = await tempDir();
  const box = await open(d.path);
  box.append(events(10, 'a'));
  box.append(events(10, 'b'));
  await box.close();
  const [seg] = await segmentFiles(d.path);
  const path = join(d.path, 'outbox', seg!);
  const bytes = await readFile(path);
  bytes[bytes.length - 50] ^= 0x01; // inside the payload of the last record: only the CRC notices
  await writeFile(path, bytes);
  await appendFile(path, Buffer.alloc(4096)); // a power cut can leave zeros

  const reopened = await open(d.path);
  t.same(ids(drain(reopened)), ids(events(10, 'a')), 'only the intact frame');
  t.equal(reopened.stats.droppedBytes, bytes.length / 2 + 4096);
  await reopened.close();
});

t.test('a full outbox refuses new events, counts them, warns once, and loses nothing it accepted', async (t) => {
  await using d = await tempDir();
  const box = await open(d.path, { maxEvents: 100 });
  t.same(box.append(events(150)), { accepted: 100, refused: 50 }, 'the first 100 fit, the rest is refused');
  t.same(box.append(events(10, 'late')), { accepted: 0, refused: 10 });
  t.equal(box.stats.refused, 60);
  t.equal(box.stats.accepted, 100);
  t.equal(box.stats.queued, 100);
  const warnings = box.lines.filter((l) => l.includes('event outbox is full'));
  t.equal(warnings.length, 1, 'one warning for both refusals (at most one per 10 s)');

  const b = box.read(30)!;
  box.ack(b);
  t.same(box.append(events(40, 'more')), { accepted: 30, refused: 10 }, 'room again once the hub acknowledges');
  await box.close();

  const again = await open(d.path, { maxEvents: 100 });
  t.same(ids(drain(again)), [...ids(events(70, 'e', 30)), ...ids(events(30, 'more'))], 'every accepted event is still there');
  await again.close();
});

t.test('maxBytes bounds the outbox too', async (t) => {
  await using d = await tempDir();
  const box = await open(d.path, { maxBytes: 8192 });
  const r = box.append(events(100));
  t.ok(r.accepted > 10 && r.accepted < 40, `${r.accepted} events of ~270 bytes fit in 8 KiB`);
  t.equal(r.refused, 100 - r.accepted);
  t.ok(box.stats.bytes <= 8192, `${box.stats.bytes} bytes held`);
  t.same(ids(drain(box)), ids(events(r.accepted)));
  await box.close();
});

t.test('invalid events are refused with a warning naming the field; valid ones around them are kept', async (t) => {
  await using d = await tempDir();
  const box = await open(d.path);
  const bad: T.Event[] = [
    { id: '', type: 't' },
    { id: 'x'.repeat(257), type: 't' },
    { id: 'ok-1', type: '' },
    { id: 'é'.repeat(200), type: 't' }, // 200 characters, 400 UTF-8 bytes
    { id: 'ok-2', type: 't', payloadJson: Buffer.alloc(1024 * 1024 + 1) },
    { id: 'ok-3', type: 't', payloadJson: Buffer.from('a string payload').toString('base64') }, // bytes as protobufjs takes them
  ];
  t.same(box.append(bad), { accepted: 1, refused: 5 });
  t.equal(box.stats.invalid, 5);
  t.ok(box.lines.some((l) => /event\.id is missing/.test(l)), 'the warning names the field');
  await box.close();
  const again = await open(d.path);
  const [only] = drain(again);
  t.equal(only?.id, 'ok-3');
  t.same(only?.payloadJson, Buffer.from('a string payload'), 'stored as the bytes the wire would carry');
  await again.close();
});

t.test('segments are deleted once everything in them is acknowledged', async (t) => {
  await using d = await tempDir();
  const box = await open(d.path, { segmentBytes: 4096, syncIntervalMs: 10 });
  box.append(events(100));
  const files = await segmentFiles(d.path);
  t.ok(files.length >= 6, `${files.length} segments of 4 KiB`);
  t.equal(box.stats.segments, files.length);
  const half = box.read(50)!;
  box.ack(half);
  await waitFor(async () => (await segmentFiles(d.path)).length < files.length, 5_000, 'the acknowledged segments to go');
  t.ok(box.stats.segments > 1, 'the unacknowledged segments stay');
  drain(box);
  await waitFor(async () => (await segmentFiles(d.path)).length === 1, 5_000, 'all but the segment being written to go');
  t.equal(box.stats.segments, 1);
  t.same(JSON.parse(await readFile(join(d.path, 'outbox', 'cursor.json'), 'utf8')).segment, Number(/\d+/.exec((await segmentFiles(d.path))[0]!)![0]));
  await box.close();
  const again = await open(d.path, { segmentBytes: 4096 });
  t.equal(again.stats.queued, 0, 'nothing to replay');
  await again.close();
});

t.test('the acknowledged cursor is saved at most every cursorIntervalMs, and early after 10,000 acknowledgements', async (t) => {
  await using d = await tempDir();
  const cursorFile = join(d.path, 'outbox', 'cursor.json');
  const saved = async () => JSON.parse(await readFile(cursorFile, 'utf8').catch(() => '{"offset":-1}')) as { offset: number };
  const box = await open(d.path, { syncIntervalMs: 10, cursorIntervalMs: 2_000 });
  box.append(events(30_000));
  box.ack(box.read(10)!);
  await waitFor(async () => (await saved()).offset > 0, 5_000, 'the first cursor save');
  const first = (await saved()).offset;
  box.ack(box.read(10)!);
  await new Promise((r) => setTimeout(r, 500)); // ~50 background syncs, none of them due to save the cursor
  t.equal((await saved()).offset, first, 'a cursor that moved is not saved again within cursorIntervalMs');
  await waitFor(async () => (await saved()).offset > first, 5_000, 'the cursor saved once cursorIntervalMs passed');
  const second = (await saved()).offset;
  const t0 = Date.now();
  let acked = 0;
  while (acked < 10_000) { const b = box.read(500)!; box.ack(b); acked += b.events.length; }
  await waitFor(async () => (await saved()).offset > second, 5_000, 'an early save after 10,000 acknowledgements');
  t.ok(Date.now() - t0 < 1_500, `saved ${Date.now() - t0} ms after 10,000 acknowledgements, before cursorIntervalMs`);
  await box.close();
  const again = await open(d.path);
  t.equal(again.stats.queued, 30_000 - 20 - acked, 'close saves the exact cursor');
  await again.close();
});

t.test('the outbox directory is 0700 and its files 0600, whatever the umask', async (t) => {
  await using d = await tempDir();
  const old = process.umask(0);
  t.teardown(() => { process.umask(old); });
  const box = await open(d.path, { syncIntervalMs: 10 });
  box.append(events(10));
  drain(box);
  await waitFor(async () => (await readdir(join(d.path, 'outbox'))).includes('cursor.json'), 5_000, 'the cursor to be saved');
  t.equal((await stat(join(d.path, 'outbox'))).mode & 0o777, 0o700, 'directory 0700');
  const names = await readdir(join(d.path, 'outbox'));
  t.ok(names.includes('lock'));
  for (const name of names) t.equal((await stat(join(d.path, 'outbox', name))).mode & 0o777, 0o600, `${name} is 0600`);
  await box.close();
});

t.test('an outbox in use by a live process is refused; a stale lock is taken over', async (t) => {
  await using d = await tempDir();
  const sleeper = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 30000)']);
  t.teardown(() => { sleeper.kill('SIGKILL'); });
  const box = await open(d.path);
  const twice = await callError(open(d.path));
  t.match(twice?.message, /already open in this process/, 'a second open in the same process is refused');
  await box.close();
  await writeFile(join(d.path, 'outbox', 'lock'), `${sleeper.pid}\n`);
  const err = await callError(open(d.path));
  t.ok(isTrellisError(err, 'TRELLIS_E_CONFIG'), 'TRELLIS_E_CONFIG');
  t.match(err?.message, new RegExp(`in use by process ${sleeper.pid}`));
  sleeper.kill('SIGKILL');
  await new Promise((r) => sleeper.once('exit', r));
  const taken = await open(d.path);
  t.equal(taken.stats.queued, 0, 'opens once the holder is gone');
  await taken.close();
});

t.test('options out of range are refused naming the option', async (t) => {
  await using d = await tempDir();
  for (const [o, name] of [[{ maxEvents: 0 }, 'maxEvents'], [{ maxBytes: 10 }, 'maxBytes'], [{ segmentBytes: 1.5 }, 'segmentBytes'], [{ syncIntervalMs: -1 }, 'syncIntervalMs'], [{ cursorIntervalMs: 60_001 }, 'cursorIntervalMs']] as const) {
    const err = await callError(open(d.path, o));
    t.ok(isTrellisError(err, 'TRELLIS_E_CONFIG'), `${name}: TRELLIS_E_CONFIG`);
    t.match(err?.message, name);
  }
});

t.test('an unreadable cursor re-sends everything rather than skipping anything', async (t) => {
  await using d = await tempDir();
  const box = await open(d.path, { syncIntervalMs: 10 });
  box.append(events(20));
  box.ack(box.read(10)!);
  await box.close();
  await writeFile(join(d.path, 'outbox', 'cursor.json'), '{"segment":');
  const again = await open(d.path);
  t.equal(again.stats.queued, 20, 'all 20 again (the hub drops the duplicates)');
  t.ok(again.lines.some((l) => l.includes('cursor is unreadable')));
  await again.close();
});

t.test('appending and acknowledging is cheap', async (t) => {
  await using d = await tempDir();
  const box = await open(d.path);
  const N = 200_000;
  const batch = events(4000);
  const t0 = performance.now();
  for (let done = 0; done < N; done += batch.length) {
    box.append(batch);
    drain(box);
  }
  const perS = (N * 1000) / (performance.now() - t0);
  t.comment(`${Math.round(perS)} events/s appended, read and acknowledged (npm run bench measures the whole channel)`);
  t.equal(box.stats.acked, N);
  await box.close();
});

// ---- End to end: real agents, a real hub ------------------------------------------------------

/** Records every event id any hub in this process is handed (before de-duplication). */
function recordIngest(t: Test): string[] {
  const seen: string[] = [];
  const orig = EventIntake.prototype.ingest;
  EventIntake.prototype.ingest = function (this: EventIntake, agentId, tenant, batch) {
    for (const e of batch) seen.push(e.id);
    return orig.call(this, agentId, tenant, batch);
  };
  t.teardown(() => { EventIntake.prototype.ingest = orig; });
  return seen;
}

type Test = Parameters<Parameters<typeof t.test>[0]>[0];

interface Child { proc: ChildProcessWithoutNullStreams; next(): Promise<Record<string, unknown>>; exited: Promise<unknown> }

function child(args: string[]): Child {
  const proc = spawn(process.execPath, [CHILD, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  const lines: string[] = [];
  let wake: (() => void) | undefined;
  let buf = '', err = '';
  proc.stdout.setEncoding('utf8').on('data', (c: string) => {
    buf += c;
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) { lines.push(buf.slice(0, i)); buf = buf.slice(i + 1); }
    wake?.();
  });
  proc.stderr.setEncoding('utf8').on('data', (c: string) => { err += c; });
  let done = false;
  const exited = new Promise((r) => proc.once('close', () => { done = true; r(undefined); })); // after stdout is read
  return {
    proc, exited,
    async next() {
      const end = Date.now() + 20_000;
      while (lines.length === 0) {
        if (done || Date.now() > end) throw new Error(`the agent process said nothing more (exit ${proc.exitCode ?? proc.signalCode}): ${err}`);
        await new Promise<void>((r) => { wake = r; setTimeout(r, 100); });
      }
      return JSON.parse(lines.shift()!) as Record<string, unknown>;
    },
  };
}

t.test('SIGKILL with a full outbox and the hub down: a new agent process delivers every accepted event exactly once', async (t) => {
  const seen = recordIngest(t);
  await using h = await startHub();
  const { dataDir } = await h.enroll();
  await h.stop();

  const first = child([dataDir, 'publish', '8000', '5000']);
  t.teardown(() => { first.proc.kill('SIGKILL'); });
  const published = await first.next();
  t.same(published, { accepted: 5000, refused: 3000, queued: 5000 }, 'the outbox fills at 5,000 and refuses the rest');
  first.proc.kill('SIGKILL');
  await first.exited;

  const second = child([dataDir, 'drain']);
  t.teardown(() => { second.proc.kill('SIGKILL'); });
  t.same(await second.next(), { replayed: 5000 }, 'the new process finds all 5,000 on disk');
  await h.restart();
  t.same(await second.next(), { drained: true, acked: 5000 }, 'and the hub acknowledges them');

  const intake = h.hub.components.events;
  const accepted = new Set(ids(events(5000, 'ev')));
  const distinct = new Set(seen);
  t.equal(distinct.size, 5000, '5,000 distinct ids reached the hub');
  t.same([...distinct].filter((id) => !accepted.has(id)), [], 'none of them a refused one');
  t.equal(intake.received, 5000, 'the hub counts each exactly once after de-duplication');
  t.equal(intake.rejected, 0);
  second.proc.kill('SIGTERM');
  await second.exited;
});

t.test('SIGKILL in the middle of appends: every append that returned is delivered, nothing torn is misread', async (t) => {
  const seen = recordIngest(t);
  await using h = await startHub();
  const { dataDir } = await h.enroll();
  await h.stop();

  const first = child([dataDir, 'stream']);
  t.teardown(() => { first.proc.kill('SIGKILL'); });
  let reported = 0;
  while (reported < 5_000) reported = Number((await first.next()).accepted);
  first.proc.kill('SIGKILL'); // mid-stream: possibly inside a write
  await first.exited;
  for (let line = await first.next().catch(() => undefined); line; line = await first.next().catch(() => undefined)) reported = Number(line.accepted);

  const second = child([dataDir, 'drain']);
  t.teardown(() => { second.proc.kill('SIGKILL'); });
  const replayed = Number((await second.next()).replayed);
  t.ok(replayed >= reported, `${replayed} replayed >= ${reported} reported accepted before the kill`);
  await h.restart();
  t.same(await second.next(), { drained: true, acked: replayed });
  const intake = h.hub.components.events;
  const distinct = new Set(seen);
  t.equal(distinct.size, replayed, 'each replayed event reached the hub');
  t.same(ids(events(replayed, 'ev')).filter((id) => !distinct.has(id)), [], 'ids ev-0.. with no gap: nothing lost or misread');
  t.equal(intake.received, replayed, 'counted once each');
  t.equal(intake.rejected, 0, 'no garbage event');
  second.proc.kill('SIGTERM');
  await second.exited;
});

t.test('the hub down for a while under event load: zero events lost', async (t) => {
  const seen = recordIngest(t);
  await using h = await startHub();
  const agent = await h.agent();
  let published = 0, refused = 0;
  const pump = setInterval(() => {
    const r = agent.channel.publish(events(200, 'load', published));
    published += 200;
    refused += r.refused;
  }, 10);
  t.teardown(() => clearInterval(pump));
  await waitFor(() => published >= 2_000, 10_000, 'load before the outage');
  await h.stop();
  await waitFor(() => agent.channel.state === 'connecting', 10_000, 'the agent to notice');
  const atStop = published;
  await waitFor(() => published >= atStop + 4_000, 10_000, 'load during the outage');
  t.ok(agent.channel.backlog >= 4_000, `${agent.channel.backlog} events held on disk during the outage`);
  await h.restart();
  await waitFor(() => published >= atStop + 8_000, 10_000, 'load after the restart');
  clearInterval(pump);
  await waitFor(() => agent.channel.backlog === 0, 20_000, 'everything acknowledged');
  t.equal(refused, 0, 'nothing refused');
  const distinct = new Set(seen);
  t.equal(distinct.size, published, `all ${published} distinct events reached the hub`);
  t.same(ids(events(published, 'load')).filter((id) => !distinct.has(id)), [], 'none missing');
  t.equal(agent.outbox.stats.acked, published);
});

t.test('a channel without an outbox keeps its events in memory, as before', async (t) => {
  await using h = await startHub();
  const { dataDir } = await h.enroll();
  const paths = agentPaths(dataDir);
  const id = loadIdentity({ key: paths.key, cert: paths.cert, ca: paths.ca }, paths);
  const ch = new HubChannel({
    target: readState(paths).hub,
    credentials: () => ({ caPem: id.caPem, keyPem: id.keyPem, certPem: id.certPem }),
    hello: () => ({ facts: { hostname: 'memory-only' }, labels: {} }),
    onAction: () => undefined,
    onCancel: () => undefined,
    log: captureLogger().log,
    maxBackoffMs: 500,
  });
  t.teardown(() => ch.close());
  ch.start();
  await waitFor(() => ch.state === 'ready', 10_000, 'ready');
  t.same(ch.publish(events(1000, 'mem')), { accepted: 1000, refused: 0 });
  await waitFor(() => ch.backlog === 0 && h.hub.components.events.received === 1000, 10_000, 'all 1,000 delivered');
  t.equal(ch.stats.eventsAcked, 1000);
  t.notOk(existsSync(join(dataDir, 'outbox')), 'no outbox directory');
});
