/* Serving (model/decode.h): the paged latent-KV pool, the blocks of each
 * sequence, and fy_model_batch_step, one forward over the new tokens of many
 * sequences. Every op of a step is per-row invariant (docs/DESIGN.md §2): a
 * row's bits depend on its own sequence alone, never on the other rows. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/decode.h"
#include "model/model_impl.h"

/* ---------------------------------------------------------------- pool */

int fy_kv_pool_create(fy_kv_pool *p, fy_model *m, int n_positions, int block, fy_err *err) {
    const fy_config *cf = &m->cfg;
    memset(p, 0, sizeof *p);
    if (block < 1 || n_positions < 1)
        return fy_fail(err, "KV pool of %d positions in blocks of %d: both must be positive", n_positions, block);
    long long nb = ((long long)n_positions + block - 1) / block;
    if (nb > INT32_MAX / block) return fy_fail(err, "KV pool of %d positions is too large", n_positions);
    int L = cf->num_hidden_layers, rkv = cf->kv_lora_rank, dr = cf->qk_rope_head_dim;
    size_t rows = (size_t)nb * block, per = rows * (rkv + dr);
    p->n_layers = L;
    p->block = block;
    p->n_blocks = (int)nb;
    p->ckv = calloc(L, sizeof *p->ckv);
    p->kpe = calloc(L, sizeof *p->kpe);
    p->free_ids = malloc((size_t)nb * sizeof *p->free_ids);
    if (!p->ckv || !p->kpe || !p->free_ids) {
        fy_kv_pool_free(p, m);
        return fy_fail(err, "out of memory");
    }
    if (fy_be_alloc(m->be, &p->buf, per * L, err)) {
        fy_kv_pool_free(p, m);
        return fy_wrap(err, "KV pool of %lld blocks of %d positions", nb, block);
    }
    for (int l = 0; l < L; l++) {
        p->ckv[l] = fy_at(&p->buf, per * l);
        p->kpe[l] = fy_at(&p->buf, per * l + rows * rkv);
    }
    for (int i = 0; i < p->n_blocks; i++) p->free_ids[i] = p->n_blocks - 1 - i; /* pops 0, 1, 2, ... */
    p->n_free = p->n_blocks;
    return 0;
}

void fy_kv_pool_free(fy_kv_pool *p, fy_model *m) {
    if (p->buf.handle) fy_be_free(m->be, &p->buf);
    if (p->lora_tmp.handle) fy_be_free(m->be, &p->lora_tmp);
    free(p->ckv);
    free(p->kpe);
    free(p->free_ids);
    memset(p, 0, sizeof *p);
}

int fy_kv_seq_reserve(fy_kv_pool *p, fy_kv_seq *s, int positions, fy_err *err) {
    if (positions < 0) return fy_fail(err, "reserving %d positions", positions);
    long long need = ((long long)positions + p->block - 1) / p->block;
    if (need <= s->n_blocks) return 0;
    int more = (int)(need - s->n_blocks);
    if (more > p->n_free)
        return fy_fail(err, "KV pool full: %d positions need %d more blocks of %d, %d free", positions, more,
                       p->block, p->n_free);
    if (need > s->cap_blocks) {
        int32_t *b = realloc(s->blocks, (size_t)need * sizeof *b);
        if (!b) return fy_fail(err, "out of memory");
        s->blocks = b;
        s->cap_blocks = (int)need;
    }
    for (int i = 0; i < more; i++) s->blocks[s->n_blocks++] = p->free_ids[--p->n_free];
    return 0;
}

void fy_kv_seq_release(fy_kv_pool *p, fy_kv_seq *s) {
    for (int i = s->n_blocks - 1; i >= 0; i--) p->free_ids[p->n_free++] = s->blocks[i];
    free(s->blocks);
    memset(s, 0, sizeof *s);
}

/* ---------------------------------------------------------------- a step */

/* Per-row tables of one step: the items' block lists back to back, and for
 * each row its item's list (tab), its position and its item (host). */
