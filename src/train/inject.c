/* The faults of a FERRY_INJECT spec (inject.h): parsing, checking against
 * the model, and the hooks the trainer calls at each point of a step. Only
 * the trainer's options bring the spec in: nothing here reads the environment. */
#include "train/inject.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"

static int parse_one(char *item, fy_inj_fault *f, fy_err *err) {
    memset(f, 0, sizeof *f);
    f->bit = 30;
    f->repeat = 1;
    f->moment = 'v';
    f->step = -1;
    char *colon = strchr(item, ':');
    if (colon) *colon = '\0';
    static const struct { const char *name; fy_inj_kind k; } kinds[] = {
        {"nan_grad", FY_INJ_NAN_GRAD}, {"flip_weight", FY_INJ_FLIP_WEIGHT},
        {"flip_moment", FY_INJ_FLIP_MOMENT}, {"spike", FY_INJ_SPIKE}, {"gemm", FY_INJ_GEMM},
        {"flip_act", FY_INJ_FLIP_ACT}};
    int found = 0;
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (strcmp(item, kinds[i].name) == 0) {
            f->kind = kinds[i].k;
            found = 1;
        }
    if (!found)
        return fy_fail(err, "FERRY_INJECT: unknown fault '%s' (nan_grad, flip_weight, flip_moment, flip_act, spike, gemm)",
                       item);
    char *save = NULL;
    for (char *kv = colon ? strtok_r(colon + 1, ",", &save) : NULL; kv; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq) return fy_fail(err, "FERRY_INJECT: '%s' is not key=value", kv);
        *eq = '\0';
        const char *v = eq + 1;
        char *end;
        if (strcmp(kv, "tensor") == 0 || (strcmp(kv, "act") == 0 && f->kind == FY_INJ_FLIP_ACT)) {
            snprintf(f->tensor, sizeof f->tensor, "%s", v);
            continue;
        }
        if (strcmp(kv, "moment") == 0) {
            if (strcmp(v, "m") && strcmp(v, "v")) return fy_fail(err, "FERRY_INJECT: moment=%s (m or v)", v);
            f->moment = v[0];
            continue;
        }
        long long x = strtoll(v, &end, 10);
        if (!*v || *end || x < 0) return fy_fail(err, "FERRY_INJECT: %s=%s is not a non-negative integer", kv, v);
        if (strcmp(kv, "step") == 0) f->step = (int)x;
        else if (strcmp(kv, "index") == 0) f->index = (size_t)x;
        else if (strcmp(kv, "bit") == 0 && x < 32) f->bit = (int)x;
        else if (strcmp(kv, "repeat") == 0) f->repeat = (int)x;
        else if (strcmp(kv, "layer") == 0 && f->kind == FY_INJ_FLIP_ACT && x < 1 << 20) f->layer = (int)x;
        else return fy_fail(err, "FERRY_INJECT: unknown or out-of-range key %s=%s", kv, v);
    }
    if (f->step < 1) return fy_fail(err, "FERRY_INJECT: '%s' needs step=S (S >= 1)", item);
    return 0;
}

int fy_inject_parse(const char *spec, fy_inject *inj, fy_err *err) {
    memset(inj, 0, sizeof *inj);
    if (!spec || !*spec) return 0;
    char *s = strdup(spec), *save = NULL;
    if (!s) return fy_fail(err, "out of memory");
    int rc = 0;
    for (char *item = strtok_r(s, ";", &save); item && !rc; item = strtok_r(NULL, ";", &save)) {
        while (*item == ' ') item++;
        if (!*item) continue;
        if (inj->n == FY_INJ_MAX) {
            rc = fy_fail(err, "FERRY_INJECT: more than %d faults", FY_INJ_MAX);
            break;
        }
        rc = parse_one(item, &inj->f[inj->n], err);
        if (!rc) inj->n++;
    }
    free(s);
    return rc;
}

int fy_inject_resolve(fy_inject *inj, const fy_model *m, fy_err *err) {
    for (int i = 0; i < inj->n; i++) {
        fy_inj_fault *f = &inj->f[i];
        if (f->kind == FY_INJ_SPIKE || f->kind == FY_INJ_GEMM) continue;
        if (f->kind == FY_INJ_FLIP_ACT) { /* the index is checked when it fires: sizes follow the batch */
            if (!f->tensor[0]) snprintf(f->tensor, sizeof f->tensor, "ln2");
            if (f->layer >= m->tab.n_layers)
                return fy_fail(err, "FERRY_INJECT: flip_act layer=%d, the model has %d layers", f->layer,
                               m->tab.n_layers);
            continue;
        }
        const fy_tensor_info *t = NULL;
        if (!f->tensor[0]) {
            for (int j = 0; j < m->tab.n && !t; j++)
                if (!m->tab.t[j].is_buffer) t = &m->tab.t[j];
            if (t) snprintf(f->tensor, sizeof f->tensor, "%s", t->name);
        } else {
            t = fy_params_find(&m->tab, f->tensor);
        }
        /* Another expert-parallel rank's expert: that rank injects it. */
        if (!t && fy_params_is_shard(&m->tab) && fy_params_is_expert_name(f->tensor)) continue;
        if (!t || t->is_buffer) return fy_fail(err, "FERRY_INJECT: no trained tensor '%s'", f->tensor);
        if (f->index >= t->n)
            return fy_fail(err, "FERRY_INJECT: index %zu outside %s (%zu elements)", f->index, f->tensor, t->n);
    }
    return 0;
}

