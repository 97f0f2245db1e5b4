/* Export of a model in host memory as a Hugging Face DeepseekV3 directory
 * (hf.h, docs/INTEROP.md). Tensors keep ferry's names (they are HF's); each
 * MTP module also gets DeepSeek's copies of the embedding and the head.
 * Shards are cut as transformers' save_pretrained cuts them (huggingface_hub's
 * split_torch_state_dict_into_shards): in order, a new shard when the next
 * tensor would pass the limit, a tensor larger than the limit alone; one
 * shard is written as model.safetensors without an index. Everything goes
 * into a temporary directory, each shard is read back and compared byte for
 * byte with what was meant, and the directory is renamed at the end. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"
#include "interop/hf.h"
#include "interop/hf_internal.h"

typedef struct xtensor {
    char name[112];
    const float *src;
    size_t n;
    int ndim;
    int64_t shape[2];
    fy_st_dtype dt;
    int is_param;      /* counted in the index's total_parameters */
    int shard;
} xtensor;

typedef struct xplan {
    xtensor *t;
    int n, n_shards;
    uint64_t total_bytes, total_params;
} xplan;

static void add_tensor(xplan *p, const char *name, const float *src, size_t n, int ndim, const int *shape,
                       fy_st_dtype dt, int is_param) {
    xtensor *x = &p->t[p->n++];
    snprintf(x->name, sizeof x->name, "%s", name);
    x->src = src, x->n = n, x->ndim = ndim, x->dt = dt, x->is_param = is_param;
    for (int d = 0; d < ndim; d++) x->shape[d] = shape[d];
}

/* Every tensor in table order, then the MTP copies; the router bias stays
 * F32 (it decides routing; DeepSeek's releases keep it F32 too). */
static int plan_tensors(const fy_host_model *h, fy_st_dtype dt, uint64_t max_bytes, xplan *p, fy_err *err) {
    const fy_param_table *tab = &h->tab;
    int L = h->cfg.num_hidden_layers, D = h->cfg.num_nextn_predict_layers;
    memset(p, 0, sizeof *p);
    p->t = calloc((size_t)tab->n + 2 * (size_t)D + 1, sizeof *p->t);
    if (!p->t) return fy_fail(err, "out of memory planning the export");
    for (int i = 0; i < tab->n; i++) {
        const fy_tensor_info *t = &tab->t[i];
        add_tensor(p, t->name, (t->is_buffer ? h->buffers : h->params) + t->off, t->n, t->ndim, t->shape,
                   t->is_buffer ? FY_ST_F32 : dt, !t->is_buffer);
    }
    const fy_tensor_info *emb = fy_params_find(tab, "model.embed_tokens.weight"), *head = fy_params_find(tab, "lm_head.weight");
    for (int k = 0; k < D; k++) {
        char en[112], hn[112];
        fy_hf_mtp_copy_names(L + k, en, hn, sizeof en);
        add_tensor(p, en, h->params + emb->off, emb->n, 2, emb->shape, dt, 1);
        add_tensor(p, hn, h->params + head->off, head->n, 2, head->shape, dt, 1);
    }
    uint64_t cur = 0;
    int shard = 0, open = 0;
    for (int i = 0; i < p->n; i++) {
        xtensor *x = &p->t[i];
        uint64_t b = (uint64_t)x->n * fy_st_dtype_size(x->dt);
        p->total_bytes += b;
        if (x->is_param) p->total_params += x->n;
        if (b > max_bytes) {   /* alone, in a shard placed before the one being filled */
            for (int j = 0; j < i; j++)
                if (p->t[j].shard == shard && open) p->t[j].shard++;
            x->shard = shard++;
            continue;
        }
        if (open && cur + b > max_bytes) shard++, cur = 0;
        x->shard = shard, cur += b, open = 1;
    }
    p->n_shards = shard + open;
    return 0;
}

/* x's bytes in the file's dtype: x->src itself for F32, else *owned. */
static const void *convert(const xtensor *x, void **owned) {
    *owned = NULL;
    if (x->dt == FY_ST_F32) return x->src;
    uint16_t *o = malloc(x->n * 2 + 1);
    if (!o) return NULL;
    for (size_t i = 0; i < x->n; i++) o[i] = x->dt == FY_ST_BF16 ? fy_f32_to_bf16(x->src[i]) : fy_f32_to_f16(x->src[i]);
    *owned = o;
    return o;
}

static void shard_name(const xplan *p, int s, char *out, size_t cap) {
    if (p->n_shards == 1) snprintf(out, cap, FY_HF_SINGLE);
    else snprintf(out, cap, "model-%05d-of-%05d.safetensors", s + 1, p->n_shards);
}

/* The shard as written must hold exactly its tensors with the bytes meant. */
static int verify_shard(const xplan *p, int s, const char *path, const void *const *data, fy_err *err) {
    fy_st_file *f;
    if (fy_st_open(path, &f, err)) return -1;
    size_t count = 0;
    int rc = 0;
    for (int i = 0; i < p->n && !rc; i++) {
        const xtensor *x = &p->t[i];
        if (x->shard != s) continue;
        count++;
        const fy_st_entry *e = fy_st_find(f, x->name);
        size_t nb = x->n * fy_st_dtype_size(x->dt);
        int same_shape = e && e->ndim == x->ndim;
        for (int d = 0; same_shape && d < x->ndim; d++) same_shape = e->shape[d] == x->shape[d];
        if (!same_shape || e->dtype != x->dt || e->nbytes != nb || memcmp(e->data, data[i], nb))
            rc = fy_fail(err, "%s: tensor %s reads back differently from what was written", path, x->name);
    }
    if (!rc && fy_st_count(f) != count) rc = fy_fail(err, "%s: %zu tensors read back, %zu written", path, fy_st_count(f), count);
    fy_st_close(f);
    return rc;
}

