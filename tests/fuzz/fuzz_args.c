/* Fuzz target: command-line flags (cli/args.c, fy_args_parse): the input
 * is argv, words separated by NUL bytes, parsed against a table like the
 * subcommands' (strings, ranged integers and numbers, booleans, aliases,
 * positionals). A parse that succeeds must leave every number inside its
 * range; --help text goes to /dev/null. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "fuzz_common.h"

#define MAX_WORDS 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int quiet;
    if (!quiet) quiet = freopen("/dev/null", "w", stdout) != NULL;
    const char *out = NULL, *model = NULL;
    int steps = 10, seed = 0, port = 8080, resume = 0, verbose = 0;
    double lr = 1e-3, temp = 1.0;
    fy_arg spec[] = {
        {"--out", "-o", FY_ARG_STR, &out, "DIR", "where the run goes", 0, 0, 0},
        {"--model", NULL, FY_ARG_STR, &model, "PATH", "a run or checkpoint", 0, 0, 0},
        {"--steps", "-n", FY_ARG_INT, &steps, "N", "total optimizer steps", 1, 1e9, 0},
        {"--seed", NULL, FY_ARG_INT, &seed, "S", "seed", 0, 2147483647, 0},
        {"--port", NULL, FY_ARG_INT, &port, "N", "port", 0, 65535, 0},
        {"--lr", NULL, FY_ARG_FLOAT, &lr, "LR", "learning rate", 0, 10, 0},
        {"--temperature", "-t", FY_ARG_FLOAT, &temp, "T", "sampling temperature", 0, 0, 0},
        {"--resume", NULL, FY_ARG_BOOL, &resume, NULL, "resume from LATEST", 0, 0, 0},
        {"--verbose", "-v", FY_ARG_BOOL, &verbose, NULL, "more lines", 0, 0, 0},
    };
    int n_spec = (int)(sizeof spec / sizeof spec[0]);
    char *buf = fz_strndup(data, size), *argv[MAX_WORDS + 1], *pos[4];
    int argc = 0;
    for (size_t a = 0; a <= size && argc < MAX_WORDS;) {
        argv[argc++] = buf + a;
        a += strlen(buf + a) + 1;
    }
    argv[argc] = NULL;
    int n_pos = 0;
    fy_err err;
    int rc = fy_args_parse(argc, argv, spec, n_spec, "train", "[flags] FILE...", "Fuzzed flags.", pos, 4, &n_pos,
                           &err);
    if (rc == 0 && (steps < 1 || steps > 1e9 || seed < 0 || port < 0 || port > 65535 || !(lr >= 0 && lr <= 10) ||
                    !isfinite(temp) || n_pos > 4)) {
        fprintf(stderr, "fy_args_parse accepted a value outside its range\n");
        abort();
    }
    for (int i = 0; rc == 0 && i < n_pos; i++)
        if (pos[i] < buf || pos[i] > buf + size) abort();
    free(buf);
    return 0;
}
