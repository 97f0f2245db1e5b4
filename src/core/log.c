/* Logging to stderr: a level tag, the message, a newline. The level is the
 * one global setting here (the CLI sets it at startup); nothing reads the
 * environment. */
#include "core/log.h"

#include <stdarg.h>
#include <stdio.h>

static int g_level = FY_LOG_INFO;

void fy_log_set_level(int level) {
    g_level = level < FY_LOG_ERROR ? FY_LOG_ERROR : level > FY_LOG_DEBUG ? FY_LOG_DEBUG : level;
}

int fy_log_level(void) { return g_level; }

void fy_log(int level, const char *fmt, ...) {
    if (level > g_level) return;
    static const char *tag[] = {"error", "warn", "info", "debug"};
    fprintf(stderr, "[%s] ", tag[level]);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}
