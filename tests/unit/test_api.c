/* The OpenAI layer of ferry serve without a socket (serve/api.h): request
 * parsing against the tokenizer and the chat renderer (the oracles),
 * refusals with their documented status and type, answers and SSE streams
 * read back with cJSON, /tokenize and /detokenize round trips, UTF-8
 * cleaning and the /metrics histograms; LoRA adapters' model names (routing,
 * 404, /v1/models). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "serve/api.h"
#include "testutil.h"

static fy_tokenizer *tok;
static fy_chat_template chat;

static fy_api_ctx ctx(int c, int max_tokens) { return (fy_api_ctx){"m", tok, &chat, c, max_tokens, NULL, 0}; }

static int parse(fy_api_kind k, const char *body, int c, fy_api_req *r, fy_api_error *e) {
    fy_api_ctx x = ctx(c, 100);
    return fy_api_parse(k, body, strlen(body), &x, r, e);
}

static void test_parse_ok(void) {
    fy_api_req r;
    fy_api_error e;
    const char *prompt = "In the beginning God created";
    int32_t *ids = NULL;
    size_t n = 0;
    fy_err err;
    fy_tokenizer_encode(tok, prompt, strlen(prompt), &ids, &n, &err);
    CHECK(!parse(FY_API_COMPLETION,
                 "{\"model\":\"m\",\"prompt\":\"In the beginning God created\",\"temperature\":0,\"seed\":7,"
                 "\"stop\":[\"x\",\"\",\"yz\"],\"logprobs\":3,\"unknown\":{\"a\":1}}",
                 1000, &r, &e),
          "%s", e.msg);
    CHECK(r.n_tokens == (int)n && !memcmp(r.tokens, ids, n * sizeof *ids), "prompt tokens = the tokenizer's");
    CHECK(r.max_tokens == 100, "absent max_tokens -> the default limit (%d)", r.max_tokens);
    CHECK(r.params.n_stop == 2 && !strcmp(r.params.stop[1], "yz"), "stop strings, empty dropped");
    CHECK(r.logprobs == 1 && r.top_logprobs == 3 && r.params.sampler.temperature == 0 && r.params.sampler.seed == 7,
          "fields");
    fy_api_req_free(&r);
    CHECK(!parse(FY_API_COMPLETION, "{\"prompt\":\"In the beginning God created\"}", (int)n + 5, &r, &e), "%s", e.msg);
    CHECK(r.max_tokens == 5, "absent max_tokens fills the context (%d)", r.max_tokens);
    fy_api_req_free(&r);
    /* token ids, and a list of one list of token ids */
    CHECK(!parse(FY_API_COMPLETION, "{\"prompt\":[[5,6,7]],\"max_completion_tokens\":2}", 100, &r, &e) &&
              r.n_tokens == 3 && r.tokens[2] == 7 && r.max_tokens == 2,
          "token-id prompt: %s", e.msg);
    fy_api_req_free(&r);
    /* chat: the rendered prompt, special tokens recognised */
    CHECK(!parse(FY_API_CHAT,
                 "{\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},{\"role\":\"user\",\"content\":"
                 "[{\"type\":\"text\",\"text\":\"hi\"},{\"type\":\"text\",\"text\":\"there\"}]}],\"stream\":true,"
                 "\"stream_options\":{\"include_usage\":true},\"logprobs\":true,\"top_logprobs\":2,\"max_tokens\":4}",
                 1000, &r, &e),
          "%s", e.msg);
    fy_chat_msg m[] = {{"system", "be brief"}, {"user", "hi\nthere"}};
    fy_strbuf p = {0};
    int32_t *cids = NULL;
    size_t cn = 0;
    fy_chat_render(&chat, m, 2, 1, &p, &err);
    fy_tokenizer_encode_ex(tok, p.p, p.n, FY_ENC_SPECIAL, &cids, &cn, &err);
    CHECK(r.n_tokens == (int)cn && !memcmp(r.tokens, cids, cn * sizeof *cids), "chat prompt = rendered + encoded");
    CHECK(r.stream && r.include_usage && r.logprobs && r.top_logprobs == 2 && r.max_tokens == 4, "chat fields");
    int32_t eos = fy_tokenizer_eos(tok);
    int has_eos = 0;
    for (size_t i = 0; i < cn; i++) has_eos |= cids[i] == eos;
    CHECK(has_eos, "the template's eos became the special token");
    fy_api_req_free(&r);
    fy_strbuf_free(&p);
    free(cids);
    free(ids);
}

