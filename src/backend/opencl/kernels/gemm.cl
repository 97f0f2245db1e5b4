/* GEMM, row-major, C = alpha op(A) op(B) + beta C, batched.
 *
 * Tiled: a 16x16 work-group computes a 64x64 tile of C, each item a 4x4
 * block (rows ty + 16 i, columns tx + 16 j, so neighbouring items touch
 * neighbouring columns). K advances 16 at a time through local memory; the
 * loads map consecutive items to the stored matrix's contiguous dimension
 * whatever the transpose. Edges (M, N, K not multiples of the tile) load
 * zeros and skip the stores. Every C element is summed over k in ascending
 * order by one item: deterministic. beta == 0 never reads C (it may hold
 * NaN), as BLAS.
 *
 * Batch z = get_group_id(2) of `batch` matrices is split as
 * (z / inner, z % inner) with two strides per operand: attention runs one
 * GEMM per (sequence, head) this way.
 *
 * `causal` lets attention skip work on its T x T lower-triangular matrices:
 *   FY_CAUSAL_C   only C[m][n] with n <= m is wanted (tiles wholly above the
 *                 diagonal are neither computed nor stored);
 *   FY_CAUSAL_A   op(A)[m][k] = 0 for k > m (k stops after the tile's last row);
 *   FY_CAUSAL_AT  op(A)[m][k] = 0 for k < m (k starts at the tile's first row).
 * Only exact zero products are skipped, and k still ascends: the results are
 * bitwise those of the full product. */
#define FY_CAUSAL_C 1
#define FY_CAUSAL_A 2
#define FY_CAUSAL_AT 3
#define GT_M 64
#define GT_N 64
#define GT_K 16

#define FY_GEMM_KERNEL(NAME, TA, TB)                                                          \
    kernel __attribute__((reqd_work_group_size(16, 16, 1))) void NAME(                        \
        int M, int N, int K, float alpha, global const float *A, ulong ao, int lda, ulong sa1, \
        ulong sa2, global const float *B, ulong bo, int ldb, ulong sb1, ulong sb2,            \
        float beta, global float *C, ulong co, int ldc, ulong sc1, ulong sc2, int inner,       \
        int causal) {                                                                         \
        local float As[GT_K][GT_M + 1];                                                      \
        local float Bs[GT_K][GT_N + 1];                                                      \
        int tx = get_local_id(0), ty = get_local_id(1), tid = ty * 16 + tx;                   \
        ulong z = get_group_id(2), zo = z / inner, zi = z % inner;                             \
        A += ao + zo * sa1 + zi * sa2;                                                        \
        B += bo + zo * sb1 + zi * sb2;                                                        \
        C += co + zo * sc1 + zi * sc2;                                                        \
        int m0 = get_group_id(1) * GT_M, n0 = get_group_id(0) * GT_N;                         \
        int mlast = (m0 + GT_M < M ? m0 + GT_M : M) - 1;                                      \
        int skip = causal == FY_CAUSAL_C && n0 > mlast;                                       \
        int kbeg = causal == FY_CAUSAL_AT ? m0 : 0;                                           \
        int kend = skip ? 0 : causal == FY_CAUSAL_A && mlast + 1 < K ? mlast + 1 : K;          \
        float acc[4][4];                                                                      \
        for (int i = 0; i < 4; i++)                                                           \
            for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;                                     \
        for (int k0 = kbeg; k0 < kend; k0 += GT_K) {                                          \
            for (int e = tid; e < GT_M * GT_K; e += 256) {                                    \
                int mm = TA ? e % GT_M : e / GT_K, kk = TA ? e / GT_M : e % GT_K;             \
                int gm = m0 + mm, gk = k0 + kk;                                               \
                float v = 0.0f;                                                               \
                if (gm < M && gk < K)                                                         \
                    v = TA ? A[(ulong)gk * lda + gm] : A[(ulong)gm * lda + gk];               \
                As[kk][mm] = v;                                                               \
            }                                                                                 \
            for (int e = tid; e < GT_N * GT_K; e += 256) {                                    \
                int nn = TB ? e / GT_K : e % GT_N, kk = TB ? e % GT_K : e / GT_N;             \
                int gn = n0 + nn, gk = k0 + kk;                                               \
                float v = 0.0f;                                                               \
                if (gn < N && gk < K)                                                         \
                    v = TB ? B[(ulong)gn * ldb + gk] : B[(ulong)gk * ldb + gn];               \
                Bs[kk][nn] = v;                                                               \
            }                                                                                 \
            barrier(CLK_LOCAL_MEM_FENCE);                                                     \
            for (int kk = 0; kk < GT_K; kk++) {                                               \
                float a[4], b[4];                                                             \
                for (int i = 0; i < 4; i++) a[i] = As[kk][ty + 16 * i];                       \
                for (int j = 0; j < 4; j++) b[j] = Bs[kk][tx + 16 * j];                       \
                for (int i = 0; i < 4; i++)                                                   \
                    for (int j = 0; j < 4; j++) acc[i][j] = mad(a[i], b[j], acc[i][j]);       \
            }                                                                                 \
            barrier(CLK_LOCAL_MEM_FENCE);                                                     \
        }                                                                                     \
        for (int i = 0; i < 4; i++) {                                                         \
            int m = m0 + ty + 16 * i;                                                         \
            if (m >= M || skip) continue;                                                     \
            for (int j = 0; j < 4; j++) {                                                     \
                int n = n0 + tx + 16 * j;                                                     \
                if (n >= N) continue;                                                         \
                global float *c = C + (ulong)m * ldc + n;                                     \
                *c = beta == 0.0f ? alpha * acc[i][j] : alpha * acc[i][j] + beta * *c;        \
            }                                                                                 \
        }                                                                                     \
    }

