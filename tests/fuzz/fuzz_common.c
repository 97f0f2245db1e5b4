/* Shared pieces of the fuzz targets (fuzz_common.h): the scratch
 * directory, the tokenizer and templates, input splitting. */
#include "fuzz_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "core/log.h"

static char g_dir[512];

static void remove_dir(void) {
    fy_err e;
    if (g_dir[0]) fy_remove_tree(g_dir, &e);
}

const char *fz_dir(void) {
    if (g_dir[0]) return g_dir;
    struct stat st;
    const char *base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp";
    snprintf(g_dir, sizeof g_dir, "%s/ferry-fuzz-%ld", base, (long)getpid());
    fy_err e;
    if (fy_mkdir_p(g_dir, &e)) {
        fprintf(stderr, "fuzz: cannot make %s: %s\n", g_dir, e.msg);
        abort();
    }
    atexit(remove_dir);
    /* the parsers' warnings would drown libFuzzer's own lines */
    fy_log_set_level(FY_LOG_ERROR);
    return g_dir;
}

const char *fz_write(const char *name, const void *data, size_t n, char out[4096]) {
    snprintf(out, 4096, "%s/%s", fz_dir(), name);
    FILE *f = fopen(out, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f)) {
        fprintf(stderr, "fuzz: cannot write %s\n", out);
        abort();
    }
    return out;
}

void fz_remove(const char *name) {
    char p[4096];
    fy_err e;
    snprintf(p, sizeof p, "%s/%s", fz_dir(), name);
    fy_remove_tree(p, &e);
}

void fz_split(const uint8_t *data, size_t size, const char *sep, const uint8_t **a, size_t *na,
              const uint8_t **b, size_t *nb) {
    size_t k = strlen(sep);
    *a = data, *na = size, *b = data + size, *nb = 0;
    /* one memmem: a memcmp per position costs libFuzzer's memcmp hook
     * most of the time on large inputs */
    const uint8_t *at = k && size ? memmem(data, size, sep, k) : NULL;
    if (at) *na = (size_t)(at - data), *b = at + k, *nb = size - *na - k;
}

char *fz_strndup(const uint8_t *data, size_t n) {
    char *s = malloc(n + 1);
    if (!s) abort();
    if (n) memcpy(s, data, n);
    s[n] = '\0';
    return s;
}

/* ---- tokenizer and templates ---------------------------------------------- */

static fy_tokenizer *g_tok;
static fy_chat_template g_tpl[FY_CHAT_N];

static void free_tok(void) { fy_tokenizer_free(g_tok); }

static void make_tokenizer(void) {
    static const char *words[] = {"the", "a", "shepherd", "king", "river", "city", "walked", "spoke",
                                  "rested", "near", "beyond", "user", "assistant", "system", "Hello",
                                  "world", ",", ".", "\n", "!", "?", "0123456789", "héllo", "日本語"};
    char text[1 << 15];
    size_t n = 0;
    unsigned r = 7;
    while (n + 32 < sizeof text) {
        r = r * 1103515245u + 12345u;
        n += (size_t)snprintf(text + n, sizeof text - n, "%s ", words[(r >> 16) % (sizeof words / sizeof *words)]);
    }
    fy_tok_train_opts o = {.vocab_size = 300, .min_freq = 2, .threads = 1};
    fy_tokenizer *base = NULL;
    fy_err e;
    static const char *chat[] = {"<|im_start|>", "<|im_end|>", "<｜begin▁of▁sentence｜>", "<｜User｜>",
                                 "<｜Assistant｜>", "<｜end▁of▁sentence｜>"};
    if (fy_tokenizer_train_text(text, n, &o, &base, &e) ||
        fy_tokenizer_add_special(base, chat, 6, &g_tok, &e)) {
        fprintf(stderr, "fuzz: cannot make the tokenizer: %s\n", e.msg);
        abort();
    }
    fy_tokenizer_free(base);
    for (int k = 0; k < FY_CHAT_N; k++)
        if (fy_chat_select(fy_chat_name((fy_chat_kind)k), NULL, g_tok, &g_tpl[k], &e)) {
            fprintf(stderr, "fuzz: chat template %s: %s\n", fy_chat_name((fy_chat_kind)k), e.msg);
            abort();
        }
    atexit(free_tok);
}

const fy_tokenizer *fz_tokenizer(void) {
    fz_dir();
    if (!g_tok) make_tokenizer();
    return g_tok;
}

const fy_chat_template *fz_template(fy_chat_kind k) {
    fz_tokenizer();
    return &g_tpl[(unsigned)k % FY_CHAT_N];
}
