/* Hostile input at the C level (docs/RELIABILITY.md, "Hostile input"):
 * fy_read_file refuses what is not a regular file without blocking (a FIFO
 * with or without a writer, a device, a directory, a symlink loop) and
 * honours its size cap; config validation refuses sizes whose products
 * overflow or make an absurd model, and still takes DeepSeek-V3's, whose
 * parameter table it lays out without overflow. An alarm turns a hang
 * into a failure. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "model/config.h"
#include "model/params.h"
#include "testutil.h"

static void on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "FAIL: a read blocked (alarm after 10 s)\n";
    if (write(2, msg, sizeof msg - 1) < 0) _exit(2);
    _exit(1);
}

/* fy_read_file(path) fails with a message holding `want`. */
static void refused(const char *path, const char *want) {
    char *buf = (char *)1;
    size_t len = 7;
    fy_err err = {{0}};
    int rc = fy_read_file(path, &buf, &len, &err);
    CHECK(rc == -1 && buf == NULL && len == 0, "%s: read, not refused", path);
    CHECK(strstr(err.msg, want) != NULL && strstr(err.msg, path) != NULL, "%s: message '%s' lacks '%s'", path,
          err.msg, want);
}

static void test_special_files(const char *dir) {
    char fifo[FY_PATH_MAX], sub[FY_PATH_MAX], loop_a[FY_PATH_MAX], loop_b[FY_PATH_MAX], file[FY_PATH_MAX],
        link[FY_PATH_MAX];
    fy_err err = {{0}};
    snprintf(fifo, sizeof fifo, "%s/fifo", dir);
    snprintf(sub, sizeof sub, "%s/adir", dir);
    snprintf(loop_a, sizeof loop_a, "%s/loop_a", dir);
    snprintf(loop_b, sizeof loop_b, "%s/loop_b", dir);
    snprintf(file, sizeof file, "%s/file.txt", dir);
    snprintf(link, sizeof link, "%s/link.txt", dir);
    unlink(fifo), rmdir(sub), unlink(loop_a), unlink(loop_b), unlink(link);
    CHECK(mkfifo(fifo, 0600) == 0, "mkfifo: %s", strerror(errno));
    CHECK(mkdir(sub, 0755) == 0, "mkdir: %s", strerror(errno));
    CHECK(symlink("loop_b", loop_a) == 0 && symlink("loop_a", loop_b) == 0, "symlink: %s", strerror(errno));

    refused(fifo, "FIFO");                 /* no writer: open would wait for one */
    int w = open(fifo, O_RDWR | O_NONBLOCK); /* a writer that never writes: read would wait */
    CHECK(w >= 0, "open fifo: %s", strerror(errno));
    refused(fifo, "FIFO");
    if (w >= 0) close(w);
    refused("/dev/zero", "character device");  /* would be read forever */
    refused(sub, "directory");
    refused(loop_a, "symbolic links");

    /* A regular file, directly and through a symlink, still reads; the cap
     * refuses it before reading when it is larger. */
    CHECK(fy_write_file_atomic(file, "0123456789", 10, &err) == 0, "%s", err.msg);
    CHECK(symlink("file.txt", link) == 0, "symlink: %s", strerror(errno));
    char *buf = NULL;
    size_t len = 0;
    CHECK(fy_read_file(link, &buf, &len, &err) == 0 && len == 10 && !strcmp(buf, "0123456789"), "%s", err.msg);
    free(buf);
    CHECK(fy_read_file_max(file, 10, &buf, &len, &err) == 0 && len == 10, "at the cap: %s", err.msg);
    free(buf);
    CHECK(fy_read_file_max(file, 9, &buf, &len, &err) == -1 && buf == NULL, "over the cap: read");
    CHECK(strstr(err.msg, "10 bytes") != NULL, "over the cap: message '%s'", err.msg);
    struct stat st;
    int fd = fy_open_regular(file, &st, &err);
    CHECK(fd >= 0 && st.st_size == 10 && !(fcntl(fd, F_GETFL) & O_NONBLOCK), "fy_open_regular: %s", err.msg);
    if (fd >= 0) close(fd);
    CHECK(fy_open_regular(fifo, &st, &err) == -1, "fy_open_regular took a FIFO");
    unlink(fifo), rmdir(sub), unlink(loop_a), unlink(loop_b), unlink(link), unlink(file);
}

