/* Import of a Hugging Face DeepseekV3 directory into host memory (hf.h,
 * docs/INTEROP.md): the config through fy_config_parse, the weights from
 * model.safetensors or the shards model.safetensors.index.json names,
 * BF16/F16/F32 widened to f32 and DeepSeek's FP8 (F8_E4M3 blocks times
 * <name>_scale_inv) dequantized; the tokenizer from tokenizer.json with
 * bos/eos from tokenizer_config.json. Every tensor of the files must be one
 * the model uses: a stray one is refused by name, never skipped. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"
#include "core/log.h"
#include "interop/hf.h"
#include "interop/hf_internal.h"

typedef struct hf_src {
    const char *dir;
    int n;                 /* files */
    fy_st_file **f;
    cJSON *index;          /* NULL for a single model.safetensors */
    const cJSON *wmap;
    int fp8;               /* quantization_config: fp8 e4m3 */
    int block[2];          /* weight_block_size */
} hf_src;

static void src_close(hf_src *s) {
    for (int i = 0; i < s->n; i++) fy_st_close(s->f[i]);
    free(s->f);
    cJSON_Delete(s->index);
    memset(s, 0, sizeof *s);
}

static int open_file(hf_src *s, const char *name, fy_err *err) {
    char p[FY_PATH_MAX + 128];
    for (int i = 0; i < s->n; i++)
        if (!strcmp(strrchr(fy_st_path(s->f[i]), '/') + 1, name)) return 0;
    if (!*name || strchr(name, '/') || !strcmp(name, ".."))
        return fy_fail(err, "%s/" FY_HF_INDEX ": shard name \"%s\" is not a file name", s->dir, name);
    snprintf(p, sizeof p, "%s/%s", s->dir, name);
    if (!fy_file_exists(p)) return fy_fail(err, "%s/" FY_HF_INDEX ": shard %s is missing", s->dir, name);
    fy_st_file **f = realloc(s->f, (size_t)(s->n + 1) * sizeof *f);
    if (!f) return fy_fail(err, "out of memory opening %s", p);
    s->f = f;
    if (fy_st_open(p, &s->f[s->n], err)) return -1;
    s->n++;
    return 0;
}

static int src_open(hf_src *s, const char *dir, fy_err *err) {
    int miss;
    memset(s, 0, sizeof *s);
    s->dir = dir;
    s->index = fy_hf_read_json(dir, FY_HF_INDEX, &miss, err);
    if (!s->index && !miss) return -1;
    if (!s->index) {
        char p[FY_PATH_MAX + 64];
        snprintf(p, sizeof p, "%s/" FY_HF_SINGLE, dir);
        if (!fy_file_exists(p)) return fy_fail(err, "%s: neither " FY_HF_SINGLE " nor " FY_HF_INDEX, dir);
        return open_file(s, FY_HF_SINGLE, err);
    }
    s->wmap = cJSON_GetObjectItemCaseSensitive(s->index, "weight_map");
    if (!cJSON_IsObject(s->wmap)) return fy_fail(err, "%s/" FY_HF_INDEX ": no \"weight_map\" object", dir);
    const cJSON *e;
    cJSON_ArrayForEach(e, s->wmap) {
        if (!cJSON_IsString(e)) return fy_fail(err, "%s/" FY_HF_INDEX ": weight_map[%s] is not a file name", dir, e->string);
        if (open_file(s, e->valuestring, err)) return fy_wrap(err, "tensor %s", e->string);
    }
    return 0;
}

/* The file and entry holding `name`, or NULL (err set only when the index
 * names a shard that lacks it). */
static const fy_st_entry *src_find(const hf_src *s, const char *name, const fy_st_file **fo, fy_err *err) {
    if (s->wmap) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(s->wmap, name);
        if (!v) return NULL;
        for (int i = 0; i < s->n; i++)
            if (!strcmp(strrchr(fy_st_path(s->f[i]), '/') + 1, v->valuestring)) {
                const fy_st_entry *e = fy_st_find(s->f[i], name);
                if (!e) fy_fail(err, "%s: tensor %s is not there, though " FY_HF_INDEX " says so", fy_st_path(s->f[i]), name);
                *fo = s->f[i];
                return e;
            }
        return NULL;
    }
    *fo = s->f[0];
    return fy_st_find(s->f[0], name);
}

