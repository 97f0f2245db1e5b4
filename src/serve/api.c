/* OpenAI request parsing and response building for ferry serve
 * (serve/api.h, docs/SERVING.md). JSON only through cJSON. */
#include "serve/api.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#define TYPE_INVALID "invalid_request_error"

int fy_api_fail(fy_api_error *e, int status, const char *type, const char *code, const char *fmt, ...) {
    e->status = status;
    snprintf(e->type, sizeof e->type, "%s", type);
    snprintf(e->code, sizeof e->code, "%s", code ? code : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return -1;
}

static int bad(fy_api_error *e, const char *fmt, const char *what) {
    return fy_api_fail(e, 400, TYPE_INVALID, NULL, fmt, what);
}

/* cJSON_Print without the pretty layout; frees root. */
static char *print_free(cJSON *root) {
    char *s = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return s;
}

char *fy_api_error_json(const fy_api_error *e) {
    fy_strbuf clean = {0};
    if (fy_api_utf8_clean(e->msg, strlen(e->msg), &clean, NULL)) return NULL;
    cJSON *root = cJSON_CreateObject(), *o = cJSON_AddObjectToObject(root, "error");
    int ok = o && cJSON_AddStringToObject(o, "message", clean.p ? clean.p : "") &&
             cJSON_AddStringToObject(o, "type", e->type) && cJSON_AddNullToObject(o, "param") &&
             (e->code[0] ? cJSON_AddStringToObject(o, "code", e->code) != NULL : cJSON_AddNullToObject(o, "code") != NULL);
    fy_strbuf_free(&clean);
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return print_free(root);
}

/* ---- UTF-8 ---------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s[0..n), or 0 if none starts there. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    else return 0;
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    return len;
}

int fy_api_utf8_clean(const char *s, size_t n, fy_strbuf *out, fy_err *err) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0;
    if (fy_strbuf_reserve(out, n, err)) return -1;
    while (i < n) {
        size_t l = utf8_seq(u + i, n - i);
        if (l) {
            i += l;
            continue;
        }
        if (fy_strbuf_add(out, s + run, i - run, err) || fy_strbuf_add(out, "\xEF\xBF\xBD", 3, err)) return -1;
        run = ++i;
    }
    return fy_strbuf_add(out, s + run, n - run, err);
}

/* A cJSON string of s[0..n) made valid UTF-8. */
static cJSON *clean_string(const char *s, size_t n) {
    fy_strbuf b = {0};
    if (fy_api_utf8_clean(s, n, &b, NULL) || fy_strbuf_add(&b, "", 0, NULL)) {
        fy_strbuf_free(&b);
        return NULL;
    }
    cJSON *j = cJSON_CreateString(b.p);
    fy_strbuf_free(&b);
    return j;
}

/* ---- request fields ------------------------------------------------------- */

/* An integer field: 1 present (in *v), 0 absent or null, -1 wrong (e set). */
static int get_int(const cJSON *o, const char *key, double lo, double hi, long long *v, fy_api_error *e) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j || cJSON_IsNull(j)) return 0;
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble) || floor(j->valuedouble) != j->valuedouble)
        return bad(e, "'%s' must be an integer", key);
    if (j->valuedouble < lo || j->valuedouble > hi)
        return fy_api_fail(e, 400, TYPE_INVALID, NULL, "'%s' is %.0f: it must be from %.0f to %.0f", key,
                           j->valuedouble, lo, hi);
    /* "seed" goes up to 1.8e19, a uint64: through uint64_t, since casting a
     * double >= 2^63 to long long is undefined */
    *v = j->valuedouble >= 9223372036854775808.0 ? (long long)(uint64_t)j->valuedouble : (long long)j->valuedouble;
    return 1;
}

static int get_num(const cJSON *o, const char *key, double lo, double hi, double *v, fy_api_error *e) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j || cJSON_IsNull(j)) return 0;
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble)) return bad(e, "'%s' must be a number", key);
    if (j->valuedouble < lo || j->valuedouble > hi)
        return fy_api_fail(e, 400, TYPE_INVALID, NULL, "'%s' is %g: it must be from %g to %g", key, j->valuedouble,
                           lo, hi);
    *v = j->valuedouble;
    return 1;
}

static int get_bool(const cJSON *o, const char *key, int *v, fy_api_error *e) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j || cJSON_IsNull(j)) return 0;
    if (!cJSON_IsBool(j)) return bad(e, "'%s' must be true or false", key);
    *v = cJSON_IsTrue(j);
    return 1;
}

/* The base (name == model_id) or an adapter by its name: r->model and
 * r->params.lora; -1 for neither. */
static int pick_model(const fy_api_ctx *c, const char *name, fy_api_req *r) {
    if (!strcmp(name, c->model_id)) return 0;
    for (int i = 0; i < c->n_adapters; i++)
        if (!strcmp(name, c->adapters[i].name)) {
            r->model = c->adapters[i].name;
            r->params.lora = c->adapters[i].lora;
            return 0;
        }
    return -1;
}

