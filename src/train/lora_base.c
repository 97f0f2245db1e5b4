/* RUN_DIR/lora_base.json (train/lora_base.h): a LoRA run's base, recorded
 * and checked. */
#include "train/lora_base.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/checksum.h"
#include "core/fsutil.h"
#include "parallel/comm.h"

/* xxh64 over the params block then the buffers block, as the host sees them,
 * streamed a chunk at a time: a whole copy of the base on the host would
 * double the run's peak memory for a moment (the stream gives the bits of
 * one pass). */
#define HASH_CHUNK ((size_t)1 << 20)
static int base_hash(fy_model *m, char hex[FY_XXH64_HEX_LEN + 1], fy_err *err) {
    fy_buf *blocks[2] = {&m->params, &m->buffers};
    size_t sizes[2] = {m->tab.n_params, m->tab.n_buffers};
    float *h = malloc(HASH_CHUNK * sizeof *h);
    fy_xxh64_stream *s = fy_xxh64_begin();
    if (!h || !s) {
        free(h);
        if (s) fy_xxh64_end(s);
        return fy_fail(err, "out of memory hashing the LoRA base");
    }
    for (int b = 0; b < 2; b++)
        for (size_t at = 0; at < sizes[b]; at += HASH_CHUNK) {
            size_t n = sizes[b] - at < HASH_CHUNK ? sizes[b] - at : HASH_CHUNK;
            m->be->ops->download(m->be, h, fy_at(blocks[b], at), n);
            fy_xxh64_update(s, h, n * sizeof *h);
        }
    free(h);
    fy_xxh64_hex(fy_xxh64_end(s), hex);
    return fy_be_sync(m->be, err);
}

/* The hash that does not depend on how the base is held (whole, or an
 * expert shard per rank): xxh64 of the list of every tensor's own xxh64
 * (params and buffers), in the whole table's order (by id). On an expert
 * shard, rank 0 hashes the tensors every rank holds and each rank its own
 * experts; the sum over ranks (comm) completes the list. */
static int tensor_hash(fy_model *m, fy_comm *comm, char hex[FY_XXH64_HEX_LEN + 1], fy_err *err) {
    const fy_param_table *t = &m->tab;
    const int shard = fy_params_is_shard(t), rank0 = !comm || fy_comm_rank(comm) == 0;
    int64_t *h = calloc((size_t)t->n_all + 1, sizeof *h);
    float *buf = malloc(HASH_CHUNK * sizeof *buf);
    int rc = !h || !buf ? fy_fail(err, "out of memory hashing the LoRA base") : 0;
    for (int i = 0; i < t->n && rc == 0; i++) {
        const fy_tensor_info *ti = &t->t[i];
        if ((shard && !rank0 && !ti->expert) || ti->id < 0 || ti->id >= t->n_all) continue;
        fy_xxh64_stream *s = fy_xxh64_begin();
        if (!s) {
            rc = fy_fail(err, "out of memory hashing the LoRA base");
            break;
        }
        for (size_t at = 0; at < ti->n; at += HASH_CHUNK) {
            size_t n = ti->n - at < HASH_CHUNK ? ti->n - at : HASH_CHUNK;
            m->be->ops->download(m->be, buf, fy_at(ti->is_buffer ? &m->buffers : &m->params, ti->off + at), n);
            if ((rc = fy_be_sync(m->be, err))) break;
            fy_xxh64_update(s, buf, n * sizeof *buf);
        }
        uint64_t v = fy_xxh64_end(s);
        memcpy(&h[ti->id], &v, sizeof v);
    }
    /* One owner per tensor: the sum is its hash (exact in int64). */
    if (rc == 0 && shard && comm && fy_comm_allreduce_i64(comm, h, (size_t)t->n_all, err)) rc = -1;
    if (rc == 0) fy_xxh64_hex(fy_xxh64(h, (size_t)t->n_all * sizeof *h), hex);
    free(h);
    free(buf);
    return rc;
}