static int shape_is(const fy_st_entry *e, int ndim, const int64_t *shape) {
    if (e->ndim != ndim) return 0;
    for (int d = 0; d < ndim; d++)
        if (e->shape[d] != shape[d]) return 0;
    return 1;
}

static void shape_text(const fy_st_entry *e, char *out, size_t cap) {
    int k = snprintf(out, cap, "[");
    for (int d = 0; d < e->ndim && k < (int)cap; d++) k += snprintf(out + k, cap - k, d ? ", %lld" : "%lld", (long long)e->shape[d]);
    if (k < (int)cap) snprintf(out + k, cap - k, "]");
}

/* W = F8_E4M3 block * scale_inv[block row, block column] (DeepSeek's
 * weight_dequant). */
static int dequant_fp8(const hf_src *s, const fy_st_file *f, const fy_st_entry *e, float *dst, fy_err *err) {
    char sn[160];
    const fy_st_file *sf;
    snprintf(sn, sizeof sn, "%s_scale_inv", e->name);
    if (!s->fp8) return fy_fail(err, "%s: tensor %s is F8_E4M3 but config.json has no fp8 quantization_config", fy_st_path(f), e->name);
    if (e->ndim != 2) return fy_fail(err, "%s: tensor %s is F8_E4M3 but not a matrix", fy_st_path(f), e->name);
    const fy_st_entry *se = src_find(s, sn, &sf, err);
    if (!se) return fy_fail(err, "%s: F8_E4M3 tensor %s has no %s", fy_st_path(f), e->name, sn);
    int64_t rows = e->shape[0], cols = e->shape[1], br = s->block[0], bc = s->block[1];
    int64_t want[2] = {(rows + br - 1) / br, (cols + bc - 1) / bc};
    if (!shape_is(se, 2, want)) return fy_fail(err, "%s: tensor %s has the wrong shape for %s's %lldx%lld blocks", fy_st_path(sf), sn, e->name, (long long)br, (long long)bc);
    float *sc = malloc((size_t)(want[0] * want[1]) * sizeof *sc + 1);
    if (!sc) return fy_fail(err, "out of memory reading %s", sn);
    if (fy_st_read_f32(sf, sn, sc, (size_t)(want[0] * want[1]), err)) {
        free(sc);
        return -1;
    }
    const uint8_t *q = e->data;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            dst[r * cols + c] = fy_f8e4m3_to_f32(q[r * cols + c]) * sc[(r / br) * want[1] + c / bc];
    free(sc);
    return 0;
}

/* Tensor `name` of shape t's into dst as f32. */
static int read_tensor(const hf_src *s, const char *name, const fy_tensor_info *t, float *dst, fy_err *err) {
    const fy_st_file *f = NULL;
    fy_err e2 = {0};
    const fy_st_entry *e = src_find(s, name, &f, &e2);
    if (!e) return e2.msg[0] ? fy_fail(err, "%s", e2.msg) : fy_fail(err, "%s: tensor %s is missing", s->dir, name);
    int64_t want[2] = {t->shape[0], t->ndim > 1 ? t->shape[1] : 0};
    if (!shape_is(e, t->ndim, want)) {
        char got[96];
        shape_text(e, got, sizeof got);
        return t->ndim == 1 ? fy_fail(err, "%s: tensor %s has shape %s, the config makes it [%lld]", fy_st_path(f), name, got, (long long)want[0])
                            : fy_fail(err, "%s: tensor %s has shape %s, the config makes it [%lld, %lld]", fy_st_path(f), name, got, (long long)want[0], (long long)want[1]);
    }
    if (e->dtype == FY_ST_F8_E4M3) return dequant_fp8(s, f, e, dst, err);
    return fy_st_read_f32(f, name, dst, t->n, err);
}

