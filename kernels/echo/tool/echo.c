/* Demo.Echo — answers `echo` with its data unchanged, and `whoami` with the call context. */
#include "kernel.h"
#include "ck.h"

bool exports_conceptkernel_kernel_handler_handle(ck_str *action, ck_str *data, ck_context *ctx, ck_str *ret,
                                                 ck_error *err) {
  bool ok;
  if (ck_eq(action, "echo")) {
    ok = ck_ok_move(ret, data);
  } else if (ck_eq(action, "whoami") || ck_eq(action, "whoami.verified")) {
    ck_buf b = {0};
    ck_buf_puts(&b, "{\"trace_id\":");
    ck_buf_json_str(&b, &ctx->trace_id);
    ck_buf_puts(&b, ",\"caller\":");
    ck_buf_json_str(&b, &ctx->caller);
    ck_buf_puts(&b, ",\"task_id\":");
    if (ctx->task_id.is_some) ck_buf_json_str(&b, &ctx->task_id.val); else ck_buf_puts(&b, "null");
    ck_buf_puts(&b, ",\"kernel\":");
    ck_buf_json_str(&b, &ctx->kernel_name);
    ck_buf_puts(&b, ",\"guid\":");
    ck_buf_json_str(&b, &ctx->kernel_guid);
    ck_buf_puts(&b, "}");
    ok = ck_ok_buf(ret, &b);
  } else {
    ok = ck_fail(err, 404, "Demo.Echo knows `echo`, `whoami` and `whoami.verified`");
  }
  kernel_string_free(data);
  kernel_string_free(action);
  exports_conceptkernel_kernel_handler_context_free(ctx);
  return ok;
}