typedef struct step_plan {
    int N, n_want;
    int32_t *blocks, *tab, *len, *item, *row0;
} step_plan;

static void plan_free(step_plan *s) {
    free(s->blocks), free(s->tab), free(s->len), free(s->item), free(s->row0);
    memset(s, 0, sizeof *s);
}

static int check_items(fy_model *m, fy_kv_pool *p, const fy_batch_item *it, int n_items, fy_err *err) {
    const fy_config *cf = &m->cfg;
    if (fy_params_is_shard(BT(m)))
        return fy_fail(err, "decoding needs every routed expert; this model holds an expert-parallel shard");
    if (m->lora) return fy_fail(err, "decoding with LoRA adapters is not supported yet (merge them into the base)");
    if (p->n_layers != cf->num_hidden_layers)
        return fy_fail(err, "KV pool of %d layers for a model of %d", p->n_layers, cf->num_hidden_layers);
    for (int i = 0; i < n_items; i++) {
        const fy_kv_seq *s = it[i].seq;
        if (!s || !it[i].tokens || it[i].n < 1) return fy_fail(err, "batch item %d: no sequence or no tokens", i);
        if (s->len + (long long)it[i].n > cf->max_position_embeddings)
            return fy_fail(err, "batch item %d: %d + %d positions exceed max_position_embeddings %d", i, s->len,
                           it[i].n, cf->max_position_embeddings);
        if (s->len + (long long)it[i].n > (long long)s->n_blocks * p->block)
            return fy_fail(err, "batch item %d: %d + %d positions but room for %d (fy_kv_seq_reserve first)", i,
                           s->len, it[i].n, s->n_blocks * p->block);
        for (int j = 0; j < it[i].n; j++)
            if (it[i].tokens[j] < 0 || it[i].tokens[j] >= cf->vocab_size)
                return fy_fail(err, "batch item %d: token %d is outside the vocabulary [0, %d)", i, it[i].tokens[j],
                               cf->vocab_size);
        for (int k = 0; k < i; k++)
            if (it[k].seq == s) return fy_fail(err, "batch items %d and %d share one sequence", k, i);
        if (it[i].lora && it[i].lora->base_n_params != BT(m)->n_params)
            return fy_fail(err, "batch item %d: its LoRA adapter was made on another base (%zu parameters, not %zu)",
                           i, it[i].lora->base_n_params, BT(m)->n_params);
    }
    return 0;
}

static int plan_make(const fy_kv_pool *p, const fy_batch_item *it, int n_items, step_plan *s, fy_err *err) {
    memset(s, 0, sizeof *s);
    size_t nb = 0;
    for (int i = 0; i < n_items; i++) {
        s->N += it[i].n;
        s->n_want += it[i].want_logits != 0;
        nb += (size_t)it[i].seq->n_blocks;
    }
    s->blocks = malloc((nb ? nb : 1) * sizeof *s->blocks);
    s->tab = malloc((size_t)s->N * sizeof *s->tab);
    s->len = malloc((size_t)s->N * sizeof *s->len);
    s->item = malloc((size_t)s->N * sizeof *s->item);
    s->row0 = malloc(((size_t)n_items + 1) * sizeof *s->row0);
    if (!s->blocks || !s->tab || !s->len || !s->item || !s->row0) {
        plan_free(s);
        return fy_fail(err, "out of memory");
    }
    size_t b = 0;
    int row = 0;
    for (int i = 0; i < n_items; i++) {
        const fy_kv_seq *q = it[i].seq;
        memcpy(s->blocks + b, q->blocks, (size_t)q->n_blocks * sizeof *s->blocks);
        s->row0[i] = row;
        for (int j = 0; j < it[i].n; j++, row++) {
            s->tab[row] = (int32_t)b;
            s->len[row] = q->len + j + 1; /* the row attends its own position too */
            s->item[row] = i;
        }
        b += (size_t)q->n_blocks;
    }
    s->row0[n_items] = row;
    (void)p;
    return 0;
}