/* model, n, echo and stream fields every completion request shares. */
static int parse_common(const cJSON *root, const fy_api_ctx *c, fy_api_req *r, fy_api_error *e) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    r->model = c->model_id;
    if (model && !cJSON_IsNull(model)) {
        if (!cJSON_IsString(model)) return bad(e, "'%s' must be a string", "model");
        if (pick_model(c, model->valuestring, r)) {
            char names[512] = "";
            for (int i = 0; i < c->n_adapters; i++) {
                size_t u = strlen(names);
                snprintf(names + u, sizeof names - u, "%s'%.100s'", i ? ", " : " and adapters ", c->adapters[i].name);
            }
            return fy_api_fail(e, 404, TYPE_INVALID, "model_not_found",
                               "The model '%.200s' does not exist: this server serves '%.200s'%s", model->valuestring,
                               c->model_id, names);
        }
    }
    long long n = 1;
    int echo = 0;
    if (get_int(root, "n", -1e18, 1e18, &n, e) < 0 || get_bool(root, "echo", &echo, e) < 0) return -1;
    if (n != 1) return fy_api_fail(e, 400, TYPE_INVALID, NULL, "'n' is %lld: only n = 1 is supported", n);
    if (echo) return bad(e, "'%s' is not supported (only false)", "echo");
    if (get_bool(root, "stream", &r->stream, e) < 0) return -1;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so)) return bad(e, "'%s' must be an object", "stream_options");
        if (get_bool(so, "include_usage", &r->include_usage, e) < 0) return -1;
    }
    return 0;
}

/* stop: a string or a list of at most 4 (empty strings are ignored). */
static int parse_stop(const cJSON *stop, fy_api_req *r, fy_api_error *e) {
    if (!stop || cJSON_IsNull(stop)) return 0;
    int n = cJSON_IsArray(stop) ? cJSON_GetArraySize(stop) : 1;
    if (!cJSON_IsArray(stop) && !cJSON_IsString(stop))
        return bad(e, "'%s' must be a string or a list of strings", "stop");
    if (n > FY_SCHED_MAX_STOP) return bad(e, "'%s' holds at most 4 strings", "stop");
    for (int i = 0; i < n; i++) {
        const cJSON *it = cJSON_IsArray(stop) ? cJSON_GetArrayItem(stop, i) : stop;
        if (!cJSON_IsString(it)) return bad(e, "'%s' must hold strings", "stop");
        if (!*it->valuestring) continue;
        char *dup = strdup(it->valuestring);
        if (!dup) return fy_api_fail(e, 500, "server_error", NULL, "out of memory");
        r->stop_buf[r->params.n_stop] = dup;
        r->params.stop[r->params.n_stop++] = dup;
    }
    return 0;
}

/* temperature, top_p, top_k, seed, ignore_eos (llama-server's and vLLM's
 * extension: generate until max_tokens), stop. */
static int parse_sampling(const cJSON *root, fy_api_req *r, fy_api_error *e) {
    double t = 1.0, p = 1.0;
    long long k = 0, seed = 0;
    if (get_num(root, "temperature", 0, 2, &t, e) < 0 || get_num(root, "top_p", 0, 1, &p, e) < 0 ||
        get_int(root, "top_k", 0, 1 << 24, &k, e) < 0 || get_int(root, "seed", -9.2e18, 1.8e19, &seed, e) < 0 ||
        get_bool(root, "ignore_eos", &r->params.ignore_eos, e) < 0)
        return -1;
    if (p <= 0) return bad(e, "'%s' must be above 0", "top_p");
    r->params.sampler = (fy_sampler){(float)t, (int)k, (float)p, (uint64_t)seed};
    return parse_stop(cJSON_GetObjectItemCaseSensitive(root, "stop"), r, e);
}

/* logprobs: completions take an integer (the top count), chat a bool and
 * top_logprobs. */
static int parse_logprobs(const cJSON *root, fy_api_kind kind, fy_api_req *r, fy_api_error *e) {
    long long top = 0;
    if (kind == FY_API_COMPLETION) {
        int got = get_int(root, "logprobs", 0, FY_SCHED_MAX_TOP, &top, e);
        if (got < 0) return -1;
        r->logprobs = got;
        r->top_logprobs = (int)top;
    } else {
        int got = get_int(root, "top_logprobs", 0, FY_SCHED_MAX_TOP, &top, e);
        if (got < 0 || get_bool(root, "logprobs", &r->logprobs, e) < 0) return -1;
        if (got && top > 0 && !r->logprobs) return bad(e, "'%s' needs 'logprobs': true", "top_logprobs");
        r->top_logprobs = (int)top;
    }
    r->params.logprobs = r->logprobs;
    r->params.top_logprobs = r->top_logprobs;
    return 0;
}

/* ---- prompts ------------------------------------------------------------- */

static int oom(fy_api_error *e) { return fy_api_fail(e, 500, "server_error", NULL, "out of memory"); }

