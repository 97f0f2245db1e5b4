/* A whole model in host memory (host.h): loading it from a ferry run or
 * checkpoint, saving it as a ferry run, copying it into a model. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "ckpt/checkpoint.h"
#include "ckpt/safetensors.h"
#include "core/fsutil.h"
#include "interop/hf.h"
#include "interop/hf_internal.h"
#include "interop/host.h"

int fy_host_alloc(fy_host_model *h, const fy_config *c, fy_err *err) {
    memset(h, 0, sizeof *h);
    h->cfg = *c;
    if (fy_params_build(c, &h->tab, err)) return -1;
    h->params = calloc(h->tab.n_params ? h->tab.n_params : 1, sizeof *h->params);
    h->buffers = calloc(h->tab.n_buffers ? h->tab.n_buffers : 1, sizeof *h->buffers);
    if (!h->params || !h->buffers) {
        fy_host_free(h);
        return fy_fail(err, "out of memory for a model of %zu parameters", fy_params_count(&h->tab));
    }
    return 0;
}

void fy_host_free(fy_host_model *h) {
    if (h->tab.t) fy_params_free(&h->tab);
    free(h->params);
    free(h->buffers);
    if (h->tok) fy_tokenizer_free(h->tok);
    memset(h, 0, sizeof *h);
}

int fy_host_run_dir(const char *dir, char *run, size_t cap, fy_err *err) {
    char p[FY_PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/config.json", dir);
    if (fy_file_exists(p)) return snprintf(run, cap, "%s", dir) >= (int)cap ? fy_fail(err, "%s: path too long", dir) : 0;
    snprintf(p, sizeof p, "%s/../../config.json", dir);
    if (fy_file_exists(p))
        return snprintf(run, cap, "%s/../..", dir) >= (int)cap ? fy_fail(err, "%s: path too long", dir) : 0;
    return fy_fail(err, "%s: not a ferry run directory or checkpoint (no config.json)", dir);
}

int fy_host_run_tokenizer(const char *run, const fy_config *cfg, fy_tokenizer **out, fy_err *err) {
    char p[FY_PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/tokenizer.json", run);
    if (fy_tokenizer_load(p, out, err)) return -1;
    /* fewer tokens than embedding rows is fine (DeepSeek-V3: 128815 of 129280) */
    if (fy_tokenizer_vocab_size(*out) > cfg->vocab_size) {
        fy_fail(err, "%s: vocabulary %d is larger than config vocab_size %d", p, fy_tokenizer_vocab_size(*out),
                cfg->vocab_size);
        goto fail;
    }
    /* the config's bos/eos (an imported model's) are the ones generation uses */
    if ((cfg->bos_token_id >= 0 || cfg->eos_token_id >= 0) &&
        fy_tokenizer_set_special(*out, cfg->bos_token_id >= 0 ? cfg->bos_token_id : fy_tokenizer_bos(*out),
                                 cfg->eos_token_id >= 0 ? cfg->eos_token_id : fy_tokenizer_eos(*out),
                                 fy_tokenizer_pad(*out), err))
        goto fail;
    return 0;
fail:
    fy_tokenizer_free(*out);
    *out = NULL;
    return -1;
}

int fy_host_model_tokenizer(const char *dir, fy_tokenizer **out, fy_err *err) {
    char run[FY_PATH_MAX], p[FY_PATH_MAX + 32];
    fy_config cfg;
    *out = NULL;
    int hf = fy_hf_is_dir(dir);
    if (!hf && fy_host_run_dir(dir, run, sizeof run, err)) return -1;
    snprintf(p, sizeof p, "%s/config.json", hf ? dir : run);
    if (fy_config_load(p, &cfg, err)) return -1;
    return hf ? fy_hf_read_tokenizer(dir, &cfg, out, err) : fy_host_run_tokenizer(run, &cfg, out, err);
}

int fy_host_load_run(const char *dir, fy_host_model *out, fy_err *err) {
    char run[FY_PATH_MAX], ckpt[FY_PATH_MAX], p[FY_PATH_MAX + 64];
    fy_config cfg;
    memset(out, 0, sizeof *out);
    if (fy_host_run_dir(dir, run, sizeof run, err)) return -1;
    snprintf(p, sizeof p, "%s/config.json", run);
    if (fy_config_load(p, &cfg, err)) return -1;
    if (fy_ckpt_resolve(dir, ckpt, sizeof ckpt, err)) return -1;
    if (fy_host_alloc(out, &cfg, err)) return -1;
    if (fy_host_run_tokenizer(run, &cfg, &out->tok, err)) goto fail;
    snprintf(p, sizeof p, "%s/%s", ckpt, FY_CKPT_MODEL);
    fy_st_file *f;
    if (fy_st_open(p, &f, err)) goto fail;
    for (int i = 0; i < out->tab.n; i++) {
        const fy_tensor_info *t = &out->tab.t[i];
        float *dst = (t->is_buffer ? out->buffers : out->params) + t->off;
        if (fy_st_read_f32(f, t->name, dst, t->n, err)) {
            fy_st_close(f);
            goto fail;
        }
    }
    if (fy_st_count(f) != (size_t)out->tab.n) {
        fy_fail(err, "%s: %zu tensors, the config's model has %d", p, fy_st_count(f), out->tab.n);
        fy_st_close(f);
        goto fail;
    }
    fy_st_close(f);
    return 0;
fail:
    fy_host_free(out);
    return -1;
}

