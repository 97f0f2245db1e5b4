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
