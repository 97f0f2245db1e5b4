/* Elementwise and BLAS-1 kernels, strided copies, AdamW. Every buffer
 * argument is followed by its element offset (fy_ref.off). */

kernel void fy_axpy(ulong n, float alpha, global const float *x, ulong xo, global float *y,
                    ulong yo) {
    ulong i = get_global_id(0);
    if (i < n) y[yo + i] += alpha * x[xo + i];
}

kernel void fy_scale(ulong n, float alpha, global float *x, ulong xo) {
    ulong i = get_global_id(0);
    if (i < n) x[xo + i] *= alpha;
}

/* One work-group per chunk of FY_SUMSQ_CHUNK elements; part[g] is the
 * chunk's sum of squares (in acc_t); the host adds the parts in order. */
#define FY_SUMSQ_CHUNK (FY_RED * 64)
kernel void fy_sumsq_part(ulong n, global const float *x, ulong xo, global acc_t *part) {
    local acc_t sh[FY_RED];
    ulong g = get_group_id(0);
    ulong i0 = g * FY_SUMSQ_CHUNK, i1 = i0 + FY_SUMSQ_CHUNK < n ? i0 + FY_SUMSQ_CHUNK : n;
    acc_t s = 0;
    for (ulong i = i0 + get_local_id(0); i < i1; i += FY_RED) {
        acc_t v = (acc_t)x[xo + i];
        s += v * v;
    }
    s = wg_sum_acc(sh, s);
    if (get_local_id(0) == 0) part[g] = s;
}

/* copy3d where destination rows coincide (a zero stride) or are disjoint:
 * one item per distinct destination element, walking the source rows that
 * land on it in (i, j) order, as the cpu backend does. all_i / all_j: the
 * destination stride is 0 along that axis (the item walks all of it). */
kernel void fy_copy3d(int n0, int n1, int n2, global float *d, ulong dofs, ulong ds0, ulong ds1,
                      global const float *s, ulong sofs, ulong ss0, ulong ss1, int accumulate,
                      int all_i, int all_j) {
    int k = get_global_id(0), jr = get_global_id(1), ir = get_global_id(2);
    if (k >= n2) return;
    int i0 = all_i ? 0 : ir, i1 = all_i ? n0 : ir + 1;
    int j0 = all_j ? 0 : jr, j1 = all_j ? n1 : jr + 1;
    for (int i = i0; i < i1; i++)
        for (int j = j0; j < j1; j++) {
            global float *dp = d + dofs + (ulong)i * ds0 + (ulong)j * ds1 + k;
            float v = s[sofs + (ulong)i * ss0 + (ulong)j * ss1 + k];
            if (accumulate) *dp += v;
            else *dp = v;
        }
}

/* Any other stride pattern (destination rows partly overlapping): one item
 * does everything in the cpu backend's order. Rare; correctness only. */
kernel void fy_copy3d_serial(int n0, int n1, int n2, global float *d, ulong dofs, ulong ds0,
                             ulong ds1, global const float *s, ulong sofs, ulong ss0, ulong ss1,
                             int accumulate) {
    for (int i = 0; i < n0; i++)
        for (int j = 0; j < n1; j++)
            for (int k = 0; k < n2; k++) {
                global float *dp = d + dofs + (ulong)i * ds0 + (ulong)j * ds1 + k;
                float v = s[sofs + (ulong)i * ss0 + (ulong)j * ss1 + k];
                if (accumulate) *dp += v;
                else *dp = v;
            }
}

/* AdamW, the same float operations in the same order as the cpu backend's
 * scalar loop (bitwise equal with correctly rounded divide and sqrt). */
kernel void fy_adamw(ulong n, global float *p, ulong po, global const float *g, ulong go,
                     global float *m, ulong mo, global float *v, ulong vo, float lr, float b1,
                     float b2, float eps, float wd, float bc1, float bc2, float grad_scale) {
    ulong i = get_global_id(0);
    if (i >= n) return;
    float ib1 = 1.0f - b1, ib2 = 1.0f - b2;
    float gi = g[go + i] * grad_scale;
    float mi = b1 * m[mo + i] + ib1 * gi;
    float vi = b2 * v[vo + i] + ib2 * gi * gi;
    m[mo + i] = mi;
    v[vo + i] = vi;
    float pi = p[po + i];
    p[po + i] = pi - lr * ((mi / bc1) / (sqrt(vi / bc2) + eps) + wd * pi);
}