static void test_parse_refusals(void) {
    static const struct {
        fy_api_kind k;
        const char *body;
        int status;
        const char *type;
    } cases[] = {
        {FY_API_COMPLETION, "{bad json", 400, "invalid_request_error"},
        {FY_API_COMPLETION, "[1,2]", 400, "invalid_request_error"},
        {FY_API_COMPLETION, "{}", 400, "invalid_request_error"},
        {FY_API_COMPLETION, "{\"prompt\":5}", 400, "invalid_request_error"},
        {FY_API_COMPLETION, "{\"prompt\":\"x\",\"max_tokens\":-3}", 400, "invalid_request_error"},
        {FY_API_COMPLETION, "{\"prompt\":\"x\",\"max_tokens\":1.5}", 400, "invalid_request_error"},
        {FY_API_COMPLETION, "{\"prompt\":\"x\",\"max_tokens\":1e30}", 400, "invalid_request_error"},
        {FY_API_COMPLETION, "{\"prompt\":\"x\",\"max_tokens\":\"9\"}", 400, "invalid_request_error"},
        {FY_API_COMPLETION, "{\"prompt\":\"x y z\",\"max_tokens\":49}", 400, "exceed_context_size_error"},
        {FY_API_COMPLETION, "{\"prompt\":\"x\",\"n\":2}", 400, "invalid_request_error"},
        {FY_API_COMPLETION, "{\"prompt\":\"x\",\"echo\":true}", 400, "invalid_request_error"},
        {FY_API_COMPLETION, "{\"prompt\":\"x\",\"model\":\"other\"}", 404, "invalid_request_error"},
        {FY_API_COMPLETION, "{\"prompt\":\"x\",\"temperature\":5}", 400, "invalid_request_error"},
        {FY_API_COMPLETION, "{\"prompt\":\"x\",\"top_p\":0}", 400, "invalid_request_error"},
        {FY_API_COMPLETION, "{\"prompt\":\"x\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", 400, "invalid_request_error"},
        {FY_API_COMPLETION, "{\"prompt\":\"x\",\"stop\":[1]}", 400, "invalid_request_error"},
        {FY_API_COMPLETION, "{\"prompt\":\"x\",\"stream\":\"yes\"}", 400, "invalid_request_error"},
        {FY_API_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":50}", 400, "invalid_request_error"},
        {FY_API_COMPLETION, "{\"prompt\":[1,99999999]}", 400, "invalid_request_error"},
        {FY_API_COMPLETION, "{\"prompt\":\"\"}", 400, "invalid_request_error"},
        {FY_API_CHAT, "{\"messages\":[]}", 400, "invalid_request_error"},
        {FY_API_CHAT, "{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", 400, "invalid_request_error"},
        {FY_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":null}]}", 400, "invalid_request_error"},
        {FY_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}", 400,
         "invalid_request_error"},
        {FY_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":2}", 400,
         "invalid_request_error"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fy_api_req r;
        fy_api_error e = {0};
        int rc = parse(cases[i].k, cases[i].body, 50, &r, &e);
        CHECK(rc && e.status == cases[i].status && !strcmp(e.type, cases[i].type) && e.msg[0],
              "%s -> %d %s (%s)", cases[i].body, e.status, e.type, e.msg);
        char *json = fy_api_error_json(&e);
        cJSON *j = cJSON_Parse(json), *err = cJSON_GetObjectItem(j, "error");
        CHECK(cJSON_IsString(cJSON_GetObjectItem(err, "message")) && cJSON_IsString(cJSON_GetObjectItem(err, "type")) &&
                  cJSON_GetObjectItem(err, "code"),
              "error JSON shape: %s", json);
        cJSON_Delete(j);
        free(json);
    }
}

