/* Fine-tuning data (io/sft.h, io/kjv_chat.h, shard version 2, the loader's
 * masked labels): formats, masks per chat template, the prompt tokens equal
 * to the server's, bad lines with their numbers, padding, row shards and
 * the labels the loader gives. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/fsutil.h"
#include "io/chat.h"
#include "io/kjv_chat.h"
#include "io/shard.h"
#include "io/sft.h"
#include "model/model.h"
#include "testutil.h"
#include "train/loader.h"

static const char *const added[] = {"<|im_start|>", "<|im_end|>", "<｜User｜>", "<｜Assistant｜>",
                                    "<｜end▁of▁sentence｜>"};
#define N_ADDED 5

/* A ferry tokenizer with the chat templates' special tokens added (as a
 * Hugging Face file would have them), so every end-of-turn token is one id. */
static fy_tokenizer *make_tokenizer(void) {
    const char *text = "the king walked by the river and the servant spoke to the lamb near the city. "
                       "What does Genesis say? And God said, Let there be light: and there was light.\n";
    fy_strbuf b = {0};
    for (int i = 0; i < 40; i++) fy_strbuf_add(&b, text, strlen(text), NULL);
    fy_tok_train_opts o = {300, 0, 1};
    fy_tokenizer *tok = NULL, *out = NULL;
    fy_err err;
    if (fy_tokenizer_train_text(b.p, b.n, &o, &tok, &err)) return NULL;
    fy_strbuf_free(&b);
    size_t len;
    char *json = fy_tokenizer_to_json(tok, &len, &err);
    int V = fy_tokenizer_vocab_size(tok);
    fy_tokenizer_free(tok);
    cJSON *root = cJSON_Parse(json), *arr = cJSON_GetObjectItem(root, "added_tokens");
    free(json);
    cJSON *model_vocab = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "model"), "vocab");
    int n_model = cJSON_GetArraySize(model_vocab);
    for (int k = 0; k < N_ADDED; k++) {
        cJSON *t = cJSON_Duplicate(cJSON_GetArrayItem(arr, 0), 1);
        cJSON_ReplaceItemInObject(t, "id", cJSON_CreateNumber(n_model + k));
        cJSON_ReplaceItemInObject(t, "content", cJSON_CreateString(added[k]));
        cJSON_AddItemToArray(arr, t);
    }
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (fy_tokenizer_from_json(s, strlen(s), "test", &out, &err)) fprintf(stderr, "tokenizer: %s\n", err.msg);
    free(s);
    CHECK(out && fy_tokenizer_vocab_size(out) == V + N_ADDED, "vocab %d", out ? fy_tokenizer_vocab_size(out) : -1);
    return out;
}

static fy_chat_template tmpl(const fy_tokenizer *tok, fy_chat_kind k) {
    fy_chat_template t;
    fy_err err;
    fy_chat_select(fy_chat_name(k), NULL, tok, &t, &err);
    return t;
}

/* The decoded text of the tokens whose mask is `m` (positions >= 1). */
static char *decode_masked(const fy_tokenizer *tok, const fy_sft_example *ex, int m) {
    int32_t *ids = malloc(ex->n * sizeof *ids);
    size_t n = 0;
    for (size_t i = 1; i < ex->n; i++)
        if (ex->mask[i] == m) ids[n++] = ex->ids[i];
    char *out = NULL;
    size_t len;
    fy_err err;
    fy_tokenizer_decode(tok, ids, n, 0, &out, &len, &err);
    free(ids);
    return out;
}

static const char *conv = "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", "
                          "\"content\": \"What does Genesis 1:3 say?\"}, {\"role\": \"assistant\", \"content\": "
                          "\"Let there be light.\"}, {\"role\": \"user\", \"content\": \"And then?\"}, {\"role\": "
                          "\"assistant\", \"content\": \"there was light.\"}, {\"role\": \"user\", \"content\": "
                          "\"Thanks\"}]}";

/* Per template: the trained tokens are exactly the two replies with their
 * end-of-turn token (one id), the tokens before the first reply are the
 * ones the server encodes for that prompt, and the last user message is
 * dropped (nothing to train after it). */
