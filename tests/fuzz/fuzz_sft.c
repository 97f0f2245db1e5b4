/* Fuzz target: chat / SFT JSONL (io/sft.c, io/sft_example.c, io/chat.c):
 * the input's first byte picks the chat template (deepseek3, chatml,
 * ferry) and train_on_prompt, the rest is JSONL. Each line goes through
 * fy_sft_encode (formats, roles, content parts, rendering, token
 * boundaries and the mask), then the whole file through fy_sft_prepare
 * into row shards, as `ferry data prepare chat.jsonl` does. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "io/sft.h"

static void on_bad(void *ctx, const char *file, long line, const char *why) { ++*(long *)ctx; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const fy_chat_template *t = fz_template((fy_chat_kind)(data[0] % FY_CHAT_N));
    int train_on_prompt = (data[0] >> 2) & 1;
    const fy_tokenizer *tok = fz_tokenizer();
    const uint8_t *text = data + 1;
    size_t n = size - 1;
    fy_err err;
    long lines = 0;
    for (size_t a = 0; a < n && lines < 64; lines++) {
        const uint8_t *nl = memchr(text + a, '\n', n - a);
        size_t b = nl ? (size_t)(nl - text) : n;
        fy_sft_example ex = {0};
        if (fy_sft_encode((const char *)text + a, b - a, t, tok, train_on_prompt, &ex, &err) == 0 &&
            ex.n && !ex.ids) abort();
        fy_sft_example_free(&ex);
        a = b + 1;
    }
    char path[4096], out[4096];
    const char *files[] = {fz_write("chat.jsonl", text, n, path)};
    snprintf(out, sizeof out, "%s/sft", fz_dir());
    fy_sft_opts o;
    fy_sft_opts_default(&o);
    o.seq_len = 64 + (data[0] >> 3);
    o.train_on_prompt = train_on_prompt;
    o.val_fraction = 0.25;
    o.shard_tokens = 4096;
    long bad = 0;
    o.on_bad_line = on_bad, o.ctx = &bad;
    fy_sft_stats st;
    fy_sft_prepare(files, 1, tok, t, out, &o, &st, &err);
    fz_remove("sft");
    return 0;
}