int fy_inject_setup(fy_inject *inj, const char *spec, const fy_model *m, fy_err *err) {
    if (fy_inject_parse(spec, inj, err)) return -1;
    if (inj->n) fy_warn("fault injection active: FERRY_INJECT=%s", spec);
    return fy_inject_resolve(inj, m, err);
}

static fy_inj_fault *due(fy_inject *inj, int step, int kind) {
    for (int i = 0; i < inj->n; i++) {
        fy_inj_fault *f = &inj->f[i];
        if ((int)f->kind == kind && f->step == step && f->fired < f->repeat) {
            f->fired++;
            return f;
        }
    }
    return NULL;
}

int fy_inject_batch(fy_inject *inj, int step, int32_t *labels, size_t n, int vocab, char *what, size_t cap) {
    fy_inj_fault *f = due(inj, step, FY_INJ_SPIKE);
    if (!f) return 0;
    uint64_t x = 0x9e3779b97f4a7c15ull * (uint64_t)(step + 1);
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        if (labels[i] >= 0) labels[i] = (int32_t)(x % (uint64_t)vocab);
    }
    snprintf(what, cap, "spike: poisoned batch (random labels) at step %d", step);
    return 1;
}

static const fy_tensor_info *find(const fy_model *m, const char *name) {
    return fy_params_find(&m->tab, name);
}

int fy_inject_grad(fy_inject *inj, int step, fy_model *m, char *what, size_t cap) {
    fy_inj_fault *f = due(inj, step, FY_INJ_NAN_GRAD);
    if (!f) return 0;
    const fy_tensor_info *t = find(m, f->tensor);
    if (!t) return 0; /* held by another expert-parallel rank */
    float nan = NAN;
    m->be->ops->upload(m->be, fy_at(&m->grads, t->off + f->index), &nan, 1);
    snprintf(what, cap, "nan_grad: NaN in grad of %s[%zu] at step %d", f->tensor, f->index, step);
    return 1;
}

/* Flips one bit of the float at r on the device; *before and *after get it. */
static void flip_bit(fy_backend *be, fy_ref r, int bit, float *before, float *after) {
    uint32_t u;
    be->ops->download(be, before, r, 1);
    memcpy(&u, before, 4);
    u ^= 1u << bit;
    memcpy(after, &u, 4);
    be->ops->upload(be, r, after, 1);
}

int fy_inject_state(fy_inject *inj, int step, fy_model *m, fy_adamw *opt, char *what, size_t cap) {
    int any = 0;
    fy_inj_fault *f;
    while ((f = due(inj, step, FY_INJ_FLIP_WEIGHT)) || (f = due(inj, step, FY_INJ_FLIP_MOMENT))) {
        const fy_tensor_info *t = find(m, f->tensor);
        size_t at = t ? t->off + f->index : 0;
        if (t && f->kind == FY_INJ_FLIP_MOMENT) { /* where opt keeps that moment, if this rank does */
            const size_t n1 = opt->m.n - opt->xn;
            if (at >= opt->lo && at < opt->lo + n1) at -= opt->lo;
            else if (opt->xn && at >= opt->xlo && at < opt->xlo + opt->xn) at = at - opt->xlo + n1;
            else t = NULL;
        }
        if (!t) continue; /* another rank holds it (expert parallel, ZeRO-1) */
        fy_buf *b = f->kind == FY_INJ_FLIP_WEIGHT ? &m->params : f->moment == 'm' ? &opt->m : &opt->v;
        float x, y;
        flip_bit(m->be, fy_at(b, at), f->bit, &x, &y);
        snprintf(what, cap, "%s: bit %d of %s%s%s[%zu] flipped (%g -> %g) after step %d",
                 f->kind == FY_INJ_FLIP_WEIGHT ? "flip_weight" : "flip_moment", f->bit,
                 f->kind == FY_INJ_FLIP_WEIGHT ? "" : f->moment == 'm' ? "adam.m of " : "adam.v of ",
                 f->tensor, "", f->index, x, y, step);
        fy_warn("inject %s", what);
        any = 1;
    }
    return any;
}

int fy_inject_act(fy_inject *inj, int step, fy_model *m, char *what, size_t cap, fy_err *err) {
    fy_inj_fault *f = due(inj, step, FY_INJ_FLIP_ACT);
    if (!f) return 0;
    fy_ref r;
    size_t n;
    if (fy_model_activation(m, f->layer, f->tensor, &r, &n, err))
        return fy_wrap(err, "FERRY_INJECT flip_act");
    if (f->index >= n)
        return fy_fail(err, "FERRY_INJECT: flip_act index %zu outside %s of layer %d (%zu elements)", f->index,
                       f->tensor, f->layer, n);
    float x, y;
    flip_bit(m->be, fy_add(r, f->index), f->bit, &x, &y);
    snprintf(what, cap, "flip_act: bit %d of activation %s[%zu] of layer %d flipped (%g -> %g) between the "
             "forward and the backward of step %d", f->bit, f->tensor, f->index, f->layer, x, y, step);
    return 1;
}

int fy_inject_gemm_due(fy_inject *inj, int step, int *gemm_index) {
    fy_inj_fault *f = due(inj, step, FY_INJ_GEMM);
    if (!f) return 0;
    *gemm_index = (int)f->index;
    return 1;
}
