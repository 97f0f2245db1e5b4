#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

int fy_test_pass, fy_test_fail;

double fy_relerr(double a, double b, double floor_) {
    double d = fabs(b) > floor_ ? fabs(b) : floor_;
    return fabs(a - b) / d;
}

const char *fy_test_tmpdir(const char *test_name) {
    static char path[1024];
    const char *base = getenv("FERRY_TEST_TMP");
    if (!base) base = "/tmp";
    mkdir(base, 0755);
    snprintf(path, sizeof path, "%s/%s.%d", base, test_name, (int)getpid());
    mkdir(path, 0755);
    return path;
}

int fy_test_finish(const char *name) {
    printf("%s: %d passed, %d failed\n", name, fy_test_pass, fy_test_fail);
    /* A test that checked nothing proved nothing: a skip returns 77 itself,
     * before it gets here. */
    if (fy_test_pass + fy_test_fail == 0) {
        printf("%s: FAILED: no check ran\n", name);
        return 1;
    }
    return fy_test_fail ? 1 : 0;
}

fy_config fy_test_grad_config(int V) {
    fy_config c;
    fy_err err;
    if (fy_config_builtin("tiny", V, &c, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    c.hidden_size = 24;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 3;
    c.q_lora_rank = 10;
    c.kv_lora_rank = 9;
    c.qk_nope_head_dim = 6;
    c.qk_rope_head_dim = 4;
    c.v_head_dim = 5;
    c.n_routed_experts = 6;
    c.num_experts_per_tok = 2;
    c.n_shared_experts = 1;
    c.moe_intermediate_size = 7;
    c.intermediate_size = 13;
    c.first_k_dense_replace = 1;
    c.num_nextn_predict_layers = 1;
    c.initializer_range = 0.2f;
    return c;
}

void fy_test_linear(fy_backend *be, int fmt, int N, int in, int out, const float *x, int ldx, const uint16_t *w16,
                    const float *wf, float *y, int ldy, int acc) {
    fy_buf bx, bw, by;
    fy_err err;
    const size_t nx = (size_t)(N - 1) * ldx + in, ny = (size_t)(N - 1) * ldy + out;
    const size_t nw = fmt >= 0 ? ((size_t)out * in + 1) / 2 : (size_t)out * in;
    if (fy_be_alloc(be, &bx, nx ? nx : 1, &err) || fy_be_alloc(be, &bw, nw ? nw : 1, &err) ||
        fy_be_alloc(be, &by, ny, &err))
        exit(1);
    if (nx) be->ops->upload(be, fy_at(&bx, 0), x, nx);
    if (nw) be->ops->upload(be, fy_at(&bw, 0), fmt >= 0 ? (const float *)(const void *)w16 : wf, nw);
    be->ops->upload(be, fy_at(&by, 0), y, ny);
    if (fmt >= 0)
        be->ops->linear_h16(be, fmt, N, in, out, fy_at(&bx, 0), ldx, fy_at(&bw, 0), fy_at(&by, 0), ldy, acc);
    else
        be->ops->linear_rows(be, N, in, out, fy_at(&bx, 0), ldx, fy_at(&bw, 0), in, fy_at(&by, 0), ldy, acc);
    be->ops->download(be, y, fy_at(&by, 0), ny);
    CHECK(fy_be_sync(be, &err) == 0, "%s: %s", fmt >= 0 ? "linear_h16" : "linear_rows", err.msg);
    fy_be_free(be, &bx), fy_be_free(be, &bw), fy_be_free(be, &by);
}