static void test_template(const fy_tokenizer *tok, fy_chat_kind k, const char *end) {
    fy_chat_template t = tmpl(tok, k);
    fy_sft_example ex;
    fy_err err;
    int rc = fy_sft_encode(conv, strlen(conv), &t, tok, 0, &ex, &err);
    CHECK(rc == 0, "%s: %s", fy_chat_name(k), err.msg);
    if (rc) return;
    char want[256];
    snprintf(want, sizeof want, "Let there be light.%sthere was light.%s", end, end);
    char *got = decode_masked(tok, &ex, 1);
    CHECK(got && !strcmp(got, want), "%s: trained text '%s', want '%s'", fy_chat_name(k), got, want);
    free(got);
    int32_t end_id = fy_tokenizer_token_to_id(tok, end);
    CHECK(end_id >= 0 && ex.ids[ex.n - 1] == end_id && ex.mask[ex.n - 1] == 1, "%s: ends with the end token",
          fy_chat_name(k));
    /* The server's prompt for the first reply: its tokens start the row. */
    fy_chat_msg m[2] = {{"system", "Be brief."}, {"user", "What does Genesis 1:3 say?"}};
    fy_strbuf p = {0};
    fy_chat_render(&t, m, 2, 1, &p, &err);
    int32_t *ids = NULL;
    size_t n = 0;
    fy_tokenizer_encode_ex(tok, p.p, p.n, FY_ENC_SPECIAL, &ids, &n, &err);
    int same = n < ex.n && !memcmp(ids, ex.ids, n * sizeof *ids);
    for (size_t i = 0; i < n && same; i++) same = ex.mask[i] == 0;
    CHECK(same && ex.mask[n] == 1, "%s: the row starts with the server's prompt (%zu tokens), untrained",
          fy_chat_name(k), n);
    /* ferry's "assistant: " + "there": encoded whole, the space joins the
     * word; the second reply's history is counted as differing from what
     * the server would encode. The other templates cut at special tokens
     * or a newline, where encodings agree. */
    int want_mm = k == FY_CHAT_FERRY ? 1 : 0;
    CHECK(ex.boundary_mismatch == want_mm, "%s: %d boundary mismatches", fy_chat_name(k), ex.boundary_mismatch);
    free(ids);
    fy_strbuf_free(&p);
    /* --train-on-prompt: every token but the first, and the last message kept. */
    fy_sft_example all;
    CHECK(fy_sft_encode(conv, strlen(conv), &t, tok, 1, &all, &err) == 0, "%s", err.msg);
    size_t trained = 0;
    for (size_t i = 0; i < all.n; i++) trained += all.mask[i];
    CHECK(all.n > ex.n && trained == all.n - 1 && all.mask[0] == 0, "%s: train on prompt", fy_chat_name(k));
    fy_sft_example_free(&all);
    fy_sft_example_free(&ex);
}

static void test_formats(const fy_tokenizer *tok) {
    fy_chat_template t = tmpl(tok, FY_CHAT_FERRY);
    fy_sft_example ex;
    fy_err err;
    const char *pc = "{\"prompt\": \"the king\", \"completion\": \" walked by the river\"}";
    CHECK(fy_sft_encode(pc, strlen(pc), &t, tok, 0, &ex, &err) == 0 && ex.format == FY_SFT_PROMPT, "%s", err.msg);
    char *tr = decode_masked(tok, &ex, 1), *un = decode_masked(tok, &ex, 0);
    CHECK(!strcmp(tr, " walked by the river<|eos|>"), "completion trained: '%s'", tr);
    CHECK(ex.ids[ex.n - 1] == fy_tokenizer_eos(tok), "ends with eos");
    free(tr);
    free(un);
    fy_sft_example_free(&ex);
    const char *tx = "{\"text\": \"the lamb spoke\"}";
    CHECK(fy_sft_encode(tx, strlen(tx), &t, tok, 0, &ex, &err) == 0 && ex.format == FY_SFT_TEXT, "%s", err.msg);
    size_t trained = 0;
    for (size_t i = 0; i < ex.n; i++) trained += ex.mask[i];
    CHECK(trained == ex.n - 1 && ex.ids[ex.n - 1] == fy_tokenizer_eos(tok), "text: all trained, eos last");
    fy_sft_example_free(&ex);
    /* TRL's conversational prompt/completion: one chat. */
    const char *cc = "{\"prompt\": [{\"role\": \"user\", \"content\": \"hi\"}], \"completion\": [{\"role\": "
                     "\"assistant\", \"content\": [{\"type\": \"text\", \"text\": \"the\"}, {\"type\": \"text\", "
                     "\"text\": \"king\"}]}]}";
    CHECK(fy_sft_encode(cc, strlen(cc), &t, tok, 0, &ex, &err) == 0 && ex.format == FY_SFT_PROMPT, "%s", err.msg);
    tr = decode_masked(tok, &ex, 1);
    CHECK(tr && !strcmp(tr, "the\nking<|eos|>"), "conversational completion: '%s'", tr);
    free(tr);
    fy_sft_example_free(&ex);
}

