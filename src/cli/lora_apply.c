/* `--lora DIR` of generate and serve: LoRA adapters for the base that
 * --model loaded, whatever base they were trained on, as long as the shapes
 * match (docs/FINETUNE.md, "Using a LoRA run"). DIR is a ferry LoRA run (or
 * one of its checkpoints) or a PEFT adapter directory (adapter_config.json +
 * adapter_model.safetensors, e.g. `ferry convert --to peft`). The adapters
 * are held unmerged beside the base (fy_model_lora_detach: model/lora.h),
 * so that a server runs several at once on one base and generate gives the
 * server's tokens; no file is changed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "ckpt/checkpoint.h"
#include "ckpt/safetensors.h"
#include "cli/cli.h"
#include "core/fsutil.h"
#include "model/lora.h"
#include "train/trainer.h"

/* adapter_config.json -> rank, alpha and targets (dropout is training's). */
static int peft_config(const char *path, fy_lora_config *lc, fy_err *err) {
    char *text = NULL;
    size_t len;
    if (fy_read_file(path, &text, &len, err)) return -1;
    cJSON *js = cJSON_ParseWithLength(text, len);
    free(text);
    if (!js) return fy_fail(err, "%s: not valid JSON", path);
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(js, "r");
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(js, "lora_alpha");
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(js, "target_modules");
    char list[512] = "";
    uint64_t rank = 0;
    int rc = 0;
    if (!cJSON_IsNumber(r) || !cJSON_IsNumber(a)) rc = fy_fail(err, "%s: needs numbers \"r\" and \"lora_alpha\"", path);
    else if (fy_json_count(r, &rank) || rank < 1 || rank > 65536 || !isfinite(a->valuedouble))
        rc = fy_fail(err, "%s: \"r\" must be a whole number from 1 to 65536 and \"lora_alpha\" finite", path);
    else if (cJSON_IsString(t)) snprintf(list, sizeof list, "%s", t->valuestring);
    else if (!cJSON_IsArray(t)) rc = fy_fail(err, "%s: \"target_modules\" is neither a list nor a string", path);
    for (const cJSON *e = cJSON_IsArray(t) ? t->child : NULL; !rc && e; e = e->next) {
        size_t n = strlen(list);
        if (!cJSON_IsString(e)) rc = fy_fail(err, "%s: \"target_modules\" holds a non-string", path);
        else if (snprintf(list + n, sizeof list - n, "%s%s", n ? "," : "", e->valuestring) >= (int)(sizeof list - n))
            rc = fy_fail(err, "%s: \"target_modules\" too long", path);
    }
    if (!rc) {
        lc->rank = (int)rank;
        lc->alpha = (float)a->valuedouble;
        lc->dropout = 0;
        if (fy_lora_parse_targets(list, &lc->targets, err)) rc = fy_wrap(err, "%s", path);
    }
    cJSON_Delete(js);
    return rc;
}

/* Every adapter tensor of m (its table after fy_model_set_lora) from f, by
 * PEFT's names; a tensor of f that m has no place for is an error too (the
 * adapter was made for another model or other targets). */
static int peft_tensors(fy_model *m, const fy_st_file *f, fy_err *err) {
    size_t most = 0;
    for (int i = 0; i < m->tab.n; i++) most = m->tab.t[i].n > most ? m->tab.t[i].n : most;
    float *h = malloc((most ? most : 1) * sizeof *h);
    if (!h) return fy_fail(err, "out of memory");
    int rc = 0;
    for (int i = 0; !rc && i < m->tab.n; i++) {
        const fy_tensor_info *t = &m->tab.t[i];
        rc = fy_st_read_f32(f, t->name, h, t->n, err);
        if (!rc) m->be->ops->upload(m->be, fy_at(&m->params, t->off), h, t->n);
    }
    free(h);
    for (size_t i = 0; !rc && i < fy_st_count(f); i++) {
        const char *name = fy_st_entry_at(f, i)->name;
        if (!fy_params_find(&m->tab, name))
            rc = fy_fail(err, "%s: tensor %s has no place in this model's adapters", fy_st_path(f), name);
    }
    return rc ? -1 : fy_be_sync(m->be, err);
}

static int apply_peft(fy_model *m, const char *dir, fy_err *err) {
    char p[FY_PATH_MAX + 40];
    fy_lora_config lc;
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    if (peft_config(p, &lc, err) || fy_model_set_lora(m, &lc, err)) return -1;
    fy_st_file *f = NULL;
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
    int rc = fy_st_open(p, &f, err) || peft_tensors(m, f, err);
    fy_st_close(f);
    return rc ? -1 : 0;
}

int fy_cli_lora_run_adapters(fy_model *m, const char *dir, fy_err *err) {
    char run[FY_PATH_MAX], p[FY_PATH_MAX + 32], ck[FY_PATH_MAX];
    if (fy_cli_run_dir(dir, run, sizeof run, err)) return -1;
    snprintf(p, sizeof p, "%s/config.json", run);
    char *text = NULL;
    size_t len;
    if (fy_read_file(p, &text, &len, err)) return -1;
    fy_train_opts o;
    fy_train_opts_default(&o);
    int rc = fy_train_opts_from_json(text, p, &o, err);
    free(text);
    if (rc) return -1;
    if (o.lora_rank <= 0) return fy_fail(err, "%s is not a LoRA run (no ferry.lora_rank in its config.json)", run);
    fy_lora_config lc = {o.lora_rank, o.lora_alpha, (unsigned)o.lora_targets, 0};
    return fy_ckpt_resolve(dir, ck, sizeof ck, err) || fy_model_set_lora(m, &lc, err) ||
                   fy_ckpt_load(ck, m, NULL, NULL, err)
               ? -1
               : 0;
}

int fy_cli_load_lora(fy_loaded *l, const char *dir, fy_lora_unmerged **out, fy_err *err) {
    char p[FY_PATH_MAX + 40];
    fy_model *m = &l->model;
    *out = NULL;
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    int rc = fy_file_exists(p) ? apply_peft(m, dir, err) : fy_cli_lora_run_adapters(m, dir, err);
    if (rc && m->lora) { /* half put on: take them off again, the base unchanged */
        fy_err e2;
        fy_lora_unmerged *u = NULL;
        if (!fy_model_lora_detach(m, &u, &e2)) fy_lora_unmerged_free(m->be, u);
    }
    if (rc || fy_model_lora_detach(m, out, err)) return fy_wrap(err, "--lora %s", dir);
    /* as fy_cli_check_weights for the base: NaN or Inf would print garbage */
    if (!isfinite(l->be->ops->sumsq(l->be, (*out)->tab.n_params, fy_at(&(*out)->params, 0)))) {
        fy_lora_unmerged_free(l->be, *out);
        *out = NULL;
        fy_be_take_error(l->be, NULL);
        return fy_fail(err, "--lora %s: the adapters hold non-finite values (NaN or Inf)", dir);
    }
    return 0;
}
