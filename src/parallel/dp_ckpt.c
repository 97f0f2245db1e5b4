/* Data-parallel checkpoints (dp.h): the state no rank holds alone (ZeRO-1
 * moment shards, expert shards) gathered onto rank 0 in the whole model's
 * layout, the per-rank state of DiLoCo and int8 modes, and loading both. */
#include "parallel/dp_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt/safetensors.h"
#include "core/fsutil.h"
#include "core/log.h"

void fy_dp_ckpt_free(fy_dp *dp) {
    free(dp->ck.p);
    free(dp->ck.b);
    free(dp->ck.m);
    free(dp->ck.v);
    free(dp->ck.stage);
    free(dp->extra.m);
    free(dp->extra.v);
    free(dp->extra.resid_send);
    free(dp->extra.resid_gather);
}

/* Rank 0 gets every rank's n[r] floats of x, one after the other in rank
 * order, in all (NULL elsewhere): a gather, as an all-to-all where only
 * rank 0 receives. */
static int gather_root(fy_dp *dp, const float *x, const size_t *n, float *all, fy_err *err) {
    const int R = dp->size;
    size_t *c = calloc(4 * (size_t)R, sizeof *c), off = 0;
    if (!c) return fy_fail(err, "out of memory");
    size_t *sc = c, *sd = c + R, *rc = c + 2 * R, *rd = c + 3 * R;
    sc[0] = n[dp->rank] * sizeof *x;
    for (int r = 0; r < R && dp->rank == 0; r++) rc[r] = n[r] * sizeof *x, rd[r] = off, off += rc[r];
    float dummy;
    int st = fy_comm_alltoallv(dp->comm, x, sc, sd, all ? (void *)all : (void *)&dummy, rc, rd, err);
    free(c);
    return st;
}

/* *h (rank 0 only) = malloc'd [n], once. */
static int ck_alloc(const fy_dp *dp, float **h, size_t n, fy_err *err) {
    if (dp->rank != 0 || *h) return 0;
    if (!(*h = malloc((n ? n : 1) * sizeof **h)))
        return fy_fail(err, "out of memory gathering a checkpoint (%zu floats)", n);
    return 0;
}

/* The moments of the dense params [0, n) onto rank 0's hm, hv. */
static int gather_dense_moments(fy_dp *dp, fy_model *m, const fy_adamw *opt, float *hm, float *hv, fy_err *err) {
    fy_backend *be = m->be;
    fy_buf mb = opt->m, vb = opt->v;
    if (!fy_dp_sharded(dp)) { /* every rank has them all */
        if (dp->rank == 0) be->ops->download(be, hm, fy_at(&mb, 0), dp->n), be->ops->download(be, hv, fy_at(&vb, 0), dp->n);
        return fy_be_sync(be, err);
    }
    size_t len = dp->zero.hi - dp->zero.lo;
    if (len) be->ops->download(be, dp->zero.shard, fy_at(&mb, 0), len);
    if (fy_be_sync(be, err) || gather_root(dp, dp->zero.shard, dp->zero.counts, hm, err)) return -1;
    if (len) be->ops->download(be, dp->zero.shard, fy_at(&vb, 0), len);
    if (fy_be_sync(be, err) || gather_root(dp, dp->zero.shard, dp->zero.counts, hv, err)) return -1;
    return 0;
}

/* One copy into the whole layout: n floats from `from` to `to`. */
typedef struct ck_move {
    size_t from, to, n;
    int expert;         /* from the gathered expert regions (else from rank 0's dense block) */
} ck_move;

/* Where the ranks' tensors go in the whole layout, found by their ids in
 * the ranks' tables (built one at a time: a whole set of them is large for
 * a large model). Every rank gets n (each rank's expert floats); rank 0 the
 * moves of its dense tensors (from its block) and of every rank's experts
 * (from the ranks' expert regions back to back, in rank order). */
