/*
 * Test.Hostile — misbehaves on purpose, one way per action, so tests can prove that a kernel
 * that loops, traps, exhausts memory, publishes where it may not, or floods its output gets an
 * error for that message only while every other kernel keeps being served.
 */
#include "kernel.h"
#include "ck.h"

static volatile uint64_t sink;

bool exports_conceptkernel_kernel_handler_handle(ck_str *action, ck_str *data, ck_context *ctx, ck_str *ret,
                                                 ck_error *err) {
  bool ok;
  if (ck_eq(action, "spin")) {
    for (;;) sink++; /* endless loop: stopped by the epoch deadline */
  } else if (ck_eq(action, "hog")) {
    for (;;) { /* memory hog: stopped by the memory cap */
      uint8_t *p = malloc(1 << 20);
      if (!p) break;
      memset(p, 1, 1 << 20);
      sink += p[12345];
    }
    ok = ck_fail(err, 500, "malloc returned NULL before the host stopped the hog");
  } else if (ck_eq(action, "crash")) {
    __builtin_trap(); /* trap */
  } else if (ck_eq(action, "sneak") || ck_eq(action, "stray")) {
    /* sneak: another kernel's DATA subject; stray: a subject outside every declared family (a
     * misspelt platform family). The host must refuse both before NATS sees them. */
    ck_str subject;
    kernel_string_set(&subject, ck_eq(action, "sneak")
                                    ? "ck.5c4d3e2f-1a0b-4c9d-8e7f-6a5b4c3d2e10.data.written"
                                    : "platform.capabilty.changed.v1");
    kernel_list_u8_t payload = {(uint8_t *)"{\"forged\":true}", 15};
    conceptkernel_kernel_host_publish_error_t perr;
    if (conceptkernel_kernel_host_publish(&subject, &payload, &perr)) {
      ok = ck_fail(err, 500, "the forged publish was accepted");
    } else {
      ck_buf b = {0};
      if (perr.tag == CONCEPTKERNEL_KERNEL_HOST_PUBLISH_ERROR_DENIED) {
        ck_buf_puts(&b, "{\"denied\":{\"subject\":");
        ck_buf_json_str(&b, &perr.val.denied.subject);
        ck_buf_puts(&b, ",\"reason\":");
        ck_buf_json_str(&b, &perr.val.denied.reason);
        ck_buf_puts(&b, "}}");
      } else {
        ck_buf_puts(&b, "{\"other_error\":true}");
      }
      conceptkernel_kernel_host_publish_error_free(&perr);
      ok = ck_ok_buf(ret, &b);
    }
  } else if (ck_eq(action, "flood")) {
    /* A 4 MiB result, over the kernel's max_result_bytes. */
    size_t n = 4u << 20;
    ck_buf b = {0};
    ck_buf_reserve(&b, n + 2);
    b.ptr[0] = '"';
    memset(b.ptr + 1, 'x', n);
    b.ptr[n + 1] = '"';
    b.len = n + 2;
    ok = ck_ok_buf(ret, &b);
  } else {
    ok = ck_fail(err, 404, "Test.Hostile knows spin, hog, crash, sneak, stray and flood");
  }
  kernel_string_free(data);
  kernel_string_free(action);
  exports_conceptkernel_kernel_handler_context_free(ctx);
  return ok;
}
