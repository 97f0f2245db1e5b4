/* JSON output helpers (jsonl.h): cJSON's compact print respaced, floats
 * printed shortest, non-finite reals as strings. Pure formatting: no file
 * names, no knowledge of what the keys mean. */
#include "train/jsonl.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

char *fy_json_print_spaced(const cJSON *j, int multiline) {
    char *s = j ? cJSON_PrintUnformatted(j) : NULL;
    if (!s) return NULL;
    size_t n = strlen(s);
    char *out = malloc(4 * n + 2); /* ", " or ",\n  " per separator: at most 4 bytes a byte */
    if (!out) {
        cJSON_free(s);
        return NULL;
    }
    size_t k = 0;
    int depth = 0, in_str = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_str) {
            out[k++] = c;
            if (c == '\\' && i + 1 < n) out[k++] = s[++i];
            else if (c == '"') in_str = 0;
            continue;
        }
        const int top = multiline && depth == 1;
        if (c == '"') in_str = 1;
        if ((c == '}' || c == ']') && top) k += (size_t)sprintf(out + k, "\n");
        out[k++] = c;
        if (c == '{' || c == '[') depth++;
        if (c == '}' || c == ']') depth--;
        if (c == ':') out[k++] = ' ';
        if (c == ',') k += (size_t)sprintf(out + k, top ? "\n  " : " ");
        if (c == '{' && multiline && depth == 1) k += (size_t)sprintf(out + k, "\n  ");
    }
    if (multiline) out[k++] = '\n';
    out[k] = '\0';
    cJSON_free(s);
    return out;
}

/* The line goes out in write(2) calls of its own, never through stdio's
 * buffer, which a full disk would leave cut at a buffer boundary: a short or
 * failed write is cut back off, so the file holds whole lines only. */
int fy_json_append_line(FILE *f, const cJSON *j) {
    char *s = fy_json_print_spaced(j, 0);
    if (!s) {
        errno = ENOMEM;
        return -1;
    }
    size_t n = strlen(s), done = 0;
    s[n++] = '\n'; /* replaces the NUL: written with its length */
    int fd = fflush(f) == 0 ? fileno(f) : -1;
    off_t end = fd >= 0 ? lseek(fd, 0, SEEK_END) : -1;
    int rc = fd >= 0 ? 0 : -1;
    while (rc == 0 && done < n) {
        ssize_t w = write(fd, s + done, n - done);
        if (w > 0) done += (size_t)w;
        else if (w == 0) errno = ENOSPC, rc = -1;
        else if (errno != EINTR) rc = -1;
    }
    free(s);
    if (rc && done && end >= 0) {
        int e = errno;
        if (ftruncate(fd, end) != 0) { /* a device (/dev/full) has no length to restore */ }
        errno = e;
    }
    return rc;
}

cJSON *fy_json_add_float(cJSON *o, const char *key, float f) {
    if (!isfinite(f)) return fy_json_add_real(o, key, f);
    char buf[32];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f) break;
    }
    return cJSON_AddNumberToObject(o, key, strtod(buf, NULL));
}

cJSON *fy_json_add_real(cJSON *o, const char *key, double d) {
    if (isfinite(d)) return cJSON_AddNumberToObject(o, key, d);
    return cJSON_AddStringToObject(o, key, isnan(d) ? "nan" : d > 0 ? "inf" : "-inf");
}