/* Appends each item's new c_kv and k_pe rows of layer li to its sequence's
 * blocks: one copy per run of positions inside a block. */
static void write_kv(fy_model *m, fy_kv_pool *p, int li, const fy_batch_item *it, int n_items, const step_plan *s) {
    const fy_config *cf = &m->cfg;
    fy_layer_acts *a = &m->layer_acts[li];
    int rkv = cf->kv_lora_rank, dr = cf->qk_rope_head_dim, bs = p->block;
    for (int i = 0; i < n_items; i++) {
        const fy_kv_seq *q = it[i].seq;
        for (int j = 0; j < it[i].n;) {
            int pos = q->len + j, off = pos % bs, cnt = bs - off < it[i].n - j ? bs - off : it[i].n - j;
            size_t prow = (size_t)q->blocks[pos / bs] * bs + off, row = (size_t)s->row0[i] + j;
            OPS->copy3d(m->be, 1, cnt, rkv, fy_add(p->ckv[li], prow * rkv), 0, rkv, fy_add(a->ckv_n, row * rkv), 0,
                        rkv, 0);
            OPS->copy3d(m->be, 1, cnt, dr, fy_add(p->kpe[li], prow * dr), 0, dr,
                        fy_add(a->kva, row * (rkv + dr) + rkv), 0, rkv + dr, 0);
            j += cnt;
        }
    }
}

/* The kv_b_proj item it's rows attend with in layer li: its adapter's
 * merged copy when the adapter has one there (model/lora.h), else the base's. */
static fy_ref kvb_of(fy_model *m, const fy_batch_item *it, int li) {
    const fy_lora_unmerged *u = it->lora;
    if (u && u->kvb_off && u->kvb_off[li] != SIZE_MAX) return fy_at((fy_buf *)&u->kvb, u->kvb_off[li]);
    return PW(m, BT(m)->layer[li].kv_b);
}

/* mla_paged over every row, one call per run of items sharing a kv_b_proj
 * (one call in all without adapters on it): rows are independent. */
static void attend_paged(fy_model *m, fy_kv_pool *p, int li, const fy_batch_item *it, int n_items,
                         const step_plan *s) {
    const fy_config *cf = &m->cfg;
    fy_layer_acts *a = &m->layer_acts[li];
    int H = cf->num_attention_heads, dqk = fy_cfg_qk_head_dim(cf), dv = cf->v_head_dim;
    for (int i = 0, j; i < n_items; i = j) {
        fy_ref w = kvb_of(m, &it[i], li), wj;
        for (j = i + 1; j < n_items && (wj = kvb_of(m, &it[j], li), wj.buf == w.buf && wj.off == w.off); j++) {}
        int r0 = s->row0[i], n = s->row0[j] - r0;
        OPS->mla_paged(m->be, n, H, cf->kv_lora_rank, cf->qk_nope_head_dim, cf->qk_rope_head_dim, dv,
                       fy_cfg_softmax_scale(cf), fy_add(a->q, (size_t)r0 * H * dqk), H * dqk, w, p->ckv[li],
                       p->kpe[li], p->block, s->blocks, s->tab + r0, s->len + r0,
                       fy_add(a->att, (size_t)r0 * H * dv), H * dv);
    }
}

/* Attention without the backend's mla_paged: each item's positions
 * gathered contiguous, then one mla_decode per row (the same bits). */