/* Token ids given as the prompt: checked against the vocabulary. */
static int prompt_ids(const cJSON *arr, const char *field, const fy_tokenizer *tok, fy_api_req *r, fy_api_error *e) {
    int n = cJSON_GetArraySize(arr), V = fy_tokenizer_vocab_size(tok);
    if (!(r->tokens = malloc(((size_t)n + 1) * sizeof *r->tokens))) return oom(e);
    /* Walked, not indexed: cJSON_GetArrayItem is O(i), and a body of a
     * million ids would cost minutes of a connection thread. */
    int i = 0;
    for (const cJSON *t = arr->child; t && i < n; t = t->next, i++) {
        if (!cJSON_IsNumber(t) || t->valuedouble != floor(t->valuedouble) || t->valuedouble < 0 || t->valuedouble >= V)
            return fy_api_fail(e, 400, TYPE_INVALID, NULL, "'%s'[%d] is not a token id (0 to %d)", field, i, V - 1);
        r->tokens[i] = (int32_t)t->valuedouble;
    }
    r->n_tokens = n;
    return 0;
}

static int encode(const fy_tokenizer *tok, const char *text, size_t len, unsigned flags, fy_api_req *r,
                  fy_api_error *e) {
    size_t n = 0;
    fy_err err;
    if (fy_tokenizer_encode_ex(tok, text, len, flags, &r->tokens, &n, &err))
        return fy_api_fail(e, 400, TYPE_INVALID, NULL, "the prompt cannot be tokenized: %s", err.msg);
    if (n > (size_t)1 << 30) return fy_api_fail(e, 400, TYPE_INVALID, NULL, "the prompt is too long");
    r->n_tokens = (int)n;
    return 0;
}

/* prompt: a string, or a list of one string, of token ids, or of one list
 * of token ids. */
static int parse_prompt(const cJSON *root, const fy_tokenizer *tok, fy_api_req *r, fy_api_error *e) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (!p || cJSON_IsNull(p)) return bad(e, "'%s' is required", "prompt");
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 &&
        (cJSON_IsString(p->child) || cJSON_IsArray(p->child)))
        p = p->child;
    if (cJSON_IsString(p)) return encode(tok, p->valuestring, strlen(p->valuestring), 0, r, e);
    if (cJSON_IsArray(p) && (!p->child || cJSON_IsNumber(p->child))) return prompt_ids(p, "prompt", tok, r, e);
    return bad(e, "'%s' must be a string, a list of one string, or a list of token ids", "prompt");
}

/* The text of a message's content (io/chat.h); a malformed one is a 400. */
static int content_text(const cJSON *c, int i, fy_strbuf *b, fy_api_error *e) {
    fy_err err = {{0}};
    if (fy_chat_content_text(c, i, b, &err) == 0) return 0;
    return fy_api_fail(e, 400, TYPE_INVALID, NULL, "%s", err.msg);
}

/* messages -> the rendered prompt (out, NUL-terminated). */
static int render_messages(const cJSON *msgs, const fy_chat_template *t, fy_strbuf *out, fy_api_error *e) {
    if (!cJSON_IsArray(msgs) || !cJSON_GetArraySize(msgs))
        return bad(e, "'%s' must be a non-empty list of {role, content}", "messages");
    int n = cJSON_GetArraySize(msgs), rc = -1;
    fy_chat_msg *m = calloc((size_t)n, sizeof *m);
    fy_strbuf *text = calloc((size_t)n, sizeof *text);
    if (!m || !text) {
        rc = oom(e);
        goto done;
    }
    const cJSON *it = msgs->child;
    for (int i = 0; i < n; i++, it = it->next) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(it, "role");
        if (!cJSON_IsString(role)) {
            rc = fy_api_fail(e, 400, TYPE_INVALID, NULL, "messages[%d].role must be a string", i);
            goto done;
        }
        if (content_text(cJSON_GetObjectItemCaseSensitive(it, "content"), i, &text[i], e)) goto done;
        m[i] = (fy_chat_msg){role->valuestring, text[i].p ? text[i].p : ""};
    }
    fy_err err;
    if (fy_chat_render(t, m, n, 1, out, &err) || fy_strbuf_add(out, "", 0, &err)) {
        rc = fy_api_fail(e, 400, TYPE_INVALID, NULL, "%s", err.msg);
        goto done;
    }
    rc = 0;
done:
    for (int i = 0; text && i < n; i++) fy_strbuf_free(&text[i]);
    free(text);
    free(m);
    return rc;
}

static int parse_messages(const cJSON *root, const fy_api_ctx *c, fy_api_req *r, fy_api_error *e) {
    fy_strbuf prompt = {0};
    int rc = render_messages(cJSON_GetObjectItemCaseSensitive(root, "messages"), c->chat, &prompt, e);
    if (!rc) rc = encode(c->tok, prompt.p, prompt.n, FY_ENC_SPECIAL, r, e);
    fy_strbuf_free(&prompt);
    return rc;
}

