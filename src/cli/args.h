/* Command-line flags: a table per subcommand, parsed strictly (unknown flag,
 * missing value or malformed number is a one-line error naming the flag),
 * and the same table prints --help. */
#ifndef FY_ARGS_H
#define FY_ARGS_H

#include <stdio.h>

#include "core/err.h"

typedef enum { FY_ARG_STR, FY_ARG_INT, FY_ARG_FLOAT, FY_ARG_BOOL } fy_arg_type;

typedef struct fy_arg {
    const char *name;   /* "--steps" */
    const char *alias;  /* "-n" or NULL */
    fy_arg_type type;
    void *dst;          /* const char **, int *, double *, int * (bool) */
    const char *meta;   /* "N" in "--steps N" */
    const char *help;
    double lo, hi;      /* allowed range for numbers (lo == hi: any) */
    int set;            /* written by the parser: given on the command line */
} fy_arg;

/* Parses argv[0..argc) (argv[0] is the first flag, not the program).
 * Non-flag words are collected into pos (at most max_pos, else an error).
 * Returns 1 if --help was given (help already printed to stdout), 0 on
 * success, -1 on error. */
int fy_args_parse(int argc, char **argv, fy_arg *spec, int n_spec, const char *cmd,
                  const char *usage, const char *summary, char **pos, int max_pos, int *n_pos,
                  fy_err *err);
/* For a flag fy_args_parse cannot repeat: takes every `name VALUE` (or
 * name=VALUE) out of argv[0..argc) into vals[] (at most max, else an
 * error), copying the other words to rest (room for argc), and skipping
 * the values of spec's flags that take one, so that such a value is never
 * taken for the flag. Words after "--" are copied as they are. */
int fy_args_take_repeated(int argc, char **argv, const fy_arg *spec, int n_spec, const char *name, const char **vals,
                          int max, int *n_vals, char **rest, int *n_rest, fy_err *err);
void fy_args_help(FILE *f, const char *cmd, const char *usage, const char *summary,
                  const fy_arg *spec, int n_spec);

#endif
