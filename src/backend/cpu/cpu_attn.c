/* Causal self-attention of the CPU backend. One (batch, head) pair per
 * OpenMP iteration; within it, rows are processed in blocks so GEMMs skip
 * most of the masked upper triangle. Every GEMM runs single-threaded inside
 * the parallel region (OpenBLAS does so when called in one), and each output
 * element is produced by the same sequence of operations whatever the thread
 * count, so results are deterministic. */
#include <omp.h>
#include <stdlib.h>

#include "backend/cpu/cpu.h"

#define ATTN_BLOCK 32

/* Rows i0..i0+m of a causal score block S (row stride T) become softmax
 * probabilities over keys 0..i, zero above the diagonal. */
FY_CPU_HOT static void softmax_causal_rows(float *S, int T, int i0, int m) {
    for (int r = 0; r < m; r++) {
        int i = i0 + r;
        float *row = S + (size_t)r * T;
        float mx = fy_cpu_max(row, i + 1);
#pragma omp simd
        for (int j = 0; j <= i; j++) row[j] = fy_cpu_exp(row[j] - mx);
        float inv = 1.0f / fy_cpu_sum(row, i + 1);
#pragma omp simd
        for (int j = 0; j <= i; j++) row[j] *= inv;
        if (i + 1 < T) memset(row + i + 1, 0, (size_t)(T - i - 1) * sizeof *row);
    }
}

/* dS = P * (dP - rowsum(P * dP)) for rows i0..i0+m; dP arrives in dS
 * (row stride n), P has row stride T. */
FY_CPU_HOT static void softmax_bwd_rows(const float *P, int T, float *dS, int n, int i0, int m) {
    for (int r = 0; r < m; r++) {
        int i = i0 + r;
        const float *pr = P + (size_t)r * T;
        float *ds = dS + (size_t)r * n;
        float dot = fy_cpu_dot(pr, ds, i + 1);
#pragma omp simd
        for (int j = 0; j <= i; j++) ds[j] = pr[j] * (ds[j] - dot);
        if (i + 1 < n) memset(ds + i + 1, 0, (size_t)(n - i - 1) * sizeof *ds);
    }
}

void fy_cpu_attn_fwd(fy_backend *be, int B, int T, int H, int dqk, int dv, float scale, fy_ref q,
                     fy_ref k, fy_ref v, fy_ref out, fy_ref P) {
    const char *op = "attn_fwd";
    size_t qs = (size_t)H * dqk, vs = (size_t)H * dv, rows = (size_t)B * T;
    const float *qp = fy_cpu_f(be, q, rows * qs, op, "q");
    const float *kp = fy_cpu_f(be, k, rows * qs, op, "k");
    const float *vp = fy_cpu_f(be, v, rows * vs, op, "v");
    float *op_ = fy_cpu_f(be, out, rows * vs, op, "out");
    float *pp = fy_cpu_f(be, P, (size_t)B * H * T * T, op, "P");
    if (!qp || !kp || !vp || !op_ || !pp || !fy_cpu_blas_open(be, op)) return;
    int BH = B * H;
    int nblk = (T + ATTN_BLOCK - 1) / ATTN_BLOCK;
#pragma omp parallel for schedule(dynamic, 1) if (BH > 1 && (size_t)BH * T * T * (dqk + dv) > 65536)
    for (int bh = 0; bh < BH; bh++) {
        int b = bh / H, h = bh % H;
        const float *Q = qp + (size_t)b * T * qs + (size_t)h * dqk;
        const float *K = kp + (size_t)b * T * qs + (size_t)h * dqk;
        const float *V = vp + (size_t)b * T * vs + (size_t)h * dv;
        float *O = op_ + (size_t)b * T * vs + (size_t)h * dv;
        float *Pb = pp + (size_t)bh * T * T;
        for (int blk = 0; blk < nblk; blk++) {
            int i0 = blk * ATTN_BLOCK, i1 = i0 + ATTN_BLOCK < T ? i0 + ATTN_BLOCK : T;
            int m = i1 - i0, n = i1; /* rows i0..i1 see keys 0..i1 */
            float *S = Pb + (size_t)i0 * T;
            if (dqk > 0)
                fy_cpu_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, dqk, scale,
                            Q + (size_t)i0 * qs, (int)qs, K, (int)qs, 0.0f, S, T);
            else
                for (int r = 0; r < m; r++)
                    for (int j = 0; j < n; j++) S[(size_t)r * T + j] = 0.0f;
            softmax_causal_rows(S, T, i0, m);
            if (dv > 0)
                fy_cpu_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, dv, n, 1.0f, S, T, V,
                            (int)vs, 0.0f, O + (size_t)i0 * vs, (int)vs);
        }
    }
}