/* max_tokens (or max_completion_tokens) against the context. */
static int resolve_max_tokens(const cJSON *root, const fy_api_ctx *c, fy_api_req *r, fy_api_error *e) {
    long long mt = -1;
    int got = get_int(root, "max_completion_tokens", 1, 1e15, &mt, e);
    if (got < 0 || (!got && (got = get_int(root, "max_tokens", 1, 1e15, &mt, e)) < 0)) return -1;
    if (r->n_tokens < 1) return bad(e, "the %s is empty (no tokens)", "prompt");
    if (got && mt > c->ctx)
        return fy_api_fail(e, 400, TYPE_INVALID, NULL, "max_tokens is %lld: over the context size %d", mt, c->ctx);
    long long room = (long long)c->ctx - r->n_tokens;
    if (room < 1 || (got && mt > room))
        return fy_api_fail(e, 400, "exceed_context_size_error", "context_length_exceeded",
                           "the prompt has %d tokens and max_tokens is %lld: %lld tokens in all, over the context "
                           "size %d",
                           r->n_tokens, got ? mt : 1, r->n_tokens + (got ? mt : 1), c->ctx);
    r->max_tokens = (int)(got ? mt : (room < c->max_tokens ? room : c->max_tokens));
    r->params.max_tokens = r->max_tokens;
    return 0;
}

int fy_api_parse(fy_api_kind kind, const char *body, size_t len, const fy_api_ctx *c, fy_api_req *r,
                 fy_api_error *e) {
    memset(r, 0, sizeof *r);
    r->kind = kind;
    cJSON *root = cJSON_ParseWithLength(body, len);
    int rc = -1;
    if (!cJSON_IsObject(root)) {
        fy_api_fail(e, 400, TYPE_INVALID, NULL, "the body is not a JSON object%s", root ? "" : " (malformed JSON)");
        goto done;
    }
    if (parse_common(root, c, r, e) || parse_sampling(root, r, e) || parse_logprobs(root, kind, r, e)) goto done;
    if ((kind == FY_API_CHAT ? parse_messages(root, c, r, e) : parse_prompt(root, c->tok, r, e))) goto done;
    rc = resolve_max_tokens(root, c, r, e);
done:
    cJSON_Delete(root);
    if (rc) fy_api_req_free(r);
    return rc;
}

void fy_api_req_free(fy_api_req *r) {
    free(r->tokens);
    for (int i = 0; i < FY_SCHED_MAX_STOP; i++) free(r->stop_buf[i]);
    memset(r, 0, sizeof *r);
}

/* ---- answers ------------------------------------------------------------- */

