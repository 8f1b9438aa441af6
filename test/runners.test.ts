/**
 * Action runners on the agent, with real child processes, a real HTTP(S) server on loopback and
 * real sealed values: command (process groups, stdin, started), script, http, run_as, secrets.
 */
import t, { type Test } from 'tap';
import crypto from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { chmodSync, existsSync, readdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { createCA, generateKey, issueCertificate, sealAad, sealFor } from '../certs/index.js';
import { MAX_OUTPUT_BYTES, runAction, startAction, type RunInputs, type RunRequest, type RunResult } from '../agent/runner.js';
import { tempDir } from './helpers/hub.js';
import { needs } from './helpers/needs.js';

const ca = createCA({ commonName: 'runners test CA' });

function agentKey(id: string): { certPem: string; key: crypto.KeyObject } {
  const k = generateKey('ec-p256');
  const certPem = issueCertificate({
    issuerCertPem: ca.certPem, issuerKey: ca.key, subjectPublicKey: k.publicKey, subject: { commonName: id },
    uris: [`spiffe://trellis.local/tenant/default/agent/${id}`], usage: 'client', notAfter: new Date(Date.now() + 86_400_000),
  });
  return { certPem, key: k.privateKey };
}

const A = agentKey('agent-a');
const B = agentKey('agent-b');
let execSeq = 0;

function request(o: Partial<RunRequest> = {}): RunRequest {
  return {
    executionId: `exec-${++execSeq}`, argv: [], timeoutMs: 10_000, env: {}, cwd: '', sealedEnv: {}, runner: '', runAs: '',
    script: Buffer.alloc(0), scriptName: '', http: null, sealedStdin: '', action: 'test.action', ...o,
  };
}

function httpSpec(o: Partial<NonNullable<RunRequest['http']>>): NonNullable<RunRequest['http']> {
  return { method: 'GET', url: '', headers: {}, body: Buffer.alloc(0), insecure: false, successStatus: [], sealedHeaders: {}, ...o };
}

/** Seals a value for agent A (or another recipient) bound to one execution. */
function seal(value: string, executionId: string, to = A.certPem, agentId = 'agent-a'): string {
  return sealFor(to, Buffer.from(value), sealAad(agentId, 'exec', executionId));
}

interface Run {
  result: RunResult;
  out: string;
  err: string;
  outBytes: number;
  started: number[];
  /** Output seen before the first started report. */
  beforeStarted: number;
}

interface RunOpts {
  /** Go through startAction with agent A's key (sealed values), else plain runAction. */
  sealed?: boolean;
  agentId?: string;
  inputs?: RunInputs;
  /** Called with each stdout chunk so far; return true to cancel. */
  cancelWhen?: (out: string) => boolean;
}

function run(req: RunRequest, o: RunOpts = {}): Promise<Run> {
  return new Promise((resolve) => {
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const started: number[] = [];
    let outputs = 0;
    let beforeStarted = -1;
    let canceled = false;
    const sink = {
      output(stream: 'STDOUT' | 'STDERR', data: Buffer) {
        outputs++;
        (stream === 'STDOUT' ? out : err).push(data);
        if (o.cancelWhen && !canceled && o.cancelWhen(Buffer.concat(out).toString())) { canceled = true; handle.cancel(); }
      },
      started(pid: number) { if (beforeStarted < 0) beforeStarted = outputs; started.push(pid); },
      done(result: RunResult) {
        const o2 = Buffer.concat(out);
        resolve({ result, out: o2.toString(), err: Buffer.concat(err).toString(), outBytes: o2.length, started, beforeStarted });
      },
    };
    const handle = o.sealed
      ? startAction(req, sink, { key: () => A.key, agentId: 'agentId' in o ? o.agentId : 'agent-a' })
      : runAction(req, sink, o.inputs);
  });
}

/** Live (non-zombie) processes whose process group is pgid. */
function groupMembers(pgid: number): number[] {
  const live: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try { stat = readFileSync(`/proc/${name}/stat`, 'utf8'); } catch { continue; }
    // pid (comm) state ppid pgrp ...: comm may hold spaces, so parse after the last ')'.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (f[0] !== 'Z' && Number(f[2]) === pgid) live.push(Number(name));
  }
  return live;
}

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

