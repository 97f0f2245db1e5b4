/* Chat templates rendered without a Jinja engine (io/chat.h). */
#include "io/chat.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/fsutil.h"
#include "core/log.h"

/* DeepSeek-V3's chat_template, as in tokenizer_config.json of
 * huggingface.co/deepseek-ai/DeepSeek-V3 (the JSON string decoded: "\\n"
 * here is Jinja's own "\n" escape inside its string literals). */
static const char jinja_deepseek3[] =
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', is_first_sp=true) %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}"
    "{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}"
    "{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}{%- endif %}"
    "{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}"
    "{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}"
    "{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is none %}{%- set ns.is_tool = false -%}"
    "{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}"
    "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + "
    "tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + "
    "'<｜tool▁call▁end｜>'}}{%- set ns.is_first = true -%}{%- else %}"
    "{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + "
    "'```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}{%- if ns.is_tool %}"
    "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}"
    "{%- else %}{{'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    "{%- set ns.is_output_first = false %}{%- else %}"
    "{{'\\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}"
    "{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜>'}}{% endif %}";

/* ChatML, as transformers' chat-templating guide writes it. */
static const char jinja_chatml[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/* ferry's own: the same text interop/hf_meta.c writes into an exported
 * model's tokenizer_config.json (io/ may not include interop/). */
static const char jinja_ferry[] =
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}";

static const char *const names[FY_CHAT_N] = {"deepseek3", "chatml", "ferry"};
static const char *const jinjas[FY_CHAT_N] = {jinja_deepseek3, jinja_chatml, jinja_ferry};

#define DS_USER "<｜User｜>"
#define DS_ASSISTANT "<｜Assistant｜>"
#define DS_EOS "<｜end▁of▁sentence｜>"

const char *fy_chat_name(fy_chat_kind k) { return k >= 0 && k < FY_CHAT_N ? names[k] : "?"; }
const char *fy_chat_jinja(fy_chat_kind k) { return k >= 0 && k < FY_CHAT_N ? jinjas[k] : ""; }

int fy_chat_from_name(const char *name, fy_chat_kind *out) {
    for (int k = 0; k < FY_CHAT_N; k++)
        if (name && !strcmp(name, names[k])) {
            *out = (fy_chat_kind)k;
            return 0;
        }
    return -1;
}

/* a and b equal once every whitespace byte is skipped in both. */
static int same_but_space(const char *a, const char *b) {
    for (;;) {
        while (*a && isspace((unsigned char)*a)) a++;
        while (*b && isspace((unsigned char)*b)) b++;
        if (*a != *b) return 0;
        if (!*a) return 1;
        a++, b++;
    }
}

int fy_chat_match_jinja(const char *jinja, fy_chat_kind *out) {
    for (int k = 0; k < FY_CHAT_N; k++)
        if (jinja && same_but_space(jinja, jinjas[k])) {
            *out = (fy_chat_kind)k;
            return 0;
        }
    return -1;
}

/* The tokenizer's token string for id (or ""), into dst. */
static void token_string(const fy_tokenizer *tok, int32_t id, char *dst, size_t cap) {
    const char *s = id >= 0 ? fy_tokenizer_token_str(tok, id) : NULL;
    snprintf(dst, cap, "%s", s ? s : "");
}

/* The chat_template of a tokenizer_config.json: a string, or the "default"
 * entry of a list of {name, template}. Returns 1 and the kind when known, 0
 * when the file, key or template is absent or unknown (*had_template set
 * when there was one). */
