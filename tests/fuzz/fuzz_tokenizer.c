/* Fuzz target: tokenizer.json (io/tokenizer.c, fy_tokenizer_from_json,
 * the code fy_tokenizer_load runs on a file's bytes). The input is the
 * JSON, optionally followed by "\n#TEXT#\n" and a text: a tokenizer that
 * loads encodes the text (plain and with special tokens), decodes it,
 * streams it back and is written back as JSON, which must load again.
 * The text is also encoded by the harness's own byte-level tokenizer,
 * whose decode must give back exactly the text's bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

static void use(const fy_tokenizer *tok, const char *text, size_t len, unsigned flags, int must_round_trip) {
    int32_t *ids = NULL;
    size_t n = 0, dlen = 0;
    char *dec = NULL;
    fy_err err;
    if (fy_tokenizer_encode_ex(tok, text, len, flags, &ids, &n, &err) == 0) {
        if (fy_tokenizer_decode(tok, ids, n, 0, &dec, &dlen, &err) == 0 && must_round_trip &&
            (dlen != len || memcmp(dec, text, len))) {
            fprintf(stderr, "decode(encode(text)) is not the text (flags %u)\n", flags);
            abort();
        }
        free(dec);
        fy_detok_stream s;
        fy_detok_stream_init(&s, tok, FY_DEC_LOSSY | FY_DEC_SKIP_SPECIAL);
        const char *out;
        size_t olen;
        for (size_t i = 0; i < n; i++)
            if (fy_detok_stream_push(&s, ids[i], &out, &olen, &err)) break;
        fy_detok_stream_flush(&s, &out, &olen, &err);
        fy_detok_stream_free(&s);
    }
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *json, *text;
    size_t njson, ntext;
    fz_split(data, size, "\n#TEXT#\n", &json, &njson, &text, &ntext);
    static const char sample[] = "The king walked near the river, and spoke: <|eos|> héllo 日本語 42!\n";
    const char *t = ntext ? (const char *)text : sample;
    size_t tl = ntext ? ntext : sizeof sample - 1;

    const fy_tokenizer *mine = fz_tokenizer();
    use(mine, t, tl, 0, 1);
    use(mine, t, tl, FY_ENC_SPECIAL, 1);

    fy_tokenizer *tok = NULL;
    fy_err err;
    if (fy_tokenizer_from_json((const char *)json, njson, "tokenizer.json", &tok, &err) == 0) {
        use(tok, t, tl, 0, 0);
        use(tok, t, tl, FY_ENC_SPECIAL, 0);
        size_t jl = 0;
        char *again = fy_tokenizer_to_json(tok, &jl, &err);
        fy_tokenizer *tok2 = NULL;
        if (again && fy_tokenizer_from_json(again, jl, "tokenizer.json (written back)", &tok2, &err)) {
            fprintf(stderr, "tokenizer written back does not load: %s\n", err.msg);
            abort();
        }
        fy_tokenizer_free(tok2);
        free(again);
        for (int32_t id = -1; id <= fy_tokenizer_vocab_size(tok) && id < 300; id++) {
            size_t bl;
            fy_tokenizer_token_bytes(tok, id, &bl);
            if (id >= 0 && id < fy_tokenizer_vocab_size(tok)) fy_tokenizer_token_str(tok, id);
            fy_tokenizer_token_type(tok, id);
        }
    }
    fy_tokenizer_free(tok);
    return 0;
}