static char *fresh_trainer_state(void) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "step", 0);
    cJSON_AddNumberToObject(o, "tokens_seen", 0);
    cJSON_AddNumberToObject(o, "elapsed_s", 0);
    cJSON_AddNumberToObject(o, "seed", 0);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

int fy_host_save_run(const fy_host_model *h, const char *run_dir, fy_err *err) {
    char p[FY_PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/config.json", run_dir);
    if (fy_file_exists(p)) return fy_fail(err, "%s already exists: not overwriting a run", p);
    if (fy_mkdir_p(run_dir, err)) return -1;
    size_t np = h->tab.n_params;
    float *zeros = calloc(np ? np : 1, sizeof *zeros);
    char *state = fresh_trainer_state();
    fy_ckpt_snapshot s;
    memset(&s, 0, sizeof s);
    int rc = -1;
    if (!zeros || !state) {
        fy_fail(err, "out of memory saving %s", run_dir);
        goto done;
    }
    fy_ckpt_host hm = {&h->tab, h->params, h->buffers, zeros, zeros, 0};
    if (fy_ckpt_snapshot_take_host(&s, 0, &hm, state, err) ||
        fy_ckpt_save_snapshot(run_dir, &s, 0, NULL, 0, err))
        goto done;
    snprintf(p, sizeof p, "%s/tokenizer.json", run_dir);
    if (fy_tokenizer_save(h->tok, p, err)) goto done;
    /* config.json last: a run directory without it is not taken for a run */
    char *json = fy_config_to_json(&h->cfg, NULL);
    if (!json) {
        fy_fail(err, "out of memory writing %s/config.json", run_dir);
        goto done;
    }
    snprintf(p, sizeof p, "%s/config.json", run_dir);
    rc = fy_write_file_atomic(p, json, strlen(json), err);
    free(json);
done:
    fy_ckpt_snapshot_free(&s);
    free(zeros);
    free(state);
    return rc;
}

/* Reads the run at dir back (checksums verified by the load) and compares
 * every parameter, buffer and the vocabulary with h, bit for bit. */
static int check_saved_run(const fy_host_model *h, const char *dir, fy_err *err) {
    fy_host_model b;
    if (fy_host_load_run(dir, &b, err)) return fy_wrap(err, "reading back %s", dir);
    int same = b.tab.n_params == h->tab.n_params && b.tab.n_buffers == h->tab.n_buffers &&
               !memcmp(b.params, h->params, h->tab.n_params * sizeof *h->params) &&
               !memcmp(b.buffers, h->buffers, h->tab.n_buffers * sizeof *h->buffers) &&
               fy_tokenizer_vocab_size(b.tok) == fy_tokenizer_vocab_size(h->tok);
    fy_host_free(&b);
    return same ? 0 : fy_fail(err, "%s: read back, it differs from the model written", dir);
}

int fy_host_save_new_run(const fy_host_model *h, const char *out, fy_err *err) {
    char tmp[FY_PATH_MAX];
    if (fy_file_exists(out)) return fy_fail(err, "%s already exists: not overwriting it", out);
    if (fy_dir_tmp_beside(out, tmp, sizeof tmp, err)) return -1;
    if (fy_host_save_run(h, tmp, err) || check_saved_run(h, tmp, err) || fy_dir_publish(tmp, out, err)) {
        fy_remove_tree(tmp, &(fy_err){0});
        return -1;
    }
    return 0;
}

/* An expert-parallel rank's model holds only its own experts: each of its
 * tensors comes from the host copy's tensor of the same name. */
static int host_to_shard(const fy_host_model *h, fy_model *m, fy_err *err) {
    for (int i = 0; i < m->tab.n; i++) {
        const fy_tensor_info *t = &m->tab.t[i], *s = fy_params_find(&h->tab, t->name);
        if (!s || s->n != t->n || s->is_buffer != t->is_buffer)
            return fy_fail(err, "internal: %s differs between the model and the host copy", t->name);
        m->be->ops->upload(m->be, fy_at(t->is_buffer ? &m->buffers : &m->params, t->off),
                           (t->is_buffer ? h->buffers : h->params) + s->off, t->n);
    }
    return fy_be_sync(m->be, err);
}

int fy_host_to_model(const fy_host_model *h, fy_model *m, fy_err *err) {
    if (fy_params_is_shard(&m->tab) && !fy_params_is_shard(&h->tab) && m->tab.n_all == h->tab.n)
        return host_to_shard(h, m, err);
    if (m->tab.n_params != h->tab.n_params || m->tab.n_buffers != h->tab.n_buffers || fy_params_is_shard(&m->tab))
        return fy_fail(err, "internal: model layout differs from the host copy's");
    m->be->ops->upload(m->be, fy_at(&m->params, 0), h->params, h->tab.n_params);
    if (h->tab.n_buffers) m->be->ops->upload(m->be, fy_at(&m->buffers, 0), h->buffers, h->tab.n_buffers);
    return fy_be_sync(m->be, err);
}