typedef struct ck_plan {
    size_t *n, total;
    ck_move *mv;        /* [n_mv] */
    int n_mv, cap;
    int dense_same;     /* every dense tensor sits where the whole layout has it */
} ck_plan;

static void plan_free(ck_plan *P) {
    free(P->n);
    free(P->mv);
}

static int plan_push(ck_plan *P, size_t from, size_t to, size_t n, int expert) {
    if (P->n_mv == P->cap) {
        int cap = P->cap ? 2 * P->cap : 256;
        ck_move *mv = realloc(P->mv, (size_t)cap * sizeof *mv);
        if (!mv) return -1;
        P->mv = mv, P->cap = cap;
    }
    P->mv[P->n_mv++] = (ck_move){from, to, n, expert};
    return 0;
}

static int plan_moves(fy_dp *dp, const fy_model *m, ck_plan *P, fy_err *err) {
    const fy_param_table *F = &dp->ep.full_tab;
    memset(P, 0, sizeof *P);
    P->dense_same = 1;
    if (!(P->n = calloc(dp->size, sizeof *P->n))) return fy_fail(err, "out of memory gathering the experts");
    for (int r = 0; r < dp->size; r++) {
        fy_param_table t;
        if (fy_dp_rank_table(m, r, dp->size, &t, err)) return fy_wrap(err, "gathering the experts");
        P->n[r] = t.n_params - t.n_dense;
        int rc = 0;
        for (int i = 0; i < t.n && dp->rank == 0 && rc == 0; i++) {
            const fy_tensor_info *ti = &t.t[i];
            if (ti->is_buffer) continue;
            if (ti->id < 0 || ti->id >= F->n || F->t[ti->id].n != ti->n) {
                rc = fy_fail(err, "internal: %s (id %d) is not in the whole table", ti->name, ti->id);
                break;
            }
            const size_t to = F->t[ti->id].off, len = fy_params_round16(ti->n);
            const int dense = ti->off < t.n_dense;
            if (dense && r > 0) continue; /* rank 0's dense tensors are everyone's */
            if (plan_push(P, dense ? ti->off : P->total + ti->off - t.n_dense, to, len, !dense)) {
                rc = fy_fail(err, "out of memory gathering the experts");
                break;
            }
            if (dense) P->dense_same &= ti->off == to;
        }
        P->total += P->n[r];
        fy_params_free(&t);
        if (rc) return -1;
    }
    return 0;
}

/* The experts of every rank into rank 0's whole-model arrays: each rank's
 * region [n, n_local) of the params and both moments travels to rank 0,
 * which copies each tensor to where the whole table has it. */
static int gather_experts(fy_dp *dp, fy_model *m, const fy_adamw *opt, const ck_plan *P, fy_err *err) {
    fy_backend *be = m->be;
    const size_t mine = dp->n_local - dp->n;
    float *x = malloc((mine ? mine : 1) * sizeof *x), *all = NULL;
    int rc = !x ? fy_fail(err, "out of memory gathering the experts") : 0;
    if (rc == 0 && dp->rank == 0 && !(all = malloc((P->total ? P->total : 1) * sizeof *all)))
        rc = fy_fail(err, "out of memory gathering the experts (%zu floats)", P->total);
    /* The moments of the experts follow the dense ones in a ZeRO-1 shard. */
    const size_t mo = fy_dp_sharded(dp) ? opt->m.n - opt->xn : dp->n;
    fy_buf mb = opt->m, vb = opt->v;
    const fy_buf *src[3] = {&m->params, &mb, &vb};
    const size_t so[3] = {dp->n, mo, mo};
    float *dst[3] = {dp->ck.p, dp->ck.m, dp->ck.v};
    for (int k = 0; k < 3 && rc == 0; k++) {
        if (mine) be->ops->download(be, x, fy_at((fy_buf *)src[k], so[k]), mine);
        rc = fy_be_sync(be, err) || gather_root(dp, x, P->n, all, err) ? -1 : 0;
        if (rc || dp->rank != 0) continue;
        for (int i = 0; i < P->n_mv; i++)
            if (P->mv[i].expert) memcpy(dst[k] + P->mv[i].to, all + P->mv[i].from, P->mv[i].n * sizeof *all);
    }
    free(x);
    free(all);
    return rc;
}

