/* JSON output of the trainer and the supervisor (metrics.jsonl,
 * trainer_state.json, restarts.jsonl, the options object), built with cJSON
 * and printed in the files' "key": value, style; values read back exactly. */
#ifndef FY_JSONL_H
#define FY_JSONL_H

#include <stdio.h>

#include <cjson/cJSON.h>

/* j as {"a": 1, "b": [2, 3]} on one line, or (multiline) one top-level
 * member a line, indented by two spaces, with a final newline. Caller frees;
 * NULL when out of memory or j is NULL. */
char *fy_json_print_spaced(const cJSON *j, int multiline);
/* Appends j to f as one whole line or not at all: -1 with errno set
 * (ENOMEM, ENOSPC, ...) and the file cut back to its length before. f is
 * written past its stdio buffer (flushed first). */
int fy_json_append_line(FILE *f, const cJSON *j);
/* f as the shortest decimal that reads back as f (0.002, not the float's
 * exact value 0.0020000000949949026). */
cJSON *fy_json_add_float(cJSON *o, const char *key, float f);
/* d as a number (printed so that it reads back as d), or, when it is not
 * finite (JSON has no NaN), as the string "nan", "inf" or "-inf". */
cJSON *fy_json_add_real(cJSON *o, const char *key, double d);

#endif
