/**
 * Agent-side secret handling: opening the sealed parts of an action request (env values, stdin,
 * HTTP header values) just before it runs, and masking those values (and their base64 forms)
 * out of the action's output. Secret values live in memory only for the duration of one action.
 */
import type crypto from 'node:crypto';
import { openSealed } from '../certs/seal.js';
import { TrellisError } from '../common/errors.js';
import { MASK, secretForms } from '../common/mask.js';
import type { Logger } from '../common/log.js';
import { runAction, type HttpPool, type RunningAction, type RunRequest, type RunSink } from './runners/index.js';

export { MASK };
const MASK_BYTES = Buffer.from(MASK);
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

const patternsOf = secretForms;

/**
 * Replaces every occurrence of any held value (or its base64 form) with `****`, in a stream of
 * chunks: the last maxLen-1 bytes are held back until the next chunk (or flush()), so a value
 * split across chunks is still masked. Occurrences that overlap or touch are masked as one run.
 * Use one masker per output stream; call flush() at the end and clear() when the action is over.
 */
export class SecretMasker {
  private patterns: Buffer[];
  private maxLen: number;
  /** Bytes already emitted, just before `pending` (up to maxLen-1): matches may start there. */
  private context = Buffer.alloc(0);
  /** Bytes received but not yet emitted. */
  private pending = Buffer.alloc(0);
  /** The output so far ends with a mask whose run ended exactly where `pending` begins. */
  private inMask = false;

  constructor(values: Iterable<string>) {
    const uniq = new Set<string>();
    for (const v of values) if (typeof v === 'string' && v.length > 0) for (const p of patternsOf(v)) if (p.length > 0) uniq.add(p);
    this.patterns = [...uniq].map((p) => Buffer.from(p, 'utf8'));
    this.maxLen = this.patterns.reduce((m, p) => Math.max(m, p.length), 0);
  }

  /** Masked output for this chunk (possibly shorter: up to maxLen-1 bytes wait for the next). */
  mask(chunk: Buffer): Buffer {
    if (this.patterns.length === 0) return chunk;
    return this.run(chunk, false);
  }

  /** The held-back tail, masked. The masker can be reused for a new stream afterwards. */
  flush(): Buffer {
    if (this.patterns.length === 0) return Buffer.alloc(0);
    const out = this.run(Buffer.alloc(0), true);
    this.context.fill(0);
    this.context = Buffer.alloc(0);
    this.inMask = false;
    return out;
  }

  /** Masks one complete string (no carry-over). */
  maskString(s: string): string {
    if (this.patterns.length === 0 || s.length === 0) return s;
    const m = new SecretMasker([]);
    m.patterns = this.patterns;
    m.maxLen = this.maxLen;
    return Buffer.concat([m.mask(Buffer.from(s, 'utf8')), m.flush()]).toString('utf8');
  }

  /** Forgets the values (best effort: the pattern buffers are zeroed). */
  clear(): void {
    for (const p of this.patterns) p.fill(0);
    this.pending.fill(0);
    this.context.fill(0);
    this.patterns = [];
    this.maxLen = 0;
    this.pending = Buffer.alloc(0);
    this.context = Buffer.alloc(0);
  }

  [Symbol.dispose](): void {
    this.clear();
  }

  private run(chunk: Buffer, final: boolean): Buffer {
    const buf = Buffer.concat([this.context, this.pending, chunk]);
    const base = this.context.length;
    let cut = Math.max(base, buf.length - (final ? 0 : this.maxLen - 1));
    const out: Buffer[] = [];
    let pos = base;
    let inMask = this.inMask;
    for (const [s, t] of this.runs(buf)) {
      if (t <= base) continue;
      if (s >= cut) break;
      const from = Math.max(s, base);
      if (from > pos) { out.push(buf.subarray(pos, from)); inMask = false; }
      if (!inMask) out.push(MASK_BYTES);
      inMask = true;
      pos = t;
      if (t > cut) cut = t;
    }
    if (cut > pos) { out.push(buf.subarray(pos, cut)); inMask = false; }
    this.inMask = inMask;
    const result = Buffer.concat(out);
    this.pending = Buffer.from(buf.subarray(cut));
    this.context = Buffer.from(buf.subarray(Math.max(0, cut - (this.maxLen - 1)), cut));
    buf.fill(0);
    return result;
  }