/* dst's dense tensors from src, rank 0's block [0, n) (P's dense moves). */
static void place_dense(const ck_plan *P, float *dst, const float *src) {
    for (int i = 0; i < P->n_mv; i++)
        if (!P->mv[i].expert) memcpy(dst + P->mv[i].to, src + P->mv[i].from, P->mv[i].n * sizeof *src);
}

/* The dense params and moments onto rank 0, where the whole layout has
 * them: straight into the arrays when the layouts agree on them (the
 * model's own table), else staged and placed tensor by tensor (LoRA
 * adapters: an expert shard packs the dense adapters, the whole table
 * interleaves them with the experts'). */
static int gather_dense(fy_dp *dp, fy_model *m, const fy_adamw *opt, const ck_plan *P, size_t n_buffers,
                        fy_err *err) {
    fy_backend *be = m->be;
    const int same = !P || P->dense_same;
    float *sp = dp->ck.p, *sm = dp->ck.m, *sv = dp->ck.v;
    if (!same && dp->rank == 0) {
        if (!dp->ck.stage && !(dp->ck.stage = malloc((2 * dp->n + 1) * sizeof *dp->ck.stage)))
            return fy_fail(err, "out of memory gathering a checkpoint (%zu floats)", 2 * dp->n);
        sp = sm = dp->ck.stage, sv = dp->ck.stage + dp->n;
    }
    if (dp->rank == 0) {
        be->ops->download(be, sp, fy_at(&m->params, 0), dp->n);
        if (n_buffers) be->ops->download(be, dp->ck.b, fy_at(&m->buffers, 0), n_buffers);
    }
    if (fy_be_sync(be, err)) return -1;
    if (!same && dp->rank == 0) place_dense(P, dp->ck.p, sp);
    if (gather_dense_moments(dp, m, opt, sm, sv, err)) return -1;
    if (!same && dp->rank == 0) place_dense(P, dp->ck.m, sm), place_dense(P, dp->ck.v, sv);
    return 0;
}

int fy_dp_checkpoint_state(fy_dp *dp, fy_model *m, const fy_adamw *opt, fy_ckpt_host *h, fy_err *err) {
    memset(h, 0, sizeof *h);
    if (!fy_dp_sharded(dp) && !dp->ep.on) return 0;
    const fy_param_table *tab = dp->ep.on ? &dp->ep.full_tab : &m->tab;
    const size_t nf = tab->n_params;
    if (ck_alloc(dp, &dp->ck.p, nf, err) || ck_alloc(dp, &dp->ck.b, tab->n_buffers, err) ||
        ck_alloc(dp, &dp->ck.m, nf, err) || ck_alloc(dp, &dp->ck.v, nf, err))
        return -1;
    ck_plan P;
    if (dp->ep.on && plan_moves(dp, m, &P, err)) {
        plan_free(&P);
        return -1;
    }
    /* The dense params and the buffers are the same on every rank. */
    int rc = gather_dense(dp, m, opt, dp->ep.on ? &P : NULL, tab->n_buffers, err) ||
             (dp->ep.on && gather_experts(dp, m, opt, &P, err));
    if (dp->ep.on) plan_free(&P);
    if (rc) return -1;
    if (dp->rank == 0) {
        /* The padding between tensors is zero in the whole layout. */
        *h = (fy_ckpt_host){tab, dp->ck.p, dp->ck.b, dp->ck.m, dp->ck.v, opt->t};
    } else {
        h->tab = tab;
    }
    return 0;
}

/* What the per-rank state was saved for: a resume with anything else
 * cannot use it. */
