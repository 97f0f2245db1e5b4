/* The guards of the training loop (guard.h): loss window and spike test,
 * host snapshots for rollback, per-tensor state checksums. They only read
 * the model: with no fault they change no number the training computes. */
#include "train/guard.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/checksum.h"

void fy_guard_opts_default(fy_guard_opts *o) {
    o->nonfinite = 1;
    o->spike_window = 32;
    o->spike_min = 8;
    o->spike_z = 6.0;
    o->spike_ratio = 1.3;
    o->snapshot_every = 10;
    o->max_failures = 5;
    o->weight_checksum = 1;
    o->abft_fraction = 0.02; /* ~3 % of a step on cpu (bench/faults.sh) */
    o->recompute_every = 0;
}

/* ---- loss window ---- */

int fy_loss_window_init(fy_loss_window *w, int cap) {
    memset(w, 0, sizeof *w);
    if (cap <= 0) return 0;
    w->v = calloc((size_t)cap, sizeof *w->v);
    if (!w->v) return -1;
    w->cap = cap;
    return 0;
}

void fy_loss_window_free(fy_loss_window *w) {
    free(w->v);
    memset(w, 0, sizeof *w);
}

void fy_loss_window_push(fy_loss_window *w, double loss) {
    if (w->cap <= 0 || !isfinite(loss)) return;
    w->v[w->head] = loss;
    w->head = (w->head + 1) % w->cap;
    if (w->n < w->cap) w->n++;
}

int fy_loss_is_spike(const fy_loss_window *w, const fy_guard_opts *o, double loss, char *why,
                     size_t cap) {
    if (why && cap) why[0] = '\0';
    if (w->cap <= 0 || w->n < (o->spike_min > 2 ? o->spike_min : 2) || !isfinite(loss)) return 0;
    double mean = 0, var = 0;
    for (int i = 0; i < w->n; i++) mean += w->v[i];
    mean /= w->n;
    for (int i = 0; i < w->n; i++) var += (w->v[i] - mean) * (w->v[i] - mean);
    double sd = sqrt(var / (w->n - 1));
    /* A floor on the spread: a flat window must not make noise a spike. */
    double floor_sd = 0.02 * fabs(mean) + 1e-6;
    if (sd < floor_sd) sd = floor_sd;
    double z = (loss - mean) / sd, ratio = mean > 0 ? loss / mean : INFINITY;
    if (z > o->spike_z && ratio > o->spike_ratio) {
        if (why)
            snprintf(why, cap, "loss %.4f is %.1f sigma and %.2fx above the mean %.4f of the last %d steps",
                     loss, z, ratio, mean, w->n);
        return 1;
    }
    return 0;
}

/* ---- snapshots ---- */

static int grow(void **p, size_t n, size_t elt) {
    void *q = realloc(*p, n ? n * elt : 1);
    if (!q) return -1;
    *p = q;
    return 0;
}

int fy_snapshot_take(fy_snapshot *s, fy_model *m, const fy_adamw *opt, int step, fy_err *err) {
    size_t np = m->params.n, nb = m->buffers.n, nm = opt->m.n; /* nm < np: a ZeRO-1 shard */
    size_t nl = (size_t)m->tab.n_layers * (m->cfg.n_routed_experts + 1);
    if ((s->n_params != np && grow((void **)&s->params, np, 4)) ||
        (s->n_moments != nm && (grow((void **)&s->m, nm, 4) || grow((void **)&s->v, nm, 4))) ||
        (s->n_buffers != nb && grow((void **)&s->buffers, nb, 4)) ||
        (s->n_loads != nl && grow((void **)&s->loads, nl, sizeof(int64_t)))) {
        s->valid = 0;
        return fy_fail(err, "out of memory for a guard snapshot");
    }
    s->n_params = np;
    s->n_moments = nm;
    s->n_buffers = nb;
    s->n_loads = nl;
    fy_backend *be = m->be;
    if (fy_be_sync(be, err)) return -1;
    be->ops->download(be, s->params, fy_at(&m->params, 0), np);
    be->ops->download(be, s->m, fy_at((fy_buf *)&opt->m, 0), nm);
    be->ops->download(be, s->v, fy_at((fy_buf *)&opt->v, 0), nm);
    if (nb) be->ops->download(be, s->buffers, fy_at(&m->buffers, 0), nb);
    if (nl) memcpy(s->loads, m->loads, nl * sizeof(int64_t));
    s->step = step;
    s->opt_t = opt->t;
    s->valid = 1;
    return fy_be_sync(be, err);
}

int fy_snapshot_restore(const fy_snapshot *s, fy_model *m, fy_adamw *opt, fy_err *err) {
    if (!s->valid) return fy_fail(err, "no guard snapshot to restore");
    if (opt->m.n != s->n_moments) return fy_fail(err, "guard snapshot: the optimizer shard changed size");
    fy_backend *be = m->be;
    be->ops->upload(be, fy_at(&m->params, 0), s->params, s->n_params);
    be->ops->upload(be, fy_at(&opt->m, 0), s->m, s->n_moments);
    be->ops->upload(be, fy_at(&opt->v, 0), s->v, s->n_moments);
    if (s->n_buffers) be->ops->upload(be, fy_at(&m->buffers, 0), s->buffers, s->n_buffers);
    if (s->n_loads) memcpy(m->loads, s->loads, s->n_loads * sizeof(int64_t));
    opt->t = s->opt_t;
    fy_model_zero_grad(m);
    return fy_be_sync(be, err);
}

void fy_snapshot_free(fy_snapshot *s) {
    free(s->params);
    free(s->m);
    free(s->v);
    free(s->buffers);
    free(s->loads);
    memset(s, 0, sizeof *s);
}

/* ---- checksums ---- */