FY_GEMM_KERNEL(fy_gemm_nn, 0, 0)
FY_GEMM_KERNEL(fy_gemm_nt, 0, 1)
FY_GEMM_KERNEL(fy_gemm_tn, 1, 0)
FY_GEMM_KERNEL(fy_gemm_tt, 1, 1)

/* Few rows (decode: M = 1): one item per C element, k ascending. A tile of
 * 64 rows would leave most of the work-group idle. global (N, M). */
kernel void fy_gemm_small(int ta, int tb, int M, int N, int K, float alpha,
                          global const float *A, ulong ao, int lda, global const float *B,
                          ulong bo, int ldb, float beta, global float *C, ulong co, int ldc) {
    int n = get_global_id(0), m = get_global_id(1);
    if (n >= N || m >= M) return;
    A += ao;
    B += bo;
    float acc = 0.0f;
    for (int k = 0; k < K; k++) {
        float a = ta ? A[(ulong)k * lda + m] : A[(ulong)m * lda + k];
        float b = tb ? B[(ulong)n * ldb + k] : B[(ulong)k * ldb + n];
        acc = mad(a, b, acc);
    }
    global float *c = C + co + (ulong)m * ldc + n;
    *c = beta == 0.0f ? alpha * acc : alpha * acc + beta * *c;
}

/* CPU devices (PoCL): no local memory and no barriers, which PoCL's
 * work-group loops handle poorly; the caches do the blocking. Each item
 * computes 4 consecutive rows x 4 columns n0 + 16 j, so the 16 items of a
 * group along dimension 0 touch 16 consecutive columns and PoCL vectorizes
 * across them. Out-of-range rows and columns are clamped for the loads and
 * skipped for the stores. Same arguments (batch, causal) and the same
 * operations per element (k ascending, mad) as the tiled kernel: on PoCL
 * both families give bitwise the same results (checked on a whole oracle
 * case).
 * global (16 * ceil(N/64), ceil(M/4), batch), local (16, 1, 1).
 * Measured on PoCL (2 cores, 2048x256x768): ~2x the tiled kernel. */
#define FY_GEMM_REG_KERNEL(NAME, TA, TB)                                                      \
    kernel void NAME(int M, int N, int K, float alpha, global const float *A, ulong ao,       \
                     int lda, ulong sa1, ulong sa2, global const float *B, ulong bo, int ldb, \
                     ulong sb1, ulong sb2, float beta, global float *C, ulong co, int ldc,    \
                     ulong sc1, ulong sc2, int inner, int causal) {                           \
        int gx = get_global_id(0), m0 = get_global_id(1) * 4;                                 \
        int n0 = (gx / 16) * 64 + gx % 16;                                                    \
        int mlast = (m0 + 4 < M ? m0 + 4 : M) - 1;                                            \
        if (causal == FY_CAUSAL_C && n0 > mlast) return; /* no barriers here */               \
        int kbeg = causal == FY_CAUSAL_AT ? m0 : 0;                                           \
        int kend = causal == FY_CAUSAL_A && mlast + 1 < K ? mlast + 1 : K;                    \
        ulong z = get_global_id(2), zo = z / inner, zi = z % inner;                            \
        A += ao + zo * sa1 + zi * sa2;                                                        \
        B += bo + zo * sb1 + zi * sb2;                                                        \
        C += co + zo * sc1 + zi * sc2;                                                        \
        float acc[4][4];                                                                      \
        for (int i = 0; i < 4; i++)                                                           \
            for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;                                     \
        int mi[4], nj[4];                                                                     \
        for (int i = 0; i < 4; i++) mi[i] = m0 + i < M ? m0 + i : M - 1;                      \
        for (int j = 0; j < 4; j++) nj[j] = n0 + 16 * j < N ? n0 + 16 * j : N - 1;            \
        for (int k = kbeg; k < kend; k++) {                                                   \
            float a[4], b[4];                                                                 \
            for (int i = 0; i < 4; i++)                                                       \
                a[i] = TA ? A[(ulong)k * lda + mi[i]] : A[(ulong)mi[i] * lda + k];            \
            for (int j = 0; j < 4; j++)                                                       \
                b[j] = TB ? B[(ulong)nj[j] * ldb + k] : B[(ulong)k * ldb + nj[j]];            \
            for (int i = 0; i < 4; i++)                                                       \
                for (int j = 0; j < 4; j++) acc[i][j] = mad(a[i], b[j], acc[i][j]);           \
        }                                                                                     \
        for (int i = 0; i < 4; i++) {                                                         \
            if (m0 + i >= M) continue;                                                        \
            for (int j = 0; j < 4; j++) {                                                     \
                int n = n0 + 16 * j;                                                          \
                if (n >= N) continue;                                                         \
                global float *c = C + (ulong)(m0 + i) * ldc + n;                              \
                *c = beta == 0.0f ? alpha * acc[i][j] : alpha * acc[i][j] + beta * *c;        \
            }                                                                                 \
        }                                                                                     \
    }

FY_GEMM_REG_KERNEL(fy_gemm_reg_nn, 0, 0)
FY_GEMM_REG_KERNEL(fy_gemm_reg_nt, 0, 1)
FY_GEMM_REG_KERNEL(fy_gemm_reg_tn, 1, 0)
FY_GEMM_REG_KERNEL(fy_gemm_reg_tt, 1, 1)