const isRoot = process.getuid?.() === 0;

// ---- command ---------------------------------------------------------------------------------

t.test('a timeout kills the whole process tree, even children that ignore SIGTERM', async (t) => {
  const started = Date.now();
  const r = await run(request({
    timeoutMs: 500,
    argv: ['sh', '-c', 'sleep 60 & echo $!; sleep 60 & echo $!; sh -c \'trap "" TERM; echo $$; exec sleep 60\' & wait'],
  }));
  t.equal(r.result.status, 'timeout');
  t.match(r.result.error, /timed out after 500 ms; the process group was killed/);
  t.equal(r.started.length, 1, 'started reported once');
  const leader = r.started[0]!;
  const pids = r.out.trim().split('\n').map(Number);
  t.equal(pids.length, 3, 'three grandchildren were running');
  t.same(pids.filter(alive), [], 'no grandchild is left');
  t.same(groupMembers(leader), [], 'no process of the group is left');
  t.ok(Date.now() - started < 8_000, 'SIGKILL followed the grace period');
});

t.test('cancel kills the process group and reports canceled', async (t) => {
  const r = await run(request({ argv: ['sh', '-c', 'sleep 60 & echo $!; wait'] }), { cancelWhen: (out) => out.includes('\n') });
  t.equal(r.result.status, 'canceled');
  t.equal(r.result.error, 'canceled');
  t.notOk(alive(Number(r.out.trim())), 'the grandchild is gone');
  t.same(groupMembers(r.started[0]!), [], 'the group is empty');
});

t.test('started is reported once, with the pid of the spawned process, before any output', async (t) => {
  const r = await run(request({ argv: ['sh', '-c', 'echo $$'] }));
  t.equal(r.result.status, 'succeeded');
  t.same(r.started, [Number(r.out.trim())]);
  t.equal(r.beforeStarted, 0, 'no output came before started');
  t.ok(r.result.startedMs <= r.result.finishedMs);
});

t.test('plain stdin is written then closed', async (t) => {
  const r = await run(request({ argv: ['cat'], stdin: Buffer.from('line 1\nline 2\n') }));
  t.equal(r.result.status, 'succeeded', 'cat saw end of input');
  t.equal(r.out, 'line 1\nline 2\n');
  const ignored = await run(request({ argv: ['true'], stdin: crypto.randomBytes(1024 * 1024) }));
  t.equal(ignored.result.status, 'succeeded', 'a process that does not read its stdin still succeeds');
  const none = await run(request({ argv: ['sh', '-c', 'cat; echo end'] }));
  t.equal(none.out, 'end\n', 'without stdin, stdin is empty (not the agent\'s)');
});

t.test('exit codes, missing commands and bad requests are reported, never thrown', async (t) => {
  t.match((await run(request({ argv: ['sh', '-c', 'exit 3'] }))).result, { status: 'failed', exitCode: 3 });
  t.match((await run(request({ argv: ['no-such-command-xyz'] }))).result, { status: 'error', exitCode: 127, error: /command not found: no-such-command-xyz/ });
  t.match((await run(request({ argv: [] }))).result, { status: 'error', error: /argv: the command is empty/ });
  t.match((await run(request({ argv: ['true'], cwd: '/no/such/dir' }))).result, { status: 'error', error: /cwd: \/no\/such\/dir is not an existing directory/ });
  t.match((await run(request({ argv: ['echo', 'a\0b'] }))).result, { status: 'error', error: /NUL/ });
  t.match((await run(request({ argv: ['true'], env: { 'A=B': 'x' } }))).result, { status: 'error', error: /env: 'A=B' is not a valid variable name/ });
  t.match((await run(request({ runner: 'ftp', argv: ['true'] }))).result, { status: 'error', error: /runner: 'ftp' is not one of command, script, http/ });
  const r = await run(request({ argv: ['sh', '-c', 'echo "$A $PWD"'], env: { A: 'from-request' }, cwd: '/tmp' }));
  t.equal(r.out, 'from-request /tmp\n', 'env and cwd reach the process');
});