static int attend_gather(fy_model *m, fy_kv_pool *p, int li, const fy_batch_item *it, int n_items,
                         const step_plan *s, fy_err *err) {
    const fy_config *cf = &m->cfg;
    fy_layer_acts *a = &m->layer_acts[li];
    model_ws *ws = m->ws;
    int H = cf->num_attention_heads, dqk = fy_cfg_qk_head_dim(cf), dn = cf->qk_nope_head_dim;
    int dv = cf->v_head_dim, rkv = cf->kv_lora_rank, dr = cf->qk_rope_head_dim, bs = p->block;
    size_t most = 0;
    for (int i = 0; i < n_items; i++) {
        size_t S = (size_t)it[i].seq->len + it[i].n;
        most = S > most ? S : most;
    }
    if (most * (rkv + dr) > ws->kv_gather.n) {
        if (ws->kv_gather.handle) fy_be_free(m->be, &ws->kv_gather);
        if (fy_be_alloc(m->be, &ws->kv_gather, most * (rkv + dr), err)) return fy_wrap(err, "batch attention");
    }
    fy_ref gc = fy_at(&ws->kv_gather, 0), gk = fy_at(&ws->kv_gather, most * rkv);
    for (int i = 0; i < n_items; i++) {
        const fy_kv_seq *q = it[i].seq;
        int S = q->len + it[i].n;
        for (int b = 0; b * bs < S; b++) {
            int cnt = S - b * bs < bs ? S - b * bs : bs;
            size_t prow = (size_t)q->blocks[b] * bs;
            OPS->copy(m->be, fy_add(gc, (size_t)b * bs * rkv), fy_add(p->ckv[li], prow * rkv), (size_t)cnt * rkv);
            OPS->copy(m->be, fy_add(gk, (size_t)b * bs * dr), fy_add(p->kpe[li], prow * dr), (size_t)cnt * dr);
        }
        for (int row = s->row0[i]; row < s->row0[i + 1]; row++)
            OPS->mla_decode(m->be, H, s->len[row], rkv, dn, dr, dv, fy_cfg_softmax_scale(cf),
                            fy_add(a->q, (size_t)row * H * dqk), dqk, kvb_of(m, &it[i], li), gc, rkv, gk, dr,
                            fy_add(a->att, (size_t)row * H * dv));
    }
    return 0;
}

/* The attention half of layer li for all rows of the step: x_in -> x_mid. */
static int attn_batch(fy_model *m, fy_kv_pool *p, int li, const fy_batch_item *it, int n_items, const step_plan *s,
                      fy_err *err) {
    const fy_config *cf = &m->cfg;
    const fy_layer_offs *W = &BT(m)->layer[li];
    fy_layer_acts *a = &m->layer_acts[li];
    int N = s->N, d = cf->hidden_size, H = cf->num_attention_heads, dqk = fy_cfg_qk_head_dim(cf);
    int dn = cf->qk_nope_head_dim, dv = cf->v_head_dim, rkv = cf->kv_lora_rank;
    int dr = cf->qk_rope_head_dim, rq = cf->q_lora_rank;
    float eps = cf->rms_norm_eps;
    fy_rope_params rp = fy_model_rope_params(cf);

    OPS->rmsnorm_fwd(m->be, N, d, a->x_in, d, PW(m, W->attn_norm), eps, a->ln1, d, a->rstd1);
    if (rq > 0) {
        fy__linear(m, N, d, rq, a->ln1, d, W->q_a, a->qa, rq, 0);
        OPS->rmsnorm_fwd(m->be, N, rq, a->qa, rq, PW(m, W->q_a_norm), eps, a->qa_n, rq, a->rstd_qa);
        fy__linear(m, N, rq, H * dqk, a->qa_n, rq, W->q_b, a->q, H * dqk, 0);
    } else {
        fy__linear(m, N, d, H * dqk, a->ln1, d, W->q, a->q, H * dqk, 0);
    }
    fy__linear(m, N, d, rkv + dr, a->ln1, d, W->kv_a, a->kva, rkv + dr, 0);
    OPS->rmsnorm_fwd(m->be, N, rkv, a->kva, rkv + dr, PW(m, W->kv_a_norm), eps, a->ckv_n, rkv, a->rstd_kv);
    for (int i = 0; i < n_items; i++) { /* each item's rows at its own positions */
        size_t r0 = (size_t)s->row0[i];
        int n = it[i].n, pos0 = it[i].seq->len;
        OPS->rope(m->be, n, n, pos0, H, dr, fy_add(a->q, r0 * H * dqk + dn), H * dqk, dqk, &rp, 0);
        OPS->rope(m->be, n, n, pos0, 1, dr, fy_add(a->kva, r0 * (rkv + dr) + rkv), rkv + dr, 0, &rp, 0);
    }
    write_kv(m, p, li, it, n_items, s);
    if (OPS->mla_paged)
        attend_paged(m, p, li, it, n_items, s);
    else if (attend_gather(m, p, li, it, n_items, s, err))
        return -1;
    OPS->copy(m->be, a->x_mid, a->x_in, (size_t)N * d);
    fy__linear(m, N, H * dv, d, a->att, H * dv, W->o, a->x_mid, d, 1.0f);
    return 0;
}