/* On the cpu backend a buffer's handle is its host memory (backend.h): hash
 * it in place instead of copying it first. Other backends download. */
static int hash_block(fy_state_sums *s, fy_model *m, fy_buf *b, int buffers, uint64_t *out) {
    fy_backend *be = m->be;
    if (!b->n) return 0;
    const float *h = s->host;
    if (strcmp(be->ops->name, "cpu") == 0) h = (const float *)b->handle;
    else be->ops->download(be, s->host, fy_at(b, 0), b->n);
#pragma omp parallel for schedule(dynamic)
    for (int i = 0; i < m->tab.n; i++) {
        const fy_tensor_info *t = &m->tab.t[i];
        if (!t->is_buffer != !buffers) continue;
        out[i] = fy_xxh64(h + t->off, t->n * sizeof(float));
    }
    return 0;
}

static int sums_into(fy_state_sums *s, fy_model *m, const fy_adamw *opt, uint64_t *p, uint64_t *mm,
                     uint64_t *vv, fy_err *err) {
    if (fy_be_sync(m->be, err)) return -1;
    memset(p, 0, (size_t)s->n * sizeof *p);
    memset(mm, 0, (size_t)s->n * sizeof *mm);
    memset(vv, 0, (size_t)s->n * sizeof *vv);
    hash_block(s, m, &m->params, 0, p);
    hash_block(s, m, &m->buffers, 1, p);
    if (opt->m.n == m->params.n) {
        hash_block(s, m, (fy_buf *)&opt->m, 0, mm);
        hash_block(s, m, (fy_buf *)&opt->v, 0, vv);
    } else if (opt->m.n) { /* a ZeRO-1 shard: one sum each, reported on the first tensor */
        fy_backend *be = m->be;
        be->ops->download(be, s->host, fy_at((fy_buf *)&opt->m, 0), opt->m.n);
        mm[0] = fy_xxh64(s->host, opt->m.n * sizeof(float));
        be->ops->download(be, s->host, fy_at((fy_buf *)&opt->v, 0), opt->v.n);
        vv[0] = fy_xxh64(s->host, opt->v.n * sizeof(float));
    }
    return fy_be_sync(m->be, err);
}

static int sums_alloc(fy_state_sums *s, fy_model *m, fy_err *err) {
    size_t nh = m->params.n > m->buffers.n ? m->params.n : m->buffers.n;
    if (s->n == m->tab.n && s->host) return 0;
    fy_state_sums_free(s);
    s->n = m->tab.n;
    s->p = calloc((size_t)s->n * 3, sizeof *s->p);
    s->m = s->p + s->n;
    s->v = s->m + s->n;
    s->host = malloc((nh ? nh : 1) * sizeof(float));
    if (!s->p || !s->host) {
        fy_state_sums_free(s);
        return fy_fail(err, "out of memory for state checksums");
    }
    return 0;
}

int fy_state_sums_compute(fy_state_sums *s, fy_model *m, const fy_adamw *opt, fy_err *err) {
    if (sums_alloc(s, m, err)) return -1;
    s->valid = 0;
    if (sums_into(s, m, opt, s->p, s->m, s->v, err)) return -1;
    s->valid = 1;
    return 0;
}

int fy_state_sums_verify(fy_state_sums *s, fy_model *m, const fy_adamw *opt, char *where,
                         size_t cap, fy_err *err) {
    if (where && cap) where[0] = '\0';
    if (!s->valid) return 0;
    uint64_t *now = calloc((size_t)s->n * 3, sizeof *now);
    if (!now) return fy_fail(err, "out of memory for state checksums");
    int rc = sums_into(s, m, opt, now, now + s->n, now + 2 * s->n, err);
    if (!rc) {
        for (int k = 0; k < 3 && !rc; k++) {
            const uint64_t *a = k == 0 ? s->p : k == 1 ? s->m : s->v, *b = now + (size_t)k * s->n;
            for (int i = 0; i < s->n; i++)
                if (a[i] != b[i]) {
                    const fy_tensor_info *t = &m->tab.t[i];
                    if (where)
                        snprintf(where, cap, "%s%s%s", k == 0 ? (t->is_buffer ? "buffer " : "weight ")
                                                            : k == 1 ? "adam.m[" : "adam.v[",
                                 t->name, k ? "]" : "");
                    rc = 1;
                    break;
                }
        }
    } else {
        rc = -1;
    }
    free(now);
    return rc;
}

void fy_state_sums_free(fy_state_sums *s) {
    free(s->p);
    free(s->host);
    memset(s, 0, sizeof *s);
}

int fy_find_nonfinite_grad(fy_model *m, char *where, size_t cap, fy_err *err) {
    if (where && cap) where[0] = '\0';
    size_t n = m->grads.n;
    float *h = malloc((n ? n : 1) * sizeof *h);
    if (!h) return fy_fail(err, "out of memory");
    if (fy_be_sync(m->be, err)) {
        free(h);
        return -1;
    }
    m->be->ops->download(m->be, h, fy_at(&m->grads, 0), n);
    for (int i = 0; i < m->tab.n; i++) {
        const fy_tensor_info *t = &m->tab.t[i];
        if (t->is_buffer) continue;
        for (size_t j = 0; j < t->n; j++)
            if (!isfinite(h[t->off + j])) {
                snprintf(where, cap, "grad of %s[%zu]", t->name, j);
                free(h);
                return 0;
            }
    }
    free(h);
    return 0;
}

const fy_tensor_info *fy_tensor_at(const fy_model *m, size_t off) {
    for (int i = 0; i < m->tab.n; i++) {
        const fy_tensor_info *t = &m->tab.t[i];
        if (!t->is_buffer && off >= t->off && off < t->off + t->n) return t;
    }
    return NULL;
}
