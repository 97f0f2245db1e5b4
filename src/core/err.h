/* Errors: every function that can fail takes an fy_err* and returns 0 on
 * success or -1 on failure, after writing a one-line reason into err.
 * The message says what was wrong and where (file, key, tensor, flag). */
#ifndef FY_ERR_H
#define FY_ERR_H

#include <stddef.h>

typedef struct fy_err {
    char msg[1024];
} fy_err;

/* Sets err->msg (printf-style) and returns -1, so callers can write
 * `return fy_fail(err, "bad %s", what);`. err may be NULL. */
int fy_fail(fy_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prefixes an existing message with context ("loading x: " + old msg). */
int fy_wrap(fy_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