/* Final norm and head of each wanted item's last row, logits to the host. */
static int batch_head(fy_model *m, const fy_batch_item *it, int n_items, const step_plan *s, fy_ref x,
                      float *logits, fy_err *err) {
    const fy_config *c = &m->cfg;
    model_ws *ws = m->ws;
    int d = c->hidden_size, V = c->vocab_size, j = 0;
    for (int i = 0; i < n_items; i++) {
        if (!it[i].want_logits) continue;
        size_t row = (size_t)s->row0[i + 1] - 1;
        OPS->rmsnorm_fwd(m->be, 1, d, fy_add(x, row * d), d, PW(m, BT(m)->final_norm), c->rms_norm_eps,
                         fy_add(ws->head_in, (size_t)j * d), d, fy_add(ws->rstd_head, j));
        j++;
    }
    if (j) {
        fy__linear(m, j, d, V, ws->head_in, d, BT(m)->head, m->logits, V, 0);
        OPS->download(m->be, logits, m->logits, (size_t)j * V);
    }
    return fy_be_sync(m->be, err);
}

static int run_layers(fy_model *m, fy_kv_pool *p, const fy_batch_item *it, int n_items, const step_plan *s,
                      float *logits, fy_err *err) {
    const fy_config *cf = &m->cfg;
    model_ws *ws = m->ws;
    int32_t *tok = malloc((size_t)s->N * sizeof *tok);
    if (!tok) return fy_fail(err, "out of memory");
    for (int i = 0; i < n_items; i++) memcpy(tok + s->row0[i], it[i].tokens, (size_t)it[i].n * sizeof *tok);
    OPS->upload(m->be, ws->tok_in, tok, (size_t)s->N);
    free(tok);
    fy__dq_embed(m, s->N, ws->tok_in, ws->x_emb);
    fy_ref x = ws->x_emb;
    for (int li = 0; li < cf->num_hidden_layers; li++) {
        m->layer_acts[li].x_in = x;
        if (attn_batch(m, p, li, it, n_items, s, err) || fy__ffn_forward(m, li, 0, NULL, err))
            return fy_wrap(err, "batch step, layer %d", li);
        x = m->layer_acts[li].x_out;
    }
    return batch_head(m, it, n_items, s, x, logits, err);
}

/* The step's unmerged adapters (model_impl.h's fy_lora_rows): each row's,
 * the distinct ones, the scratch in the pool. R->n stays 0 when no item
 * has one (the step is then exactly what it is without adapters). */
