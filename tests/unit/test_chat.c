/* Chat templates (io/chat.h): recognising Jinja texts, choosing a
 * model's template, refusing what is not supported, and the order rules of
 * the renderings. The renderings themselves are compared with transformers'
 * apply_chat_template by tools/serve/chat_template_check.py, which runs this
 * program as
 *   test_chat --jinja NAME                 (prints the template's Jinja text)
 *   test_chat --render NAME BOS EOS FILE   (renders FILE's JSON messages)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/fsutil.h"
#include "io/chat.h"
#include "testutil.h"

static int render_file(const char *name, const char *bos, const char *eos, const char *path) {
    fy_chat_template t = {0};
    char *text = NULL;
    size_t len = 0;
    fy_err err;
    if (fy_chat_from_name(name, &t.kind) || fy_read_file(path, &text, &len, &err)) {
        fprintf(stderr, "test_chat: bad template name or file\n");
        return 2;
    }
    snprintf(t.bos, sizeof t.bos, "%s", bos);
    snprintf(t.eos, sizeof t.eos, "%s", eos);
    cJSON *root = cJSON_ParseWithLength(text, len), *it;
    free(text);
    int n = cJSON_GetArraySize(root), i = 0, gen = 1;
    fy_chat_msg *m = calloc((size_t)n + 1, sizeof *m);
    cJSON_ArrayForEach(it, root) {
        m[i].role = cJSON_GetObjectItem(it, "role")->valuestring;
        m[i++].content = cJSON_GetObjectItem(it, "content")->valuestring;
    }
    fy_strbuf out = {0};
    int rc = fy_chat_render(&t, m, n, gen, &out, &err);
    if (rc) fprintf(stderr, "test_chat: %s\n", err.msg);
    else fwrite(out.p, 1, out.n, stdout);
    fy_strbuf_free(&out);
    free(m);
    cJSON_Delete(root);
    return rc ? 1 : 0;
}

/* The Jinja text with its whitespace changed: newlines after every "%}". */
static char *respaced(const char *j) {
    fy_strbuf b = {0};
    for (const char *p = j; *p; p++) {
        fy_strbuf_add(&b, p, 1, NULL);
        if (p[0] == '}' && p > j && (p[-1] == '%' || p[-1] == '}')) fy_strbuf_add(&b, "\n  ", 3, NULL);
    }
    return b.p;
}

static void test_match(void) {
    for (int k = 0; k < FY_CHAT_N; k++) {
        fy_chat_kind got = -1, byname = -1;
        CHECK(!fy_chat_from_name(fy_chat_name(k), &byname) && byname == (fy_chat_kind)k, "name %d", k);
        char *r = respaced(fy_chat_jinja(k));
        CHECK(strcmp(r, fy_chat_jinja(k)) && !fy_chat_match_jinja(r, &got) && got == (fy_chat_kind)k,
              "respaced %s recognised", fy_chat_name(k));
        r[strlen(r) / 2] ^= 1; /* one character changed: not the same template */
        CHECK(fy_chat_match_jinja(r, &got), "altered %s refused", fy_chat_name(k));
        free(r);
    }
    fy_chat_kind k;
    CHECK(fy_chat_from_name("llama3", &k), "unknown name refused");
}

static fy_tokenizer *tiny_tokenizer(void) {
    const char *text = "In the beginning God created the heaven and the earth. user: assistant: system:";
    fy_tok_train_opts o = {300, 1, 1};
    fy_tokenizer *tok = NULL;
    fy_err err;
    CHECK(!fy_tokenizer_train_text(text, strlen(text), &o, &tok, &err), "train: %s", err.msg);
    return tok;
}

static void write_text(const char *path, const char *text) {
    fy_err err;
    CHECK(!fy_write_file_atomic(path, text, strlen(text), &err), "%s", err.msg);
}