static void extra_meta(const fy_dp *dp, char *out, size_t cap) {
    snprintf(out, cap, "ranks=%d diloco_every=%d compress=%d n_params=%zu n_buffers=%zu", dp->size, dp->diloco.local_steps,
             dp->compress, dp->n, dp->diloco.n_buffers);
}
static int has_extra(const fy_dp *dp) { return dp->size > 1 && (dp->diloco.local_steps || dp->compress); }

static int gather_rows(fy_dp *dp, const float *x, float **all, fy_err *err) {
    if (!*all && !(*all = malloc((size_t)dp->size * dp->n * sizeof **all + 1)))
        return fy_fail(err, "out of memory gathering the per-rank state (%d x %zu floats)", dp->size, dp->n);
    return fy_comm_allgather(dp->comm, x, dp->n * sizeof *x, *all, err);
}

int fy_dp_extra_state(fy_dp *dp, fy_model *m, const fy_adamw *opt, fy_ckpt_extra *extra, fy_err *err) {
    memset(extra, 0, sizeof *extra);
    if (!has_extra(dp)) return 0;
    int n = 0;
    const int64_t N = dp->size, np = (int64_t)dp->n;
    if (dp->diloco.local_steps) {
        /* inner moments (not sharded in DiLoCo: every rank has them all) */
        fy_backend *be = m->be;
        fy_buf mb = opt->m, vb = opt->v;
        be->ops->download(be, dp->diloco.delta, fy_at(&mb, 0), dp->n);
        if (fy_be_sync(be, err) || gather_rows(dp, dp->diloco.delta, &dp->extra.m, err)) return -1;
        be->ops->download(be, dp->diloco.delta, fy_at(&vb, 0), dp->n);
        if (fy_be_sync(be, err) || gather_rows(dp, dp->diloco.delta, &dp->extra.v, err)) return -1;
        dp->extra.t[n++] = (fy_ckpt_extra_tensor){"inner.exp_avg", dp->extra.m, N, np};
        dp->extra.t[n++] = (fy_ckpt_extra_tensor){"inner.exp_avg_sq", dp->extra.v, N, np};
        dp->extra.t[n++] = (fy_ckpt_extra_tensor){"outer_momentum", dp->diloco.outer_mom, 1, np + (int64_t)dp->diloco.n_buffers};
    }
    if (dp->compress) {
        if (gather_rows(dp, dp->q8.resid_send, &dp->extra.resid_send, err)) return -1;
        size_t *cnt = malloc(2 * (size_t)dp->size * sizeof *cnt);
        if (!cnt) return fy_fail(err, "out of memory");
        for (int r = 0; r < dp->size; r++) cnt[r] = dp->zero.counts[r] * 4, cnt[dp->size + r] = dp->zero.displ[r] * 4;
        int rc = (!dp->extra.resid_gather && !(dp->extra.resid_gather = malloc(dp->n * sizeof *dp->extra.resid_gather + 1)))
                     ? fy_fail(err, "out of memory")
                     : fy_comm_allgatherv(dp->comm, dp->q8.resid_gather, dp->extra.resid_gather, cnt, cnt + dp->size, err);
        free(cnt);
        if (rc) return -1;
        dp->extra.t[n++] = (fy_ckpt_extra_tensor){"resid_send", dp->extra.resid_send, N, np};
        dp->extra.t[n++] = (fy_ckpt_extra_tensor){"resid_gather", dp->extra.resid_gather, 1, np};
    }
    extra_meta(dp, dp->extra.meta, sizeof dp->extra.meta);
    extra->meta = dp->extra.meta;
    extra->n = n;
    extra->t = dp->extra.t;
    return 0;
}

/* Row `row` of the [rows, cols] tensor name (its size is checked). */
static int read_row(const fy_st_file *f, const char *name, size_t rows, int row, float *dst, size_t cols,
                    fy_err *err) {
    return fy_st_read_f32_range(f, name, rows * cols, (size_t)row * cols, cols, dst, err);
}