/* S = scale Q K^T, P = softmax(S) (causal), O = P V.
 *   dV = P^T dO;  dP = dO V^T;  dS = P * (dP - rowsum(P * dP));
 *   dQ = scale dS K;  dK = scale dS^T Q.
 * Row blocks are visited last to first: the last block covers every key, so
 * it initialises dK, dV (beta = 0) and the others add into them. */
void fy_cpu_attn_bwd(fy_backend *be, int B, int T, int H, int dqk, int dv, float scale, fy_ref q,
                     fy_ref k, fy_ref v, fy_ref P, fy_ref dout, fy_ref dq, fy_ref dk,
                     fy_ref dv_) {
    const char *op = "attn_bwd";
    size_t qs = (size_t)H * dqk, vs = (size_t)H * dv, rows = (size_t)B * T;
    const float *qp = fy_cpu_f(be, q, rows * qs, op, "q");
    const float *kp = fy_cpu_f(be, k, rows * qs, op, "k");
    const float *vp = fy_cpu_f(be, v, rows * vs, op, "v");
    const float *pp = fy_cpu_f(be, P, (size_t)B * H * T * T, op, "P");
    const float *dop = fy_cpu_f(be, dout, rows * vs, op, "dout");
    float *dqp = fy_cpu_f(be, dq, rows * qs, op, "dq");
    float *dkp = fy_cpu_f(be, dk, rows * qs, op, "dk");
    float *dvp = fy_cpu_f(be, dv_, rows * vs, op, "dv");
    if (!qp || !kp || !vp || !pp || !dop || !dqp || !dkp || !dvp || !fy_cpu_blas_open(be, op)) return;
    int BH = B * H;
    int nblk = (T + ATTN_BLOCK - 1) / ATTN_BLOCK;
    int bm = T < ATTN_BLOCK ? T : ATTN_BLOCK;
    int oom = 0;
#pragma omp parallel if (BH > 1 && (size_t)BH * T * T * (dqk + dv) > 65536)
    {
        float *dS = malloc((size_t)bm * T * sizeof *dS);
        if (!dS) {
#pragma omp atomic write
            oom = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int bh = 0; bh < BH; bh++) {
            if (!dS) continue;
            int b = bh / H, h = bh % H;
            size_t qo = (size_t)b * T * qs + (size_t)h * dqk;
            size_t vo = (size_t)b * T * vs + (size_t)h * dv;
            const float *Q = qp + qo, *K = kp + qo, *V = vp + vo, *dO = dop + vo;
            float *dQ = dqp + qo, *dK = dkp + qo, *dV = dvp + vo;
            const float *Pb = pp + (size_t)bh * T * T;
            for (int blk = nblk - 1; blk >= 0; blk--) {
                int i0 = blk * ATTN_BLOCK, i1 = i0 + ATTN_BLOCK < T ? i0 + ATTN_BLOCK : T;
                int m = i1 - i0, n = i1;
                float beta = blk == nblk - 1 ? 0.0f : 1.0f;
                const float *Pr = Pb + (size_t)i0 * T;
                const float *dOr = dO + (size_t)i0 * vs;
                if (dv > 0) {
                    /* dV[0:n] (+)= P[i0:i1, 0:n]^T dO[i0:i1] */
                    fy_cpu_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, dv, m, 1.0f, Pr, T,
                                dOr, (int)vs, beta, dV, (int)vs);
                    /* dP = dO[i0:i1] V[0:n]^T, into dS (ld n) */
                    fy_cpu_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, dv, 1.0f, dOr,
                                (int)vs, V, (int)vs, 0.0f, dS, n);
                } else {
                    for (size_t e = 0; e < (size_t)m * n; e++) dS[e] = 0.0f;
                }
                softmax_bwd_rows(Pr, T, dS, n, i0, m);
                if (dqk > 0) {
                    fy_cpu_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, dqk, n, scale, dS, n,
                                K, (int)qs, 0.0f, dQ + (size_t)i0 * qs, (int)qs);
                    fy_cpu_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, dqk, m, scale, dS, n,
                                Q + (size_t)i0 * qs, (int)qs, beta, dK, (int)qs);
                }
            }
        }
        free(dS);
    }
    if (oom) fy_be_set_error(be, "cpu attn_bwd: out of memory");
}
