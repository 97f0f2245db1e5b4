/* Asynchronous checkpoints write exactly what a synchronous save writes, from
 * the snapshot taken at the call, even while the model keeps changing; a
 * writer whose buffers were reserved (fy_ckpt_async_reserve) writes the same
 * files from those buffers. */
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "ckpt/async.h"
#include "core/fsutil.h"
#include "testutil.h"

static int same_file(const char *a, const char *b) {
    char *x, *y;
    size_t nx, ny;
    fy_err err;
    if (fy_read_file(a, &x, &nx, &err) || fy_read_file(b, &y, &ny, &err)) return 0;
    int same = nx == ny && !memcmp(x, y, nx);
    free(x);
    free(y);
    return same;
}

int main(void) {
    fy_err err;
    fy_config c;
    fy_backend *be;
    fy_model m;
    fy_adamw opt;
    fy_adamw_opts ao = {1e-3f, 1e-4f, 1, 10, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f};
    if (fy_config_builtin("tiny", 64, &c, &err)) return 1;
    c.hidden_size = 32; c.num_hidden_layers = 2; c.q_lora_rank = 16; c.kv_lora_rank = 16;
    c.qk_nope_head_dim = 8; c.qk_rope_head_dim = 8; c.v_head_dim = 8; c.moe_intermediate_size = 16;
    c.intermediate_size = 48;
    if (fy_backend_cpu_create(&be, &err) || fy_model_create(&m, &c, be, &err) ||
        fy_model_init_weights(&m, 5, &err) || fy_adamw_create(&opt, &m, &ao, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    opt.t = 7;
    const char *tmp = fy_test_tmpdir("test_ckpt_async");
    char sync_dir[1024], async_dir[1024], reserved_dir[1024], a[1200], b[1200];
    snprintf(sync_dir, sizeof sync_dir, "%s/sync", tmp);
    snprintf(async_dir, sizeof async_dir, "%s/async", tmp);
    snprintf(reserved_dir, sizeof reserved_dir, "%s/reserved", tmp);
    CHECK(fy_ckpt_save(sync_dir, 7, &m, &opt, "{\"step\": 7}", 2, NULL, 0, &err) == 0, "sync save: %s", err.msg);

    fy_ckpt_async w;
    fy_ckpt_async_init(&w);
    double stall = -1;
    CHECK(fy_ckpt_async_save(&w, async_dir, 7, &m, &opt, "{\"step\": 7}", NULL, 2, &stall, &err) == 0,
          "async save: %s", err.msg);
    CHECK(stall >= 0, "stall not reported");
    /* The save below takes over from the reserve thread (it may still run). */
    fy_ckpt_async r;
    fy_ckpt_async_init(&r);
    fy_ckpt_async_reserve(&r, &m.tab);
    CHECK(fy_ckpt_async_save(&r, reserved_dir, 7, &m, &opt, "{\"step\": 7}", NULL, 2, NULL, &err) == 0,
          "save after reserve: %s", err.msg);
    fy_ckpt_async_reserve(&r, &m.tab); /* waits for that write, then reserves afresh */
    CHECK(fy_ckpt_async_wait(&r, &err) == 0 && r.snap.params && r.snap.buffers && r.snap.m && r.snap.v,
          "reserve left no buffers: %s", err.msg);
    const float *kept = r.snap.params;
    CHECK(fy_ckpt_async_save(&r, reserved_dir, 7, &m, &opt, "{\"step\": 7}", NULL, 2, NULL, &err) == 0 &&
              fy_ckpt_async_wait(&r, &err) == 0,
          "save into reserved buffers: %s", err.msg);
    CHECK(r.snap.params == kept, "the save did not copy into the reserved buffers");
    /* Training goes on: the parameters change while the write is in flight. */
    be->ops->fill(be, fy_at(&m.params, 0), 123.0f, m.tab.n_params);
    CHECK(fy_ckpt_async_wait(&w, &err) == 0, "async write: %s", err.msg);
    double write_s = w.write_s;
    for (int i = 0; i < 3; i++) {
        const char *f[] = {"model.safetensors", "optimizer.safetensors", "trainer_state.json"};
        snprintf(a, sizeof a, "%s/checkpoints/step-00000007/%s", sync_dir, f[i]);
        snprintf(b, sizeof b, "%s/checkpoints/step-00000007/%s", async_dir, f[i]);
        CHECK(same_file(a, b), "%s differs between sync and async saves", f[i]);
        snprintf(b, sizeof b, "%s/checkpoints/step-00000007/%s", reserved_dir, f[i]);
        CHECK(same_file(a, b), "%s differs between a sync save and one into reserved buffers", f[i]);
    }
    fy_ckpt_async_free(&r);
    snprintf(b, sizeof b, "%s/checkpoints/step-00000007", async_dir);
    CHECK(fy_ckpt_verify(b, &err) == 0, "async checkpoint does not verify: %s", err.msg);
    /* A failed write is reported by the next wait. */
    CHECK(fy_ckpt_async_save(&w, "/proc/ferry-no-such-dir/x", 8, &m, &opt, "{}", NULL, 2, NULL, &err) == 0 &&
              fy_ckpt_async_wait(&w, &err) != 0,
          "a failing background write was not reported");
    printf("async checkpoint: stall %.4f s, write %.4f s\n", stall, write_s);
    fy_ckpt_async_free(&w);
    fy_adamw_free(&opt, be);
    fy_model_free(&m);
    fy_backend_destroy(be);
    return fy_test_finish("test_ckpt_async");
}
