/* Logging to stderr; the level comes from FERRY_LOG (error|warn|info|debug). */
#ifndef FY_LOG_H
#define FY_LOG_H

enum { FY_LOG_ERROR = 0, FY_LOG_WARN = 1, FY_LOG_INFO = 2, FY_LOG_DEBUG = 3 };

void fy_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define fy_info(...) fy_log(FY_LOG_INFO, __VA_ARGS__)
#define fy_warn(...) fy_log(FY_LOG_WARN, __VA_ARGS__)
#define fy_debug(...) fy_log(FY_LOG_DEBUG, __VA_ARGS__)

#endif