/* A 64-bit mix (splitmix64's finaliser): ids that do not look sequential. */
static unsigned long long mix64(unsigned long long x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

void fy_api_job_init(fy_api_job *j, const fy_api_req *r, const char *model, const fy_tokenizer *tok,
                     unsigned long long id_seq, long long created) {
    memset(j, 0, sizeof *j);
    j->kind = r->kind;
    j->stream = r->stream;
    j->include_usage = r->stream && r->include_usage;
    j->logprobs = r->logprobs;
    j->top_logprobs = r->top_logprobs;
    j->model = model;
    j->tok = tok;
    j->created = created;
    j->prompt_tokens = r->n_tokens;
    snprintf(j->id, sizeof j->id, "%s-%016llx%08llx", r->kind == FY_API_CHAT ? "chatcmpl" : "cmpl",
             mix64(id_seq ^ ((unsigned long long)created << 20)), id_seq & 0xffffffffull);
}

void fy_api_job_free(fy_api_job *j) {
    fy_strbuf_free(&j->text);
    cJSON_Delete(j->lp);
    j->lp = NULL;
}

/* {id, object, created, model, choices: [{index: 0}]}; *choice is the one. */
static cJSON *answer_object(const fy_api_job *j, const char *object, cJSON **choice) {
    cJSON *root = cJSON_CreateObject(), *choices;
    if (!root || !cJSON_AddStringToObject(root, "id", j->id) || !cJSON_AddStringToObject(root, "object", object) ||
        !cJSON_AddNumberToObject(root, "created", (double)j->created) ||
        !cJSON_AddStringToObject(root, "model", j->model) || !(choices = cJSON_AddArrayToObject(root, "choices"))) {
        cJSON_Delete(root);
        return NULL;
    }
    if (choice) {
        *choice = cJSON_CreateObject();
        if (!*choice || !cJSON_AddItemToArray(choices, *choice) || !cJSON_AddNumberToObject(*choice, "index", 0)) {
            cJSON_Delete(root);
            return NULL;
        }
    }
    return root;
}

static cJSON *usage_object(const fy_api_job *j) {
    cJSON *u = cJSON_CreateObject();
    if (!u || !cJSON_AddNumberToObject(u, "prompt_tokens", j->prompt_tokens) ||
        !cJSON_AddNumberToObject(u, "completion_tokens", j->completion_tokens) ||
        !cJSON_AddNumberToObject(u, "total_tokens", j->prompt_tokens + j->completion_tokens)) {
        cJSON_Delete(u);
        return NULL;
    }
    return u;
}

/* {token, logprob, bytes} of one token (chat's shape). */
static cJSON *chat_token(const fy_tokenizer *tok, int32_t id, float lp) {
    size_t n = 0;
    const char *b = fy_tokenizer_token_bytes(tok, id, &n);
    cJSON *o = cJSON_CreateObject(), *s = clean_string(b ? b : "", b ? n : 0), *bytes;
    if (!o || !s || !cJSON_AddItemToObject(o, "token", s)) {
        cJSON_Delete(s);
        cJSON_Delete(o);
        return NULL;
    }
    int ok = cJSON_AddNumberToObject(o, "logprob", lp) && (bytes = cJSON_AddArrayToObject(o, "bytes"));
    for (size_t i = 0; ok && i < n; i++) ok = cJSON_AddItemToArray(bytes, cJSON_CreateNumber((unsigned char)b[i]));
    if (ok) return o;
    cJSON_Delete(o);
    return NULL;
}

static cJSON *lp_new(fy_api_kind kind) {
    cJSON *o = cJSON_CreateObject();
    static const char *const keys[] = {"tokens", "token_logprobs", "top_logprobs", "text_offset"};
    if (!o) return NULL;
    for (int i = 0; i < (kind == FY_API_CHAT ? 1 : 4); i++)
        if (!cJSON_AddArrayToObject(o, kind == FY_API_CHAT ? "content" : keys[i])) {
            cJSON_Delete(o);
            return NULL;
        }
    return o;
}

static int lp_add_chat(const fy_api_job *j, cJSON *lp, const fy_req_event *ev) {
    cJSON *item = chat_token(j->tok, ev->token, ev->logprob), *tops = cJSON_CreateArray();
    int ok = item && tops && cJSON_AddItemToArray(cJSON_GetObjectItem(lp, "content"), item);
    if (!ok) cJSON_Delete(item);
    for (int i = 0; ok && i < ev->n_top && i < j->top_logprobs; i++) {
        cJSON *t = chat_token(j->tok, ev->top_token[i], ev->top_logprob[i]);
        ok = t && cJSON_AddItemToArray(tops, t);
        if (!ok) cJSON_Delete(t);
    }
    if (ok && cJSON_AddItemToObject(item, "top_logprobs", tops)) return 0;
    cJSON_Delete(tops);
    return -1;
}

static cJSON *token_string(const fy_tokenizer *tok, int32_t id) {
    size_t n = 0;
    const char *b = fy_tokenizer_token_bytes(tok, id, &n);
    return clean_string(b ? b : "", b ? n : 0);
}

static int lp_add_completion(const fy_api_job *j, cJSON *lp, const fy_req_event *ev, size_t offset) {
    cJSON *tops = j->top_logprobs ? cJSON_CreateObject() : cJSON_CreateNull();
    int ok = tops != NULL;
    for (int i = 0; ok && i < ev->n_top && i < j->top_logprobs; i++) {
        cJSON *s = token_string(j->tok, ev->top_token[i]);
        ok = s && cJSON_AddNumberToObject(tops, s->valuestring, ev->top_logprob[i]);
        cJSON_Delete(s);
    }
    if (!ok || !cJSON_AddItemToArray(cJSON_GetObjectItem(lp, "top_logprobs"), tops)) {
        cJSON_Delete(tops);
        return -1;
    }
    cJSON *s = token_string(j->tok, ev->token);
    if (!s || !cJSON_AddItemToArray(cJSON_GetObjectItem(lp, "tokens"), s)) {
        cJSON_Delete(s);
        return -1;
    }
    return cJSON_AddItemToArray(cJSON_GetObjectItem(lp, "token_logprobs"), cJSON_CreateNumber(ev->logprob)) &&
                   cJSON_AddItemToArray(cJSON_GetObjectItem(lp, "text_offset"), cJSON_CreateNumber((double)offset))
               ? 0
               : -1;
}

static int lp_add(const fy_api_job *j, cJSON *lp, const fy_req_event *ev, size_t offset) {
    return j->kind == FY_API_CHAT ? lp_add_chat(j, lp, ev) : lp_add_completion(j, lp, ev, offset);
}

/* "data: JSON\n\n" (frees root). */
static int sse_add(fy_strbuf *sse, cJSON *root, fy_err *err) {
    char *s = print_free(root);
    if (!s) return fy_fail(err, "out of memory building a stream chunk");
    int rc = fy_strbuf_add(sse, "data: ", 6, err) || fy_strbuf_add(sse, s, strlen(s), err) ||
             fy_strbuf_add(sse, "\n\n", 2, err);
    free(s);
    return rc ? -1 : 0;
}

/* One streamed chunk: text (may be NULL), logprobs (taken; may be NULL),
 * finish reason (NULL = null). */
static int stream_chunk(fy_api_job *j, const char *text, size_t n, cJSON *lp, const char *finish, fy_strbuf *sse,
                        fy_err *err) {
    int chat = j->kind == FY_API_CHAT;
    cJSON *choice = NULL, *root = answer_object(j, chat ? "chat.completion.chunk" : "text_completion", &choice);
    cJSON *s = text || !chat ? clean_string(text ? text : "", text ? n : 0) : NULL, *delta = NULL;
    int ok = root && (s || (chat && !text));
    if (ok && chat) ok = (delta = cJSON_AddObjectToObject(choice, "delta")) != NULL;
    if (ok && s) ok = cJSON_AddItemToObject(chat ? delta : choice, chat ? "content" : "text", s);
    if (!ok) cJSON_Delete(s);
    if (ok && lp) ok = cJSON_AddItemToObject(choice, "logprobs", lp);
    else if (ok) ok = cJSON_AddNullToObject(choice, "logprobs") != NULL;
    if (!ok || !root) cJSON_Delete(lp);
    ok = ok && (finish ? cJSON_AddStringToObject(choice, "finish_reason", finish) != NULL
                       : cJSON_AddNullToObject(choice, "finish_reason") != NULL);
    ok = ok && (!j->include_usage || cJSON_AddNullToObject(root, "usage"));
    if (!ok) {
        cJSON_Delete(root);
        return fy_fail(err, "out of memory building a stream chunk");
    }
    return sse_add(sse, root, err);
}

int fy_api_job_start(fy_api_job *j, fy_strbuf *sse, fy_err *err) {
    if (!j->stream || j->kind != FY_API_CHAT) return 0;
    cJSON *choice, *root = answer_object(j, "chat.completion.chunk", &choice), *delta;
    if (!root || !(delta = cJSON_AddObjectToObject(choice, "delta")) ||
        !cJSON_AddStringToObject(delta, "role", "assistant") || !cJSON_AddStringToObject(delta, "content", "") ||
        !cJSON_AddNullToObject(choice, "logprobs") || !cJSON_AddNullToObject(choice, "finish_reason") ||
        (j->include_usage && !cJSON_AddNullToObject(root, "usage"))) {
        cJSON_Delete(root);
        return fy_fail(err, "out of memory building a stream chunk");
    }
    return sse_add(sse, root, err);
}

/* The usage chunk (choices empty) and the [DONE] line. */
static int stream_end(fy_api_job *j, fy_strbuf *sse, fy_err *err) {
    if (j->include_usage) {
        cJSON *root = answer_object(j, j->kind == FY_API_CHAT ? "chat.completion.chunk" : "text_completion", NULL);
        cJSON *u = usage_object(j);
        if (!root || !u || !cJSON_AddItemToObject(root, "usage", u)) {
            cJSON_Delete(u);
            cJSON_Delete(root);
            return fy_fail(err, "out of memory building the usage chunk");
        }
        if (sse_add(sse, root, err)) return -1;
    }
    return fy_strbuf_add(sse, "data: [DONE]\n\n", 14, err);
}

static int job_stream_event(fy_api_job *j, const fy_req_event *ev, fy_strbuf *sse, fy_err *err) {
    cJSON *lp = NULL;
    if (ev->kind == FY_EV_TOKEN && j->logprobs) {
        if (!(lp = lp_new(j->kind)) || lp_add(j, lp, ev, j->offset)) {
            cJSON_Delete(lp);
            return fy_fail(err, "out of memory building logprobs");
        }
    }
    int chunk = lp || ev->text_len > 0;
    if (chunk && stream_chunk(j, ev->text ? ev->text : "", ev->text_len, lp, NULL, sse, err)) return -1;
    j->offset += ev->text_len;
    if (ev->kind != FY_EV_DONE) return 0;
    return stream_chunk(j, NULL, 0, NULL, j->finish_reason, sse, err) || stream_end(j, sse, err) ? -1 : 0;
}

int fy_api_job_event(fy_api_job *j, const fy_req_event *ev, fy_strbuf *sse, fy_err *err) {
    if (j->done) return 0;
    if (ev->kind == FY_EV_DONE) {
        j->done = 1;
        j->finish_reason = ev->finish_reason ? ev->finish_reason : "stop";
        j->prompt_tokens = ev->prompt_tokens;
        j->completion_tokens = ev->completion_tokens;
    } else if (ev->kind != FY_EV_TOKEN) {
        return 0;
    }
    if (j->stream) return job_stream_event(j, ev, sse, err);
    if (ev->kind == FY_EV_TOKEN && j->logprobs) {
        if (!j->lp && !(j->lp = lp_new(j->kind))) return fy_fail(err, "out of memory building logprobs");
        if (lp_add(j, j->lp, ev, j->offset)) return fy_fail(err, "out of memory building logprobs");
    }
    j->offset += ev->text_len;
    return ev->text_len ? fy_strbuf_add(&j->text, ev->text, ev->text_len, err) : 0;
}

char *fy_api_job_result(fy_api_job *j) {
    int chat = j->kind == FY_API_CHAT;
    cJSON *choice, *root = answer_object(j, chat ? "chat.completion" : "text_completion", &choice);
    cJSON *s = clean_string(j->text.p ? j->text.p : "", j->text.n), *msg = NULL, *u = usage_object(j);
    int ok = root && s && u;
    if (ok && chat) {
        ok = (msg = cJSON_AddObjectToObject(choice, "message")) && cJSON_AddStringToObject(msg, "role", "assistant") &&
             cJSON_AddItemToObject(msg, "content", s);
    } else if (ok) {
        ok = cJSON_AddItemToObject(choice, "text", s);
    }
    if (!ok) cJSON_Delete(s);
    if (ok && j->logprobs && !j->lp) j->lp = lp_new(j->kind);
    ok = ok && (j->logprobs ? j->lp && cJSON_AddItemToObject(choice, "logprobs", j->lp)
                            : cJSON_AddNullToObject(choice, "logprobs") != NULL);
    if (ok && j->logprobs) j->lp = NULL;
    ok = ok && cJSON_AddStringToObject(choice, "finish_reason", j->finish_reason ? j->finish_reason : "stop") &&
         cJSON_AddItemToObject(root, "usage", u);
    if (!ok) {
        if (!root || !cJSON_GetObjectItem(root, "usage")) cJSON_Delete(u);
        cJSON_Delete(root);
        return NULL;
    }
    return print_free(root);
}

/* ---- other endpoints ----------------------------------------------------- */

/* One /v1/models entry; parent NULL: the base (JSON null). */
static int model_entry(cJSON *data, const char *id, long long created, const char *root, const char *parent) {
    cJSON *m = cJSON_CreateObject();
    if (!m || !cJSON_AddItemToArray(data, m)) {
        cJSON_Delete(m);
        return -1;
    }
    int ok = cJSON_AddStringToObject(m, "id", id) && cJSON_AddStringToObject(m, "object", "model") &&
             cJSON_AddNumberToObject(m, "created", (double)created) && cJSON_AddStringToObject(m, "owned_by", "ferry");
    if (ok && root) ok = cJSON_AddStringToObject(m, "root", root) != NULL;
    if (ok) ok = (parent ? cJSON_AddStringToObject(m, "parent", parent) : cJSON_AddNullToObject(m, "parent")) != NULL;
    return ok ? 0 : -1;
}

char *fy_api_models_json(const fy_api_ctx *c, long long created) {
    cJSON *root = cJSON_CreateObject(), *data;
    int ok = root && cJSON_AddStringToObject(root, "object", "list") && (data = cJSON_AddArrayToObject(root, "data")) &&
             !model_entry(data, c->model_id, created, NULL, NULL);
    for (int i = 0; ok && i < c->n_adapters; i++)
        ok = !model_entry(data, c->adapters[i].name, created, c->adapters[i].root, c->model_id);
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return print_free(root);
}

static cJSON *parse_object(const char *body, size_t len, fy_api_error *e) {
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (cJSON_IsObject(root)) return root;
    fy_api_fail(e, 400, TYPE_INVALID, NULL, "the body is not a JSON object%s", root ? "" : " (malformed JSON)");
    cJSON_Delete(root);
    return NULL;
}

/* {"tokens": [...]} or, with_pieces, [{"id", "piece"}]. */
static char *tokens_json(const fy_tokenizer *tok, const int32_t *ids, size_t n, int pieces) {
    cJSON *root = cJSON_CreateObject(), *arr = root ? cJSON_AddArrayToObject(root, "tokens") : NULL;
    int ok = arr != NULL;
    for (size_t i = 0; ok && i < n; i++) {
        cJSON *t = pieces ? cJSON_CreateObject() : cJSON_CreateNumber(ids[i]);
        ok = t && cJSON_AddItemToArray(arr, t);
        if (!ok) cJSON_Delete(t);
        if (ok && pieces) {
            cJSON *s = token_string(tok, ids[i]);
            ok = cJSON_AddNumberToObject(t, "id", ids[i]) && s && cJSON_AddItemToObject(t, "piece", s);
            if (!ok) cJSON_Delete(s);
        }
    }
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return print_free(root);
}

char *fy_api_tokenize(const fy_tokenizer *tok, const char *body, size_t len, fy_api_error *e) {
    cJSON *root = parse_object(body, len, e);
    if (!root) return NULL;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(root, "content");
    int add_special = 0, parse_special = 0, pieces = 0;
    char *out = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    fy_err err;
    if (!cJSON_IsString(c)) {
        bad(e, "'%s' must be a string", "content");
    } else if (get_bool(root, "add_special", &add_special, e) >= 0 &&
               get_bool(root, "parse_special", &parse_special, e) >= 0 &&
               get_bool(root, "with_pieces", &pieces, e) >= 0) {
        if (fy_tokenizer_encode_ex(tok, c->valuestring, strlen(c->valuestring), parse_special ? FY_ENC_SPECIAL : 0,
                                   &ids, &n, &err)) {
            fy_api_fail(e, 400, TYPE_INVALID, NULL, "cannot tokenize: %s", err.msg);
        } else {
            int32_t bos = fy_tokenizer_bos(tok);
            int32_t *all = malloc((n + 1) * sizeof *all);
            size_t k = 0;
            if (all && add_special && bos >= 0) all[k++] = bos;
            if (all) memcpy(all + k, ids, n * sizeof *ids);
            out = all ? tokens_json(tok, all, n + k, pieces) : NULL;
            if (!out) oom(e);
            free(all);
        }
    }
    free(ids);
    cJSON_Delete(root);
    return out;
}

char *fy_api_detokenize(const fy_tokenizer *tok, const char *body, size_t len, fy_api_error *e) {
    cJSON *root = parse_object(body, len, e);
    if (!root) return NULL;
    fy_api_req r = {0};
    char *text = NULL, *out = NULL;
    size_t n = 0;
    fy_err err;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "tokens");
    if (!cJSON_IsArray(t)) {
        bad(e, "'%s' must be a list of token ids", "tokens");
    } else if (!prompt_ids(t, "tokens", tok, &r, e)) {
        if (fy_tokenizer_decode(tok, r.tokens, (size_t)r.n_tokens, FY_DEC_LOSSY, &text, &n, &err)) {
            fy_api_fail(e, 400, TYPE_INVALID, NULL, "cannot detokenize: %s", err.msg);
        } else {
            cJSON *o = cJSON_CreateObject(), *s = clean_string(text, n);
            if (o && s && cJSON_AddItemToObject(o, "content", s)) out = print_free(o);
            else cJSON_Delete(s), cJSON_Delete(o);
            if (!out) oom(e);
        }
    }
    free(text);
    free(r.tokens);
    cJSON_Delete(root);
    return out;
}