static int load_extra(fy_dp *dp, const char *ckpt_dir, fy_model *m, fy_adamw *opt, fy_err *err) {
    if (!has_extra(dp)) return 0;
    const char *what = dp->diloco.local_steps ? "DiLoCo" : "int8 gradients";
    char path[FY_PATH_MAX], want[160];
    if (fy_path_join(path, sizeof path, ckpt_dir, FY_CKPT_DIST, err)) return -1;
    extra_meta(dp, want, sizeof want);
    fy_st_file *f = NULL;
    fy_err e2;
    const char *got = NULL;
    if (!fy_file_exists(path) || fy_st_open(path, &f, &e2) || !(got = fy_st_meta(f, "ferry_dist")) ||
        strcmp(got, want)) {
        if (dp->rank == 0)
            fy_warn("%s: resuming without this run's per-rank state (%s; this run: %s): the continuation is "
                    "correct but not bit-identical to an uninterrupted run", what,
                    !f ? "none saved" : got ? got : "unlabelled", want);
        fy_st_close(f);
        return 0;
    }
    size_t nn = dp->n + dp->diloco.n_buffers;
    int rc = 0;
    if (dp->diloco.local_steps) {
        fy_backend *be = m->be;
        rc = read_row(f, "outer_momentum", 1, 0, dp->diloco.outer_mom, nn, err);
        if (rc == 0) rc = read_row(f, "inner.exp_avg", dp->size, dp->rank, dp->diloco.delta, dp->n, err);
        if (rc == 0) be->ops->upload(be, fy_at(&opt->m, 0), dp->diloco.delta, dp->n), rc = fy_be_sync(be, err);
        if (rc == 0) rc = read_row(f, "inner.exp_avg_sq", dp->size, dp->rank, dp->diloco.delta, dp->n, err);
        if (rc == 0) be->ops->upload(be, fy_at(&opt->v, 0), dp->diloco.delta, dp->n), rc = fy_be_sync(be, err);
    }
    if (rc == 0 && dp->compress) {
        rc = read_row(f, "resid_send", dp->size, dp->rank, dp->q8.resid_send, dp->n, err);
        /* every rank's shard in place: this rank's is [lo, hi) */
        if (rc == 0)
            rc = fy_st_read_f32_range(f, "resid_gather", dp->n, dp->zero.lo, dp->zero.hi - dp->zero.lo, dp->q8.resid_gather, err);
    }
    fy_st_close(f);
    return rc ? fy_wrap(err, "%s", path) : 0;
}

int fy_dp_load(fy_dp *dp, const char *ckpt_dir, fy_model *m, fy_adamw *opt, char **trainer_state, fy_err *err) {
    if (!fy_dp_sharded(dp))
        return fy_ckpt_load(ckpt_dir, m, opt, trainer_state, err) || load_extra(dp, ckpt_dir, m, opt, err) ? -1 : 0;
    /* A shard: load the moments of this rank's block, keep its part (and
     * its experts'). */
    fy_adamw full = {0};
    if (fy_adamw_create(&full, m, &opt->o, err)) return -1;
    int rc = fy_ckpt_load(ckpt_dir, m, &full, trainer_state, err);
    if (!rc) {
        fy_backend *be = m->be;
        size_t len = dp->zero.hi - dp->zero.lo;
        if (len) {
            be->ops->copy(be, fy_at(&opt->m, 0), fy_at(&full.m, dp->zero.lo), len);
            be->ops->copy(be, fy_at(&opt->v, 0), fy_at(&full.v, dp->zero.lo), len);
        }
        if (opt->xn) {
            be->ops->copy(be, fy_at(&opt->m, len), fy_at(&full.m, opt->xlo), opt->xn);
            be->ops->copy(be, fy_at(&opt->v, len), fy_at(&full.v, opt->xlo), opt->xn);
        }
        opt->t = full.t;
        rc = fy_be_sync(be, err);
    }
    fy_adamw_free(&full, m->be);
    return rc;
}

