/* AdamW over the flat parameter block (or a rank's shard of it), the
 * warmup + cosine learning rate, and the chunked global gradient norm for
 * clipping. The update itself is the backend's adamw kernel, per tensor. */
#include "optim/optim.h"

#include <math.h>
#include <stdlib.h>

float fy_lr_at(const fy_adamw_opts *o, int step) {
    if (o->warmup_steps > 0 && step <= o->warmup_steps)
        return o->lr * (float)step / (float)o->warmup_steps;
    int span = o->total_steps - o->warmup_steps;
    if (span < 1) span = 1;
    double progress = (double)(step - o->warmup_steps) / span;
    if (progress > 1.0) progress = 1.0;
    return (float)(o->min_lr + 0.5 * (o->lr - o->min_lr) * (1.0 + cos(M_PI * progress)));
}

int fy_adamw_create_ranges(fy_adamw *opt, const fy_model *m, const fy_adamw_opts *o, size_t lo, size_t hi,
                           size_t xlo, size_t xhi, fy_err *err) {
    opt->o = *o;
    opt->t = 0;
    opt->lo = lo;
    opt->xlo = xlo;
    opt->xn = xhi > xlo ? xhi - xlo : 0;
    opt->m.handle = opt->v.handle = NULL;
    if (hi < lo || hi > m->tab.n_params) return fy_fail(err, "AdamW shard [%zu, %zu) outside the parameters", lo, hi);
    if (opt->xn && (xlo < hi || xhi > m->tab.n_params))
        return fy_fail(err, "AdamW range [%zu, %zu) overlaps the shard or leaves the parameters", xlo, xhi);
    size_t n = hi - lo + opt->xn;
    if (fy_be_alloc(m->be, &opt->m, n, err)) return fy_wrap(err, "AdamW moments");
    if (fy_be_alloc(m->be, &opt->v, n, err)) {
        fy_be_free(m->be, &opt->m);
        return fy_wrap(err, "AdamW moments");
    }
    return 0;
}

int fy_adamw_create_shard(fy_adamw *opt, const fy_model *m, const fy_adamw_opts *o, size_t lo, size_t hi,
                          fy_err *err) {
    return fy_adamw_create_ranges(opt, m, o, lo, hi, 0, 0, err);
}

int fy_adamw_create(fy_adamw *opt, const fy_model *m, const fy_adamw_opts *o, fy_err *err) {
    return fy_adamw_create_shard(opt, m, o, 0, m->tab.n_params, err);
}

void fy_adamw_free(fy_adamw *opt, fy_backend *be) {
    if (opt->m.handle) fy_be_free(be, &opt->m);
    if (opt->v.handle) fy_be_free(be, &opt->v);
}

size_t fy_norm_chunks(size_t n) { return (n + FY_NORM_CHUNK - 1) / FY_NORM_CHUNK; }

void fy_grad_sumsq_chunks(fy_model *m, size_t lo, size_t hi, double *part) {
    fy_backend *be = m->be;
    for (size_t c = 0; lo + c * FY_NORM_CHUNK < hi; c++) {
        size_t a = lo + c * FY_NORM_CHUNK, b = a + FY_NORM_CHUNK < hi ? a + FY_NORM_CHUNK : hi;
        part[c] = be->ops->sumsq(be, b - a, fy_at(&m->grads, a));
    }
}

double fy_norm_from_chunks(const double *part, size_t n_chunks) {
    double s = 0;
    for (size_t c = 0; c < n_chunks; c++) s += part[c];
    return sqrt(s);
}

int fy_adamw_update(fy_adamw *opt, fy_model *m, double norm, float grad_scale, float *lr_used, fy_err *err) {
    const fy_adamw_opts *o = &opt->o;
    fy_backend *be = m->be;
    if (!isfinite(norm)) return fy_fail(err, "gradient norm is %g", norm);
    /* clip_grad_norm_ semantics: scale by clip/(norm+1e-6) only when < 1. */
    float scale = 1.0f;
    if (o->grad_clip > 0) {
        double coef = o->grad_clip / (norm + 1e-6);
        if (coef < 1.0) scale = (float)coef;
    }
    if (grad_scale != 1.0f) scale = (float)((double)scale * grad_scale);
    opt->t++;
    float lr = fy_lr_at(o, opt->t);
    if (lr_used) *lr_used = lr;
    /* The ranges: [lo, hi) at moment 0, [xlo, xlo + xn) right after it. */
    const size_t n1 = opt->m.n - opt->xn;
    const size_t rlo[2] = {opt->lo, opt->xlo}, rhi[2] = {opt->lo + n1, opt->xlo + opt->xn}, mo[2] = {0, n1};
    for (int r = 0; r < 2; r++)
        for (int i = 0; i < m->tab.n && rhi[r] > rlo[r]; i++) {
            const fy_tensor_info *t = &m->tab.t[i];
            if (t->is_buffer) continue;
            size_t a = t->off > rlo[r] ? t->off : rlo[r], b = t->off + t->n < rhi[r] ? t->off + t->n : rhi[r];
            if (a >= b) continue;
            size_t k = a - rlo[r] + mo[r];
            be->ops->adamw(be, b - a, fy_at(&m->params, a), fy_at(&m->grads, a), fy_at(&opt->m, k),
                           fy_at(&opt->v, k), lr, o->beta1, o->beta2, o->eps, t->decay ? o->weight_decay : 0.0f,
                           opt->t, scale);
        }
    return fy_be_sync(be, err);
}

int fy_adamw_step(fy_adamw *opt, fy_model *m, float *grad_norm, float *lr_used, fy_err *err) {
    size_t n = m->grads.n, nc = fy_norm_chunks(n);
    double *part = malloc((nc ? nc : 1) * sizeof *part);
    if (!part) return fy_fail(err, "out of memory");
    /* Padding between tensors is zero in grads, so the chunks cover all. */
    fy_grad_sumsq_chunks(m, 0, n, part);
    double norm = fy_norm_from_chunks(part, nc);
    free(part);
    if (grad_norm) *grad_norm = (float)norm;
    return fy_adamw_update(opt, m, norm, 1.0f, lr_used, err);
}