t.test('output is capped at 8 MiB with one truncation note', async (t) => {
  const r = await run(request({ argv: ['head', '-c', String(MAX_OUTPUT_BYTES + 1024 * 1024), '/dev/zero'] }));
  t.equal(r.result.status, 'succeeded');
  t.equal(r.outBytes, MAX_OUTPUT_BYTES);
  t.equal(r.err.match(/output truncated at/g)?.length, 1);
});

// ---- script ----------------------------------------------------------------------------------

t.test('script runner: runs the shipped script with its args in a private dir that is removed after', async (t) => {
  const body = '#!/bin/sh\nprintf "%s|" "$@"; echo\necho "$0"\nstat -c "%a %U" "$0" "$(dirname "$0")"\n';
  const r = await run(request({ runner: 'script', script: Buffer.from(body), scriptName: 'packs/x/deploy.sh', argv: ['a b', 'c'] }));
  t.equal(r.result.status, 'succeeded', r.err);
  const [args, path, fileMode, dirMode] = r.out.trim().split('\n');
  t.equal(args, 'a b|c|', 'argv are its arguments, one each');
  t.match(path, /\/trellis-script-[^/]+\/deploy\.sh$/, 'named after script_name\'s basename');
  t.equal(fileMode, `700 ${isRoot ? 'root' : process.env.USER}`, 'file 0700');
  t.equal(dirMode, `700 ${isRoot ? 'root' : process.env.USER}`, 'dir 0700');
  t.notOk(existsSync(path!), 'the script is gone');
  t.notOk(existsSync(join(path!, '..')), 'the temp dir is gone');
});

t.test('script runner: the shebang picks the interpreter; without one it runs under /bin/sh', async (t) => {
  const node = await run(request({ runner: 'script', script: Buffer.from(`#!${process.execPath}\nconsole.log(JSON.stringify(process.argv.slice(2)))\n`), argv: ['x', 'y'] }));
  t.equal(node.out, '["x","y"]\n', 'a node script');
  const sh = await run(request({ runner: 'script', script: Buffer.from('echo "first=$1"; readlink /proc/$$/exe\n'), argv: ['one'] }));
  t.equal(sh.result.status, 'succeeded');
  const [first, exe] = sh.out.trim().split('\n');
  t.equal(first, 'first=one');
  t.equal(exe, realpathSync('/bin/sh'), 'interpreted by /bin/sh');
  t.match((await run(request({ runner: 'script', script: Buffer.from('exit 4') }))).result, { status: 'failed', exitCode: 4 });
  t.match((await run(request({ runner: 'script' }))).result, { status: 'error', error: /script: the script body is empty/ });
  t.match((await run(request({ runner: 'script', script: Buffer.alloc(1024 * 1024 + 1, 0x23) }))).result, { status: 'error', error: /over the 1048576-byte limit/ });
  const named = await run(request({ runner: 'script', script: Buffer.from('basename "$0"'), scriptName: '../../etc/..' }));
  t.equal(named.out, 'script\n', 'an odd script_name falls back to "script"');
});

t.test('script runner: the temp dir is removed after a timeout too', async (t) => {
  const r = await run(request({ runner: 'script', timeoutMs: 300, script: Buffer.from('echo "$0"; touch "$(dirname "$0")/extra"; sleep 60\n') }));
  t.equal(r.result.status, 'timeout');
  t.notOk(existsSync(join(r.out.trim(), '..')), 'the dir (with a file the script added) is gone');
});

