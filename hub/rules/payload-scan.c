/*
 * The payload scanner of hub/rules/payload-fields.ts, compiled to WebAssembly
 * (scripts/build-payload-scan.mjs writes hub/rules/payload-scan-wasm.ts from this file; CI uses
 * that generated file and needs no compiler).
 *
 * One pass over an event payload's bytes: checks that the whole payload is JSON exactly as
 * JSON.parse(payload.toString('utf8')) would accept it, and notes where the values of the wanted
 * top-level keys lie (the last one of a key given twice, as JSON.parse keeps). It is the same
 * algorithm as the TypeScript scanner in payload-fields.ts, which stays the reference and the
 * fallback: for a key spelled with an escape or non-ASCII bytes, nesting deeper than MAX_DEPTH,
 * a payload larger than the module's input area, or where WebAssembly is off, the TypeScript
 * scanner decides. Here it runs ~3x faster (the rules' share of ingest CPU was mostly this scan).
 *
 * Memory (laid out by the caller): the payload at `b`, followed by one 0 byte (b[n] == 0, so that
 * every read one past the end fails as the TypeScript scanner's reads of `undefined` do) and 16
 * bytes of slack (the 16-byte string loop may read past the 0, and stops at it). A fault here can
 * only give a wrong answer or a trap inside the module's own memory; the caller falls back to
 * JSON.parse on a trap.
 */
#include <wasm_simd128.h>

typedef unsigned char u8;
typedef int i32;

/* Scan results. */
#define NOT_JSON 0
#define OBJECT 1    /* out[] filled */
#define NOT_OBJECT 2 /* the first byte is not '{': the caller parses it whole */
#define FALLBACK 3  /* the TypeScript scanner decides (escaped or non-ASCII key, deep nesting) */

#define OBJ 1
#define ARR 2
#define MAX_DEPTH 4096

static u8 stack[MAX_DEPTH];
/* Set by str(): the string had an escape or a non-ASCII byte. */
static int special;

static inline int is_ws(u8 c) { return c == 0x20 || c == 0x0a || c == 0x0d || c == 0x09; }
static inline i32 ws(const u8 *b, i32 i) { while (is_ws(b[i])) i++; return i; } /* stops at the 0 after the payload */
static inline int digit(u8 c) { return c >= 0x30 && c <= 0x39; }
static inline int hex(u8 c) { return digit(c) || (c >= 0x41 && c <= 0x46) || (c >= 0x61 && c <= 0x66); }

/* Past the string starting at the quote `i`, or -1 (unterminated, bad escape, raw control byte). */
static i32 str(const u8 *b, i32 i, i32 n) {
  int sp = 0;
  i32 j = i + 1;
  for (;;) {
    /* 16 bytes at a time: where the first quote, backslash or control byte (the 0 after the
       payload is one) is, and whether a byte before it is non-ASCII (its high bit). Bytes after
       that stop are never looked at, so reading past the payload's end is harmless. */
    v128_t v = wasm_v128_load(b + j);
    v128_t stop = wasm_v128_or(wasm_u8x16_lt(v, wasm_i8x16_splat(0x20)),
                               wasm_v128_or(wasm_i8x16_eq(v, wasm_i8x16_splat(0x22)), wasm_i8x16_eq(v, wasm_i8x16_splat(0x5c))));
    i32 m = wasm_i8x16_bitmask(stop), high = wasm_i8x16_bitmask(v);
    if (m == 0) { if (high) sp = 1; j += 16; continue; }
    i32 k = __builtin_ctz(m);
    if (high & ((1 << k) - 1)) sp = 1;
    j += k;
    u8 c = b[j];
    if (c == 0x22) { if (j >= n) return -1; special = sp; return j + 1; }
    if (c == 0x5c) {
      sp = 1;
      u8 d = b[j + 1];
      if (d == 0x75) { /* \uXXXX */
        if (j + 5 >= n || !hex(b[j + 2]) || !hex(b[j + 3]) || !hex(b[j + 4]) || !hex(b[j + 5])) return -1;
        j += 6;
      } else if (d == 0x22 || d == 0x5c || d == 0x2f || d == 0x62 || d == 0x66 || d == 0x6e || d == 0x72 || d == 0x74) j += 2;
      else return -1;
      continue;
    }
    return -1; /* a control byte, or the 0 after the payload */
  }
}

