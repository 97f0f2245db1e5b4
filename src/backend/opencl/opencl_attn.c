/* Causal self-attention and MLA decode of the OpenCL backend, as batched
 * GEMMs (one per sequence and head, kernels/gemm.cl) around row softmax
 * kernels. The T x T score and dP GEMMs skip the tiles above the diagonal
 * (the softmax kernels never read them and write zeros there), and the
 * GEMMs that read P or dS stop or start their k loop at the diagonal: only
 * exact zeros are skipped, so every element keeps its summation order. */
#include "backend/opencl/opencl.h"

static void rows_kernel(fy_backend *be, int kern, const char *op, size_t rows, int T, cl_mem P,
                        size_t po, cl_mem extra) {
    fy_ocl_impl *im = fy_ocl(be);
    fy_ocl_call c = fy_ocl_begin(be, kern, op);
    fy_ocl_int(&c, T);
    fy_ocl_buf(&c, P, po);
    if (extra) fy_ocl_mem_only(&c, extra);
    size_t g = rows * im->red;
    fy_ocl_run(&c, 1, &g, &im->red);
}

void fy_ocl_attn_fwd(fy_backend *be, int B, int T, int H, int dqk, int dv, float scale, fy_ref q,
                     fy_ref k, fy_ref v, fy_ref out, fy_ref P) {
    const char *op = "attn_fwd";
    size_t qs = (size_t)H * dqk, vs = (size_t)H * dv, rows = (size_t)B * T, TT = (size_t)T * T;
    cl_mem qm = fy_ocl_mem(be, q, rows * qs, op, "q");
    cl_mem km = fy_ocl_mem(be, k, rows * qs, op, "k");
    cl_mem vm = fy_ocl_mem(be, v, rows * vs, op, "v");
    cl_mem om = fy_ocl_mem(be, out, rows * vs, op, "out");
    cl_mem pm = fy_ocl_mem(be, P, (size_t)B * H * TT, op, "P");
    if (!qm || !km || !vm || !om || !pm) return;
    int BH = B * H;
    /* S = scale Q K^T per (b, h): Q_bh starts at b T qs + h dqk, row stride qs */
    fy_ocl_gemm_batched(be, op, 0, 1, T, T, dqk, scale, qm, q.off, (int)qs, T * qs, dqk, km,
                        k.off, (int)qs, T * qs, dqk, 0.0f, pm, P.off, T, H * TT, TT, BH, H,
                        FY_OCL_CAUSAL_C);
    rows_kernel(be, FY_OCL_K_fy_softmax_causal, op, (size_t)BH * T, T, pm, P.off, NULL);
    if (dv > 0)
        fy_ocl_gemm_batched(be, op, 0, 0, T, dv, T, 1.0f, pm, P.off, T, H * TT, TT, vm, v.off,
                            (int)vs, T * vs, dv, 0.0f, om, out.off, (int)vs, T * vs, dv, BH, H,
                            FY_OCL_CAUSAL_A);
}

/* dV = P^T dO;  dP = dO V^T;  dS = P * (dP - rowsum(P * dP));
 * dQ = scale dS K;  dK = scale dS^T Q.  dS lives in scratch [B, H, T, T]. */
void fy_ocl_attn_bwd(fy_backend *be, int B, int T, int H, int dqk, int dv, float scale, fy_ref q,
                     fy_ref k, fy_ref v, fy_ref P, fy_ref dout, fy_ref dq, fy_ref dk,
                     fy_ref dv_) {
    const char *op = "attn_bwd";
    size_t qs = (size_t)H * dqk, vs = (size_t)H * dv, rows = (size_t)B * T, TT = (size_t)T * T;
    cl_mem qm = fy_ocl_mem(be, q, rows * qs, op, "q");
    cl_mem km = fy_ocl_mem(be, k, rows * qs, op, "k");
    cl_mem vm = fy_ocl_mem(be, v, rows * vs, op, "v");
    cl_mem pm = fy_ocl_mem(be, P, (size_t)B * H * TT, op, "P");
    cl_mem dom = fy_ocl_mem(be, dout, rows * vs, op, "dout");
    cl_mem dqm = fy_ocl_mem(be, dq, rows * qs, op, "dq");
    cl_mem dkm = fy_ocl_mem(be, dk, rows * qs, op, "dk");
    cl_mem dvm = fy_ocl_mem(be, dv_, rows * vs, op, "dv");
    if (!qm || !km || !vm || !pm || !dom || !dqm || !dkm || !dvm) return;
    int BH = B * H;
    cl_mem dS = fy_ocl_scratch(be, FY_OCL_SCRATCH_B, (size_t)BH * TT * 4, op);
    if (!dS) return;
    if (dv > 0) {
        /* dV [T, dv] = P^T [T, T] dO [T, dv] */
        fy_ocl_gemm_batched(be, op, 1, 0, T, dv, T, 1.0f, pm, P.off, T, H * TT, TT, dom,
                            dout.off, (int)vs, T * vs, dv, 0.0f, dvm, dv_.off, (int)vs, T * vs, dv,
                            BH, H, FY_OCL_CAUSAL_AT);
    }
    /* dP = dO V^T into dS (K = dv = 0 gives zeros) */
    fy_ocl_gemm_batched(be, op, 0, 1, T, T, dv, 1.0f, dv > 0 ? dom : dS, dv > 0 ? dout.off : 0,
                        dv > 0 ? (int)vs : 1, T * vs, dv, dv > 0 ? vm : dS, dv > 0 ? v.off : 0,
                        dv > 0 ? (int)vs : 1, T * vs, dv, 0.0f, dS, 0, T, H * TT, TT, BH, H,
                        FY_OCL_CAUSAL_C);
    rows_kernel(be, FY_OCL_K_fy_softmax_bwd_causal, op, (size_t)BH * T, T, pm, P.off, dS);
    if (dqk > 0) {
        fy_ocl_gemm_batched(be, op, 0, 0, T, dqk, T, scale, dS, 0, T, H * TT, TT, km, k.off,
                            (int)qs, T * qs, dqk, 0.0f, dqm, dq.off, (int)qs, T * qs, dqk, BH, H,
                            FY_OCL_CAUSAL_A);
        fy_ocl_gemm_batched(be, op, 1, 0, T, dqk, T, scale, dS, 0, T, H * TT, TT, qm, q.off,
                            (int)qs, T * qs, dqk, 0.0f, dkm, dk.off, (int)qs, T * qs, dqk, BH, H,
                            FY_OCL_CAUSAL_AT);
    }
}