// ---- http ------------------------------------------------------------------------------------

interface Seen { method: string; url: string; headers: http.IncomingHttpHeaders; body: string; closed: boolean }

async function httpServer(t: Test, handler: (req: http.IncomingMessage, res: http.ServerResponse, seen: Seen) => void, tls?: { key: string; cert: string }) {
  const seen: Seen[] = [];
  const onRequest = (req: http.IncomingMessage, res: http.ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const s: Seen = { method: req.method!, url: req.url!, headers: req.headers, body: Buffer.concat(chunks).toString(), closed: false };
      res.on('close', () => { s.closed = true; });
      seen.push(s);
      handler(req, res, s);
    });
  };
  const server = tls ? https.createServer(tls, onRequest) : http.createServer(onRequest);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }));
  const base = `${tls ? 'https' : 'http'}://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { base, seen };
}

t.test('http runner: 2xx succeeds with the body on stdout and the response head on stderr', async (t) => {
  const srv = await httpServer(t, (req, res, s) => {
    res.setHeader('X-Reply', 'yes');
    res.end(`${s.method} ${s.url} ${s.body}`);
  });
  const r = await run(request({ runner: 'http', http: httpSpec({ method: 'POST', url: `${srv.base}/hook?x=1`, headers: { 'Content-Type': 'text/plain', 'X-Plain': 'p' }, body: Buffer.from('payload') }) }));
  t.equal(r.result.status, 'succeeded');
  t.equal(r.result.exitCode, 0);
  t.equal(r.out, 'POST /hook?x=1 payload');
  t.match(r.err, /^HTTP\/1\.1 200 OK\n/);
  t.match(r.err, /\nX-Reply: yes\n/);
  t.match(r.err, /\n\n$/, 'the head ends with a blank line');
  t.same(r.started, [0], 'started reported with pid 0');
  t.equal(srv.seen[0]?.headers['x-plain'], 'p');
  t.equal(srv.seen[0]?.headers['content-length'], '7');
});

t.test('http runner: a status outside success_status fails with exitCode = status; redirects are not followed', async (t) => {
  const srv = await httpServer(t, (req, res) => {
    if (req.url === '/500') { res.statusCode = 500; res.end('boom'); return; }
    if (req.url === '/404') { res.statusCode = 404; res.end(); return; }
    res.writeHead(302, { Location: '/500' }).end();
  });
  const e500 = await run(request({ runner: 'http', http: httpSpec({ url: `${srv.base}/500` }) }));
  t.match(e500.result, { status: 'failed', exitCode: 500, error: 'HTTP status 500 Internal Server Error' });
  t.equal(e500.out, 'boom', 'the body is still shown');
  t.match((await run(request({ runner: 'http', http: httpSpec({ url: `${srv.base}/404`, successStatus: [200, 404] }) }))).result, { status: 'succeeded', exitCode: 0 }, 'success_status is honoured');
  const redirect = await run(request({ runner: 'http', http: httpSpec({ url: `${srv.base}/moved` }) }));
  t.match(redirect.result, { status: 'failed', exitCode: 302 });
  t.equal(srv.seen.filter((s) => s.url === '/500').length, 1, 'the redirect was not followed');
});

t.test('http runner: connection refused is an error with the reason', async (t) => {
  const server = http.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  const r = await run(request({ runner: 'http', http: httpSpec({ url: `http://user:pw@127.0.0.1:${port}/x?token=abc` }) }));
  t.equal(r.result.status, 'error');
  t.match(r.result.error, new RegExp(`http GET http://127\\.0\\.0\\.1:${port}/x failed: ECONNREFUSED`));
  t.notOk(r.result.error.includes('pw@') || r.result.error.includes('token=abc'), 'no credentials or query in the message');
});