static void test_select(const fy_tokenizer *tok, const char *dir) {
    char cfg[512], tmpl[512];
    fy_chat_template t;
    fy_err err;
    snprintf(cfg, sizeof cfg, "%s/tokenizer_config.json", dir);
    snprintf(tmpl, sizeof tmpl, "%s/template.jinja", dir);
    /* a tokenizer_config.json naming ChatML, re-spaced */
    char *r = respaced(fy_chat_jinja(FY_CHAT_CHATML));
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "chat_template", r);
    char *json = cJSON_Print(o);
    write_text(cfg, json);
    CHECK(!fy_chat_select(NULL, cfg, tok, &t, &err) && t.kind == FY_CHAT_CHATML, "config chatml: %s", err.msg);
    /* --chat-template wins over the config */
    CHECK(!fy_chat_select("deepseek3", cfg, tok, &t, &err) && t.kind == FY_CHAT_DEEPSEEK3, "name wins");
    /* a file holding a known template; one holding an unknown one */
    write_text(tmpl, r);
    CHECK(!fy_chat_select(tmpl, NULL, tok, &t, &err) && t.kind == FY_CHAT_CHATML, "file chatml: %s", err.msg);
    write_text(tmpl, "{% for m in messages %}{{ m.content }}{% endfor %}");
    CHECK(fy_chat_select(tmpl, NULL, tok, &t, &err) && strstr(err.msg, "Jinja"), "unknown file refused: %s", err.msg);
    CHECK(fy_chat_select("/no/such/file", NULL, tok, &t, &err), "missing file refused");
    /* an unknown template in the config, or none: ferry's own for a ferry vocabulary */
    write_text(cfg, "{\"chat_template\": \"{{ messages }}\"}");
    CHECK(!fy_chat_select(NULL, cfg, tok, &t, &err) && t.kind == FY_CHAT_FERRY, "unknown config -> default");
    CHECK(!fy_chat_select(NULL, NULL, tok, &t, &err) && t.kind == FY_CHAT_FERRY, "no config -> ferry");
    CHECK(!strcmp(t.eos, "<|eos|>") && !strcmp(t.bos, "<|bos|>"), "specials from the tokenizer: %s %s", t.bos, t.eos);
    free(json);
    cJSON_Delete(o);
    free(r);
}

static void test_render_rules(void) {
    fy_chat_template t = {FY_CHAT_DEEPSEEK3, "<B>", "<E>", ""};
    fy_strbuf a = {0}, b = {0};
    fy_err err;
    /* DeepSeek-V3 gathers every system message first, in order */
    fy_chat_msg m1[] = {{"user", "u1"}, {"system", "s1"}, {"assistant", "a1"}, {"developer", "s2"}};
    fy_chat_msg m2[] = {{"system", "s1"}, {"system", "s2"}, {"user", "u1"}, {"assistant", "a1"}};
    CHECK(!fy_chat_render(&t, m1, 4, 1, &a, &err) && !fy_chat_render(&t, m2, 4, 1, &b, &err), "%s", err.msg);
    CHECK(a.n == b.n && !memcmp(a.p, b.p, a.n), "system messages gathered: %s | %s", a.p, b.p);
    CHECK(a.n > 3 && !memcmp(a.p, "<B>", 3), "starts with bos");
    fy_strbuf c = {0};
    fy_chat_msg bad[] = {{"tool", "x"}};
    CHECK(fy_chat_render(&t, bad, 1, 1, &c, &err) && strstr(err.msg, "role"), "tool role refused");
    CHECK(fy_chat_render(&t, m1, 0, 1, &c, &err), "no message refused");
    for (int k = 0; k < FY_CHAT_N; k++) {
        fy_strbuf g = {0}, ng = {0};
        t.kind = k;
        CHECK(!fy_chat_render(&t, m2, 4, 1, &g, &err) && !fy_chat_render(&t, m2, 4, 0, &ng, &err), "%s", err.msg);
        CHECK(g.n > ng.n && !memcmp(g.p, ng.p, ng.n), "%s: generation prompt appended", fy_chat_name(k));
        fy_strbuf_free(&g);
        fy_strbuf_free(&ng);
    }
    fy_strbuf_free(&a);
    fy_strbuf_free(&b);
    fy_strbuf_free(&c);
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--jinja")) {
        fy_chat_kind k;
        if (fy_chat_from_name(argv[2], &k)) return 2;
        fputs(fy_chat_jinja(k), stdout);
        return 0;
    }
    if (argc == 6 && !strcmp(argv[1], "--render")) return render_file(argv[2], argv[3], argv[4], argv[5]);
    const char *dir = fy_test_tmpdir("test_chat");
    test_match();
    fy_tokenizer *tok = tiny_tokenizer();
    if (tok) test_select(tok, dir);
    test_render_rules();
    fy_tokenizer_free(tok);
    return fy_test_finish("test_chat");
}
