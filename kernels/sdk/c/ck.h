/*
 * ck.h — helpers for ConceptKernel kernels written in C.
 *
 * `ck build` puts this header and the generated contract bindings (kernel.h) beside your
 * sources, so a kernel includes both:
 *
 *     #include "kernel.h"
 *     #include "ck.h"
 *
 * Ownership, as the generated bindings define it:
 *  - the arguments of `handle` (action, data, ctx) belong to the kernel: free them, or move them
 *    into the result (`ck_ok_move`);
 *  - the result and the error message are freed by the bindings after the host copied them, so
 *    they must be heap memory (every helper here allocates);
 *  - arguments passed to host imports are only borrowed.
 *
 * No stdio: printf and friends pull in WASI, which kernels do not get. Log through the host.
 */
#ifndef CK_H
#define CK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernel.h"

typedef kernel_string_t ck_str;
typedef exports_conceptkernel_kernel_handler_kernel_error_t ck_error;
typedef exports_conceptkernel_kernel_handler_context_t ck_context;

/* True when `s` equals the NUL-terminated `lit`. */
static inline bool ck_eq(const ck_str *s, const char *lit) {
  size_t n = strlen(lit);
  return s->len == n && memcmp(s->ptr, lit, n) == 0;
}

/* A growable byte buffer. */
typedef struct {
  uint8_t *ptr;
  size_t len, cap;
} ck_buf;

static inline void ck_buf_reserve(ck_buf *b, size_t extra) {
  if (b->len + extra <= b->cap) return;
  size_t cap = b->cap ? b->cap * 2 : 64;
  while (cap < b->len + extra) cap *= 2;
  uint8_t *p = realloc(b->ptr, cap);
  if (!p) abort();
  b->ptr = p;
  b->cap = cap;
}

static inline void ck_buf_put(ck_buf *b, const void *data, size_t n) {
  ck_buf_reserve(b, n);
  memcpy(b->ptr + b->len, data, n);
  b->len += n;
}

static inline void ck_buf_puts(ck_buf *b, const char *s) { ck_buf_put(b, s, strlen(s)); }

static inline void ck_buf_u64(ck_buf *b, uint64_t v) {
  char tmp[20];
  int n = 0;
  do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
  ck_buf_reserve(b, (size_t)n);
  while (n) b->ptr[b->len++] = (uint8_t)tmp[--n];
}

/* Appends `s` as a JSON string literal, quotes included. */
static inline void ck_buf_json(ck_buf *b, const uint8_t *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  ck_buf_put(b, "\"", 1);
  for (size_t i = 0; i < n; i++) {
    uint8_t c = s[i];
    if (c == '"' || c == '\\') {
      uint8_t esc[2] = {'\\', c};
      ck_buf_put(b, esc, 2);
    } else if (c < 0x20) {
      uint8_t esc[6] = {'\\', 'u', '0', '0', (uint8_t)hex[c >> 4], (uint8_t)hex[c & 15]};
      ck_buf_put(b, esc, 6);
    } else {
      ck_buf_put(b, &c, 1);
    }
  }
  ck_buf_put(b, "\"", 1);
}

static inline void ck_buf_json_str(ck_buf *b, const ck_str *s) { ck_buf_json(b, s->ptr, s->len); }

/* Hands the buffer over as the result (the bindings free it). */
static inline bool ck_ok_buf(ck_str *ret, ck_buf *b) {
  ret->ptr = b->ptr;
  ret->len = b->len;
  b->ptr = NULL;
  b->len = b->cap = 0;
  return true;
}

/* Returns an argument unchanged as the result. */
static inline bool ck_ok_move(ck_str *ret, ck_str *from) {
  *ret = *from;
  from->ptr = NULL;
  from->len = 0;
  return true;
}

/* Fails the call with an HTTP-style code and a message. */
static inline bool ck_fail(ck_error *err, uint16_t code, const char *message) {
  err->code = code;
  kernel_string_dup(&err->message, message);
  return false;
}

