/* What several subcommands share: finding a run directory, reading its
 * config.json's "ferry" section, and loading a trained model for generate
 * and verify (and later serve). */
#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ckpt/checkpoint.h"
#include "cli/cli.h"
#include "core/fsutil.h"
#include "interop/hf.h"
#include "interop/host.h"
#include "model/decode.h"
#include "model/lora.h"
#include "train/lora_base.h"
#include "train/trainer.h"

int fy_cli_run_dir(const char *dir, char *run, size_t cap, fy_err *err) {
    return fy_host_run_dir(dir, run, cap, err);
}

const char *fy_cli_ferry_string(const cJSON *config, const char *key) {
    const cJSON *f = config ? cJSON_GetObjectItemCaseSensitive(config, "ferry") : NULL;
    const cJSON *v = f ? cJSON_GetObjectItemCaseSensitive(f, key) : NULL;
    return v && cJSON_IsString(v) ? v->valuestring : NULL;
}

int fy_cli_lora_rank(const char *config_text) {
    cJSON *js = cJSON_Parse(config_text);
    const cJSON *f = js ? cJSON_GetObjectItemCaseSensitive(js, "ferry") : NULL;
    const cJSON *r = f ? cJSON_GetObjectItemCaseSensitive(f, "lora_rank") : NULL;
    int rank = cJSON_IsNumber(r) && r->valuedouble > 0 ? r->valueint : 0;
    cJSON_Delete(js);
    return rank;
}

/* A Hugging Face directory: imported into host memory, then copied in. */
static int load_hf(const char *dir, const char *backend_spec, fy_loaded *out, fy_err *err) {
    fy_host_model h;
    if (fy_hf_import(dir, &h, err)) return -1;
    out->tok = h.tok;
    h.tok = NULL;
    snprintf(out->ckpt_dir, sizeof out->ckpt_dir, "%s", dir);
    int rc = fy_backend_create_opts(backend_spec, fy_cli_backend_opts(&(fy_backend_opts){0}), &out->be, err) ||
             fy_model_create(&out->model, &h.cfg, out->be, err) || fy_host_to_model(&h, &out->model, err);
    fy_host_free(&h);
    if (rc) fy_cli_unload(out);
    return rc ? -1 : 0;
}

/* A LoRA run (docs/FINETUNE.md): its recorded base (the seeded init or the
 * --init-from source, checked against lora_base.json), its adapters from
 * the checkpoint, then merged: inference gets a plain model. */
static int load_lora(fy_model *m, const char *run, const char *ckpt_dir, const char *config_text, const char *where,
                     fy_err *err) {
    fy_train_opts o;
    fy_train_opts_default(&o);
    char src[FY_PATH_MAX];
    if (fy_train_opts_from_json(config_text, where, &o, err) || fy_lora_base_source(run, src, sizeof src, err))
        return -1;
    if (src[0]) {
        fy_host_model h;
        int rc = fy_cli_host_load(src, &h, err) || fy_host_to_model(&h, m, err);
        if (rc) fy_wrap(err, "the LoRA base %s of %s", src, run);
        fy_host_free(&h);
        if (rc) return -1;
    } else if (fy_model_init_weights(m, o.seed, err)) {
        return -1;
    }
    return fy_lora_base_record(m, run, NULL, 0, NULL, err) || fy_cli_lora_run_adapters(m, ckpt_dir, err) ||
                   fy_model_lora_merge(m, err)
               ? -1
               : 0;
}

/* For inference, the format of ckpt_dir's weights image into *wq (when it
 * is one; *wq_given: the user named a format, which must then be it), and
 * the load: the image's (mapped, or copied with no_mmap), or the f32
 * weights' encoded as *wq. */
static int load_for_inference(fy_model *m, const char *ckpt_dir, fy_quant *wq, int wq_given, int no_mmap,
                              fy_err *err) {
    fy_quant iq;
    int image = fy_ckpt_image_format(ckpt_dir, &iq, err);
    if (image < 0) return -1;
    if (image && wq_given && *wq != iq)
        return fy_fail(err, "%s holds %s weights (a weights image, ferry convert --weights): it runs only as "
                            "--weights %s; for %s convert the f32 run", ckpt_dir, fy_quant_name(iq),
                       fy_quant_name(iq), fy_quant_name(*wq));
    if (image) *wq = iq;
    if (fy_model_plan_inference(m, *wq, err)) return -1;
    /* a mapped image small enough to stay in the last-level cache is read
     * into it at load (ckpt/checkpoint.h, fy_ckpt_image_load) */
    const fy_ckpt_image_opts o = {!no_mmap, fy_cli_llc_bytes() / 2};
    return image ? fy_ckpt_image_load(ckpt_dir, m, &o, err) : fy_ckpt_load_weights(ckpt_dir, m, err);
}

/* A ferry run or checkpoint directory; with `infer`, for inference in
 * weights *wq (fy_cli_load_inference; *wq set to what was loaded). */
