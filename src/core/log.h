/* Logging to stderr with a process-wide level (default info). The library
 * never reads the environment: the CLI sets the level (FERRY_LOG, through
 * fy_log_set_level) once at startup. */
#ifndef FY_LOG_H
#define FY_LOG_H

enum { FY_LOG_ERROR = 0, FY_LOG_WARN = 1, FY_LOG_INFO = 2, FY_LOG_DEBUG = 3 };

/* Messages above level (FY_LOG_*) are dropped; values outside the range are
 * clamped into it. Set once at startup, before threads log. */
void fy_log_set_level(int level);
int fy_log_level(void);

void fy_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define fy_info(...) fy_log(FY_LOG_INFO, __VA_ARGS__)
#define fy_warn(...) fy_log(FY_LOG_WARN, __VA_ARGS__)
#define fy_debug(...) fy_log(FY_LOG_DEBUG, __VA_ARGS__)

#endif