static int write_shard(const xplan *p, int s, const char *dir, fy_err *err) {
    char name[64], path[FY_PATH_MAX + 64];
    shard_name(p, s, name, sizeof name);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    const void **data = calloc((size_t)p->n, sizeof *data);
    void **owned = calloc((size_t)p->n, sizeof *owned);
    fy_st_writer *w = fy_st_writer_new();
    int rc = (!data || !owned || !w) ? fy_fail(err, "out of memory writing %s", path) : 0;
    if (!rc) rc = fy_st_writer_meta(w, "format", "pt", err);
    for (int i = 0; i < p->n && !rc; i++) {
        const xtensor *x = &p->t[i];
        if (x->shard != s) continue;
        if (!(data[i] = convert(x, &owned[i]))) rc = fy_fail(err, "out of memory converting %s", x->name);
        else rc = fy_st_writer_add(w, x->name, x->dt, x->ndim, x->shape, data[i], err);
    }
    if (!rc) rc = fy_st_write(w, path, err) || verify_shard(p, s, path, data, err) ? -1 : 0;
    for (int i = 0; owned && i < p->n; i++) free(owned[i]);
    free(owned);
    free((void *)data);
    fy_st_writer_free(w);
    return rc;
}

static int cmp_xname(const void *a, const void *b) {
    return strcmp((*(const xtensor *const *)a)->name, (*(const xtensor *const *)b)->name);
}

/* {"metadata": {"total_parameters", "total_size"}, "weight_map"} with
 * sorted keys, as save_pretrained writes it. */
static int write_index(const xplan *p, const char *dir, fy_err *err) {
    const xtensor **by = malloc((size_t)p->n * sizeof *by);
    cJSON *o = cJSON_CreateObject(), *meta = cJSON_AddObjectToObject(o, "metadata");
    cJSON *wm = cJSON_AddObjectToObject(o, "weight_map");
    int rc = (!by || !meta || !wm) ? -1 : 0;
    if (!rc && (!cJSON_AddNumberToObject(meta, "total_parameters", (double)p->total_params) ||
                !cJSON_AddNumberToObject(meta, "total_size", (double)p->total_bytes)))
        rc = -1;
    if (!rc) {
        for (int i = 0; i < p->n; i++) by[i] = &p->t[i];
        qsort(by, (size_t)p->n, sizeof *by, cmp_xname);
        char name[64];
        for (int i = 0; i < p->n && !rc; i++) {
            shard_name(p, by[i]->shard, name, sizeof name);
            if (!cJSON_AddStringToObject(wm, by[i]->name, name)) rc = -1;
        }
    }
    rc = rc ? fy_fail(err, "out of memory writing %s/" FY_HF_INDEX, dir) : fy_hf_write_json(dir, FY_HF_INDEX, o, err);
    cJSON_Delete(o);
    free((void *)by);
    return rc;
}

/* The small files must read back as the same model and tokenizer. */
static int verify_meta(const fy_host_model *h, const char *dir, fy_err *err) {
    char p[FY_PATH_MAX + 32];
    fy_config c;
    fy_tokenizer *tok = NULL;
    snprintf(p, sizeof p, "%s/config.json", dir);
    if (fy_config_load(p, &c, err)) return -1;
    fy_param_table t;
    if (fy_params_build(&c, &t, err)) return -1;
    int same = t.n == h->tab.n && t.n_params == h->tab.n_params;
    fy_params_free(&t);
    if (!same) return fy_fail(err, "%s: reads back as a different model", p);
    if (fy_hf_read_tokenizer(dir, &c, &tok, err)) return -1;
    same = fy_tokenizer_vocab_size(tok) == fy_tokenizer_vocab_size(h->tok);
    fy_tokenizer_free(tok);
    return same ? 0 : fy_fail(err, "%s/tokenizer.json: reads back with a different vocabulary", dir);
}

static int export_into(const fy_host_model *h, const char *dir, const fy_hf_export_opts *o, fy_err *err) {
    xplan p;
    uint64_t max = o->max_shard_bytes ? o->max_shard_bytes : 5000000000ull;
    if (plan_tensors(h, o->dtype, max, &p, err)) return -1;
    int rc = 0;
    for (int s = 0; s < p.n_shards && !rc; s++) rc = write_shard(&p, s, dir, err);
    if (!rc && p.n_shards > 1) rc = write_index(&p, dir, err);
    if (!rc) rc = fy_hf_write_meta(h, dir, o->dtype, err) || verify_meta(h, dir, err) ? -1 : 0;
    free(p.t);
    return rc;
}

int fy_hf_export(const fy_host_model *h, const char *out_dir, const fy_hf_export_opts *o, fy_err *err) {
    char tmp[FY_PATH_MAX];
    if (o->dtype != FY_ST_F32 && o->dtype != FY_ST_BF16 && o->dtype != FY_ST_F16)
        return fy_fail(err, "%s: export dtype %s (expected F32, BF16 or F16)", out_dir, fy_st_dtype_name(o->dtype));
    if (!h->tok) return fy_fail(err, "%s: the model has no tokenizer to export", out_dir);
    if (fy_file_exists(out_dir)) return fy_fail(err, "%s already exists: not overwriting it", out_dir);
    if (fy_dir_tmp_beside(out_dir, tmp, sizeof tmp, err)) return -1;
    if (export_into(h, tmp, o, err) || fy_dir_publish(tmp, out_dir, err)) {
        fy_remove_tree(tmp, &(fy_err){0});
        return -1;
    }
    return 0;
}