  /** Every occurrence of every pattern, as merged [start, end) runs (overlapping or touching joined). */
  private runs(buf: Buffer): Array<[number, number]> {
    const hits: Array<[number, number]> = [];
    for (const p of this.patterns) {
      for (let i = buf.indexOf(p); i !== -1; i = buf.indexOf(p, i + 1)) hits.push([i, i + p.length]);
    }
    if (hits.length < 2) return hits;
    hits.sort((a, b) => a[0] - b[0] || b[1] - a[1]);
    const merged: Array<[number, number]> = [hits[0]!];
    for (let k = 1; k < hits.length; k++) {
      const last = merged[merged.length - 1]!;
      const h = hits[k]!;
      if (h[0] <= last[1]) last[1] = Math.max(last[1], h[1]);
      else merged.push(h);
    }
    return merged;
  }
}

/**
 * Opens sealed env values (name -> sealed string) with the agent's key, all bound to aad
 * (`agent:<id>|exec:<id>`, see certs/seal.ts). Throws TRELLIS_E_INVALID_ARGUMENT naming the
 * variable if any does not open; nothing is returned partially.
 */
export function openSecretsForAction(sealed: Record<string, string>, key: crypto.KeyObject, aad: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(sealed ?? {})) {
    if (!ENV_NAME.test(name)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `secret env name '${name.slice(0, 64)}' is not a valid variable name`);
    let plain: Buffer;
    try {
      plain = openSealed(value, key, aad);
    } catch (err) {
      throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `secret env ${name}: ${(err as Error).message}`, { cause: err });
    }
    out[name] = plain.toString('utf8');
    plain.fill(0);
  }
  return out;
}

/** The opened secrets of one action, in memory only. */
export interface ActionSecrets {
  /** Environment variables (opened sealed_env). */
  env: Record<string, string>;
  /** The process's stdin (opened sealed_stdin); zeroed when the run is done. */
  stdin?: Buffer;
  /** HTTP header values (opened http.sealed_headers). */
  headers: Record<string, string>;
  /** More values to mask and keep out of argv (e.g. a secret spliced into a larger value). */
  mask?: string[];
}

const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$/;

/** True when the request carries anything sealed (opening it needs the agent's key and id). */
export function hasSealedValues(req: RunRequest): boolean {
  return Object.keys(req.sealedEnv ?? {}).length > 0 || !!req.sealedStdin || Object.keys(req.http?.sealedHeaders ?? {}).length > 0 || (req.sealedMask?.length ?? 0) > 0;
}

/**
 * Opens every sealed part of a request (sealed_env, sealed_stdin, http.sealed_headers, sealed_mask) with the
 * agent's key, all bound to the same aad (`agent:<id>|exec:<executionId>`). All or nothing:
 * throws naming the part that does not open (TRELLIS_E_INVALID_ARGUMENT for env, as
 * openSecretsForAction; TRELLIS_E_SECRET_INVALID for stdin and headers).
 */
