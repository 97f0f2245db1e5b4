/* Checkpoint cost for bench/faults.sh: a synchronous save of the model +
 * optimizer versus the stall of an asynchronous one (the snapshot copy), and
 * the background write time. Prints one JSON line.
 *   bench_faults --config tiny|small --vocab V --out DIR */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"
#include "ckpt/async.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    const char *cfgname = "small", *out = "/tmp/ferry-bench-faults";
    int V = 8192;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--config")) cfgname = argv[i + 1];
        else if (!strcmp(argv[i], "--vocab")) V = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--out")) out = argv[i + 1];
        else { fprintf(stderr, "bench_faults: unknown flag %s\n", argv[i]); return 2; }
    }
    fy_err err;
    fy_config c;
    fy_backend *be;
    fy_model m;
    fy_adamw opt;
    fy_adamw_opts ao = {1e-3f, 1e-4f, 1, 10, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f};
    if (fy_config_builtin(cfgname, V, &c, &err) || fy_backend_cpu_create(&be, &err) ||
        fy_model_create(&m, &c, be, &err) || fy_model_init_weights(&m, 1, &err) ||
        fy_adamw_create(&opt, &m, &ao, &err)) {
        fprintf(stderr, "bench_faults: %s\n", err.msg);
        return 1;
    }
    char sync_dir[4096], async_dir[4096];
    snprintf(sync_dir, sizeof sync_dir, "%s/sync", out);
    snprintf(async_dir, sizeof async_dir, "%s/async", out);
    double sync_s = 1e9, stall_s = 1e9, write_s = 1e9;
    fy_ckpt_async a; /* one writer for all saves, as the trainer keeps one */
    fy_ckpt_async_init(&a);
    for (int rep = 0; rep < 3; rep++) { /* best of 3: the disk cache is noisy */
        double t0 = now_s();
        if (fy_ckpt_save(sync_dir, rep + 1, &m, &opt, "{}", 1, NULL, 0, &err)) goto fail;
        double t = now_s() - t0;
        if (t < sync_s) sync_s = t;
        double stall;
        if (fy_ckpt_async_save(&a, async_dir, rep + 1, &m, &opt, "{}", 1, &stall, &err) ||
            fy_ckpt_async_wait(&a, &err))
            goto fail;
        if (stall < stall_s) stall_s = stall;
        if (a.write_s < write_s) write_s = a.write_s;
    }
    fy_ckpt_async_free(&a);
    printf("{\"config\": \"%s\", \"params\": %zu, \"sync_save_s\": %.4f, \"async_stall_s\": %.4f, "
           "\"async_write_s\": %.4f}\n",
           cfgname, fy_params_count(&m.tab), sync_s, stall_s, write_s);
    fy_adamw_free(&opt, be);
    fy_model_free(&m);
    fy_backend_destroy(be);
    return 0;
fail:
    fprintf(stderr, "bench_faults: %s\n", err.msg);
    return 1;
}