t.test('http runner: the action timeout covers the exchange; cancel aborts the request', async (t) => {
  const srv = await httpServer(t, () => { /* never answers */ });
  const r = await run(request({ runner: 'http', timeoutMs: 300, http: httpSpec({ url: `${srv.base}/slow` }) }));
  t.match(r.result, { status: 'timeout', error: /timed out after 300 ms; the request GET .*\/slow was aborted/ });
  const slowBody = await httpServer(t, (_req, res) => { res.write('first\n'); });
  const c = await run(request({ runner: 'http', http: httpSpec({ url: `${slowBody.base}/stream` }) }), { cancelWhen: (out) => out.includes('first') });
  t.equal(c.result.status, 'canceled');
  await t.resolves(until(() => slowBody.seen[0]?.closed === true), 'the server saw the connection closed');
});

t.test('http runner: TLS is verified unless the action opts into insecure', async (t) => {
  const k = generateKey('ec-p256');
  const cert = issueCertificate({ issuerCertPem: null, issuerKey: k.privateKey, subjectPublicKey: k.publicKey, subject: { commonName: 'self' }, ipAddresses: ['127.0.0.1'], usage: 'server', notAfter: new Date(Date.now() + 3_600_000) });
  const srv = await httpServer(t, (_req, res) => res.end('tls ok'), { key: k.privateKeyPem, cert });
  const strict = await run(request({ runner: 'http', http: httpSpec({ url: `${srv.base}/` }) }));
  t.equal(strict.result.status, 'error');
  t.match(strict.result.error, /self[- ]signed/i);
  t.equal(srv.seen.length, 0, 'nothing was sent to an unverified server');
  const insecure = await run(request({ runner: 'http', http: httpSpec({ url: `${srv.base}/`, insecure: true }) }));
  t.match(insecure, { out: 'tls ok', result: { status: 'succeeded' } });
});

t.test('http runner: a large body is capped at 8 MiB and the connection closed', async (t) => {
  const srv = await httpServer(t, (_req, res) => {
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    let n = 0;
    const more = () => { while (n < 256) { n++; if (!res.write(chunk)) return void res.once('drain', more); } res.end(); };
    more();
  });
  const r = await run(request({ runner: 'http', http: httpSpec({ url: `${srv.base}/big` }) }));
  t.equal(r.result.status, 'succeeded');
  t.equal(r.result.error, 'the response body was truncated at the output limit');
  t.equal(r.outBytes + Buffer.byteLength(r.err.split('\n\n')[0]!) + 2, MAX_OUTPUT_BYTES, 'head and body share the 8 MiB');
  t.match(r.err, /output truncated at/);
});

t.test('http runner: bad specs are refused with the field named', async (t) => {
  const bad = async (spec: Partial<NonNullable<RunRequest['http']>>, re: RegExp, o: Partial<RunRequest> = {}) =>
    t.match((await run(request({ runner: 'http', http: httpSpec(spec), ...o }))).result, { status: 'error', error: re }, String(re));
  await bad({ url: 'file:///etc/passwd' }, /http\.url: scheme file: is not supported/);
  await bad({ url: 'not a url' }, /http\.url: not a valid absolute URL/);
  await bad({ url: '' }, /http\.url: required/);
  await bad({ url: 'http://127.0.0.1:1/', method: 'GE T' }, /http\.method/);
  await bad({ url: 'http://127.0.0.1:1/', headers: { 'Bad Name': 'x' } }, /http\.headers: 'Bad Name' is not a valid header name/);
  await bad({ url: 'http://127.0.0.1:1/', headers: { 'X-A': 'a\r\nX-Injected: 1' } }, /http\.headers X-A: the value contains CR, LF or NUL/);
  await bad({ url: 'http://127.0.0.1:1/', successStatus: [99] }, /http\.success_status: 99/);
  await bad({ url: 'http://127.0.0.1:1/' }, /run_as: does not apply to runner http/, { runAs: 'nobody' });
  t.match((await run(request({ runner: 'http' }))).result, { status: 'error', error: /http: the request has no http spec/ });
});

