/**
 * Read-only checks of what a kill -9 left on disk (nothing here repairs a file), and the readers
 * of the hub's execution history and the clients' logs for the end-of-run checks.
 *
 * Hub data directory (hub/paths.ts): every top-level *.json (state.json is the store; hub.json,
 * admin-profile.json, ca-rotation.json, ...) must parse as a whole; executions/*.jsonl (state and
 * output lines) and audit/*.jsonl must be whole lines that each parse. An agent outbox
 * (agent/outbox): every segment a sequence of whole frames with good CRCs, cursor.json parses.
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { checkFrame } from '../../agent/outbox/record.js';

export interface TornReport { files: number; torn: string[] }

function jsonlTorn(path: string): boolean {
  const text = fs.readFileSync(path, 'utf8');
  if (text.length === 0) return false;
  if (!text.endsWith('\n')) return true;
  for (const line of text.split('\n')) {
    if (!line) continue;
    try { JSON.parse(line); } catch { return true; }
  }
  return false;
}

function jsonTorn(path: string): boolean {
  try { JSON.parse(fs.readFileSync(path, 'utf8')); return false; } catch { return true; }
}

const list = (dir: string) => { try { return fs.readdirSync(dir); } catch { return []; } };

/** The hub's state, history and audit files, right after a kill -9 (before the restart). */
export function checkHubFiles(dataDir: string): TornReport {
  const r: TornReport = { files: 0, torn: [] };
  const check = (path: string, torn: (p: string) => boolean) => { r.files++; if (torn(path)) r.torn.push(path); };
  for (const name of list(dataDir)) if (name.endsWith('.json')) check(join(dataDir, name), jsonTorn);
  for (const sub of ['executions', 'audit']) {
    for (const name of list(join(dataDir, sub))) if (name.endsWith('.jsonl')) check(join(dataDir, sub, name), jsonlTorn);
  }
  return r;
}

/** One agent outbox directory, read only (agent/outbox/files.ts scanSegment would cut a torn tail). */
export function checkOutbox(dir: string): TornReport {
  const r: TornReport = { files: 0, torn: [] };
  for (const name of list(dir)) {
    const path = join(dir, name);
    if (name === 'cursor.json') { r.files++; if (jsonTorn(path)) r.torn.push(path); continue; }
    if (!/^seg-\d{16}\.log$/.test(name)) continue;
    r.files++;
    const buf = fs.readFileSync(path);
    let off = 0;
    for (;;) {
      const f = checkFrame(buf, off, buf.length);
      if (!f) break;
      off += f.length;
    }
    if (off !== buf.length) r.torn.push(`${path} (${buf.length - off} bytes after the last whole frame)`);
  }
  return r;
}

/** A client's line logs: every line whole (accepted.log, ran.log). */
export function checkClientLogs(dir: string): TornReport {
  const r: TornReport = { files: 0, torn: [] };
  for (const name of ['accepted.log', 'ran.log']) {
    const path = join(dir, name);
    if (!fs.existsSync(path)) continue;
    r.files++;
    const text = fs.readFileSync(path, 'utf8');
    if (text.length > 0 && !text.endsWith('\n')) r.torn.push(path);
  }
  return r;
}

export interface HistRec { id: string; status: string; agentId: string; rule: string; triggerEventId: string; edge: boolean; error: string; requestedMs: number; finishedMs: number }

/** The last state line of every execution in DATA/executions (after the hub stopped). */
export function readHistory(dataDir: string): Map<string, HistRec> {
  const dir = join(dataDir, 'executions');
  const out = new Map<string, HistRec>();
  for (const name of list(dir).filter((n) => /^\d{12}\.jsonl$/.test(n)).sort()) {
    for (const line of fs.readFileSync(join(dir, name), 'utf8').split('\n')) {
      if (!line) continue;
      try {
        const l = JSON.parse(line) as { k: string; r: HistRec };
        if (l.k === 's' && l.r?.id) out.set(l.r.id, l.r);
      } catch { /* a torn line: counted by checkHubFiles after each kill */ }
    }
  }
  return out;
}

/** Lines of a client log split on spaces (a missing file reads as no lines). */
export function readFields(path: string): string[][] {
  let text: string;
  try { text = fs.readFileSync(path, 'utf8'); } catch { return []; }
  return text.split('\n').filter(Boolean).map((l) => l.split(' '));
}