/* "model.layers.N.rest": N, or -1. */
static int layer_of(const char *name) {
    int n, k;
    return sscanf(name, "model.layers.%d.%n", &n, &k) == 1 && k > 0 ? n : -1;
}

/* A tensor the model uses, a scale of one, or an MTP copy. */
static int is_known(const fy_param_table *tab, const fy_config *c, const char *name) {
    if (fy_params_find(tab, name)) return 1;
    size_t n = strlen(name), k = strlen("_scale_inv");
    if (n > k && !strcmp(name + n - k, "_scale_inv")) {
        char base[160];
        snprintf(base, sizeof base, "%.*s", (int)(n - k), name);
        return fy_params_find(tab, base) != NULL;
    }
    int l = layer_of(name), L = c->num_hidden_layers;
    if (l < L || l >= L + c->num_nextn_predict_layers) return 0;
    char en[112], hn[112];
    fy_hf_mtp_copy_names(l, en, hn, sizeof en);
    return !strcmp(name, en) || !strcmp(name, hn);
}

static int check_all_known(const hf_src *s, const fy_param_table *tab, const fy_config *c, fy_err *err) {
    for (int i = 0; i < s->n; i++)
        for (size_t j = 0; j < fy_st_count(s->f[i]); j++) {
            const char *name = fy_st_entry_at(s->f[i], j)->name;
            if (!is_known(tab, c, name))
                return fy_fail(err, "%s: tensor %s is not part of a DeepseekV3 model with this config.json", fy_st_path(s->f[i]), name);
            if (s->wmap && !cJSON_GetObjectItemCaseSensitive(s->wmap, name))
                return fy_fail(err, "%s: tensor %s is missing from " FY_HF_INDEX, fy_st_path(s->f[i]), name);
        }
    return 0;
}

/* DeepSeek's MTP copies of the embedding and head must equal the main ones:
 * ferry shares them. */
static int check_mtp_copies(const hf_src *s, const fy_host_model *h, fy_err *err) {
    const fy_param_table *tab = &h->tab;
    const fy_tensor_info *emb = fy_params_find(tab, "model.embed_tokens.weight"), *head = fy_params_find(tab, "lm_head.weight");
    float *tmp = malloc(emb->n * sizeof *tmp + 1);
    if (!tmp) return fy_fail(err, "out of memory checking the MTP copies");
    int rc = 0;
    for (int k = 0; k < h->cfg.num_nextn_predict_layers && !rc; k++) {
        char nm[2][112];
        const fy_tensor_info *main_t[2] = {emb, head};
        const fy_st_file *f;
        fy_hf_mtp_copy_names(h->cfg.num_hidden_layers + k, nm[0], nm[1], sizeof nm[0]);
        for (int i = 0; i < 2 && !rc; i++) {
            if (!src_find(s, nm[i], &f, err)) continue;
            if (read_tensor(s, nm[i], main_t[i], tmp, err)) rc = -1;
            else if (memcmp(tmp, h->params + main_t[i]->off, main_t[i]->n * sizeof *tmp))
                rc = fy_fail(err, "%s: tensor %s differs from %s (ferry's MTP shares the main one; refusing)", fy_st_path(f), nm[i], main_t[i]->name);
        }
    }
    free(tmp);
    return rc;
}

static int read_weights(const hf_src *s, fy_host_model *h, fy_err *err) {
    for (int i = 0; i < h->tab.n; i++) {
        const fy_tensor_info *t = &h->tab.t[i];
        if (read_tensor(s, t->name, t, (t->is_buffer ? h->buffers : h->params) + t->off, err)) return -1;
    }
    return check_all_known(s, &h->tab, &h->cfg, err) || check_mtp_copies(s, h, err) ? -1 : 0;
}