/* q_lat = q_nope W_kb (batched over heads) and o_lat in scratch B, the
 * scores [H, S] in scratch A; out = W_vb o_lat (batched). */
void fy_ocl_mla_decode(fy_backend *be, int H, int S, int r, int dn, int dr, int dv, float scale,
                       fy_ref q, int ldq, fy_ref wkv_b, fy_ref ckv, int ld_ckv, fy_ref kpe, int ld_kpe,
                       fy_ref out) {
    const char *op = "mla_decode";
    cl_mem om = fy_ocl_mem(be, out, (size_t)H * dv, op, "out");
    if (!om) return;
    if (!S || !r) { /* softmax over nothing, or a zero-width latent: zeros, as on cpu */
        cl_float zero = 0.0f;
        fy_ocl_failed(be, clEnqueueFillBuffer(fy_ocl(be)->q, om, &zero, sizeof zero, out.off * 4,
                                              (size_t)H * dv * 4, 0, NULL, NULL),
                      op, "clEnqueueFillBuffer");
        return;
    }
    cl_mem qm = fy_ocl_mem(be, q, fy_ocl_span(H, ldq, dn + dr), op, "q");
    cl_mem wm = fy_ocl_mem(be, wkv_b, (size_t)H * (dn + dv) * r, op, "wkv_b");
    cl_mem cm = fy_ocl_mem(be, ckv, fy_ocl_span(S, ld_ckv, r), op, "ckv");
    cl_mem kpm = dr ? fy_ocl_mem(be, kpe, fy_ocl_span(S, ld_kpe, dr), op, "kpe") : NULL;
    if (!qm || !wm || !cm || (dr && !kpm)) return;
    cl_mem lat = fy_ocl_scratch(be, FY_OCL_SCRATCH_B, (size_t)2 * H * r * 4, op);
    cl_mem sc = fy_ocl_scratch(be, FY_OCL_SCRATCH_A, (size_t)H * S * 4, op);
    if (!lat || !sc) return;
    const size_t hw = (size_t)(dn + dv) * r, ol = (size_t)H * r; /* a head's kv_b rows; o_lat's offset */
    /* q_lat[h] (1 x r) = q_nope[h] (1 x dn) @ W_kb[h] (dn x r); dn = 0 leaves zeros */
    fy_ocl_gemm_batched(be, op, 0, 0, 1, r, dn, 1.0f, qm, q.off, ldq > dn ? ldq : dn, ldq, 0, wm,
                        wkv_b.off, r, hw, 0, 0.0f, lat, 0, r, r, 0, H, 1, FY_OCL_DENSE);
    fy_ocl_gemm_batched(be, op, 0, 1, H, S, r, scale, lat, 0, r, 0, 0, cm, ckv.off, ld_ckv, 0, 0,
                        0.0f, sc, 0, S, 0, 0, 1, 1, FY_OCL_DENSE);
    if (dr)
        fy_ocl_gemm_batched(be, op, 0, 1, H, S, dr, scale, qm, q.off + dn, ldq > dr ? ldq : dr, 0, 0,
                            kpm, kpe.off, ld_kpe, 0, 0, 1.0f, sc, 0, S, 0, 0, 1, 1, FY_OCL_DENSE);
    fy_ocl_impl *im = fy_ocl(be);
    fy_ocl_call c = fy_ocl_begin(be, FY_OCL_K_fy_softmax_rows, op);
    fy_ocl_int(&c, S);
    fy_ocl_buf(&c, sc, 0);
    fy_ocl_int(&c, S);
    size_t g = (size_t)H * im->red;
    fy_ocl_run(&c, 1, &g, &im->red);
    fy_ocl_gemm_batched(be, op, 0, 0, H, r, S, 1.0f, sc, 0, S, 0, 0, cm, ckv.off, ld_ckv, 0, 0,
                        0.0f, lat, ol, r, 0, 0, 1, 1, FY_OCL_DENSE);
    /* out[h] (1 x dv) = o_lat[h] (1 x r) @ W_vb[h]^T (r x dv) */
    fy_ocl_gemm_batched(be, op, 0, 1, 1, dv, r, 1.0f, lat, ol, r, r, 0, wm, wkv_b.off + (size_t)dn * r,
                        r, hw, 0, 0.0f, om, out.off, dv, dv, 0, H, 1, FY_OCL_DENSE);
}
