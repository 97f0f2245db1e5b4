/* Row kernels: one work-group of FY_RED items per row (global = rows *
 * FY_RED), items striding over the row, sums reduced in a fixed tree. */

/* y = x w r, r = 1/sqrt(mean(x^2) + eps); y may alias x. */
kernel void fy_rmsnorm_fwd(int D, global const float *x, ulong xo, int ldx,
                           global const float *w, ulong wo, float eps, global float *y, ulong yo,
                           int ldy, global float *rstd, ulong ro) {
    local acc_t sh[FY_RED];
    int n = get_group_id(0), l = get_local_id(0);
    global const float *xr = x + xo + (ulong)n * ldx;
    global float *yr = y + yo + (ulong)n * ldy;
    acc_t ss = 0;
    for (int j = l; j < D; j += FY_RED) ss += (acc_t)xr[j] * (acc_t)xr[j];
    ss = wg_sum_acc(sh, ss);
    float r = (float)((acc_t)1 / sqrt(ss / (acc_t)D + (acc_t)eps));
    for (int j = l; j < D; j += FY_RED) yr[j] = (xr[j] * r) * w[wo + j];
    if (l == 0) rstd[ro + n] = r;
}

/* dx_j (=|+=) r w_j dy_j - x_j r^3 / D * sum_k dy_k w_k x_k. */
kernel void fy_rmsnorm_bwd_dx(int D, global const float *x, ulong xo, int ldx,
                              global const float *w, ulong wo, global const float *rstd, ulong ro,
                              global const float *dy, ulong dyo, int lddy, global float *dx,
                              ulong dxo, int lddx, int accumulate) {
    local acc_t sh[FY_RED];
    int n = get_group_id(0), l = get_local_id(0);
    global const float *xr = x + xo + (ulong)n * ldx;
    global const float *dyr = dy + dyo + (ulong)n * lddy;
    global float *dxr = dx + dxo + (ulong)n * lddx;
    w += wo;
    float r = rstd[ro + n];
    acc_t s = 0;
    for (int j = l; j < D; j += FY_RED) s += (acc_t)(dyr[j] * w[j]) * (acc_t)xr[j];
    s = wg_sum_acc(sh, s);
    float invD = 1.0f / (float)D;
    float coef = (float)s * r * r * r * invD;
    for (int j = l; j < D; j += FY_RED) {
        float v = r * w[j] * dyr[j] - xr[j] * coef;
        if (accumulate) dxr[j] += v;
        else dxr[j] = v;
    }
}

/* dw partials per chunk of `chunk` rows, rows added in order in float, as
 * the cpu backend's chunks: part[c * D + j]; global (D, nchunk). */
kernel void fy_rmsnorm_dw_part(int N, int D, int chunk, global const float *x, ulong xo, int ldx,
                               global const float *rstd, ulong ro, global const float *dy,
                               ulong dyo, int lddy, global float *part) {
    int j = get_global_id(0), c = get_global_id(1);
    if (j >= D) return;
    int n0 = c * chunk, n1 = n0 + chunk < N ? n0 + chunk : N;
    float p = 0.0f;
    for (int n = n0; n < n1; n++)
        p += dy[dyo + (ulong)n * lddy + j] * x[xo + (ulong)n * ldx + j] * rstd[ro + n];
    part[(ulong)c * D + j] = p;
}

/* dw_j += sum of the chunk partials in chunk order (acc_t). */
kernel void fy_rmsnorm_dw_sum(int D, int nchunk, global const float *part, global float *dw,
                              ulong dwo) {
    int j = get_global_id(0);
    if (j >= D) return;
    acc_t a = 0;
    for (int c = 0; c < nchunk; c++) a += (acc_t)part[(ulong)c * D + j];
    dw[dwo + j] += (float)a;
}

/* Causal softmax in place over rows of P [rows, T] holding scores: row
 * index r = bh * T + i sees keys 0..i; entries above the diagonal become 0. */
kernel void fy_softmax_causal(int T, global float *P, ulong po) {
    local float sh[FY_RED];
    ulong r = get_group_id(0);
    int i = (int)(r % (ulong)T), l = get_local_id(0);
    global float *row = P + po + r * T;
    float mx = -INFINITY;
    for (int j = l; j <= i; j += FY_RED) mx = row[j] > mx ? row[j] : mx;
    mx = wg_max_f(sh, mx);
    float s = 0.0f;
    for (int j = l; j <= i; j += FY_RED) {
        float e = fy_exp(row[j] - mx);
        row[j] = e;
        s += e;
    }
    s = wg_sum_f(sh, s);
    float inv = 1.0f / s;
    for (int j = l; j < T; j += FY_RED) row[j] = j <= i ? row[j] * inv : 0.0f;
}