/* architectures / model_type must be DeepseekV3's. */
static int check_arch(const cJSON *j, const char *path, fy_err *err) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "architectures"), *e;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(j, "model_type");
    const char *first = NULL;
    cJSON_ArrayForEach(e, a) {
        if (!cJSON_IsString(e)) continue;
        if (!strcmp(e->valuestring, "DeepseekV3ForCausalLM")) return 0;
        if (!first) first = e->valuestring;
    }
    if (!first && cJSON_IsString(mt) && !strcmp(mt->valuestring, "deepseek_v3")) return 0;
    return fy_fail(err, "%s: architecture %s (model_type %s) is not DeepseekV3ForCausalLM, the only one ferry reads", path,
                   first ? first : "none", cJSON_IsString(mt) ? mt->valuestring : "none");
}

/* quantization_config: none, or DeepSeek's fp8 e4m3 with block scales. */
static int check_quant(const cJSON *j, const char *path, hf_src *s, fy_err *err) {
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(j, "quantization_config");
    if (!q || cJSON_IsNull(q)) return 0;
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(q, "quant_method"), *fmt = cJSON_GetObjectItemCaseSensitive(q, "fmt");
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(q, "weight_block_size");
    if (!cJSON_IsString(m) || strcmp(m->valuestring, "fp8"))
        return fy_fail(err, "%s: quantization_config.quant_method %s is not supported (only DeepSeek's fp8)", path,
                       cJSON_IsString(m) ? m->valuestring : "?");
    if (fmt && (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "e4m3")))
        return fy_fail(err, "%s: quantization_config.fmt is not e4m3", path);
    if (cJSON_GetArraySize(b) != 2 || !cJSON_IsNumber(cJSON_GetArrayItem(b, 0)) || !cJSON_IsNumber(cJSON_GetArrayItem(b, 1)) ||
        cJSON_GetArrayItem(b, 0)->valueint < 1 || cJSON_GetArrayItem(b, 1)->valueint < 1)
        return fy_fail(err, "%s: quantization_config.weight_block_size must be [rows, cols]", path);
    s->fp8 = 1;
    s->block[0] = cJSON_GetArrayItem(b, 0)->valueint;
    s->block[1] = cJSON_GetArrayItem(b, 1)->valueint;
    return 0;
}

static int read_config(const char *dir, hf_src *s, fy_config *c, fy_err *err) {
    char p[FY_PATH_MAX + 32], *text;
    size_t len;
    snprintf(p, sizeof p, "%s/config.json", dir);
    if (fy_read_file(p, &text, &len, err)) return -1;
    cJSON *j = cJSON_ParseWithLength(text, len);
    int rc = !j ? fy_fail(err, "%s: not valid JSON", p)
                : check_arch(j, p, err) || check_quant(j, p, s, err) || fy_config_parse(text, p, c, err) ? -1 : 0;
    cJSON_Delete(j);
    free(text);
    return rc;
}

/* transformers' save_pretrained writes no MTP tensors: then the model is
 * loaded without its MTP modules, and the log says so. */
static void drop_missing_mtp(const hf_src *s, fy_config *c) {
    if (c->num_nextn_predict_layers <= 0) return;
    char name[112];
    const fy_st_file *f;
    fy_err e = {0};
    snprintf(name, sizeof name, "model.layers.%d.eh_proj.weight", c->num_hidden_layers);
    if (src_find(s, name, &f, &e)) return;
    fy_warn("%s: num_nextn_predict_layers is %d but the files hold no MTP layer (no %s, as transformers saves it): "
            "loading the model without MTP", s->dir, c->num_nextn_predict_layers, name);
    c->num_nextn_predict_layers = 0;
}

int fy_hf_import(const char *dir, fy_host_model *out, fy_err *err) {
    hf_src s;
    fy_config c;
    memset(out, 0, sizeof *out);
    memset(&s, 0, sizeof s);
    int rc = src_open(&s, dir, err);
    if (!rc) rc = read_config(dir, &s, &c, err);
    if (!rc) drop_missing_mtp(&s, &c);
    if (!rc) rc = fy_host_alloc(out, &c, err);
    if (!rc) rc = fy_hf_read_tokenizer(dir, &out->cfg, &out->tok, err) || read_weights(&s, out, err) ? -1 : 0;
    src_close(&s);
    if (rc) fy_host_free(out);
    return rc;
}