static int lora_rows_make(fy_model *m, fy_kv_pool *p, const fy_batch_item *it, int n_items, const step_plan *s,
                          fy_lora_rows *R, fy_err *err) {
    memset(R, 0, sizeof *R);
    int any = 0;
    for (int i = 0; i < n_items; i++) any |= it[i].lora != NULL;
    if (!any) return 0;
    size_t N = (size_t)s->N, in = 0, r = 0, out = 0;
    R->row = calloc(N, sizeof *R->row);
    R->set = calloc((size_t)n_items, sizeof *R->set);
    R->hidx = malloc(N * sizeof *R->hidx);
    int *ints = calloc(4 * (size_t)n_items, sizeof *ints);
    if (!R->row || !R->set || !R->hidx || !ints) {
        free(ints);
        return fy_fail(err, "out of memory");
    }
    R->n_all = ints, R->exp_layer = ints + n_items, R->exp_expert = ints + 2 * n_items, R->exp_n = ints + 3 * n_items;
    for (int i = 0; i < n_items; i++) {
        const fy_lora_unmerged *u = it[i].lora;
        for (int row = s->row0[i]; row < s->row0[i + 1]; row++) R->row[row] = u;
        int k = 0;
        while (u && k < R->n_set && R->set[k] != u) k++;
        if (!u || k < R->n_set) continue;
        R->exp_layer[R->n_set] = -1;
        R->set[R->n_set++] = u;
        in = (size_t)u->max_in > in ? (size_t)u->max_in : in;
        r = (size_t)u->cfg.rank > r ? (size_t)u->cfg.rank : r;
        out = (size_t)u->max_out > out ? (size_t)u->max_out : out;
    }
    size_t K = (size_t)R->n_set, need = N * (3 * K + in + r + out);
    if (need > p->lora_tmp.n) {
        if (p->lora_tmp.handle) fy_be_free(m->be, &p->lora_tmp);
        if (fy_be_alloc(m->be, &p->lora_tmp, need, err)) return fy_wrap(err, "LoRA scratch of the batch step");
    }
    R->n = s->N;
    R->idx = fy_at(&p->lora_tmp, 0);
    R->sv = fy_add(R->idx, 2 * K * N);
    R->xg = fy_add(R->sv, K * N);
    R->u = fy_add(R->xg, N * in);
    R->d = fy_add(R->u, N * r);
    for (size_t k = 0; k < K; k++) { /* each adapter's rows of the step and its scale: once a step */
        int n = 0;
        for (size_t row = 0; row < N; row++)
            if (R->row[row] == R->set[k]) R->hidx[n++] = (int32_t)row;
        R->n_all[k] = n;
        OPS->upload(m->be, fy_add(R->idx, k * N), R->hidx, (size_t)n);
        OPS->fill(m->be, fy_add(R->sv, k * N), R->set[k]->scale, N);
    }
    return 0;
}

static void lora_rows_free(fy_lora_rows *R) {
    free(R->row), free(R->set), free(R->hidx), free(R->n_all);
    memset(R, 0, sizeof *R);
}

/* The layers and the head, with the step's adapters on while they run. */
static int run_step(fy_model *m, fy_kv_pool *p, const fy_batch_item *items, int n_items, const step_plan *s,
                    float *logits, fy_err *err) {
    fy_lora_rows R;
    if (lora_rows_make(m, p, items, n_items, s, &R, err)) {
        lora_rows_free(&R);
        return -1;
    }
    m->ws->lora_rows = R.n ? &R : NULL;
    m->dq.on = m->dq.n > 0 || m->dq.emb;
    m->dq.rows = 1;
    int rc = run_layers(m, p, items, n_items, s, logits, err);
    m->dq.on = m->dq.rows = 0;
    m->ws->lora_rows = NULL;
    if (!rc && R.bad)
        rc = fy_fail(err, "batch step: a linear's rows were not the step's (unmerged LoRA adapters)");
    lora_rows_free(&R);
    return rc;
}

int fy_model_batch_step(fy_model *m, fy_kv_pool *p, const fy_batch_item *items, int n_items, float *logits,
                        fy_err *err) {
    if (n_items < 0 || (n_items && !items)) return fy_fail(err, "batch step of %d items", n_items);
    if (!n_items) return 0;
    if (check_items(m, p, items, n_items, err)) return -1;
    step_plan s;
    if (plan_make(p, items, n_items, &s, err)) return -1;
    if (s.n_want && !logits) {
        plan_free(&s);
        return fy_fail(err, "batch step: %d items want logits but there is nowhere to put them", s.n_want);
    }
    if (fy__reserve(m, s.N, 1, err)) {
        plan_free(&s);
        return -1;
    }
    int rc = run_step(m, p, items, n_items, &s, logits, err);
    if (!rc)
        for (int i = 0; i < n_items; i++) items[i].seq->len += items[i].n;
    plan_free(&s);
    return rc;
}
