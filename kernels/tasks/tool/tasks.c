/* Demo.Tasks — the host serves the task lifecycle; the guest adds `progress`: how many entries the
 * `delta` object of its data has, so a caller can score an update before sending it. */
#include "kernel.h"
#include "ck.h"

static bool progress(ck_str *data, ck_str *ret, ck_error *err) {
  ck_json j = {data->ptr, data->ptr + data->len, false};
  if (!ck_json_find(&j, "delta") || !ck_json_eat(&j, '{')) return ck_fail(err, 400, "`progress` needs a `delta` object");
  uint64_t entries = 0;
  if (!ck_json_eat(&j, '}')) {
    do {
      ck_buf key = {0};
      bool ok = ck_json_string(&j, &key) && ck_json_eat(&j, ':') && ck_json_skip(&j);
      free(key.ptr);
      if (!ok) return ck_fail(err, 400, "malformed `delta`");
      entries++;
    } while (ck_json_eat(&j, ','));
    if (!ck_json_eat(&j, '}')) return ck_fail(err, 400, "malformed `delta`");
  }
  ck_buf b = {0};
  ck_buf_puts(&b, "{\"entries\":");
  ck_buf_u64(&b, entries);
  ck_buf_puts(&b, "}");
  return ck_ok_buf(ret, &b);
}

bool exports_conceptkernel_kernel_handler_handle(ck_str *action, ck_str *data, ck_context *ctx, ck_str *ret,
                                                 ck_error *err) {
  bool ok = ck_eq(action, "progress") ? progress(data, ret, err)
                                      : ck_fail(err, 404, "Demo.Tasks's code knows `progress`; task.* is served by the host");
  kernel_string_free(data);
  kernel_string_free(action);
  exports_conceptkernel_kernel_handler_context_free(ctx);
  return ok;
}
