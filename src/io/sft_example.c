/* One JSONL line -> tokens and loss mask (io/sft.h): format detection, chat
 * rendering in segments cut at the replies, prompt/completion and text. */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/strbuf.h"
#include "io/sft.h"

void fy_sft_example_free(fy_sft_example *ex) {
    free(ex->ids);
    free(ex->mask);
    memset(ex, 0, sizeof *ex);
}

static int push(fy_sft_example *ex, const int32_t *ids, size_t n, int trained, fy_err *err) {
    if (n == 0) return 0;  /* an empty text: ex->ids may still be NULL, and NULL + 0 is undefined */
    if (ex->n + n > ex->cap) {
        size_t cap = ex->cap ? ex->cap : 256;
        while (cap < ex->n + n) cap *= 2;
        int32_t *a = realloc(ex->ids, cap * sizeof *a);
        if (a) ex->ids = a;
        uint8_t *b = a ? realloc(ex->mask, cap) : NULL;
        if (!b) return fy_fail(err, "out of memory");
        ex->mask = b;
        ex->cap = cap;
    }
    memcpy(ex->ids + ex->n, ids, n * sizeof *ids);
    memset(ex->mask + ex->n, trained ? 1 : 0, n);
    ex->n += n;
    return 0;
}

/* Encodes text[0..len) and appends it. */
static int push_text(fy_sft_example *ex, const fy_tokenizer *tok, const char *text, size_t len, unsigned flags,
                     int trained, fy_err *err) {
    int32_t *ids = NULL;
    size_t n = 0;
    if (fy_tokenizer_encode_ex(tok, text, len, flags, &ids, &n, err)) return -1;
    int rc = push(ex, ids, n, trained, err);
    free(ids);
    return rc;
}

static int push_eos(fy_sft_example *ex, const fy_tokenizer *tok, fy_err *err) {
    int32_t eos = fy_tokenizer_eos(tok);
    if (eos < 0) return fy_fail(err, "the tokenizer has no eos token to end the example with");
    return push(ex, &eos, 1, 1, err);
}

/* The messages of one or two JSON lists, in order, into m (n of them; the
 * texts held in txt, which the caller frees). */
static int read_messages(const cJSON *a, const cJSON *b, fy_chat_msg **m, fy_strbuf **txt, int *n, fy_err *err) {
    int na = cJSON_GetArraySize(a), nb = b ? cJSON_GetArraySize(b) : 0;
    *n = na + nb;
    if (*n == 0) return fy_fail(err, "messages: an empty list");
    *m = calloc((size_t)*n, sizeof **m);
    *txt = calloc((size_t)*n, sizeof **txt);
    if (!*m || !*txt) return fy_fail(err, "out of memory");
    /* Walked, not indexed (cJSON_GetArrayItem is O(i)). */
    const cJSON *it = a->child;
    for (int i = 0; i < *n; i++, it = it->next) {
        if (i == na) it = b->child;
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(it, "role");
        if (!cJSON_IsString(role)) return fy_fail(err, "messages[%d].role: missing or not a string", i);
        if (fy_chat_content_text(cJSON_GetObjectItemCaseSensitive(it, "content"), i, &(*txt)[i], err)) return -1;
        (*m)[i] = (fy_chat_msg){role->valuestring, (*txt)[i].p};
    }
    return 0;
}

/* The prompt the server renders for the messages before reply i must be
 * the rendering's text before it. */
static int same_prompt(const fy_chat_template *t, const fy_chat_msg *m, int i, const fy_strbuf *full,
                       const fy_chat_span *sp, fy_err *err) {
    if (i == 0) return 0;
    fy_strbuf p = {0};
    int rc = fy_chat_render(t, m, i, 1, &p, err);
    if (!rc && (p.n != sp[i].begin || memcmp(p.p, full->p, p.n)))
        rc = fy_fail(err, "messages[%d]: the %s template renders the conversation before this reply differently "
                          "from the prompt ferry serve sends for it (a system message after a reply?)",
                     i, fy_chat_name(t->kind));
    fy_strbuf_free(&p);
    return rc;
}

/* 1 when encoding full[0..end) whole gives the example's tokens so far. */
static int encodes_whole(const fy_tokenizer *tok, const fy_strbuf *full, size_t end, const fy_sft_example *ex) {
    int32_t *ids = NULL;
    size_t n = 0;
    fy_err e;
    if (fy_tokenizer_encode_ex(tok, full->p, end, FY_ENC_SPECIAL, &ids, &n, &e)) return 1;
    int same = n == ex->n && !memcmp(ids, ex->ids, n * sizeof *ids);
    free(ids);
    return same;
}