/* What is refused, and why. */
static void test_refusals(const fy_tokenizer *tok) {
    fy_chat_template ds = tmpl(tok, FY_CHAT_DEEPSEEK3);
    struct {
        const char *line, *why;
    } cases[] = {
        {"{\"messages\": [", "not valid JSON"},
        {"[1, 2]", "not a JSON object"},
        {"{\"foo\": 1}", "no \"messages\""},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"tool\", \"content\": \"b\"}, "
         "{\"role\": \"assistant\", \"content\": \"c\"}]}",
         "role 'tool'"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}", "no assistant message"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": null}]}",
         "content"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}, "
         "{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": \"c\"}, {\"role\": "
         "\"assistant\", \"content\": \"d\"}]}",
         "system message after a reply"},
        {"{\"prompt\": \"a\"}", "both be strings"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fy_sft_example ex;
        fy_err err = {{0}};
        int rc = fy_sft_encode(cases[i].line, strlen(cases[i].line), &ds, tok, 0, &ex, &err);
        CHECK(rc != 0 && strstr(err.msg, cases[i].why), "case %zu: rc %d, '%s' (want '%s')", i, rc, err.msg,
              cases[i].why);
    }
}

static long bad_lines[16];
static int n_bad;
static void on_bad(void *ctx, const char *file, long line, const char *why) {
    if (n_bad < 16) bad_lines[n_bad++] = line;
}

static void write_text(const char *path, const char *s) {
    fy_err err;
    CHECK(fy_write_file_atomic(path, s, strlen(s), &err) == 0, "%s", err.msg);
}