static int config_template(const char *path, fy_chat_kind *kind, int *had_template) {
    char *text = NULL;
    size_t len = 0;
    fy_err e;
    *had_template = 0;
    if (!path || !fy_file_exists(path) || fy_read_file(path, &text, &len, &e)) return 0;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
    const char *jinja = cJSON_IsString(t) ? t->valuestring : NULL;
    if (cJSON_IsArray(t)) {
        const cJSON *it;
        cJSON_ArrayForEach(it, t) {
            const cJSON *nm = cJSON_GetObjectItemCaseSensitive(it, "name");
            const cJSON *tp = cJSON_GetObjectItemCaseSensitive(it, "template");
            if (cJSON_IsString(nm) && !strcmp(nm->valuestring, "default") && cJSON_IsString(tp)) jinja = tp->valuestring;
        }
    }
    *had_template = jinja != NULL;
    int ok = jinja && !fy_chat_match_jinja(jinja, kind);
    cJSON_Delete(root);
    return ok;
}

/* --chat-template NAME|FILE. */
static int select_spec(const char *spec, fy_chat_template *out, fy_err *err) {
    if (!fy_chat_from_name(spec, &out->kind)) {
        snprintf(out->source, sizeof out->source, "--chat-template %s", spec);
        return 0;
    }
    if (!fy_file_exists(spec))
        return fy_fail(err, "--chat-template %s: neither a known template (deepseek3, chatml, ferry) nor a file", spec);
    char *text = NULL;
    size_t len = 0;
    if (fy_read_file(spec, &text, &len, err)) return fy_wrap(err, "--chat-template: ");
    int bad = strlen(text) != len || fy_chat_match_jinja(text, &out->kind);
    free(text);
    if (bad)
        return fy_fail(err,
                       "--chat-template %s: this Jinja template is none of the ones ferry knows (deepseek3, chatml, "
                       "ferry; compared with whitespace removed). ferry has no Jinja engine: pass one of those names",
                       spec);
    snprintf(out->source, sizeof out->source, "--chat-template file (%s)", fy_chat_name(out->kind));
    return 0;
}

int fy_chat_select(const char *spec, const char *tokenizer_config, const fy_tokenizer *tok, fy_chat_template *out,
                   fy_err *err) {
    memset(out, 0, sizeof *out);
    token_string(tok, fy_tokenizer_bos(tok), out->bos, sizeof out->bos);
    token_string(tok, fy_tokenizer_eos(tok), out->eos, sizeof out->eos);
    if (spec) return select_spec(spec, out, err);
    int had = 0;
    if (config_template(tokenizer_config, &out->kind, &had)) {
        snprintf(out->source, sizeof out->source, "the model's tokenizer_config.json (%s)", fy_chat_name(out->kind));
        return 0;
    }
    out->kind = fy_tokenizer_token_to_id(tok, DS_USER) >= 0 ? FY_CHAT_DEEPSEEK3 : FY_CHAT_FERRY;
    snprintf(out->source, sizeof out->source, "default for this tokenizer (%s)", fy_chat_name(out->kind));
    if (had)
        fy_warn("the model's chat_template is not one ferry knows (no Jinja engine): using %s; choose with "
                "--chat-template deepseek3|chatml|ferry",
                fy_chat_name(out->kind));
    return 0;
}

static int add(fy_strbuf *b, const char *s, fy_err *err) { return fy_strbuf_add(b, s, strlen(s), err); }

/* The role of m, "developer" read as "system"; NULL when unsupported. */
static const char *role_of(const fy_chat_msg *m) {
    const char *r = m->role ? m->role : "";
    if (!strcmp(r, "developer")) return "system";
    if (!strcmp(r, "system") || !strcmp(r, "user") || !strcmp(r, "assistant")) return r;
    return NULL;
}

/* Marks the start (end = 0) or the end (end = 1) of message i's reply. */
static void mark(fy_chat_span *sp, int i, int end, const fy_strbuf *b) {
    if (!sp) return;
    if (end) sp[i].end = b->n;
    else sp[i].begin = sp[i].end = b->n;
}

