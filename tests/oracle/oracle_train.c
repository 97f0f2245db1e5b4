/* Runs a short training (AdamW, clipping, warmup + cosine, bias updates) and
 * dumps what tools/oracle/train_ref.py needs to replay it in PyTorch:
 *   DIR/config.json (with the training settings in "ferry"),
 *   DIR/init.safetensors, DIR/batches.safetensors, DIR/ferry_losses.json
 *   oracle_train --out DIR [--steps S] [--backend SPEC]   (default cpu) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "ckpt/safetensors.h"
#include "core/fsutil.h"
#include "core/rng.h"
#include "model/model.h"
#include "optim/optim.h"

/* The backend named by --backend (default cpu). A backend this machine
 * cannot provide (not built, no OpenCL platform or device) exits 77, so
 * ctest reports the test skipped rather than failed. */
static int create_backend(const char *spec, fy_backend **be, fy_err *err) {
    if (fy_backend_create(spec, be, err) == 0) return 0;
    if (strstr(err->msg, "not built into this ferry") || strstr(err->msg, "no OpenCL platform") ||
        strstr(err->msg, "have no devices")) {
        printf("SKIP: backend %s unavailable: %s\n", spec, err->msg);
        exit(77);
    }
    return -1;
}

static int dump_state(fy_model *m, const char *path, fy_err *err) {
    float *p = malloc(m->tab.n_params * sizeof(float));
    float *b = malloc((m->tab.n_buffers + 1) * sizeof(float));
    m->be->ops->download(m->be, p, fy_at(&m->params, 0), m->tab.n_params);
    m->be->ops->download(m->be, b, fy_at(&m->buffers, 0), m->tab.n_buffers);
    fy_st_writer *w = fy_st_writer_new();
    for (int i = 0; i < m->tab.n; i++) {
        const fy_tensor_info *t = &m->tab.t[i];
        int64_t shape[2] = {t->shape[0], t->shape[1]};
        fy_st_writer_add(w, t->name, FY_ST_F32, t->ndim, shape, (t->is_buffer ? b : p) + t->off, NULL);
    }
    int rc = fy_st_write(w, path, err);
    fy_st_writer_free(w);
    free(p);
    free(b);
    return rc;
}

int main(int argc, char **argv) {
    const char *out = NULL, *spec = "cpu";
    int S = 200, B = 2, T = 16;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--out")) out = argv[i + 1];
        else if (!strcmp(argv[i], "--steps")) S = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--backend")) spec = argv[i + 1];
        else { fprintf(stderr, "oracle_train: unknown argument %s\n", argv[i]); return 2; }
    }
    if (!out || S <= 0) { fprintf(stderr, "usage: oracle_train --out DIR [--steps S] [--backend SPEC]\n"); return 2; }
    fy_err err;
    fy_config c;
    if (fy_config_builtin("tiny", 61, &c, &err)) goto fail;
    c.hidden_size = 48; c.num_hidden_layers = 2; c.num_attention_heads = 2;
    c.q_lora_rank = 24; c.kv_lora_rank = 20; c.qk_nope_head_dim = 12; c.qk_rope_head_dim = 8;
    c.v_head_dim = 12; c.n_routed_experts = 6; c.num_experts_per_tok = 2; c.n_shared_experts = 1;
    c.moe_intermediate_size = 24; c.intermediate_size = 64; c.first_k_dense_replace = 1;
    c.num_nextn_predict_layers = 1; c.aux_loss_alpha = 0.001f; c.bias_update_speed = 0.001f;
    fy_adamw_opts ao = {3e-3f, 3e-4f, 10, S, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f};

    fy_backend *be;
    fy_model m;
    fy_adamw opt;
    if (create_backend(spec, &be, &err) || fy_model_create(&m, &c, be, &err) ||
        fy_model_init_weights(&m, 42, &err) || fy_adamw_create(&opt, &m, &ao, &err) ||
        fy_mkdir_p(out, &err))
        goto fail;
    char path[4096];
    snprintf(path, sizeof path, "%s/init.safetensors", out);
    if (dump_state(&m, path, &err)) goto fail;

    /* Learnable data: each sequence follows t' = (a t + b) mod V with 10%
     * random tokens, so the loss has somewhere to go. */
    size_t n = (size_t)S * B * T;
    int32_t *in = malloc(n * sizeof *in), *lab = malloc(n * sizeof *lab);
    for (int s = 0; s < S; s++)
        for (int b = 0; b < B; b++) {
            int a = 1 + (int)(fy_rng_u64(9, s, b) % 4), tok = (int)(fy_rng_u64(8, s, b) % c.vocab_size);
            for (int t = 0; t <= T; t++) {
                size_t i = ((size_t)s * B + b) * T + t;
                if (t < T) in[i] = tok;
                if (t > 0) lab[i - 1] = tok;
                tok = fy_rng_uniform(7, s * B + b, t) < 0.1f ? (int)(fy_rng_u64(6, s * B + b, t) % c.vocab_size)
                                                             : (a * tok + 3) % c.vocab_size;
            }
        }
    FILE *lf;
    snprintf(path, sizeof path, "%s/ferry_losses.json", out);
    if (!(lf = fopen(path, "w"))) { fy_fail(&err, "cannot write %s", path); goto fail; }
    fprintf(lf, "{\"loss\": [");
    for (int s = 0; s < S; s++) {
        fy_loss l;
        float gn, lr;
        size_t o = (size_t)s * B * T;
        fy_model_zero_grad(&m);
        if (fy_model_forward(&m, in + o, lab + o, B, T, 1, &l, &err) || fy_model_backward(&m, &err) ||
            fy_adamw_step(&opt, &m, &gn, &lr, &err) || fy_model_update_bias(&m, &err))
            goto fail;
        fprintf(lf, "%s%.9g", s ? ", " : "", l.total);
        if (s % 50 == 0 || s == S - 1)
            printf("step %4d loss %.5f (main %.5f) grad norm %.4f lr %.2e\n", s + 1, l.total, l.main, gn, lr);
    }
    fprintf(lf, "]}\n");
    fclose(lf);

    fy_st_writer *w = fy_st_writer_new();
    int64_t sh[3] = {S, B, T};
    fy_st_writer_add(w, "input_ids", FY_ST_I32, 3, sh, in, NULL);
    fy_st_writer_add(w, "labels", FY_ST_I32, 3, sh, lab, NULL);
    snprintf(path, sizeof path, "%s/batches.safetensors", out);
    if (fy_st_write(w, path, &err)) goto fail;
    fy_st_writer_free(w);

    char extra[512];
    snprintf(extra, sizeof extra,
             "{\"lr\": %g, \"min_lr\": %g, \"warmup_steps\": %d, \"total_steps\": %d, \"beta1\": %g, "
             "\"beta2\": %g, \"eps\": %g, \"weight_decay\": %g, \"grad_clip\": %g}",
             ao.lr, ao.min_lr, ao.warmup_steps, ao.total_steps, ao.beta1, ao.beta2, ao.eps,
             ao.weight_decay, ao.grad_clip);
    char *js = fy_config_to_json(&c, extra);
    snprintf(path, sizeof path, "%s/config.json", out);
    if (!js || fy_write_file_atomic(path, js, strlen(js), &err)) goto fail;
    free(js);
    free(in);
    free(lab);
    fy_adamw_free(&opt, be);
    fy_model_free(&m);
    fy_backend_destroy(be);
    return 0;
fail:
    fprintf(stderr, "oracle_train: %s\n", err.msg);
    return 1;
}
