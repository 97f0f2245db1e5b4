/* The argument checks every backend shares, run once before an op reaches
 * the backend (ggml-backend style): sizes, strides and options of each op's
 * contract in backend.h, and the "nothing to do" returns. A bad call records
 * a sticky error ("NAME op: ...") and never reaches the backend, so the
 * backends' own ops (be->impl_ops) may assume valid, non-empty arguments.
 * Buffers are still checked where a backend resolves them (fy_be_ref_ok). */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend/backend.h"

/* Records "NAME op: MESSAGE" and returns 1, so checks read `if (bad) return`. */
__attribute__((format(printf, 3, 4))) static int bad(fy_backend *be, const char *op, const char *fmt, ...) {
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fy_be_set_error(be, "%s %s: %s", be->ops->name, op, msg);
    return 1;
}

/* A size condition that names itself: "NAME op: bad sizes (COND)". */
#define BADDIM(op, cond) ((cond) ? bad(be, op, "bad sizes (%s)", #cond) : 0)

#define IMPL (be->impl_ops)

/* ---------------------------------------------------------------- memory, BLAS-1 */

static void chk_upload(fy_backend *be, fy_ref dst, const void *src, size_t n) {
    if (n) IMPL->upload(be, dst, src, n);
}
static void chk_download(fy_backend *be, void *dst, fy_ref src, size_t n) {
    if (n) IMPL->download(be, dst, src, n);
}
static void chk_copy(fy_backend *be, fy_ref dst, fy_ref src, size_t n) {
    if (n) IMPL->copy(be, dst, src, n);
}
static void chk_fill(fy_backend *be, fy_ref dst, float value, size_t n) {
    if (n) IMPL->fill(be, dst, value, n);
}
static void chk_axpy(fy_backend *be, size_t n, float alpha, fy_ref x, fy_ref y) {
    if (n) IMPL->axpy(be, n, alpha, x, y);
}
static void chk_scale(fy_backend *be, size_t n, float alpha, fy_ref x) {
    if (n) IMPL->scale(be, n, alpha, x);
}
static double chk_sumsq(fy_backend *be, size_t n, fy_ref x) { return n ? IMPL->sumsq(be, n, x) : 0.0; }

static void chk_copy3d(fy_backend *be, int n0, int n1, int n2, fy_ref dst, size_t ds0, size_t ds1, fy_ref src,
                       size_t ss0, size_t ss1, int accumulate) {
    if (n0 < 0 || n1 < 0 || n2 < 0) {
        bad(be, "copy3d", "negative size %d x %d x %d", n0, n1, n2);
        return;
    }
    if (n0 && n1 && n2) IMPL->copy3d(be, n0, n1, n2, dst, ds0, ds1, src, ss0, ss1, accumulate);
}

/* ---------------------------------------------------------------- GEMM */