/* DeepSeek-V3's sizes (its config.json) on the built-in config. */
static fy_config deepseek_v3(void) {
    fy_config c;
    fy_err err;
    if (fy_config_builtin("tiny", 129280, &c, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    c.hidden_size = 7168, c.intermediate_size = 18432, c.moe_intermediate_size = 2048;
    c.num_hidden_layers = 61, c.num_attention_heads = 128, c.q_lora_rank = 1536, c.kv_lora_rank = 512;
    c.qk_nope_head_dim = 128, c.qk_rope_head_dim = 64, c.v_head_dim = 128, c.n_routed_experts = 256;
    c.n_shared_experts = 1, c.num_experts_per_tok = 8, c.n_group = 8, c.topk_group = 4;
    c.first_k_dense_replace = 3, c.num_nextn_predict_layers = 1, c.max_position_embeddings = 163840;
    return c;
}

/* fy_config_validate(c) fails naming `want`. */
static void too_big(fy_config c, const char *what, const char *want) {
    fy_err err = {{0}};
    CHECK(fy_config_validate(&c, &err) == -1, "%s: accepted", what);
    CHECK(strstr(err.msg, want) != NULL, "%s: message '%s' lacks '%s'", what, err.msg, want);
}

static void test_sizes(void) {
    fy_config c = deepseek_v3();
    fy_err err = {{0}};
    CHECK(fy_config_validate(&c, &err) == 0, "DeepSeek-V3's sizes refused: %s", err.msg);
    fy_param_table t;
    if (fy_params_build(&c, &t, &err) == 0) {
        /* 671e9 + the MTP module's 14e9 (DeepSeek-V3's 685B checkpoint) */
        double n = (double)fy_params_count(&t);
        CHECK(n > 6.8e11 && n < 6.9e11, "DeepSeek-V3 has %.4g parameters, not ~685e9", n);
        fy_params_free(&t);
    } else {
        CHECK(0, "parameter table of DeepSeek-V3: %s", err.msg);
    }

    c = deepseek_v3(), c.hidden_size = INT_MAX;
    too_big(c, "hidden_size 2^31-1", "hidden_size");
    c = deepseek_v3(), c.hidden_size = 1 << 29;
    too_big(c, "hidden_size 2^29", "parameters");
    c = deepseek_v3(), c.num_attention_heads = 1 << 24;
    too_big(c, "heads * head_dim over INT_MAX", "num_attention_heads");
    c = deepseek_v3(), c.n_shared_experts = 1 << 21;
    too_big(c, "shared experts' width over INT_MAX", "n_shared_experts");
    c = deepseek_v3(), c.kv_lora_rank = INT_MAX - 1;
    too_big(c, "kv_lora_rank + rope over INT_MAX", "kv_lora_rank");
    c = deepseek_v3(), c.n_routed_experts = 1 << 30, c.n_group = 1, c.topk_group = 1;
    too_big(c, "a billion experts", "parameters");
    c = deepseek_v3(), c.num_hidden_layers = INT_MAX - 1, c.first_k_dense_replace = 3;
    too_big(c, "2^31 layers", "parameters");
    c = deepseek_v3(), c.vocab_size = INT_MAX, c.hidden_size = INT_MAX / 2;
    too_big(c, "vocab * hidden", "parameters");
}

int main(void) {
    signal(SIGALRM, on_alarm);
    alarm(10);
    test_special_files(fy_test_tmpdir("test_hostile_input"));
    test_sizes();
    return fy_test_finish("test_hostile_input");
}
