#include "train/optim.h"

#include <math.h>

float fy_lr_at(const fy_adamw_opts *o, int step) {
    if (o->warmup_steps > 0 && step <= o->warmup_steps)
        return o->lr * (float)step / (float)o->warmup_steps;
    int span = o->total_steps - o->warmup_steps;
    if (span < 1) span = 1;
    double progress = (double)(step - o->warmup_steps) / span;
    if (progress > 1.0) progress = 1.0;
    return (float)(o->min_lr + 0.5 * (o->lr - o->min_lr) * (1.0 + cos(M_PI * progress)));
}

int fy_adamw_create(fy_adamw *opt, const fy_model *m, const fy_adamw_opts *o, fy_err *err) {
    opt->o = *o;
    opt->t = 0;
    opt->m.handle = opt->v.handle = NULL;
    if (fy_be_alloc(m->be, &opt->m, m->tab.n_params, err)) return fy_wrap(err, "AdamW moments");
    if (fy_be_alloc(m->be, &opt->v, m->tab.n_params, err)) {
        fy_be_free(m->be, &opt->m);
        return fy_wrap(err, "AdamW moments");
    }
    return 0;
}

void fy_adamw_free(fy_adamw *opt, fy_backend *be) {
    if (opt->m.handle) fy_be_free(be, &opt->m);
    if (opt->v.handle) fy_be_free(be, &opt->v);
}

int fy_adamw_step(fy_adamw *opt, fy_model *m, float *grad_norm, float *lr_used, fy_err *err) {
    const fy_adamw_opts *o = &opt->o;
    fy_backend *be = m->be;
    /* Padding between tensors is zero in grads, so one sumsq covers all. */
    double norm = sqrt(be->ops->sumsq(be, m->grads.n, fy_at(&m->grads, 0)));
    if (grad_norm) *grad_norm = (float)norm;
    if (!isfinite(norm)) return fy_fail(err, "gradient norm is %g", norm);
    /* clip_grad_norm_ semantics: scale by clip/(norm+1e-6) only when < 1. */
    float scale = 1.0f;
    if (o->grad_clip > 0) {
        double coef = o->grad_clip / (norm + 1e-6);
        if (coef < 1.0) scale = (float)coef;
    }
    opt->t++;
    float lr = fy_lr_at(o, opt->t);
    if (lr_used) *lr_used = lr;
    for (int i = 0; i < m->tab.n; i++) {
        const fy_tensor_info *t = &m->tab.t[i];
        if (t->is_buffer) continue;
        be->ops->adamw(be, t->n, fy_at(&m->params, t->off), fy_at(&m->grads, t->off),
                       fy_at(&opt->m, t->off), fy_at(&opt->v, t->off), lr, o->beta1, o->beta2,
                       o->eps, t->decay ? o->weight_decay : 0.0f, opt->t, scale);
    }
    return fy_be_sync(be, err);
}