char *fy_api_apply_template(const fy_chat_template *t, const char *body, size_t len, fy_api_error *e) {
    cJSON *root = parse_object(body, len, e);
    if (!root) return NULL;
    fy_strbuf prompt = {0};
    char *out = NULL;
    if (!render_messages(cJSON_GetObjectItemCaseSensitive(root, "messages"), t, &prompt, e)) {
        cJSON *o = cJSON_CreateObject(), *s = clean_string(prompt.p, prompt.n);
        if (o && s && cJSON_AddItemToObject(o, "prompt", s)) out = print_free(o);
        else cJSON_Delete(s), cJSON_Delete(o);
        if (!out) oom(e);
    }
    fy_strbuf_free(&prompt);
    cJSON_Delete(root);
    return out;
}

/* ---- /metrics ------------------------------------------------------------ */

static int addf(fy_strbuf *b, fy_err *err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int addf(fy_strbuf *b, fy_err *err, const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof line) return fy_fail(err, "metrics line too long");
    return fy_strbuf_add(b, line, (size_t)n, err);
}

static int metric(fy_strbuf *b, const char *name, const char *type, const char *help, double v, fy_err *err) {
    return addf(b, err, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, v);
}

/* A histogram: cumulative le buckets, +Inf, _sum and _count. */
static int histogram(fy_strbuf *b, const char *name, const char *help, const fy_sched_hist *h, const double *bounds,
                     fy_err *err) {
    if (addf(b, err, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name)) return -1;
    uint64_t cum = 0;
    for (int i = 0; i < FY_SCHED_HIST_BUCKETS; i++) {
        cum += h->count[i];
        if (addf(b, err, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i], (unsigned long long)cum))
            return -1;
    }
    cum += h->count[FY_SCHED_HIST_BUCKETS];
    return addf(b, err, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.17g\n%s_count %llu\n", name, (unsigned long long)cum,
                name, h->sum, name, (unsigned long long)h->n);
}