static void chk_gemm(fy_backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha, fy_ref A,
                     int lda, fy_ref B, int ldb, float beta, fy_ref C, int ldc) {
    if (M < 0 || N < 0 || K < 0) {
        bad(be, "gemm", "negative size M=%d N=%d K=%d", M, N, K);
        return;
    }
    if (!M || !N) return;
    int ac = trans_a ? M : K, bc = trans_b ? K : N; /* stored columns */
    if (lda < (ac > 1 ? ac : 1) || ldb < (bc > 1 ? bc : 1) || ldc < N) {
        bad(be, "gemm", "leading dimension too small (lda=%d for %d cols, ldb=%d for %d cols, ldc=%d for %d cols)",
            lda, ac, ldb, bc, ldc, N);
        return;
    }
    IMPL->gemm(be, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* ---------------------------------------------------------------- rows */

static void chk_rmsnorm_fwd(fy_backend *be, int N, int D, fy_ref x, int ldx, fy_ref w, float eps, fy_ref y,
                            int ldy, fy_ref rstd) {
    if (BADDIM("rmsnorm_fwd", N < 0 || D < 0 || ldx < D || ldy < D) || !N || !D) return;
    IMPL->rmsnorm_fwd(be, N, D, x, ldx, w, eps, y, ldy, rstd);
}

static void chk_rmsnorm_bwd(fy_backend *be, int N, int D, fy_ref x, int ldx, fy_ref w, fy_ref rstd, fy_ref dy,
                            int lddy, fy_ref dx, int lddx, int accumulate_dx, fy_ref dw) {
    if (BADDIM("rmsnorm_bwd", N < 0 || D < 0 || ldx < D || lddy < D || (dx.buf && lddx < D)) || !N || !D)
        return;
    IMPL->rmsnorm_bwd(be, N, D, x, ldx, w, rstd, dy, lddy, dx, lddx, accumulate_dx, dw);
}

static void chk_rope(fy_backend *be, int N, int T, int pos0, int n_heads, int d_r, fy_ref x, int ld,
                     int head_stride, const fy_rope_params *rp, int inverse) {
    if (rp && rp->yarn &&
        BADDIM("rope", !(rp->factor > 0 && rp->orig_max_pos > 0 && rp->beta_fast > 0 && rp->beta_slow > 0 &&
                         rp->theta > 1)))
        return;
    if (BADDIM("rope", !rp || N < 0 || T <= 0 || n_heads < 0 || d_r < 0 || (d_r & 1) || pos0 < 0 ||
                           head_stride < 0) ||
        !N || !n_heads || !d_r)
        return;
    IMPL->rope(be, N, T, pos0, n_heads, d_r, x, ld, head_stride, rp, inverse);
}

static void chk_swiglu_fwd(fy_backend *be, int N, int F, fy_ref g, int ldg, fy_ref u, int ldu, fy_ref h,
                           int ldh) {
    if (BADDIM("swiglu_fwd", N < 0 || F < 0 || ldg < F || ldu < F || ldh < F) || !N || !F) return;
    IMPL->swiglu_fwd(be, N, F, g, ldg, u, ldu, h, ldh);
}

static void chk_swiglu_bwd(fy_backend *be, int N, int F, fy_ref g, int ldg, fy_ref u, int ldu, fy_ref dh,
                           int lddh, fy_ref dg, fy_ref du) {
    if (BADDIM("swiglu_bwd", N < 0 || F < 0 || ldg < F || ldu < F || lddh < F) || !N || !F) return;
    IMPL->swiglu_bwd(be, N, F, g, ldg, u, ldu, dh, lddh, dg, du);
}

/* ---------------------------------------------------------------- attention */

/* 1 when there is nothing to run (an error recorded, or an empty batch). */
static int attn_skip(fy_backend *be, const char *op, int B, int T, int H, int dqk, int dv) {
    if (B < 0 || T < 0 || H < 0 || dqk < 0 || dv < 0)
        return bad(be, op, "bad sizes B=%d T=%d H=%d dqk=%d dv=%d", B, T, H, dqk, dv);
    return !B || !T || !H;
}

static void chk_attn_fwd(fy_backend *be, int B, int T, int H, int dqk, int dv, float scale, fy_ref q, fy_ref k,
                         fy_ref v, fy_ref out, fy_ref P) {
    if (!attn_skip(be, "attn_fwd", B, T, H, dqk, dv)) IMPL->attn_fwd(be, B, T, H, dqk, dv, scale, q, k, v, out, P);
}

static void chk_attn_bwd(fy_backend *be, int B, int T, int H, int dqk, int dv, float scale, fy_ref q, fy_ref k,
                         fy_ref v, fy_ref P, fy_ref dout, fy_ref grad_q, fy_ref grad_k, fy_ref grad_v) {
    if (!attn_skip(be, "attn_bwd", B, T, H, dqk, dv))
        IMPL->attn_bwd(be, B, T, H, dqk, dv, scale, q, k, v, P, dout, grad_q, grad_k, grad_v);
}

static void chk_mla_decode(fy_backend *be, int H, int S, int r, int dn, int dr, int dv, float scale, fy_ref q,
                           int ldq, fy_ref wkv_b, fy_ref ckv, int ld_ckv, fy_ref kpe, int ld_kpe, fy_ref out) {
    if (H < 0 || S < 0 || r < 0 || dn < 0 || dr < 0 || dv < 0 || (H > 1 && ldq < dn + dr) ||
        (S > 0 && (ld_ckv < r || ld_kpe < dr)) || ld_ckv < 1 || ld_kpe < 1) {
        bad(be, "mla_decode", "bad sizes H=%d S=%d r=%d dn=%d dr=%d dv=%d ldq=%d ld_ckv=%d ld_kpe=%d", H, S, r,
            dn, dr, dv, ldq, ld_ckv, ld_kpe);
        return;
    }
    if (H && dv) IMPL->mla_decode(be, H, S, r, dn, dr, dv, scale, q, ldq, wkv_b, ckv, ld_ckv, kpe, ld_kpe, out);
}

/* ---------------------------------------------------------------- MoE */

/* The router options' consistency; N == 0 still reaches the backend, which
 * may have limits of its own to report first (opencl: the group count). */
static int router_bad(fy_backend *be, const char *op, int N, const fy_router_opts *o) {
    if (!o) return bad(be, op, "no router options");
    int E = o->n_experts, K = o->top_k, G = o->n_group < 1 ? 1 : o->n_group;
    if (N < 0 || E <= 0 || K <= 0 || K > E || E % G != 0)
        return bad(be, op, "bad router sizes N=%d n_experts=%d top_k=%d n_group=%d", N, E, K, o->n_group);
    if (G > 1 && (o->topk_group < 1 || (o->topk_group < G && o->topk_group * (E / G) < K)))
        return bad(be, op, "topk_group=%d groups of %d experts cannot hold top_k=%d", o->topk_group, E / G, K);
    return 0;
}

static void chk_router_fwd(fy_backend *be, int N, const fy_router_opts *o, fy_ref logits, fy_ref bias, fy_ref s,
                           fy_ref idx, fy_ref w) {
    if (!router_bad(be, "router_fwd", N, o)) IMPL->router_fwd(be, N, o, logits, bias, s, idx, w);
}

static void chk_router_bwd(fy_backend *be, int N, const fy_router_opts *o, fy_ref s, fy_ref idx, fy_ref dw,
                           fy_ref dlogits, int accumulate) {
    if (!router_bad(be, "router_bwd", N, o)) IMPL->router_bwd(be, N, o, s, idx, dw, dlogits, accumulate);
}

static int balance_skip(fy_backend *be, const char *op, int B, int T, int E, int K) {
    if (B < 0 || T < 0 || E <= 0 || K <= 0) return bad(be, op, "bad sizes B=%d T=%d E=%d K=%d", B, T, E, K);
    return !B || !T;
}

static float chk_balance_fwd(fy_backend *be, int B, int T, int E, int K, float alpha, fy_ref s, fy_ref idx) {
    return balance_skip(be, "balance_fwd", B, T, E, K) ? 0.0f : IMPL->balance_fwd(be, B, T, E, K, alpha, s, idx);
}

static void chk_balance_bwd(fy_backend *be, int B, int T, int E, int K, float alpha, float dloss, fy_ref s,
                            fy_ref idx, fy_ref dlogits) {
    if (!balance_skip(be, "balance_bwd", B, T, E, K)) IMPL->balance_bwd(be, B, T, E, K, alpha, dloss, s, idx, dlogits);
}

static void chk_gather_rows(fy_backend *be, int n, int D, fy_ref src, int lds, fy_ref idx, fy_ref w, fy_ref dst,
                            int ldd) {
    if (n < 0 || D < 0 || lds < D || ldd < D || lds < 1) {
        bad(be, "gather_rows", "bad sizes n=%d D=%d lds=%d ldd=%d", n, D, lds, ldd);
        return;
    }
    if (n && D) IMPL->gather_rows(be, n, D, src, lds, idx, w, dst, ldd);
}

static void chk_scatter_add_rows(fy_backend *be, int n, int D, fy_ref src, int lds, fy_ref idx, fy_ref w,
                                 fy_ref dst, int ldd) {
    if (n < 0 || D < 0 || lds < D || ldd < D || ldd < 1) {
        bad(be, "scatter_add_rows", "bad sizes n=%d D=%d lds=%d ldd=%d", n, D, lds, ldd);
        return;
    }
    if (n && D) IMPL->scatter_add_rows(be, n, D, src, lds, idx, w, dst, ldd);
}

static void chk_rows_dot(fy_backend *be, int n, int D, fy_ref a, int lda, fy_ref ia, fy_ref b, int ldb,
                         fy_ref out, int accumulate) {
    if (n < 0 || D < 0 || lda < D || ldb < D || lda < 1) {
        bad(be, "rows_dot", "bad sizes n=%d D=%d lda=%d ldb=%d", n, D, lda, ldb);
        return;
    }
    if (n) IMPL->rows_dot(be, n, D, a, lda, ia, b, ldb, out, accumulate);
}

/* ---------------------------------------------------------------- loss, optimizer */

static double chk_xent_fwdbwd(fy_backend *be, int N, int V, fy_ref logits, fy_ref targets, int ignore_index,
                              float grad_scale, fy_ref losses, fy_ref dlogits) {
    if (N < 0 || V <= 0) {
        bad(be, "xent_fwdbwd", "bad sizes N=%d V=%d", N, V);
        return 0.0;
    }
    return N ? IMPL->xent_fwdbwd(be, N, V, logits, targets, ignore_index, grad_scale, losses, dlogits) : 0.0;
}

static void chk_adamw(fy_backend *be, size_t n, fy_ref p, fy_ref g, fy_ref m, fy_ref v, float lr, float b1,
                      float b2, float eps, float wd, int t, float grad_scale) {
    if (t < 1) {
        bad(be, "adamw", "step t=%d must be >= 1", t);
        return;
    }
    if (n) IMPL->adamw(be, n, p, g, m, v, lr, b1, b2, eps, wd, t, grad_scale);
}

/* ---------------------------------------------------------------- Q8_0 */

static void chk_linear_q8(fy_backend *be, int N, int in, int out, fy_ref x, int ldx, fy_ref wq, fy_ref ws,
                          fy_ref y, int ldy, int accumulate) {
    if (N < 0 || in < 0 || out < 0 || in % FY_Q8_BLOCK || (N > 1 && (ldx < in || ldy < out))) {
        bad(be, "linear_q8", "bad sizes N=%d in=%d (a multiple of %d) out=%d ldx=%d ldy=%d", N, in, FY_Q8_BLOCK,
            out, ldx, ldy);
        return;
    }
    if (N && out) IMPL->linear_q8(be, N, in, out, x, ldx, wq, ws, y, ldy, accumulate);
}

static void chk_swiglu_q8(fy_backend *be, int d, int F, fy_ref x, fy_ref gq, fy_ref gs, fy_ref uq, fy_ref us,
                          fy_ref dq, fy_ref ds, fy_ref g, fy_ref u, fy_ref h, fy_ref y, int accumulate) {
    if (d < 0 || F < 0 || d % FY_Q8_BLOCK || F % FY_Q8_BLOCK) {
        bad(be, "swiglu_q8", "bad sizes d=%d F=%d (multiples of %d)", d, F, FY_Q8_BLOCK);
        return;
    }
    if (d) IMPL->swiglu_q8(be, d, F, x, gq, gs, uq, us, dq, ds, g, u, h, y, accumulate);
}

static void chk_linear_q4(fy_backend *be, int N, int in, int out, fy_ref x, int ldx, fy_ref wq, fy_ref ws,
                          fy_ref y, int ldy, int accumulate) {
    if (N < 0 || in < 0 || out < 0 || in % FY_Q8_BLOCK || (N > 1 && (ldx < in || ldy < out))) {
        bad(be, "linear_q4", "bad sizes N=%d in=%d (a multiple of %d) out=%d ldx=%d ldy=%d", N, in, FY_Q8_BLOCK,
            out, ldx, ldy);
        return;
    }
    if (N && out) IMPL->linear_q4(be, N, in, out, x, ldx, wq, ws, y, ldy, accumulate);
}

static void chk_linear_h16(fy_backend *be, int fmt, int N, int in, int out, fy_ref x, int ldx, fy_ref w,
                           fy_ref y, int ldy, int accumulate) {
    if (fmt != FY_H16_F16 && fmt != FY_H16_BF16) {
        bad(be, "linear_h16", "unknown 16-bit format %d", fmt);
        return;
    }
    if (N < 0 || in < 0 || out < 0 || in % 2 || (N > 1 && (ldx < in || ldy < out))) {
        bad(be, "linear_h16", "bad sizes N=%d in=%d (even) out=%d ldx=%d ldy=%d", N, in, out, ldx, ldy);
        return;
    }
    if (N && out) IMPL->linear_h16(be, fmt, N, in, out, x, ldx, w, y, ldy, accumulate);
}

static void chk_dequant_rows(fy_backend *be, int fmt, int rows, int in, fy_ref wq, fy_ref ws, int n, fy_ref idx,
                             fy_ref dst, int ldd) {
    const int quant = fmt == FY_WF_Q8_0 || fmt == FY_WF_Q4_0;
    if (!quant && fmt != FY_WF_F16 && fmt != FY_WF_BF16) {
        bad(be, "dequant_rows", "unknown weight format %d", fmt);
        return;
    }
    if (rows < 0 || in < 0 || n < 0 || (n > 1 && ldd < in) || (quant ? in % FY_Q8_BLOCK : in % 2) ||
        (!idx.buf && n > rows)) {
        bad(be, "dequant_rows", "bad sizes rows=%d in=%d (a multiple of %d) n=%d ldd=%d%s", rows, in,
            quant ? FY_Q8_BLOCK : 2, n, ldd, !idx.buf && n > rows ? " (n > rows without idx)" : "");
        return;
    }
    if (n && in) IMPL->dequant_rows(be, fmt, rows, in, wq, ws, n, idx, dst, ldd);
}

/* ---------------------------------------------------------------- dropout */

/* Without the backend's own kernel: on the host, dst downloaded whole so
 * the gaps between its rows come back as they were. */
static void host_dropout(fy_backend *be, int n, int D, float p, uint64_t seed, uint64_t stream, int64_t key0,
                         const int32_t *keys, fy_ref src, int lds, fy_ref dst, int ldd, int accumulate) {
    size_t ns = (size_t)(n - 1) * lds + D, nd = (size_t)(n - 1) * ldd + D;
    float *s = malloc(ns * sizeof *s), *d = malloc(nd * sizeof *d), scale = 1.0f / (1.0f - p);
    const uint64_t rkey = fy_rng_key(seed, stream);
    if (!s || !d) {
        free(s), free(d);
        bad(be, "dropout", "out of host memory for %zu elements", ns + nd);
        return;
    }
    IMPL->download(be, s, src, ns);
    IMPL->download(be, d, dst, nd);
    for (int i = 0; i < n; i++)
        fy_dropout_row(rkey, (uint64_t)(key0 + (keys ? keys[i] : i)), D, p, scale, s + (size_t)i * lds,
                       d + (size_t)i * ldd, accumulate);
    IMPL->upload(be, dst, d, nd);
    free(s), free(d);
}

static void chk_dropout(fy_backend *be, int n, int D, float p, uint64_t seed, uint64_t stream, int64_t key0,
                        const int32_t *keys, fy_ref src, int lds, fy_ref dst, int ldd, int accumulate) {
    if (n < 0 || D < 0 || (n > 1 && (lds < D || ldd < D)) || !(p >= 0.0f && p < 1.0f)) {
        bad(be, "dropout", "bad arguments n=%d D=%d lds=%d ldd=%d p=%g", n, D, lds, ldd, p);
        return;
    }
    if (!n || !D) return;
    if (IMPL->dropout) IMPL->dropout(be, n, D, p, seed, stream, key0, keys, src, lds, dst, ldd, accumulate);
    else host_dropout(be, n, D, p, seed, stream, key0, keys, src, lds, dst, ldd, accumulate);
}

/* ---------------------------------------------------------------- serving */

/* Without the backend's own kernel: one M = 1 gemm per row, the same call
 * for a row whatever N is (batch-invariant, slow). */
static void chk_linear_rows(fy_backend *be, int N, int in, int out, fy_ref x, int ldx, fy_ref w, int ldw,
                            fy_ref y, int ldy, int accumulate) {
    if (N < 0 || in < 0 || out < 0 || (N > 1 && (ldx < in || ldy < out)) || (out > 1 && ldw < in)) {
        bad(be, "linear_rows", "bad sizes N=%d in=%d out=%d ldx=%d ldw=%d ldy=%d", N, in, out, ldx, ldw, ldy);
        return;
    }
    if (!N || !out) return;
    if (IMPL->linear_rows) {
        IMPL->linear_rows(be, N, in, out, x, ldx, w, ldw, y, ldy, accumulate);
        return;
    }
    const int lda = in > 1 ? in : 1, ldb = ldw > lda ? ldw : lda;
    for (int n = 0; n < N; n++)
        IMPL->gemm(be, 0, 1, 1, out, in, 1.0f, fy_add(x, (size_t)n * ldx), lda, w, ldb, accumulate ? 1.0f : 0.0f,
                   fy_add(y, (size_t)n * ldy), out);
}

static void chk_mla_paged(fy_backend *be, int n, int H, int r, int dn, int dr, int dv, float scale, fy_ref q,
                          int ldq, fy_ref wkv_b, fy_ref ckv, fy_ref kpe, int bs, const int32_t *blocks,
                          const int32_t *tab, const int32_t *len, fy_ref out, int ldo) {
    if (n < 0 || H < 0 || r < 0 || dn < 0 || dr < 0 || dv < 0 || bs < 1 || (n > 1 && (ldq < H * (dn + dr) ||
        ldo < H * dv)) || (H > 1 && ldq < dn + dr) || (n && (!tab || !len || !blocks))) {
        bad(be, "mla_paged", "bad sizes n=%d H=%d r=%d dn=%d dr=%d dv=%d bs=%d ldq=%d ldo=%d", n, H, r, dn, dr, dv,
            bs, ldq, ldo);
        return;
    }
    for (int i = 0; i < n; i++)
        if (len[i] < 0 || tab[i] < 0) {
            bad(be, "mla_paged", "row %d: len=%d tab=%d", i, len[i], tab[i]);
            return;
        }
    if (n && H && dv)
        IMPL->mla_paged(be, n, H, r, dn, dr, dv, scale, q, ldq, wkv_b, ckv, kpe, bs, blocks, tab, len, out, ldo);
}

/* ---------------------------------------------------------------- installing */

/* Called by fy_backend_create_opts on every backend it returns: be->ops
 * becomes a copy of the backend's table (name, lifecycle, memory and any op
 * without a common check pass straight through) with the checked ops in
 * place; an op the backend lacks (NULL) stays NULL. */
void fy_backend_install_checks(fy_backend *be) {
    const fy_backend_ops *impl = be->ops;
    fy_backend_ops *c = &be->checked;
    be->impl_ops = impl;
    *c = *impl;
#define CHECKED(op) c->op = impl->op ? chk_##op : NULL
    CHECKED(upload);
    CHECKED(download);
    CHECKED(copy);
    CHECKED(fill);
    CHECKED(axpy);
    CHECKED(scale);
    CHECKED(sumsq);
    CHECKED(copy3d);
    CHECKED(gemm);
    CHECKED(rmsnorm_fwd);
    CHECKED(rmsnorm_bwd);
    CHECKED(rope);
    CHECKED(attn_fwd);
    CHECKED(attn_bwd);
    CHECKED(swiglu_fwd);
    CHECKED(swiglu_bwd);
    CHECKED(router_fwd);
    CHECKED(router_bwd);
    CHECKED(balance_fwd);
    CHECKED(balance_bwd);
    CHECKED(gather_rows);
    CHECKED(scatter_add_rows);
    CHECKED(rows_dot);
    CHECKED(xent_fwdbwd);
    CHECKED(adamw);
    CHECKED(mla_decode);
    CHECKED(linear_q8);
    CHECKED(swiglu_q8);
    CHECKED(linear_q4);
    CHECKED(linear_h16);
    CHECKED(mla_paged);
    CHECKED(dequant_rows);
#undef CHECKED
    c->linear_rows = chk_linear_rows; /* never NULL: the per-row gemm fallback */
    c->dropout = chk_dropout;         /* never NULL: the host fallback */
    be->ops = c;
}