/* Feeds events with the given texts, then DONE. */
static void feed(fy_api_job *j, const char *const *texts, int n, fy_strbuf *sse) {
    fy_err err;
    for (int i = 0; i < n; i++) {
        fy_req_event ev = {0};
        ev.kind = FY_EV_TOKEN;
        ev.text = texts[i];
        ev.text_len = strlen(texts[i]);
        ev.token = 100 + i;
        ev.logprob = -0.5f * (float)i;
        ev.n_top = 2;
        ev.top_token[0] = 100 + i, ev.top_token[1] = 7;
        ev.top_logprob[0] = ev.logprob, ev.top_logprob[1] = -9;
        CHECK(!fy_api_job_event(j, &ev, sse, &err), "%s", err.msg);
    }
    fy_req_event done = {0};
    done.kind = FY_EV_DONE;
    done.text = "!";
    done.text_len = 1;
    done.finish_reason = "length";
    done.prompt_tokens = 11;
    done.completion_tokens = n;
    CHECK(!fy_api_job_event(j, &done, sse, &err), "%s", err.msg);
}

static void test_answers(void) {
    static const char *const texts[] = {"Hel", "", "lo \xff"};
    fy_api_req r = {0};
    r.kind = FY_API_CHAT;
    r.logprobs = 1;
    r.top_logprobs = 2;
    r.n_tokens = 11;
    fy_api_job j;
    fy_api_job_init(&j, &r, "m", tok, 1, 1700000000);
    feed(&j, texts, 3, NULL);
    char *s = fy_api_job_result(&j);
    cJSON *o = cJSON_Parse(s), *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
    const char *content = cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "message"), "content"));
    CHECK(content && !strcmp(content, "Hello \xEF\xBF\xBD!"), "content = the texts, UTF-8 cleaned: %s", s);
    CHECK(!strncmp(cJSON_GetStringValue(cJSON_GetObjectItem(o, "id")), "chatcmpl-", 9) &&
              !strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(o, "object")), "chat.completion"),
          "id, object");
    cJSON *lp = cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "logprobs"), "content");
    CHECK(cJSON_GetArraySize(lp) == 3 &&
              cJSON_GetArraySize(cJSON_GetObjectItem(cJSON_GetArrayItem(lp, 2), "top_logprobs")) == 2 &&
              fabs(cJSON_GetObjectItem(cJSON_GetArrayItem(lp, 2), "logprob")->valuedouble + 1.0) < 1e-6,
          "one logprobs entry per token, with 2 alternatives");
    cJSON *u = cJSON_GetObjectItem(o, "usage");
    CHECK(cJSON_GetObjectItem(u, "total_tokens")->valueint == 14 &&
              !strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(c0, "finish_reason")), "length"),
          "usage and finish reason");
    cJSON_Delete(o);
    free(s);
    fy_api_job_free(&j);

    /* streamed completions with usage: every line a JSON chunk, then [DONE] */
    r.kind = FY_API_COMPLETION;
    r.stream = r.include_usage = 1;
    fy_api_job_init(&j, &r, "m", tok, 2, 1700000000);
    fy_strbuf sse = {0};
    fy_err err;
    CHECK(!fy_api_job_start(&j, &sse, &err) && sse.n == 0, "no role chunk for completions");
    feed(&j, texts, 3, &sse);
    fy_strbuf text = {0};
    int chunks = 0, usage = 0, done = 0, finish = 0;
    for (char *line = strtok(sse.p, "\n"); line; line = strtok(NULL, "\n")) {
        CHECK(!strncmp(line, "data: ", 6), "SSE line: %s", line);
        if (!strcmp(line + 6, "[DONE]")) {
            done++;
            continue;
        }
        cJSON *c = cJSON_Parse(line + 6), *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(c, "choices"), 0);
        CHECK(c && !done, "chunk JSON before [DONE]");
        chunks++;
        if (cJSON_IsObject(cJSON_GetObjectItem(c, "usage"))) usage++;
        const char *t = cJSON_GetStringValue(cJSON_GetObjectItem(ch, "text"));
        if (t) fy_strbuf_add(&text, t, strlen(t), NULL);
        if (cJSON_IsString(cJSON_GetObjectItem(ch, "finish_reason"))) finish++;
        cJSON_Delete(c);
    }
    CHECK(chunks == 6 && usage == 1 && done == 1 && finish == 1, "3 token chunks (logprobs on the empty one too), "
          "the last text, finish, usage: %d chunks %d usage %d done", chunks, usage, done);
    CHECK(text.p && !strcmp(text.p, "Hello \xEF\xBF\xBD!"), "streamed text = the texts");
    fy_strbuf_free(&text);
    fy_strbuf_free(&sse);
    fy_api_job_free(&j);
}

