/**
 * Text from outside (agent facts, labels, event payloads, execution output and errors, audit
 * details) must never drive the reader's terminal. `cleanText`:
 *  1. writes DEL, the C1 controls (0x80-0x9f, which include 8-bit CSI and OSC), Unicode bidi
 *     overrides and line/paragraph separators as the visible text `\uXXXX` (lossless in JSON,
 *     where that is exactly their escape, and visible anywhere else);
 *  2. removes terminal escape sequences introduced by ESC (CSI, OSC, DCS/SOS/PM/APC strings up
 *     to their terminator, and two-character ESC sequences);
 *  3. replaces every other C0 control character (except \n and \t in multi-line text; \r\n
 *     becomes \n) with U+FFFD, so the reader sees something was there.
 * JSON.stringify output passes through unchanged in meaning (it never holds a raw C0 character).
 * Used by the hub (the facts it stores) and by the CLI (everything it prints).
 */

/* eslint-disable no-control-regex */
const WIDE = /[\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]/g;
const ESCAPES = /\x1b\[[0-?]*[ -/]*[@-~]?|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -~]?/g;
const C0_MULTI = /[\x00-\x08\x0b-\x1f]/g;
const C0_LINE = /[\x00-\x1f]/g;
const ANY_MULTI = /[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]/;
const ANY_LINE = /[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]/;
/* eslint-enable no-control-regex */

/** True when `s` holds nothing `cleanText` would change. */
export function isCleanText(s: string, o: { multiline?: boolean } = {}): boolean {
  return !(o.multiline ? ANY_MULTI : ANY_LINE).test(s);
}

/** `s` safe to show on a terminal (see the module comment). `multiline` keeps \n and \t. */
export function cleanText(s: string, o: { multiline?: boolean } = {}): string {
  if (isCleanText(s, o)) return s; // the common case costs one scan
  let t = s.replace(WIDE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  if (o.multiline) t = t.replace(/\r\n/g, '\n');
  return t.replace(ESCAPES, '').replace(o.multiline ? C0_MULTI : C0_LINE, '\uFFFD');
}