/* Softmax in place over rows of width n, row stride ld. */
kernel void fy_softmax_rows(int n, global float *x, ulong xo, int ld) {
    local float sh[FY_RED];
    int l = get_local_id(0);
    global float *row = x + xo + (ulong)get_group_id(0) * ld;
    float mx = -INFINITY;
    for (int j = l; j < n; j += FY_RED) mx = row[j] > mx ? row[j] : mx;
    mx = wg_max_f(sh, mx);
    float s = 0.0f;
    for (int j = l; j < n; j += FY_RED) {
        float e = fy_exp(row[j] - mx);
        row[j] = e;
        s += e;
    }
    s = wg_sum_f(sh, s);
    float inv = 1.0f / s;
    for (int j = l; j < n; j += FY_RED) row[j] *= inv;
}

/* dS = P * (dP - rowsum(P * dP)) in place of dP, causal rows as above. */
kernel void fy_softmax_bwd_causal(int T, global const float *P, ulong po, global float *dS) {
    local float sh[FY_RED];
    ulong r = get_group_id(0);
    int i = (int)(r % (ulong)T), l = get_local_id(0);
    global const float *pr = P + po + r * T;
    global float *ds = dS + r * T;
    float dot = 0.0f;
    for (int j = l; j <= i; j += FY_RED) dot += pr[j] * ds[j];
    dot = wg_sum_f(sh, dot);
    for (int j = l; j < T; j += FY_RED) ds[j] = j <= i ? pr[j] * (ds[j] - dot) : 0.0f;
}

/* Softmax cross-entropy of one row per work-group. per[n] is the row's
 * loss in acc_t for the host's ordered total. dlogits may alias logits:
 * each item reads element j only before writing it, and x[target] is read
 * by every item before the first barrier. No early return: every item
 * reaches every barrier (PoCL miscompiles kernels that return before one). */
kernel void fy_xent(int V, global const float *x, ulong xo, global const int *tg, ulong to,
                    int ignore_index, float grad_scale, global float *losses, ulong lo,
                    global float *d, ulong dof, global acc_t *per, global int *errf) {
    local acc_t sha[FY_RED];
    local float shf[FY_RED];
    int n = get_group_id(0), l = get_local_id(0);
    global const float *xr = x + xo + (ulong)n * V;
    global float *dr = d + dof + (ulong)n * V;
    int t = tg[to + n];
    int live = t != ignore_index && t >= 0 && t < V;
    float xt = live ? xr[t] : 0.0f;
    float mx = -INFINITY;
    if (live)
        for (int j = l; j < V; j += FY_RED) mx = xr[j] > mx ? xr[j] : mx;
    mx = wg_max_f(shf, mx);
    acc_t z = 0;
    for (int j = l; j < V; j += FY_RED) {
        float e = live ? fy_exp(xr[j] - mx) : 0.0f;
        dr[j] = e;
        z += (acc_t)e;
    }
    z = wg_sum_acc(sha, z);
    float c = live ? (float)((acc_t)grad_scale / z) : 0.0f;
    for (int j = l; j < V; j += FY_RED) dr[j] *= c;
    barrier(CLK_GLOBAL_MEM_FENCE);
    if (l == 0) {
        acc_t loss = 0;
        if (live) {
            dr[t] -= grad_scale;
            loss = log(z) + (acc_t)mx - (acc_t)xt;
        } else if (t != ignore_index) {
            fy_flag(errf, FY_OCL_E_XENT_TARGET, n, t, V);
        }
        losses[lo + n] = (float)loss;
        per[n] = loss;
    }
}

/* out[i] (=|+=) dot(a[ia[i], :], b[i, :]), products and sum in acc_t. */
kernel void fy_rows_dot(int D, int na, global const float *a, ulong ao, int lda,
                        global const int *ia, ulong iao, global const float *b, ulong bo, int ldb,
                        global float *out, ulong oo, int accumulate, global int *errf) {
    local acc_t sh[FY_RED];
    int i = get_group_id(0), l = get_local_id(0);
    int r = ia[iao + i];
    int ok = r >= 0 && r < na;
    acc_t s = 0;
    if (ok) {
        global const float *x = a + ao + (ulong)r * lda, *y = b + bo + (ulong)i * ldb;
        for (int j = l; j < D; j += FY_RED) s += (acc_t)x[j] * (acc_t)y[j];
    }
    s = wg_sum_acc(sh, s);
    if (l == 0) {
        if (!ok) fy_flag(errf, FY_OCL_E_ROWSDOT_IDX, i, r, na);
        else if (accumulate) out[oo + i] += (float)s;
        else out[oo + i] = (float)s;
    }
}