static void test_tokenize(void) {
    fy_api_error e;
    const char *tb = "{\"content\":\"the heaven and the earth\"}";
    char *t = fy_api_tokenize(tok, tb, strlen(tb), &e);
    cJSON *o = cJSON_Parse(t), *ids = cJSON_GetObjectItem(o, "tokens");
    CHECK(cJSON_IsArray(ids) && cJSON_GetArraySize(ids) > 0, "tokens: %s", t);
    char *body = cJSON_PrintUnformatted(o);
    char *d = fy_api_detokenize(tok, body, strlen(body), &e);
    cJSON *back = cJSON_Parse(d);
    CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(back, "content")), "the heaven and the earth"),
          "detokenize(tokenize(x)) = x: %s", d);
    CHECK(!fy_api_detokenize(tok, "{\"tokens\":[-1]}", 15, &e) && e.status == 400, "bad id refused");
    CHECK(!fy_api_tokenize(tok, "{\"content\":3}", 13, &e) && e.status == 400, "bad content refused");
    cJSON_Delete(back);
    cJSON_Delete(o);
    free(body);
    free(t);
    free(d);
}

static void test_utf8_and_metrics(void) {
    fy_strbuf b = {0};
    const char in[] = "ok \xC3\xA9 \xE2\x82 \xF0\x9F\x98\x80 \xC0\xAF \xED\xA0\x80";
    fy_api_utf8_clean(in, sizeof in - 1, &b, NULL);
    cJSON *s = cJSON_CreateString(b.p);
    char *js = cJSON_PrintUnformatted(s);
    cJSON *back = cJSON_Parse(js);
    CHECK(back && !strcmp(back->valuestring, b.p) && strstr(b.p, "\xC3\xA9") && strstr(b.p, "\xF0\x9F\x98\x80") &&
              !strstr(b.p, "\xC0") && !strstr(b.p, "\xED\xA0"),
          "valid sequences kept, invalid ones replaced");
    cJSON_Delete(back);
    cJSON_Delete(s);
    free(js);
    fy_strbuf_free(&b);

    fy_sched_stats st = {0};
    double bounds[FY_SCHED_HIST_BUCKETS];
    for (int i = 0; i < FY_SCHED_HIST_BUCKETS; i++) bounds[i] = 0.01 * (i + 1);
    for (int i = 0; i <= FY_SCHED_HIST_BUCKETS; i++) st.ttft.count[i] = (uint64_t)i, st.ttft.n += (uint64_t)i;
    st.requests_total = 5;
    fy_strbuf m = {0};
    fy_err err;
    CHECK(!fy_api_metrics_text(&st, bounds, &m, &err), "%s", err.msg);
    unsigned long long prev = 0, inf = 0, count = 0, v;
    int mono = 1, buckets = 0;
    for (char *line = strtok(m.p, "\n"); line; line = strtok(NULL, "\n")) {
        if (!strncmp(line, "ferry_time_to_first_token_seconds_bucket", 40)) {
            v = strtoull(strrchr(line, ' ') + 1, NULL, 10);
            mono &= v >= prev;
            prev = v;
            buckets++;
            if (strstr(line, "+Inf")) inf = v;
        }
        if (!strncmp(line, "ferry_time_to_first_token_seconds_count ", 40)) count = strtoull(line + 40, NULL, 10);
    }
    CHECK(mono && buckets == FY_SCHED_HIST_BUCKETS + 1 && inf == count && count == st.ttft.n,
          "cumulative buckets, +Inf = count (%llu %llu)", inf, count);
    fy_strbuf_free(&m);
}