/* Messages m[0..n) rendered in segments (io/sft.h). */
static int chat_segments(const fy_chat_template *t, const fy_tokenizer *tok, const fy_chat_msg *m, int n, int all,
                         fy_sft_example *ex, fy_err *err) {
    int last = -1;
    for (int i = 0; i < n; i++)
        if (m[i].role && !strcmp(m[i].role, "assistant")) last = i;
    if (last < 0 && !all)
        return fy_fail(err, "no assistant message: nothing to train on (--train-on-prompt trains the whole text)");
    int use = all ? n : last + 1;
    fy_strbuf full = {0};
    fy_chat_span *sp = calloc((size_t)use, sizeof *sp);
    int rc = sp ? fy_chat_render_spans(t, m, use, &full, sp, err) : fy_fail(err, "out of memory");
    size_t pos = 0;
    for (int i = 0; i < use && !rc; i++) {
        if (strcmp(m[i].role, "assistant")) continue;
        rc = same_prompt(t, m, i, &full, sp, err) ||
             push_text(ex, tok, full.p + pos, sp[i].begin - pos, FY_ENC_SPECIAL, all, err);
        if (!rc && pos > 0 && !encodes_whole(tok, &full, sp[i].begin, ex)) ex->boundary_mismatch++;
        if (!rc) rc = push_text(ex, tok, full.p + sp[i].begin, sp[i].end - sp[i].begin, FY_ENC_SPECIAL, 1, err);
        pos = sp[i].end;
    }
    if (!rc && all && pos < full.n) rc = push_text(ex, tok, full.p + pos, full.n - pos, FY_ENC_SPECIAL, 1, err);
    fy_strbuf_free(&full);
    free(sp);
    return rc ? -1 : 0;
}

static int chat_example(const cJSON *a, const cJSON *b, const fy_chat_template *t, const fy_tokenizer *tok, int all,
                        fy_sft_example *ex, fy_err *err) {
    fy_chat_msg *m = NULL;
    fy_strbuf *txt = NULL;
    int n = 0;
    int rc = read_messages(a, b, &m, &txt, &n, err) || chat_segments(t, tok, m, n, all, ex, err) ? -1 : 0;
    for (int i = 0; txt && i < n; i++) fy_strbuf_free(&txt[i]);
    free(txt);
    free(m);
    return rc;
}

static int detect(const cJSON *root, const fy_chat_template *t, const fy_tokenizer *tok, int all, fy_sft_example *ex,
                  fy_err *err) {
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(root, "completion");
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(root, "text");
    if (msgs) {
        ex->format = FY_SFT_MESSAGES;
        if (!cJSON_IsArray(msgs)) return fy_fail(err, "\"messages\" is not a list");
        return chat_example(msgs, NULL, t, tok, all, ex, err);
    }
    if (p || c) {
        ex->format = FY_SFT_PROMPT;
        if (cJSON_IsArray(p) && cJSON_IsArray(c)) return chat_example(p, c, t, tok, all, ex, err);
        if (!cJSON_IsString(p) || !cJSON_IsString(c))
            return fy_fail(err, "\"prompt\" and \"completion\" must both be strings (or both lists of messages)");
        return push_text(ex, tok, p->valuestring, strlen(p->valuestring), 0, all, err) ||
                       push_text(ex, tok, c->valuestring, strlen(c->valuestring), 0, 1, err) || push_eos(ex, tok, err)
                   ? -1 : 0;
    }
    if (text) {
        ex->format = FY_SFT_TEXT;
        if (!cJSON_IsString(text)) return fy_fail(err, "\"text\" is not a string");
        return push_text(ex, tok, text->valuestring, strlen(text->valuestring), 0, 1, err) || push_eos(ex, tok, err)
                   ? -1 : 0;
    }
    return fy_fail(err, "no \"messages\", \"prompt\"/\"completion\" or \"text\" field");
}

int fy_sft_encode(const char *line, size_t len, const fy_chat_template *t, const fy_tokenizer *tok,
                  int train_on_prompt, fy_sft_example *ex, fy_err *err) {
    memset(ex, 0, sizeof *ex);
    cJSON *root = cJSON_ParseWithLength(line, len);
    int rc;
    if (!root) rc = fy_fail(err, "not valid JSON");
    else if (!cJSON_IsObject(root)) rc = fy_fail(err, "not a JSON object");
    else rc = detect(root, t, tok, train_on_prompt, ex, err);
    cJSON_Delete(root);
    /* The first token is never a label: its mask is 0. */
    if (!rc && ex->n) ex->mask[0] = 0;
    if (!rc) {
        size_t trained = 0;
        for (size_t i = 0; i < ex->n; i++) trained += ex->mask[i];
        if (!trained) rc = fy_fail(err, "no token to train on");
    }
    if (rc) fy_sft_example_free(ex);
    return rc;
}
