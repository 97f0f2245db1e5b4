/* Fuzz target: a run directory with one checkpoint (ckpt/checkpoint.c,
 * ckpt/inspect.c): MANIFEST.json, trainer_state.json, model.safetensors,
 * checkpoints/LATEST and the run's config.json, given as the input's
 * sections in that order, separated by "\n#NEXT#\n" (a missing section is
 * a missing file). Runs what `ferry inspect` and resume run on them:
 * fy_inspect of the run and of the checkpoint, fy_ckpt_read_manifest,
 * fy_ckpt_read_latest, fy_ckpt_list and fy_ckpt_resolve. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt/checkpoint.h"
#include "ckpt/inspect.h"
#include "core/fsutil.h"
#include "fuzz_common.h"

#define SEP "\n#NEXT#\n"

static FILE *g_null;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *files[] = {"run/checkpoints/step-00000002/MANIFEST.json",
                                  "run/checkpoints/step-00000002/trainer_state.json",
                                  "run/checkpoints/step-00000002/model.safetensors", "run/checkpoints/LATEST",
                                  "run/config.json"};
    char p[4096], run[4096], ck[4096];
    fy_err err;
    if (!g_null && !(g_null = fopen("/dev/null", "w"))) abort();
    fz_remove("run");
    snprintf(ck, sizeof ck, "%s/run/checkpoints/step-00000002", fz_dir());
    snprintf(run, sizeof run, "%s/run", fz_dir());
    if (fy_mkdir_p(ck, &err)) abort();
    const uint8_t *rest = data;
    size_t left = size;
    for (int i = 0; i < 5 && (left || i == 0); i++) {
        const uint8_t *a, *b;
        size_t na, nb;
        fz_split(rest, left, SEP, &a, &na, &b, &nb);
        fz_write(files[i], a, na, p);
        rest = b, left = nb;
    }
    fy_inspect(run, g_null, &err);
    fy_inspect(ck, g_null, &err);
    fy_ckpt_manifest man;
    fy_ckpt_read_manifest(ck, &man, &err);
    char name[64], out[4096];
    fy_ckpt_read_latest(run, name, sizeof name, &err);
    int *steps = NULL, n = 0;
    if (fy_ckpt_list(run, &steps, &n, &err) == 0) free(steps);
    fy_ckpt_resolve(run, out, sizeof out, &err);
    return 0;
}