// ---- run_as ----------------------------------------------------------------------------------

t.test('run_as nobody: the process runs as nobody, with its HOME/USER and no supplementary groups', needs(t, isRoot ? undefined : 'needs root'), async (t) => {
  await using dir = await tempDir();
  chmodSync(dir.path, 0o777);
  const nobody = readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith('nobody:'))!.split(':');
  const r = await run(request({
    runAs: 'nobody', cwd: dir.path,
    argv: ['sh', '-c', 'id -u; id -g; echo "$HOME $USER $LOGNAME"; grep "^Groups:" /proc/self/status; touch made-here'],
  }));
  t.equal(r.result.status, 'succeeded', r.err);
  const [uid, gid, ident, groups] = r.out.trim().split('\n');
  t.equal(uid, nobody[2], 'id -u prints nobody\'s uid');
  t.equal(gid, nobody[3]);
  t.equal(ident, `${nobody[5]} nobody nobody`);
  t.match(groups, /^Groups:\s*$/, 'root\'s groups were dropped');
  t.equal(statSync(join(dir.path, 'made-here')).uid, Number(nobody[2]), 'a file it creates is owned by nobody');
  const home = await run(request({ runAs: 'nobody', argv: ['pwd'] }));
  t.equal(home.out, '/\n', 'without cwd: the home, or / when it does not exist');
  const denied = await run(request({ runAs: 'nobody', argv: ['cat', '/etc/shadow'] }));
  t.equal(denied.result.status, 'failed', 'nobody cannot read /etc/shadow');
});

t.test('run_as nobody with a script: the private dir belongs to nobody and is removed after', needs(t, isRoot ? undefined : 'needs root'), async (t) => {
  const r = await run(request({ runner: 'script', runAs: 'nobody', script: Buffer.from('#!/bin/sh\nid -un\necho "$0"\nstat -c "%a %U" "$0" "$(dirname "$0")"\n') }));
  t.equal(r.result.status, 'succeeded', r.err);
  const [user, path, file, dir] = r.out.trim().split('\n');
  t.equal(user, 'nobody');
  t.equal(file, '700 nobody');
  t.equal(dir, '700 nobody');
  t.notOk(existsSync(join(path!, '..')), 'removed');
});

t.test('run_as: an unknown or malformed user is an error; nothing runs', async (t) => {
  const unknown = await run(request({ runAs: 'no-such-user-xyz', argv: ['sh', '-c', 'echo ran'] }));
  t.match(unknown.result, { status: 'error', error: "run_as: no such user 'no-such-user-xyz'" });
  t.equal(unknown.out, '');
  t.same(unknown.started, [], 'nothing was started');
  const script = await run(request({ runner: 'script', runAs: 'no-such-user-xyz', script: Buffer.from('echo ran') }));
  t.match(script.result, { status: 'error', error: /no such user/ });
  const odd = await run(request({ runAs: 'root;id', argv: ['true'] }));
  t.match(odd.result, { status: 'error', error: /run_as: 'root;id' is not a valid user name/ });
});

t.test('an agent that is not root refuses run_as another user instead of running as itself', needs(t, isRoot ? undefined : 'needs root to start a non-root agent'), async (t) => {
  // A real non-root process (nobody) asks the same code to switch to root and to itself.
  const users = new URL('../agent/runners/users.js', import.meta.url).pathname;
  const probe = `import(${JSON.stringify(users)}).then(async (m) => {
    for (const u of ['root', 'nobody']) { try { const r = await m.resolveRunAs(u); console.log(u, 'ok', r.switchIds); } catch (e) { console.log(u, 'error', e.message); } }
  })`;
  // With a clean environment, so tap's child-process hook does not instrument (and write files from) this node.
  const r = await run(request({ runAs: 'nobody', argv: ['env', '-i', process.execPath, '-e', probe] }));
  t.equal(r.result.status, 'succeeded', r.err);
  const lines = r.out.trim().split('\n');
  t.equal(lines[0], 'root error run_as: the agent runs as nobody and cannot switch to root (run the agent as root to use run_as)');
  t.equal(lines[1], 'nobody ok false', 'its own user is fine, without switching');
});