static int load_ferry(const char *dir, const char *backend_spec, int infer, fy_quant *wq, int wq_given,
                      int no_mmap, fy_loaded *out, fy_err *err) {
    char run[FY_PATH_MAX], p[FY_PATH_MAX + 32];
    fy_config cfg;
    char *text = NULL;
    size_t len;
    if (fy_cli_run_dir(dir, run, sizeof run, err)) return -1;
    snprintf(p, sizeof p, "%s/config.json", run);
    if (fy_config_load(p, &cfg, err)) return -1;
    if (fy_host_run_tokenizer(run, &cfg, &out->tok, err)) return -1;
    int rc = fy_read_file(p, &text, &len, err);
    int lora_run = !rc && fy_cli_lora_rank(text) > 0;
    infer = infer && !lora_run; /* a LoRA run merges its adapters into the f32 weights first */
    if (!rc) rc = infer ? fy_ckpt_resolve_weights(dir, out->ckpt_dir, sizeof out->ckpt_dir, err)
                        : fy_ckpt_resolve(dir, out->ckpt_dir, sizeof out->ckpt_dir, err);
    if (!rc) rc = fy_backend_create_opts(backend_spec, fy_cli_backend_opts(&(fy_backend_opts){0}), &out->be, err) ||
                  fy_model_create(&out->model, &cfg, out->be, err);
    if (!rc && infer) rc = load_for_inference(&out->model, out->ckpt_dir, wq, wq_given, no_mmap, err);
    else if (!rc) rc = lora_run ? load_lora(&out->model, run, out->ckpt_dir, text, p, err)
                                : fy_ckpt_load(out->ckpt_dir, &out->model, NULL, NULL, err);
    free(text);
    if (rc) fy_cli_unload(out);
    return rc ? -1 : 0;
}

int fy_cli_load_model(const char *dir, const char *backend_spec, fy_loaded *out, fy_err *err) {
    memset(out, 0, sizeof *out);
    if (fy_hf_is_dir(dir)) return load_hf(dir, backend_spec, out, err);
    fy_quant wq = FY_QUANT_F32;
    return load_ferry(dir, backend_spec, 0, &wq, 0, 0, out, err);
}

int fy_cli_load_inference(const char *dir, const char *backend_spec, const char *weights, int no_mmap,
                          fy_loaded *out, fy_err *err) {
    memset(out, 0, sizeof *out);
    fy_quant wq = FY_QUANT_F32;
    if (weights && fy_quant_parse(weights, &wq, err)) return -1;
    int rc = fy_hf_is_dir(dir) ? load_hf(dir, backend_spec, out, err)
                               : load_ferry(dir, backend_spec, 1, &wq, weights != NULL, no_mmap, out, err);
    if (rc) return -1;
    if (fy_cli_check_weights(&out->model, err) || fy_model_set_decode_quant(&out->model, wq, err)) {
        fy_cli_unload(out);
        return -1;
    }
#ifdef __GLIBC__
    malloc_trim(0); /* what loading freed (parsed JSON, staging) back to the system, not kept in the heap */
#endif
    return 0;
}

/* A sum of squares is finite exactly when every value is (a float squared
 * stays finite in the cpu's double sum; a backend summing in float also
 * flags weights over ~1e19, which overflow a forward anyway), so one pass
 * per block finds NaN or Inf; the per-tensor pass naming the first runs
 * only then. */
int fy_cli_check_weights(fy_model *m, fy_err *err) {
    if (m->dq.infer) return 0; /* each tensor was checked as it was loaded (model/decode.h) */
    fy_backend *be = m->be;
    double ss = be->ops->sumsq(be, m->tab.n_params, fy_at(&m->params, 0)) +
                be->ops->sumsq(be, m->tab.n_buffers, fy_at(&m->buffers, 0));
    if (fy_be_take_error(be, err)) return fy_wrap(err, "checking the weights");
    if (isfinite(ss)) return 0;
    const char *first = "?";
    for (int i = 0; i < m->tab.n && first[0] == '?'; i++) {
        const fy_tensor_info *t = &m->tab.t[i];
        if (!isfinite(be->ops->sumsq(be, t->n, fy_at(t->is_buffer ? &m->buffers : &m->params, t->off))))
            first = t->name;
    }
    fy_be_take_error(be, NULL);
    return fy_fail(err, "the model's weights hold non-finite values (NaN or Inf; first in %s): "
                        "a diverged or corrupted model, refusing to run it", first);
}

void fy_cli_unload(fy_loaded *l) {
    if (l->model.be) fy_model_free(&l->model);
    if (l->be) fy_backend_destroy(l->be);
    if (l->tok) fy_tokenizer_free(l->tok);
    memset(l, 0, sizeof *l);
}

const char *fy_cli_tokenizer_config(const char *dir, char *p, size_t cap) {
    char run[FY_PATH_MAX];
    fy_err e;
    snprintf(p, cap, "%s/tokenizer_config.json", dir);
    if (fy_file_exists(p)) return p;
    if (fy_cli_run_dir(dir, run, sizeof run, &e)) return NULL;
    snprintf(p, cap, "%s/tokenizer_config.json", run);
    return fy_file_exists(p) ? p : NULL;
}
