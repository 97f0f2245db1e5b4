/* fy_fail and fy_wrap (core/err.h): the one-line error message every
 * failing function leaves in its fy_err. */
#include "core/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int fy_fail(fy_err *err, const char *fmt, ...) {
    if (!err) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return -1;
}

int fy_wrap(fy_err *err, const char *fmt, ...) {
    if (!err) return -1;
    char prefix[512], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    /* Truncation is fine here (the message keeps its start), but spelled out
     * so the compiler need not warn about it. */
    size_t cap = sizeof err->msg, pl = strnlen(prefix, cap - 3);
    memcpy(err->msg, prefix, pl);
    memcpy(err->msg + pl, ": ", 2);
    size_t ol = strnlen(old, cap - pl - 3);
    memcpy(err->msg + pl + 2, old, ol);
    err->msg[pl + 2 + ol] = '\0';
    return -1;
}