/* Bad lines by number, padding, row shards, the loader's labels. */
static void test_prepare(const fy_tokenizer *tok, const char *dir) {
    char in[1200], out[1200];
    snprintf(in, sizeof in, "%s/in.jsonl", dir);
    snprintf(out, sizeof out, "%s/data", dir);
    fy_strbuf b = {0};
    const char *good = "{\"messages\": [{\"role\": \"user\", \"content\": \"What does it say?\"}, {\"role\": "
                       "\"assistant\", \"content\": \"the king walked\"}]}\n";
    for (int i = 0; i < 30; i++) {
        if (i == 1) fy_strbuf_add(&b, "not json\n", 9, NULL);                       /* line 2 */
        if (i == 3) fy_strbuf_add(&b, "   \n", 4, NULL);                            /* line 5: blank */
        if (i == 5) {                                                              /* line 8: too long */
            const char *s = "{\"text\": \"the king walked by the river and the servant spoke to the lamb near the "
                            "city, What does Genesis say? And God said, Let there be light: and there was light, "
                            "and the king walked by the river and the servant spoke to the lamb near the city, "
                            "What does Genesis say? And God said, Let there be light: and there was light.\"}\n";
            fy_strbuf_add(&b, s, strlen(s), NULL);
        }
        fy_strbuf_add(&b, good, strlen(good), NULL);
    }
    write_text(in, b.p);
    fy_strbuf_free(&b);
    fy_chat_template t = tmpl(tok, FY_CHAT_FERRY);
    fy_sft_opts o;
    fy_sft_opts_default(&o);
    o.seq_len = 47;
    o.val_fraction = 0.2;
    o.on_bad_line = on_bad;
    fy_sft_stats st;
    fy_err err;
    const char *files[] = {in};
    int rc = fy_sft_prepare(files, 1, tok, &t, out, &o, &st, &err);
    CHECK(rc == 0, "prepare: %s", err.msg);
    CHECK(n_bad == 2 && bad_lines[0] == 2 && bad_lines[1] == 8, "bad lines %d: %ld %ld", n_bad, bad_lines[0],
          bad_lines[1]);
    CHECK(st.lines == 33 && st.blank == 1 && st.bad == 2 && st.examples[FY_SFT_MESSAGES] == 30, "counts");
    CHECK(st.train_rows + st.val_rows == 30 && st.val_rows > 0 && st.train_rows > st.val_rows, "rows %llu + %llu",
          (unsigned long long)st.train_rows, (unsigned long long)st.val_rows);
    CHECK(st.pad + st.tokens == 30 * 48 && st.pad > 0, "padding %llu", (unsigned long long)st.pad);
    o.fail_on_bad_line = 1;
    rc = fy_sft_prepare(files, 1, tok, &t, out, &o, &st, &err);
    CHECK(rc != 0 && strstr(err.msg, "in.jsonl:2: not valid JSON"), "fail: %s", err.msg);
    o.fail_on_bad_line = 0;
    rc = fy_sft_prepare(files, 1, tok, &t, out, &o, &st, &err); /* the good data again */

    /* The shard: rows of T+1, pad tokens masked. */
    char p[1300];
    snprintf(p, sizeof p, "%s/train-00000.bin", out);
    fy_shard s;
    CHECK(fy_shard_open(p, &s, 1, 0, &err) == 0, "%s", err.msg);
    CHECK(s.version == 2 && s.row_len == 48 && s.mask && s.n_tokens == st.train_rows * 48, "shard v2 rows");
    uint64_t pad = 0;
    for (uint64_t i = 0; i < s.n_tokens; i++) {
        int is_pad = fy_shard_token(&s, i) == fy_tokenizer_pad(tok); /* <|pad|> is in no example */
        pad += is_pad;
        if (is_pad) CHECK(!fy_shard_trained(&s, i), "pad token %llu trained", (unsigned long long)i);
    }
    CHECK(pad > 0 && pad <= st.pad, "padding present");
    fy_shard_close(&s);

    /* The loader: every row once per epoch, labels = next token or ignored. */
    fy_loader L;
    CHECK(fy_loader_open(&L, out, "train", 0, &err) == 0, "%s", err.msg);
    uint64_t ns = 0;
    CHECK(fy_loader_n_slots(&L, 47, &ns, &err) == 0 && ns == st.train_rows, "slots %llu", (unsigned long long)ns);
    CHECK(fy_loader_n_slots(&L, 32, &ns, &err) != 0 && strstr(err.msg, "--seq 47"), "seq mismatch: %s", err.msg);
    int32_t inp[47], lab[47];
    int rows_ok = 1;
    for (uint64_t g = 0; g < st.train_rows; g++) {
        fy_window w;
        fy_loader_locate(&L, 5, g, 47, &w, &err);
        fy_loader_rows(&L, 5, g, 1, 47, inp, lab, &err);
        rows_ok &= w.pos % 48 == 0;
        for (int j = 0; j < 47; j++) {
            uint64_t i = w.pos + (uint64_t)j + 1;
            int32_t next = fy_shard_token(&L.shards[w.shard], i);
            rows_ok &= lab[j] == (fy_shard_trained(&L.shards[w.shard], i) ? next : FY_IGNORE_INDEX);
            rows_ok &= j == 46 || inp[j + 1] == next;
        }
        /* "the king walked" + eos after "assistant: " are the trained labels. */
        int n_lab = 0;
        for (int j = 0; j < 47; j++) n_lab += lab[j] != FY_IGNORE_INDEX;
        rows_ok &= n_lab > 1 && n_lab < 47;
    }
    CHECK(rows_ok, "loader rows and labels");
    fy_loader_close(&L);
}

/* Version 2 shards: the mask and row length round trip and are covered by
 * the checksums; a plain shard is still version 1. */