/* Past the JSON number at `i`, or -1. */
static i32 num(const u8 *b, i32 i) {
  if (b[i] == 0x2d) i++;
  if (b[i] == 0x30) i++;
  else if (digit(b[i])) { while (digit(b[i])) i++; } else return -1;
  if (b[i] == 0x2e) { i++; if (!digit(b[i])) return -1; while (digit(b[i])) i++; }
  if (b[i] == 0x65 || b[i] == 0x45) {
    i++;
    if (b[i] == 0x2b || b[i] == 0x2d) i++;
    if (!digit(b[i])) return -1;
    while (digit(b[i])) i++;
  }
  return i;
}

static i32 lit(const u8 *b, i32 i, const char *w, i32 len) {
  for (i32 k = 0; k < len; k++) if (b[i + k] != (u8)w[k]) return -1;
  return i + len;
}

/* Index of the wanted key spelled by bytes [s, e) (plain ASCII), or -1. keys: (address, length) pairs. */
static i32 wanted(const u8 *b, i32 s, i32 e, const i32 *keys, i32 nkeys) {
  i32 len = e - s;
  for (i32 k = 0; k < nkeys; k++) {
    if (keys[2 * k + 1] != len) continue;
    const u8 *kb = (const u8 *)keys[2 * k];
    i32 j = 0;
    while (j < len && b[s + j] == kb[j]) j++;
    if (j == len) return k;
  }
  return -1;
}

/*
 * Scans the payload b[0, n). For OBJECT, out holds per wanted key (start, end, special): the byte
 * range of its value (start -1: absent) and whether a string value had an escape or non-ASCII.
 */
__attribute__((export_name("scan")))
i32 scan(const u8 *b, i32 n, const i32 *keys, i32 nkeys, i32 *out) {
  for (i32 k = 0; k < nkeys; k++) out[3 * k] = -1;
  i32 i = ws(b, 0);
  if (i >= n) return NOT_JSON;
  if (b[i] != 0x7b) return NOT_OBJECT;
  i32 depth = 0, cur = -1;
  enum { VALUE, AFTER, KEY } mode = VALUE;
  for (;;) {
    if (mode == VALUE) {
      if (i >= n) return NOT_JSON;
      u8 c = b[i];
      if (c == 0x7b || c == 0x5b) { /* { [ */
        i = ws(b, i + 1);
        if (i >= n) return NOT_JSON;
        if (b[i] == (c == 0x7b ? 0x7d : 0x5d)) { i++; mode = AFTER; continue; }
        if (depth == MAX_DEPTH) return FALLBACK;
        stack[depth++] = c == 0x7b ? OBJ : ARR;
        mode = c == 0x7b ? KEY : VALUE;
        continue;
      }
      if (c == 0x22) i = str(b, i, n);
      else if (c == 0x2d || digit(c)) i = num(b, i);
      else if (c == 0x74) i = lit(b, i, "true", 4);
      else if (c == 0x66) i = lit(b, i, "false", 5);
      else if (c == 0x6e) i = lit(b, i, "null", 4);
      else return NOT_JSON;
      if (i < 0 || i > n) return NOT_JSON;
      mode = AFTER;
      continue;
    }
    if (mode == AFTER) {
      if (depth == 1 && cur >= 0) { out[3 * cur + 1] = i; out[3 * cur + 2] = special; cur = -1; }
      i = ws(b, i);
      if (depth == 0) return i == n ? OBJECT : NOT_JSON;
      if (i >= n) return NOT_JSON;
      u8 c = b[i];
      u8 top = stack[depth - 1];
      if (c == 0x2c) { i = ws(b, i + 1); mode = top == OBJ ? KEY : VALUE; continue; } /* , */
      if ((top == OBJ && c == 0x7d) || (top == ARR && c == 0x5d)) { i++; depth--; continue; }
      return NOT_JSON;
    }
    /* KEY */
    if (i >= n || b[i] != 0x22) return NOT_JSON;
    i32 ks = i;
    i = str(b, i, n);
    if (i < 0) return NOT_JSON;
    if (depth == 1) {
      if (special) return FALLBACK; /* the key must be decoded to be compared */
      cur = wanted(b, ks + 1, i - 1, keys, nkeys);
    }
    i = ws(b, i);
    if (i >= n || b[i] != 0x3a) return NOT_JSON; /* : */
    i = ws(b, i + 1);
    if (depth == 1 && cur >= 0) { out[3 * cur] = i; special = 0; }
    mode = VALUE;
  }
}
