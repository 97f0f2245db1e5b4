#include "core/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int log_level(void) {
    const char *s = getenv("FERRY_LOG");
    if (!s) return FY_LOG_INFO;
    if (!strcmp(s, "error")) return FY_LOG_ERROR;
    if (!strcmp(s, "warn")) return FY_LOG_WARN;
    if (!strcmp(s, "debug")) return FY_LOG_DEBUG;
    return FY_LOG_INFO;
}

void fy_log(int level, const char *fmt, ...) {
    if (level > log_level()) return;
    static const char *tag[] = {"error", "warn", "info", "debug"};
    fprintf(stderr, "[%s] ", tag[level]);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}