static void test_shard_v2(const char *dir) {
    char p[1200], q[1200];
    snprintf(p, sizeof p, "%s/v2.bin", dir);
    snprintf(q, sizeof q, "%s/v1.bin", dir);
    int32_t tok[24];
    uint8_t mask[24];
    for (int i = 0; i < 24; i++) tok[i] = i * 7 % 50, mask[i] = i % 3 == 1;
    fy_err err;
    fy_shard s;
    CHECK(fy_shard_write_rows(p, tok, mask, 24, 50, 7, &err) != 0, "24 tokens are not rows of 7");
    CHECK(fy_shard_write_rows(p, tok, mask, 24, 50, 8, &err) == 0, "%s", err.msg);
    CHECK(fy_shard_open(p, &s, 1, 50, &err) == 0, "%s", err.msg);
    int same = s.version == 2 && s.row_len == 8 && s.n_tokens == 24;
    for (int i = 0; i < 24 && same; i++) same = fy_shard_token(&s, i) == tok[i] && fy_shard_trained(&s, i) == mask[i];
    CHECK(same, "v2 round trip");
    fy_shard_close(&s);
    CHECK(fy_shard_write(q, tok, 24, 50, &err) == 0 && fy_shard_open(q, &s, 1, 50, &err) == 0, "%s", err.msg);
    CHECK(s.version == 1 && s.row_len == 0 && !s.mask && fy_shard_trained(&s, 3), "v1 unchanged");
    fy_shard_close(&s);
    /* A flipped mask bit (last byte) and a changed row length are caught. */
    char *b;
    size_t n;
    fy_read_file(p, &b, &n, &err);
    b[n - 1] ^= 1;
    fy_write_file_atomic(p, b, n, &err);
    CHECK(fy_shard_open(p, &s, 1, 50, &err) != 0 && strstr(err.msg, "payload checksum"), "mask: %s", err.msg);
    b[n - 1] ^= 1;
    b[48] = 12;
    fy_write_file_atomic(p, b, n, &err);
    CHECK(fy_shard_open(p, &s, 1, 50, &err) != 0 && strstr(err.msg, "header checksum"), "row_len: %s", err.msg);
    free(b);
}

static void test_kjv(const char *dir) {
    const char *verses = "Ge1:1 In the beginning God created the heaven and the earth.\n"
                         "Ge1:2 And the earth was without form, and void.\n"
                         "Ge1:3 And God said, Let there be light: and there was light.\n"
                         "1Sm3:4 That the LORD called Samuel: and he answered, Here am I.\n"
                         "not a verse\n";
    char a[1200], b[1200];
    snprintf(a, sizeof a, "%s/a.jsonl", dir);
    snprintf(b, sizeof b, "%s/b.jsonl", dir);
    fy_kjv_chat_opts o = {50, 3, 0};
    long nv = 0;
    fy_err err;
    CHECK(fy_kjv_chat_write(verses, strlen(verses), &o, a, &nv, &err) == 0 && nv == 4, "%s", err.msg);
    CHECK(fy_kjv_chat_write(verses, strlen(verses), &o, b, &nv, &err) == 0, "%s", err.msg);
    char *x, *y;
    size_t nx, ny;
    fy_read_file(a, &x, &nx, &err);
    fy_read_file(b, &y, &ny, &err);
    CHECK(nx == ny && !memcmp(x, y, nx), "deterministic");
    CHECK(strstr(x, "{\"role\":\"user\",\"content\":\"What does Genesis 1:3 say?\"},{\"role\":\"assistant\","
                    "\"content\":\"And God said, Let there be light: and there was light.\"}") != NULL,
          "verse question");
    CHECK(strstr(x, "Which book says \\\"That the LORD called Samuel: and he answered, Here am I.\\\"?\"},"
                    "{\"role\":\"assistant\",\"content\":\"1 Samuel 3:4\"}") != NULL,
          "reference question");
    CHECK(strstr(x, "And the next verse?") != NULL, "two-turn conversations");
    long lines = 0;
    for (size_t i = 0; i < nx; i++) lines += x[i] == '\n';
    CHECK(lines == 50, "%ld lines", lines);
    free(x);
    free(y);
    CHECK(!strcmp(fy_kjv_book_name("SSol"), "Song of Solomon") && !strcmp(fy_kjv_book_name("Rev"), "Revelation"),
          "book names");
}

int main(void) {
    const char *dir = fy_test_tmpdir("test_sft");
    fy_tokenizer *tok = make_tokenizer();
    if (!tok) return 1;
    test_template(tok, FY_CHAT_FERRY, "<|eos|>");
    test_template(tok, FY_CHAT_CHATML, "<|im_end|>");
    test_template(tok, FY_CHAT_DEEPSEEK3, "<｜end▁of▁sentence｜>");
    test_formats(tok);
    test_refusals(tok);
    test_prepare(tok, dir);
    test_shard_v2(dir);
    test_kjv(dir);
    fy_tokenizer_free(tok);
    return fy_test_finish("test_sft");
}