// ---- secrets ---------------------------------------------------------------------------------

t.test('a secret via sealed_stdin reaches stdin, is masked in the output, and is never in argv', async (t) => {
  const secret = `stdin-pw-${crypto.randomBytes(6).toString('hex')}`;
  const req = request({ argv: ['sh', '-c', [
    'read pw; echo "got $pw"; echo "len ${#pw}"; echo "$pw" >&2',
    'case "$(tr "\\0" " " < /proc/$$/cmdline)" in *"$pw"*) echo "argv: HAS IT";; *) echo "argv: clean";; esac',
    'echo "environ: $(tr "\\0" "\\n" < /proc/$$/environ | grep -cF "$pw")"',
  ].join('\n')] });
  req.sealedStdin = seal(`${secret}\n`, req.executionId);
  const r = await run(req, { sealed: true });
  t.equal(r.result.status, 'succeeded', r.err);
  t.match(r.out, /^got \*\*\*\*\n/, 'masked in stdout');
  t.match(r.out, new RegExp(`\\nlen ${secret.length}\\n`), 'the process read the real value');
  t.equal(r.err, '****\n', 'masked in stderr');
  t.notOk(r.out.includes(secret) || r.err.includes(secret), 'not in the output');
  t.match(r.out, /\nargv: clean\n/, 'not in the process\'s argv (checked by the process itself)');
  t.match(r.out, /\nenviron: 0\n/, 'nor in its environment');
  const req2 = request({ argv: ['cat'] });
  req2.sealedStdin = seal(secret, req2.executionId);
  t.equal((await run(req2, { sealed: true })).out, '****', 'echoed back whole: masked');
  const inArgv = request({ argv: ['echo', secret] });
  inArgv.sealedStdin = seal(secret, inArgv.executionId);
  t.match((await run(inArgv, { sealed: true })).result, { status: 'error', error: /a secret value appears in the action argv/ }, 'a request with the value in argv is refused');
  const both = request({ argv: ['cat'], stdin: Buffer.from('plain') });
  both.sealedStdin = seal(secret, both.executionId);
  t.match((await run(both, { sealed: true })).result, { status: 'error', error: /stdin and sealed_stdin are both set/ });
});

t.test('sealed env still works through startAction, masked', async (t) => {
  const req = request({ argv: ['sh', '-c', 'echo "$DB_PASS"'] });
  req.sealedEnv = { DB_PASS: seal('env-secret-123', req.executionId) };
  const r = await run(req, { sealed: true });
  t.match(r, { out: '****\n', result: { status: 'succeeded' } });
});

t.test('a sealed header reaches the HTTP server and is masked in the output', async (t) => {
  const token = `tok-${crypto.randomBytes(8).toString('hex')}`;
  const srv = await httpServer(t, (req, res) => {
    res.setHeader('X-Echo', String(req.headers.authorization));
    res.end(`you sent ${req.headers.authorization}`);
  });
  const req = request({ runner: 'http', http: httpSpec({ url: `${srv.base}/api`, headers: { Authorization: 'overridden', 'X-Plain': 'visible' } }) });
  req.http!.sealedHeaders = { authorization: seal(`Bearer ${token}`, req.executionId) };
  const r = await run(req, { sealed: true });
  t.equal(r.result.status, 'succeeded', r.result.error);
  t.equal(srv.seen[0]?.headers.authorization, `Bearer ${token}`, 'the server got the real value (the sealed header wins)');
  t.equal(srv.seen[0]?.headers['x-plain'], 'visible');
  t.equal(r.out, 'you sent ****', 'masked in the body');
  t.match(r.err, /\nX-Echo: \*\*\*\*\n/, 'masked in the response head');
  t.notOk((r.out + r.err).includes(token));
  const inUrl = request({ runner: 'http', http: httpSpec({ url: `${srv.base}/api?t=${token}` }) });
  inUrl.http!.sealedHeaders = { 'X-Token': seal(token, inUrl.executionId) };
  t.match((await run(inUrl, { sealed: true })).result, { status: 'error', error: /a secret value appears in the http url/ });
});