static cJSON *read_record(const char *run_dir, char *path, size_t cap, fy_err *err) {
    snprintf(path, cap, "%s/lora_base.json", run_dir);
    char *text = NULL;
    size_t len;
    if (fy_read_file(path, &text, &len, err)) {
        fy_wrap(err, "this LoRA run has no record of its base");
        return NULL;
    }
    cJSON *js = cJSON_Parse(text);
    free(text);
    if (!js) fy_fail(err, "%s: not valid JSON", path);
    return js;
}

int fy_lora_base_record(fy_model *m, const char *run_dir, const char *source, int write, fy_comm *comm, fy_err *err) {
    char hex[FY_XXH64_HEX_LEN + 1], whole[FY_XXH64_HEX_LEN + 1] = "", path[FY_PATH_MAX + 32];
    const int shard = fy_params_is_shard(&m->tab);
    if (write) {
        if (!shard && comm && fy_comm_rank(comm) != 0) return 0; /* rank 0 writes; a shard's hash takes every rank */
        /* Both hashes when the base is whole: a record a ferry before
         * tensors_xxh64 can check too. */
        if (tensor_hash(m, comm, hex, err) || (!shard && base_hash(m, whole, err))) return -1;
        if (comm && fy_comm_rank(comm) != 0) return 0;
        /* The absolute path: a resume, generate or serve may run from
         * another directory than the one the run was started in. */
        char abs[PATH_MAX];
        if (source && !realpath(source, abs)) return fy_fail(err, "LoRA base %s: cannot resolve its path", source);
        cJSON *js = cJSON_CreateObject();
        if (source) cJSON_AddStringToObject(js, "source", abs);
        else cJSON_AddNullToObject(js, "source");
        if (whole[0]) cJSON_AddStringToObject(js, "xxh64", whole);
        cJSON_AddStringToObject(js, "tensors_xxh64", hex);
        char *text = cJSON_Print(js);
        cJSON_Delete(js);
        snprintf(path, sizeof path, "%s/lora_base.json", run_dir);
        int rc = !text ? fy_fail(err, "out of memory") : fy_write_file_atomic(path, text, strlen(text), err);
        free(text);
        return rc;
    }
    cJSON *js = read_record(run_dir, path, sizeof path, err);
    if (!js) return -1;
    const cJSON *tx = cJSON_GetObjectItemCaseSensitive(js, "tensors_xxh64");
    const cJSON *x = cJSON_IsString(tx) ? tx : cJSON_GetObjectItemCaseSensitive(js, "xxh64");
    int rc = !cJSON_IsString(x) ? fy_fail(err, "%s: no \"tensors_xxh64\" or \"xxh64\"", path)
             : x != tx && shard
                 ? fy_fail(err, "%s: the base was recorded by an older ferry (whole-block xxh64 only): resume this "
                                "run without --expert-parallel", path)
             : x == tx ? tensor_hash(m, comm, hex, err)
                       : base_hash(m, hex, err);
    if (rc == 0 && strcmp(x->valuestring, hex))
        rc = fy_fail(err, "the base's weights (xxh64 %s) are not the ones this run's adapters were trained on (%s: %s)",
                     hex, path, x->valuestring);
    cJSON_Delete(js);
    return rc;
}

int fy_lora_base_source(const char *run_dir, char *buf, size_t cap, fy_err *err) {
    char path[FY_PATH_MAX + 32];
    cJSON *js = read_record(run_dir, path, sizeof path, err);
    if (!js) return -1;
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(js, "source");
    int rc = 0;
    if (cJSON_IsString(s)) snprintf(buf, cap, "%s", s->valuestring);
    else if (cJSON_IsNull(s)) buf[0] = 0;
    else rc = fy_fail(err, "%s: no \"source\"", path);
    cJSON_Delete(js);
    return rc;
}