int fy_api_metrics_text(const fy_sched_stats *st, const double *bounds, fy_strbuf *out, fy_err *err) {
    fy_strbuf *b = out;
    if (metric(b, "ferry_requests_total", "counter", "Requests accepted by the scheduler.",
               (double)st->requests_total, err) ||
        addf(b, err,
             "# HELP ferry_requests_finished_total Requests finished, by outcome.\n"
             "# TYPE ferry_requests_finished_total counter\n"
             "ferry_requests_finished_total{outcome=\"done\"} %llu\n"
             "ferry_requests_finished_total{outcome=\"cancelled\"} %llu\n"
             "ferry_requests_finished_total{outcome=\"failed\"} %llu\n",
             (unsigned long long)st->requests_done, (unsigned long long)st->requests_cancelled,
             (unsigned long long)st->requests_failed) ||
        metric(b, "ferry_prompt_tokens_total", "counter", "Prompt tokens of accepted requests.",
               (double)st->prompt_tokens_total, err) ||
        metric(b, "ferry_generated_tokens_total", "counter", "Tokens generated.", (double)st->generated_tokens_total,
               err) ||
        histogram(b, "ferry_time_to_first_token_seconds", "From submission to a request's first token.", &st->ttft,
                  bounds, err) ||
        histogram(b, "ferry_inter_token_latency_seconds", "Between consecutive tokens of a request.", &st->itl, bounds, err) ||
        metric(b, "ferry_queue_depth", "gauge", "Requests waiting for a slot.", st->queue_depth, err) ||
        metric(b, "ferry_busy_slots", "gauge", "Slots holding a request.", st->busy_slots, err) ||
        metric(b, "ferry_slots", "gauge", "Slots (requests decoded together at most).", st->slots, err) ||
        metric(b, "ferry_kv_cache_tokens_used", "gauge", "KV cache positions in use.", st->kv_positions_used, err) ||
        metric(b, "ferry_kv_cache_tokens_total", "gauge", "KV cache positions in all.", st->kv_positions_total, err) ||
        metric(b, "ferry_batch_steps_total", "counter", "Batched model steps run.", (double)st->steps, err))
        return -1;
    return 0;
}