export function openActionSecrets(req: RunRequest, key: crypto.KeyObject, aad: string): ActionSecrets {
  const env = openSecretsForAction(req.sealedEnv ?? {}, key, aad);
  const headers: Record<string, string> = {};
  const mask: string[] = [];
  let stdin: Buffer | undefined;
  try {
    for (const [name, value] of Object.entries(req.http?.sealedHeaders ?? {})) {
      if (!HEADER_NAME.test(name)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `secret header name '${name.slice(0, 64)}' is not a valid HTTP header name`);
      try {
        const plain = openSealed(value, key, aad);
        headers[name] = plain.toString('utf8');
        plain.fill(0);
      } catch (err) {
        throw new TrellisError('TRELLIS_E_SECRET_INVALID', `secret header ${name}: ${(err as Error).message}`, { cause: err });
      }
    }
    if (req.sealedStdin) {
      try {
        stdin = openSealed(req.sealedStdin, key, aad);
      } catch (err) {
        throw new TrellisError('TRELLIS_E_SECRET_INVALID', `sealed stdin: ${(err as Error).message}`, { cause: err });
      }
    }
    (req.sealedMask ?? []).forEach((value, i) => {
      try {
        const plain = openSealed(value, key, aad);
        mask.push(plain.toString('utf8'));
        plain.fill(0);
      } catch (err) {
        throw new TrellisError('TRELLIS_E_SECRET_INVALID', `sealed mask value ${i}: ${(err as Error).message}`, { cause: err });
      }
    });
  } catch (err) {
    for (const k of Object.keys(env)) delete env[k];
    mask.length = 0;
    stdin?.fill(0);
    throw err;
  }
  return { env, headers, stdin, mask };
}

/**
 * The values masked for a run: env and header values, and stdin without its final line breaks
 * (masking "pw\n" itself would also eat the newline after every echoed "pw").
 */
function maskValues(s: ActionSecrets): string[] {
  const values = [...Object.values(s.env), ...Object.values(s.headers), ...(s.mask ?? [])];
  if (s.stdin && s.stdin.length > 0) values.push(s.stdin.toString('utf8').replace(/[\r\n]+$/, ''));
  return [...new Set(values.filter((v) => v.length > 0))];
}

/**
 * runAction with secrets: env secrets reach the child through its environment, the stdin secret
 * through its stdin, header secrets only the HTTP request. A request whose argv or URL contains a
 * secret value is refused (thrown, TRELLIS_E_INVALID_ARGUMENT); stdout/stderr and the error
 * message are masked before they reach the sink. The maskers are cleared and the stdin buffer
 * zeroed when the run is done.
 */
export function runMasked(req: RunRequest, secrets: ActionSecrets, sink: RunSink, opts: { log?: Logger; http?: HttpPool } = {}): RunningAction {
  for (const name of Object.keys(secrets.env)) {
    if (!ENV_NAME.test(name)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `secret env name '${name.slice(0, 64)}' is not a valid variable name`);
  }
  const values = maskValues(secrets);
  if (req.argv.some((a) => values.some((v) => a.includes(v)))) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'a secret value appears in the action argv; secrets reach a process by environment only (or by stdin or an HTTP header)');
  }
  if (req.http?.url && values.some((v) => req.http!.url.includes(v))) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'a secret value appears in the http url; pass it in a sealed header instead');
  }
  const maskers = { STDOUT: new SecretMasker(values), STDERR: new SecretMasker(values) };
  return runAction(req, {
    output(stream, data) {
      const m = maskers[stream].mask(data);
      if (m.length > 0) sink.output(stream, m);
    },
    started: (pid) => sink.started?.(pid),
    done(r) {
      for (const stream of ['STDOUT', 'STDERR'] as const) {
        const m = maskers[stream].flush();
        if (m.length > 0) sink.output(stream, m);
      }
      const error = maskers.STDERR.maskString(r.error);
      maskers.STDOUT.clear();
      maskers.STDERR.clear();
      secrets.stdin?.fill(0);
      sink.done({ ...r, error });
    },
  }, { env: secrets.env, headers: secrets.headers, stdin: secrets.stdin, log: opts.log, http: opts.http });
}

/** runMasked with env secrets only (the form the first release had). */
export function runWithSecrets(req: RunRequest, secrets: Record<string, string>, sink: RunSink): RunningAction {
  return runMasked(req, { env: secrets, headers: {} }, sink);
}