/* --lora NAME=DIR: a request's "model" picks the base or an adapter. */
static void test_adapters(void) {
    /* the adapters are only carried (the scheduler's); any distinct pointers do */
    static int one_, two_;
    const fy_api_adapter ad[2] = {{"one", "runs/one", (const struct fy_lora_unmerged *)&one_},
                                  {"two", "runs/two", (const struct fy_lora_unmerged *)&two_}};
    fy_api_ctx x = {"m", tok, &chat, 100, 10, ad, 2};
    fy_api_req r;
    fy_api_error e;
    const char *names[] = {"m", "one", "two", NULL};
    for (int i = 0; i < 4; i++) {
        char body[96];
        snprintf(body, sizeof body, "{%s%s%s\"prompt\":\"In the\"}", names[i] ? "\"model\":\"" : "",
                 names[i] ? names[i] : "", names[i] ? "\"," : "");
        CHECK(!fy_api_parse(FY_API_COMPLETION, body, strlen(body), &x, &r, &e), "%s: %s", body, e.msg);
        CHECK(!strcmp(r.model, names[i] ? names[i] : "m") && r.params.lora == (i == 1 || i == 2 ? ad[i - 1].lora : NULL),
              "%s: model %s", body, r.model);
        fy_api_req_free(&r);
    }
    const char *bad = "{\"model\":\"three\",\"prompt\":\"In the\"}";
    CHECK(fy_api_parse(FY_API_COMPLETION, bad, strlen(bad), &x, &r, &e) && e.status == 404 &&
              !strcmp(e.code, "model_not_found") && strstr(e.msg, "'one', 'two'"),
          "unknown name: %d %s", e.status, e.msg);
    char *js = fy_api_models_json(&x, 5);
    cJSON *root = cJSON_Parse(js), *data = cJSON_GetObjectItem(root, "data");
    CHECK(cJSON_GetArraySize(data) == 3, "three models listed: %s", js);
    cJSON *m0 = cJSON_GetArrayItem(data, 0), *m2 = cJSON_GetArrayItem(data, 2);
    CHECK(m0 && m2 && !strcmp(cJSON_GetObjectItem(m0, "id")->valuestring, "m") &&
              cJSON_IsNull(cJSON_GetObjectItem(m0, "parent")) &&
              !strcmp(cJSON_GetObjectItem(m2, "id")->valuestring, "two") &&
              !strcmp(cJSON_GetObjectItem(m2, "parent")->valuestring, "m") &&
              !strcmp(cJSON_GetObjectItem(m2, "root")->valuestring, "runs/two"),
          "entries: %s", js);
    cJSON_Delete(root);
    free(js);
}

int main(void) {
    const char *text = "In the beginning God created the heaven and the earth. user: assistant: system:";
    fy_tok_train_opts o = {320, 1, 1};
    fy_err err;
    if (fy_tokenizer_train_text(text, strlen(text), &o, &tok, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    CHECK(!fy_chat_select("ferry", NULL, tok, &chat, &err), "%s", err.msg);
    test_parse_ok();
    test_parse_refusals();
    test_answers();
    test_tokenize();
    test_utf8_and_metrics();
    test_adapters();
    fy_tokenizer_free(tok);
    return fy_test_finish("test_api");
}