static int render_deepseek3(const fy_chat_template *t, const fy_chat_msg *m, int n, int gen, fy_strbuf *b,
                            fy_chat_span *sp, fy_err *err) {
    int first_sp = 1;
    if (add(b, t->bos, err)) return -1;
    for (int i = 0; i < n; i++) {
        if (strcmp(role_of(&m[i]), "system")) continue;
        if ((!first_sp && add(b, "\n\n", err)) || add(b, m[i].content, err)) return -1;
        first_sp = 0;
    }
    for (int i = 0; i < n; i++) {
        const char *r = role_of(&m[i]);
        if (!strcmp(r, "user") && (add(b, DS_USER, err) || add(b, m[i].content, err))) return -1;
        if (strcmp(r, "assistant")) continue;
        if (add(b, DS_ASSISTANT, err)) return -1;
        mark(sp, i, 0, b);
        if (add(b, m[i].content, err) || add(b, DS_EOS, err)) return -1;
        mark(sp, i, 1, b);
    }
    return gen ? add(b, DS_ASSISTANT, err) : 0;
}

static int render_chatml(const fy_chat_msg *m, int n, int gen, fy_strbuf *b, fy_chat_span *sp, fy_err *err) {
    for (int i = 0; i < n; i++) {
        int a = !strcmp(role_of(&m[i]), "assistant");
        if (add(b, "<|im_start|>", err) || add(b, role_of(&m[i]), err) || add(b, "\n", err)) return -1;
        if (a) mark(sp, i, 0, b);
        if (add(b, m[i].content, err) || add(b, "<|im_end|>", err)) return -1;
        if (a) mark(sp, i, 1, b);
        if (add(b, "\n", err)) return -1;
    }
    return gen ? add(b, "<|im_start|>assistant\n", err) : 0;
}

static int render_ferry(const fy_chat_template *t, const fy_chat_msg *m, int n, int gen, fy_strbuf *b,
                        fy_chat_span *sp, fy_err *err) {
    for (int i = 0; i < n; i++) {
        int a = !strcmp(role_of(&m[i]), "assistant");
        if (add(b, role_of(&m[i]), err) || add(b, ": ", err)) return -1;
        if (a) mark(sp, i, 0, b);
        if (add(b, m[i].content, err) || add(b, t->eos, err)) return -1;
        if (a) mark(sp, i, 1, b);
    }
    return gen ? add(b, "assistant: ", err) : 0;
}

static int render(const fy_chat_template *t, const fy_chat_msg *msgs, int n, int add_generation_prompt,
                  fy_strbuf *out, fy_chat_span *sp, fy_err *err) {
    if (n <= 0) return fy_fail(err, "messages: at least one message is needed");
    for (int i = 0; i < n; i++) {
        if (!role_of(&msgs[i]))
            return fy_fail(err, "messages[%d].role '%s': only system, developer, user and assistant are supported", i,
                           msgs[i].role ? msgs[i].role : "");
        if (!msgs[i].content) return fy_fail(err, "messages[%d].content: missing", i);
    }
    switch (t->kind) {
    case FY_CHAT_DEEPSEEK3: return render_deepseek3(t, msgs, n, add_generation_prompt, out, sp, err);
    case FY_CHAT_CHATML: return render_chatml(msgs, n, add_generation_prompt, out, sp, err);
    case FY_CHAT_FERRY: return render_ferry(t, msgs, n, add_generation_prompt, out, sp, err);
    default: return fy_fail(err, "unknown chat template %d", (int)t->kind);
    }
}

int fy_chat_render(const fy_chat_template *t, const fy_chat_msg *msgs, int n, int add_generation_prompt,
                   fy_strbuf *out, fy_err *err) {
    return render(t, msgs, n, add_generation_prompt, out, NULL, err);
}

int fy_chat_render_spans(const fy_chat_template *t, const fy_chat_msg *msgs, int n, fy_strbuf *out,
                         fy_chat_span *spans, fy_err *err) {
    for (int i = 0; i < n; i++) spans[i] = (fy_chat_span){0, 0};
    return render(t, msgs, n, 0, out, spans, err);
}
