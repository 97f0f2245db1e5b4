/* For bench/faults.sh; each mode prints one JSON line.
 *   bench_faults --config tiny|small --vocab V --out DIR
 *     checkpoint cost: a synchronous save of the model + optimizer versus
 *     the stall of an asynchronous one (the snapshot copy): a process's
 *     first save into fresh buffers, its first after
 *     fy_ckpt_async_reserve and --gap-steps training steps (3), and later
 *     saves reusing the buffers; the background write time; how long the
 *     gap steps took without and with the reserve running beside them;
 *   bench_faults --config C --vocab V --abft F1,F2,... --steps S --batch B --seq T
 *     seconds per training step (forward + backward + AdamW) on chaos:cpu
 *     with a fraction Fi of the GEMMs ABFT-checked (at most 8 fractions). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"
#include "ckpt/async.h"
#include "core/rng.h"
#include "core/clock.h"

/* Seconds per step for each ABFT fraction, the fractions taking turns step
 * by step on one model so that machine noise hits them alike; the minimum
 * over `steps` turns after a warm-up step. */
static int step_time(fy_model *m, fy_adamw *opt, const double *fractions, int nf, int steps, int B, int T) {
    fy_err err;
    const int chaos = fy_be_fault_checks(m->be);
    int32_t *tok = malloc((size_t)B * T * sizeof *tok), *lab = malloc((size_t)B * T * sizeof *lab);
    if (!tok || !lab || !chaos) return 1;
    double best[8];
    long checked[8] = {0}, faults = 0;
    for (int k = 0; k < nf; k++) best[k] = 1e9;
    int step = 0;
    for (int s = 0; s <= steps; s++)
        for (int k = 0; k < nf; k++) {
            step++;
            for (int i = 0; i < B * T; i++) {
                tok[i] = (int32_t)(fy_rng_u64(7, 1, (uint64_t)step * B * T + i) % (uint64_t)m->cfg.vocab_size);
                lab[i] = (int32_t)(fy_rng_u64(8, 1, (uint64_t)step * B * T + i) % (uint64_t)m->cfg.vocab_size);
            }
            long c0, f0, c1, f1;
            fy_be_fault_counts(m->be, &c0, &f0);
            double t0 = fy_now_s();
            fy_be_fault_begin_step(m->be, step, fractions[k], -1);
            fy_loss l;
            float gn, lr;
            fy_model_zero_grad(m);
            if (fy_model_forward(m, tok, lab, B, T, 1, &l, &err) || fy_model_backward(m, &err) ||
                fy_adamw_step(opt, m, &gn, &lr, &err) || fy_be_sync(m->be, &err)) {
                fprintf(stderr, "bench_faults: %s\n", err.msg);
                return 1;
            }
            double t = fy_now_s() - t0;
            fy_be_fault_counts(m->be, &c1, &f1);
            checked[k] += c1 - c0;
            faults += f1 - f0;
            if (s > 0 && t < best[k]) best[k] = t; /* turn 0 warms up (workspace, page faults) */
        }
    printf("{\"steps\": %d", steps);
    for (int k = 0; k < nf; k++)
        printf(", \"step_s_%g\": %.4f, \"checked_%g\": %ld", fractions[k], best[k], fractions[k], checked[k]);
    printf(", \"false_alarms\": %ld}\n", faults);
    free(tok);
    free(lab);
    return faults ? 1 : 0;
}

/* n training steps of batch 2 x 64 (the work between a trainer's start and
 * its first checkpoint, during which the reserve thread touches pages). */
static int train_steps(fy_model *m, fy_adamw *opt, int n, fy_err *err) {
    enum { B = 2, T = 64 };
    int32_t tok[B * T], lab[B * T];
    for (int s = 0; s < n; s++) {
        for (int i = 0; i < B * T; i++) {
            tok[i] = (int32_t)(fy_rng_u64(7, 2, (uint64_t)s * B * T + i) % (uint64_t)m->cfg.vocab_size);
            lab[i] = (int32_t)(fy_rng_u64(8, 2, (uint64_t)s * B * T + i) % (uint64_t)m->cfg.vocab_size);
        }
        fy_loss l;
        float gn, lr;
        fy_model_zero_grad(m);
        if (fy_model_forward(m, tok, lab, B, T, 1, &l, err) || fy_model_backward(m, err) ||
            fy_adamw_step(opt, m, &gn, &lr, err) || fy_be_sync(m->be, err))
            return -1;
    }
    return 0;
}

/* The stall of the first asynchronous save of a fresh writer, after
 * reserving (and `gap` training steps, taking *steps_s) when reserve is set. */