/* Logs through the host. */
static inline void ck_log(conceptkernel_kernel_host_level_t level, const char *message) {
  ck_str m;
  kernel_string_set(&m, message);
  conceptkernel_kernel_host_log(level, &m);
}

/* ---- a small JSON reader: enough to pick fields out of request data ---- */

typedef struct {
  const uint8_t *p, *end;
  bool failed;
} ck_json;

static inline void ck_json_ws(ck_json *j) {
  while (j->p < j->end && (*j->p == ' ' || *j->p == '\n' || *j->p == '\r' || *j->p == '\t')) j->p++;
}

static inline bool ck_json_peek(ck_json *j, char c) {
  ck_json_ws(j);
  return j->p < j->end && *j->p == (uint8_t)c;
}

static inline bool ck_json_eat(ck_json *j, char c) {
  if (ck_json_peek(j, c)) { j->p++; return true; }
  return false;
}

/* Reads a JSON string into `out` (unescaped, heap-allocated; caller frees out->ptr). */
static inline bool ck_json_string(ck_json *j, ck_buf *out) {
  if (!ck_json_eat(j, '"')) { j->failed = true; return false; }
  while (j->p < j->end && *j->p != '"') {
    uint8_t c = *j->p++;
    if (c == '\\') {
      if (j->p >= j->end) break;
      uint8_t e = *j->p++;
      switch (e) {
        case 'n': c = '\n'; break;
        case 't': c = '\t'; break;
        case 'r': c = '\r'; break;
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'u': {
          /* Keep \uXXXX escapes as written: good enough for comparing and echoing. */
          uint8_t raw[2] = {'\\', 'u'};
          ck_buf_put(out, raw, 2);
          continue;
        }
        default: c = e;
      }
    }
    ck_buf_put(out, &c, 1);
  }
  if (!ck_json_eat(j, '"')) { j->failed = true; return false; }
  return true;
}

/* Skips any JSON value. */
static inline bool ck_json_skip(ck_json *j) {
  ck_json_ws(j);
  if (j->p >= j->end) { j->failed = true; return false; }
  uint8_t c = *j->p;
  if (c == '"') {
    ck_buf tmp = {0};
    bool ok = ck_json_string(j, &tmp);
    free(tmp.ptr);
    return ok;
  }
  if (c == '{' || c == '[') {
    char close = c == '{' ? '}' : ']';
    j->p++;
    if (ck_json_eat(j, close)) return true;
    do {
      if (c == '{') {
        ck_buf key = {0};
        bool ok = ck_json_string(j, &key);
        free(key.ptr);
        if (!ok || !ck_json_eat(j, ':')) { j->failed = true; return false; }
      }
      if (!ck_json_skip(j)) return false;
    } while (ck_json_eat(j, ','));
    if (!ck_json_eat(j, close)) { j->failed = true; return false; }
    return true;
  }
  /* number, true, false, null */
  const uint8_t *start = j->p;
  while (j->p < j->end && *j->p != ',' && *j->p != '}' && *j->p != ']' && *j->p != ' ' && *j->p != '\n') j->p++;
  if (j->p == start) { j->failed = true; return false; }
  return true;
}

/* Positions the reader at the value of `key` in the top-level object; false if absent. */
static inline bool ck_json_find(ck_json *j, const char *key) {
  if (!ck_json_eat(j, '{')) { j->failed = true; return false; }
  if (ck_json_eat(j, '}')) return false;
  do {
    ck_buf k = {0};
    if (!ck_json_string(j, &k) || !ck_json_eat(j, ':')) { free(k.ptr); j->failed = true; return false; }
    bool hit = k.len == strlen(key) && memcmp(k.ptr, key, k.len) == 0;
    free(k.ptr);
    if (hit) { ck_json_ws(j); return true; }
    if (!ck_json_skip(j)) return false;
  } while (ck_json_eat(j, ','));
  return false;
}

#endif
