/* Command-line flags (args.h): strict parsing of a subcommand's flag table
 * into its variables, and the --help text printed from the same table.
 * Knows nothing of any subcommand. */
#include "cli/args.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void fy_args_help(FILE *f, const char *cmd, const char *usage, const char *summary,
                  const fy_arg *spec, int n_spec) {
    fprintf(f, "usage: ferry %s %s\n\n%s\n\noptions:\n", cmd, usage, summary);
    for (int i = 0; i < n_spec; i++) {
        char left[64];
        snprintf(left, sizeof left, "%s%s%s%s%s", spec[i].alias ? spec[i].alias : "",
                 spec[i].alias ? ", " : "", spec[i].name, spec[i].meta ? " " : "",
                 spec[i].meta ? spec[i].meta : "");
        fprintf(f, "  %-28s %s\n", left, spec[i].help);
    }
    fprintf(f, "  %-28s %s\n", "-h, --help", "show this help");
}

static int set_value(fy_arg *a, const char *cmd, const char *v, fy_err *err) {
    char *end;
    errno = 0;
    switch (a->type) {
    case FY_ARG_STR:
        *(const char **)a->dst = v;
        return 0;
    case FY_ARG_INT: {
        long x = strtol(v, &end, 10);
        if (!*v || *end || errno)
            return fy_fail(err, "%s expects an integer, got '%s'", a->name, v);
        if (a->lo != a->hi && (x < a->lo || x > a->hi))
            return fy_fail(err, "%s %ld is outside [%g, %g]", a->name, x, a->lo, a->hi);
        *(int *)a->dst = (int)x;
        return 0;
    }
    case FY_ARG_FLOAT: {
        double x = strtod(v, &end);
        if (!*v || *end || errno || !isfinite(x))
            return fy_fail(err, "%s expects a number, got '%s'", a->name, v);
        if (a->lo != a->hi && (x < a->lo || x > a->hi))
            return fy_fail(err, "%s %g is outside [%g, %g]", a->name, x, a->lo, a->hi);
        *(double *)a->dst = x;
        return 0;
    }
    case FY_ARG_BOOL:
        *(int *)a->dst = 1;
        return 0;
    }
    return 0;
}

int fy_args_parse(int argc, char **argv, fy_arg *spec, int n_spec, const char *cmd,
                  const char *usage, const char *summary, char **pos, int max_pos, int *n_pos,
                  fy_err *err) {
    *n_pos = 0;
    for (int i = 0; i < argc; i++) {
        const char *w = argv[i];
        if (!strcmp(w, "-h") || !strcmp(w, "--help")) {
            fy_args_help(stdout, cmd, usage, summary, spec, n_spec);
            return 1;
        }
        if (w[0] != '-' || !w[1] || !strcmp(w, "--")) {
            if (!strcmp(w, "--")) continue;
            if (*n_pos >= max_pos)
                return fy_fail(err, "unexpected argument '%s' (see ferry %s --help)", w, cmd);
            pos[(*n_pos)++] = argv[i];
            continue;
        }
        /* --flag=value or --flag value */
        const char *eq = strchr(w, '=');
        size_t nl = eq ? (size_t)(eq - w) : strlen(w);
        fy_arg *a = NULL;
        for (int k = 0; k < n_spec && !a; k++)
            if ((strlen(spec[k].name) == nl && !strncmp(spec[k].name, w, nl)) ||
                (spec[k].alias && strlen(spec[k].alias) == nl && !strncmp(spec[k].alias, w, nl)))
                a = &spec[k];
        if (!a) return fy_fail(err, "unknown flag %.*s (see ferry %s --help)", (int)nl, w, cmd);
        const char *v = NULL;
        if (a->type == FY_ARG_BOOL) {
            if (eq) return fy_fail(err, "%s takes no value", a->name);
        } else if (eq) {
            v = eq + 1;
        } else {
            if (i + 1 >= argc) return fy_fail(err, "%s needs a value", a->name);
            v = argv[++i];
        }
        if (set_value(a, cmd, v, err)) return -1;
        a->set = 1;
    }
    return 0;
}

int fy_args_take_repeated(int argc, char **argv, const fy_arg *spec, int n_spec, const char *name, const char **vals,
                          int max, int *n_vals, char **rest, int *n_rest, fy_err *err) {
    size_t nl = strlen(name);
    *n_vals = *n_rest = 0;
    for (int i = 0; i < argc; i++) {
        const char *w = argv[i];
        if (!strncmp(w, name, nl) && (w[nl] == 0 || w[nl] == '=')) {
            const char *v = w[nl] ? w + nl + 1 : i + 1 < argc ? argv[++i] : NULL;
            if (!v) return fy_fail(err, "%s needs a value", name);
            if (*n_vals == max) return fy_fail(err, "%s given more than %d times", name, max);
            vals[(*n_vals)++] = v;
            continue;
        }
        rest[(*n_rest)++] = argv[i];
        if (!strcmp(w, "--")) { /* the rest are not flags */
            while (++i < argc) rest[(*n_rest)++] = argv[i];
            break;
        }
        for (int k = 0; k < n_spec; k++)
            if (spec[k].type != FY_ARG_BOOL && i + 1 < argc &&
                (!strcmp(w, spec[k].name) || (spec[k].alias && !strcmp(w, spec[k].alias)))) {
                rest[(*n_rest)++] = argv[++i];
                break;
            }
    }
    return 0;
}