/* h = silu(g) * u; global (F, N). */
kernel void fy_swiglu_fwd(int N, int F, global const float *g, ulong go, int ldg,
                          global const float *u, ulong uo, int ldu, global float *h, ulong ho,
                          int ldh) {
    int j = get_global_id(0), n = get_global_id(1);
    if (j >= F || n >= N) return;
    float gv = g[go + (ulong)n * ldg + j];
    h[ho + (ulong)n * ldh + j] = gv * fy_sigmoid(gv) * u[uo + (ulong)n * ldu + j];
}

/* dg = dh u sig (1 + g (1 - sig)), du = dh g sig; dg, du may alias g, u. */
kernel void fy_swiglu_bwd(int N, int F, global const float *g, ulong go, int ldg,
                          global const float *u, ulong uo, int ldu, global const float *dh,
                          ulong dho, int lddh, global float *dg, ulong dgo, global float *du,
                          ulong duo) {
    int j = get_global_id(0), n = get_global_id(1);
    if (j >= F || n >= N) return;
    float gv = g[go + (ulong)n * ldg + j], uv = u[uo + (ulong)n * ldu + j];
    float d = dh[dho + (ulong)n * lddh + j];
    float sg = fy_sigmoid(gv);
    float a = d * uv * sg * (1.0f + gv * (1.0f - sg));
    float b = d * gv * sg;
    dg[dgo + (ulong)n * ldg + j] = a;
    du[duo + (ulong)n * ldu + j] = b;
}

/* RoPE with the host's cos/sin table (computed in double as on cpu):
 * tab[(t * nhalf + j) * 2 + {0: cos, 1: sin}]; global (nhalf, n_heads, N). */
kernel void fy_rope(int N, int T, int n_heads, int d_r, global float *x, ulong xo, int ld,
                    int head_stride, global const float *tab, float sgn) {
    int nhalf = d_r / 2;
    int j = get_global_id(0), h = get_global_id(1), n = get_global_id(2);
    if (j >= nhalf || h >= n_heads || n >= N) return;
    global const float *cs = tab + ((ulong)(n % T) * nhalf + j) * 2;
    float c = cs[0], s = sgn * cs[1];
    global float *v = x + xo + (ulong)n * ld + (ulong)h * head_stride;
    float a = v[2 * j], b = v[2 * j + 1];
    v[2 * j] = a * c - b * s;
    v[2 * j + 1] = a * s + b * c;
}

/* ---- dropout: the counter-based mask of backend.h's dropout op ---- */

/* SplitMix64's finaliser (core/rng.h fy_rng_mix), bit for bit. */
inline ulong fy_splitmix64(ulong x) {
    x += 0x9E3779B97F4A7C15UL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9UL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBUL;
    return x ^ (x >> 31);
}

/* dst (=|+=) src * (u < p ? 0 : scale), u = fy_rng_uniform(seed, stream,
 * key * D + j) with rkey = fy_rng_key(seed, stream) from the host;
 * key = key0 + (has_keys ? keys[i] : i). key0 travels as its two's
 * complement bits (ulong), as the host adds it. */
kernel void fy_dropout(int n, int D, float p, float scale, ulong rkey, ulong key0,
                       global const int *keys, ulong ko, int has_keys, global const float *src, ulong so, int lds,
                       global float *dst, ulong dso, int ldd, int acc) {
    int j = get_global_id(0), i = get_global_id(1);
    if (j >= D || i >= n) return;
    ulong k = key0 + (ulong)(long)(has_keys ? keys[ko + i] : i);
    float u = (float)(fy_splitmix64(rkey ^ (k * (ulong)D + (ulong)j)) >> 40) * (1.0f / 16777216.0f);
    float f = u < p ? 0.0f : scale;
    float v = src[so + (ulong)i * lds + j] * f;
    global float *d = dst + dso + (ulong)i * ldd + j;
    *d = acc ? *d + v : v;
}