t.test('a value sealed for another agent, execution or binding does not open: error, nothing runs', async (t) => {
  const cases: Array<[string, (req: RunRequest) => void, RegExp]> = [
    ['stdin sealed for agent B', (req) => { req.sealedStdin = seal('x', req.executionId, B.certPem, 'agent-b'); }, /cannot open the secrets of this action: sealed stdin: cannot open sealed value: .*another key/],
    ['stdin sealed for another execution', (req) => { req.sealedStdin = seal('x', 'exec-other'); }, /sealed stdin: cannot open sealed value: authentication failed/],
    ['env sealed for agent B', (req) => { req.sealedEnv = { X: seal('x', req.executionId, B.certPem, 'agent-b') }; }, /secret env X: cannot open sealed value/],
    ['header sealed for agent B', (req) => { req.runner = 'http'; req.http = httpSpec({ url: 'http://127.0.0.1:1/', sealedHeaders: { 'X-Key': seal('x', req.executionId, B.certPem, 'agent-b') } }); }, /secret header X-Key: cannot open sealed value/],
    ['garbage', (req) => { req.sealedStdin = 'not-sealed'; }, /sealed stdin: cannot open sealed value: not a 's1\.' sealed value/],
  ];
  for (const [what, mutate, re] of cases) {
    const req = request({ argv: ['sh', '-c', 'echo ran'] });
    mutate(req);
    const r = await run(req, { sealed: true });
    t.match(r.result, { status: 'error', exitCode: -1, error: re }, what);
    t.ok(r.out === '' && r.started.length === 0, `${what}: nothing ran`);
  }
  const noId = request({ argv: ['true'] });
  noId.sealedStdin = seal('x', noId.executionId);
  t.match((await run(noId, { sealed: true, agentId: undefined })).result, { status: 'error', error: /the agent has no id yet/ }, 'before the welcome');
});

async function until(cond: () => boolean, timeoutMs = 5_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

t.test('StopSignal: aborts once, with its reason; listeners removed or added after the abort are not called', async (t) => {
  const { StopSignal, stopReason } = await import('../agent/runners/types.js');
  const s = new StopSignal();
  const calls: string[] = [];
  const a = () => calls.push('a'), b = () => calls.push('b'), c = () => calls.push('c');
  s.addEventListener('abort', a, { once: true });
  s.addEventListener('abort', b);
  s.addEventListener('abort', c);
  s.removeEventListener('abort', b);
  t.equal(stopReason(s), undefined, 'running');
  s.abort('timeout');
  s.abort('canceled');
  t.same(calls, ['a', 'c'], 'each listener still added is called once, in order');
  t.equal(stopReason(s), 'timeout', 'the first reason stays');
  s.addEventListener('abort', () => calls.push('late'));
  t.same(calls, ['a', 'c'], 'a listener added after the abort is never called');
  // One listener throwing does not keep the next from running; the error comes out after.
  const s2 = new StopSignal();
  const seen: string[] = [];
  s2.addEventListener('abort', () => { throw new Error('boom'); });
  s2.addEventListener('abort', () => seen.push('second'));
  t.throws(() => s2.abort('canceled'), /boom/);
  t.same(seen, ['second']);
  t.equal(stopReason(s2), 'canceled');
});