static int first_stall(fy_model *m, fy_adamw *opt, const char *dir, int reserve, int gap, double *stall,
                       double *steps_s, fy_err *err) {
    fy_ckpt_async a;
    fy_ckpt_async_init(&a);
    double t0 = fy_now_s();
    if (reserve) fy_ckpt_async_reserve(&a, &m->tab);
    int rc = train_steps(m, opt, gap, err);
    *steps_s = fy_now_s() - t0;
    if (!rc) rc = fy_ckpt_async_save(&a, dir, 1, m, opt, "{}", NULL, 1, stall, err);
    if (!rc) rc = fy_ckpt_async_wait(&a, err);
    fy_ckpt_async_free(&a); /* its buffers go back to the system: the next writer's are fresh */
    return rc;
}

int main(int argc, char **argv) {
    const char *cfgname = "small", *out = "/tmp/ferry-bench-faults";
    int V = 8192, steps = 3, B = 8, T = 256, nf = 0, gap = 3;
    double fractions[8];
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--config")) cfgname = argv[i + 1];
        else if (!strcmp(argv[i], "--vocab")) V = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--out")) out = argv[i + 1];
        else if (!strcmp(argv[i], "--abft")) {
            for (char *tok = strtok(argv[i + 1], ","); tok && nf < 8; tok = strtok(NULL, ","))
                fractions[nf++] = atof(tok);
        }
        else if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch")) B = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seq")) T = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--gap-steps")) gap = atoi(argv[i + 1]);
        else { fprintf(stderr, "bench_faults: unknown flag %s\n", argv[i]); return 2; }
    }
    fy_err err;
    fy_config c;
    fy_backend *be;
    fy_model m;
    fy_adamw opt;
    fy_adamw_opts ao = {1e-3f, 1e-4f, 1, 10, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f};
    if (fy_config_builtin(cfgname, V, &c, &err) || fy_backend_create(nf ? "chaos:cpu" : "cpu", &be, &err) ||
        fy_model_create(&m, &c, be, &err) || fy_model_init_weights(&m, 1, &err) ||
        fy_adamw_create(&opt, &m, &ao, &err)) {
        fprintf(stderr, "bench_faults: %s\n", err.msg);
        return 1;
    }
    if (nf) return step_time(&m, &opt, fractions, nf, steps, B, T);
    char sync_dir[4096], async_dir[4096];
    snprintf(sync_dir, sizeof sync_dir, "%s/sync", out);
    snprintf(async_dir, sizeof async_dir, "%s/async", out);
    double sync_s = 1e9, stall_s = 1e9, write_s = 1e9, first_s, reserved_s, steps_s, reserved_steps_s;
    /* A fresh process's first save, without and with the reserve (warm-up
     * steps first: the steps' own first-touch costs are not the reserve's). */
    if (train_steps(&m, &opt, 2, &err) || first_stall(&m, &opt, async_dir, 0, gap, &first_s, &steps_s, &err) ||
        first_stall(&m, &opt, async_dir, 1, gap, &reserved_s, &reserved_steps_s, &err))
        goto fail;
    fy_ckpt_async a; /* one writer for all saves, as the trainer keeps one */
    fy_ckpt_async_init(&a);
    for (int rep = 0; rep < 3; rep++) { /* best of 3: the disk cache is noisy */
        double t0 = fy_now_s();
        if (fy_ckpt_save(sync_dir, rep + 1, &m, &opt, "{}", 1, NULL, 0, &err)) goto fail;
        double t = fy_now_s() - t0;
        if (t < sync_s) sync_s = t;
        double stall;
        if (fy_ckpt_async_save(&a, async_dir, rep + 1, &m, &opt, "{}", NULL, 1, &stall, &err) ||
            fy_ckpt_async_wait(&a, &err))
            goto fail;
        if (rep > 0 && stall < stall_s) stall_s = stall; /* rep 0 fills the buffers; 1, 2 reuse them */
        if (a.write_s < write_s) write_s = a.write_s;
    }
    fy_ckpt_async_free(&a);
    printf("{\"config\": \"%s\", \"params\": %zu, \"sync_save_s\": %.4f, \"first_stall_s\": %.4f, "
           "\"first_reserved_stall_s\": %.4f, \"gap_steps\": %d, \"gap_steps_s\": %.4f, \"gap_steps_reserved_s\": %.4f, "
           "\"async_stall_s\": %.4f, \"async_write_s\": %.4f}\n",
           cfgname, fy_params_count(&m.tab), sync_s, first_s, reserved_s, gap, steps_s, reserved_steps_s, stall_s,
           write_s);
    fy_adamw_free(&opt, be);
    fy_model_free(&m);
    fy_backend_destroy(be);
    return 0;
fail:
    fprintf(stderr, "bench_faults: %s\n", err.msg);
    return 1;
}
