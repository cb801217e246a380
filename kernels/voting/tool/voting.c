/*
 * CS.Voting — tallies ballots.
 *
 *   tally  {"ballots": ["a", "b", "a"], "candidates": ["a", "b", "c"]?}
 *       -> {"total": 3, "valid": 3, "invalid": 0, "counts": {"a": 2, "b": 1}, "winner": "a",
 *           "tie": false}
 *   Candidates, when given, bound what counts: other ballots are invalid. Counts are listed by
 *   votes (descending), then name. A tie for first place has no winner.
 */
#include "kernel.h"
#include "ck.h"

typedef struct {
  ck_buf name;
  uint64_t votes;
  bool allowed; /* listed in `candidates` */
} tally_entry;

typedef struct {
  tally_entry *items;
  size_t len, cap;
} tally;

static tally_entry *find(tally *t, const ck_buf *name) {
  for (size_t i = 0; i < t->len; i++)
    if (t->items[i].name.len == name->len && memcmp(t->items[i].name.ptr, name->ptr, name->len) == 0)
      return &t->items[i];
  return NULL;
}

static tally_entry *add(tally *t, ck_buf name) {
  if (t->len == t->cap) {
    t->cap = t->cap ? t->cap * 2 : 16;
    t->items = realloc(t->items, t->cap * sizeof *t->items);
    if (!t->items) abort();
  }
  t->items[t->len] = (tally_entry){.name = name, .votes = 0, .allowed = false};
  return &t->items[t->len++];
}

static int by_votes_then_name(const void *a, const void *b) {
  const tally_entry *x = a, *y = b;
  if (x->votes != y->votes) return x->votes > y->votes ? -1 : 1;
  size_t n = x->name.len < y->name.len ? x->name.len : y->name.len;
  int c = memcmp(x->name.ptr, y->name.ptr, n);
  if (c) return c;
  return x->name.len < y->name.len ? -1 : (x->name.len > y->name.len);
}

static void free_tally(tally *t) {
  for (size_t i = 0; i < t->len; i++) free(t->items[i].name.ptr);
  free(t->items);
}

/* Reads a JSON array of strings at the reader's position, calling `each` on every item. */
static bool read_strings(ck_json *j, tally *t, bool candidates, uint64_t *count, ck_error *err) {
  if (!ck_json_eat(j, '[')) return ck_fail(err, 400, candidates ? "`candidates` must be a list of strings"
                                                                  : "`ballots` must be a list of strings");
  if (ck_json_eat(j, ']')) return true;
  do {
    ck_buf name = {0};
    if (!ck_json_string(j, &name)) {
      free(name.ptr);
      return ck_fail(err, 400, candidates ? "`candidates` must hold strings only" : "`ballots` must hold strings only");
    }
    tally_entry *e = find(t, &name);
    if (e) free(name.ptr); else e = add(t, name);
    if (candidates) e->allowed = true; else { e->votes++; (*count)++; }
  } while (ck_json_eat(j, ','));
  if (!ck_json_eat(j, ']')) return ck_fail(err, 400, "malformed list");
  return true;
}

static bool do_tally(ck_str *data, ck_str *ret, ck_error *err) {
  tally t = {0};
  uint64_t total = 0, ignored = 0;
  bool restricted = false;

  ck_json j = {data->ptr, data->ptr + data->len, false};
  if (ck_json_find(&j, "candidates")) {
    restricted = true;
    if (!read_strings(&j, &t, true, &ignored, err)) { free_tally(&t); return false; }
  }
  j = (ck_json){data->ptr, data->ptr + data->len, false};
  if (!ck_json_find(&j, "ballots")) {
    free_tally(&t);
    return ck_fail(err, 400, j.failed ? "data is not a JSON object" : "missing `ballots`: a list of candidate names");
  }
  if (!read_strings(&j, &t, false, &total, err)) { free_tally(&t); return false; }

  uint64_t invalid = 0;
  size_t kept = 0;
  for (size_t i = 0; i < t.len; i++) {
    if (restricted && !t.items[i].allowed) { invalid += t.items[i].votes; free(t.items[i].name.ptr); continue; }
    t.items[kept++] = t.items[i];
  }
  t.len = kept;
  qsort(t.items, t.len, sizeof *t.items, by_votes_then_name);

  ck_buf b = {0};
  ck_buf_puts(&b, "{\"total\":");
  ck_buf_u64(&b, total);
  ck_buf_puts(&b, ",\"valid\":");
  ck_buf_u64(&b, total - invalid);
  ck_buf_puts(&b, ",\"invalid\":");
  ck_buf_u64(&b, invalid);
  ck_buf_puts(&b, ",\"counts\":{");
  for (size_t i = 0; i < t.len; i++) {
    if (i) ck_buf_puts(&b, ",");
    ck_buf_json(&b, t.items[i].name.ptr, t.items[i].name.len);
    ck_buf_puts(&b, ":");
    ck_buf_u64(&b, t.items[i].votes);
  }
  ck_buf_puts(&b, "}");
  bool tie = t.len > 1 && t.items[0].votes == t.items[1].votes && t.items[0].votes > 0;
  ck_buf_puts(&b, ",\"winner\":");
  if (t.len > 0 && t.items[0].votes > 0 && !tie) ck_buf_json(&b, t.items[0].name.ptr, t.items[0].name.len);
  else ck_buf_puts(&b, "null");
  ck_buf_puts(&b, tie ? ",\"tie\":true}" : ",\"tie\":false}");
  free_tally(&t);
  return ck_ok_buf(ret, &b);
}

bool exports_conceptkernel_kernel_handler_handle(ck_str *action, ck_str *data, ck_context *ctx, ck_str *ret,
                                                 ck_error *err) {
  bool ok = ck_eq(action, "tally") ? do_tally(data, ret, err) : ck_fail(err, 404, "CS.Voting knows `tally`");
  kernel_string_free(data);
  kernel_string_free(action);
  exports_conceptkernel_kernel_handler_context_free(ctx);
  return ok;
}
